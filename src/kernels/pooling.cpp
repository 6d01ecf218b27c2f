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

// Splits a flat row-major index over (planes, e.d, e.h, e.w).
KOKKOS_INLINE_FUNCTION void unflatten(Index i, const Dims3& e, Index& plane, Index& d, Index& h,
                                      Index& w) {
  w = i % e.w;
  i /= e.w;
  h = i % e.h;
  i /= e.h;
  d = i % e.d;
  plane = i / e.d;
}

KOKKOS_INLINE_FUNCTION Index flat(Index plane, Index d, Index h, Index w, const Dims3& e) {
  return ((plane * e.d + d) * e.h + h) * e.w + w;
}

// The part [lo, hi) of a window of `kernel` starting at input position `start` that lies inside
// [0, extent), as offsets within the window.
KOKKOS_INLINE_FUNCTION void window_inside(Index start, Index kernel, Index extent, Index& lo,
                                          Index& hi) {
  lo = start < 0 ? -start : 0;
  hi = extent - start < kernel ? extent - start : kernel;
}

// The outputs [lo, hi] (inclusive; empty when lo > hi) whose windows cover padded position p.
KOKKOS_INLINE_FUNCTION void covering_windows(Index p, Index kernel, Index stride, Index out,
                                             Index& lo, Index& hi) {
  lo = p < kernel ? 0 : (p - kernel + stride) / stride;  // ceil((p - kernel + 1) / stride)
  hi = p / stride < out - 1 ? p / stride : out - 1;
}
}  // namespace

Index pool_output_extent(Index in, Index kernel, Index stride, Index pad) {
  if (stride < 1 || in + 2 * pad < kernel) {
    return 0;
  }
  return (in + 2 * pad - kernel) / stride + 1;
}

void max_pool_forward(const Tensor& x, const Tensor& y, const Tensor& argmax,
                      const PoolGeometry& g) {
  check_geometry(x, y, g, "max_pool_forward");
  TESSERA_CHECK(argmax.numel() == y.numel(),
                "max_pool_forward: argmax '{}' of shape {} does not match output {}",
                argmax.label(), to_string(argmax.shape()), to_string(y.shape()));
  TESSERA_CHECK(g.kernel.volume() < (Index{1} << 24),
                "max_pool_forward: kernel {} has more than 2^24 elements", dims_string(g.kernel));
  const FloatView xv = x.view();
  const FloatView yv = y.view();
  const FloatView av = argmax.view();
  const PoolGeometry geo = g;
  Kokkos::parallel_for(
      "kernels::max_pool_forward", Policy(0, y.numel()), KOKKOS_LAMBDA(const Index i) {
        Index plane = 0, od = 0, oh = 0, ow = 0;
        unflatten(i, geo.out, plane, od, oh, ow);
        const Index d0 = od * geo.stride.d - geo.pad.d;
        const Index h0 = oh * geo.stride.h - geo.pad.h;
        const Index w0 = ow * geo.stride.w - geo.pad.w;
        Index kd_lo = 0, kd_hi = 0, kh_lo = 0, kh_hi = 0, kw_lo = 0, kw_hi = 0;
        window_inside(d0, geo.kernel.d, geo.in.d, kd_lo, kd_hi);
        window_inside(h0, geo.kernel.h, geo.in.h, kh_lo, kh_hi);
        window_inside(w0, geo.kernel.w, geo.in.w, kw_lo, kw_hi);
        float best = 0.0F;
        Index best_at = -1;
        for (Index kd = kd_lo; kd < kd_hi; ++kd) {
          for (Index kh = kh_lo; kh < kh_hi; ++kh) {
            for (Index kw = kw_lo; kw < kw_hi; ++kw) {
              const float v = xv(flat(plane, d0 + kd, h0 + kh, w0 + kw, geo.in));
              if (best_at < 0 || v > best || v != v) {  // v != v: NaN propagates
                best = v;
                best_at = (kd * geo.kernel.h + kh) * geo.kernel.w + kw;
              }
            }
          }
        }
        yv(i) = best;
        av(i) = static_cast<float>(best_at);
      });
}

void max_pool_backward(const Tensor& dy, const Tensor& argmax, const Tensor& dx,
                       const PoolGeometry& g) {
  check_geometry(dx, dy, g, "max_pool_backward");
  TESSERA_CHECK(argmax.numel() == dy.numel(),
                "max_pool_backward: argmax '{}' of shape {} does not match output grad {}",
                argmax.label(), to_string(argmax.shape()), to_string(dy.shape()));
  const FloatView dyv = dy.view();
  const FloatView av = argmax.view();
  const FloatView dxv = dx.view();
  const PoolGeometry geo = g;
  Kokkos::parallel_for(
      "kernels::max_pool_backward", Policy(0, dx.numel()), KOKKOS_LAMBDA(const Index i) {
        Index plane = 0, id = 0, ih = 0, iw = 0;
        unflatten(i, geo.in, plane, id, ih, iw);
        const Index pd = id + geo.pad.d;
        const Index ph = ih + geo.pad.h;
        const Index pw = iw + geo.pad.w;
        Index od_lo = 0, od_hi = 0, oh_lo = 0, oh_hi = 0, ow_lo = 0, ow_hi = 0;
        covering_windows(pd, geo.kernel.d, geo.stride.d, geo.out.d, od_lo, od_hi);
        covering_windows(ph, geo.kernel.h, geo.stride.h, geo.out.h, oh_lo, oh_hi);
        covering_windows(pw, geo.kernel.w, geo.stride.w, geo.out.w, ow_lo, ow_hi);
        float acc = 0.0F;
        for (Index od = od_lo; od <= od_hi; ++od) {
          for (Index oh = oh_lo; oh <= oh_hi; ++oh) {
            for (Index ow = ow_lo; ow <= ow_hi; ++ow) {
              const Index o = flat(plane, od, oh, ow, geo.out);
              const Index at =
                  ((pd - od * geo.stride.d) * geo.kernel.h + (ph - oh * geo.stride.h)) *
                      geo.kernel.w +
                  (pw - ow * geo.stride.w);
              if (static_cast<Index>(av(o)) == at) {
                acc += dyv(o);
              }
            }
          }
        }
        dxv(i) = acc;
      });
}

void avg_pool_forward(const Tensor& x, const Tensor& y, const PoolGeometry& g) {
  check_geometry(x, y, g, "avg_pool_forward");
  const FloatView xv = x.view();
  const FloatView yv = y.view();
  const PoolGeometry geo = g;
  const double inv_volume = 1.0 / static_cast<double>(g.kernel.volume());
  Kokkos::parallel_for(
      "kernels::avg_pool_forward", Policy(0, y.numel()), KOKKOS_LAMBDA(const Index i) {
        Index plane = 0, od = 0, oh = 0, ow = 0;
        unflatten(i, geo.out, plane, od, oh, ow);
        const Index d0 = od * geo.stride.d - geo.pad.d;
        const Index h0 = oh * geo.stride.h - geo.pad.h;
        const Index w0 = ow * geo.stride.w - geo.pad.w;
        Index kd_lo = 0, kd_hi = 0, kh_lo = 0, kh_hi = 0, kw_lo = 0, kw_hi = 0;
        window_inside(d0, geo.kernel.d, geo.in.d, kd_lo, kd_hi);
        window_inside(h0, geo.kernel.h, geo.in.h, kh_lo, kh_hi);
        window_inside(w0, geo.kernel.w, geo.in.w, kw_lo, kw_hi);
        double acc = 0.0;
        for (Index kd = kd_lo; kd < kd_hi; ++kd) {
          for (Index kh = kh_lo; kh < kh_hi; ++kh) {
            for (Index kw = kw_lo; kw < kw_hi; ++kw) {
              acc += static_cast<double>(xv(flat(plane, d0 + kd, h0 + kh, w0 + kw, geo.in)));
            }
          }
        }
        yv(i) = static_cast<float>(acc * inv_volume);
      });
}

void avg_pool_backward(const Tensor& dy, const Tensor& dx, const PoolGeometry& g) {
  check_geometry(dx, dy, g, "avg_pool_backward");
  const FloatView dyv = dy.view();
  const FloatView dxv = dx.view();
  const PoolGeometry geo = g;
  const double inv_volume = 1.0 / static_cast<double>(g.kernel.volume());
  Kokkos::parallel_for(
      "kernels::avg_pool_backward", Policy(0, dx.numel()), KOKKOS_LAMBDA(const Index i) {
        Index plane = 0, id = 0, ih = 0, iw = 0;
        unflatten(i, geo.in, plane, id, ih, iw);
        Index od_lo = 0, od_hi = 0, oh_lo = 0, oh_hi = 0, ow_lo = 0, ow_hi = 0;
        covering_windows(id + geo.pad.d, geo.kernel.d, geo.stride.d, geo.out.d, od_lo, od_hi);
        covering_windows(ih + geo.pad.h, geo.kernel.h, geo.stride.h, geo.out.h, oh_lo, oh_hi);
        covering_windows(iw + geo.pad.w, geo.kernel.w, geo.stride.w, geo.out.w, ow_lo, ow_hi);
        double acc = 0.0;
        for (Index od = od_lo; od <= od_hi; ++od) {
          for (Index oh = oh_lo; oh <= oh_hi; ++oh) {
            for (Index ow = ow_lo; ow <= ow_hi; ++ow) {
              acc += static_cast<double>(dyv(flat(plane, od, oh, ow, geo.out)));
            }
          }
        }
        dxv(i) = static_cast<float>(acc * inv_volume);
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
