#include "tessera/core/layout.hpp"

#include "tessera/core/check.hpp"

#include <fmt/format.h>

namespace tessera {

const char* axis_name(GridAxis axis) {
  switch (axis) {
    case GridAxis::data:
      return "data";
    case GridAxis::pipeline:
      return "pipeline";
    case GridAxis::tensor:
      return "tensor";
    case GridAxis::spatial0:
      return "spatial0";
    case GridAxis::spatial1:
      return "spatial1";
    case GridAxis::spatial2:
      return "spatial2";
  }
  return "unknown";
}

GridPlace GridPlace::with(GridAxis axis, int axis_size, int axis_coord) const {
  TESSERA_CHECK(axis_size >= 1 && axis_coord >= 0 && axis_coord < axis_size,
                "grid axis {}: coordinate {} outside a size of {}", axis_name(axis), axis_coord,
                axis_size);
  GridPlace p = *this;
  p.size[static_cast<int>(axis)] = axis_size;
  p.coord[static_cast<int>(axis)] = axis_coord;
  return p;
}

Range block_range(Index n, int parts, int part) {
  TESSERA_CHECK(parts >= 1 && part >= 0 && part < parts, "block {} of {} parts does not exist",
                part, parts);
  const Index base = n / parts;
  const Index extra = n % parts;
  const Index p = part;
  return {p * base + std::min(p, extra), base + (p < extra ? 1 : 0)};
}

Layout Layout::replicated(Shape global_shape) {
  Layout l;
  l.m_axis.assign(global_shape.size(), std::nullopt);
  l.m_global = std::move(global_shape);
  return l;
}

Layout Layout::split(Shape global_shape, int dim, GridAxis axis) {
  Layout l = replicated(std::move(global_shape));
  l.and_split(dim, axis);
  return l;
}

Layout& Layout::and_split(int dim, GridAxis axis) {
  TESSERA_CHECK(dim >= 0 && dim < rank(), "layout {}: no dimension {} to split over {}",
                to_string(), dim, axis_name(axis));
  for (int d = 0; d < rank(); ++d) {
    TESSERA_CHECK(m_axis[static_cast<size_t>(d)] != axis,
                  "layout {}: grid axis {} already splits dimension {}", to_string(),
                  axis_name(axis), d);
  }
  TESSERA_CHECK(!m_axis[static_cast<size_t>(dim)].has_value(),
                "layout {}: dimension {} is already split", to_string(), dim);
  m_axis[static_cast<size_t>(dim)] = axis;
  return *this;
}

bool Layout::is_replicated() const {
  for (const auto& a : m_axis) {
    if (a) {
      return false;
    }
  }
  return true;
}

Shape Layout::local_shape(const GridPlace& place) const {
  Shape s = m_global;
  for (size_t d = 0; d < s.size(); ++d) {
    if (const auto axis = m_axis[d]) {
      s[d] = block_range(m_global[d], place.size_of(*axis), place.coord_of(*axis)).count;
    }
  }
  return s;
}

Shape Layout::local_offset(const GridPlace& place) const {
  Shape o(m_global.size(), 0);
  for (size_t d = 0; d < o.size(); ++d) {
    if (const auto axis = m_axis[d]) {
      o[d] = block_range(m_global[d], place.size_of(*axis), place.coord_of(*axis)).offset;
    }
  }
  return o;
}

std::string Layout::to_string() const {
  std::string out = tessera::to_string(m_global);
  bool any = false;
  for (size_t d = 0; d < m_axis.size(); ++d) {
    if (m_axis[d]) {
      out += fmt::format("{} dim {} over {}", any ? "," : "", d, axis_name(*m_axis[d]));
      any = true;
    }
  }
  return any ? out : out + " replicated";
}

}  // namespace tessera
