#include "tessera/nn/layer.hpp"

#include "split_advice.hpp"

#include "tessera/core/check.hpp"

#include <fmt/ranges.h>

namespace tessera::nn {

Shape batch_shape(Index n, const Shape& sample) {
  Shape s;
  s.reserve(sample.size() + 1);
  s.push_back(n);
  s.insert(s.end(), sample.begin(), sample.end());
  return s;
}

Tensor BufferPool::get(const std::string& label, const Shape& shape) {
  for (Index d : shape) {
    TESSERA_CHECK(d >= 0, "tensor '{}': negative extent in shape {}", label, to_string(shape));
  }
  const Index n = numel(shape);
  // use_count() == 1: only this pool refers to the allocation.
  for (const FloatView& s : m_storage) {
    if (s.use_count() == 1 && static_cast<Index>(s.extent(0)) >= n) {
      return Tensor::alias(label, s, 0, shape);
    }
  }
  const Tensor t = Tensor::uninitialized(label, shape);
  for (FloatView& s : m_storage) {
    if (s.use_count() == 1) {
      s = t.view();  // a free allocation too small for this shape: replace it
      return t;
    }
  }
  if (m_storage.size() < kMaxHeld) {
    m_storage.push_back(t.view());
  }
  return t;
}

std::vector<Parameter*> Layer::all_parameters() {
  std::vector<Parameter*> out;
  for (Parameter& p : m_parameters) {
    out.push_back(&p);
  }
  for (Layer* child : children()) {
    const std::vector<Parameter*> sub = child->all_parameters();
    out.insert(out.end(), sub.begin(), sub.end());
  }
  return out;
}

std::vector<Parameter*> Layer::all_buffers() {
  std::vector<Parameter*> out;
  for (Parameter& p : m_buffers) {
    out.push_back(&p);
  }
  for (Layer* child : children()) {
    const std::vector<Parameter*> sub = child->all_buffers();
    out.insert(out.end(), sub.begin(), sub.end());
  }
  return out;
}

void Layer::initialize(std::uint64_t seed) {
  for (const auto* list : {&m_parameters, &m_buffers}) {
    for (const Parameter& p : *list) {
      init_shard(p.value, p.layout, m_context.place(), seed, p.name, p.init);
    }
  }
  for (Layer* child : children()) {
    child->initialize(seed);
  }
}

Layout Layer::place_input(const Layout& input) {
  require_whole(input);
  return Layout::replicated(output_shape(input.global_shape()));
}

void Layer::require_whole(const Layout& input) const {
  if (!input.is_replicated()) {
    throw Error(
        fmt::format("{} '{}' needs whole samples, but its input is {}; end the split "
                    "before it ({})",
                    kind(), m_name, input.to_string(), detail::join_advice(input)));
  }
}

void Layer::require_not_partial(const Layout& input) const {
  if (!input.partial_axes().empty()) {
    throw Error(fmt::format("{} '{}': its input {} is partial; sum it first", kind(), m_name,
                            input.to_string()));
  }
}

void Layer::forward_empty(const ForwardOptions& options) {
  for (Layer* child : children()) {
    child->forward_empty(options);
  }
}

void Layer::commit_statistics(comm::Communicator& across) {
  for (Layer* child : children()) {
    child->commit_statistics(across);
  }
}

void Layer::backward_empty() {
  const std::vector<Layer*> list = children();
  for (auto it = list.rbegin(); it != list.rend(); ++it) {
    (*it)->backward_empty();
  }
}

void Layer::zero_grad() {
  for (Parameter* p : all_parameters()) {
    p->grad.zero();
  }
}

Parameter& Layer::add_parameter(const std::string& suffix, const Layout& layout, InitSpec init,
                                bool decay) {
  TESSERA_CHECK(layout.partial_axes().empty(), "parameter '{}.{}': a value cannot be partial ({})",
                m_name, suffix, layout.to_string());
  const std::string full = m_name + "." + suffix;
  const Shape local = layout.local_shape(m_context.place());
  m_parameters.push_back(
      Parameter{full, Tensor(full, local), Tensor(full + ".grad", local), layout, init, decay});
  return m_parameters.back();
}

Parameter& Layer::add_parameter(const std::string& suffix, const Shape& shape, InitSpec init,
                                bool decay) {
  return add_parameter(suffix, Layout::replicated(shape), init, decay);
}

Parameter& Layer::add_buffer(const std::string& suffix, const Shape& shape, InitSpec init) {
  const std::string full = m_name + "." + suffix;
  m_buffers.push_back(
      Parameter{full, Tensor(full, shape), Tensor(), Layout::replicated(shape), init, false});
  return m_buffers.back();
}

void Layer::check_batch(const Tensor& x, const Shape& expected, const char* what) const {
  const bool ok = x.rank() == static_cast<int>(expected.size()) + 1 && x.dim(0) >= 1 &&
                  Shape(x.shape().begin() + 1, x.shape().end()) == expected;
  if (!ok) {
    throw Error(fmt::format("{} '{}': {} has shape {}, expected (N, {}) with N >= 1", kind(),
                            m_name, what, to_string(x.shape()), fmt::join(expected, ", ")));
  }
}

void Layer::check_context(const Tensor& dy, const Context& ctx, const Shape& input,
                          size_t saved) const {
  if (ctx.input_shape != batch_shape(dy.dim(0), input) || ctx.saved.size() != saved) {
    throw Error(
        fmt::format("{} '{}': output grad of shape {} does not match the context of the "
                    "forward pass (input {})",
                    kind(), m_name, to_string(dy.shape()), to_string(ctx.input_shape)));
  }
}

}  // namespace tessera::nn
