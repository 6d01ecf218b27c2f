#pragma once
// Convolutions on the GPU with cuDNN (its legacy-compatible cnn API, still in cuDNN 9): NCHW /
// NCDHW float tensors, weights (out, in, k...) as in PyTorch, cross-correlation with stride and
// zero padding. A Convolution owns the cuDNN descriptors, the algorithms chosen for forward,
// backward-data and backward-filter, and one workspace large enough for all three.
#include "tessera/kernels/cuda/device.hpp"

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

namespace tessera::kernels::cuda {

/// The shapes of a convolution with 2 (H, W) or 3 (D, H, W) spatial dimensions.
struct ConvGeometry {
  Index batch = 1;
  Index in_channels = 0;
  Index out_channels = 0;
  std::vector<Index> input;    // spatial extent of one sample: (H, W) or (D, H, W)
  std::vector<Index> kernel;   // (kH, kW) or (kD, kH, kW)
  std::vector<Index> stride;   // empty: 1 in every dimension
  std::vector<Index> padding;  // zeros added on both sides; empty: 0 in every dimension
};

struct ConvOptions {
  /// Allow TF32 tensor-core algorithms (faster on A100/H100, ~1e-3 relative error). Off: only
  /// FMA algorithms, full FP32 accuracy.
  bool allow_tf32 = false;
  /// Time every algorithm on the device (cudnnFind*) instead of cuDNN's heuristics
  /// (cudnnGet*_v7). Slower to construct; can pick faster algorithms.
  bool benchmark = false;
  /// Only algorithms with a fixed reduction order (bitwise reproducible backward passes).
  bool deterministic = false;
  /// Algorithms needing a larger workspace (bytes) are skipped.
  std::size_t workspace_limit = std::size_t{256} << 20;
};

/// The output shape (N, C_out, out spatial...) of `geometry` with `spatial_dims` (2 or 3) spatial
/// dimensions, out = (in + 2·padding − kernel) / stride + 1. Throws tessera::Error naming `kind`
/// and `name` and the shapes when the geometry is invalid. Host only: needs no device.
std::vector<Index> conv_output_shape(const std::string& kind, const std::string& name,
                                     int spatial_dims, const ConvGeometry& geometry);

/// A convolution bound to a cuDNN handle; every call is queued on handle.stream() and returns at
/// once. The handle must outlive the object (and stay where it is), and the calls of one object
/// must not run concurrently (they share the workspace): keep them on one stream. All pointers are
/// device pointers to packed tensors of the shapes below. Conv2d / Conv3d fix the number of spatial
/// dimensions.
class Convolution {
 public:
  ~Convolution();
  Convolution(Convolution&&) noexcept;
  Convolution& operator=(Convolution&&) noexcept;
  Convolution(const Convolution&) = delete;
  Convolution& operator=(const Convolution&) = delete;

  /// "conv2d" or "conv3d", and the layer's name; both appear in every error message.
  const std::string& kind() const;
  const std::string& name() const;

  std::vector<Index> input_shape() const;   // (N, C_in, spatial...)
  std::vector<Index> weight_shape() const;  // (C_out, C_in, k...)
  std::vector<Index> output_shape() const;  // (N, C_out, out spatial...)
  std::vector<Index> bias_shape() const;    // (C_out)
  /// Bytes of the workspace owned (the largest need of the three chosen algorithms).
  std::size_t workspace_bytes() const;
  /// The chosen cuDNN algorithms (cudnnConvolutionFwdAlgo_t, ...BwdDataAlgo_t, ...BwdFilterAlgo_t
  /// as ints), for logs and benchmarks.
  int forward_algorithm() const;
  int backward_data_algorithm() const;
  int backward_filter_algorithm() const;

  /// Changes the batch size (the last batch of an epoch may be smaller): rebuilds the input and
  /// output descriptors, chooses the algorithms again and grows the workspace when needed. If it
  /// throws, the object is unusable.
  void set_batch(Index batch);

  /// y = conv(x, w) + bias; bias may be nullptr (no bias). y is overwritten.
  void forward(const float* x, const float* w, const float* bias, float* y);
  /// dx = the gradient of the input (overwritten).
  void backward_data(const float* w, const float* dy, float* dx);
  /// dw += the gradient of the weight (accumulates, beta = 1).
  void backward_filter(const float* x, const float* dy, float* dw);
  /// db += Σ over batch and space of dy (accumulates).
  void backward_bias(const float* dy, float* db);

 protected:
  Convolution(CudnnHandle& handle, std::string kind, std::string name, int spatial_dims,
              const ConvGeometry& geometry, const ConvOptions& options);

 private:
  struct Plan;  // descriptors, algorithms, workspace (conv_cudnn.cpp)
  std::unique_ptr<Plan> m_plan;
};

/// 2-D convolution: x (N, C_in, H, W), w (C_out, C_in, kH, kW), y (N, C_out, H_out, W_out).
class Conv2d : public Convolution {
 public:
  Conv2d(CudnnHandle& handle, std::string name, const ConvGeometry& geometry,
         const ConvOptions& options = {});
};

/// 3-D convolution: x (N, C_in, D, H, W), w (C_out, C_in, kD, kH, kW), y (N, C_out, D', H', W').
class Conv3d : public Convolution {
 public:
  Conv3d(CudnnHandle& handle, std::string name, const ConvGeometry& geometry,
         const ConvOptions& options = {});
};

}  // namespace tessera::kernels::cuda
