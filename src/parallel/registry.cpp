#include "tessera/parallel/registry.hpp"

#include "tessera/core/check.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <string>

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

StateEntry* StateRegistry::find(const std::string& name, const std::string& state) {
  for (StateEntry& e : m_entries) {
    if (e.name == name && e.state == state) {
      return &e;
    }
  }
  return nullptr;
}

void StateRegistry::add_entry(const StateEntry& entry) {
  for (const StateEntry& e : m_entries) {
    TESSERA_CHECK(e.name != entry.name || e.state != entry.state,
                  "state registry: '{}{}{}' registered twice", entry.name,
                  entry.state.empty() ? "" : ".", entry.state);
  }
  m_entries.push_back(entry);
}

void StateRegistry::add_elsewhere(std::string name, std::string state, StateKind kind,
                                  const Shape& shape) {
  for (const StateEntry& e : m_entries) {
    TESSERA_CHECK(e.name != name || e.state != state, "state registry: '{}{}{}' registered twice",
                  name, state.empty() ? "" : ".", state);
  }
  StateEntry e;
  e.name = std::move(name);
  e.state = std::move(state);
  e.kind = kind;
  e.layout = Layout::replicated(shape);
  e.copies = AxisSet{};
  e.owner = false;  // no blocks: nothing to write or read here
  m_entries.push_back(std::move(e));
}

namespace {
// One entry as text: kind, name, state and global shape, separated by US (0x1f), ended by RS.
constexpr char kField = '\x1f';
constexpr char kRecord = '\x1e';

std::string describe_entries(const StateRegistry& r) {
  std::string out;
  for (const StateEntry& e : r.entries()) {
    out += fmt::format("{}{}{}{}{}{}{}{}", static_cast<int>(e.kind), kField, e.name, kField,
                       e.state, kField, fmt::join(e.layout.global_shape(), ","), kRecord);
  }
  return out;
}

struct Described {
  StateKind kind;
  std::string name;
  std::string state;
  Shape shape;
};

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> out(1);
  for (const char c : text) {
    if (c == sep) {
      out.emplace_back();
    } else {
      out.back() += c;
    }
  }
  return out;
}

std::vector<Described> parse_entries(const std::string& text) {
  std::vector<Described> out;
  size_t at = 0;
  while (at < text.size() && text[at] != '\0') {
    const size_t end = text.find(kRecord, at);
    TESSERA_CHECK(end != std::string::npos, "pipeline registry: a record without its end");
    const std::vector<std::string> f = split(text.substr(at, end - at), kField);
    TESSERA_CHECK(f.size() == 4, "pipeline registry: a record of {} fields", f.size());
    Described d{static_cast<StateKind>(std::stoi(f[0])), f[1], f[2], {}};
    for (const std::string& n : split(f[3], ',')) {
      if (!n.empty()) {
        d.shape.push_back(std::stoll(n));
      }
    }
    out.push_back(std::move(d));
    at = end + 1;
  }
  return out;
}
}  // namespace

StateRegistry gather_stages(const StateRegistry& mine, comm::Communicator& pipeline) {
  if (pipeline.size() == 1) {
    return mine;
  }
  const std::vector<std::string> texts = comm::allgather_text(pipeline, describe_entries(mine));
  std::vector<std::vector<Described>> stages;
  for (const std::string& t : texts) {
    stages.push_back(parse_entries(t));
  }
  // A tensor several stages hold (a weight tied across stages) is listed where it first appears;
  // the later stages' copies read their blocks on restart but write nothing (their owner is the
  // first stage's rank).
  StateRegistry out(mine.place());
  const auto listed = [&out](const std::string& name, const std::string& state) {
    return out.find(name, state);
  };
  for (const StateKind kind :
       {StateKind::parameter, StateKind::buffer, StateKind::optimizer_state}) {
    for (size_t s = 0; s < stages.size(); ++s) {
      if (static_cast<int>(s) == pipeline.rank()) {
        for (const StateEntry& e : mine.entries()) {
          if (e.kind != kind) {
            continue;
          }
          if (StateEntry* earlier = listed(e.name, e.state)) {
            *earlier = e;
            earlier->owner = false;
          } else {
            out.add_entry(e);
          }
        }
        continue;
      }
      for (const Described& d : stages[s]) {
        if (d.kind == kind && listed(d.name, d.state) == nullptr) {
          out.add_elsewhere(d.name, d.state, d.kind, d.shape);
        }
      }
    }
  }
  return out;
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
