#pragma once
// Pooling kernels over 3 spatial dimensions: max, average and global average pooling, forward and
// backward. Tensors are row-major (planes, D, H, W), a plane being one (sample, channel) pair;
// 2-D pooling is the case D = 1 with kernel, stride 1 and pad 0 in depth.
//
// Windows follow PyTorch (ceil_mode = false): output extent floor((in + 2 pad - kernel) / stride)
// + 1, padding on both sides. Max pooling ignores padded positions (they act as -inf); average
// pooling counts them as zeros (count_include_pad = true, PyTorch's default), so every window
// divides by the full kernel volume kD·kH·kW.
//
// The backward kernels scatter-add dy into dx one plane per parallel iteration, visiting the
// outputs in order: no atomics, and a fixed order of additions, so the result is bitwise
// reproducible on every backend.
#include "tessera/core/tensor.hpp"

namespace tessera::kernels {

/// Extents (or window sizes, strides, pads) in depth, height and width.
struct Dims3 {
  Index d = 1;
  Index h = 1;
  Index w = 1;

  KOKKOS_INLINE_FUNCTION Index volume() const { return d * h * w; }
};

/// Shape of one pooling: `planes` independent (sample, channel) planes of extent `in`, pooled by
/// windows `kernel` moved by `stride` over the input padded by `pad` on both sides into `out`.
struct PoolGeometry {
  Index planes = 0;
  Dims3 in{};
  Dims3 out{};
  Dims3 kernel{};
  Dims3 stride{};
  Dims3 pad{0, 0, 0};
};

/// floor((in + 2 pad - kernel) / stride) + 1, or 0 when not even one window fits.
Index pool_output_extent(Index in, Index kernel, Index stride, Index pad);

/// y = max over each window of x; argmax receives, per output element, the position of the
/// maximum in its input plane as a float: (d·in.h + h)·in.w + w (exact in float since the plane
/// holds fewer than 2^24 elements). Ties keep the first maximum in row-major order; a NaN in a
/// window wins, as in PyTorch.
/// x: (planes, in.d, in.h, in.w); y and argmax: (planes, out.d, out.h, out.w), any shapes of
/// those sizes.
void max_pool_forward(const Tensor& x, const Tensor& y, const Tensor& argmax,
                      const PoolGeometry& g);
/// dx = Σ over windows of dy routed to each window's argmax. dx is overwritten.
void max_pool_backward(const Tensor& dy, const Tensor& argmax, const Tensor& dx,
                       const PoolGeometry& g);

/// y = (Σ over each window of x, padding counted as 0) / (kD·kH·kW).
void avg_pool_forward(const Tensor& x, const Tensor& y, const PoolGeometry& g);
/// dx = Σ over the windows covering each element of dy / (kD·kH·kW). dx is overwritten.
void avg_pool_backward(const Tensor& dy, const Tensor& dx, const PoolGeometry& g);

/// y(p) = mean of plane p of x (accumulated in double). x: (planes, plane_size); y: (planes,).
void global_avg_pool_forward(const Tensor& x, const Tensor& y, Index planes, Index plane_size);
/// dx(p, i) = dy(p) / plane_size (or / divisor when > 0: the whole plane's size when x held a block
/// of it). dx is overwritten.
void global_avg_pool_backward(const Tensor& dy, const Tensor& dx, Index planes, Index plane_size,
                              Index divisor = 0);

}  // namespace tessera::kernels
