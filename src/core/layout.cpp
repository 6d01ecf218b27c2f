#include "tessera/core/layout.hpp"

#include "tessera/core/check.hpp"

#include <fmt/format.h>

#include <algorithm>

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

std::vector<GridAxis> AxisSet::axes() const {
  std::vector<GridAxis> out;
  for (GridAxis a : kGridAxes) {
    if (contains(a)) {
      out.push_back(a);
    }
  }
  return out;
}

std::string AxisSet::to_string() const {
  std::string out;
  for (GridAxis a : axes()) {
    out += (out.empty() ? "" : ", ") + std::string(axis_name(a));
  }
  return "{" + out + "}";
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

bool GridPlace::first_on(AxisSet axes) const {
  for (GridAxis a : axes.axes()) {
    if (coord_of(a) != 0) {
      return false;
    }
  }
  return true;
}

AxisSet GridPlace::nontrivial() const {
  AxisSet s;
  for (GridAxis a : kGridAxes) {
    if (size_of(a) > 1) {
      s = s | AxisSet{a};
    }
  }
  return s;
}

Range block_range(Index n, int parts, int part) {
  TESSERA_CHECK(parts >= 1 && part >= 0 && part < parts, "block {} of {} parts does not exist",
                part, parts);
  const Index base = n / parts;
  const Index extra = n % parts;
  const Index p = part;
  return {p * base + std::min(p, extra), base + (p < extra ? 1 : 0)};
}

namespace {

// Boxes of the row-major elements [a, b) of dimensions dim.. of `shape`, at index `prefix` of the
// dimensions before dim (each of extent 1 in the boxes).
void range_boxes_into(const Shape& shape, size_t dim, Shape& prefix, Index a, Index b,
                      std::vector<Box>& out) {
  if (a >= b) {
    return;
  }
  const size_t nd = shape.size();
  Index inner = 1;  // elements of one index of dimension dim
  for (size_t d = dim + 1; d < nd; ++d) {
    inner *= shape[d];
  }
  // Whole indices [r0, r1) of dimension dim.
  auto rows = [&](Index r0, Index r1) {
    if (r0 >= r1) {
      return;
    }
    Box box{prefix, Shape(prefix.size(), 1)};
    box.offset.push_back(r0);
    box.count.push_back(r1 - r0);
    for (size_t d = dim + 1; d < nd; ++d) {
      box.offset.push_back(0);
      box.count.push_back(shape[d]);
    }
    out.push_back(std::move(box));
  };
  if (dim + 1 == nd) {
    rows(a, b);
    return;
  }
  const Index first_row = a / inner;
  const Index last_row = (b - 1) / inner;
  auto partial = [&](Index row, Index lo, Index hi) {  // [lo, hi) inside index `row`
    prefix.push_back(row);
    range_boxes_into(shape, dim + 1, prefix, lo, hi, out);
    prefix.pop_back();
  };
  if (first_row == last_row) {
    if (a % inner == 0 && b - a == inner) {
      rows(first_row, first_row + 1);
    } else {
      partial(first_row, a % inner, a % inner + (b - a));
    }
    return;
  }
  Index whole_from = first_row;
  if (a % inner != 0) {
    partial(first_row, a % inner, inner);
    whole_from = first_row + 1;
  }
  const Index end_in_last = b - last_row * inner;  // elements of the last index in the range
  const Index whole_to = end_in_last == inner ? last_row + 1 : last_row;
  rows(whole_from, whole_to);
  if (end_in_last != inner) {
    partial(last_row, 0, end_in_last);
  }
}

// Per dimension at `place`: the local extent of one segment, the segment count and the global
// geometry (segment length, this rank's offset inside a segment).
struct DimMap {
  Index count = 0;    // local elements per segment
  int segments = 1;   // stride
  Index segment = 0;  // global elements per segment
  Index offset = 0;   // global offset of the local block inside each segment
};

DimMap dim_map(Index extent, const DimPlacement& p, const GridPlace& place) {
  if (!p.axis) {
    return {extent, 1, extent, 0};
  }
  const Index seg = extent / p.stride;
  const Range r = block_range(seg, place.size_of(*p.axis), place.coord_of(*p.axis));
  return {r.count, p.stride, seg, r.offset};
}

}  // namespace

std::vector<Box> range_boxes(const Shape& shape, Index first, Index count) {
  TESSERA_CHECK(first >= 0 && count >= 0 && first + count <= numel(shape),
                "elements [{}, {}) outside a tensor of {}", first, first + count,
                tessera::to_string(shape));
  std::vector<Box> out;
  if (shape.empty()) {
    if (count > 0) {
      out.push_back(Box{});
    }
    return out;
  }
  Shape prefix;
  range_boxes_into(shape, 0, prefix, first, first + count, out);
  return out;
}

Layout Layout::replicated(Shape global_shape) {
  Layout l;
  l.m_dims.assign(global_shape.size(), DimPlacement{});
  l.m_global = std::move(global_shape);
  return l;
}

Layout Layout::split(Shape global_shape, int dim, GridAxis axis, int stride) {
  Layout l = replicated(std::move(global_shape));
  l.and_split(dim, axis, stride);
  return l;
}

Layout& Layout::and_split(int dim, GridAxis axis, int stride) {
  TESSERA_CHECK(dim >= 0 && dim < rank(), "layout {}: no dimension {} to split over {}",
                to_string(), dim, axis_name(axis));
  TESSERA_CHECK(!split_axes().contains(axis) && !m_partial.contains(axis),
                "layout {}: grid axis {} already splits dimension {} or makes it partial",
                to_string(), axis_name(axis), dim_of(axis));
  TESSERA_CHECK(!m_dims[static_cast<size_t>(dim)].axis.has_value(),
                "layout {}: dimension {} is already split", to_string(), dim);
  TESSERA_CHECK(stride >= 1 && m_global[static_cast<size_t>(dim)] % stride == 0,
                "layout {}: dimension {} of {} does not cut into {} equal segments", to_string(),
                dim, m_global[static_cast<size_t>(dim)], stride);
  m_dims[static_cast<size_t>(dim)] = DimPlacement{axis, stride};
  return *this;
}

Layout& Layout::and_partial(GridAxis axis) {
  TESSERA_CHECK(!split_axes().contains(axis), "layout {}: grid axis {} splits dimension {}",
                to_string(), axis_name(axis), dim_of(axis));
  m_partial = m_partial | AxisSet{axis};
  return *this;
}

int Layout::dim_of(GridAxis axis) const {
  for (size_t d = 0; d < m_dims.size(); ++d) {
    if (m_dims[d].axis == axis) {
      return static_cast<int>(d);
    }
  }
  return -1;
}

AxisSet Layout::split_axes() const {
  AxisSet s;
  for (const DimPlacement& p : m_dims) {
    if (p.axis) {
      s = s | AxisSet{*p.axis};
    }
  }
  return s;
}

Shape Layout::local_shape(const GridPlace& place) const {
  Shape s = m_global;
  for (size_t d = 0; d < s.size(); ++d) {
    const DimMap m = dim_map(m_global[d], m_dims[d], place);
    s[d] = m.count * m.segments;
  }
  return s;
}

Shape Layout::local_offset(const GridPlace& place) const {
  Shape o(m_global.size(), 0);
  for (size_t d = 0; d < o.size(); ++d) {
    TESSERA_CHECK(m_dims[d].stride == 1,
                  "layout {}: dimension {} is strided; its local part is several blocks",
                  to_string(), d);
    o[d] = dim_map(m_global[d], m_dims[d], place).offset;
  }
  return o;
}

std::vector<Block> Layout::blocks(const GridPlace& place) const {
  std::vector<Block> out{Block{}};
  for (size_t d = 0; d < m_global.size(); ++d) {
    const DimMap m = dim_map(m_global[d], m_dims[d], place);
    std::vector<Block> next;
    for (const Block& b : out) {
      for (int k = 0; k < m.segments; ++k) {
        Block c = b;
        c.local_offset.push_back(k * m.count);
        c.global_offset.push_back(k * m.segment + m.offset);
        c.count.push_back(m.count);
        next.push_back(std::move(c));
      }
    }
    out = std::move(next);
  }
  return out;
}

std::vector<Block> Layout::blocks_of_range(const GridPlace& place, Index first, Index count) const {
  const std::vector<Block> all = blocks(place);
  std::vector<Block> out;
  for (const Box& box : range_boxes(local_shape(place), first, count)) {
    for (const Block& b : all) {
      Block c;
      bool empty = false;
      for (size_t d = 0; d < m_global.size() && !empty; ++d) {
        const Index lo = std::max(box.offset[d], b.local_offset[d]);
        const Index hi = std::min(box.offset[d] + box.count[d], b.local_offset[d] + b.count[d]);
        empty = lo >= hi;
        c.local_offset.push_back(lo);
        c.global_offset.push_back(b.global_offset[d] + (lo - b.local_offset[d]));
        c.count.push_back(hi - lo);
      }
      if (!empty) {
        out.push_back(std::move(c));
      }
    }
  }
  return out;
}

std::vector<Index> Layout::global_indices(const GridPlace& place) const {
  const Shape local = local_shape(place);
  std::vector<Index> out(static_cast<size_t>(numel(local)));
  for (const Block& b : blocks(place)) {
    const Index n = numel(b.count);
    for (Index i = 0; i < n; ++i) {
      Index rest = i;
      Index lflat = 0;
      Index gflat = 0;
      Index lstride = 1;
      Index gstride = 1;
      for (int d = rank() - 1; d >= 0; --d) {
        const auto du = static_cast<size_t>(d);
        const Index j = rest % b.count[du];
        rest /= b.count[du];
        lflat += (b.local_offset[du] + j) * lstride;
        gflat += (b.global_offset[du] + j) * gstride;
        lstride *= local[du];
        gstride *= m_global[du];
      }
      out[static_cast<size_t>(lflat)] = gflat;
    }
  }
  return out;
}

std::string Layout::to_string() const {
  std::string out = tessera::to_string(m_global);
  bool any = false;
  for (size_t d = 0; d < m_dims.size(); ++d) {
    if (m_dims[d].axis) {
      out += fmt::format("{} dim {} over {}", any ? "," : "", d, axis_name(*m_dims[d].axis));
      if (m_dims[d].stride > 1) {
        out += fmt::format("/{}", m_dims[d].stride);
      }
      any = true;
    }
  }
  for (GridAxis a : m_partial.axes()) {
    out += fmt::format("{} partial over {}", any ? "," : "", axis_name(a));
    any = true;
  }
  return any ? out : out + " replicated";
}

}  // namespace tessera
