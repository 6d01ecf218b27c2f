#include "tessera/nn/activation.hpp"

#include "tessera/core/error.hpp"

#include <fmt/format.h>

#include <cmath>
#include <utility>

namespace tessera::nn {

Activation::Activation(std::string name, const Shape& input, const ActivationOptions& options,
                       BuildContext context)
    : Layer(std::move(name), std::move(context)), m_input(input), m_options(options) {
  if (!kernels::activation_from_name(kernels::activation_name(options.kind))) {
    throw Error(fmt::format("activation '{}': unknown activation kind {}", this->name(),
                            static_cast<int>(options.kind)));
  }
  for (Index d : input) {
    if (d < 1) {
      throw Error(fmt::format("{} '{}': input sample shape {} has an extent < 1", kind(),
                              this->name(), to_string(input)));
    }
  }
  if (!std::isfinite(options.negative_slope)) {
    throw Error(fmt::format("{} '{}': negative_slope = {} must be finite", kind(), this->name(),
                            options.negative_slope));
  }
}

const char* Activation::kind() const {
  return kernels::activation_name(m_options.kind);
}

Shape Activation::output_shape(const Shape& input) const {
  return input;
}

Layout Activation::place_input(const Layout& input) {
  require_not_partial(input);  // f(a) + f(b) is not f(a + b)
  m_input = input.local_shape(context().place());
  return input;
}

ForwardResult Activation::forward(const Tensor& x, const ForwardOptions& /*options*/) {
  check_batch(x, m_input, "input");
  Tensor y = m_output.get(name() + ".output", x.shape());  // every element written below
  kernels::activation_forward(m_options.kind, x, y, m_options.negative_slope);
  Context ctx;
  ctx.input_shape = x.shape();
  const bool keep_output = kernels::activation_saved(m_options.kind, m_options.negative_slope) ==
                           kernels::ActivationSaved::output;
  ctx.saved.push_back(keep_output ? y : x);
  return {std::move(y), std::move(ctx)};
}

Tensor Activation::backward(const Tensor& dy, Context&& ctx) {
  check_batch(dy, m_input, "output grad");
  if (ctx.saved.size() != 1 || dy.shape() != ctx.input_shape) {
    throw Error(fmt::format(
        "{} '{}': output grad has shape {}, but the forward context is for "
        "input {} ({} saved tensors, expected 1)",
        kind(), name(), to_string(dy.shape()), to_string(ctx.input_shape), ctx.saved.size()));
  }
  Tensor dx = m_input_grad.get(name() + ".input_grad", dy.shape());  // every element written
  kernels::activation_backward(m_options.kind, ctx.saved[0], dy, dx, m_options.negative_slope);
  return dx;
}

}  // namespace tessera::nn
