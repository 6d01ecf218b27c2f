#pragma once
// The reading side of tessera-ckpt: a checkpoint file (docs/checkpoint-format.md) as found on the
// disk — its root attributes and its tensor datasets, inspected without judging them — and the
// split of a set of tensors' elements over the ranks that verify, diff and average share.
#include "tessera/io/hdf5.hpp"

#include <mpi.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace tessera::ckpt {

/// What an attribute holds, as far as the format cares.
enum class AttrType { missing, string, int64, other_integer, floating, other };
/// "a string", "int64", "an integer of another width", "a float", "another type", "missing".
const char* attr_type_name(AttrType t);

struct AttrInfo {
  AttrType type = AttrType::missing;
  std::int64_t values = 0;  ///< number of elements (1 for a scalar)
};
/// The type and element count of attribute `name` of the HDF5 object `object`.
AttrInfo attribute_info(hid_t object, const std::string& name);

/// An attribute's value as text for listings: "\"abc\"", "42", "0.5", "[a, b]".
std::string attribute_text(const io::Attributes& attributes, hid_t object, const std::string& name);

/// One dataset of a checkpoint, as stored.
struct TensorEntry {
  std::string path;                     ///< "/model/linear1/weight"
  std::vector<hsize_t> shape;           ///< global shape, outermost first
  std::optional<io::ElementType> type;  ///< element type, when Tessera knows it
  std::int64_t elements = 0;
  std::int64_t storage_bytes = 0;       ///< bytes the data occupies in the file
  std::string kind;                     ///< attrs["kind"], "" when absent or not a string
  std::optional<std::string> checksum;  ///< attrs["checksum"] when it is a string
  bool checksum_attribute = false;      ///< an attribute "checksum" exists (of any type)
  std::string error;                    ///< why it could not be inspected ("" when it could)

  /// "/model/linear1/weight" → "linear1.weight" (the name Tessera gives the parameter).
  std::string parameter_name() const;
};

/// Opens a checkpoint file read-only on this rank alone (POSIX driver, no MPI). Throws an
/// input_error (exit code 2) with one message: "PATH: no such file", "PATH: is a folder, not a
/// checkpoint file", "PATH: not an HDF5 file", "PATH: truncated: the file has N bytes, its HDF5
/// superblock says M", "PATH: cannot read (REASON)".
io::File open_checkpoint(const std::string& path);

/// Every dataset of the file (recursively), sorted by path. Datasets that cannot be inspected are
/// listed with `error` set.
std::vector<TensorEntry> list_tensors(const io::File& file);

/// Why the file is not a checkpoint this tool reads ("root attribute 'format' is missing",
/// "format_version 2 is not one this tessera-ckpt knows (it reads version 1)"), or "".
std::string format_problem(const io::File& file);
/// Throws input_error("PATH: <format_problem>") when there is one.
void require_checkpoint(const io::File& file);

/// The boxes of a dataset of `shape` covering its row-major elements [first, first + count), in
/// that order (at most 2 per dimension): what Dataset::read_boxes reads contiguously.
std::vector<io::Box> flat_boxes(const std::vector<hsize_t>& shape, std::int64_t first,
                                std::int64_t count);
/// Reads the row-major elements [first, first + count) of `dataset` as float32 into `out`.
void read_range(const io::Dataset& dataset, const std::vector<hsize_t>& shape, std::int64_t first,
                std::int64_t count, float* out);
/// Writes `values` to the row-major elements [first, first + count) of `dataset` (independent
/// I/O: this rank alone).
void write_range(const io::Dataset& dataset, const std::vector<hsize_t>& shape, std::int64_t first,
                 std::int64_t count, const float* values);

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

/// `text` from `root` to every rank of `comm`.
std::string broadcast_string(MPI_Comm comm, std::string text, int root = 0);

/// "48 B", "1.5 KiB", "3.25 MiB", "1.00 GiB".
std::string human_bytes(std::int64_t bytes);
/// "(4, 3)".
std::string shape_text(const std::vector<hsize_t>& shape);

}  // namespace tessera::ckpt
