#pragma once
// Reading a checkpoint file (docs/checkpoint-format.md) as found on the disk: opening it with one
// clear message for every way it can be unreadable, its root attributes and the format's checks,
// and its tensor datasets inspected without judging them. The one reader of checkpoints: the
// trainer's restart (io/checkpoint.hpp) and the tessera-ckpt tool both read through it.
#include "tessera/io/hdf5.hpp"

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace tessera::io {

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
std::string attribute_text(const Attributes& attributes, hid_t object, const std::string& name);

/// One dataset of a checkpoint, as stored.
struct TensorEntry {
  std::string path;                 ///< "/model/linear1/weight"
  std::vector<hsize_t> shape;       ///< global shape, outermost first
  std::optional<ElementType> type;  ///< element type, when Tessera knows it
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
File open_checkpoint(const std::string& path);

/// Every dataset of the file (recursively), sorted by path. Datasets that cannot be inspected are
/// listed with `error` set.
std::vector<TensorEntry> list_tensors(const File& file);

/// Why the file is not a checkpoint of the format this Tessera reads ("not a Tessera checkpoint
/// (no root attribute 'format')", "format_version 2 is not one this Tessera reads (it reads 1)"),
/// or "".
std::string format_problem(const File& file);
/// Throws input_error("PATH: <format_problem>") when there is one.
void require_checkpoint(const File& file);

/// A root attribute of the checkpoint format (docs/checkpoint-format.md, "Root attributes").
struct RootAttribute {
  const char* name;
  AttrType type;
  std::int64_t min = 0;  ///< integers: the smallest valid value
  std::int64_t max = std::numeric_limits<std::int64_t>::max();
};
/// Every root attribute of the format, in the documented order.
const std::vector<RootAttribute>& root_attributes();

/// The problems of a checkpoint's root attributes: each one missing, of another type, holding
/// more than one value, or out of its range (a negative step, a zero of 2...), and an optimizer
/// other than sgd or adamw. `tessera-ckpt verify` and a restart find the same, worded the same.
std::vector<std::string> root_attribute_problems(const Group& root);

/// Whether `e` lies under /model (a parameter or a buffer).
bool is_model_tensor(const TensorEntry& e);
/// The format's tensor datasets: those under /model and /optimizer, sorted by path (datasets
/// elsewhere are allowed and not judged).
std::vector<TensorEntry> checkpoint_tensors(const File& file);
/// "0x" and 16 hexadecimal digits, parsed; nullopt otherwise.
std::optional<std::uint64_t> parse_checksum(const std::string& text);

// The checks of a checkpoint that need no model, worded once: a restart (io/checkpoint.hpp) and
// `tessera-ckpt verify` both use them, so that they refuse the same files with the same words.
// Names read from the file are printed escaped (printable()).

/// root_attribute_problems(), then the root attribute `tensors` against `tensors` (the file's
/// checkpoint_tensors()).
std::vector<std::string> root_problems(const Group& root, const std::vector<TensorEntry>& tensors);
/// The problems of one tensor's metadata: it cannot be read, it is not float32, its checksum
/// attribute is missing or not "0x" and 16 hexadecimal digits, and (under /model) its kind is not
/// "parameter" or "buffer". `stored` receives the parsed checksum (nullopt when there is none).
std::vector<std::string> tensor_problems(const TensorEntry& e,
                                         std::optional<std::uint64_t>& stored);
/// Whether the tensor at dataset `path` holds a variance, which cannot be negative: AdamW's
/// exp_avg_sq, BatchNorm's running_var (a negative one turns the next step's update or the
/// evaluation into NaN).
bool nonnegative_tensor(const std::string& path);

/// The problem of a tensor's data, "" when there is none: the checksum recomputed over it
/// (`computed`) differs from the stored one, it holds `nonfinite` NaN or infinite values, or
/// `negative` values below zero where nonnegative_tensor(path).
std::string data_problem(const std::string& path, std::uint64_t computed, std::uint64_t stored,
                         std::uint64_t nonfinite, std::uint64_t negative = 0);

/// Reads the row-major elements [first, first + count) of `dataset` (of `shape`) as float32 into
/// `out`.
void read_range(const Dataset& dataset, const std::vector<hsize_t>& shape, std::int64_t first,
                std::int64_t count, float* out);

}  // namespace tessera::io
