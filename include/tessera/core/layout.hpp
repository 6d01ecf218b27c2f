#pragma once
// Layout: how one tensor with a global logical shape is placed on a trainer's process grid
// (DESIGN.md, idea 1) — Tessera's words for PyTorch DTensor's Shard / Replicate / Partial.
//
// - Per dimension, a placement: whole on every rank, or split over one grid axis in blocks (when
//   the extent does not divide, the first n % parts ranks of the axis hold one element more), or
//   split with a stride: the dimension is `stride` equal segments laid end to end (a fused weight:
//   QKV is 3 segments of C rows) and each segment is split in blocks, so a rank holds its block of
//   every segment, concatenated.
// - For the tensor as a whole, the axes it is partial over: each rank's values are addends of the
//   true tensor, which is their sum over the axis (a row-split layer's output before its
//   allreduce; a weight gradient before its reduction over the data axis).
// - Every axis that neither splits the tensor nor makes it partial replicates it: the ranks along
//   it hold identical copies.
//
// Tensor parallelism, ZeRO sharding, spatial decomposition and checkpoint hyperslabs all read
// their boxes from here: blocks() maps a rank's local tensor onto boxes of the global one.
#include "tessera/core/tensor.hpp"

#include <array>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

namespace tessera {

/// The axes of a trainer's Cartesian process grid: data × pipeline × tensor × spatial[3].
enum class GridAxis { data = 0, pipeline, tensor, spatial0, spatial1, spatial2 };
inline constexpr int kNumGridAxes = 6;
inline constexpr std::array<GridAxis, kNumGridAxes> kGridAxes{
    GridAxis::data,     GridAxis::pipeline, GridAxis::tensor,
    GridAxis::spatial0, GridAxis::spatial1, GridAxis::spatial2};
const char* axis_name(GridAxis axis);

/// A set of grid axes.
class AxisSet {
 public:
  constexpr AxisSet() = default;
  constexpr AxisSet(std::initializer_list<GridAxis> axes) {
    for (GridAxis a : axes) {
      m_bits |= bit(a);
    }
  }
  static constexpr AxisSet all() { return from_bits((1U << kNumGridAxes) - 1U); }
  static constexpr AxisSet from_bits(unsigned bits) {
    AxisSet s;
    s.m_bits = bits & ((1U << kNumGridAxes) - 1U);
    return s;
  }

  constexpr bool contains(GridAxis a) const { return (m_bits & bit(a)) != 0; }
  constexpr bool empty() const { return m_bits == 0; }
  constexpr unsigned bits() const { return m_bits; }
  constexpr AxisSet operator|(AxisSet o) const { return from_bits(m_bits | o.m_bits); }
  constexpr AxisSet operator&(AxisSet o) const { return from_bits(m_bits & o.m_bits); }
  /// The axes of this set that are not in `o`.
  constexpr AxisSet operator-(AxisSet o) const { return from_bits(m_bits & ~o.m_bits); }
  constexpr bool operator==(AxisSet o) const { return m_bits == o.m_bits; }
  constexpr bool operator!=(AxisSet o) const { return m_bits != o.m_bits; }
  /// The axes in grid order (data, pipeline, tensor, spatial0..2).
  std::vector<GridAxis> axes() const;
  /// "{data, tensor}", "{}".
  std::string to_string() const;

 private:
  static constexpr unsigned bit(GridAxis a) { return 1U << static_cast<unsigned>(a); }
  unsigned m_bits = 0;
};

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
  /// Whether this rank has coordinate 0 on every axis of `axes`.
  bool first_on(AxisSet axes) const;
  /// The axes of more than one rank.
  AxisSet nontrivial() const;
};

/// [offset, offset + count) of one block of a split.
struct Range {
  Index offset = 0;
  Index count = 0;
};
/// Block `part` of `n` elements split into `parts`; the first n % parts blocks are one longer.
Range block_range(Index n, int parts, int part);

/// A box of a tensor: [offset[d], offset[d] + count[d]) in every dimension.
struct Box {
  Shape offset;
  Shape count;
};
/// The boxes, in row-major order, that make up elements [first, first + count) of a tensor of
/// `shape` in row-major order: at most 2 × rank - 1 of them (a partial first row, whole rows, a
/// partial last row, recursively). Empty for count 0.
std::vector<Box> range_boxes(const Shape& shape, Index first, Index count);

/// A box of a rank's local tensor and the box of the global tensor it holds (equal counts).
struct Block {
  Shape local_offset;
  Shape global_offset;
  Shape count;
};

/// How one dimension is placed: whole (no axis) or split over `axis`, in `stride` segments.
struct DimPlacement {
  std::optional<GridAxis> axis;
  int stride = 1;
  bool operator==(const DimPlacement& o) const { return axis == o.axis && stride == o.stride; }
};

class Layout {
 public:
  Layout() = default;
  /// Whole on every rank.
  static Layout replicated(Shape global_shape);
  /// Dimension `dim` split over `axis` (in `stride` segments), every other dimension whole.
  static Layout split(Shape global_shape, int dim, GridAxis axis, int stride = 1);

  /// Also split dimension `dim` over `axis` (an axis splits at most one dimension). With stride
  /// s > 1 the extent must be a multiple of s.
  Layout& and_split(int dim, GridAxis axis, int stride = 1);
  /// Also partial over `axis`: the true values are the sum of the ranks' along it.
  Layout& and_partial(GridAxis axis);

  const Shape& global_shape() const { return m_global; }
  int rank() const { return static_cast<int>(m_global.size()); }
  const DimPlacement& placement(int dim) const { return m_dims.at(static_cast<size_t>(dim)); }
  /// The grid axis dimension `dim` is split over, if any.
  std::optional<GridAxis> axis_of(int dim) const { return placement(dim).axis; }
  /// The dimension split over `axis`, or -1.
  int dim_of(GridAxis axis) const;
  /// Axes that split a dimension.
  AxisSet split_axes() const;
  /// Axes the tensor is partial over.
  AxisSet partial_axes() const { return m_partial; }
  /// Axes whose ranks hold identical copies: neither splitting nor partial.
  AxisSet replicated_axes() const { return AxisSet::all() - split_axes() - m_partial; }
  /// No dimension split and no partial axis.
  bool is_replicated() const { return split_axes().empty() && m_partial.empty(); }

  /// The extent of every dimension held by the rank at `place`.
  Shape local_shape(const GridPlace& place) const;
  /// The global index of this rank's first element in every dimension (a layout without strides).
  Shape local_offset(const GridPlace& place) const;
  /// The local tensor at `place` as blocks of the global one, covering it exactly once: one block
  /// without strides, a block per combination of segments with them.
  std::vector<Block> blocks(const GridPlace& place) const;
  /// The local elements [first, first + count) (row-major in the local tensor) as blocks of the
  /// global tensor: where a ZeRO piece or a checkpoint box of the local tensor lies.
  std::vector<Block> blocks_of_range(const GridPlace& place, Index first, Index count) const;
  /// The global row-major index of every local element, in local order (for tests and checks;
  /// O(local elements)).
  std::vector<Index> global_indices(const GridPlace& place) const;

  /// "(256, 784) dim 0 over tensor", "(768, 64) dim 0 over tensor/3", "(10,) replicated",
  /// "(8, 4) partial over data".
  std::string to_string() const;
  bool operator==(const Layout& o) const {
    return m_global == o.m_global && m_dims == o.m_dims && m_partial == o.m_partial;
  }
  bool operator!=(const Layout& o) const { return !(*this == o); }

 private:
  Shape m_global;
  std::vector<DimPlacement> m_dims;
  AxisSet m_partial;
};

}  // namespace tessera
