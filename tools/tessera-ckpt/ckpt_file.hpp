#pragma once
// What tessera-ckpt's commands share besides the checkpoint reader (io/checkpoint_reader.hpp): the
// split of a set of tensors' elements over the ranks that verify, diff and average share, and
// text helpers.
#include "tessera/io/checkpoint_reader.hpp"
#include "tessera/io/hdf5.hpp"

#include <mpi.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace tessera::ckpt {

// The reading side is io's (tessera/io/checkpoint_reader.hpp), shared with the trainer's restart.
using io::attr_type_name;
using io::attribute_info;
using io::attribute_text;
using io::AttrInfo;
using io::AttrType;
using io::format_problem;
using io::list_tensors;
using io::open_checkpoint;
using io::read_range;
using io::require_checkpoint;
using io::TensorEntry;

/// The boxes of a dataset of `shape` covering its row-major elements [first, first + count), in
/// that order (io::flat_range_boxes).
inline std::vector<io::Box> flat_boxes(const std::vector<hsize_t>& shape, std::int64_t first,
                                       std::int64_t count) {
  return io::flat_range_boxes(shape, static_cast<hsize_t>(first), static_cast<hsize_t>(count));
}

/// Elements per block when a command streams through a tensor (4 MiB of float32).
inline constexpr std::int64_t kBlockElements = std::int64_t{1} << 20;

/// A contiguous range of one tensor's (row-major) elements.
struct Piece {
  std::size_t tensor = 0;
  std::int64_t first = 0;
  std::int64_t count = 0;
};
/// The tensors of `sizes` elements, concatenated and cut into `ranks` contiguous ranges of nearly
/// equal length: the pieces of range `rank`, in order. Every element lies in exactly one range.
std::vector<Piece> split_elements(const std::vector<std::int64_t>& sizes, int rank, int ranks);

/// "(4, 3)".
std::string shape_text(const std::vector<hsize_t>& shape);

}  // namespace tessera::ckpt
