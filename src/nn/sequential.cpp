#include "tessera/nn/sequential.hpp"

#include "tessera/core/check.hpp"
#include "tessera/kernels/reduce.hpp"

namespace tessera::nn {

Sequential::Sequential(std::string name, Shape input, BuildContext context, const char* kind)
    : Layer(std::move(name), std::move(context)),
      m_kind(kind),
      m_input(input),
      m_output(input),
      m_input_layout(Layout::replicated(input)),
      m_output_layout(Layout::replicated(input)),
      m_local_input(input),
      m_local_output(std::move(input)) {}

Layer& Sequential::add(std::unique_ptr<Layer> layer) {
  TESSERA_CHECK(layer != nullptr, "sequential '{}': null layer", name());
  m_output = layer->output_shape(m_output);  // throws, naming the layer, if it does not fit
  m_output_layout = layer->place_input(m_output_layout);  // or if it cannot take the placement
  m_local_output = m_output_layout.local_shape(context().place());
  m_layers.push_back(std::move(layer));
  update_input_grad_flags();
  return *m_layers.back();
}

Layer& Sequential::append(std::unique_ptr<Layer> layer) {
  TESSERA_CHECK(layer != nullptr, "sequential '{}': null layer", name());
  m_output = layer->output_shape(m_output);  // throws, naming the layer, if it does not fit
  m_layers.push_back(std::move(layer));
  update_input_grad_flags();
  return *m_layers.back();
}

void Sequential::set_needs_input_grad(bool needed) {
  Layer::set_needs_input_grad(needed);
  update_input_grad_flags();
}

void Sequential::update_input_grad_flags() {
  bool needed = needs_input_grad();
  for (auto& layer : m_layers) {
    layer->set_needs_input_grad(needed);
    needed = needed || !layer->all_parameters().empty();
  }
}

Shape Sequential::output_shape(const Shape& input) const {
  if (input != m_input) {
    throw Error(fmt::format("sequential '{}': input {} given, built for {}", name(),
                            to_string(input), to_string(m_input)));
  }
  return m_output;
}

Layout Sequential::place_input(const Layout& input) {
  if (input.global_shape() != m_input) {
    throw Error(fmt::format("sequential '{}': input {} given, built for {}", name(),
                            to_string(input.global_shape()), to_string(m_input)));
  }
  m_input_layout = input;
  Layout at = input;
  for (auto& layer : m_layers) {
    at = layer->place_input(at);
  }
  m_output_layout = at;
  m_local_input = m_input_layout.local_shape(context().place());
  m_local_output = m_output_layout.local_shape(context().place());
  return at;
}

ForwardResult Sequential::forward(const Tensor& x, const ForwardOptions& options) {
  check_batch(x, m_local_input, "input");
  ForwardResult result{x, Context{{}, x.shape(), {}}};
  result.ctx.children.reserve(m_layers.size());
  for (auto& layer : m_layers) {
    ForwardResult step = layer->forward(result.output, options);
    result.output = step.output;
    result.ctx.children.push_back(std::move(step.ctx));
    context().poll();
  }
  return result;
}

Tensor Sequential::backward(const Tensor& dy, Context&& ctx) {
  check_batch(dy, m_local_output, "output gradient");
  TESSERA_CHECK(ctx.children.size() == m_layers.size(),
                "sequential '{}': backward given {} contexts for {} layers", name(),
                ctx.children.size(), m_layers.size());
  Tensor grad = dy;
  for (std::size_t i = m_layers.size(); i-- > 0;) {
    grad = m_layers[i]->backward(grad, std::move(ctx.children[i]));
    context().poll();
    if (m_backward_hook) {
      m_backward_hook(*m_layers[i]);
    }
    if (!m_layers[i]->needs_input_grad()) {
      return Tensor();  // the layers before this one have no parameters and the input is data
    }
  }
  return grad;
}

void Sequential::backward_empty() {
  for (std::size_t i = m_layers.size(); i-- > 0;) {
    m_layers[i]->backward_empty();
    context().poll();
    if (m_backward_hook) {
      m_backward_hook(*m_layers[i]);
    }
    if (!m_layers[i]->needs_input_grad()) {
      return;
    }
  }
}

std::vector<Layer*> Sequential::children() {
  std::vector<Layer*> out;
  for (auto& l : m_layers) {
    out.push_back(l.get());
  }
  return out;
}

Residual::Residual(std::string name, const Shape& input, std::unique_ptr<Layer> body,
                   BuildContext context)
    : Layer(std::move(name), std::move(context)),
      m_input(input),
      m_local_input(input),
      m_body(std::move(body)) {
  TESSERA_CHECK(m_body != nullptr, "residual '{}': null body", this->name());
  const Shape out = m_body->output_shape(input);
  if (out != input) {
    throw Error(fmt::format(
        "residual '{}': body {} '{}' maps {} to {}; a residual needs equal shapes", this->name(),
        m_body->kind(), m_body->name(), to_string(input), to_string(out)));
  }
}

Shape Residual::output_shape(const Shape& input) const {
  if (input != m_input) {
    throw Error(fmt::format("residual '{}': input {} given, built for {}", name(), to_string(input),
                            to_string(m_input)));
  }
  return m_input;
}

Layout Residual::place_input(const Layout& input) {
  const Layout out = m_body->place_input(input);
  if (out != input && context().sequence_parallel() && input.is_replicated() &&
      out.dim_of(GridAxis::tensor) == 0) {
    throw Error(fmt::format(
        "residual '{}': with parallel.sequence_parallel its body leaves the tokens split over the "
        "tensor axis ({}), so its input must come split too, but it is whole: split the layers "
        "before it (an embedding with split = true gives token slices)",
        name(), out.to_string()));
  }
  if (out != input) {
    throw Error(
        fmt::format("residual '{}': body {} '{}' takes {} and gives {}; a residual needs "
                    "equal placements",
                    name(), m_body->kind(), m_body->name(), input.to_string(), out.to_string()));
  }
  m_local_input = input.local_shape(context().place());
  return input;
}

ForwardResult Residual::forward(const Tensor& x, const ForwardOptions& options) {
  check_batch(x, m_local_input, "input");
  ForwardResult body = m_body->forward(x, options);
  const Tensor y(name() + "::output", x.shape());
  kernels::add(x, body.output, y);
  Context ctx{{}, x.shape(), {}};
  ctx.children.push_back(std::move(body.ctx));
  return {y, std::move(ctx)};
}

void Residual::set_needs_input_grad(bool needed) {
  Layer::set_needs_input_grad(needed);
  m_body->set_needs_input_grad(needed);
}

Tensor Residual::backward(const Tensor& dy, Context&& ctx) {
  check_batch(dy, m_local_input, "output gradient");
  const Tensor dbody = m_body->backward(dy, std::move(ctx.children.at(0)));
  if (!needs_input_grad()) {
    return Tensor();
  }
  const Tensor dx(name() + "::dx", dy.shape());
  kernels::add(dy, dbody, dx);
  return dx;
}

}  // namespace tessera::nn
