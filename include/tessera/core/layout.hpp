#pragma once
// Layout: how one tensor with a global logical shape is decomposed over a trainer's process grid
// (DESIGN.md, idea 1). Each tensor dimension is either whole on every rank or split over one grid
// axis; tensor parallelism, ZeRO sharding, spatial decomposition and checkpoint hyperslabs are all
// a Layout. Splits are block splits; when the extent does not divide, the first (n % parts) ranks
// of the axis hold one element more.
#include "tessera/core/tensor.hpp"

#include <array>
#include <optional>
#include <string>
#include <vector>

namespace tessera {

/// The axes of a trainer's Cartesian process grid: data × pipeline × tensor × spatial[3].
enum class GridAxis { data = 0, pipeline, tensor, spatial0, spatial1, spatial2 };
inline constexpr int kNumGridAxes = 6;
const char* axis_name(GridAxis axis);

/// Where one rank sits in its trainer's grid: the size of every axis and its coordinate on it.
/// comm::ProcessGrid hands these out; single() is the one-rank grid.
struct GridPlace {
  std::array<int, kNumGridAxes> size{1, 1, 1, 1, 1, 1};
  std::array<int, kNumGridAxes> coord{0, 0, 0, 0, 0, 0};

  static GridPlace single() { return {}; }
  /// Returns a copy with `axis` of `axis_size` ranks, this rank at `axis_coord`.
  GridPlace with(GridAxis axis, int axis_size, int axis_coord) const;
  int size_of(GridAxis axis) const { return size[static_cast<int>(axis)]; }
  int coord_of(GridAxis axis) const { return coord[static_cast<int>(axis)]; }
};

/// [offset, offset + count) of one block of a split.
struct Range {
  Index offset = 0;
  Index count = 0;
};
/// Block `part` of `n` elements split into `parts`; the first n % parts blocks are one longer.
Range block_range(Index n, int parts, int part);

class Layout {
 public:
  /// Whole on every rank.
  static Layout replicated(Shape global_shape);
  /// Dimension `dim` split over `axis`, every other dimension whole.
  static Layout split(Shape global_shape, int dim, GridAxis axis);

  /// Also split dimension `dim` over `axis` (an axis splits at most one dimension).
  Layout& and_split(int dim, GridAxis axis);

  const Shape& global_shape() const { return m_global; }
  int rank() const { return static_cast<int>(m_global.size()); }
  /// The grid axis dimension `dim` is split over, if any.
  std::optional<GridAxis> axis_of(int dim) const { return m_axis.at(static_cast<size_t>(dim)); }
  bool is_replicated() const;

  /// The extent of every dimension held by the rank at `place`.
  Shape local_shape(const GridPlace& place) const;
  /// The global index of this rank's first element in every dimension.
  Shape local_offset(const GridPlace& place) const;

  /// "(256, 784) dim 0 over tensor" or "(10,) replicated".
  std::string to_string() const;

 private:
  Shape m_global;
  std::vector<std::optional<GridAxis>> m_axis;
};

}  // namespace tessera
