#pragma once
// Pooling layers: max and average pooling over 2 or 3 spatial dimensions (one implementation,
// PoolNd, for both), and global average pooling. Windows, padding and the average's divisor follow
// PyTorch's defaults (ceil_mode = false, count_include_pad = true); see kernels/pooling.hpp.
#include "tessera/kernels/pooling.hpp"
#include "tessera/nn/layer.hpp"
#include "tessera/nn/spatial.hpp"

#include <vector>

namespace tessera::nn {

/// Options of the max and average pooling layers. Each holds one value for every spatial
/// dimension or one value per spatial dimension (depth, height, width order).
struct PoolOptions {
  std::vector<Index> kernel;  ///< window size, >= 1 (required)
  std::vector<Index> stride;  ///< step, >= 1; empty = kernel
  std::vector<Index> pad;     ///< zero padding on both sides, 0 <= pad < kernel; empty = 0
};

/// Max or average pooling over the `spatial_dims` trailing dimensions of a (C, spatial...) sample.
/// MaxPool2d/3d and AvgPool2d/3d only pick the kind, the dimension count and the mode.
class PoolNd : public Layer {
 public:
  const char* kind() const override { return m_kind; }
  Shape output_shape(const Shape& input) const override;
  /// Whole samples, or samples split over the spatial axes (nn/spatial.hpp): each rank pools its
  /// output block from its input block and the halo its windows reach into.
  Layout place_input(const Layout& input) override;
  /// Max pooling: ctx.saved = {argmax (N, C, spatial_out...)}, each window's maximum as its
  /// position inside the window (kernels::max_pool_forward). Average pooling saves nothing.
  ForwardResult forward(const Tensor& x, const ForwardOptions& options) override;
  Tensor backward(const Tensor& dy, Context&& ctx) override;

  int spatial_dims() const { return m_spatial_dims; }
  /// The options expanded to one value per spatial dimension.
  const std::vector<Index>& kernel() const { return m_kernel; }
  const std::vector<Index>& stride() const { return m_stride; }
  const std::vector<Index>& pad() const { return m_pad; }

 protected:
  enum class Mode { max, average };
  PoolNd(std::string name, const Shape& input, const PoolOptions& options, const char* kind,
         int spatial_dims, Mode mode, BuildContext context);

 private:
  /// The geometry of a batch of n samples of this rank's input (its window on a spatial split).
  kernels::PoolGeometry geometry(Index n) const;

  const char* m_kind;
  int m_spatial_dims;
  Mode m_mode;
  std::vector<Index> m_kernel;
  std::vector<Index> m_stride;
  std::vector<Index> m_pad;
  Shape m_input;                 // (C, spatial...)
  Shape m_output;                // (C, spatial_out...)
  Shape m_local_input;           // this rank's block of m_input
  Shape m_local_output;          // and of m_output
  std::unique_ptr<Halo> m_halo;  // on a spatial split only
  Layout m_placed;
  Layout m_output_layout;
};

/// (N, C, H, W) -> (N, C, H', W'), the maximum of each window.
class MaxPool2d final : public PoolNd {
 public:
  MaxPool2d(std::string name, const Shape& input, const PoolOptions& options,
            BuildContext context = {});
};
/// (N, C, D, H, W) -> (N, C, D', H', W'), the maximum of each window.
class MaxPool3d final : public PoolNd {
 public:
  MaxPool3d(std::string name, const Shape& input, const PoolOptions& options,
            BuildContext context = {});
};
/// (N, C, H, W) -> (N, C, H', W'), the mean of each window (padding counted as zeros).
class AvgPool2d final : public PoolNd {
 public:
  AvgPool2d(std::string name, const Shape& input, const PoolOptions& options,
            BuildContext context = {});
};
/// (N, C, D, H, W) -> (N, C, D', H', W'), the mean of each window (padding counted as zeros).
class AvgPool3d final : public PoolNd {
 public:
  AvgPool3d(std::string name, const Shape& input, const PoolOptions& options,
            BuildContext context = {});
};

/// Global average pooling has no options; the struct keeps the layer constructors uniform.
struct GlobalAvgPoolOptions {};

/// (N, C, H, W) or (N, C, D, H, W) -> (N, C): the mean of every channel's plane.
class GlobalAvgPool final : public Layer {
 public:
  GlobalAvgPool(std::string name, const Shape& input, const GlobalAvgPoolOptions& options = {},
                BuildContext context = {});

  const char* kind() const override { return "global_avgpool"; }
  Shape output_shape(const Shape& input) const override;
  /// Whole samples, or samples split over the spatial axes: the block sums are added over those
  /// axes, and the output (N, C) is whole on every rank (the hand-over to a dense head).
  Layout place_input(const Layout& input) override;
  /// ctx.saved is empty: backward needs only ctx.input_shape.
  ForwardResult forward(const Tensor& x, const ForwardOptions& options) override;
  Tensor backward(const Tensor& dy, Context&& ctx) override;

 private:
  Shape m_input;                        // (C, spatial...)
  Shape m_local_input;                  // this rank's block of it
  comm::Communicator* m_sum = nullptr;  // the spatial axes the sample is split over
};

}  // namespace tessera::nn
