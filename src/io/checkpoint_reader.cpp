#include "tessera/io/checkpoint_reader.hpp"

#include "tessera/core/strings.hpp"

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
#include <set>

namespace tessera::io {
namespace {

using Lock = std::lock_guard<std::recursive_mutex>;

enum class ObjectType { group, dataset, other };

ObjectType object_type(const Group& group, const std::string& name) {
  const Lock lock(hdf5_mutex());
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

TensorEntry inspect(const Group& group, const std::string& name) {
  TensorEntry e;
  e.path = child(group.path(), name);
  try {
    const Dataset d = group.open_dataset(name);
    e.shape = d.shape();
    e.type = d.element_type();
    e.elements = 1;
    for (hsize_t n : e.shape) {
      e.elements *= static_cast<std::int64_t>(n);
    }
    std::size_t element = 0;
    {
      const Lock lock(hdf5_mutex());
      e.storage_bytes = static_cast<std::int64_t>(H5Dget_storage_size(d.id()));
      const Handle type(H5Dget_type(d.id()), H5Tclose);
      element = type.id() < 0 ? 0 : H5Tget_size(type.id());
      H5Eclear2(H5E_DEFAULT);
    }
    if (e.type && element > 0) {
      // A shape the file does not hold (a chunked dataset never written, a truncated one) would
      // be read as fill values: a 2^38-element tensor is a TiB of them. Refused before any read,
      // as the dataset reader refuses it; the message without the "file:/path" the entry has.
      try {
        d.check_stored(element);
      } catch (const Error& err) {
        const std::string prefix = d.context() + ": ";
        const std::string& m = err.message();
        e.error = m.compare(0, prefix.size(), prefix) == 0 ? m.substr(prefix.size()) : m;
        return e;
      }
    }
    const Attributes a = d.attributes();
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

// Every dataset under `group`, each group walked once (`seen`: their addresses): a damaged file
// whose group links to its own ancestor would otherwise be walked without end.
void collect(const Group& group, std::vector<TensorEntry>& out, std::set<std::uint64_t>& seen) {
  for (const std::string& m : group.members()) {
    switch (object_type(group, m)) {
      case ObjectType::group:
        if (seen.insert(group.address_of(m)).second) {
          collect(group.open_group(m), out, seen);
        }
        break;
      case ObjectType::dataset:
        out.push_back(inspect(group, m));
        break;
      case ObjectType::other:
        break;
    }
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
  const Lock lock(hdf5_mutex());
  AttrInfo info;
  const htri_t exists = H5Aexists(object, name.c_str());
  if (exists < 0) {  // the attributes' storage cannot be read: damage, not a missing attribute
    const std::vector<std::string> stack = detail::hdf5_error_stack();
    // "attribute 'NAME' of /group": the object's path as HDF5 names it (the caller names the file).
    std::string path(1024, '\0');
    path.resize(static_cast<size_t>(std::max<ssize_t>(0, H5Iget_name(object, path.data(), 1024))));
    H5Eclear2(H5E_DEFAULT);
    detail::throw_hdf5("H5Aexists", fmt::format("attribute '{}' of {}", name, path), stack);
  }
  if (exists == 0) {
    return info;
  }
  const Handle attr(H5Aopen(object, name.c_str(), H5P_DEFAULT), H5Aclose);
  const Handle type(H5Aget_type(attr.id()), H5Tclose);
  const Handle space(H5Aget_space(attr.id()), H5Sclose);
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

std::string attribute_text(const Attributes& attributes, hid_t object, const std::string& name) {
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

File open_checkpoint(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (!fs::exists(status)) {
    throw input_error(fmt::format("{}: no such file", path));
  }
  if (fs::is_directory(status)) {
    throw input_error(fmt::format("{}: is a folder, not a checkpoint file", path));
  }
  refuse_special_file(path);
  {
    std::ifstream probe(path, std::ios::binary);
    if (!probe) {
      throw input_error(fmt::format("{}: cannot read ({})", path, std::strerror(errno)));
    }
  }
  {
    const Lock lock(hdf5_mutex());
    if (H5Fis_hdf5(path.c_str()) <= 0) {
      H5Eclear2(H5E_DEFAULT);
      throw input_error(fmt::format("{}: not an HDF5 file", path));
    }
    const hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    if (id < 0) {
      throw input_error(fmt::format("{}: {}", path, detail::open_failure()));
    }
    H5Fclose(id);
  }
  try {
    return File::open_serial(path);
  } catch (const Error& e) {
    throw input_error(e.message());
  }
}

std::vector<TensorEntry> list_tensors(const File& file) {
  std::vector<TensorEntry> out;
  std::set<std::uint64_t> seen{file.root().address_of(".")};
  collect(file.root(), out, seen);
  std::sort(out.begin(), out.end(),
            [](const TensorEntry& a, const TensorEntry& b) { return a.path < b.path; });
  return out;
}

namespace {
herr_t read_attribute_info(hid_t object, const char* name, const H5A_info_t* /*info*/,
                           void* /*data*/) {
  // Called by H5Aiterate2, with hdf5_mutex() held by its caller.
  H5A_info_t info;
  return H5Aget_info_by_name(object, ".", name, &info, H5P_DEFAULT) < 0 ? -1 : 0;
}
}  // namespace

std::string format_problem(const File& file) {
  const Group root = file.root();
  AttrInfo format;
  try {
    // Every root attribute's name and header read once: damage to their storage is said here,
    // where every reader of a checkpoint looks first (the callers name the file).
    {
      const Lock lock(hdf5_mutex());
      hsize_t at = 0;
      if (H5Aiterate2(root.id(), H5_INDEX_NAME, H5_ITER_INC, &at, read_attribute_info, nullptr) <
          0) {
        detail::throw_hdf5("H5Aiterate2", "the root attributes");
      }
    }
    format = attribute_info(root.id(), "format");
  } catch (const Error& e) {
    return e.message();
  }
  if (format.type == AttrType::missing) {
    return "not a Tessera checkpoint (no root attribute 'format')";
  }
  const std::string name = format.type == AttrType::string && format.values == 1
                               ? root.attributes().get_string("format")
                               : attribute_text(root.attributes(), root.id(), "format");
  if (name != kCheckpointFormat) {
    return fmt::format("not a Tessera checkpoint (format is \"{}\", expected \"{}\")",
                       printable(name), kCheckpointFormat);
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
  if (v != kCheckpointVersion) {
    return fmt::format("format_version {} is not one this Tessera reads (it reads {}){}", v,
                       kCheckpointVersion,
                       v > kCheckpointVersion ? "; a newer Tessera wrote it?" : "");
  }
  return "";
}

const std::vector<RootAttribute>& root_attributes() {
  static const std::vector<RootAttribute> all{{"format", AttrType::string},
                                              {"format_version", AttrType::int64, 1},
                                              {"tessera_version", AttrType::string},
                                              {"created", AttrType::string},
                                              {"step", AttrType::int64},
                                              {"total_steps", AttrType::int64},
                                              {"cursor_epoch", AttrType::int64},
                                              {"cursor_batch", AttrType::int64},
                                              {"rng_seed", AttrType::int64},
                                              {"optimizer", AttrType::string},
                                              {"optimizer_steps", AttrType::int64},
                                              {"deck", AttrType::string},
                                              {"grid", AttrType::string},
                                              {"ranks", AttrType::int64, 1},
                                              {"data_size", AttrType::int64, 1},
                                              {"zero", AttrType::int64, 0, 1},
                                              {"tensors", AttrType::int64}};
  return all;
}

std::vector<std::string> root_attribute_problems(const Group& root) {
  std::vector<std::string> problems;
  const Attributes attributes = root.attributes();
  for (const RootAttribute& a : root_attributes()) {
    const AttrInfo info = attribute_info(root.id(), a.name);
    if (info.type == AttrType::missing) {
      problems.push_back(fmt::format("root attribute '{}' is missing", a.name));
    } else if (info.type != a.type) {
      problems.push_back(fmt::format("root attribute '{}' is {}, expected {}", a.name,
                                     attr_type_name(info.type), attr_type_name(a.type)));
    } else if (info.values != 1) {
      problems.push_back(
          fmt::format("root attribute '{}' holds {} values, expected one", a.name, info.values));
    } else if (a.type == AttrType::int64) {
      const std::int64_t v = attributes.get_int(a.name);
      if (v < a.min || v > a.max) {
        problems.push_back(
            a.max == std::numeric_limits<std::int64_t>::max()
                ? fmt::format("root attribute {} = {} must be >= {}", a.name, v, a.min)
                : fmt::format("root attribute {} = {} must be in [{}, {}]", a.name, v, a.min,
                              a.max));
      }
    }
  }
  if (attribute_info(root.id(), "optimizer").type == AttrType::string) {
    const std::string optimizer = attributes.get_string("optimizer");
    if (optimizer != "sgd" && optimizer != "adamw") {
      problems.push_back(fmt::format(
          "root attribute optimizer = \"{}\" is not \"sgd\" or \"adamw\"", printable(optimizer)));
    }
  }
  // The counters against one another (each valid alone): a run's step never passes its length,
  // and every epoch the data cursor has begun took a step at least.
  const auto counter = [&](const char* name) -> std::optional<std::int64_t> {
    const AttrInfo info = attribute_info(root.id(), name);
    if (info.type != AttrType::int64 || info.values != 1) {
      return std::nullopt;
    }
    return attributes.get_int(name);
  };
  const auto step = counter("step");
  const auto total = counter("total_steps");
  const auto epoch = counter("cursor_epoch");
  if (step && total && *step >= 0 && *step > *total) {
    problems.push_back(
        fmt::format("root attribute step = {} is beyond total_steps = {}", *step, *total));
  }
  if (step && epoch && *step >= 0 && *epoch > *step) {
    problems.push_back(fmt::format(
        "root attribute cursor_epoch = {} is beyond step = {}: every epoch takes a step at least",
        *epoch, *step));
  }
  return problems;
}

bool is_model_tensor(const TensorEntry& e) {
  return e.path.rfind("/model/", 0) == 0;
}

std::vector<TensorEntry> checkpoint_tensors(const File& file) {
  std::vector<TensorEntry> out;
  for (TensorEntry& e : list_tensors(file)) {
    if (is_model_tensor(e) || e.path.rfind("/optimizer/", 0) == 0) {
      out.push_back(std::move(e));
    }
  }
  return out;
}

std::optional<std::uint64_t> parse_checksum(const std::string& text) {
  static const std::regex pattern("0x[0-9a-fA-F]{16}");
  if (!std::regex_match(text, pattern)) {
    return std::nullopt;
  }
  return std::stoull(text.substr(2), nullptr, 16);
}

std::vector<std::string> root_problems(const Group& root, const std::vector<TensorEntry>& tensors) {
  std::vector<std::string> problems = root_attribute_problems(root);
  const AttrInfo declared = attribute_info(root.id(), "tensors");
  if (declared.type == AttrType::int64 && declared.values == 1) {
    const std::int64_t n = root.attributes().get_int("tensors");
    if (n != static_cast<std::int64_t>(tensors.size())) {
      problems.push_back(
          fmt::format("root attribute tensors = {}, but the file holds {} tensor datasets (under "
                      "/model and /optimizer)",
                      n, tensors.size()));
    }
  }
  return problems;
}

std::vector<std::string> tensor_problems(const TensorEntry& e,
                                         std::optional<std::uint64_t>& stored) {
  std::vector<std::string> p;
  const std::string path = printable(e.path);
  stored = std::nullopt;
  if (!e.error.empty()) {
    p.push_back(fmt::format("{}: cannot be read ({})", path, printable(e.error)));
    return p;
  }
  if (e.type != ElementType::f32) {
    p.push_back(fmt::format("{}: dtype {}, expected float32", path,
                            e.type ? element_type_name(*e.type) : "other"));
  }
  stored = e.checksum ? parse_checksum(*e.checksum) : std::nullopt;
  if (!e.checksum_attribute) {
    p.push_back(fmt::format("{}: no checksum attribute", path));
  } else if (!stored) {
    p.push_back(fmt::format("{}: checksum attribute {} is not \"0x\" and 16 hexadecimal digits",
                            path,
                            e.checksum ? "\"" + printable(*e.checksum) + "\"" : "(not a string)"));
  }
  if (is_model_tensor(e)) {
    if (e.kind.empty()) {
      p.push_back(fmt::format(
          "{}: attribute 'kind' is missing or not a string (\"parameter\" or \"buffer\")", path));
    } else if (e.kind != "parameter" && e.kind != "buffer") {
      p.push_back(fmt::format("{}: kind \"{}\" is not \"parameter\" or \"buffer\"", path,
                              printable(e.kind)));
    }
  }
  return p;
}

bool nonnegative_tensor(const std::string& path) {
  const auto ends_with = [&](const std::string& tail) {
    return path.size() >= tail.size() &&
           path.compare(path.size() - tail.size(), tail.size(), tail) == 0;
  };
  return ends_with("/exp_avg_sq") || ends_with("/running_var");
}

std::string data_problem(const std::string& path, std::uint64_t computed, std::uint64_t stored,
                         std::uint64_t nonfinite, std::uint64_t negative) {
  if (computed != stored) {
    return fmt::format("{}: checksum {} does not match the stored {}", printable(path),
                       checksum_string(computed), checksum_string(stored));
  }
  if (nonfinite > 0) {
    // Tessera never saves them (the trainer refuses a non-finite parameter): written by something
    // else, or by a run that diverged before that check.
    return fmt::format("{}: {} value{} not finite (NaN or infinite)", printable(path), nonfinite,
                       nonfinite == 1 ? " is" : "s are");
  }
  if (negative > 0) {
    return fmt::format("{}: {} value{} negative, but it holds variances", printable(path), negative,
                       negative == 1 ? " is" : "s are");
  }
  return "";
}

void require_checkpoint(const File& file) {
  const std::string problem = format_problem(file);
  if (!problem.empty()) {
    throw input_error(file.path() + ": " + problem);
  }
}

void read_range(const Dataset& dataset, const std::vector<hsize_t>& shape, std::int64_t first,
                std::int64_t count, float* out) {
  if (count <= 0) {
    return;
  }
  if (shape.empty()) {
    dataset.read_all(ElementType::f32, out);
    return;
  }
  dataset.read_boxes(
      flat_range_boxes(shape, static_cast<hsize_t>(first), static_cast<hsize_t>(count)),
      ElementType::f32, out);
}

}  // namespace tessera::io
