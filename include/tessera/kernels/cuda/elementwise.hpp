#pragma once
// Small nvcc kernels of the CUDA backend (src/kernels/cuda/elementwise.cu): fills and the
// per-channel bias of convolutions. All take device pointers, are queued on `stream` and return
// at once; a launch failure throws tessera::Error.
#include "tessera/kernels/cuda/device.hpp"

namespace tessera::kernels::cuda {

/// x[i] = value for i < count.
void fill(float* x, Index count, float value, cudaStream_t stream = nullptr);

/// y[n, c, s...] += bias[c] on a (batch, channels, spatial) tensor, spatial = the product of the
/// trailing extents (NCHW, NCDHW).
void add_channel_bias(float* y, const float* bias, Index batch, Index channels, Index spatial,
                      cudaStream_t stream = nullptr);

/// db[c] += Σ_{n, s} dy[n, c, s] (accumulates, like every parameter gradient). Deterministic: one
/// block per channel, a fixed reduction order.
void accumulate_channel_bias_grad(const float* dy, float* db, Index batch, Index channels,
                                  Index spatial, cudaStream_t stream = nullptr);

}  // namespace tessera::kernels::cuda
