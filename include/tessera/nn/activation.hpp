#pragma once
// Element-wise activation layers: ReLU, LeakyReLU, GELU (exact erf form), Tanh, Sigmoid. Any
// sample shape; the output has the input's shape; no parameters.
#include "tessera/kernels/elementwise.hpp"
#include "tessera/nn/layer.hpp"

#include <string>

namespace tessera::nn {

using kernels::ActivationKind;

struct ActivationOptions {
  ActivationKind kind = ActivationKind::relu;
  float negative_slope = 0.01F;  ///< LeakyReLU only: f(x) = negative_slope · x for x <= 0
};

class Activation : public Layer {
 public:
  /// `input`: one sample's shape (batch excluded), every extent >= 1. negative_slope must be
  /// finite. `context` places a split input (an activation between two split layers).
  Activation(std::string name, const Shape& input, const ActivationOptions& options,
             BuildContext context = {});

  /// "relu", "leaky_relu", "gelu", "tanh" or "sigmoid".
  const char* kind() const override;
  /// The input shape: activations map any shape to itself.
  Shape output_shape(const Shape& input) const override;
  /// Element-wise: any placement, passed through; forward() takes this rank's block.
  Layout place_input(const Layout& input) override;
  /// x: (N, input...) -> (N, input...). ctx.saved = {y} for ReLU, Tanh, Sigmoid and LeakyReLU
  /// with negative_slope >= 0; {x} for GELU and LeakyReLU with a negative slope
  /// (kernels::activation_saved).
  ForwardResult forward(const Tensor& x, const ForwardOptions& options) override;
  /// dy: (N, input...) -> dx of the same shape.
  Tensor backward(const Tensor& dy, Context&& ctx) override;

  ActivationKind activation() const { return m_options.kind; }
  float negative_slope() const { return m_options.negative_slope; }

 private:
  Shape m_input;  // this rank's block of one sample
  ActivationOptions m_options;
  BufferPool m_output;      // y, reused from step to step
  BufferPool m_input_grad;  // dx
};

}  // namespace tessera::nn
