#pragma once
// Normalisation layers: batch normalisation over 2 or 3 spatial dimensions (one implementation,
// BatchNormNd, for both) and layer normalisation over the last dimension. Statistics accumulate in
// double. Conventions follow PyTorch: normalisation uses the biased batch variance, the running
// variance is updated with the unbiased one, running = (1 - momentum) · running + momentum · batch.
#include "tessera/nn/layer.hpp"

namespace tessera::nn {

struct BatchNormOptions {
  float momentum = 0.1F;  ///< weight of the batch statistics in the running estimates, in [0, 1]
  float eps = 1e-5F;      ///< added to the variance, > 0
  /// Statistics over the data axis's ranks too (PyTorch's SyncBatchNorm): the batch a step sees,
  /// not this rank's share of it. Off: each data rank normalises with its own samples' statistics
  /// (DistributedDataParallel's behaviour). The spatial axes are always included.
  bool sync = false;
};

/// y = weight · (x - mean) / sqrt(var + eps) + bias per channel, the statistics taken over the
/// batch and the spatial dimensions in training and from the running estimates in eval mode. On
/// samples split over the spatial axes the statistics are the whole volume's (sums reduced over
/// those axes), so a split normalises exactly as one rank does.
/// Parameters "weight" (C) = 1 and "bias" (C) = 0, no weight decay; buffers "running_mean" (C) = 0
/// and "running_var" (C) = 1. These constant initial values are also set by the constructor.
class BatchNormNd : public Layer {
 public:
  const char* kind() const override { return m_kind; }
  Shape output_shape(const Shape& input) const override;
  /// Whole samples or samples split over the spatial axes.
  Layout place_input(const Layout& input) override;
  /// options.training: normalise with the batch statistics and update the running estimates
  /// (needs more than one value per channel); otherwise use the running estimates.
  /// ctx.saved = {x_hat (N, C, spatial...), inv_std (C,), batch_stats (1,)}: the normalised
  /// input, 1 / sqrt(var + eps) of the statistics used, and 1 if those were the batch's, else 0.
  ForwardResult forward(const Tensor& x, const ForwardOptions& options) override;
  Tensor backward(const Tensor& dy, Context&& ctx) override;
  void forward_empty(const ForwardOptions& options) override;
  void backward_empty() override;
  void commit_statistics(comm::Communicator& across) override;

  int spatial_dims() const { return m_spatial_dims; }
  const BatchNormOptions& options() const { return m_options; }
  /// The global input sample shape (C, spatial...) once placed.
  const Shape& input_sample() const { return m_input; }
  const Parameter& weight() const { return parameters()[0]; }
  const Parameter& bias() const { return parameters()[1]; }
  const Parameter& running_mean() const { return buffers()[0]; }
  const Parameter& running_var() const { return buffers()[1]; }

 protected:
  BatchNormNd(std::string name, const Shape& input, const BatchNormOptions& options,
              const char* kind, int spatial_dims, BuildContext context);

 private:
  const char* m_kind;
  int m_spatial_dims;
  BatchNormOptions m_options;
  Shape m_input;                          // (C, spatial...)
  Shape m_local_input;                    // this rank's block of it
  comm::Communicator* m_stats = nullptr;  // the ranks the statistics span (none: this one)
  // Batch statistics kept by forwards with defer_stats, for commit_statistics(): per batch the
  // momentum, the values per channel (0: an empty batch), then the mean and the unbiased variance
  // of each channel.
  std::vector<double> m_kept;

  /// The parameters' partial axes and the statistics' communicator for samples split over `split`.
  void place_statistics(AxisSet split);
};

/// (N, C, H, W) -> (N, C, H, W).
class BatchNorm2d final : public BatchNormNd {
 public:
  BatchNorm2d(std::string name, const Shape& input, const BatchNormOptions& options = {},
              BuildContext context = {});
};
/// (N, C, D, H, W) -> (N, C, D, H, W).
class BatchNorm3d final : public BatchNormNd {
 public:
  BatchNorm3d(std::string name, const Shape& input, const BatchNormOptions& options = {},
              BuildContext context = {});
};

struct LayerNormOptions {
  float eps = 1e-5F;  ///< added to the variance, > 0
};

/// Normalises every row of the sample's LAST dimension: a (T, C) sample gives T rows of C, a (C,)
/// sample one row. y = weight · (x - mean) / sqrt(var + eps) + bias with the biased variance of
/// the row; the same in training and eval. Parameters "weight" (C) = 1 and "bias" (C) = 0, no
/// weight decay (also set by the constructor). Rows split over grid axes (a token slice under
/// sequence parallelism) pass through: each rank normalises its rows, and its parameter gradients
/// are then partial over those axes as well; the features must be whole.
class LayerNorm final : public Layer {
 public:
  LayerNorm(std::string name, const Shape& input, const LayerNormOptions& options = {},
            BuildContext context = {});

  const char* kind() const override { return "layernorm"; }
  Shape output_shape(const Shape& input) const override;
  Layout place_input(const Layout& input) override;
  /// ctx.saved = {x_hat (N, ..., C), inv_std (rows,)}, rows = N · (sample numel / C).
  ForwardResult forward(const Tensor& x, const ForwardOptions& options) override;
  Tensor backward(const Tensor& dy, Context&& ctx) override;

  const LayerNormOptions& options() const { return m_options; }
  const Parameter& weight() const { return parameters()[0]; }
  const Parameter& bias() const { return parameters()[1]; }

 private:
  LayerNormOptions m_options;
  Shape m_input;        // (..., C)
  Shape m_local_input;  // this rank's rows of it
  // Reused from step to step (BufferPool).
  BufferPool m_output;      // y (N, ..., C)
  BufferPool m_x_hat;       // (N, ..., C)
  BufferPool m_inv_std;     // (rows,)
  BufferPool m_input_grad;  // dx (N, ..., C)
};

}  // namespace tessera::nn
