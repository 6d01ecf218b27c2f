#include "tessera/kernels/pooling.hpp"

#include "tessera/core/check.hpp"

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
void max_pool_forward(const Tensor& x, const Tensor& y, const Tensor& argmax,
                      const PoolGeometry& g) {
  check_geometry(x, y, g, "max_pool_forward");
  TESSERA_CHECK(argmax.numel() == y.numel(),
                "max_pool_forward: argmax '{}' of shape {} does not match output {}",
                argmax.label(), to_string(argmax.shape()), to_string(y.shape()));
  TESSERA_CHECK(g.in.volume() < (Index{1} << 24),
                "max_pool_forward: input plane {} has more than 2^24 elements", dims_string(g.in));
  const FloatView xv = x.view();
  const FloatView yv = y.view();
  const FloatView av = argmax.view();
  const PoolGeometry geo = g;
  Kokkos::parallel_for(
      "kernels::max_pool_forward", Policy(0, g.planes * g.out.d * g.out.h),
      KOKKOS_LAMBDA(const Index row) {
        const RowWindows rw = row_windows(row, geo);
        const Index d0 = rw.d0, h0 = rw.h0, in_plane = rw.in_plane;
        const Index kd_lo = rw.kd_lo, kd_hi = rw.kd_hi, kh_lo = rw.kh_lo, kh_hi = rw.kh_hi;
        const Index out_row = row * geo.out.w;
        for (Index ow = 0; ow < geo.out.w; ++ow) {
          const Index w0 = ow * geo.stride.w - geo.pad.w;
          Index kw_lo = 0, kw_hi = 0;
          window_inside(w0, geo.kernel.w, geo.in.w, kw_lo, kw_hi);
          // Start from the window's first element, then select without branches (random data
          // makes a branch on "v > best" mispredict half the time).
          Index best_at = ((d0 + kd_lo) * geo.in.h + (h0 + kh_lo)) * geo.in.w + w0 + kw_lo;
          float best = xv(in_plane + best_at);
          for (Index kd = kd_lo; kd < kd_hi; ++kd) {
            for (Index kh = kh_lo; kh < kh_hi; ++kh) {
              const Index line = ((d0 + kd) * geo.in.h + (h0 + kh)) * geo.in.w + w0;
              for (Index kw = kw_lo; kw < kw_hi; ++kw) {
                const float v = xv(in_plane + line + kw);
                const bool take = (v > best) | ((v != v) & (best == best));  // a NaN wins, once
                best = take ? v : best;
                best_at = take ? line + kw : best_at;
              }
            }
          }
          yv(out_row + ow) = best;
          av(out_row + ow) = static_cast<float>(best_at);
        }
      });
}

// The backward kernels run one plane per iteration and, within it, visit the outputs in order,
// adding each one's gradient into its window: the scatter-add of dy, with no two iterations
// touching the same element (no atomics) and a fixed order of additions (bitwise reproducible).
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

void global_avg_pool_backward(const Tensor& dy, const Tensor& dx, Index planes, Index plane_size) {
  TESSERA_CHECK(plane_size >= 1 && dx.numel() == planes * plane_size && dy.numel() == planes,
                "global_avg_pool_backward: output grad '{}' {} and input grad '{}' {} are not {} "
                "means and {} planes of {} elements",
                dy.label(), to_string(dy.shape()), dx.label(), to_string(dx.shape()), planes,
                planes, plane_size);
  const FloatView dyv = dy.view();
  const FloatView dxv = dx.view();
  const float inv_size = 1.0F / static_cast<float>(plane_size);
  Kokkos::parallel_for(
      "kernels::global_avg_pool_backward", Policy(0, dx.numel()),
      KOKKOS_LAMBDA(const Index i) { dxv(i) = dyv(i / plane_size) * inv_size; });
}

}  // namespace tessera::kernels
