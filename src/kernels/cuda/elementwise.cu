// nvcc kernels: fill, per-channel bias add and its gradient. Grid-stride loops over Index, so any
// element count works with a bounded grid.
#include "tessera/kernels/cuda/elementwise.hpp"

#include <algorithm>
#include <string>

namespace tessera::kernels::cuda {
namespace {

constexpr int kBlock = 256;            // threads per block (a multiple of the warp size)
constexpr Index kMaxBlocks = 1 << 16;  // grid-stride loops cover the rest

unsigned int blocks_for(Index count) {
  return static_cast<unsigned int>(std::min<Index>((count + kBlock - 1) / kBlock, kMaxBlocks));
}

void check_extents(const char* what, Index batch, Index channels, Index spatial) {
  if (batch < 0 || channels < 0 || spatial < 0) {
    throw Error(std::string(what) + ": negative extent (batch " + std::to_string(batch) +
                ", channels " + std::to_string(channels) + ", spatial " + std::to_string(spatial) +
                ")");
  }
}

__global__ void fill_kernel(float* x, Index count, float value) {
  const Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    x[i] = value;
  }
}

__global__ void add_channel_bias_kernel(float* y, const float* bias, Index count, Index channels,
                                        Index spatial) {
  const Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    y[i] += bias[(i / spatial) % channels];
  }
}

// One block per channel c: the block's threads stride over the batch × spatial elements of c,
// then reduce within warps (shuffles) and across warps (shared memory).
__global__ void channel_bias_grad_kernel(const float* dy, float* db, Index batch, Index channels,
                                         Index spatial) {
  const Index c = blockIdx.x;
  const Index per_channel = batch * spatial;
  float sum = 0.0F;
  for (Index i = threadIdx.x; i < per_channel; i += blockDim.x) {
    const Index n = i / spatial;
    const Index s = i - n * spatial;
    sum += dy[(n * channels + c) * spatial + s];
  }
  for (int offset = warpSize / 2; offset > 0; offset /= 2) {
    sum += __shfl_down_sync(0xFFFFFFFFU, sum, offset);
  }
  __shared__ float warp_sums[kBlock / 32];
  const unsigned int lane = threadIdx.x % warpSize;
  const unsigned int warp = threadIdx.x / warpSize;
  if (lane == 0) {
    warp_sums[warp] = sum;
  }
  __syncthreads();
  if (warp == 0) {
    const unsigned int warps = blockDim.x / warpSize;
    sum = lane < warps ? warp_sums[lane] : 0.0F;
    for (int offset = warpSize / 2; offset > 0; offset /= 2) {
      sum += __shfl_down_sync(0xFFFFFFFFU, sum, offset);
    }
    if (lane == 0) {
      db[c] += sum;
    }
  }
}

}  // namespace

void fill(float* x, Index count, float value, cudaStream_t stream) {
  if (count < 0) {
    throw Error("cuda::fill: negative count " + std::to_string(count));
  }
  if (count == 0) {
    return;
  }
  fill_kernel<<<blocks_for(count), kBlock, 0, stream>>>(x, count, value);
  TESSERA_CUDA_CHECK(cudaGetLastError());
}

void add_channel_bias(float* y, const float* bias, Index batch, Index channels, Index spatial,
                      cudaStream_t stream) {
  check_extents("cuda::add_channel_bias", batch, channels, spatial);
  const Index count = batch * channels * spatial;
  if (count == 0) {
    return;
  }
  add_channel_bias_kernel<<<blocks_for(count), kBlock, 0, stream>>>(y, bias, count, channels,
                                                                    spatial);
  TESSERA_CUDA_CHECK(cudaGetLastError());
}

void accumulate_channel_bias_grad(const float* dy, float* db, Index batch, Index channels,
                                  Index spatial, cudaStream_t stream) {
  check_extents("cuda::accumulate_channel_bias_grad", batch, channels, spatial);
  if (channels == 0) {
    return;
  }
  if (channels > 0x7FFFFFFF) {
    throw Error("cuda::accumulate_channel_bias_grad: " + std::to_string(channels) +
                " channels exceed the grid's x extent");
  }
  channel_bias_grad_kernel<<<static_cast<unsigned int>(channels), kBlock, 0, stream>>>(
      dy, db, batch, channels, spatial);
  TESSERA_CUDA_CHECK(cudaGetLastError());
}

}  // namespace tessera::kernels::cuda
