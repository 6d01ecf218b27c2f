#include "tessera/parallel/registry.hpp"

#include "tessera/core/check.hpp"

namespace tessera::parallel {

const char* state_kind_name(StateKind kind) {
  switch (kind) {
    case StateKind::parameter:
      return "parameter";
    case StateKind::buffer:
      return "buffer";
    case StateKind::optimizer_state:
      return "state";
  }
  return "unknown";
}

AxisSet copy_axes(const Layout& layout) {
  return layout.replicated_axes() - AxisSet{GridAxis::pipeline};
}

void StateRegistry::add(std::string name, std::string state, StateKind kind, const Layout& layout,
                        const Tensor& local, AxisSet copies, Index first) {
  for (const StateEntry& e : m_entries) {
    TESSERA_CHECK(e.name != name || e.state != state, "state registry: '{}{}{}' registered twice",
                  name, state.empty() ? "" : ".", state);
  }
  const Index block = numel(layout.local_shape(m_place));
  const Index count = local.defined() ? local.numel() : 0;
  TESSERA_CHECK(first >= 0 && first + count <= block,
                "state registry: '{}' holds elements [{}, {}) of a local block of {} ({})", name,
                first, first + count, block, layout.to_string());
  StateEntry e;
  e.name = std::move(name);
  e.state = std::move(state);
  e.kind = kind;
  e.layout = layout;
  e.local = local;
  e.first = first;
  e.copies = copies;
  e.blocks = layout.blocks_of_range(m_place, first, count);
  e.owner = m_place.first_on(copies);
  m_entries.push_back(std::move(e));
}

StateRegistry model_registry(nn::Layer& model, const GridPlace& place) {
  StateRegistry r(place);
  for (const nn::Parameter* p : model.all_parameters()) {
    r.add(p->name, "", StateKind::parameter, p->layout, p->value, copy_axes(p->layout));
  }
  for (const nn::Parameter* b : model.all_buffers()) {
    r.add(b->name, "", StateKind::buffer, b->layout, b->value, copy_axes(b->layout));
  }
  return r;
}

}  // namespace tessera::parallel
