#pragma once
// Linear (dense, fully connected) layer: y = x · Wᵀ + b, like torch.nn.Linear.
#include "tessera/nn/layer.hpp"

namespace tessera::nn {

struct LinearOptions {
  Index out = 0;     ///< output features (>= 1)
  bool bias = true;  ///< add a learned bias
};

/// x: (N, in) → y: (N, out). Parameters "<name>.weight" (out, in) and "<name>.bias" (out,), both
/// initialised U(-1/√in, 1/√in); weight decay on the weight only.
class Linear : public Layer {
 public:
  /// `input` is one sample's shape, (in,).
  Linear(std::string name, const Shape& input, const LinearOptions& options);

  const char* kind() const override { return "linear"; }
  Shape output_shape(const Shape& input) const override;
  /// ctx.saved = {x (N, in)}: the weight gradient needs the input.
  ForwardResult forward(const Tensor& x, const ForwardOptions& options) override;
  Tensor backward(const Tensor& dy, Context&& ctx) override;

  Index in_features() const { return m_in; }
  Index out_features() const { return m_out; }
  bool has_bias() const { return m_bias; }
  Parameter& weight() { return parameters()[0]; }
  /// Only when has_bias().
  Parameter& bias() { return parameters()[1]; }

 private:
  Index m_in = 0;
  Index m_out = 0;
  bool m_bias = true;
  BufferPool m_output;      // y (N, out), reused from step to step
  BufferPool m_input_grad;  // dx (N, in)
};

}  // namespace tessera::nn
