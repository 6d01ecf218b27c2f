#include "tessera/kernels/bias.hpp"

#include "tessera/core/check.hpp"

namespace tessera::kernels {
namespace {
using Policy = Kokkos::RangePolicy<ExecSpace>;

/// Features per work item of the dense (S = 1) gradient: each item owns a block of columns and
/// walks the rows, so the inner loop is contiguous and vectorises; the block is small enough for
/// its double accumulators to stay in registers (a block of 64 kept them on the stack: one load
/// and one store per element).
constexpr Index kFeatureBlock = 16;
/// Independent partial sums of a row sum: a plain float reduction is latency-bound and the
/// compiler may not reorder it; kLanes separate accumulators vectorise without reassociation.
constexpr Index kLanes = 16;

KOKKOS_INLINE_FUNCTION double sum_contiguous(const float* p, Index n) {
  float lane[kLanes] = {};
  Index s = 0;
  for (; s + kLanes <= n; s += kLanes) {
    for (Index k = 0; k < kLanes; ++k) {
      lane[k] += p[s + k];
    }
  }
  double total = 0.0;
  for (; s < n; ++s) {
    total += static_cast<double>(p[s]);
  }
  for (Index k = 0; k < kLanes; ++k) {
    total += static_cast<double>(lane[k]);
  }
  return total;
}

/// out[k] += Σ_n g[n · stride + k] for k < width, summed in double.
template <Index kWidth>
KOKKOS_INLINE_FUNCTION void sum_columns(const float* g, Index rows, Index stride, float* out) {
  double acc[kWidth] = {};
  for (Index n = 0; n < rows; ++n) {
    const float* r = g + n * stride;
    for (Index k = 0; k < kWidth; ++k) {
      acc[k] += static_cast<double>(r[k]);
    }
  }
  for (Index k = 0; k < kWidth; ++k) {
    out[k] += static_cast<float>(acc[k]);
  }
}

/// The same for a block narrower than kFeatureBlock (the last one).
KOKKOS_INLINE_FUNCTION void sum_columns_tail(const float* g, Index rows, Index stride, Index width,
                                             float* out) {
  double acc[kFeatureBlock] = {};
  for (Index n = 0; n < rows; ++n) {
    const float* r = g + n * stride;
    for (Index k = 0; k < width; ++k) {
      acc[k] += static_cast<double>(r[k]);
    }
  }
  for (Index k = 0; k < width; ++k) {
    out[k] += static_cast<float>(acc[k]);
  }
}

/// Channels C and the per-channel run length S of (N, C, S...), after checking bias is (C,) and
/// [first, first + count) is a range of samples of t.
struct Extents {
  Index channels;
  Index spatial;
};
Extents check(const Tensor& t, const Tensor& bias, Index first, Index count, const char* op,
              const char* t_name, const char* b_name) {
  TESSERA_CHECK(t.rank() >= 2, "{}: {} '{}' has shape {}, expected (N, C, ...)", op, t_name,
                t.label(), to_string(t.shape()));
  TESSERA_CHECK(bias.rank() == 1 && bias.dim(0) == t.dim(1),
                "{}: {} '{}' has shape {}, expected ({},) for {} of shape {}", op, b_name,
                bias.label(), to_string(bias.shape()), t.dim(1), t_name, to_string(t.shape()));
  TESSERA_CHECK(first >= 0 && count >= 0 && first + count <= t.dim(0),
                "{}: samples [{}, {}) out of range for {} of shape {}", op, first, first + count,
                t_name, to_string(t.shape()));
  const Index c = t.dim(1);
  return {c, c == 0 || t.dim(0) == 0 ? 0 : t.numel() / (t.dim(0) * c)};
}
}  // namespace

void add_bias(const Tensor& y, const Tensor& bias) {
  add_bias(y, bias, 0, y.rank() >= 1 ? y.dim(0) : 0);
}

void add_bias(const Tensor& y, const Tensor& bias, Index first, Index count) {
  const Extents e = check(y, bias, first, count, "add_bias", "output", "bias");
  const Index channels = e.channels;
  const Index spatial = e.spatial;
  float* out = y.data() + first * channels * spatial;
  const float* b = bias.data();
  if (spatial == 1) {
    // (N, F): one row of F features per sample.
    Kokkos::parallel_for(
        "kernels::add_bias_rows", Policy(0, count), KOKKOS_LAMBDA(const Index n) {
          float* r = out + n * channels;
          for (Index c = 0; c < channels; ++c) {
            r[c] += b[c];
          }
        });
    return;
  }
  // (N, C, S...): one contiguous plane of S elements per (sample, channel).
  Kokkos::parallel_for(
      "kernels::add_bias_planes", Policy(0, count * channels), KOKKOS_LAMBDA(const Index nc) {
        const float v = b[nc % channels];
        float* p = out + nc * spatial;
        for (Index s = 0; s < spatial; ++s) {
          p[s] += v;
        }
      });
}

void broadcast_bias(const Tensor& y, const Tensor& bias) {
  const Index count = y.rank() >= 1 ? y.dim(0) : 0;
  const Extents e = check(y, bias, 0, count, "broadcast_bias", "output", "bias");
  const Index channels = e.channels;
  const Index spatial = e.spatial;
  float* out = y.data();
  const float* b = bias.data();
  if (spatial == 1) {
    Kokkos::parallel_for(
        "kernels::broadcast_bias_rows", Policy(0, count), KOKKOS_LAMBDA(const Index n) {
          float* r = out + n * channels;
          for (Index c = 0; c < channels; ++c) {
            r[c] = b[c];
          }
        });
    return;
  }
  Kokkos::parallel_for(
      "kernels::broadcast_bias_planes", Policy(0, count * channels), KOKKOS_LAMBDA(const Index nc) {
        const float v = b[nc % channels];
        float* p = out + nc * spatial;
        for (Index s = 0; s < spatial; ++s) {
          p[s] = v;
        }
      });
}

void bias_grad(const Tensor& dy, const Tensor& db) {
  bias_grad(dy, db, 0, dy.rank() >= 1 ? dy.dim(0) : 0);
}

void bias_grad(const Tensor& dy, const Tensor& db, Index first, Index count) {
  const Extents e = check(dy, db, first, count, "bias_grad", "output grad", "bias grad");
  const Index channels = e.channels;
  const Index spatial = e.spatial;
  const float* g = dy.data() + first * channels * spatial;
  float* out = db.data();
  if (spatial == 1) {
    // (N, F): each item sums a block of columns over the rows.
    const Index blocks = (channels + kFeatureBlock - 1) / kFeatureBlock;
    Kokkos::parallel_for(
        "kernels::bias_grad_rows", Policy(0, blocks), KOKKOS_LAMBDA(const Index blk) {
          const Index c0 = blk * kFeatureBlock;
          const Index len = channels - c0 < kFeatureBlock ? channels - c0 : kFeatureBlock;
          if (len == kFeatureBlock) {
            sum_columns<kFeatureBlock>(g + c0, count, channels, out + c0);
          } else {
            sum_columns_tail(g + c0, count, channels, len, out + c0);
          }
        });
    return;
  }
  // (N, C, S...): each item owns one channel and sums its planes.
  Kokkos::parallel_for(
      "kernels::bias_grad_planes", Policy(0, channels), KOKKOS_LAMBDA(const Index c) {
        double total = 0.0;
        for (Index n = 0; n < count; ++n) {
          total += sum_contiguous(g + (n * channels + c) * spatial, spatial);
        }
        out[c] += static_cast<float>(total);
      });
}

}  // namespace tessera::kernels
