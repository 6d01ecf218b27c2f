#include "tessera/nn/loss.hpp"

#include "tessera/core/check.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/math.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace tessera::nn {
namespace detail {
// The first sample whose label is outside [0, classes), n if none. Not in the anonymous namespace
// nor inside a [[noreturn]] function: nvcc cannot name a device lambda's reduction there (its host
// stub fails to compile).
Index first_bad_label(const IntView& labels, Index n, Index classes) {
  Index first_bad = std::numeric_limits<Index>::max();
  Kokkos::parallel_reduce(
      "softmax_cross_entropy::check_labels", Kokkos::RangePolicy<ExecSpace>(0, n),
      KOKKOS_LAMBDA(const Index i, Index& acc) {
        const Index c = labels(i);
        if ((c < 0 || c >= classes) && i < acc) {
          acc = i;
        }
      },
      Kokkos::Min<Index>(first_bad));
  return std::min(first_bad, n);
}

// Throws naming the first sample whose label is outside [0, classes) (the rare error path).
[[noreturn]] void throw_first_bad_label(const IntView& labels, Index n, Index classes) {
  const Index first_bad = first_bad_label(labels, n, classes);
  TESSERA_CHECK(first_bad < n, "softmax_cross_entropy: no label out of range among {}", n);
  std::int32_t value = 0;
  Kokkos::deep_copy(value, Kokkos::subview(labels, first_bad));
  throw Error(
      fmt::format("softmax_cross_entropy: sample {} has label {}, expected a class in [0, {})",
                  first_bad, value, classes));
}
}  // namespace detail

namespace {
using Policy = Kokkos::RangePolicy<ExecSpace>;

void check_global_batch(const char* loss, Index global_batch, Index n) {
  if (global_batch < n) {
    throw Error(fmt::format("{}: global_batch = {} is smaller than the local batch N = {}", loss,
                            global_batch, n));
  }
}

// Cross-entropy of one row starting at flat index `base`: writes the row's gradient (scaled by
// `scale`) into g, returns the per-sample loss and sets `hit` to whether the first argmax is the
// label. One exp per element: g holds exp(x - max) until the row sum is known.
KOKKOS_INLINE_FUNCTION double cross_entropy_row(const FloatView& x, const FloatView& g, Index base,
                                                Index classes, Index label, float scale,
                                                bool& hit) {
  float m = x(base);
  Index arg = 0;
  for (Index j = 1; j < classes; ++j) {
    if (x(base + j) > m) {
      m = x(base + j);
      arg = j;
    }
  }
  double s = 0.0;
  for (Index j = 0; j < classes; ++j) {
    const float e = math::exp(x(base + j) - m);
    g(base + j) = e;
    s += static_cast<double>(e);
  }
  const auto inv_s = static_cast<float>(1.0 / s);
  for (Index j = 0; j < classes; ++j) {
    const float p = g(base + j) * inv_s;
    g(base + j) = (j == label ? p - 1.0F : p) * scale;
  }
  hit = arg == label;
  return static_cast<double>(m) + math::log(s) - static_cast<double>(x(base + label));
}

// Every row in one pass: sums {loss, correct, labels out of range} (an array reduction).
struct CrossEntropyRows {
  using value_type = double[];
  unsigned value_count = 3;
  FloatView x;
  FloatView g;
  IntView labels;
  Index classes;
  float scale;

  KOKKOS_INLINE_FUNCTION void operator()(const Index r, value_type acc) const {
    const Index label = labels(r);
    if (label < 0 || label >= classes) {
      acc[2] += 1.0;  // reported (with the first such sample) after the pass
      return;
    }
    bool hit = false;
    acc[0] += cross_entropy_row(x, g, r * classes, classes, label, scale, hit);
    acc[1] += hit ? 1.0 : 0.0;
  }
};
}  // namespace

LossOutput softmax_cross_entropy(const Tensor& logits, const IntView& labels, Index global_batch) {
  if (logits.rank() != 2 || logits.dim(0) < 1 || logits.dim(1) < 1) {
    throw Error(
        fmt::format("softmax_cross_entropy: logits have shape {}, expected (N, classes) "
                    "with N >= 1 and classes >= 1",
                    to_string(logits.shape())));
  }
  const Index n = logits.dim(0);
  const Index classes = logits.dim(1);
  const auto n_labels = static_cast<Index>(labels.extent(0));
  if (n_labels != n) {
    throw Error(fmt::format("softmax_cross_entropy: {} labels for logits of shape {}, expected {}",
                            n_labels, to_string(logits.shape()), n));
  }
  check_global_batch("softmax_cross_entropy", global_batch, n);

  LossOutput out;
  out.grad = Tensor::uninitialized("softmax_cross_entropy::grad", logits.shape());  // all written
  const auto scale = static_cast<float>(1.0 / static_cast<double>(global_batch));
  double totals[3] = {0.0, 0.0, 0.0};  // loss sum, correct, bad labels
  Kokkos::parallel_reduce(
      "softmax_cross_entropy::rows", Policy(0, n),
      CrossEntropyRows{3, logits.view(), out.grad.view(), labels, classes, scale},
      Kokkos::View<double*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(totals, 3));
  if (totals[2] > 0.0) {
    detail::throw_first_bad_label(labels, n, classes);
  }
  out.loss = totals[0] / static_cast<double>(global_batch);
  out.correct = static_cast<Index>(totals[1]);
  return out;
}

LossOutput vocab_parallel_cross_entropy(const Tensor& logits, const IntView& labels,
                                        Index global_rows, Index offset, Index classes,
                                        comm::Communicator& axis) {
  const Index local = logits.rank() >= 1 ? logits.dim(-1) : 0;
  if (logits.rank() < 2 || local < 1 || offset < 0 || offset + local > classes) {
    throw Error(
        fmt::format("vocab_parallel_cross_entropy: logits of shape {} for classes [{}, {}) "
                    "of {}: expected (..., V_local) with V_local >= 1 inside the classes",
                    to_string(logits.shape()), offset, offset + local, classes));
  }
  const Index n = logits.numel() / local;  // rows
  if (static_cast<Index>(labels.extent(0)) != n) {
    throw Error(fmt::format("vocab_parallel_cross_entropy: {} labels for {} rows of logits {}",
                            labels.extent(0), n, to_string(logits.shape())));
  }
  check_global_batch("vocab_parallel_cross_entropy", global_rows, n);
  const auto un = static_cast<size_t>(n);
  const FloatView x = logits.view();
  LossOutput out;
  out.grad = Tensor::uninitialized("vocab_parallel_cross_entropy::grad", logits.shape());
  const FloatView g = out.grad.view();

  // 1. Each row's maximum over the whole vocabulary, and its first argmax.
  Kokkos::View<double*, MemSpace> row_max("vocab_ce::max", un);
  Kokkos::View<std::int64_t*, MemSpace> row_arg("vocab_ce::argmax", un);
  Kokkos::parallel_for(
      "vocab_ce::local_max", Policy(0, n), KOKKOS_LAMBDA(const Index r) {
        float m = x(r * local);
        Index arg = 0;
        for (Index j = 1; j < local; ++j) {
          if (x(r * local + j) > m) {
            m = x(r * local + j);
            arg = j;
          }
        }
        row_max(r) = static_cast<double>(m);
        row_arg(r) = offset + arg;
      });
  auto max_host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), row_max);
  std::vector<double> local_max(max_host.data(), max_host.data() + n);
  axis.allreduce(comm::Buffer(max_host.data(), n), {comm::ReduceOp::max})->wait();
  auto arg_host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), row_arg);
  for (size_t r = 0; r < un; ++r) {  // only the ranks holding the maximum propose their index
    if (local_max[r] != max_host(r)) {
      arg_host(r) = std::numeric_limits<std::int64_t>::max();
    }
  }
  axis.allreduce(comm::Buffer(arg_host.data(), n), {comm::ReduceOp::min})->wait();
  Kokkos::deep_copy(row_max, max_host);

  // 2. Each row's sum of exp(x − max) and the label's logit (zero on the ranks without it).
  Kokkos::View<double*, MemSpace> sums("vocab_ce::sums", 2 * un);  // [sum, label logit] per row
  Index bad = 0;
  Kokkos::parallel_reduce(
      "vocab_ce::local_sums", Policy(0, n),
      KOKKOS_LAMBDA(const Index r, Index& bad_rows) {
        const Index label = labels(r);
        if (label < 0 || label >= classes) {
          ++bad_rows;
        }
        const auto m = static_cast<float>(row_max(r));
        double s = 0.0;
        for (Index j = 0; j < local; ++j) {
          const float e = math::exp(x(r * local + j) - m);
          g(r * local + j) = e;
          s += static_cast<double>(e);
        }
        sums(2 * r) = s;
        sums(2 * r + 1) = label >= offset && label < offset + local
                              ? static_cast<double>(x(r * local + (label - offset)))
                              : 0.0;
      },
      bad);
  if (bad > 0) {
    detail::throw_first_bad_label(labels, n, classes);
  }
  auto sums_host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), sums);
  axis.allreduce(comm::Buffer(sums_host.data(), 2 * n))->wait();
  Kokkos::deep_copy(sums, sums_host);

  // 3. Loss, hits and this rank's block of the gradient.
  const auto scale = static_cast<float>(1.0 / static_cast<double>(global_rows));
  Kokkos::View<std::int64_t*, MemSpace> argmax("vocab_ce::argmax_all", un);
  Kokkos::deep_copy(argmax, arg_host);
  double totals[2] = {0.0, 0.0};
  Kokkos::parallel_reduce(
      "vocab_ce::rows", Policy(0, n),
      KOKKOS_LAMBDA(const Index r, double& loss, double& hits) {
        const double s = sums(2 * r);
        const auto inv_s = static_cast<float>(1.0 / s);
        const Index label = labels(r);
        for (Index j = 0; j < local; ++j) {
          const float p = g(r * local + j) * inv_s;
          g(r * local + j) = (offset + j == label ? p - 1.0F : p) * scale;
        }
        loss += row_max(r) + math::log(s) - sums(2 * r + 1);
        hits += argmax(r) == label ? 1.0 : 0.0;
      },
      totals[0], totals[1]);
  out.loss = totals[0] / static_cast<double>(global_rows);
  out.correct = static_cast<Index>(totals[1]);
  return out;
}

LossOutput mean_squared_error(const Tensor& prediction, const Tensor& target, Index global_batch) {
  if (prediction.rank() < 1 || prediction.dim(0) < 1 || prediction.numel() < prediction.dim(0)) {
    throw Error(
        fmt::format("mean_squared_error: prediction has shape {}, expected (N, F...) with "
                    "N >= 1 and at least one element per sample",
                    to_string(prediction.shape())));
  }
  if (target.shape() != prediction.shape()) {
    throw Error(fmt::format("mean_squared_error: prediction has shape {} but target has shape {}",
                            to_string(prediction.shape()), to_string(target.shape())));
  }
  const Index n = prediction.dim(0);
  check_global_batch("mean_squared_error", global_batch, n);

  const Index per_sample = prediction.numel() / n;
  const double denom = static_cast<double>(per_sample) * static_cast<double>(global_batch);
  const auto grad_scale = static_cast<float>(2.0 / denom);
  LossOutput out;
  out.grad = Tensor::uninitialized("mean_squared_error::grad", prediction.shape());  // all written
  const FloatView p = prediction.view();
  const FloatView t = target.view();
  const FloatView g = out.grad.view();
  double total = 0.0;
  Kokkos::parallel_reduce(
      "mean_squared_error::elements", Policy(0, prediction.numel()),
      KOKKOS_LAMBDA(const Index i, double& acc) {
        const float d = p(i) - t(i);
        g(i) = grad_scale * d;
        acc += static_cast<double>(d) * static_cast<double>(d);
      },
      total);
  out.loss = total / denom;
  return out;
}

}  // namespace tessera::nn
