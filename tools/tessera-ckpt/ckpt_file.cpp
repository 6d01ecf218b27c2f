#include "ckpt_file.hpp"

#include "tessera/core/error.hpp"
#include "tessera/io/checkpoint_format.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <regex>

namespace tessera::ckpt {
namespace {

using Lock = std::lock_guard<std::recursive_mutex>;

// Every description on HDF5's error stack, outermost first; clears the stack.
std::vector<std::string> hdf5_error_stack() {
  std::vector<std::string> out;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_DOWNWARD,
      [](unsigned /*n*/, const H5E_error2_t* err, void* data) -> herr_t {
        if (err->desc != nullptr) {
          static_cast<std::vector<std::string>*>(data)->emplace_back(err->desc);
        }
        return 0;
      },
      &out);
  H5Eclear2(H5E_DEFAULT);
  return out;
}

enum class ObjectType { group, dataset, other };

ObjectType object_type(const io::Group& group, const std::string& name) {
  const Lock lock(io::hdf5_mutex());
  H5O_info_t info;
  if (H5Oget_info_by_name2(group.id(), name.c_str(), &info, H5O_INFO_BASIC, H5P_DEFAULT) < 0) {
    H5Eclear2(H5E_DEFAULT);
    return ObjectType::other;
  }
  if (info.type == H5O_TYPE_GROUP) {
    return ObjectType::group;
  }
  return info.type == H5O_TYPE_DATASET ? ObjectType::dataset : ObjectType::other;
}

std::string child(const std::string& parent, const std::string& name) {
  return parent == "/" ? "/" + name : parent + "/" + name;
}

TensorEntry inspect(const io::Group& group, const std::string& name) {
  TensorEntry e;
  e.path = child(group.path(), name);
  try {
    const io::Dataset d = group.open_dataset(name);
    e.shape = d.shape();
    e.type = d.element_type();
    e.elements = 1;
    for (hsize_t n : e.shape) {
      e.elements *= static_cast<std::int64_t>(n);
    }
    {
      const Lock lock(io::hdf5_mutex());
      e.storage_bytes = static_cast<std::int64_t>(H5Dget_storage_size(d.id()));
    }
    const io::Attributes a = d.attributes();
    if (attribute_info(d.id(), "kind").type == AttrType::string) {
      e.kind = a.get_string("kind");
    }
    const AttrInfo checksum = attribute_info(d.id(), "checksum");
    e.checksum_attribute = checksum.type != AttrType::missing;
    if (checksum.type == AttrType::string && checksum.values == 1) {
      e.checksum = a.get_string("checksum");
    }
  } catch (const Error& err) {
    e.error = err.message();
  }
  return e;
}

void collect(const io::Group& group, std::vector<TensorEntry>& out) {
  for (const std::string& m : group.members()) {
    switch (object_type(group, m)) {
      case ObjectType::group:
        collect(group.open_group(m), out);
        break;
      case ObjectType::dataset:
        out.push_back(inspect(group, m));
        break;
      case ObjectType::other:
        break;
    }
  }
}

void flat_boxes_into(const std::vector<hsize_t>& shape, std::size_t dim,
                     std::vector<hsize_t>& prefix, hsize_t a, hsize_t b,
                     std::vector<io::Box>& out) {
  if (a >= b) {
    return;
  }
  const std::size_t nd = shape.size();
  // Full rows [r0, r1) of dimension `dim` at index `prefix` of the dimensions before it.
  auto rows = [&](hsize_t r0, hsize_t r1) {
    io::Box box{prefix, std::vector<hsize_t>(prefix.size(), 1)};
    box.offset.push_back(r0);
    box.count.push_back(r1 - r0);
    for (std::size_t d = dim + 1; d < nd; ++d) {
      box.offset.push_back(0);
      box.count.push_back(shape[d]);
    }
    out.push_back(std::move(box));
  };
  if (dim + 1 == nd) {
    rows(a, b);
    return;
  }
  hsize_t inner = 1;
  for (std::size_t d = dim + 1; d < nd; ++d) {
    inner *= shape[d];
  }
  hsize_t ra = a / inner;
  const hsize_t rb = b / inner;
  const hsize_t oa = a % inner;
  const hsize_t ob = b % inner;
  auto within_row = [&](hsize_t row, hsize_t from, hsize_t to) {
    prefix.push_back(row);
    flat_boxes_into(shape, dim + 1, prefix, from, to, out);
    prefix.pop_back();
  };
  if (ra == rb) {
    within_row(ra, oa, ob);
    return;
  }
  if (oa != 0) {
    within_row(ra, oa, inner);
    ++ra;
  }
  if (ra < rb) {
    rows(ra, rb);
  }
  if (ob != 0) {
    within_row(rb, 0, ob);
  }
}

}  // namespace

const char* attr_type_name(AttrType t) {
  switch (t) {
    case AttrType::missing:
      return "missing";
    case AttrType::string:
      return "a string";
    case AttrType::int64:
      return "int64";
    case AttrType::other_integer:
      return "an integer of another width";
    case AttrType::floating:
      return "a float";
    case AttrType::other:
      return "another type";
  }
  return "another type";
}

AttrInfo attribute_info(hid_t object, const std::string& name) {
  const Lock lock(io::hdf5_mutex());
  AttrInfo info;
  if (H5Aexists(object, name.c_str()) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    return info;
  }
  const io::Handle attr(H5Aopen(object, name.c_str(), H5P_DEFAULT), H5Aclose);
  const io::Handle type(H5Aget_type(attr.id()), H5Tclose);
  const io::Handle space(H5Aget_space(attr.id()), H5Sclose);
  if (!attr.valid() || !type.valid() || !space.valid()) {
    H5Eclear2(H5E_DEFAULT);
    info.type = AttrType::other;
    return info;
  }
  info.values = static_cast<std::int64_t>(H5Sget_simple_extent_npoints(space.id()));
  switch (H5Tget_class(type.id())) {
    case H5T_STRING:
      info.type = AttrType::string;
      break;
    case H5T_INTEGER:
      info.type = H5Tget_size(type.id()) == 8 && H5Tget_sign(type.id()) == H5T_SGN_2
                      ? AttrType::int64
                      : AttrType::other_integer;
      break;
    case H5T_FLOAT:
      info.type = AttrType::floating;
      break;
    default:
      info.type = AttrType::other;
      break;
  }
  return info;
}

std::string attribute_text(const io::Attributes& attributes, hid_t object,
                           const std::string& name) {
  const AttrInfo info = attribute_info(object, name);
  auto listed = [&](const auto& values, const char* element) {
    return values.size() == 1 ? fmt::format(element, values[0])
                              : fmt::format("[{}]", fmt::join(values, ", "));
  };
  try {
    switch (info.type) {
      case AttrType::missing:
        return "(missing)";
      case AttrType::string: {
        const auto v = attributes.get_strings(name);
        return v.size() == 1 ? "\"" + v[0] + "\"" : fmt::format("[{}]", fmt::join(v, ", "));
      }
      case AttrType::int64:
      case AttrType::other_integer:
        return listed(attributes.get_ints(name), "{}");
      case AttrType::floating:
        return listed(attributes.get_doubles(name), "{:g}");
      case AttrType::other:
        break;
    }
  } catch (const Error&) {
  }
  return "(unreadable)";
}

std::string TensorEntry::parameter_name() const {
  std::string name = path;
  const std::string prefix = "/model/";
  if (name.compare(0, prefix.size(), prefix) == 0) {
    name = name.substr(prefix.size());
  } else if (!name.empty() && name[0] == '/') {
    name = name.substr(1);
  }
  std::replace(name.begin(), name.end(), '/', '.');
  return name;
}

io::File open_checkpoint(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (!fs::exists(status)) {
    throw input_error(fmt::format("{}: no such file", path));
  }
  if (fs::is_directory(status)) {
    throw input_error(fmt::format("{}: is a folder, not a checkpoint file", path));
  }
  {
    std::ifstream probe(path, std::ios::binary);
    if (!probe) {
      throw input_error(fmt::format("{}: cannot read ({})", path, std::strerror(errno)));
    }
  }
  {
    const Lock lock(io::hdf5_mutex());
    if (H5Fis_hdf5(path.c_str()) <= 0) {
      H5Eclear2(H5E_DEFAULT);
      throw input_error(fmt::format("{}: not an HDF5 file", path));
    }
    const hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    if (id < 0) {
      const std::vector<std::string> stack = hdf5_error_stack();
      static const std::regex truncated("truncated file: eof = ([0-9]+),.*stored_eof = ([0-9]+)");
      for (const std::string& desc : stack) {
        std::smatch m;
        if (std::regex_search(desc, m, truncated)) {
          throw input_error(
              fmt::format("{}: truncated: the file has {} bytes, its HDF5 "
                          "superblock says {}",
                          path, m[1].str(), m[2].str()));
        }
      }
      throw input_error(fmt::format("{}: truncated or damaged: HDF5 cannot read it ({})", path,
                                    stack.empty() ? "no reason given" : stack.back()));
    }
    H5Fclose(id);
  }
  try {
    return io::File::open_serial(path);
  } catch (const Error& e) {
    throw input_error(e.message());
  }
}

std::vector<TensorEntry> list_tensors(const io::File& file) {
  std::vector<TensorEntry> out;
  collect(file.root(), out);
  std::sort(out.begin(), out.end(),
            [](const TensorEntry& a, const TensorEntry& b) { return a.path < b.path; });
  return out;
}

std::string format_problem(const io::File& file) {
  const io::Group root = file.root();
  const AttrInfo format = attribute_info(root.id(), "format");
  if (format.type == AttrType::missing) {
    return "not a Tessera checkpoint (no root attribute 'format')";
  }
  const std::string name = format.type == AttrType::string && format.values == 1
                               ? root.attributes().get_string("format")
                               : attribute_text(root.attributes(), root.id(), "format");
  if (name != io::kCheckpointFormat) {
    return fmt::format("not a Tessera checkpoint (format is \"{}\", expected \"{}\")", name,
                       io::kCheckpointFormat);
  }
  const AttrInfo version = attribute_info(root.id(), "format_version");
  if (version.type == AttrType::missing) {
    return "root attribute 'format_version' is missing";
  }
  if ((version.type != AttrType::int64 && version.type != AttrType::other_integer) ||
      version.values != 1) {
    return fmt::format("root attribute 'format_version' is {}, expected int64",
                       version.values == 1 ? attr_type_name(version.type) : "not one value");
  }
  const std::int64_t v = root.attributes().get_int("format_version");
  if (v != io::kCheckpointVersion) {
    return fmt::format(
        "format_version {} is not one this tessera-ckpt knows (it reads version {}); a newer "
        "Tessera wrote it?",
        v, io::kCheckpointVersion);
  }
  return "";
}

void require_checkpoint(const io::File& file) {
  const std::string problem = format_problem(file);
  if (!problem.empty()) {
    throw input_error(file.path() + ": " + problem);
  }
}

std::vector<io::Box> flat_boxes(const std::vector<hsize_t>& shape, std::int64_t first,
                                std::int64_t count) {
  std::vector<io::Box> out;
  if (count <= 0) {
    return out;
  }
  if (shape.empty()) {  // a scalar dataset: one element, the empty box
    out.push_back(io::Box{});
    return out;
  }
  std::vector<hsize_t> prefix;
  flat_boxes_into(shape, 0, prefix, static_cast<hsize_t>(first),
                  static_cast<hsize_t>(first + count), out);
  return out;
}

void read_range(const io::Dataset& dataset, const std::vector<hsize_t>& shape, std::int64_t first,
                std::int64_t count, float* out) {
  if (count <= 0) {
    return;
  }
  if (shape.empty()) {
    dataset.read_all(io::ElementType::f32, out);
    return;
  }
  dataset.read_boxes(flat_boxes(shape, first, count), io::ElementType::f32, out);
}

void write_range(const io::Dataset& dataset, const std::vector<hsize_t>& shape, std::int64_t first,
                 std::int64_t count, const float* values) {
  const float* at = values;
  for (const io::Box& box : flat_boxes(shape, first, count)) {
    dataset.write(box, io::ElementType::f32, at, false);
    std::int64_t n = 1;
    for (hsize_t c : box.count) {
      n *= static_cast<std::int64_t>(c);
    }
    at += n;
  }
}

std::vector<Piece> split_elements(const std::vector<std::int64_t>& sizes, int rank, int ranks) {
  std::int64_t total = 0;
  for (std::int64_t s : sizes) {
    total += s;
  }
  const std::int64_t base = total / ranks;
  const std::int64_t extra = total % ranks;
  auto start = [&](std::int64_t r) { return r * base + std::min(r, extra); };
  const std::int64_t lo = start(rank);
  const std::int64_t hi = start(rank + 1);
  std::vector<Piece> out;
  std::int64_t at = 0;
  for (std::size_t t = 0; t < sizes.size(); ++t) {
    const std::int64_t a = std::max(lo, at);
    const std::int64_t b = std::min(hi, at + sizes[t]);
    if (a < b) {
      out.push_back(Piece{t, a - at, b - a});
    }
    at += sizes[t];
  }
  return out;
}

std::string broadcast_string(MPI_Comm comm, std::string text, int root) {
  long long n = static_cast<long long>(text.size());
  MPI_Bcast(&n, 1, MPI_LONG_LONG, root, comm);
  text.resize(static_cast<std::size_t>(n));
  MPI_Bcast(text.data(), static_cast<int>(n), MPI_CHAR, root, comm);
  return text;
}

std::string human_bytes(std::int64_t bytes) {
  const auto b = static_cast<double>(bytes);
  if (bytes < 1024) {
    return fmt::format("{} B", bytes);
  }
  if (bytes < (std::int64_t{1} << 20)) {
    return fmt::format("{:.1f} KiB", b / 1024.0);
  }
  if (bytes < (std::int64_t{1} << 30)) {
    return fmt::format("{:.2f} MiB", b / 1048576.0);
  }
  return fmt::format("{:.2f} GiB", b / 1073741824.0);
}

std::string shape_text(const std::vector<hsize_t>& shape) {
  return fmt::format("({})", fmt::join(shape, ", "));
}

}  // namespace tessera::ckpt
