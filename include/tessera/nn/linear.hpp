#pragma once
// Linear (dense, fully connected) layer: y = x · Wᵀ + b, like torch.nn.Linear — whole on every
// rank, or split over the tensor axis as Megatron-LM's ColumnParallelLinear / RowParallelLinear.
#include "tessera/nn/layer.hpp"
#include "tessera/nn/tensor_parallel.hpp"

namespace tessera::nn {

/// How a Linear is split over the tensor axis (the deck's `split`).
enum class LinearSplit {
  none,    ///< whole on every rank
  output,  ///< W's rows (output features) and b split: whole input in, split output out
  input,   ///< W's columns (input features) split: split input in, whole output out (allreduce)
};
/// "none", "output", "input".
const char* linear_split_name(LinearSplit split);

struct LinearOptions {
  Index out = 0;     ///< output features (>= 1)
  bool bias = true;  ///< add a learned bias
  LinearSplit split = LinearSplit::none;
};

/// x: (N, in) → y: (N, out), or per token (N, T, in) → (N, T, out) (a transformer's layers: every
/// token a row of the GEMM). Parameters "<name>.weight" (out, in) and "<name>.bias" (out,), both
/// initialised U(-1/√in, 1/√in) (each rank its block, equal to the same block of the whole
/// tensor); weight decay on the weight only.
///
/// Split over the tensor axis of T ranks (uneven blocks allowed; every rank needs at least one
/// row or column), as Megatron-LM does it:
/// - split = output: W (out, in) dim 0 and b dim 0 over tensor. Forward y_t = x · W_tᵀ + b_t, no
///   communication (copy_to); the output is split over tensor on its feature dimension. Backward
///   dx = Σ_t dy_t · W_t: one allreduce over tensor (copy_to's backward), only where dx is needed.
/// - split = input: W dim 1 over tensor, b whole. Takes an input split over tensor on its feature
///   dimension (from a split = output layer, possibly through element-wise layers); forward
///   y = Σ_t x_t · W_tᵀ + b: one allreduce over tensor (reduce_from), the bias added once (by
///   tensor rank 0, before the sum). Backward: no communication; the bias gradient is the same on
///   every tensor rank.
/// With sequence parallelism (BuildContext::sequence_parallel, per-token samples) the activations
/// outside a split region are token slices: split = output gathers its input's slices (allgather;
/// reduce-scatter of dx backward), split = input gives the sum's token slice (reduce-scatter;
/// allgather of dy backward), and split = none on a token slice works on it (its gradients then
/// partial over the tensor axis too). At T = 1 every split is the whole layer.
class Linear : public Layer {
 public:
  /// `input` is one sample's shape, (in,) or (tokens, in); `context` the grid place and tensor
  /// communicator.
  Linear(std::string name, const Shape& input, const LinearOptions& options,
         BuildContext context = {});

  const char* kind() const override { return "linear"; }
  Shape output_shape(const Shape& input) const override;
  /// none: whole (or a token slice) in, the same out; output: whole or a token slice in, features
  /// split out; input: features split in, whole (a token slice with sequence parallelism) out.
  Layout place_input(const Layout& input) override;
  /// ctx.saved = {x (N, [T,] in)}: the weight gradient needs the input (this rank's block of it).
  ForwardResult forward(const Tensor& x, const ForwardOptions& options) override;
  Tensor backward(const Tensor& dy, Context&& ctx) override;

  Index in_features() const { return m_in; }
  Index out_features() const { return m_out; }
  bool has_bias() const { return m_bias; }
  LinearSplit split() const { return m_split; }
  Parameter& weight() { return parameters()[0]; }
  /// Only when has_bias().
  Parameter& bias() { return parameters()[1]; }

 private:
  /// A sample of `features` features: (features,) or (tokens, features).
  Shape sample_shape(Index features) const;

  Shape m_lead;           // the sample's leading dimensions: () or (tokens,)
  Index m_in = 0;         // global
  Index m_out = 0;        // global
  Index m_local_in = 0;   // this rank's input features
  Index m_local_out = 0;  // this rank's output features
  Shape m_local_x;        // this rank's input sample as place_input left it
  Shape m_local_y;        // this rank's output sample
  bool m_sliced = false;  // the input is a token slice (sequence parallelism)
  bool m_bias = true;
  LinearSplit m_split = LinearSplit::none;
  TensorRegion m_region;
  BufferPool m_output;      // y (N, out), reused from step to step
  BufferPool m_input_grad;  // dx (N, in)
};

}  // namespace tessera::nn
