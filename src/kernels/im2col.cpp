#include "tessera/kernels/im2col.hpp"

#include "tessera/core/check.hpp"

namespace tessera::kernels {
namespace {
using Policy = Kokkos::RangePolicy<ExecSpace>;

enum class Direction { unfold, fold };

/// The output positions o in [0, out) whose input index o·stride + offset lies in [0, in): [lo,
/// hi). Rows outside it read the zero padding (unfold) or contribute nothing (fold).
struct ValidRange {
  Index lo = 0;
  Index hi = 0;
};
KOKKOS_INLINE_FUNCTION ValidRange valid_range(Index out, Index in, Index stride, Index offset) {
  Index lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  Index hi = in - 1 - offset < 0 ? 0 : (in - 1 - offset) / stride + 1;
  hi = hi < out ? hi : out;
  lo = lo < hi ? lo : hi;
  return {lo, hi};
}

/// One output row of Wo columns: unfold copies x[base + ow·sw] into col[ow] (zero outside
/// [w.lo, w.hi)); fold adds col[ow] back onto x[base + ow·sw]. base may be negative (padding on
/// the left); only indices inside the row are formed. The stride-1 loops are contiguous and
/// vectorise.
template <Direction dir>
KOKKOS_INLINE_FUNCTION void row(float* xs, Index base, float* out, ValidRange w, Index wo,
                                Index sw) {
  if constexpr (dir == Direction::unfold) {
    for (Index ow = 0; ow < w.lo; ++ow) {
      out[ow] = 0.0F;
    }
    if (sw == 1) {
      for (Index ow = w.lo; ow < w.hi; ++ow) {
        out[ow] = xs[base + ow];
      }
    } else {
      for (Index ow = w.lo; ow < w.hi; ++ow) {
        out[ow] = xs[base + ow * sw];
      }
    }
    for (Index ow = w.hi; ow < wo; ++ow) {
      out[ow] = 0.0F;
    }
  } else {
    if (sw == 1) {
      for (Index ow = w.lo; ow < w.hi; ++ow) {
        xs[base + ow] += out[ow];
      }
    } else {
      for (Index ow = w.lo; ow < w.hi; ++ow) {
        xs[base + ow * sw] += out[ow];
      }
    }
  }
}

/// Output rows [oh_a, oh_b) of one plane when sh = sw = 1 and Wo = W ("same" width); seg holds
/// them, seg[0] being (oh_a, 0). Output row oh then reads input row oh + j - ph from column
/// l - pw on, so the valid rows are one run, position q = oh·Wo + ow ↔ xp[q + shift], instead of
/// many short rows. The shift wraps the columns outside [wr.lo, wr.hi) — padding — onto the
/// neighbouring input row: unfold zeroes them after the copy; fold zeroes them in col (they carry
/// no gradient) before the addition, so they add nothing.
template <Direction dir>
KOKKOS_INLINE_FUNCTION void segment_flat(float* xp, float* seg, Index oh_a, Index oh_b, Index shift,
                                         ValidRange hr, ValidRange wr, Index plane_in, Index wo) {
  const Index base = oh_a * wo;  // position of seg[0]
  const Index end = oh_b * wo;
  const Index va = oh_a > hr.lo ? oh_a : hr.lo;  // valid rows [va, vb)
  const Index vb_raw = oh_b < hr.hi ? oh_b : hr.hi;
  const Index vb = vb_raw > va ? vb_raw : va;
  const Index q0 = va * wo;
  const Index q1 = vb * wo;
  // Clip [q0, q1) to x's plane: the clipped ends are wrapped (padding) columns too.
  Index c0 = -shift > q0 ? -shift : q0;
  c0 = c0 < q1 ? c0 : q1;
  Index c1 = plane_in - shift < q1 ? plane_in - shift : q1;
  c1 = c1 > c0 ? c1 : c0;
  if constexpr (dir == Direction::unfold) {
    for (Index q = base; q < c0; ++q) {
      seg[q - base] = 0.0F;
    }
    if (c1 > c0) {
      float* dst = seg + (c0 - base);
      const float* src = xp + (c0 + shift);
      for (Index k = 0; k < c1 - c0; ++k) {
        dst[k] = src[k];
      }
    }
    for (Index q = c1; q < end; ++q) {
      seg[q - base] = 0.0F;
    }
  }
  // Column by column (a strided loop): these runs are a few elements long, too short for memset.
  for (Index ow = 0; ow < wr.lo; ++ow) {
    for (Index oh = va; oh < vb; ++oh) {
      seg[oh * wo + ow - base] = 0.0F;
    }
  }
  for (Index ow = wr.hi; ow < wo; ++ow) {
    for (Index oh = va; oh < vb; ++oh) {
      seg[oh * wo + ow - base] = 0.0F;
    }
  }
  if constexpr (dir == Direction::fold) {
    if (c1 > c0) {
      const float* src = seg + (c0 - base);
      float* dst = xp + (c0 + shift);
      for (Index k = 0; k < c1 - c0; ++k) {
        dst[k] += src[k];
      }
    }
  }
}

/// The one loop nest behind im2col and col2im. Parallel over (sample, channel) pairs: each owns
/// its input plane and its C·kd·kh·kw rows' segment of col, so folding needs no atomics. The
/// innermost loop runs along W (input) and Wo (col), both contiguous.
template <Direction dir>
void unfold_or_fold(float* x, float* col, const ConvGeometry& g, Index first, Index count,
                    OutputRows rows, const char* label) {
  const Index channels = g.channels;
  const Index d_in = g.input[0], h_in = g.input[1], w_in = g.input[2];
  const Index kd = g.kernel[0], kh = g.kernel[1], kw = g.kernel[2];
  const Index sd = g.stride[0], sh = g.stride[1], sw = g.stride[2];
  const Index pd = g.pad[0], ph = g.pad[1], pw = g.pad[2];
  const Index d_out = g.output[0], h_out = g.output[1], w_out = g.output[2];
  const Index plane_in = g.input_volume();
  const Index kvol = g.kernel_volume();
  const Index t0 = rows.begin;
  const Index t1 = rows.end;
  const Index sample_cols = rows.size() * w_out;  // columns per sample
  const Index ld = count * sample_cols;           // row stride of col
  const Index od_first = t0 / h_out;              // output planes touched by rows [t0, t1)
  const Index od_last = (t1 - 1) / h_out;
  // Stride 1 in H and W with Wo == W ("same" width): each plane is one run (segment_flat).
  const bool flat = sh == 1 && sw == 1 && w_out == w_in;

  Kokkos::parallel_for(
      label, Policy(0, count * channels), KOKKOS_LAMBDA(const Index bc) {
        const Index b = bc / channels;
        const Index c = bc % channels;
        float* xs = x + ((first + b) * channels + c) * plane_in;  // (D, H, W) of (b, c)
        float* cs = col + c * kvol * ld + b * sample_cols;        // rows of channel c, sample b
        for (Index i = 0; i < kd; ++i) {
          const ValidRange dr = valid_range(d_out, d_in, sd, i - pd);
          for (Index j = 0; j < kh; ++j) {
            const ValidRange hr = valid_range(h_out, h_in, sh, j - ph);
            for (Index l = 0; l < kw; ++l) {
              const ValidRange wr = valid_range(w_out, w_in, sw, l - pw);
              float* r = cs + ((i * kh + j) * kw + l) * ld;  // output rows [t0, t1) of this row
              for (Index od = od_first; od <= od_last; ++od) {
                // Output rows [oh_a, oh_b) of plane od, stored from seg on.
                const Index oh_a = od == od_first ? t0 - od * h_out : 0;
                const Index oh_b = od == od_last ? t1 - od * h_out : h_out;
                float* seg = r + (od * h_out + oh_a - t0) * w_out;
                if (od < dr.lo || od >= dr.hi) {
                  if constexpr (dir == Direction::unfold) {
                    for (Index p = 0; p < (oh_b - oh_a) * w_out; ++p) {
                      seg[p] = 0.0F;
                    }
                  }
                  continue;
                }
                const Index id = od * sd + i - pd;
                float* xp = xs + id * h_in * w_in;  // (H, W) plane at depth id
                if (flat) {
                  segment_flat<dir>(xp, seg, oh_a, oh_b, (j - ph) * w_in + (l - pw), hr, wr,
                                    h_in * w_in, w_out);
                  continue;
                }
                for (Index oh = oh_a; oh < oh_b; ++oh) {
                  float* out = seg + (oh - oh_a) * w_out;
                  if (oh < hr.lo || oh >= hr.hi) {
                    if constexpr (dir == Direction::unfold) {
                      for (Index ow = 0; ow < w_out; ++ow) {
                        out[ow] = 0.0F;
                      }
                    }
                    continue;
                  }
                  const Index ih = oh * sh + j - ph;
                  // x index of column ow is base + ow·sw; only [wr.lo, wr.hi) is touched.
                  const Index base = ih * w_in + l - pw;
                  row<dir>(xp, base, out, wr, w_out, sw);
                }
              }
            }
          }
        }
      });
}

void check_args(const Tensor& x, const ConvGeometry& g, Index first, Index count, OutputRows rows,
                const Tensor& col, const char* op, const char* x_name) {
  TESSERA_CHECK(first >= 0 && count >= 0, "{}: bad sample range first = {}, count = {}", op, first,
                count);
  TESSERA_CHECK(g.channels >= 1 && g.output[0] >= 1 && g.output[1] >= 1 && g.output[2] >= 1 &&
                    g.kernel_volume() >= 1,
                "{}: bad geometry: channels {}, output extents ({}, {}, {}), kernel ({}, {}, {})",
                op, g.channels, g.output[0], g.output[1], g.output[2], g.kernel[0], g.kernel[1],
                g.kernel[2]);
  TESSERA_CHECK(rows.begin >= 0 && rows.begin < rows.end && rows.end <= g.output_rows(),
                "{}: output rows [{}, {}) are not a non-empty part of the {} = {}·{} rows", op,
                rows.begin, rows.end, g.output_rows(), g.output[0], g.output[1]);
  TESSERA_CHECK(x.numel() >= (first + count) * g.sample_size(),
                "{}: {} '{}' of shape {} has fewer than {} samples of {} elements (C = {}, D·H·W "
                "= {})",
                op, x_name, x.label(), to_string(x.shape()), first + count, g.sample_size(),
                g.channels, g.input_volume());
  TESSERA_CHECK(col.numel() >= g.col_rows() * count * rows.size() * g.output[2],
                "{}: column buffer '{}' of shape {} is smaller than ({}, {})", op, col.label(),
                to_string(col.shape()), g.col_rows(), count * rows.size() * g.output[2]);
}
}  // namespace

ConvGeometry ConvGeometry::make(Index channels, const std::array<Index, 3>& input,
                                const std::array<Index, 3>& kernel,
                                const std::array<Index, 3>& stride,
                                const std::array<Index, 3>& pad) {
  ConvGeometry g;
  g.channels = channels;
  g.input = input;
  g.kernel = kernel;
  g.stride = stride;
  g.pad = pad;
  for (size_t d = 0; d < 3; ++d) {
    const Index span = input[d] + 2 * pad[d] - kernel[d];
    // Floor division: span is negative when the kernel is larger than the padded input.
    const Index s = stride[d];
    g.output[d] = s >= 1 ? (span >= 0 ? span / s : -((-span + s - 1) / s)) + 1 : 0;
  }
  return g;
}

void im2col(const Tensor& x, const ConvGeometry& g, Index first, Index count, OutputRows rows,
            const Tensor& col) {
  check_args(x, g, first, count, rows, col, "im2col", "input");
  unfold_or_fold<Direction::unfold>(x.data(), col.data(), g, first, count, rows, "kernels::im2col");
}

void im2col(const Tensor& x, const ConvGeometry& g, Index first, Index count, const Tensor& col) {
  im2col(x, g, first, count, OutputRows{0, g.output_rows()}, col);
}

void col2im(const Tensor& col, const ConvGeometry& g, Index first, Index count, OutputRows rows,
            const Tensor& dx) {
  check_args(dx, g, first, count, rows, col, "col2im", "input grad");
  unfold_or_fold<Direction::fold>(dx.data(), col.data(), g, first, count, rows, "kernels::col2im");
}

void col2im(const Tensor& col, const ConvGeometry& g, Index first, Index count, const Tensor& dx) {
  col2im(col, g, first, count, OutputRows{0, g.output_rows()}, dx);
}

}  // namespace tessera::kernels
