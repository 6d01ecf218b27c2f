#include "tessera/io/hdf5.hpp"

#include "tessera/core/check.hpp"
#include "tessera/core/layout.hpp"
#include "tessera/core/strings.hpp"

#include <fmt/ranges.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <regex>

namespace tessera::io {

std::recursive_mutex& hdf5_mutex() {
  static std::recursive_mutex m;
  return m;
}

namespace detail {
namespace {
herr_t collect(unsigned, const H5E_error2_t* err, void* data) {
  auto* out = static_cast<std::vector<std::string>*>(data);
  out->emplace_back(err->desc != nullptr ? err->desc : "");
  return 0;
}

// What the operating system said, from the innermost entry of HDF5's stack: the sec2 driver's
// "..., errno = 28, error message = 'No space left on device', ..." or the MPI-IO driver's
// "MPI_File_write_at failed: MPI error string is '... error stack:\nADIOI_GEN_WRITECONTIG(80):
// Other I/O error No space left on device'". Empty when there is nothing beyond HDF5's words.
std::string root_cause(const std::string& innermost) {
  const std::string tag = "error message = '";
  if (const size_t at = innermost.find(tag); at != std::string::npos) {
    const size_t from = at + tag.size();
    return innermost.substr(from, innermost.find('\'', from) - from);
  }
  if (innermost.find("MPI error string") == std::string::npos) {
    return "";
  }
  std::string last = innermost.substr(innermost.rfind('\n') + 1);  // the whole text if one line
  if (const size_t colon = last.find("): "); colon != std::string::npos) {
    last = last.substr(colon + 3);
  }
  while (!last.empty() && (last.back() == '\'' || last.back() == ' ')) {
    last.pop_back();
  }
  const std::string other = "Other I/O error ";
  if (last.rfind(other, 0) == 0 && last.size() > other.size()) {
    last = last.substr(other.size());
  }
  return last;
}

}  // namespace

std::vector<std::string> hdf5_error_stack() {
  const std::lock_guard<std::recursive_mutex> lock(hdf5_mutex());
  std::vector<std::string> stack;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect, &stack);
  H5Eclear2(H5E_DEFAULT);
  return stack;
}

namespace {
// The API call's entry and, when the innermost failure says more, what the system said.
std::string reason_of(const std::vector<std::string>& stack) {
  if (stack.empty()) {
    return "";
  }
  const std::string cause = root_cause(stack.back());
  return cause.empty() || cause == stack.front() ? stack.front() : stack.front() + ": " + cause;
}
}  // namespace

std::string hdf5_reason() {
  return reason_of(hdf5_error_stack());
}

void throw_hdf5(const char* call, const std::string& context) {
  throw_hdf5(call, context, hdf5_error_stack());
}

void throw_hdf5(const char* call, const std::string& context,
                const std::vector<std::string>& stack) {
  // A file whose metadata is damaged (a flipped byte, a cut) fails deep in HDF5 with words like
  // these: bad input, exit code 2, said so, not an internal error naming HDF5's API.
  for (const std::string& desc : stack) {
    for (const char* sign : {"checksum", "bad object header", "signature", "truncated",
                             "addr overflow", "address overflow", "corrupt", "bad version"}) {
      if (desc.find(sign) != std::string::npos) {
        throw input_error(fmt::format("{}: damaged: HDF5 cannot read it ({})", context, desc));
      }
    }
  }
  // The function's name, not the call's source text (its arguments are Tessera's variables).
  const std::string text(call);
  const std::string function = text.substr(0, text.find('('));
  const std::string reason = reason_of(stack);
  throw Error(fmt::format("{}: HDF5's {} failed{}", context, function,
                          reason.empty() ? "" : fmt::format(" ({})", reason)));
}
std::string open_failure() {
  const std::vector<std::string> stack = hdf5_error_stack();
  static const std::regex truncated("truncated file: eof = ([0-9]+),.*stored_eof = ([0-9]+)");
  for (const std::string& desc : stack) {
    std::smatch m;
    if (std::regex_search(desc, m, truncated)) {
      return fmt::format("truncated: the file has {} bytes, its HDF5 superblock says {}",
                         m[1].str(), m[2].str());
    }
  }
  return fmt::format("truncated or damaged: HDF5 cannot read it ({})",
                     stack.empty() ? "no reason given" : stack.back());
}
}  // namespace detail

namespace {
// HDF5 prints its error stack to stderr by default; Tessera reports errors itself.
// And HDF5 does not close its files itself at exit: a file whose close failed (a full disk) makes
// HDF5 1.10's clean-up crash in H5F__close_cb; close_library() does it when that is safe.
std::atomic<bool> g_abandoned_file{false};
struct SilenceHdf5 {
  SilenceHdf5() {  // before main, on one thread: no hdf5_mutex() needed
    H5dont_atexit();
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
};
const SilenceHdf5 kSilence;

// Every HDF5 call holds the library lock and reads HDF5's error stack under the same lock.
#define TESSERA_H5(call, context)                                         \
  [&]() {                                                                 \
    const std::lock_guard<std::recursive_mutex> _call_lock(hdf5_mutex()); \
    auto _r = (call);                                                     \
    if (_r < 0) {                                                         \
      detail::throw_hdf5(#call, (context));                               \
    }                                                                     \
    return _r;                                                            \
  }()

// For functions that call HDF5 directly.
#define TESSERA_H5_LOCK const std::lock_guard<std::recursive_mutex> _lock(hdf5_mutex())

// A property list of a class named by an enum: HDF5's class names (H5P_FILE_ACCESS) expand to a
// library call and a global, read under the lock here, not at the caller.
enum class PropertyList {
  file_access,
  file_create,
  dataset_create,
  dataset_xfer,
  group_create,
  link_create
};
Handle plist(PropertyList kind) {
  TESSERA_H5_LOCK;
  hid_t cls = H5P_FILE_ACCESS;
  switch (kind) {
    case PropertyList::file_access:
      break;
    case PropertyList::file_create:
      cls = H5P_FILE_CREATE;
      break;
    case PropertyList::dataset_create:
      cls = H5P_DATASET_CREATE;
      break;
    case PropertyList::dataset_xfer:
      cls = H5P_DATASET_XFER;
      break;
    case PropertyList::group_create:
      cls = H5P_GROUP_CREATE;
      break;
    case PropertyList::link_create:
      cls = H5P_LINK_CREATE;
      break;
  }
  return Handle(TESSERA_H5(H5Pcreate(cls), "HDF5"), H5Pclose);
}

Handle dataspace(const std::vector<hsize_t>& dims) {
  if (dims.empty()) {
    return Handle(TESSERA_H5(H5Screate(H5S_SCALAR), "HDF5"), H5Sclose);
  }
  return Handle(
      TESSERA_H5(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), "HDF5"),
      H5Sclose);
}

hsize_t product(const std::vector<hsize_t>& v) {
  hsize_t n = 1;
  for (hsize_t d : v) {
    n *= d;
  }
  return n;
}

// The size of the file holding HDF5 object `object`, or 0 when HDF5 cannot say.
hsize_t file_size_of(hid_t object) {
  TESSERA_H5_LOCK;
  const hid_t file = H5Iget_file_id(object);
  if (file < 0) {
    H5Eclear2(H5E_DEFAULT);
    return 0;
  }
  hsize_t size = 0;
  if (H5Fget_filesize(file, &size) < 0) {
    H5Eclear2(H5E_DEFAULT);
    size = 0;
  }
  H5Fclose(file);
  return size;
}

std::string byte_size(double bytes) {
  const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (bytes >= 1024.0 && u < 6) {
    bytes /= 1024.0;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} bytes", bytes) : fmt::format("{:.1f} {}", bytes, units[u]);
}
}  // namespace

Handle& Handle::operator=(Handle&& other) noexcept {
  if (this != &other) {
    reset();
    m_id = other.m_id;
    m_closer = other.m_closer;
    other.m_id = -1;
  }
  return *this;
}

void Handle::reset() {
  TESSERA_H5_LOCK;
  if (m_id >= 0 && m_closer != nullptr && m_closer(m_id) < 0 && m_closer == H5Fclose) {
    g_abandoned_file = true;
  }
  m_id = -1;
}

const char* element_type_name(ElementType t) {
  switch (t) {
    case ElementType::u8:
      return "uint8";
    case ElementType::i32:
      return "int32";
    case ElementType::i64:
      return "int64";
    case ElementType::f16:
      return "float16";
    case ElementType::f32:
      return "float32";
    case ElementType::f64:
      return "float64";
  }
  return "unknown";
}

namespace {
// IEEE 754 binary16, little endian: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
hid_t half_type() {
  TESSERA_H5_LOCK;
  static const hid_t type = [] {
    const hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    H5Tset_fields(t, 15, 10, 5, 0, 10);
    H5Tset_size(t, 2);
    H5Tset_ebias(t, 15);
    H5Tlock(t);
    return t;
  }();
  return type;
}
}  // namespace

hid_t file_type(ElementType t) {
  TESSERA_H5_LOCK;  // the predefined types expand to H5open() and a library global
  switch (t) {
    case ElementType::u8:
      return H5T_STD_U8LE;
    case ElementType::i32:
      return H5T_STD_I32LE;
    case ElementType::i64:
      return H5T_STD_I64LE;
    case ElementType::f16:
      return half_type();
    case ElementType::f32:
      return H5T_IEEE_F32LE;
    case ElementType::f64:
      return H5T_IEEE_F64LE;
  }
  return H5T_IEEE_F32LE;
}

hid_t memory_type(ElementType t) {
  TESSERA_H5_LOCK;  // as file_type
  switch (t) {
    case ElementType::u8:
      return H5T_NATIVE_UINT8;
    case ElementType::i32:
      return H5T_NATIVE_INT32;
    case ElementType::i64:
      return H5T_NATIVE_INT64;
    case ElementType::f16:
      return half_type();
    case ElementType::f32:
      return H5T_NATIVE_FLOAT;
    case ElementType::f64:
      return H5T_NATIVE_DOUBLE;
  }
  return H5T_NATIVE_FLOAT;
}

std::optional<ElementType> element_type_of(hid_t type) {
  TESSERA_H5_LOCK;
  const H5T_class_t cls = H5Tget_class(type);
  const size_t size = H5Tget_size(type);
  if (cls == H5T_INTEGER) {
    const H5T_sign_t sign = H5Tget_sign(type);
    if (size == 1 && sign == H5T_SGN_NONE) {
      return ElementType::u8;
    }
    if (size == 4 && sign == H5T_SGN_2) {
      return ElementType::i32;
    }
    if (size == 8 && sign == H5T_SGN_2) {
      return ElementType::i64;
    }
  } else if (cls == H5T_FLOAT) {
    if (size == 2) {
      return ElementType::f16;
    }
    if (size == 4) {
      return ElementType::f32;
    }
    if (size == 8) {
      return ElementType::f64;
    }
  }
  return std::nullopt;
}

std::pair<std::string, std::string> split_file_spec(const std::string& spec) {
  const auto colon = spec.rfind(':');
  if (colon == std::string::npos) {
    return {spec, "/"};
  }
  std::string group = spec.substr(colon + 1);
  if (group.empty() || group[0] != '/') {
    group = "/" + group;
  }
  return {spec.substr(0, colon), group};
}

// --- Attributes ------------------------------------------------------------------------------

bool Attributes::has(const std::string& name) const {
  return TESSERA_H5(H5Aexists(m_obj, name.c_str()), m_context) > 0;
}

Handle Attributes::open(const std::string& name) const {
  if (!has(name)) {
    throw Error(fmt::format("{}: attribute '{}' is missing", m_context, name));
  }
  return Handle(TESSERA_H5(H5Aopen(m_obj, name.c_str(), H5P_DEFAULT), m_context), H5Aclose);
}

void Attributes::write_raw(const std::string& name, hid_t type, const std::vector<hsize_t>& dims,
                           const void* data) const {
  if (has(name)) {
    TESSERA_H5(H5Adelete(m_obj, name.c_str()), m_context);
  }
  const Handle space = dataspace(dims);
  const Handle attr(
      TESSERA_H5(H5Acreate2(m_obj, name.c_str(), type, space.id(), H5P_DEFAULT, H5P_DEFAULT),
                 m_context),
      H5Aclose);
  TESSERA_H5(H5Awrite(attr.id(), type, data), m_context);
}

void Attributes::set(const std::string& name, const std::string& value) const {
  // A single string is stored as a scalar, which h5py returns as a plain str.
  const Handle type(TESSERA_H5(H5Tcopy(H5T_C_S1), m_context), H5Tclose);
  TESSERA_H5(H5Tset_size(type.id(), std::max<size_t>(1, value.size())), m_context);
  TESSERA_H5(H5Tset_cset(type.id(), H5T_CSET_UTF8), m_context);
  write_raw(name, type.id(), {}, value.empty() ? "" : value.data());
}

void Attributes::set(const std::string& name, std::int64_t value) const {
  TESSERA_H5_LOCK;  // H5T_NATIVE_*: see file_type
  write_raw(name, H5T_NATIVE_INT64, {}, &value);
}

void Attributes::set(const std::string& name, double value) const {
  TESSERA_H5_LOCK;  // H5T_NATIVE_*: see file_type
  write_raw(name, H5T_NATIVE_DOUBLE, {}, &value);
}

void Attributes::set(const std::string& name, const std::vector<std::string>& values) const {
  // Fixed-length strings, as wide as the longest, in the attribute itself: variable-length ones
  // live in the file's global heap, which has no checksum, and HDF5 1.10 reads a damaged global
  // heap reference out of bounds (a segfault found by fuzzing tessera-data ls).
  size_t width = 1;
  for (const auto& v : values) {
    width = std::max(width, v.size());
  }
  const Handle type(TESSERA_H5(H5Tcopy(H5T_C_S1), m_context), H5Tclose);
  TESSERA_H5(H5Tset_size(type.id(), width), m_context);
  TESSERA_H5(H5Tset_strpad(type.id(), H5T_STR_NULLPAD), m_context);
  TESSERA_H5(H5Tset_cset(type.id(), H5T_CSET_UTF8), m_context);
  std::vector<char> packed(values.size() * width, '\0');
  for (size_t i = 0; i < values.size(); ++i) {
    std::copy(values[i].begin(), values[i].end(),
              packed.begin() + static_cast<std::ptrdiff_t>(i * width));
  }
  write_raw(name, type.id(), {values.size()}, packed.data());
}

void Attributes::set(const std::string& name, const std::vector<double>& values) const {
  TESSERA_H5_LOCK;  // H5T_NATIVE_*: see file_type
  write_raw(name, H5T_NATIVE_DOUBLE, {values.size()}, values.data());
}

void Attributes::set(const std::string& name, const std::vector<std::int64_t>& values) const {
  TESSERA_H5_LOCK;  // H5T_NATIVE_*: see file_type
  write_raw(name, H5T_NATIVE_INT64, {values.size()}, values.data());
}

namespace {
// The attribute's element count, refused when a damaged header claims more than the file holds.
hssize_t attribute_points(hid_t attr, const std::string& context) {
  const Handle space(TESSERA_H5(H5Aget_space(attr), context), H5Sclose);
  const hssize_t points = TESSERA_H5(H5Sget_simple_extent_npoints(space.id()), context);
  const hsize_t file = file_size_of(attr);
  if (file > 0 && static_cast<hsize_t>(points) > file) {
    throw Error(
        fmt::format("{}: holds {} values, more than the file's {} bytes: the file is "
                    "damaged",
                    context, points, file));
  }
  return points;
}
}  // namespace

std::vector<std::string> Attributes::get_strings(const std::string& name) const {
  TESSERA_H5_LOCK;
  const Handle attr = open(name);
  const std::string ctx = m_context + " attribute '" + name + "'";
  const Handle type(TESSERA_H5(H5Aget_type(attr.id()), ctx), H5Tclose);
  if (H5Tget_class(type.id()) != H5T_STRING) {
    throw Error(fmt::format("{}: not a string", ctx));
  }
  const auto n = static_cast<size_t>(attribute_points(attr.id(), ctx));
  std::vector<std::string> out;
  if (n == 0) {
    return out;  // an empty (null) attribute: nothing to read
  }
  if (H5Tis_variable_str(type.id()) > 0) {
    const Handle mem(TESSERA_H5(H5Tcopy(H5T_C_S1), ctx), H5Tclose);
    TESSERA_H5(H5Tset_size(mem.id(), H5T_VARIABLE), ctx);
    TESSERA_H5(H5Tset_cset(mem.id(), H5Tget_cset(type.id())), ctx);
    std::vector<char*> ptrs(n, nullptr);
    TESSERA_H5(H5Aread(attr.id(), mem.id(), ptrs.data()), ctx);
    for (char* p : ptrs) {
      out.emplace_back(p != nullptr ? p : "");
    }
    const Handle space(TESSERA_H5(H5Aget_space(attr.id()), ctx), H5Sclose);
    H5Dvlen_reclaim(mem.id(), space.id(), H5P_DEFAULT, ptrs.data());
  } else {
    const size_t width = H5Tget_size(type.id());
    std::vector<char> buf(n * width);
    TESSERA_H5(H5Aread(attr.id(), type.id(), buf.data()), ctx);
    for (size_t i = 0; i < n; ++i) {
      const char* s = buf.data() + i * width;
      out.emplace_back(s, strnlen(s, width));
    }
  }
  return out;
}

std::string Attributes::get_string(const std::string& name) const {
  const std::vector<std::string> v = get_strings(name);
  if (v.size() != 1) {
    throw Error(fmt::format("{}: attribute '{}' holds {} strings, expected one", m_context, name,
                            v.size()));
  }
  return v[0];
}

namespace {
// Refuses an attribute read as numbers that holds none (a string, a compound): HDF5 would fail to
// convert with words about its own API.
void require_numbers(hid_t attr, const std::string& ctx) {
  TESSERA_H5_LOCK;
  const Handle type(TESSERA_H5(H5Aget_type(attr), ctx), H5Tclose);
  const H5T_class_t c = H5Tget_class(type.id());
  if (c != H5T_INTEGER && c != H5T_FLOAT) {
    throw Error(fmt::format("{}: holds {}, not numbers", ctx,
                            c == H5T_STRING ? "a string" : "values of another kind"));
  }
}
}  // namespace

std::vector<double> Attributes::get_doubles(const std::string& name) const {
  TESSERA_H5_LOCK;
  const Handle attr = open(name);
  const std::string ctx = m_context + " attribute '" + name + "'";
  require_numbers(attr.id(), ctx);
  std::vector<double> out(static_cast<size_t>(attribute_points(attr.id(), ctx)));
  if (!out.empty()) {
    TESSERA_H5(H5Aread(attr.id(), H5T_NATIVE_DOUBLE, out.data()), ctx);
  }
  return out;
}

std::vector<std::int64_t> Attributes::get_ints(const std::string& name) const {
  TESSERA_H5_LOCK;
  const Handle attr = open(name);
  const std::string ctx = m_context + " attribute '" + name + "'";
  require_numbers(attr.id(), ctx);
  std::vector<std::int64_t> out(static_cast<size_t>(attribute_points(attr.id(), ctx)));
  if (!out.empty()) {
    TESSERA_H5(H5Aread(attr.id(), H5T_NATIVE_INT64, out.data()), ctx);
  }
  return out;
}

std::int64_t Attributes::get_int(const std::string& name) const {
  const std::vector<std::int64_t> v = get_ints(name);
  if (v.size() != 1) {
    throw Error(
        fmt::format("{}: attribute '{}' holds {} values, expected one", m_context, name, v.size()));
  }
  return v[0];
}

double Attributes::get_double(const std::string& name) const {
  const std::vector<double> v = get_doubles(name);
  if (v.size() != 1) {
    throw Error(
        fmt::format("{}: attribute '{}' holds {} values, expected one", m_context, name, v.size()));
  }
  return v[0];
}

std::vector<std::string> Attributes::names() const {
  TESSERA_H5_LOCK;
  std::vector<std::string> out;
  H5O_info_t info;
  TESSERA_H5(H5Oget_info2(m_obj, &info, H5O_INFO_NUM_ATTRS), m_context);
  for (hsize_t i = 0; i < info.num_attrs; ++i) {
    const ssize_t len = TESSERA_H5(
        H5Aget_name_by_idx(m_obj, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT),
        m_context);
    std::string name(static_cast<size_t>(len) + 1, '\0');
    TESSERA_H5(H5Aget_name_by_idx(m_obj, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(),
                                  name.size(), H5P_DEFAULT),
               m_context);
    name.resize(static_cast<size_t>(len));
    out.push_back(name);
  }
  return out;
}

// --- Dataset ---------------------------------------------------------------------------------

std::vector<hsize_t> Dataset::shape() const {
  const Handle space(TESSERA_H5(H5Dget_space(id()), context()), H5Sclose);
  const int rank = TESSERA_H5(H5Sget_simple_extent_ndims(space.id()), context());
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  TESSERA_H5(H5Sget_simple_extent_dims(space.id(), dims.data(), nullptr), context());
  return dims;
}

std::optional<ElementType> Dataset::element_type() const {
  const Handle type(TESSERA_H5(H5Dget_type(id()), context()), H5Tclose);
  return element_type_of(type.id());
}

std::string Dataset::type_name() const {
  const Handle type(TESSERA_H5(H5Dget_type(id()), context()), H5Tclose);
  TESSERA_H5_LOCK;
  const size_t bits = 8 * H5Tget_size(type.id());
  switch (H5Tget_class(type.id())) {
    case H5T_INTEGER:
      return fmt::format("{}int{}", H5Tget_sign(type.id()) == H5T_SGN_NONE ? "u" : "", bits);
    case H5T_FLOAT:
      return fmt::format("float{}", bits);
    case H5T_STRING:
      return "string";
    case H5T_COMPOUND:
      return "compound";
    case H5T_ENUM:
      return "enum";
    case H5T_ARRAY:
      return "array";
    case H5T_VLEN:
      return "variable-length";
    case H5T_BITFIELD:
      return "bitfield";
    case H5T_OPAQUE:
      return "opaque";
    case H5T_REFERENCE:
      return "reference";
    default:
      return "of an unknown class";
  }
}

std::string Dataset::unavailable_filter() const {
  const Handle dcpl(TESSERA_H5(H5Dget_create_plist(id()), context()), H5Pclose);
  TESSERA_H5_LOCK;
  const int filters = H5Pget_nfilters(dcpl.id());
  for (int i = 0; i < filters; ++i) {
    unsigned flags = 0;
    size_t values = 0;
    char name[64] = {};
    unsigned config = 0;
    const H5Z_filter_t filter = H5Pget_filter2(dcpl.id(), static_cast<unsigned>(i), &flags, &values,
                                               nullptr, sizeof(name), name, &config);
    if (filter >= 0 && H5Zfilter_avail(filter) <= 0) {
      const std::string text = printable(std::string(name, strnlen(name, sizeof(name))));
      return fmt::format("{} (filter {})", text.empty() ? "unnamed" : text, filter);
    }
  }
  return "";
}

hsize_t Dataset::storage_size() const {
  TESSERA_H5_LOCK;
  return H5Dget_storage_size(id());  // 0 also on error: nothing stored that can be read
}

bool Dataset::filtered() const {
  const Handle dcpl(TESSERA_H5(H5Dget_create_plist(id()), context()), H5Pclose);
  return TESSERA_H5(H5Pget_nfilters(dcpl.id()), context()) > 0;
}

void Dataset::check_stored(size_t element) const {
  TESSERA_H5_LOCK;  // H5Pget_layout and H5Pget_chunk below: a reader's thread reads beside it
  const std::vector<hsize_t> dims = shape();
  hsize_t bytes = element;
  bool overflow = false;
  for (hsize_t d : dims) {
    overflow = overflow || __builtin_mul_overflow(bytes, d, &bytes) || bytes > (hsize_t{1} << 63);
  }
  const std::string shape_text = fmt::format("({})", fmt::join(dims, ", "));
  if (overflow) {
    throw Error(fmt::format("{}: shape {} is more than 2^63 bytes: the file is damaged", context(),
                            shape_text));
  }
  const hsize_t file = file_size_of(id());
  if (filtered()) {
    if (file > 0 && bytes / 1024 > file) {
      throw Error(
          fmt::format("{}: shape {} needs {}, over 1024 times the file's {}: the file is "
                      "damaged",
                      context(), shape_text, byte_size(static_cast<double>(bytes)),
                      byte_size(static_cast<double>(file))));
    }
    return;
  }
  // Unfiltered, the storage is the shape's bytes, or its chunks' (edge chunks are whole): more
  // is a damaged size that HDF5 would allocate a buffer of (found by fuzzing: 2.9 GB for 512).
  hsize_t most = element;
  const Handle dcpl(TESSERA_H5(H5Dget_create_plist(id()), context()), H5Pclose);
  std::vector<hsize_t> chunk(dims.size(), 0);
  const bool chunked = H5Pget_layout(dcpl.id()) == H5D_CHUNKED &&
                       H5Pget_chunk(dcpl.id(), static_cast<int>(dims.size()), chunk.data()) ==
                           static_cast<int>(dims.size());
  for (size_t d = 0; d < dims.size(); ++d) {
    const hsize_t c = chunked && chunk[d] > 0 ? chunk[d] : 1;
    const hsize_t padded = (dims[d] + c - 1) / c * c;
    if (__builtin_mul_overflow(most, padded, &most)) {
      most = std::numeric_limits<hsize_t>::max();
    }
  }
  const hsize_t claimed = storage_size();  // H5Dget_storage_size walks a chunk index: once
  if (claimed > most) {
    throw Error(
        fmt::format("{}: shape {} stores at most {}, but the file says {}: the file is "
                    "damaged",
                    context(), shape_text, byte_size(static_cast<double>(most)),
                    byte_size(static_cast<double>(claimed))));
  }
  const hsize_t stored = std::min(claimed, file > 0 ? file : claimed);
  if (bytes > stored) {
    throw Error(
        fmt::format("{}: shape {} needs {} but the file stores {} of it: the file is "
                    "damaged or incomplete",
                    context(), shape_text, byte_size(static_cast<double>(bytes)),
                    byte_size(static_cast<double>(stored))));
  }
}

namespace {
void check_box(const Box& box, const std::vector<hsize_t>& shape, const std::string& path) {
  bool ok = box.offset.size() == shape.size() && box.count.size() == shape.size();
  for (size_t d = 0; ok && d < shape.size(); ++d) {
    ok = box.offset[d] + box.count[d] <= shape[d];
  }
  TESSERA_CHECK(ok, "{}: selection outside the dataset's shape", path);
}
}  // namespace

void Dataset::write(const Box& box, ElementType t, const void* data, bool collective) const {
  const std::vector<hsize_t> dims = shape();
  check_box(box, dims, context());
  const Handle file_space(TESSERA_H5(H5Dget_space(id()), context()), H5Sclose);
  const hsize_t n = product(box.count);
  // The memory space has the box's shape: HDF5 (1.10) maps a same-shaped selection onto the chunks
  // block by block, but any other one element by element (~70 ns each, slower than the disk).
  Handle mem_space = n == 0 ? dataspace({1}) : dataspace(box.count);
  if (n == 0) {
    TESSERA_H5(H5Sselect_none(file_space.id()), context());
    TESSERA_H5(H5Sselect_none(mem_space.id()), context());
  } else {
    TESSERA_H5(H5Sselect_hyperslab(file_space.id(), H5S_SELECT_SET, box.offset.data(), nullptr,
                                   box.count.data(), nullptr),
               context());
  }
  const Handle xfer = plist(PropertyList::dataset_xfer);
  if (collective) {
    TESSERA_H5(H5Pset_dxpl_mpio(xfer.id(), H5FD_MPIO_COLLECTIVE), context());
  }
  TESSERA_H5(H5Dwrite(id(), memory_type(t), mem_space.id(), file_space.id(), xfer.id(), data),
             context());
}

void Dataset::write_range(hsize_t offset, hsize_t count, ElementType t, const void* data,
                          bool collective) const {
  const std::vector<hsize_t> dims = shape();
  const std::vector<Box> boxes = flat_range_boxes(dims, offset, count);
  const size_t element = [&] {
    TESSERA_H5_LOCK;
    return H5Tget_size(memory_type(t));
  }();
  const size_t calls = !collective ? boxes.size() : dims.empty() ? 1 : 2 * dims.size() - 1;
  Box empty;  // a rank with fewer boxes writes nothing in the remaining collective calls
  empty.offset.assign(dims.size(), 0);
  empty.count.assign(dims.size(), 0);
  const auto* at = static_cast<const unsigned char*>(data);
  for (size_t k = 0; k < calls; ++k) {
    const Box& b = k < boxes.size() ? boxes[k] : empty;
    write(b, t, at, collective);
    at += product(b.count) * element;
  }
}

void Dataset::read(const Box& box, ElementType t, void* out) const {
  read_boxes({box}, t, out);
}

void Dataset::read_boxes(const std::vector<Box>& boxes, ElementType t, void* out) const {
  const std::vector<hsize_t> dims = shape();
  for (const Box& b : boxes) {
    check_box(b, dims, context());
  }
  // One H5Dread per box, into a memory space of the box's shape: HDF5 (1.10) maps a file selection
  // onto the chunks block by block only when the memory selection has the same shape; a union of
  // boxes against a flat buffer goes element by element (~70 ns each) and over every chunk of the
  // union's bounding box, many times slower than the reads themselves.
  const Handle file_space(TESSERA_H5(H5Dget_space(id()), context()), H5Sclose);
  const Handle xfer = plist(PropertyList::dataset_xfer);
  const size_t element = [&] {
    TESSERA_H5_LOCK;
    return H5Tget_size(memory_type(t));
  }();
  auto* at = static_cast<unsigned char*>(out);
  for (const Box& b : boxes) {
    const hsize_t n = product(b.count);
    if (n == 0) {
      continue;
    }
    // HDF5 callocs its type-conversion buffer (default 1 MiB) on every H5Dread: size it to the box
    // (8 bytes: the widest element type) so that small reads do not clear a megabyte each.
    TESSERA_H5(
        H5Pset_buffer(xfer.id(), std::min<hsize_t>(n * 8, hsize_t{1} << 20), nullptr, nullptr),
        context());
    TESSERA_H5(H5Sselect_hyperslab(file_space.id(), H5S_SELECT_SET, b.offset.data(), nullptr,
                                   b.count.data(), nullptr),
               context());
    const Handle mem_space = dataspace(b.count);
    TESSERA_H5(H5Dread(id(), memory_type(t), mem_space.id(), file_space.id(), xfer.id(), at),
               context());
    at += n * element;
  }
}

void Dataset::read_all(ElementType t, void* out) const {
  const std::vector<hsize_t> dims = shape();
  read({std::vector<hsize_t>(dims.size(), 0), dims}, t, out);
}

std::vector<Box> flat_range_boxes(const std::vector<hsize_t>& shape, hsize_t offset,
                                  hsize_t count) {
  const Shape dims(shape.begin(), shape.end());
  std::vector<Box> out;
  for (const tessera::Box& b :
       range_boxes(dims, static_cast<Index>(offset), static_cast<Index>(count))) {
    out.push_back({std::vector<hsize_t>(b.offset.begin(), b.offset.end()),
                   std::vector<hsize_t>(b.count.begin(), b.count.end())});
  }
  return out;
}

// --- Group -----------------------------------------------------------------------------------

namespace {
std::string child_path(const std::string& parent, const std::string& name) {
  return parent == "/" ? "/" + name : parent + "/" + name;
}
}  // namespace

bool Group::has(const std::string& name) const {
  // H5Lexists needs every intermediate link to exist; walk the path one component at a time.
  std::string prefix;
  size_t start = 0;
  while (start <= name.size()) {
    const size_t slash = name.find('/', start);
    prefix = name.substr(0, slash);
    if (!prefix.empty() &&
        TESSERA_H5(H5Lexists(id(), prefix.c_str(), H5P_DEFAULT), context()) <= 0) {
      return false;
    }
    if (slash == std::string::npos) {
      break;
    }
    start = slash + 1;
  }
  return true;
}

Group Group::open_group(const std::string& name) const {
  const std::string path = child_path(m_path, name);
  if (!has(name)) {
    throw Error(fmt::format("{}:{}: group not found", m_file, path));
  }
  return Group(
      Handle(TESSERA_H5(H5Gopen2(id(), name.c_str(), H5P_DEFAULT), m_file + ":" + path), H5Gclose),
      m_file, path);
}

Group Group::create_group(const std::string& name) const {
  const std::string path = child_path(m_path, name);
  const Handle lcpl = plist(PropertyList::link_create);
  TESSERA_H5(H5Pset_create_intermediate_group(lcpl.id(), 1), path);
  const Handle gcpl = plist(PropertyList::group_create);
  TESSERA_H5(H5Pset_obj_track_times(gcpl.id(), 0), path);
  return Group(Handle(TESSERA_H5(H5Gcreate2(id(), name.c_str(), lcpl.id(), gcpl.id(), H5P_DEFAULT),
                                 m_file + ":" + path),
                      H5Gclose),
               m_file, path);
}

Dataset Group::open_dataset(const std::string& name) const {
  const std::string path = child_path(m_path, name);
  if (!has(name)) {
    throw Error(fmt::format("{}:{}: dataset not found", m_file, path));
  }
  if (is_group(name)) {  // H5Dopen2 would say only "unable to open dataset"
    throw input_error(fmt::format("{}:{}: is a group, not a dataset", m_file, path));
  }
  return Dataset(
      Handle(TESSERA_H5(H5Dopen2(id(), name.c_str(), H5P_DEFAULT), m_file + ":" + path), H5Dclose),
      m_file, path);
}

Dataset Group::create_dataset(const std::string& name, ElementType t,
                              const std::vector<hsize_t>& shape,
                              const std::vector<hsize_t>& chunk) const {
  const std::string path = child_path(m_path, name);
  const Handle space = dataspace(shape);
  const Handle dcpl = plist(PropertyList::dataset_create);
  TESSERA_H5(H5Pset_obj_track_times(dcpl.id(), 0), path);
  if (!chunk.empty()) {
    TESSERA_H5(H5Pset_chunk(dcpl.id(), static_cast<int>(chunk.size()), chunk.data()), path);
  }
  TESSERA_H5(H5Pset_alloc_time(dcpl.id(), H5D_ALLOC_TIME_EARLY), path);
  TESSERA_H5(H5Pset_fill_time(dcpl.id(), H5D_FILL_TIME_NEVER), path);
  const Handle lcpl = plist(PropertyList::link_create);
  TESSERA_H5(H5Pset_create_intermediate_group(lcpl.id(), 1), path);
  return Dataset(Handle(TESSERA_H5(H5Dcreate2(id(), name.c_str(), file_type(t), space.id(),
                                              lcpl.id(), dcpl.id(), H5P_DEFAULT),
                                   m_file + ":" + path),
                        H5Dclose),
                 m_file, path);
}

namespace {
herr_t collect_name(hid_t /*group*/, const char* name, const H5L_info_t* /*info*/, void* data) {
  static_cast<std::vector<std::string>*>(data)->emplace_back(name);
  return 0;
}
}  // namespace

std::vector<std::string> Group::members() const {
  std::vector<std::string> names;
  TESSERA_H5(H5Literate(id(), H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_name, &names),
             context());
  std::sort(names.begin(), names.end());
  return names;
}

bool Group::is_group(const std::string& name) const {
  H5O_info_t info;
  TESSERA_H5(H5Oget_info_by_name2(id(), name.c_str(), &info, H5O_INFO_BASIC, H5P_DEFAULT),
             m_file + ":" + child_path(m_path, name));
  return info.type == H5O_TYPE_GROUP;
}

std::string Group::link_problem(const std::string& name) const {
  TESSERA_H5_LOCK;
  const htri_t exists = H5Oexists_by_name(id(), name.c_str(), H5P_DEFAULT);
  if (exists > 0) {
    return "";
  }
  H5L_info_t info;
  if (H5Lget_info(id(), name.c_str(), &info, H5P_DEFAULT) < 0) {
    return "cannot be followed";
  }
  std::string target;
  if ((info.type == H5L_TYPE_SOFT || info.type == H5L_TYPE_EXTERNAL) && info.u.val_size > 0 &&
      info.u.val_size <= 4096) {
    std::vector<char> value(info.u.val_size, '\0');
    if (H5Lget_val(id(), name.c_str(), value.data(), value.size(), H5P_DEFAULT) >= 0) {
      if (info.type == H5L_TYPE_SOFT) {
        target = std::string(value.data(), strnlen(value.data(), value.size()));
      } else {
        unsigned flags = 0;
        const char* file = nullptr;
        const char* path = nullptr;
        if (H5Lunpack_elink_val(value.data(), value.size(), &flags, &file, &path) >= 0 &&
            file != nullptr && path != nullptr) {
          target = std::string(file) + ":" + path;
        }
      }
    }
  }
  if (info.type == H5L_TYPE_SOFT) {
    return fmt::format("is a soft link to '{}', which leads nowhere", printable(target));
  }
  if (info.type == H5L_TYPE_EXTERNAL) {
    return fmt::format(
        "is an external link to '{}', which cannot be followed (a missing file, or "
        "a link that leads to itself)",
        printable(target));
  }
  return "leads to no object HDF5 can open";
}

std::uint64_t Group::address_of(const std::string& name) const {
  H5O_info_t info;
  TESSERA_H5(H5Oget_info_by_name2(id(), name.c_str(), &info, H5O_INFO_BASIC, H5P_DEFAULT),
             m_file + ":" + child_path(m_path, name));
  return static_cast<std::uint64_t>(info.addr);
}

// --- File ------------------------------------------------------------------------------------

void close_library() {
  const std::lock_guard<std::recursive_mutex> lock(hdf5_mutex());
  if (!g_abandoned_file) {
    H5close();
  }
}

File File::create(const std::string& path, MPI_Comm comm) {
  TESSERA_H5_LOCK;
  const Handle fapl = plist(PropertyList::file_access);
  TESSERA_H5(H5Pset_fapl_mpio(fapl.id(), comm, MPI_INFO_NULL), path);
  // The 1.8 file format at least: its superblock, object headers and indexes carry checksums that
  // HDF5 verifies on reading, so damaged metadata is an error ("incorrect metadata checksum")
  // instead of a crash inside the library (the 1.0 format has none; Debian's HDF5 1.10 segfaults
  // on some damaged ones). Readable by HDF5 1.8 and later (h5py, h5dump).
  TESSERA_H5(H5Pset_libver_bounds(fapl.id(), H5F_LIBVER_V18, H5F_LIBVER_LATEST), path);
  // No object times anywhere, the root group included: the same content gives the same bytes.
  const Handle fcpl = plist(PropertyList::file_create);
  TESSERA_H5(H5Pset_obj_track_times(fcpl.id(), 0), path);
  const hid_t id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl.id(), fapl.id());
  if (id < 0) {
    throw Error(fmt::format("{}: cannot create the file ({})", path, detail::hdf5_reason()));
  }
  return File(Handle(id, H5Fclose), path, true);
}

void refuse_special_file(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  const char* what = fs::is_fifo(status)     ? "a FIFO (named pipe)"
                     : fs::is_socket(status) ? "a socket"
                     : fs::is_character_file(status) || fs::is_block_file(status) ? "a device"
                                                                                  : nullptr;
  if (what != nullptr) {
    throw input_error(fmt::format("{}: is {}, not a file", path, what));
  }
}

namespace {
Handle open_with(const std::string& path, hid_t fapl, unsigned flags) {
  TESSERA_H5_LOCK;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    throw Error(fmt::format("{}: no such file", path));
  }
  refuse_special_file(path);
  if (std::filesystem::is_directory(path, ec)) {
    throw input_error(fmt::format("{}: is a folder, not a file", path));
  }
  if (H5Fis_hdf5(path.c_str()) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    throw Error(fmt::format("{}: not an HDF5 file (or truncated)", path));
  }
  const hid_t id = H5Fopen(path.c_str(), flags, fapl);
  if (id < 0) {
    throw Error(fmt::format("{}: {}", path, detail::open_failure()));
  }
  return Handle(id, H5Fclose);
}
}  // namespace

File File::open_parallel(const std::string& path, MPI_Comm comm) {
  const Handle fapl = plist(PropertyList::file_access);
  TESSERA_H5(H5Pset_fapl_mpio(fapl.id(), comm, MPI_INFO_NULL), path);
  return File(open_with(path, fapl.id(), H5F_ACC_RDONLY), path, true);
}

File File::open_serial(const std::string& path) {
  return File(open_with(path, H5P_DEFAULT, H5F_ACC_RDONLY), path, false);
}

File File::open_serial_rw(const std::string& path) {
  return File(open_with(path, H5P_DEFAULT, H5F_ACC_RDWR), path, false);
}

Group File::root() const {
  return Group(Handle(TESSERA_H5(H5Gopen2(id(), "/", H5P_DEFAULT), m_path), H5Gclose), m_path, "/");
}

void File::close() {
  TESSERA_H5_LOCK;
  if (!m_handle.valid()) {
    return;
  }
  // With the MPI-IO driver H5Fclose leaves the file open while a group or dataset of it is; the
  // caller must close those first (let them go out of scope).
  const ssize_t open_objects = H5Fget_obj_count(m_handle.id(), H5F_OBJ_ALL | H5F_OBJ_LOCAL);
  TESSERA_CHECK(open_objects <= 1, "{}: closing with {} groups/datasets still open", m_path,
                open_objects - 1);
  TESSERA_H5(H5Fflush(m_handle.id(), H5F_SCOPE_GLOBAL), m_path);
  const hid_t id = m_handle.release();  // a failed close must not be retried by the destructor
  if (H5Fclose(id) < 0) {
    g_abandoned_file = true;  // HDF5 keeps it half-closed: nothing may touch it again
    detail::throw_hdf5("H5Fclose", m_path);
  }
}

}  // namespace tessera::io
