#include "tessera/kernels/softmax.hpp"

#include "tessera/core/error.hpp"
#include "tessera/core/math.hpp"

#include <fmt/format.h>

namespace tessera::kernels {
namespace {
using Policy = Kokkos::RangePolicy<ExecSpace>;

// x must be (rows, cols); every other tensor the same shape.
void check_rows(const char* op, const Tensor& x, std::initializer_list<const Tensor*> others) {
  if (x.rank() != 2) {
    throw Error(fmt::format("{}: '{}' has shape {}, expected (rows, cols)", op, x.label(),
                            to_string(x.shape())));
  }
  for (const Tensor* t : others) {
    if (t->shape() != x.shape()) {
      throw Error(fmt::format("{}: '{}' has shape {}, expected {} like '{}'", op, t->label(),
                              to_string(t->shape()), to_string(x.shape()), x.label()));
    }
  }
}

// Row numerics: the row starts at flat index `base` and has `cols` elements (cols >= 1).
KOKKOS_INLINE_FUNCTION float row_max(const FloatView& x, Index base, Index cols) {
  float m = x(base);
  for (Index j = 1; j < cols; ++j) {
    m = x(base + j) > m ? x(base + j) : m;
  }
  return m;
}

// log Σ_j exp(x_j - m), summed in double.
KOKKOS_INLINE_FUNCTION double row_log_sum_exp_shifted(const FloatView& x, Index base, Index cols,
                                                      float m) {
  double s = 0.0;
  for (Index j = 0; j < cols; ++j) {
    s += static_cast<double>(math::exp(x(base + j) - m));
  }
  return math::log(s);
}

KOKKOS_INLINE_FUNCTION double row_dot(const FloatView& a, const FloatView& b, Index base,
                                      Index cols) {
  double s = 0.0;
  for (Index j = 0; j < cols; ++j) {
    s += static_cast<double>(a(base + j)) * static_cast<double>(b(base + j));
  }
  return s;
}

KOKKOS_INLINE_FUNCTION double row_sum(const FloatView& a, Index base, Index cols) {
  double s = 0.0;
  for (Index j = 0; j < cols; ++j) {
    s += static_cast<double>(a(base + j));
  }
  return s;
}
}  // namespace

namespace {
// Row-wise softmax (kLog = false) or log-softmax (kLog = true), max-subtracted.
template <bool kLog>
void softmax_rows(const char* op, const char* label, const Tensor& x, const Tensor& y) {
  check_rows(op, x, {&y});
  const Index rows = x.dim(0);
  const Index cols = x.dim(1);
  if (cols == 0) {
    return;
  }
  const FloatView in = x.view();
  const FloatView out = y.view();
  Kokkos::parallel_for(
      label, Policy(0, rows), KOKKOS_LAMBDA(const Index r) {
        const Index base = r * cols;
        const float m = row_max(in, base, cols);
        const auto shift = static_cast<float>(row_log_sum_exp_shifted(in, base, cols, m));
        for (Index j = 0; j < cols; ++j) {
          const float logp = in(base + j) - m - shift;
          // Not `if constexpr`: nvcc refuses a device lambda's first capture inside one.
          out(base + j) = kLog ? logp : math::exp(logp);
        }
      });
}
}  // namespace

void softmax(const Tensor& x, const Tensor& y) {
  softmax_rows<false>("softmax", "kernels::softmax", x, y);
}

void log_softmax(const Tensor& x, const Tensor& y) {
  softmax_rows<true>("log_softmax", "kernels::log_softmax", x, y);
}

void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  check_rows("softmax_backward", y, {&dy, &dx});
  const Index rows = y.dim(0);
  const Index cols = y.dim(1);
  const FloatView yv = y.view();
  const FloatView g = dy.view();
  const FloatView out = dx.view();
  Kokkos::parallel_for(
      "kernels::softmax_backward", Policy(0, rows), KOKKOS_LAMBDA(const Index r) {
        const Index base = r * cols;
        const auto inner = static_cast<float>(row_dot(g, yv, base, cols));
        for (Index j = 0; j < cols; ++j) {
          out(base + j) = yv(base + j) * (g(base + j) - inner);
        }
      });
}

void log_softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  check_rows("log_softmax_backward", y, {&dy, &dx});
  const Index rows = y.dim(0);
  const Index cols = y.dim(1);
  const FloatView yv = y.view();
  const FloatView g = dy.view();
  const FloatView out = dx.view();
  Kokkos::parallel_for(
      "kernels::log_softmax_backward", Policy(0, rows), KOKKOS_LAMBDA(const Index r) {
        const Index base = r * cols;
        const auto total = static_cast<float>(row_sum(g, base, cols));
        for (Index j = 0; j < cols; ++j) {
          out(base + j) = g(base + j) - math::exp(yv(base + j)) * total;
        }
      });
}

}  // namespace tessera::kernels
