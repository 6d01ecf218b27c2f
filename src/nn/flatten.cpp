#include "tessera/nn/flatten.hpp"

#include "tessera/core/check.hpp"

namespace tessera::nn {

Flatten::Flatten(std::string name, const Shape& input, const FlattenOptions& /*options*/)
    : Layer(std::move(name)), m_input(input) {
  m_features = output_shape(input)[0];
}

Shape Flatten::output_shape(const Shape& input) const {
  if (input.empty()) {
    TESSERA_THROW("{} '{}': input sample shape {} must have at least one dimension", kind(), name(),
                  to_string(input));
  }
  return {numel(input)};
}

// Context: saves nothing; backward reshapes dy to ctx.input_shape.
ForwardResult Flatten::forward(const Tensor& x, const ForwardOptions& /*options*/) {
  check_batch(x, m_input, "input");
  Context ctx;
  ctx.input_shape = x.shape();
  return {x.reshaped({x.dim(0), m_features}), std::move(ctx)};  // (N, a·b·...)
}

Tensor Flatten::backward(const Tensor& dy, Context&& ctx) {
  check_batch(dy, {m_features}, "output grad");
  if (ctx.input_shape != batch_shape(dy.dim(0), m_input)) {
    TESSERA_THROW(
        "{} '{}': output grad of shape {} does not match the context of the forward pass (input "
        "{})",
        kind(), name(), to_string(dy.shape()), to_string(ctx.input_shape));
  }
  return dy.reshaped(ctx.input_shape);  // (N, a, b, ...)
}

}  // namespace tessera::nn
