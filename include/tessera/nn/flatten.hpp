#pragma once
// Flatten: (N, a, b, ...) -> (N, a·b·...), a view of the same storage (no copy).
#include "tessera/nn/layer.hpp"

namespace tessera::nn {

/// Flatten has no options; the struct keeps the layer constructors uniform.
struct FlattenOptions {};

class Flatten final : public Layer {
 public:
  /// input: one sample, of rank >= 1.
  Flatten(std::string name, const Shape& input, const FlattenOptions& options = {});

  const char* kind() const override { return "flatten"; }
  Shape output_shape(const Shape& input) const override;
  /// The output shares x's storage (Tensor::reshaped). ctx.saved is empty.
  ForwardResult forward(const Tensor& x, const ForwardOptions& options) override;
  /// dx shares dy's storage.
  Tensor backward(const Tensor& dy, Context&& ctx) override;

 private:
  Shape m_input;  // (a, b, ...)
  Index m_features = 0;
};

}  // namespace tessera::nn
