#pragma once
// RAII wrappers over the HDF5 C API: one owner per hid_t, closed with the right H5*close, and every
// failing call turned into a tessera::Error that names the call, the file and HDF5's own reason.
// Files are opened either collectively through MPI-IO (parallel writes) or independently with the
// POSIX driver (each rank reading its own samples: no MPI traffic, safe from a prefetch thread).
#include "tessera/core/tensor.hpp"

#include <hdf5.h>
#include <mpi.h>

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace tessera::io {

/// The HDF5 library (as Debian builds it, parallel) is not thread-safe; the dataset reader reads in
/// a prefetch thread. Every HDF5 call in these wrappers holds this lock (what HDF5's thread-safe
/// build does internally); code calling HDF5 directly must hold it too.
std::recursive_mutex& hdf5_mutex();

/// Closes whatever HDF5 still holds (a file whose close failed on a full disk) while MPI runs:
/// HDF5's own clean-up at exit would call MPI-IO after MPI_Finalize and crash. main() calls it
/// before MPI_Finalize, on every rank.
void close_library();

namespace detail {
/// Every description on HDF5's error stack, the API call's entry first, the innermost failure
/// last; clears the stack.
std::vector<std::string> hdf5_error_stack();
/// The innermost message of HDF5's error stack ("unable to open file"), or ""; clears the stack.
std::string hdf5_reason();
/// Throws for a failed `call` on `context` from HDF5's error stack (clears it): input_error for
/// damage HDF5 recognised (a checksum, a bad header), else Error naming the call and its reason.
[[noreturn]] void throw_hdf5(const char* call, const std::string& context);
/// The same from a stack read before (hdf5_error_stack()), when other HDF5 calls came between.
[[noreturn]] void throw_hdf5(const char* call, const std::string& context,
                             const std::vector<std::string>& stack);
/// Why H5Fopen of an existing HDF5 file failed, from HDF5's error stack (clears it): "truncated:
/// the file has N bytes, its HDF5 superblock says M" for a cut file, else "truncated or damaged:
/// HDF5 cannot read it (<innermost reason>)".
std::string open_failure();
}  // namespace detail

/// Owns one HDF5 identifier and closes it with the matching function.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer closer) : m_id(id), m_closer(closer) {}
  ~Handle() { reset(); }
  Handle(Handle&& other) noexcept { *this = std::move(other); }
  Handle& operator=(Handle&& other) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;

  hid_t id() const { return m_id; }
  bool valid() const { return m_id >= 0; }
  /// Closes the identifier (errors ignored: destructors cannot report them).
  void reset();
  /// Gives up ownership without closing; returns the identifier.
  hid_t release() {
    const hid_t id = m_id;
    m_id = -1;
    return id;
  }

 private:
  hid_t m_id = -1;
  Closer m_closer = nullptr;
};

/// Element types Tessera stores. f16 is IEEE half precision (h5py reads it as float16).
enum class ElementType { u8, i32, i64, f16, f32, f64 };
const char* element_type_name(ElementType t);
/// The HDF5 file type for `t` (caller does not close predefined types; f16 is a cached copy).
hid_t file_type(ElementType t);
/// The matching in-memory type.
hid_t memory_type(ElementType t);
/// The ElementType of an HDF5 type, if it is one Tessera knows.
std::optional<ElementType> element_type_of(hid_t type);

/// A box of a dataset: offset and count per dimension.
struct Box {
  std::vector<hsize_t> offset;
  std::vector<hsize_t> count;
};

class Dataset;
class Group;

/// Attributes on a file, group or dataset.
class Attributes {
 public:
  explicit Attributes(hid_t object, std::string context)
      : m_obj(object), m_context(std::move(context)) {}
  bool has(const std::string& name) const;
  void set(const std::string& name, const std::string& value) const;
  void set(const std::string& name, std::int64_t value) const;
  void set(const std::string& name, double value) const;
  void set(const std::string& name, const std::vector<std::string>& values) const;
  void set(const std::string& name, const std::vector<double>& values) const;
  void set(const std::string& name, const std::vector<std::int64_t>& values) const;
  std::string get_string(const std::string& name) const;
  std::int64_t get_int(const std::string& name) const;
  double get_double(const std::string& name) const;
  std::vector<std::string> get_strings(const std::string& name) const;
  std::vector<double> get_doubles(const std::string& name) const;
  std::vector<std::int64_t> get_ints(const std::string& name) const;
  /// Names of every attribute, in creation order where tracked.
  std::vector<std::string> names() const;

 private:
  Handle open(const std::string& name) const;
  void write_raw(const std::string& name, hid_t type, const std::vector<hsize_t>& dims,
                 const void* data) const;
  hid_t m_obj;
  std::string m_context;
};

class Dataset {
 public:
  Dataset(Handle handle, std::string file, std::string path)
      : m_handle(std::move(handle)), m_file(std::move(file)), m_path(std::move(path)) {}
  /// Path inside the file ("/train/x").
  const std::string& path() const { return m_path; }
  /// "file.h5:/train/x", for messages.
  std::string context() const { return m_file + ":" + m_path; }
  hid_t id() const { return m_handle.id(); }
  std::vector<hsize_t> shape() const;
  /// Element type as stored, if Tessera knows it.
  std::optional<ElementType> element_type() const;
  /// The stored element type in words ("int64", "uint16", "float64", "string", "compound"), for
  /// messages about a type Tessera does not take.
  std::string type_name() const;
  /// The first filter of the dataset's chunks that this HDF5 library cannot decode, as
  /// "NAME (filter ID)" ("lzf (filter 32000)"); "" when every filter is available or there is none.
  std::string unavailable_filter() const;
  /// Bytes of the file the dataset's elements occupy (H5Dget_storage_size).
  hsize_t storage_size() const;
  /// Whether the dataset's chunks pass through filters (compression): then storage_size() may be
  /// far below the elements' size.
  bool filtered() const;
  /// Refuses (tessera::Error naming the file and dataset) a shape whose elements of `element`
  /// bytes the file cannot hold: more than 2^63 bytes, or — unfiltered — more than the dataset's
  /// storage or the file's size; filtered, more than 1024 times the file's size. Call before
  /// allocating memory for a size read from the file: a damaged header claims any size.
  void check_stored(size_t element) const;
  Attributes attributes() const { return Attributes(id(), context()); }

  /// Writes `data` (row-major, box.count elements, of type `t`) into `box`. collective: every rank
  /// of the file's communicator calls (a rank with nothing to write passes an empty box).
  void write(const Box& box, ElementType t, const void* data, bool collective) const;
  /// Writes elements [offset, offset + count) of the dataset in row-major order from `data`: the
  /// range cut into boxes (flat_range_boxes), one write per box. collective: every rank calls, and
  /// every call makes the same number of writes (2 × rank - 1, empty boxes where a rank has fewer).
  void write_range(hsize_t offset, hsize_t count, ElementType t, const void* data,
                   bool collective) const;
  /// Reads `box` into `out` converting to `t`.
  void read(const Box& box, ElementType t, void* out) const;
  /// Reads `boxes` one after another into `out`, contiguous in the given order: one H5Dread per
  /// box, each into a memory space of the box's own shape, which HDF5 1.10 copies chunk by chunk
  /// (a flat memory space makes it go element by element, many times slower).
  void read_boxes(const std::vector<Box>& boxes, ElementType t, void* out) const;
  /// Reads everything.
  void read_all(ElementType t, void* out) const;

 private:
  Handle m_handle;
  std::string m_file;
  std::string m_path;
};

class Group {
 public:
  Group(Handle handle, std::string file, std::string path)
      : m_handle(std::move(handle)), m_file(std::move(file)), m_path(std::move(path)) {}
  const std::string& path() const { return m_path; }
  std::string context() const { return m_file + ":" + m_path; }
  hid_t id() const { return m_handle.id(); }
  Attributes attributes() const { return Attributes(id(), context()); }
  bool has(const std::string& name) const;
  Group open_group(const std::string& name) const;
  Group create_group(const std::string& name) const;
  Dataset open_dataset(const std::string& name) const;
  /// Creates a dataset of `shape`; `chunk` empty means contiguous. Storage is allocated at
  /// creation and no times are recorded, so the same content gives the same bytes.
  Dataset create_dataset(const std::string& name, ElementType t, const std::vector<hsize_t>& shape,
                         const std::vector<hsize_t>& chunk = {}) const;
  /// Names of the members (groups and datasets), sorted.
  std::vector<std::string> members() const;
  bool is_group(const std::string& name) const;
  /// Why member `name` (which has() found) leads to no object: "" when it does, else "is a soft
  /// link to 'PATH', which leads nowhere" or "is an external link to 'FILE:PATH', which cannot be
  /// followed" (a missing file, a link to itself).
  std::string link_problem(const std::string& name) const;
  /// The file address of the object that member `name` links to ("." for this group): two links
  /// to one object give one address, so a walk of the file can visit each group once (a damaged
  /// file may link a group to its own ancestor).
  std::uint64_t address_of(const std::string& name) const;

 private:
  Handle m_handle;
  std::string m_file;
  std::string m_path;
};

/// Throws input_error("PATH: is a FIFO (named pipe), not a file"; a device, a socket) when `path`
/// exists and, after symbolic links, is not a regular file or a folder: opening a FIFO would wait
/// for a writer that may never come. Every file Tessera opens to read is checked so first.
void refuse_special_file(const std::string& path);

class File {
 public:
  /// Creates (truncates) `path` collectively over `comm` with MPI-IO.
  static File create(const std::string& path, MPI_Comm comm);
  /// Opens `path` read-only collectively over `comm` with MPI-IO.
  static File open_parallel(const std::string& path, MPI_Comm comm);
  /// Opens `path` read-only on this rank alone (POSIX driver; no MPI).
  static File open_serial(const std::string& path);
  /// Opens `path` read-write on this rank alone.
  static File open_serial_rw(const std::string& path);

  const std::string& path() const { return m_path; }
  hid_t id() const { return m_handle.id(); }
  Group root() const;
  bool collective() const { return m_collective; }
  /// Flushes and closes (also done by the destructor, which cannot report errors).
  void close();

 private:
  File(Handle handle, std::string path, bool collective)
      : m_handle(std::move(handle)), m_path(std::move(path)), m_collective(collective) {}
  Handle m_handle;
  std::string m_path;
  bool m_collective = false;
};

/// The boxes, in row-major order, that make up elements [offset, offset + count) of a dataset of
/// `shape` in row-major order: at most 2 × rank - 1 of them (a partial first row, whole rows, a
/// partial last row, recursively). Empty for count 0.
std::vector<Box> flat_range_boxes(const std::vector<hsize_t>& shape, hsize_t offset, hsize_t count);

/// "path:/group" → {"path", "/group"}; a spec without ':' names the root group.
std::pair<std::string, std::string> split_file_spec(const std::string& spec);

}  // namespace tessera::io
