#include "tessera/kernels/pooling.hpp"

#include "tessera/core/check.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace tessera::kernels {
namespace {
using Policy = Kokkos::RangePolicy<ExecSpace>;

std::string dims_string(const Dims3& e) {
  return fmt::format("{}x{}x{}", e.d, e.h, e.w);
}

// Throws unless `in` and `out` hold the sizes `g` describes and `g` is self-consistent.
void check_geometry(const Tensor& in, const Tensor& out, const PoolGeometry& g, const char* op) {
  TESSERA_CHECK(g.kernel.d >= 1 && g.kernel.h >= 1 && g.kernel.w >= 1 && g.stride.d >= 1 &&
                    g.stride.h >= 1 && g.stride.w >= 1 && g.pad.d >= 0 && g.pad.h >= 0 &&
                    g.pad.w >= 0,
                "{}: kernel {}, stride {} must be >= 1 and pad {} >= 0", op, dims_string(g.kernel),
                dims_string(g.stride), dims_string(g.pad));
  TESSERA_CHECK(g.out.d == pool_output_extent(g.in.d, g.kernel.d, g.stride.d, g.pad.d) &&
                    g.out.h == pool_output_extent(g.in.h, g.kernel.h, g.stride.h, g.pad.h) &&
                    g.out.w == pool_output_extent(g.in.w, g.kernel.w, g.stride.w, g.pad.w),
                "{}: output extent {} does not follow from input {}, kernel {}, stride {}, pad {}",
                op, dims_string(g.out), dims_string(g.in), dims_string(g.kernel),
                dims_string(g.stride), dims_string(g.pad));
  TESSERA_CHECK(in.numel() == g.planes * g.in.volume(),
                "{}: '{}' of shape {} is not {} planes of {}", op, in.label(),
                to_string(in.shape()), g.planes, dims_string(g.in));
  TESSERA_CHECK(out.numel() == g.planes * g.out.volume(),
                "{}: '{}' of shape {} is not {} planes of {}", op, out.label(),
                to_string(out.shape()), g.planes, dims_string(g.out));
}

// The part [lo, hi) of a window of `kernel` starting at input position `start` that lies inside
// [0, extent), as offsets within the window.
KOKKOS_INLINE_FUNCTION void window_inside(Index start, Index kernel, Index extent, Index& lo,
                                          Index& hi) {
  lo = start < 0 ? -start : 0;
  hi = extent - start < kernel ? extent - start : kernel;
}

// The windows of one output row (plane, od, oh) of a pooling: where they start in depth and
// height, the part of the kernel inside the input there, and the plane's first input element.
struct RowWindows {
  Index d0, h0, kd_lo, kd_hi, kh_lo, kh_hi, in_plane;
};

KOKKOS_INLINE_FUNCTION RowWindows row_windows(Index row, const PoolGeometry& g) {
  const Index oh = row % g.out.h;
  const Index od = (row / g.out.h) % g.out.d;
  const Index plane = row / (g.out.h * g.out.d);
  RowWindows r{od * g.stride.d - g.pad.d, oh * g.stride.h - g.pad.h, 0, 0, 0, 0,
               plane * g.in.volume()};
  window_inside(r.d0, g.kernel.d, g.in.d, r.kd_lo, r.kd_hi);
  window_inside(r.h0, g.kernel.h, g.in.h, r.kh_lo, r.kh_hi);
  return r;
}
}  // namespace

Index pool_output_extent(Index in, Index kernel, Index stride, Index pad) {
  if (stride < 1 || in + 2 * pad < kernel) {
    return 0;
  }
  return (in + 2 * pad - kernel) / stride + 1;
}

// The forward kernels run one output row (plane, od, oh) per iteration: the index arithmetic
// (divisions) happens once per row, and the innermost loop walks the row contiguously.
//
// Max pooling splits each row into its interior outputs, whose windows lie inside the input in w
// (the window's d/h extent is the row's, the same for all of them), and the few at the edges. The
// interior is swept window element by window element, each sweep a loop over the outputs that
// compares one input element per output against the running maximum held in y and argmax: the
// select is one compare-and-blend per output, with no branch for random data to mispredict (a
// loop over each window's elements, innermost, compiled to branches that cost half the step of
// the Fashion-MNIST CNN). The elements are visited in row-major window order in both parts, so
// ties keep the first maximum.
namespace {
/// Whether a window's element v replaces the running maximum: when larger, or a NaN over a number
/// (a NaN wins, once). Written as "best is a number and v is not <= best", a form GCC vectorises.
KOKKOS_INLINE_FUNCTION bool takes(float v, float best) {
  return best == best && !(v <= best);
}

/// take ? a : b as a bitwise blend. Written as a conditional, GCC 12 compiles it (and the compare
/// feeding it) to a branch, which random data mispredicts half the time.
KOKKOS_INLINE_FUNCTION float blend(bool take, float a, float b) {
  std::uint32_t ua = 0, ub = 0;
  std::memcpy(&ua, &a, sizeof(float));
  std::memcpy(&ub, &b, sizeof(float));
  const std::uint32_t mask = 0U - static_cast<std::uint32_t>(take);
  const std::uint32_t r = (ua & mask) | (ub & ~mask);
  float out = 0.0F;
  std::memcpy(&out, &r, sizeof(float));
  return out;
}

/// One output row of a 2×2, stride-2, unpadded max pooling (CNNs' usual pooling): input rows r0
/// and r1, output y and argmax a (positions in the input plane, r0[0] being at `base`; `w` is the
/// input row length). A loop the compiler vectorises: the 2×2 windows are two pairs of adjacent
/// elements, the selects are blends, the positions 32-bit integers (exactly converted: < 2^24).
KOKKOS_INLINE_FUNCTION void max_pool_row_2x2(const float* __restrict r0, const float* __restrict r1,
                                             float* __restrict y, float* __restrict a,
                                             std::int32_t wo, std::int32_t w, std::int32_t base) {
  for (std::int32_t ow = 0; ow < wo; ++ow) {
    const float v0 = r0[2 * ow], v1 = r0[2 * ow + 1], v2 = r1[2 * ow], v3 = r1[2 * ow + 1];
    float best = v0;
    std::int32_t at = 0;
    bool take = takes(v1, best);
    best = take ? v1 : best;
    at = take ? 1 : at;
    take = takes(v2, best);
    best = take ? v2 : best;
    at = take ? w : at;
    take = takes(v3, best);
    best = take ? v3 : best;
    at = take ? w + 1 : at;
    y[ow] = best;
    a[ow] = static_cast<float>(base + 2 * ow + at);
  }
}
}  // namespace

void max_pool_forward(const Tensor& x, const Tensor& y, const Tensor& argmax,
                      const PoolGeometry& g) {
  check_geometry(x, y, g, "max_pool_forward");
  TESSERA_CHECK(argmax.numel() == y.numel(),
                "max_pool_forward: argmax '{}' of shape {} does not match output {}",
                argmax.label(), to_string(argmax.shape()), to_string(y.shape()));
  TESSERA_CHECK(g.in.volume() < (Index{1} << 24),
                "max_pool_forward: input plane {} has more than 2^24 elements", dims_string(g.in));
  const float* xp = x.data();
  float* yp = y.data();
  float* ap = argmax.data();
  const PoolGeometry geo = g;
  if (g.kernel.d == 1 && g.stride.d == 1 && g.pad.d == 0 && g.kernel.h == 2 && g.kernel.w == 2 &&
      g.stride.h == 2 && g.stride.w == 2 && g.pad.h == 0 && g.pad.w == 0) {
    Kokkos::parallel_for(
        "kernels::max_pool_forward_2x2", Policy(0, g.planes * g.out.d * g.out.h),
        KOKKOS_LAMBDA(const Index row) {
          const RowWindows rw = row_windows(row, geo);
          const Index at = (rw.d0 * geo.in.h + rw.h0) * geo.in.w;  // window row 0, in the plane
          const float* r0 = xp + rw.in_plane + at;
          max_pool_row_2x2(r0, r0 + geo.in.w, yp + row * geo.out.w, ap + row * geo.out.w,
                           static_cast<std::int32_t>(geo.out.w),
                           static_cast<std::int32_t>(geo.in.w), static_cast<std::int32_t>(at));
        });
    return;
  }
  // Interior outputs [iw_lo, iw_hi): ow·sw - pw >= 0 and ow·sw - pw + kw <= W.
  const Index iw_lo = std::min(g.out.w, (g.pad.w + g.stride.w - 1) / g.stride.w);
  const Index reach = g.in.w - g.kernel.w + g.pad.w;  // largest ow·sw with the window inside
  const Index iw_hi =
      reach < 0 ? iw_lo : std::max(iw_lo, std::min(g.out.w, reach / g.stride.w + 1));
  Kokkos::parallel_for(
      "kernels::max_pool_forward", Policy(0, g.planes * g.out.d * g.out.h),
      KOKKOS_LAMBDA(const Index row) {
        const RowWindows rw = row_windows(row, geo);
        const Index d0 = rw.d0, h0 = rw.h0;
        const Index kd_lo = rw.kd_lo, kd_hi = rw.kd_hi, kh_lo = rw.kh_lo, kh_hi = rw.kh_hi;
        const float* xs = xp + rw.in_plane;
        float* yr = yp + row * geo.out.w;
        float* ar = ap + row * geo.out.w;
        const Index sw = geo.stride.w;
        // Edges: one window at a time, its part inside the input.
        auto edge = [&](Index ow) {
          const Index w0 = ow * sw - geo.pad.w;
          Index kw_lo = 0, kw_hi = 0;
          window_inside(w0, geo.kernel.w, geo.in.w, kw_lo, kw_hi);
          Index best_at = ((d0 + kd_lo) * geo.in.h + (h0 + kh_lo)) * geo.in.w + w0 + kw_lo;
          float best = xs[best_at];
          for (Index kd = kd_lo; kd < kd_hi; ++kd) {
            for (Index kh = kh_lo; kh < kh_hi; ++kh) {
              const Index line = ((d0 + kd) * geo.in.h + (h0 + kh)) * geo.in.w + w0;
              for (Index kw = kw_lo; kw < kw_hi; ++kw) {
                const float v = xs[line + kw];
                const bool take = takes(v, best);
                best = take ? v : best;
                best_at = take ? line + kw : best_at;
              }
            }
          }
          yr[ow] = best;
          ar[ow] = static_cast<float>(best_at);
        };
        for (Index ow = 0; ow < iw_lo; ++ow) {
          edge(ow);
        }
        // Interior: start from each window's first element, then sweep the others.
        const Index first = ((d0 + kd_lo) * geo.in.h + (h0 + kh_lo)) * geo.in.w - geo.pad.w;
        for (Index ow = iw_lo; ow < iw_hi; ++ow) {
          yr[ow] = xs[first + ow * sw];
          ar[ow] = static_cast<float>(first + ow * sw);
        }
        for (Index kd = kd_lo; kd < kd_hi; ++kd) {
          for (Index kh = kh_lo; kh < kh_hi; ++kh) {
            const Index line = ((d0 + kd) * geo.in.h + (h0 + kh)) * geo.in.w - geo.pad.w;
            for (Index kw = 0; kw < geo.kernel.w; ++kw) {
              for (Index ow = iw_lo; ow < iw_hi; ++ow) {
                const Index at = line + kw + ow * sw;
                const float v = xs[at];
                const float best = yr[ow];
                const bool take = takes(v, best);
                yr[ow] = blend(take, v, best);
                ar[ow] = blend(take, static_cast<float>(at), ar[ow]);
              }
            }
          }
        }
        for (Index ow = iw_hi; ow < geo.out.w; ++ow) {
          edge(ow);
        }
      });
}

// The backward kernels run one plane per iteration and, within it, visit the outputs in order,
// adding each one's gradient into its window: the scatter-add of dy, with no two iterations
// touching the same element (no atomics) and a fixed order of additions (bitwise reproducible).
// (For non-overlapping windows, writing dx in one pass — dy at the argmax, 0 elsewhere — measured
// 4× slower than this zero-fill and scatter: 2.3 against 0.55 ms for the Fashion-MNIST CNN's
// first pooling.)
void max_pool_backward(const Tensor& dy, const Tensor& argmax, const Tensor& dx,
                       const PoolGeometry& g) {
  check_geometry(dx, dy, g, "max_pool_backward");
  TESSERA_CHECK(argmax.numel() == dy.numel(),
                "max_pool_backward: argmax '{}' of shape {} does not match output grad {}",
                argmax.label(), to_string(argmax.shape()), to_string(dy.shape()));
  const FloatView dyv = dy.view();
  const FloatView av = argmax.view();
  const FloatView dxv = dx.view();
  const Index in_volume = g.in.volume();
  const Index out_volume = g.out.volume();
  Kokkos::parallel_for(
      "kernels::max_pool_backward", Policy(0, g.planes), KOKKOS_LAMBDA(const Index plane) {
        const Index in0 = plane * in_volume;
        const Index out0 = plane * out_volume;
        for (Index j = 0; j < in_volume; ++j) {
          dxv(in0 + j) = 0.0F;
        }
        for (Index o = 0; o < out_volume; ++o) {
          dxv(in0 + static_cast<Index>(av(out0 + o))) += dyv(out0 + o);
        }
      });
}

void avg_pool_forward(const Tensor& x, const Tensor& y, const PoolGeometry& g) {
  check_geometry(x, y, g, "avg_pool_forward");
  const FloatView xv = x.view();
  const FloatView yv = y.view();
  const PoolGeometry geo = g;
  const double inv_volume = 1.0 / static_cast<double>(g.kernel.volume());
  Kokkos::parallel_for(
      "kernels::avg_pool_forward", Policy(0, g.planes * g.out.d * g.out.h),
      KOKKOS_LAMBDA(const Index row) {
        const RowWindows rw = row_windows(row, geo);
        const Index d0 = rw.d0, h0 = rw.h0, in_plane = rw.in_plane;
        const Index kd_lo = rw.kd_lo, kd_hi = rw.kd_hi, kh_lo = rw.kh_lo, kh_hi = rw.kh_hi;
        for (Index ow = 0; ow < geo.out.w; ++ow) {
          const Index w0 = ow * geo.stride.w - geo.pad.w;
          Index kw_lo = 0, kw_hi = 0;
          window_inside(w0, geo.kernel.w, geo.in.w, kw_lo, kw_hi);
          double acc = 0.0;
          for (Index kd = kd_lo; kd < kd_hi; ++kd) {
            for (Index kh = kh_lo; kh < kh_hi; ++kh) {
              const Index line = in_plane + ((d0 + kd) * geo.in.h + (h0 + kh)) * geo.in.w + w0;
              for (Index kw = kw_lo; kw < kw_hi; ++kw) {
                acc += static_cast<double>(xv(line + kw));
              }
            }
          }
          yv(row * geo.out.w + ow) = static_cast<float>(acc * inv_volume);
        }
      });
}

void avg_pool_backward(const Tensor& dy, const Tensor& dx, const PoolGeometry& g) {
  check_geometry(dx, dy, g, "avg_pool_backward");
  const FloatView dyv = dy.view();
  const FloatView dxv = dx.view();
  const PoolGeometry geo = g;
  const auto inv_volume = static_cast<float>(1.0 / static_cast<double>(g.kernel.volume()));
  Kokkos::parallel_for(
      "kernels::avg_pool_backward", Policy(0, g.planes), KOKKOS_LAMBDA(const Index plane) {
        const Index in0 = plane * geo.in.volume();
        const Index out0 = plane * geo.out.volume();
        for (Index j = 0; j < geo.in.volume(); ++j) {
          dxv(in0 + j) = 0.0F;
        }
        for (Index od = 0; od < geo.out.d; ++od) {
          const Index d0 = od * geo.stride.d - geo.pad.d;
          Index kd_lo = 0, kd_hi = 0;
          window_inside(d0, geo.kernel.d, geo.in.d, kd_lo, kd_hi);
          for (Index oh = 0; oh < geo.out.h; ++oh) {
            const Index h0 = oh * geo.stride.h - geo.pad.h;
            Index kh_lo = 0, kh_hi = 0;
            window_inside(h0, geo.kernel.h, geo.in.h, kh_lo, kh_hi);
            for (Index ow = 0; ow < geo.out.w; ++ow) {
              const Index w0 = ow * geo.stride.w - geo.pad.w;
              Index kw_lo = 0, kw_hi = 0;
              window_inside(w0, geo.kernel.w, geo.in.w, kw_lo, kw_hi);
              const float share = dyv(out0 + (od * geo.out.h + oh) * geo.out.w + ow) * inv_volume;
              for (Index kd = kd_lo; kd < kd_hi; ++kd) {
                for (Index kh = kh_lo; kh < kh_hi; ++kh) {
                  const Index line = in0 + ((d0 + kd) * geo.in.h + (h0 + kh)) * geo.in.w + w0;
                  for (Index kw = kw_lo; kw < kw_hi; ++kw) {
                    dxv(line + kw) += share;
                  }
                }
              }
            }
          }
        }
      });
}

void global_avg_pool_forward(const Tensor& x, const Tensor& y, Index planes, Index plane_size) {
  TESSERA_CHECK(plane_size >= 1 && x.numel() == planes * plane_size && y.numel() == planes,
                "global_avg_pool_forward: input '{}' {} and output '{}' {} are not {} planes of "
                "{} elements and {} means",
                x.label(), to_string(x.shape()), y.label(), to_string(y.shape()), planes,
                plane_size, planes);
  const FloatView xv = x.view();
  const FloatView yv = y.view();
  Kokkos::parallel_for(
      "kernels::global_avg_pool_forward", Policy(0, planes), KOKKOS_LAMBDA(const Index p) {
        double acc = 0.0;
        for (Index j = 0; j < plane_size; ++j) {
          acc += static_cast<double>(xv(p * plane_size + j));
        }
        yv(p) = static_cast<float>(acc / static_cast<double>(plane_size));
      });
}

void global_avg_pool_backward(const Tensor& dy, const Tensor& dx, Index planes, Index plane_size,
                              Index divisor) {
  TESSERA_CHECK(plane_size >= 1 && dx.numel() == planes * plane_size && dy.numel() == planes,
                "global_avg_pool_backward: output grad '{}' {} and input grad '{}' {} are not {} "
                "means and {} planes of {} elements",
                dy.label(), to_string(dy.shape()), dx.label(), to_string(dx.shape()), planes,
                planes, plane_size);
  const FloatView dyv = dy.view();
  const FloatView dxv = dx.view();
  const float inv_size = 1.0F / static_cast<float>(divisor > 0 ? divisor : plane_size);
  Kokkos::parallel_for(
      "kernels::global_avg_pool_backward", Policy(0, dx.numel()),
      KOKKOS_LAMBDA(const Index i) { dxv(i) = dyv(i / plane_size) * inv_size; });
}

}  // namespace tessera::kernels
