#include "tessera/io/dataset.hpp"

#include "tessera/core/check.hpp"
#include "tessera/core/clones.hpp"
#include "tessera/core/layout.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/core/strings.hpp"
#include "tessera/core/timer.hpp"

#include <fmt/ranges.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <type_traits>

namespace tessera::io {
namespace {
// to[i] = from[i] · scale − shift. Cloned for AVX-512 with a baseline fallback, chosen at load
// time: converting a batch's bytes to floats is a visible part of a small model's step (36 µs for
// 128 Fashion-MNIST samples with SSE2, 22 µs with AVX-512, on this machine).
TESSERA_CLONES_AVX512
void scale_shift(const std::uint8_t* __restrict from, float* __restrict to, size_t n, float scale,
                 float shift) {
  for (size_t i = 0; i < n; ++i) {
    to[i] = static_cast<float>(from[i]) * scale - shift;
  }
}
TESSERA_CLONES_AVX512
void scale_shift(const float* __restrict from, float* __restrict to, size_t n, float scale,
                 float shift) {
  for (size_t i = 0; i < n; ++i) {
    to[i] = from[i] * scale - shift;
  }
}

// One window of a token stream: inputs from[0, T) as floats, targets from[1, T + 1) as ids.
template <typename T>
void copy_window(const T* from, Index context, float* inputs, std::int32_t* targets) {
  for (Index j = 0; j < context; ++j) {
    inputs[j] = static_cast<float>(from[j]);
    targets[j] = static_cast<std::int32_t>(from[j + 1]);
  }
}

// The token stream of a language-modeling split as stored: bytes (uint8) or ids (int32).
struct TokenStream {
  std::vector<std::uint8_t> bytes;
  std::vector<std::int32_t> ids;
};

Error split_error(const SplitInfo& info, const std::string& what) {
  return input_error(fmt::format("{}:{}: {}", info.file, info.split, what));
}

// Member `name` of split group `g` opened as a data set the split can read: missing, a link that
// leads nowhere, or chunks stored through a filter this HDF5 cannot decode are said (for files of
// other tools: h5py's LZF), not met at the first read as HDF5's failure.
Dataset open_member(const Group& g, const SplitInfo& info, const std::string& name) {
  if (!g.has(name)) {
    throw split_error(info, fmt::format("dataset '{}' is missing", name));
  }
  if (const std::string link = g.link_problem(name); !link.empty()) {
    throw split_error(info, fmt::format("'{}' {}", name, link));
  }
  Dataset d = g.open_dataset(name);
  if (const std::string filter = d.unavailable_filter(); !filter.empty()) {
    throw split_error(info, fmt::format("'{}' is stored through HDF5 filter {}, which this HDF5 "
                                        "library cannot decode: rewrite it uncompressed or with "
                                        "gzip (h5repack -f GZIP=4 IN OUT)",
                                        name, filter));
  }
  return d;
}

// "samples 4, 17, 40 and 2 more", for messages about a batch's reads.
std::string samples_text(const std::vector<std::int64_t>& ids) {
  std::vector<std::int64_t> sorted(ids);
  std::sort(sorted.begin(), sorted.end());
  constexpr size_t kShown = 8;
  std::string out = sorted.size() == 1 ? "sample " : "samples ";
  for (size_t i = 0; i < std::min(kShown, sorted.size()); ++i) {
    out += (i == 0 ? "" : ", ") + std::to_string(sorted[i]);
  }
  if (sorted.size() > kShown) {
    out += fmt::format(" and {} more", sorted.size() - kShown);
  }
  return out;
}

// --- checksums ---------------------------------------------------------------------------------

// The rows (first-dimension entries) of one checksum block of a data set of `rows` rows of
// `row_bytes` bytes: 1 MiB of data, or more when that would make over 4096 blocks (the checksums
// stay one attribute below HDF5's 64 KiB limit).
hsize_t checksum_block_rows(hsize_t rows, hsize_t row_bytes) {
  const hsize_t by_bytes =
      std::max<hsize_t>(1, (hsize_t{1} << 20) / std::max<hsize_t>(1, row_bytes));
  return std::max(by_bytes, (rows + 4095) / 4096);
}

// A data set's stored checksums, validated against its rows.
struct Checksums {
  hsize_t rows = 0;  // rows per block
  std::vector<std::int64_t> crc;
};

std::optional<Checksums> read_checksums(const Dataset& d, hsize_t rows) {
  const Attributes a = d.attributes();
  const bool has_crc = a.has(kChecksum);
  const bool has_rows = a.has(kChecksumRows);
  if (!has_crc && !has_rows) {
    return std::nullopt;
  }
  auto bad = [&](const std::string& what) {
    return input_error(fmt::format("{}: {}: the file is damaged", d.context(), what));
  };
  if (!has_crc || !has_rows) {
    throw bad(fmt::format("attribute {} is missing beside {}", has_crc ? kChecksumRows : kChecksum,
                          has_crc ? kChecksum : kChecksumRows));
  }
  Checksums c;
  const std::int64_t per = a.get_int(kChecksumRows);
  if (per < 1) {
    throw bad(fmt::format("{} = {} is not a row count >= 1", kChecksumRows, per));
  }
  c.rows = static_cast<hsize_t>(per);
  c.crc = a.get_ints(kChecksum);
  const hsize_t blocks = rows / c.rows + (rows % c.rows != 0 ? 1 : 0);
  if (c.crc.size() != blocks) {
    throw bad(fmt::format("{} holds {} checksums for {} blocks of {} rows", kChecksum, c.crc.size(),
                          blocks, c.rows));
  }
  return c;
}

// Rows [first, first + count) of `d` (of `shape`) as stored, into `out`.
void read_rows(const Dataset& d, ElementType t, const std::vector<hsize_t>& shape, hsize_t first,
               hsize_t count, void* out) {
  Box box{std::vector<hsize_t>(shape.size(), 0), shape};
  box.offset[0] = first;
  box.count[0] = count;
  d.read(box, t, out);
}

std::int64_t crc_of(const void* data, size_t bytes) {
  return static_cast<std::int64_t>(
      crc32_z(crc32_z(0, nullptr, 0), static_cast<const Bytef*>(data), bytes));
}

size_t element_bytes(ElementType t) {
  switch (t) {
    case ElementType::u8:
      return 1;
    case ElementType::f16:
      return 2;
    case ElementType::i32:
    case ElementType::f32:
      return 4;
    case ElementType::i64:
    case ElementType::f64:
      return 8;
  }
  return 1;
}

// The first element of `n` float32 (or, f16, binary16) values that is NaN or Inf, as (index,
// "NaN" | "Inf" | "-Inf"), or index -1. An exponent of all ones is Inf or NaN.
std::pair<Index, const char*> first_nonfinite(const void* data, size_t n, bool half) {
  auto name = [](bool nan, bool negative) { return nan ? "NaN" : negative ? "-Inf" : "Inf"; };
  if (half) {
    const auto* bits = static_cast<const std::uint16_t*>(data);
    for (size_t i = 0; i < n; ++i) {
      if ((bits[i] & 0x7c00u) == 0x7c00u) {
        return {static_cast<Index>(i), name((bits[i] & 0x03ffu) != 0, (bits[i] & 0x8000u) != 0)};
      }
    }
    return {-1, ""};
  }
  const auto* bits = static_cast<const std::uint32_t*>(data);
  std::uint32_t any = 0;  // an OR over the bits vectorizes; only a block that has one is searched
  for (size_t i = 0; i < n; ++i) {
    any |= static_cast<std::uint32_t>((bits[i] & 0x7f800000u) == 0x7f800000u);
  }
  for (size_t i = 0; any != 0 && i < n; ++i) {
    if ((bits[i] & 0x7f800000u) == 0x7f800000u) {
      return {static_cast<Index>(i),
              name((bits[i] & 0x007fffffu) != 0, (bits[i] & 0x80000000u) != 0)};
    }
  }
  return {-1, ""};
}

// The first token of `stream` outside [0, vocab), as (position, value), or position -1.
template <typename T>
std::pair<Index, std::int64_t> token_outside(const std::vector<T>& stream, Index vocab) {
  for (size_t i = 0; i < stream.size(); ++i) {
    const auto v = static_cast<std::int64_t>(stream[i]);
    if (v < 0 || v >= vocab) {
      return {static_cast<Index>(i), v};
    }
  }
  return {-1, 0};
}

// Validates the token stream of language-modeling split `g` and fills info's token fields. The
// stream is read (it is small) to check every id against @vocab, and kept in `keep` when given.
void inspect_tokens(const Group& g, SplitInfo& info, TokenStream* keep) {
  auto fail = [&](const std::string& what) { return split_error(info, what); };
  info.task = Task::language_modeling;
  const Dataset tokens = open_member(g, info, "tokens");
  const std::vector<hsize_t> shape = tokens.shape();
  if (shape.size() != 1) {
    throw fail(fmt::format("tokens has rank {}, expected (N,) token ids", shape.size()));
  }
  const auto type = tokens.element_type();
  if (!type || (*type != ElementType::u8 && *type != ElementType::i32)) {
    throw fail(
        fmt::format("tokens must be uint8 or int32 token ids (it is {})", tokens.type_name()));
  }
  info.x_type = *type;
  tokens.check_stored(*type == ElementType::u8 ? 1 : 4);  // before the stream is read whole
  info.tokens = static_cast<Index>(shape[0]);
  if (info.tokens < 2) {
    throw fail(fmt::format("tokens holds {} token(s), a language_modeling split needs at least 2",
                           info.tokens));
  }
  if (!read_checksums(tokens, shape[0])) {
    info.without_checksums = {"tokens"};
  }
  const Attributes attrs = g.attributes();
  if (!attrs.has("vocab")) {
    throw fail("attribute 'vocab' is missing (the vocabulary size: token ids are in [0, vocab))");
  }
  double vocab = 0.0;
  try {
    vocab = attrs.get_double("vocab");
  } catch (const Error&) {
    throw fail("attribute vocab must be one integer in [1, 2^31)");
  }
  if (!(vocab >= 1.0 && vocab < 2147483648.0 && vocab == std::floor(vocab))) {
    throw fail(fmt::format("vocab = {} must be an integer in [1, 2^31)", vocab));
  }
  info.vocab = static_cast<Index>(vocab);
  if (attrs.has("tokenizer")) {
    info.tokenizer = attrs.get_string("tokenizer");
  }
  TokenStream local;
  TokenStream& stream = keep != nullptr ? *keep : local;
  std::pair<Index, std::int64_t> outside{-1, 0};
  if (info.x_type == ElementType::u8) {
    stream.bytes.resize(static_cast<size_t>(info.tokens));
    tokens.read_all(ElementType::u8, stream.bytes.data());
    if (info.vocab < 256) {
      outside = token_outside(stream.bytes, info.vocab);
    }
  } else {
    stream.ids.resize(static_cast<size_t>(info.tokens));
    tokens.read_all(ElementType::i32, stream.ids.data());
    outside = token_outside(stream.ids, info.vocab);
  }
  if (outside.first >= 0) {
    throw fail(fmt::format("tokens[{}] = {} is outside [0, vocab = {})", outside.first,
                           outside.second, info.vocab));
  }
}

// The reader's options against a language-modeling split: a context that fits the stream.
void check_context(const SplitInfo& info, const ReaderOptions& options) {
  const Index context = options.context;
  if (context < 1) {
    throw split_error(
        info,
        fmt::format(
            "a language_modeling split needs a context (input tokens per window) >= 1, got {}",
            context));
  }
  if (info.tokens < context + 1) {
    throw split_error(info, fmt::format("{} tokens are too few for context {} (a window is {} "
                                        "tokens)",
                                        info.tokens, context, context + 1));
  }
  if (options.box) {
    throw split_error(info, "a spatial sub-box does not apply to a language_modeling split");
  }
  if (info.vocab > (Index{1} << 24)) {
    throw split_error(info, fmt::format("vocab = {} is above 2^24: its token ids are not exact in "
                                        "the float32 inputs",
                                        info.vocab));
  }
}

// inspect_split(), keeping a language-modeling split's token stream in `keep` when given.
SplitInfo inspect(const std::string& file, const std::string& split, TokenStream* keep) {
  auto fail = [&](const std::string& what) -> Error {
    return input_error(fmt::format("{}:{}: {}", file, split, what));
  };
  SplitInfo info;
  info.file = file;
  info.split = split;
  File f = [&] {
    try {
      return File::open_serial(file);
    } catch (const Error& e) {
      throw input_error(e.message());
    }
  }();
  // Every HDF5 failure below is about this file's content: bad input.
  try {
    const Group root = f.root();
    if (!root.attributes().has("format") ||
        root.attributes().get_string("format") != kDatasetFormat) {
      throw input_error(
          fmt::format("{}: not a Tessera dataset (root attribute format = \"{}\" missing)", file,
                      kDatasetFormat));
    }
    const std::int64_t version = root.attributes().get_int("format_version");
    if (version != kDatasetVersion) {
      throw input_error(
          fmt::format("{}: dataset format version {} is not supported (this Tessera "
                      "reads version {})",
                      file, version, kDatasetVersion));
    }
    const std::string group = split.empty() || split == "/" ? "" : split.substr(split[0] == '/');
    if (!group.empty() && root.has(group)) {
      if (const std::string link = root.link_problem(group); !link.empty()) {
        throw fail("the split " + link);
      }
      if (!root.is_group(group)) {
        throw fail(
            "is a dataset, not a group (a split is a group holding x and y, or tokens: "
            "docs/dataset-format.md)");
      }
    }
    if (group.empty() || !root.has(group)) {
      throw fail("split not found (the file holds: " + [&] {
        std::string names;
        for (const auto& m : root.members()) {
          names += (names.empty() ? "/" : ", /") + m;
        }
        return names.empty() ? std::string("nothing") : names;
      }() + ")");
    }
    const Group g = root.open_group(group);
    const Attributes attrs = g.attributes();
    const std::string task = attrs.has("task") ? attrs.get_string("task") : "classification";
    if (task == "language_modeling") {
      inspect_tokens(g, info, keep);
      return info;
    }
    if (task != "classification" && task != "regression") {
      throw fail(fmt::format("task = \"{}\" is not classification, regression or language_modeling",
                             printable(task)));
    }
    const Dataset x = open_member(g, info, "x");
    const Dataset y = open_member(g, info, "y");
    const std::vector<hsize_t> xs = x.shape();
    const std::vector<hsize_t> ys = y.shape();
    if (xs.size() != 4 && xs.size() != 5) {
      throw fail(fmt::format("x has rank {}, expected (N, C, H, W) or (N, C, D, H, W)", xs.size()));
    }
    const auto xt = x.element_type();
    if (!xt || (*xt != ElementType::u8 && *xt != ElementType::f16 && *xt != ElementType::f32)) {
      throw fail(fmt::format("x must be uint8, float16 or float32 (it is {})", x.type_name()));
    }
    info.x_type = *xt;
    if (std::find(xs.begin() + 1, xs.end(), hsize_t{0}) != xs.end()) {
      throw fail(fmt::format("x has shape ({}): a sample has no elements", fmt::join(xs, ", ")));
    }
    info.samples = static_cast<Index>(xs[0]);
    info.sample_shape.assign(xs.begin() + 1, xs.end());
    if (ys.empty() || ys[0] != xs[0]) {
      throw fail(fmt::format("x holds {} samples but y holds {}", xs[0], ys.empty() ? 0 : ys[0]));
    }
    const auto yt = y.element_type();
    if (task == "classification") {
      info.task = Task::classification;
      if (ys.size() != 1 || yt != ElementType::i32) {
        throw fail(
            fmt::format("a classification split needs y as (N,) int32 labels (it is ({}) {})",
                        fmt::join(ys, ", "), y.type_name()));
      }
      if (attrs.has("classes")) {
        info.classes = attrs.get_strings("classes");
      }
    } else {
      info.task = Task::regression;
      if (ys.size() != 2 || yt != ElementType::f32) {
        throw fail(
            fmt::format("a regression split needs y as (N, T) float32 targets (it is ({}) {})",
                        fmt::join(ys, ", "), y.type_name()));
      }
      info.targets = static_cast<Index>(ys[1]);
    }
    // Sizes come from the file: a damaged header may claim any, so before anything is allocated
    // from them they must fit what the file stores.
    x.check_stored(element_bytes(info.x_type));
    y.check_stored(4);
    if (info.samples == 0) {
      throw fail("the split is empty: x and y hold 0 samples");
    }
    if (!read_checksums(x, xs[0])) {
      info.without_checksums.push_back("x");
    }
    if (!read_checksums(y, ys[0])) {
      info.without_checksums.push_back("y");
    }
    const auto channels = static_cast<size_t>(xs[1]);
    info.scale = attrs.has("scale") ? attrs.get_double("scale") : 1.0;
    info.mean = attrs.has("mean") ? attrs.get_doubles("mean") : std::vector<double>(channels, 0.0);
    info.std = attrs.has("std") ? attrs.get_doubles("std") : std::vector<double>(channels, 1.0);
    if (info.mean.size() != channels || info.std.size() != channels) {
      throw fail(fmt::format("attributes mean/std hold {}/{} values for {} channels",
                             info.mean.size(), info.std.size(), channels));
    }
    // The normalisation turns every sample into (x · scale − mean[c]) / std[c]: a NaN or Inf
    // here would make every sample one.
    if (!std::isfinite(info.scale) || info.scale == 0.0) {
      throw fail(fmt::format("attribute scale = {} must be finite and not 0", info.scale));
    }
    for (size_t c = 0; c < channels; ++c) {
      if (!std::isfinite(info.mean[c])) {
        throw fail(fmt::format("attribute mean[{}] = {} must be finite", c, info.mean[c]));
      }
      if (!(info.std[c] > 0.0) || !std::isfinite(info.std[c])) {
        throw fail(fmt::format("attribute std[{}] = {} must be finite and > 0", c, info.std[c]));
      }
    }
  } catch (const Error& e) {
    throw input_error(e.message());
  }
  return info;
}
}  // namespace

const char* task_name(Task task) {
  switch (task) {
    case Task::classification:
      return "classification";
    case Task::regression:
      return "regression";
    case Task::language_modeling:
      return "language_modeling";
  }
  return "unknown";
}

SplitInfo inspect_split(const std::string& file, const std::string& split) {
  return inspect(file, split, nullptr);
}

namespace {
// A data set of a split: its name and the type its elements are read as (the stored type).
struct SplitData {
  const char* name;
  ElementType type;
};

std::vector<SplitData> split_data(const SplitInfo& info) {
  if (info.task == Task::language_modeling) {
    return {{"tokens", info.x_type}};
  }
  return {{"x", info.x_type},
          {"y", info.task == Task::classification ? ElementType::i32 : ElementType::f32}};
}

// Runs `body` on the split's group of `file`, HDF5 failures turned into input errors.
template <typename Body>
void with_split_group(const std::string& file, const std::string& split, bool write, Body body) {
  File f = [&] {
    try {
      return write ? File::open_serial_rw(file) : File::open_serial(file);
    } catch (const Error& e) {
      throw input_error(e.message());
    }
  }();
  try {
    const Group root = f.root();
    const std::string group = split.empty() ? "" : split.substr(split[0] == '/');
    body(group.empty() ? f.root() : root.open_group(group));
  } catch (const Error& e) {
    if (e.exit_code() == 2) {
      throw;
    }
    throw input_error(e.message());
  }
  if (write) {
    f.close();  // reports a failed flush (read-only, the destructor closes)
  }
}
}  // namespace

void write_checksums(const std::string& path) {
  // Every split group's data sets as they are stored, whatever else the split holds (a split the
  // reader would refuse, e.g. for its attributes, still gets checksums of its bytes).
  with_split_group(path, "/", true, [&](const Group& root) {
    for (const std::string& split : root.members()) {
      if (!root.is_group(split)) {
        continue;
      }
      const Group g = root.open_group(split);
      for (const char* name : {"x", "y", "tokens"}) {
        if (!g.has(name)) {
          continue;
        }
        const Dataset d = g.open_dataset(name);
        const std::optional<ElementType> type = d.element_type();
        const std::vector<hsize_t> shape = d.shape();
        if (!type || shape.empty()) {
          continue;  // not a data set Tessera reads
        }
        d.check_stored(element_bytes(*type));
        const hsize_t rows = shape[0];
        hsize_t row_bytes = element_bytes(*type);
        for (size_t k = 1; k < shape.size(); ++k) {
          row_bytes *= shape[k];
        }
        if (rows == 0 || row_bytes == 0) {
          continue;  // nothing stored (and refused as empty when read)
        }
        const hsize_t block = checksum_block_rows(rows, row_bytes);
        std::vector<unsigned char> buffer(static_cast<size_t>(std::min(block, rows) * row_bytes));
        std::vector<std::int64_t> crc;
        for (hsize_t first = 0; first < rows; first += block) {
          const hsize_t count = std::min(block, rows - first);
          read_rows(d, *type, shape, first, count, buffer.data());
          crc.push_back(crc_of(buffer.data(), static_cast<size_t>(count * row_bytes)));
        }
        d.attributes().set(kChecksum, crc);
        d.attributes().set(kChecksumRows, static_cast<std::int64_t>(block));
      }
    }
  });
}

double verify_split(const SplitInfo& info, const VerifyOptions& o) {
  const Stopwatch clock;
  const Index classes = o.classes > 0 ? o.classes : static_cast<Index>(info.classes.size());
  with_split_group(info.file, info.split, false, [&](const Group& g) {
    for (const SplitData& sd : split_data(info)) {
      const std::string name = sd.name;
      const Dataset d = g.open_dataset(name);
      const std::vector<hsize_t> shape = d.shape();
      d.check_stored(element_bytes(sd.type));  // it may have changed since inspect_split()
      const hsize_t rows = shape[0];
      hsize_t row = 1;  // elements per row
      for (size_t k = 1; k < shape.size(); ++k) {
        row *= shape[k];
      }
      const hsize_t row_bytes = row * element_bytes(sd.type);
      const std::optional<Checksums> sums = read_checksums(d, rows);
      const bool labels = name == "y" && info.task == Task::classification && classes > 0;
      const bool finite = (name == "x" && sd.type != ElementType::u8) ||
                          (name == "y" && info.task == Task::regression);
      if (!sums && !labels && !finite) {
        continue;  // uint8 samples without checksums: nothing to check in their bytes
      }
      const hsize_t block =
          sums ? sums->rows
               : std::max<hsize_t>(1, (hsize_t{4} << 20) / std::max<hsize_t>(1, row_bytes));
      const hsize_t blocks = rows / block + (rows % block != 0 ? 1 : 0);
      const Range mine = block_range(static_cast<Index>(blocks), o.shares, o.share);
      std::vector<unsigned char> buffer(static_cast<size_t>(std::min(block, rows) * row_bytes));
      for (Index b = mine.offset; b < mine.offset + mine.count; ++b) {
        const hsize_t first = static_cast<hsize_t>(b) * block;
        const hsize_t count = std::min(block, rows - first);
        read_rows(d, sd.type, shape, first, count, buffer.data());
        if (sums && crc_of(buffer.data(), static_cast<size_t>(count * row_bytes)) !=
                        sums->crc[static_cast<size_t>(b)]) {
          throw split_error(info, fmt::format("{} [{}, {}) do not match their checksum ({}): the "
                                              "file is damaged or was changed after it was written",
                                              name == "tokens" ? "tokens" : name + " of samples",
                                              first, first + count, kChecksum));
        }
        if (labels) {
          const auto* y = reinterpret_cast<const std::int32_t*>(buffer.data());
          for (hsize_t i = 0; i < count; ++i) {
            if (y[i] < 0 || y[i] >= classes) {
              throw split_error(info, fmt::format("sample {} has label y[{}] = {}, outside the {} "
                                                  "classes [0, {})",
                                                  first + i, first + i, y[i], classes, classes));
            }
          }
        }
        if (finite) {
          const auto bad = first_nonfinite(buffer.data(), static_cast<size_t>(count * row),
                                           sd.type == ElementType::f16);
          if (bad.first >= 0) {
            const hsize_t at = static_cast<hsize_t>(bad.first);
            throw split_error(
                info,
                fmt::format("sample {} of {} holds {} at {} {}: {} must be finite (NaN and "
                            "Inf are refused)",
                            first + at / row, name, bad.second, name == "x" ? "element" : "target",
                            at % row, name == "x" ? "samples" : "regression targets"));
          }
        }
      }
    }
  });
  return clock.seconds();
}

std::vector<std::int64_t> epoch_permutation(Index n, std::uint64_t seed, std::int64_t epoch,
                                            bool shuffle) {
  std::vector<std::int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), std::int64_t{0});
  if (!shuffle) {
    return perm;
  }
  // Fisher–Yates driven by the counter-based generator: the same permutation on every rank.
  const rng::CounterRng gen(seed, rng::hash_name("epoch") + static_cast<std::uint64_t>(epoch));
  for (Index i = n - 1; i > 0; --i) {
    const rng::Philox4x32 r = gen.bits(static_cast<std::uint64_t>(i));
    const std::uint64_t bits = (static_cast<std::uint64_t>(r.v[0]) << 32) | r.v[1];
    const auto j = static_cast<Index>(bits % static_cast<std::uint64_t>(i + 1));
    std::swap(perm[static_cast<size_t>(i)], perm[static_cast<size_t>(j)]);
  }
  return perm;
}

Index token_windows(Index tokens, Index context) {
  TESSERA_CHECK(context >= 1, "context = {} must be >= 1", context);
  return tokens > 0 ? (tokens - 1) / context : 0;
}

std::int64_t window_start(Index tokens, Index context, std::uint64_t seed, std::int64_t epoch,
                          std::int64_t window, bool shuffle) {
  TESSERA_CHECK(context >= 1 && tokens > context, "no window of context {} in {} tokens", context,
                tokens);
  if (!shuffle) {
    return window * context;  // the windows tile the stream in order
  }
  // An integer draw from 64 random bits, so that the starts of a long stream are uniform (the
  // modulo's bias is below starts / 2^64).
  const auto starts = static_cast<std::uint64_t>(tokens - context);  // 0 .. tokens − context − 1
  const rng::CounterRng gen(seed, rng::hash_name("tokens") + static_cast<std::uint64_t>(epoch));
  const rng::Philox4x32 r = gen.bits(static_cast<std::uint64_t>(window));
  const std::uint64_t bits = (static_cast<std::uint64_t>(r.v[0]) << 32) | r.v[1];
  return static_cast<std::int64_t>(bits % starts);
}

DatasetReader::DatasetReader(const std::string& spec, const ReaderOptions& options)
    : m_options(options) {
  // Named copies, not structured bindings: C++17 lambdas cannot capture those (clang refuses).
  const std::pair<std::string, std::string> parts = split_file_spec(spec);
  const std::string& file = parts.first;
  const std::string& split = parts.second;
  TokenStream stream;
  m_info = inspect(file, split, &stream);
  auto bad = [&](const std::string& what) {
    return input_error(fmt::format("{}:{}: {}", file, split, what));
  };
  if (options.batch < 1) {
    throw bad(fmt::format("batch = {} must be >= 1", options.batch));
  }
  if (options.data_size < 1 || options.data_rank < 0 || options.data_rank >= options.data_size) {
    throw bad(fmt::format("data rank {} of {} is not a place on the data axis", options.data_rank,
                          options.data_size));
  }
  const bool tokens = m_info.task == Task::language_modeling;
  if (tokens) {
    // Windows of context + 1 tokens from the stream that inspect() read (it is small, and held in
    // memory whole: `cache` changes nothing here).
    check_context(m_info, options);
    m_info.samples = token_windows(m_info.tokens, options.context);
    m_info.sample_shape = {options.context};
    m_token_bytes = std::move(stream.bytes);
    m_token_ids = std::move(stream.ids);
  } else if (options.context != 0) {
    throw bad(fmt::format("context = {} is for language_modeling splits; this one is {}",
                          options.context, task_name(m_info.task)));
  }
  if (options.subset) {
    const Range r = *options.subset;
    if (r.offset < 0 || r.count < 1 || r.offset + r.count > m_info.samples || options.cache) {
      throw bad(fmt::format("samples [{}, {}) are not a part of its {} {}", r.offset,
                            r.offset + r.count, m_info.samples, tokens ? "windows" : "samples"));
    }
    m_first = r.offset;
    m_info.samples = r.count;
  }
  m_sample_shape = m_info.sample_shape;
  if (options.box) {
    const size_t spatial = m_info.sample_shape.size() - 1;
    const SubBox& b = *options.box;
    if (b.offset.size() != spatial || b.extent.size() != spatial) {
      throw bad(fmt::format("sub-box of {} dimensions for samples of {} spatial dimensions",
                            b.offset.size(), spatial));
    }
    for (size_t d = 0; d < spatial; ++d) {
      if (b.offset[d] < 0 || b.extent[d] < 1 ||
          b.offset[d] + b.extent[d] > m_info.sample_shape[d + 1]) {
        throw bad(fmt::format("sub-box dimension {} [{}, {}) outside the sample's extent {}", d,
                              b.offset[d], b.offset[d] + b.extent[d], m_info.sample_shape[d + 1]));
      }
      m_sample_shape[d + 1] = b.extent[d];
    }
  }
  // The whole samples' shape (a sub-box is a tile of them).
  const Shape whole = options.box ? m_info.sample_shape : m_sample_shape;
  if (options.expect_sample_shape && *options.expect_sample_shape != whole) {
    throw bad(fmt::format(
        "{} are {} but the model takes {}",
        tokens ? fmt::format("windows of context {}", options.context) : std::string("samples"),
        to_string(whole), to_string(*options.expect_sample_shape)));
  }
  if (batches_per_epoch() == 0) {
    throw bad(m_info.samples == 0
                  ? std::string("the split holds no samples")
                  : fmt::format("batch = {} with drop_last leaves no batch of the {} {}",
                                options.batch, m_info.samples, tokens ? "windows" : "samples"));
  }
  if (!tokens) {
    open_samples(file, split);
  }
  start_worker();
}

void DatasetReader::open_samples(const std::string& file, const std::string& split) {
  m_file = std::make_unique<File>(File::open_serial(file));
  const Group g = m_file->root().open_group(split.substr(1));
  m_x = std::make_unique<Dataset>(g.open_dataset("x"));
  m_y = std::make_unique<Dataset>(g.open_dataset("y"));
  m_opened = file_state();
  if (!m_options.cache) {
    return;
  }
  // Keep the whole split (this sub-box of it) in memory: bytes as they are stored (a quarter of
  // the memory, and of what a batch reads from it), any other type as float32.
  const Index per = numel(m_sample_shape);
  const auto x_elements = static_cast<size_t>(m_info.samples * per);
  const bool bytes = m_info.x_type == ElementType::u8;
  m_cache = std::make_unique<CacheMemory>(x_elements * (bytes ? 1 : sizeof(float)));
  if (m_info.task != Task::classification) {
    m_cache_y.resize(static_cast<size_t>(m_info.samples * m_info.targets));
  }
  std::vector<hsize_t> off(m_info.sample_shape.size() + 1, 0);
  std::vector<hsize_t> cnt{static_cast<hsize_t>(m_info.samples)};
  for (Index e : m_sample_shape) {
    cnt.push_back(static_cast<hsize_t>(e));
  }
  if (m_options.box) {
    for (size_t d = 0; d < m_options.box->offset.size(); ++d) {
      off[d + 2] = static_cast<hsize_t>(m_options.box->offset[d]);
    }
  }
  try {
    m_x->read({off, cnt}, bytes ? ElementType::u8 : ElementType::f32, m_cache->data);
    if (m_info.task == Task::classification) {
      m_cache_labels.resize(static_cast<size_t>(m_info.samples));
      m_y->read_all(ElementType::i32, m_cache_labels.data());
    } else {
      m_y->read_all(ElementType::f32, m_cache_y.data());
    }
  } catch (const Error& e) {
    throw input_error(
        fmt::format("{}:{}: cannot read the split into the cache: {}", file, split, e.message()));
  }
  check_unchanged("the split read into the cache");
}

DatasetReader::FileState DatasetReader::file_state() const {
  FileState state;
  const std::lock_guard<std::recursive_mutex> lock(hdf5_mutex());
  void* handle = nullptr;
  struct stat st {};
  if (H5Fget_vfd_handle(m_file->id(), H5P_DEFAULT, &handle) >= 0 && handle != nullptr &&
      ::fstat(*static_cast<int*>(handle), &st) == 0) {
    state.known = true;
    state.size = static_cast<std::int64_t>(st.st_size);
    state.mtime_ns = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  } else {
    H5Eclear2(H5E_DEFAULT);
  }
  return state;
}

void DatasetReader::check_unchanged(const std::string& what) const {
  const FileState now = file_state();
  if (!m_opened.known || !now.known) {
    return;
  }
  if (now.size != m_opened.size || now.mtime_ns != m_opened.mtime_ns) {
    // HDF5 reads the part of a truncated file that is gone as zeros: never train on those.
    throw input_error(fmt::format(
        "{}:{}: the file changed while it was being read ({}): it was {} bytes when opened and is "
        "{} bytes now{}; was it overwritten or truncated?",
        m_info.file, m_info.split, what, m_opened.size, now.size,
        now.size == m_opened.size ? ", modified since" : ""));
  }
}

DatasetReader::CacheMemory::CacheMemory(size_t size) : bytes(std::max<size_t>(size, 1)) {
  constexpr size_t kHuge = size_t{2} << 20;
  if (bytes >= kHuge) {
    bytes = (bytes + kHuge - 1) / kHuge * kHuge;
    data = std::aligned_alloc(kHuge, bytes);
    if (data != nullptr) {
      madvise(data, bytes, MADV_HUGEPAGE);  // a hint: without huge pages it is plain memory
    }
  } else {
    data = std::malloc(bytes);
  }
  if (data == nullptr) {
    throw Error(fmt::format("data.cache: cannot allocate {} MiB for the split",
                            static_cast<double>(bytes) / (1 << 20)));
  }
}

DatasetReader::CacheMemory::~CacheMemory() {
  std::free(data);
}

DatasetReader::~DatasetReader() {
  stop_worker();
}

std::int64_t DatasetReader::batches_per_epoch() const {
  const Index n = m_info.samples;
  const Index b = m_options.batch;
  return m_options.drop_last ? n / b : (n + b - 1) / b;
}

Cursor DatasetReader::advance(Cursor c) const {
  if (++c.batch >= batches_per_epoch()) {
    c.batch = 0;
    ++c.epoch;
  }
  return c;
}

const std::vector<std::int64_t>& DatasetReader::permutation(std::int64_t epoch) {
  if (epoch != m_perm_epoch) {
    m_perm = epoch_permutation(m_info.samples, m_options.seed, epoch, m_options.shuffle);
    for (std::int64_t& i : m_perm) {
      i += m_first;  // a subset's samples
    }
    m_perm_epoch = epoch;
  }
  return m_perm;
}

Range DatasetReader::rank_block(const Cursor& c) const {
  const Index first = c.batch * m_options.batch;
  const Index global = std::min(m_options.batch, m_info.samples - first);
  return block_range(global, m_options.data_size, m_options.data_rank);
}

DatasetReader::RawBatch DatasetReader::read_windows(const Cursor& c, float* x) {
  const Index context = m_options.context;
  const Index first = c.batch * m_options.batch;
  const Range mine = rank_block(c);
  RawBatch out;
  out.cursor = c;
  out.global_size = std::min(m_options.batch, m_info.samples - first);
  out.offset = mine.offset;
  out.ids.resize(static_cast<size_t>(mine.count));
  std::iota(out.ids.begin(), out.ids.end(), m_first + first + mine.offset);
  const auto per = static_cast<size_t>(context);
  if (x == nullptr) {
    out.x.reset(new float[out.ids.size() * per]);  // every element written below
    x = out.x.get();
  }
  out.labels.resize(out.ids.size() * per);
  for (size_t k = 0; k < out.ids.size(); ++k) {
    const auto start = static_cast<size_t>(window_start(m_info.tokens, context, m_options.seed,
                                                        c.epoch, out.ids[k], m_options.shuffle));
    if (m_info.x_type == ElementType::u8) {
      copy_window(m_token_bytes.data() + start, context, x + k * per, out.labels.data() + k * per);
    } else {
      copy_window(m_token_ids.data() + start, context, x + k * per, out.labels.data() + k * per);
    }
  }
  return out;
}

DatasetReader::RawBatch DatasetReader::read_batch(const Cursor& c, float* x) {
  if (m_info.task == Task::language_modeling) {
    return read_windows(c, x);
  }
  const std::vector<std::int64_t>& perm = permutation(c.epoch);
  const Index first = c.batch * m_options.batch;
  const Range mine = rank_block(c);
  RawBatch out;
  out.cursor = c;
  out.global_size = std::min(m_options.batch, m_info.samples - first);
  out.offset = mine.offset;
  out.ids.assign(perm.begin() + first + mine.offset,
                 perm.begin() + first + mine.offset + mine.count);

  const Index per = numel(m_sample_shape);
  const Index targets = m_info.targets;
  if (x == nullptr) {
    out.x.reset(new float[static_cast<size_t>(mine.count * per)]);  // every element written below
    x = out.x.get();
  }
  const bool classify = m_info.task == Task::classification;
  if (classify) {
    out.labels.resize(static_cast<size_t>(mine.count));
  } else {
    out.y.resize(static_cast<size_t>(mine.count * targets));
  }
  if (m_options.cache) {
    // From memory: normalised straight into batch order.
    if (m_info.x_type == ElementType::u8) {
      gather_normalised(static_cast<const std::uint8_t*>(m_cache->data), out, x);
    } else {
      gather_normalised(static_cast<const float*>(m_cache->data), out, x);
    }
    return out;
  }
  // Read in dataset order, coalescing consecutive indices into runs, then place in batch order.
  std::vector<size_t> order(out.ids.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return out.ids[a] < out.ids[b]; });
  std::vector<float> xs(static_cast<size_t>(mine.count * per));
  std::vector<float> ys(out.y.size());
  std::vector<std::int32_t> ls(out.labels.size());
  if (!order.empty()) {
    std::vector<Box> xboxes;
    std::vector<Box> yboxes;
    const size_t rank = m_sample_shape.size() + 1;
    size_t k = 0;
    while (k < order.size()) {
      size_t run = 1;
      while (k + run < order.size() &&
             out.ids[order[k + run]] == out.ids[order[k]] + static_cast<std::int64_t>(run)) {
        ++run;
      }
      Box xb{std::vector<hsize_t>(rank, 0), {static_cast<hsize_t>(run)}};
      for (Index e : m_sample_shape) {
        xb.count.push_back(static_cast<hsize_t>(e));
      }
      xb.offset[0] = static_cast<hsize_t>(out.ids[order[k]]);
      if (m_options.box) {
        for (size_t d = 0; d < m_options.box->offset.size(); ++d) {
          xb.offset[d + 2] = static_cast<hsize_t>(m_options.box->offset[d]);
        }
      }
      xboxes.push_back(xb);
      Box yb{{xb.offset[0]}, {static_cast<hsize_t>(run)}};
      if (m_info.task == Task::regression) {
        yb.offset.push_back(0);
        yb.count.push_back(static_cast<hsize_t>(targets));
      }
      yboxes.push_back(yb);
      k += run;
    }
    try {
      m_x->read_boxes(xboxes, ElementType::f32, xs.data());
      if (classify) {
        m_y->read_boxes(yboxes, ElementType::i32, ls.data());
      } else {
        m_y->read_boxes(yboxes, ElementType::f32, ys.data());
      }
    } catch (const Error& e) {
      throw input_error(fmt::format("{}:{}: cannot read {} (epoch {}, batch {}): {}", m_info.file,
                                    m_info.split, samples_text(out.ids), c.epoch, c.batch,
                                    e.message()));
    }
    check_unchanged(fmt::format("{}, epoch {}, batch {}", samples_text(out.ids), c.epoch, c.batch));
  }
  // Normalise while scattering into batch order.
  for (size_t k = 0; k < order.size(); ++k) {
    const size_t dst = order[k];
    normalise(xs.data() + k * static_cast<size_t>(per), x + dst * static_cast<size_t>(per));
    if (classify) {
      out.labels[dst] = ls[k];
    } else {
      std::copy_n(ys.begin() + static_cast<std::ptrdiff_t>(k * static_cast<size_t>(targets)),
                  targets,
                  out.y.begin() + static_cast<std::ptrdiff_t>(dst * static_cast<size_t>(targets)));
    }
  }
  return out;
}

template <typename T>
void DatasetReader::normalise(const T* sample, float* to) const {
  // x_float = (x · scale − mean[c]) / std[c], as x · (scale / std[c]) − mean[c] / std[c].
  const Index channels = m_sample_shape[0];
  const auto per_channel = static_cast<size_t>(numel(m_sample_shape) / channels);
  for (Index ch = 0; ch < channels; ++ch) {
    const auto cu = static_cast<size_t>(ch);
    scale_shift(sample + cu * per_channel, to + cu * per_channel, per_channel,
                static_cast<float>(m_info.scale / m_info.std[cu]),
                static_cast<float>(m_info.mean[cu] / m_info.std[cu]));
  }
}

template <typename T>
void DatasetReader::gather_normalised(const T* cache, RawBatch& out, float* x) const {
  const auto per = static_cast<size_t>(numel(m_sample_shape));
  const auto targets = static_cast<size_t>(m_info.targets);
  // Samples are scattered over the cache: ask for the lines of the sample four ahead while this
  // one is converted (the hardware prefetcher alone stalls on every sample, 3× slower here).
  // Written as one loop running kAhead ahead: GCC 12 drops __builtin_prefetch from a lambda form.
  constexpr size_t kAhead = 4;
  const size_t n = out.ids.size();
  const size_t bytes = per * sizeof(T);
  for (size_t k = 0; k < n + kAhead; ++k) {
    if (k < n) {
      const auto* p = reinterpret_cast<const char*>(cache + static_cast<size_t>(out.ids[k]) * per);
      for (size_t b = 0; b < bytes; b += 64) {
        __builtin_prefetch(p + b);
      }
    }
    if (k >= kAhead) {
      const size_t j = k - kAhead;
      const auto id = static_cast<size_t>(out.ids[j]);
      normalise(cache + id * per, x + j * per);
      if (out.labels.empty()) {
        std::copy_n(m_cache_y.data() + id * targets, targets, out.y.data() + j * targets);
      } else {
        out.labels[j] = m_cache_labels[id];
      }
    }
  }
}

void DatasetReader::worker() {
  try {
    for (;;) {
      Cursor c;
      {
        std::unique_lock<std::mutex> lock(m_mutex);
        m_cv.wait(lock,
                  [&] { return m_stop || static_cast<int>(m_queue.size()) < m_options.prefetch; });
        if (m_stop) {
          return;
        }
        c = m_fetch;
        m_fetch = advance(m_fetch);
      }
      RawBatch b = read_batch(c);
      {
        std::lock_guard<std::mutex> lock(m_mutex);
        if (m_stop) {
          return;
        }
        m_queue.push_back(std::move(b));
      }
      m_cv.notify_all();
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(m_mutex);
    m_error = std::current_exception();
    m_cv.notify_all();
  }
}

void DatasetReader::start_worker() {
  m_fetch = m_next;
  m_stop = false;
  m_queue.clear();
  m_error = nullptr;  // an error of the worker before a seek was about batches not wanted now
  if (m_options.prefetch > 0) {
    m_thread = std::thread([this] { worker(); });
  }
}

void DatasetReader::stop_worker() {
  {
    std::lock_guard<std::mutex> lock(m_mutex);
    m_stop = true;
  }
  m_cv.notify_all();
  if (m_thread.joinable()) {
    m_thread.join();
  }
}

void DatasetReader::seek(const Cursor& cursor) {
  TESSERA_CHECK(cursor.epoch >= 0 && cursor.batch >= 0 && cursor.batch < batches_per_epoch(),
                "{}:{}: cursor (epoch {}, batch {}) outside an epoch of {} batches", m_info.file,
                m_info.split, cursor.epoch, cursor.batch, batches_per_epoch());
  stop_worker();
  m_next = cursor;
  start_worker();
}

Tensor DatasetReader::batch_tensor(Shape shape) {
  constexpr size_t kPool = 4;  // more than the batches alive at once: next, current, evaluation
  for (const Tensor& t : m_x_pool) {
    if (t.shape() == shape && t.view().use_count() == 1) {  // held by the pool alone
      return t;
    }
  }
  Tensor t = Tensor::uninitialized("Batch::x", std::move(shape));
  if (m_x_pool.size() < kPool) {
    m_x_pool.push_back(t);
  }
  return t;
}

Batch DatasetReader::next() {
  RawBatch raw;
  if (m_options.prefetch > 0) {
    const Stopwatch wait;
    std::unique_lock<std::mutex> lock(m_mutex);
    m_cv.wait(lock, [&] { return !m_queue.empty() || m_error; });
    m_wait_seconds += wait.seconds();
    if (m_queue.empty() && m_error) {
      std::rethrow_exception(m_error);
    }
    raw = std::move(m_queue.front());
    m_queue.pop_front();
    lock.unlock();
    m_cv.notify_all();
  }
  auto shape = [&](Index n) {
    Shape s{n};
    s.insert(s.end(), m_sample_shape.begin(), m_sample_shape.end());
    return s;
  };
  auto copy_in = [&] {  // raw.x into a tensor
    Tensor x = batch_tensor(shape(static_cast<Index>(raw.ids.size())));
    const Kokkos::View<const float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>
        host(raw.x.get(), static_cast<size_t>(x.numel()));
    Kokkos::deep_copy(x.view(), host);
    return x;
  };
  Batch b;
  if (m_options.prefetch > 0) {
    b.x = copy_in();
  } else {
    const Stopwatch wait;
    if constexpr (std::is_same_v<MemSpace, Kokkos::HostSpace>) {
      b.x = batch_tensor(shape(rank_block(m_next).count));
      raw = read_batch(m_next, b.x.data());  // straight into the tensor
    } else {
      raw = read_batch(m_next);
      b.x = copy_in();
    }
    m_wait_seconds += wait.seconds();
  }
  m_next = advance(raw.cursor);

  b.cursor = raw.cursor;
  b.global_size = raw.global_size;
  b.offset = raw.offset;
  b.ids = std::move(raw.ids);
  const auto n = static_cast<Index>(b.ids.size());
  if (m_info.task == Task::classification || m_info.task == Task::language_modeling) {
    b.labels = IntView("Batch::labels", raw.labels.size());
    const auto host = Kokkos::create_mirror_view(b.labels);
    std::copy(raw.labels.begin(), raw.labels.end(), host.data());
    Kokkos::deep_copy(b.labels, host);
  } else {
    b.targets = Tensor::from_host("Batch::targets", {n, m_info.targets}, raw.y);
  }
  return b;
}

}  // namespace tessera::io
