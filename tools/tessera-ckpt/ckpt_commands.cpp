#include "ckpt_commands.hpp"

#include "tessera/core/strings.hpp"

#include "ckpt_file.hpp"
#include "npz.hpp"
#include "tessera/comm/agree.hpp"
#include "tessera/comm/communicator.hpp"
#include "tessera/core/signals.hpp"
#include "tessera/io/checkpoint_format.hpp"
#include "tessera/io/output_file.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/stat.h>
#include <toml.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <sstream>

namespace tessera::ckpt {
namespace {

namespace fs = std::filesystem;

using comm::rank_of;
using comm::size_of;

// The command's ranks as a Communicator (MPI's group of `comm`, duplicated) for one collective.
template <class T>
void reduce_all(MPI_Comm mpi, std::vector<T>& values, comm::ReduceOp op) {
  comm::MpiCommunicator c(mpi, "tessera-ckpt");
  c.allreduce(comm::Buffer(values), {op})->wait();
}

std::string broadcast_string(MPI_Comm mpi, const std::string& text, int root = 0) {
  comm::MpiCommunicator c(mpi, "tessera-ckpt");
  return comm::broadcast_string(c, text, root);
}

// --- the format's rules ------------------------------------------------------------------------

constexpr const char* kModelPrefix = "/model/";
constexpr const char* kOptimizerPrefix = "/optimizer/";

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

bool is_model(const TensorEntry& e) {
  return starts_with(e.path, kModelPrefix);
}

// A tensor dataset of the format: under /model or /optimizer.
bool is_tensor(const TensorEntry& e) {
  return is_model(e) || starts_with(e.path, kOptimizerPrefix);
}

std::vector<TensorEntry> tensors_of(const io::File& f) {
  return io::checkpoint_tensors(f);
}

using io::parse_checksum;

// The root attribute as a string, or `fallback` when it is missing or not one string.
std::string root_string(const io::Group& root, const std::string& name,
                        const std::string& fallback = "?") {
  const AttrInfo info = attribute_info(root.id(), name);
  if (info.type != AttrType::string || info.values != 1) {
    return fallback;
  }
  return root.attributes().get_string(name);
}

std::optional<std::int64_t> root_int(const io::Group& root, const std::string& name) {
  const AttrInfo info = attribute_info(root.id(), name);
  if ((info.type != AttrType::int64 && info.type != AttrType::other_integer) || info.values != 1) {
    return std::nullopt;
  }
  return root.attributes().get_int(name);
}

std::string root_int_text(const io::Group& root, const std::string& name) {
  const auto v = root_int(root, name);
  return v ? std::to_string(*v) : "?";
}

// The optimizer states every parameter needs, and why (for messages).
struct StateRule {
  std::vector<std::string> states;
  std::string why;
  bool known = false;  // the optimizer and its settings are known (else nothing is required)
};

StateRule state_rule(const std::string& optimizer, const std::string& deck_text) {
  if (optimizer == "adamw") {
    return {{"exp_avg", "exp_avg_sq"}, "adamw", true};
  }
  if (optimizer != "sgd") {
    return {};
  }
  // SGD keeps momentum only when the deck's optimizer.momentum > 0 (default 0). A deck that does
  // not parse leaves it open: momentum is then neither required nor refused.
  double momentum = 0.0;
  try {
    std::istringstream in(deck_text);
    const toml::value deck = toml::parse(in, "deck");
    if (deck.is_table() && deck.contains("optimizer")) {
      const toml::value& o = deck.at("optimizer");
      if (o.is_table() && o.contains("momentum")) {
        const toml::value& m = o.at("momentum");
        if (m.is_floating()) {
          momentum = m.as_floating();
        } else if (m.is_integer()) {
          momentum = static_cast<double>(m.as_integer());
        }
      }
    }
  } catch (const std::exception&) {
    return {};
  }
  if (momentum > 0.0) {
    return {{"momentum"}, fmt::format("sgd with momentum {:g}", momentum), true};
  }
  return {{}, "sgd without momentum", true};
}

std::int64_t line_count(const std::string& text) {
  std::int64_t n = std::count(text.begin(), text.end(), '\n');
  if (!text.empty() && text.back() != '\n') {
    ++n;
  }
  return n;
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string modified_utc(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return "?";
  }
  std::tm tm{};
  gmtime_r(&st.st_mtime, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Rows of cells, aligned in columns two spaces apart; a row may have fewer cells than the widest.
std::string table(const std::vector<std::vector<std::string>>& rows,
                  const std::vector<bool>& right = {}) {
  std::vector<std::size_t> width;
  for (const auto& row : rows) {
    if (row.size() < 2) {
      continue;  // a heading row takes no part in the widths
    }
    width.resize(std::max(width.size(), row.size()), 0);
    for (std::size_t c = 0; c < row.size(); ++c) {
      width[c] = std::max(width[c], row[c].size());
    }
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t c = 0; c < row.size(); ++c) {
      const bool last = c + 1 == row.size();
      const std::size_t pad = row.size() < 2 ? 0 : width[c] - row[c].size();
      if (c < right.size() && right[c]) {
        line += std::string(pad, ' ') + row[c];
      } else {
        line += row[c] + (last ? "" : std::string(pad, ' '));
      }
      if (!last) {
        line += "  ";
      }
    }
    while (!line.empty() && line.back() == ' ') {
      line.pop_back();
    }
    out += line + "\n";
  }
  return out;
}

// Copies every attribute of `from` (strings, integers, floats; scalars and arrays) to `to`,
// except those named in `skip`.
void copy_attributes(hid_t from_id, const io::Attributes& from, const io::Attributes& to,
                     const std::set<std::string>& skip) {
  // One value stays a scalar attribute, several a list.
  auto put = [&to](const std::string& name, const auto& values) {
    if (values.size() == 1) {
      to.set(name, values[0]);
    } else {
      to.set(name, values);
    }
  };
  for (const std::string& name : from.names()) {
    if (skip.count(name) != 0) {
      continue;
    }
    switch (attribute_info(from_id, name).type) {
      case AttrType::string:
        put(name, from.get_strings(name));
        break;
      case AttrType::int64:
      case AttrType::other_integer:
        put(name, from.get_ints(name));
        break;
      case AttrType::floating:
        put(name, from.get_doubles(name));
        break;
      case AttrType::missing:
      case AttrType::other:
        break;
    }
  }
}

// Opens `path` on every rank of `comm` (comm::agree: an unreadable file is an error every rank
// holds, exit code 2) and checks that it is a checkpoint this tool reads.
io::File open_on_all(MPI_Comm comm, const std::string& path) {
  std::optional<io::File> f;
  comm::agree(comm, [&] {
    f.emplace(open_checkpoint(path));
    require_checkpoint(*f);
  });
  return std::move(*f);
}

// "ckpt.h5" → "<dir>/.ckpt.h5.partial": where a file is written before it is renamed into place.
std::string partial_path(const std::string& out) {
  const fs::path p(out);
  return (p.parent_path() / ("." + p.filename().string() + ".partial")).string();
}

// Renames `tmp` (written completely) to `out` on rank 0: the command's commit. A stop signal that
// any rank got before it removes `tmp` instead, and every rank throws (exit code 75): a stopped
// command leaves nothing half-written and never reports success.
void commit_output(MPI_Comm comm, const std::string& tmp, const std::string& out) {
  const bool root = rank_of(comm) == 0;
  try {
    comm::agree(comm,
                [&] { signals::throw_if_stopped(fmt::format("nothing written to {}", out)); });
  } catch (const Error&) {
    if (root) {
      std::error_code ec;
      fs::remove(tmp, ec);
    }
    throw;
  }
  comm::agree(comm, [&] {
    if (root) {
      fs::rename(tmp, out);
    }
  });
}

// --- ls ----------------------------------------------------------------------------------------

std::string list_folder(const std::string& dir) {
  struct Item {
    std::int64_t step;  // the file's step attribute; the name's where it has none (or is partial)
    std::string name;
    bool partial;
    std::int64_t named = -1;  // the step of the file's name
    std::string time;         // `created`
    std::string unreadable;   // why the file cannot be opened
  };
  static const std::regex partial_pattern("\\.ckpt-([0-9]{8,})\\.h5\\.partial");
  std::vector<Item> items;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    std::smatch m;
    if (const std::int64_t step = io::checkpoint_step(name); step >= 0) {
      // The step is the file's own (a renamed or copied file keeps it), not its name's.
      Item item{step, name, false, step, "?", ""};
      try {
        const io::File f = open_checkpoint(entry.path().string());
        item.time = printable(root_string(f.root(), "created"));
        item.step = root_int(f.root(), "step").value_or(step);
      } catch (const Error& e) {
        item.unreadable = e.message();
      }
      items.push_back(std::move(item));
    } else if (std::regex_match(name, m, partial_pattern)) {
      const std::int64_t named = std::stoll(m[1].str());
      items.push_back({named, name, true, named, modified_utc(entry.path().string()), ""});
    }
  }
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    if (a.step != b.step) {
      return a.step < b.step;
    }
    return a.partial != b.partial ? a.partial < b.partial : a.name < b.name;
  });
  std::string latest;
  const fs::path latest_path = fs::path(dir) / io::kLatestMarker;
  bool have_latest = false;
  io::refuse_special_file(latest_path.string());
  bool latest_clean = true;
  if (std::ifstream in(latest_path); in) {
    have_latest = true;
    const io::LatestMarker marker = io::read_latest(in);
    latest = marker.name;
    latest_clean = marker.clean;
    while (!latest.empty() && std::isspace(static_cast<unsigned char>(latest.back())) != 0) {
      latest.pop_back();
    }
  }
  const auto complete =
      std::count_if(items.begin(), items.end(), [](const Item& i) { return !i.partial; });
  const auto incomplete = static_cast<std::int64_t>(items.size()) - complete;
  std::string out = fmt::format("{}: {} checkpoint{}", dir, complete, complete == 1 ? "" : "s");
  if (incomplete > 0) {
    out += fmt::format(", {} incomplete", incomplete);
  }
  // `latest` and every value below come from files: printed escaped (printable).
  out += have_latest ? fmt::format("; latest names {}{}\n",
                                   latest.empty() ? "nothing" : io::quoted_excerpt(latest),
                                   latest_clean ? "" : " (and holds more than that one line)")
                     : "; no 'latest' file\n";
  if (items.empty()) {
    return out;
  }
  std::vector<std::vector<std::string>> rows{{"step", "file", "size", "time", ""}};
  bool latest_found = false;
  for (const Item& item : items) {
    const std::string path = (fs::path(dir) / item.name).string();
    std::error_code ec;
    const auto bytes = static_cast<std::int64_t>(fs::file_size(path, ec));
    const std::string& time = item.time;
    std::string note;
    if (item.partial) {
      note = "incomplete (being written, or left by a crash): never read";
    } else {
      if (!item.unreadable.empty()) {
        note = "unreadable: " + printable(item.unreadable);
      } else if (item.step != item.named) {
        note = fmt::format("its step attribute is {}, its name says {} (renamed?)", item.step,
                           item.named);
      }
      if (item.name == latest) {
        latest_found = true;
        note = note.empty() ? "<- latest" : "<- latest, " + note;
      }
    }
    rows.push_back(
        {std::to_string(item.step), item.name, ec ? "?" : human_bytes(bytes), time, note});
  }
  out += table(rows, {true, false, true, false, false});
  if (have_latest && !latest.empty() && !latest_found) {
    out += fmt::format("warning: 'latest' names {}, which is not a checkpoint of this folder\n",
                       printable(latest));
  }
  return out;
}

std::string list_file(const std::string& path) {
  const io::File f = open_checkpoint(path);
  const io::Group root = f.root();
  const std::string problem = format_problem(f);  // first: it says when the attributes are damaged
  if (problem.find(": damaged: ") != std::string::npos) {
    throw input_error(fmt::format("{}: {}", path, problem));
  }
  const AttrInfo format = attribute_info(root.id(), "format");
  if (format.type != AttrType::string || root_string(root, "format") != io::kCheckpointFormat) {
    throw input_error(fmt::format("{}: {}", path, problem));
  }
  std::string out = fmt::format("{}: {} version {}, written by Tessera {} at {}\n", path,
                                io::kCheckpointFormat, root_int_text(root, "format_version"),
                                printable(root_string(root, "tessera_version")),
                                printable(root_string(root, "created")));
  if (!problem.empty()) {
    out += "  note: " + problem + "\n";
  }
  out += fmt::format("  step {} of {}; data cursor at epoch {}, batch {}; rng_seed {}\n",
                     root_int_text(root, "step"), root_int_text(root, "total_steps"),
                     root_int_text(root, "cursor_epoch"), root_int_text(root, "cursor_batch"),
                     root_int_text(root, "rng_seed"));
  out +=
      fmt::format("  optimizer {}, {} optimizer steps\n", printable(root_string(root, "optimizer")),
                  root_int_text(root, "optimizer_steps"));
  out += fmt::format("  grid: {} (ranks {}, data_size {}, zero {})\n",
                     printable(root_string(root, "grid")), root_int_text(root, "ranks"),
                     root_int_text(root, "data_size"), root_int_text(root, "zero"));
  const std::string deck_text = root_string(root, "deck", "");
  if (attribute_info(root.id(), "deck").type == AttrType::string) {
    out += fmt::format("  deck: {} lines (tessera-ckpt deck {})\n", line_count(deck_text), path);
  } else {
    out += "  deck: missing\n";
  }
  out += fmt::format("  tensors attribute: {}\n", root_int_text(root, "tensors"));
  std::set<std::string> known;
  for (const io::RootAttribute& a : io::root_attributes()) {
    known.insert(a.name);
  }
  for (const std::string& name : root.attributes().names()) {
    if (known.count(name) == 0) {
      out += fmt::format("  {}: {}\n", printable(name),
                         printable(attribute_text(root.attributes(), root.id(), name)));
    }
  }

  const std::vector<TensorEntry> all = list_tensors(f);
  std::vector<std::vector<std::string>> rows{
      {"tensor", "shape", "dtype", "bytes", "checksum", "kind"}};
  std::vector<std::string> open;  // the groups of the previous row
  struct Total {
    std::int64_t tensors = 0;
    std::int64_t bytes = 0;
  };
  Total model;
  Total optimizer;
  Total other;
  std::int64_t elements = 0;
  for (const TensorEntry& e : all) {
    std::vector<std::string> parts;
    std::stringstream ss(e.path.substr(1));
    for (std::string part; std::getline(ss, part, '/');) {
      parts.push_back(printable(part));
    }
    std::size_t common = 0;
    while (common < open.size() && common + 1 < parts.size() && open[common] == parts[common]) {
      ++common;
    }
    for (std::size_t level = common; level + 1 < parts.size(); ++level) {
      rows.push_back({std::string(2 * level, ' ') + parts[level] + "/"});
    }
    open.assign(parts.begin(), parts.end() - 1);
    const std::string name = std::string(2 * (parts.size() - 1), ' ') + parts.back();
    if (!e.error.empty()) {
      rows.push_back({name, "(cannot be read: " + printable(e.error) + ")"});
      continue;
    }
    rows.push_back(
        {name, shape_text(e.shape), e.type ? io::element_type_name(*e.type) : "other",
         std::to_string(e.storage_bytes),
         e.checksum ? printable(*e.checksum) : (e.checksum_attribute ? "(not a string)" : "(none)"),
         printable(e.kind)});
    Total& t = is_model(e) ? model : (is_tensor(e) ? optimizer : other);
    ++t.tensors;
    t.bytes += e.storage_bytes;
    elements += e.elements;
  }
  out += fmt::format("tensors:\n");
  std::string tree = table(rows, {false, false, false, true, false, false});
  std::stringstream lines(tree);
  for (std::string line; std::getline(lines, line);) {
    out += "  " + line + "\n";
  }
  const std::int64_t count = model.tensors + optimizer.tensors + other.tensors;
  out += fmt::format(
      "total: {} tensors, {} elements, {} (model: {} tensors, {}; optimizer: {} tensors, {}{})\n",
      count, elements, human_bytes(model.bytes + optimizer.bytes + other.bytes), model.tensors,
      human_bytes(model.bytes), optimizer.tensors, human_bytes(optimizer.bytes),
      other.tensors > 0
          ? fmt::format("; elsewhere: {} datasets, {}", other.tensors, human_bytes(other.bytes))
          : "");
  return out;
}

// --- verify's checks ---------------------------------------------------------------------------

// What verify learns from a checkpoint's metadata.
struct Survey {
  bool known_format = false;                         // format and version are ones this tool reads
  std::vector<std::string> root_problems;            // the root attributes' problems
  std::vector<TensorEntry> tensors;                  // under /model and /optimizer, by path
  std::vector<std::vector<std::string>> problems;    // each tensor's problems
  std::vector<std::optional<std::uint64_t>> stored;  // each tensor's checksum attribute, parsed
};

// The problems of one tensor's metadata; `stored` receives its parsed checksum attribute.
std::vector<std::string> check_tensor(const TensorEntry& e, const StateRule& rule,
                                      const std::map<std::string, const TensorEntry*>& by_path,
                                      std::optional<std::uint64_t>& stored) {
  std::vector<std::string> p = io::tensor_problems(e, stored);
  if (!e.error.empty()) {
    return p;
  }
  if (!is_model(e)) {
    // An optimizer state belongs to a parameter of the file and is one its optimizer keeps
    // ("/optimizer/linear1/weight/momentum": linear1.weight, momentum).
    const std::string rest = e.path.substr(std::string(kOptimizerPrefix).size());
    const std::size_t slash = rest.rfind('/');
    const std::string parameter =
        slash == std::string::npos ? "" : std::string(kModelPrefix) + rest.substr(0, slash);
    const std::string state = slash == std::string::npos ? rest : rest.substr(slash + 1);
    const auto it = by_path.find(parameter);
    if (it == by_path.end() || it->second->kind != "parameter") {
      p.push_back(fmt::format("{}: an optimizer state without a parameter {} in the file",
                              printable(e.path), printable(parameter)));
    } else if (rule.known &&
               std::find(rule.states.begin(), rule.states.end(), state) == rule.states.end()) {
      p.push_back(fmt::format("{}: state \"{}\" is not one that {} keeps", printable(e.path),
                              printable(state), rule.why));
    }
    return p;
  }
  if (e.kind != "parameter") {
    return p;
  }
  for (const std::string& state : rule.states) {
    const std::string sp = io::optimizer_path(e.parameter_name(), state);
    const auto it = by_path.find(sp);
    if (it == by_path.end()) {
      p.push_back(fmt::format("{}: optimizer state {} is missing ({})", printable(e.path),
                              printable(sp), rule.why));
    } else if (it->second->error.empty() && it->second->shape != e.shape) {
      p.push_back(fmt::format("{}: shape {} differs from its parameter's {} ({})", printable(sp),
                              shape_text(it->second->shape), shape_text(e.shape),
                              printable(e.path)));
    }
  }
  return p;
}

Survey survey_checkpoint(const io::File& f) {
  Survey s;
  if (const std::string p = format_problem(f); !p.empty()) {
    s.root_problems.push_back(p);
    return s;
  }
  s.known_format = true;
  const io::Group root = f.root();
  s.tensors = tensors_of(f);
  s.root_problems = io::root_problems(root, s.tensors);
  if (std::none_of(s.tensors.begin(), s.tensors.end(), is_model)) {
    s.root_problems.push_back("no tensors under /model");
  }
  const StateRule rule =
      state_rule(root_string(root, "optimizer", ""), root_string(root, "deck", ""));
  std::map<std::string, const TensorEntry*> by_path;
  for (const TensorEntry& e : s.tensors) {
    by_path[e.path] = &e;
  }
  s.stored.resize(s.tensors.size());
  for (std::size_t t = 0; t < s.tensors.size(); ++t) {
    s.problems.push_back(check_tensor(s.tensors[t], rule, by_path, s.stored[t]));
  }
  return s;
}

// Recomputes the checksum of every float32 tensor with a readable checksum attribute, each rank
// summing its element ranges, and adds mismatches and read failures to the tensors' problems.
void check_data(MPI_Comm comm, const io::File& f, Survey& s) {
  std::vector<std::size_t> check;  // the tensors whose data is read
  std::vector<std::int64_t> sizes;
  for (std::size_t t = 0; t < s.tensors.size(); ++t) {
    if (s.tensors[t].error.empty() && s.tensors[t].type == io::ElementType::f32 && s.stored[t]) {
      check.push_back(t);
      sizes.push_back(s.tensors[t].elements);
    }
  }
  const int rank = rank_of(comm);
  const int ranks = size_of(comm);
  std::vector<std::uint64_t> sums(check.size(), 0);
  std::vector<std::uint64_t> nonfinite(check.size(), 0);  // NaN or infinite elements
  std::vector<std::uint64_t> negative(check.size(), 0);   // below zero (io::nonnegative_tensor)
  std::vector<int> failed(check.size(), ranks);  // the lowest rank that could not read, or ranks
  std::vector<std::string> why(check.size());
  std::vector<float> buffer;
  const io::Group root = f.root();
  for (const Piece& piece : split_elements(sizes, rank, ranks)) {
    const TensorEntry& e = s.tensors[check[piece.tensor]];
    if (signals::stop_signal() != 0) {
      break;  // said by every rank together below
    }
    try {
      const io::Dataset d = root.open_dataset(e.path.substr(1));
      for (std::int64_t at = piece.first;
           at < piece.first + piece.count && signals::stop_signal() == 0; at += kBlockElements) {
        const std::int64_t n = std::min(kBlockElements, piece.first + piece.count - at);
        buffer.resize(static_cast<std::size_t>(n));
        read_range(d, e.shape, at, n, buffer.data());
        sums[piece.tensor] += io::checksum_partial(buffer.data(), at, n);
        for (const float x : buffer) {
          nonfinite[piece.tensor] += std::isfinite(x) ? 0 : 1;
          negative[piece.tensor] += x < 0.0F ? 1 : 0;
        }
      }
    } catch (const Error& err) {
      failed[piece.tensor] = rank;
      why[piece.tensor] = err.message();
    }
  }
  // A stop signal on any rank stops every rank here, before the checksums are judged.
  comm::agree(comm, [] { signals::throw_if_stopped("the checksums were not all computed"); });
  reduce_all(comm, sums, comm::ReduceOp::sum);
  reduce_all(comm, nonfinite, comm::ReduceOp::sum);
  reduce_all(comm, negative, comm::ReduceOp::sum);
  reduce_all(comm, failed, comm::ReduceOp::min);
  for (std::size_t k = 0; k < check.size(); ++k) {
    const TensorEntry& e = s.tensors[check[k]];
    const std::uint64_t stored = *s.stored[check[k]];
    if (failed[k] < ranks) {
      why[k] = broadcast_string(comm, why[k], failed[k]);
      s.problems[check[k]].push_back(
          fmt::format("{}: cannot read the data ({})", printable(e.path), printable(why[k])));
    } else if (std::string p = io::data_problem(e.path, sums[k], stored, nonfinite[k],
                                                io::nonnegative_tensor(e.path) ? negative[k] : 0);
               !p.empty()) {
      s.problems[check[k]].push_back(std::move(p));
    }
  }
}

// --- diff --------------------------------------------------------------------------------------

std::string status_text(const TensorDiff& d, const std::string& a, const std::string& b) {
  switch (d.status) {
    case TensorDiff::Status::equal:
      return "equal";
    case TensorDiff::Status::within:
      return "within tolerance";
    case TensorDiff::Status::differs:
      return "DIFFERS";
    case TensorDiff::Status::only_a:
      return "only in " + a;
    case TensorDiff::Status::only_b:
      return "only in " + b;
    case TensorDiff::Status::shape:
      return "SHAPES DIFFER";
  }
  return "";
}

std::string number(double v) {
  if (std::isinf(v)) {
    return "inf";
  }
  return fmt::format("{:.3g}", v);
}

}  // namespace

// --- ls, deck ----------------------------------------------------------------------------------

Outcome ls(MPI_Comm comm, const std::string& path) {
  Outcome o;
  comm::agree(comm, [&] {
    if (rank_of(comm) != 0) {
      return;
    }
    std::error_code ec;
    if (!fs::exists(path, ec)) {
      throw input_error(fmt::format("{}: no such file or folder", path));
    }
    o.out = fs::is_directory(path, ec) ? list_folder(path) : list_file(path);
  });
  return o;
}

Outcome deck(MPI_Comm comm, const std::string& file) {
  Outcome o;
  comm::agree(comm, [&] {
    if (rank_of(comm) != 0) {
      return;
    }
    const io::File f = open_checkpoint(file);
    require_checkpoint(f);
    const io::Group root = f.root();
    const AttrInfo info = attribute_info(root.id(), "deck");
    if (info.type != AttrType::string || info.values != 1) {
      throw input_error(fmt::format("{}: root attribute 'deck' is {}", file,
                                    info.type == AttrType::missing ? "missing" : "not a string"));
    }
    o.out = root.attributes().get_string("deck");
    if (!o.out.empty() && o.out.back() != '\n') {
      o.out += '\n';
    }
  });
  return o;
}

// --- verify ------------------------------------------------------------------------------------

FileVerdict verify_file(MPI_Comm comm, const std::string& file) {
  FileVerdict v;
  v.file = file;
  std::optional<io::File> f;
  try {
    comm::agree(comm, [&] { f.emplace(open_checkpoint(file)); });
  } catch (const Error& e) {
    v.unreadable = e.message();
    return v;
  }
  // 1. The metadata (every rank reads the same file and finds the same problems).
  Survey survey;
  try {
    comm::agree(comm, [&] { survey = survey_checkpoint(*f); });
  } catch (const Error& e) {
    v.problems.push_back(e.message());
    return v;
  }
  v.tensors = static_cast<std::int64_t>(survey.tensors.size());
  for (const TensorEntry& e : survey.tensors) {
    v.bytes += e.elements * 4;
  }
  v.problems = survey.root_problems;
  if (!survey.known_format) {
    return v;  // the rest would be measured against the wrong rules
  }
  // 2. The data: every checksum recomputed, the elements spread over the ranks.
  check_data(comm, *f, survey);
  for (const auto& p : survey.problems) {
    v.problems.insert(v.problems.end(), p.begin(), p.end());
  }
  return v;
}

namespace {
// Runs `step`; a stop signal during it is said as `what` ("stopped by SIGTERM: <what>"), for a
// step of a command whose stop means more than the step's own words (export's verification:
// "nothing written to OUT").
void saying_if_stopped(const std::string& what, const std::function<void()>& step) {
  try {
    step();
  } catch (const Error& e) {
    if (e.exit_code() != signals::kExitStopped) {
      throw;
    }
    const std::string& m = e.message();
    Error again(m.substr(0, m.find(": ")) + ": " + what);
    again.with_exit_code(signals::kExitStopped);
    if (e.on_all_ranks()) {
      again.mark_on_all_ranks();
    }
    throw again;
  }
}

// export and average take only checkpoints verify passes: a file with a non-finite value, or a
// tensor without a readable checksum, would otherwise come out as a fresh, checksummed file.
// Collective over `comm`; `what`: "exported", "written".
void require_verified(MPI_Comm comm, const std::string& file, const char* what) {
  // Not a checkpoint of this format at all: said as a restart says it.
  comm::agree(comm, [&] { require_checkpoint(open_checkpoint(file)); });
  const FileVerdict v = verify_file(comm, file);  // the same verdict on every rank
  comm::agree(comm, [&] {
    if (!v.unreadable.empty()) {
      throw input_error(v.unreadable);
    }
    if (!v.problems.empty()) {
      throw input_error(fmt::format(
          "{}: {}{}: the checkpoint does not verify, nothing {} (tessera-ckpt verify {})", file,
          v.problems.front(),
          v.problems.size() == 1 ? std::string()
                                 : fmt::format(" (and {} more problem{})", v.problems.size() - 1,
                                               v.problems.size() == 2 ? "" : "s"),
          what, file));
    }
  });
}
}  // namespace

Outcome verify(MPI_Comm comm, const std::vector<std::string>& files) {
  Outcome o;
  const bool root = rank_of(comm) == 0;
  for (const std::string& file : files) {
    const FileVerdict v = verify_file(comm, file);
    if (!v.unreadable.empty()) {
      o.exit_code = std::max(o.exit_code, kExitBadInput);
      if (root) {
        o.err += "error: " + v.unreadable + "\n";
      }
    } else if (!v.problems.empty()) {
      o.exit_code = std::max(o.exit_code, kExitFailed);
      if (root) {
        for (const std::string& p : v.problems) {
          o.out += file + ": " + p + "\n";
        }
        o.out += fmt::format("{}: FAILED ({} problem{})\n", file, v.problems.size(),
                             v.problems.size() == 1 ? "" : "s");
      }
    } else if (root) {
      o.out += fmt::format("{}: OK ({} tensors, {}, checksums match)\n", file, v.tensors,
                           human_bytes(v.bytes));
    }
  }
  return o;
}

// --- diff --------------------------------------------------------------------------------------

DiffResult diff_files(MPI_Comm comm, const std::string& a, const std::string& b, double tolerance,
                      double atol) {
  comm::agree(comm, [&] {
    if (!(std::isfinite(tolerance) && tolerance >= 0.0)) {
      throw input_error(fmt::format("--tolerance {}: must be a finite number >= 0", tolerance));
    }
    if (!(std::isfinite(atol) && atol >= 0.0)) {
      throw input_error(fmt::format("--atol {}: must be a finite number >= 0", atol));
    }
  });
  const io::File fa = open_on_all(comm, a);
  const io::File fb = open_on_all(comm, b);
  DiffResult r;
  std::vector<TensorEntry> ta;
  std::vector<TensorEntry> tb;
  comm::agree(comm, [&] {
    const io::Group ra = fa.root();
    const io::Group rb = fb.root();
    std::set<std::string> names;
    for (const std::string& n : ra.attributes().names()) {
      names.insert(n);
    }
    for (const std::string& n : rb.attributes().names()) {
      names.insert(n);
    }
    for (const std::string& n : names) {
      const std::string va = attribute_text(ra.attributes(), ra.id(), n);
      const std::string vb = attribute_text(rb.attributes(), rb.id(), n);
      if (va == vb) {
        continue;
      }
      if (n == "deck") {
        r.metadata.push_back(fmt::format("deck: differs ({} | {} lines)",
                                         line_count(root_string(ra, "deck", "")),
                                         line_count(root_string(rb, "deck", ""))));
      } else {
        r.metadata.push_back(fmt::format("{}: {} | {}", n, va, vb));
      }
    }
    ta = tensors_of(fa);
    tb = tensors_of(fb);
    for (const auto* side : {&ta, &tb}) {
      for (const TensorEntry& e : *side) {
        if (!e.error.empty()) {
          throw input_error(fmt::format("{}: {}: cannot be read ({})", side == &ta ? a : b,
                                        printable(e.path), printable(e.error)));
        }
      }
    }
  });

  // Merge by path; the tensors both hold with the same shape are compared element by element.
  std::vector<std::pair<const TensorEntry*, const TensorEntry*>> compared;
  std::vector<std::size_t> compared_as;  // r.tensors index of each compared pair
  std::size_t i = 0;
  std::size_t j = 0;
  while (i < ta.size() || j < tb.size()) {
    TensorDiff d;
    if (j == tb.size() || (i < ta.size() && ta[i].path < tb[j].path)) {
      d.path = ta[i].path;
      d.shape_a = ta[i++].shape;
      d.status = TensorDiff::Status::only_a;
    } else if (i == ta.size() || tb[j].path < ta[i].path) {
      d.path = tb[j].path;
      d.shape_b = tb[j++].shape;
      d.status = TensorDiff::Status::only_b;
    } else {
      d.path = ta[i].path;
      d.shape_a = ta[i].shape;
      d.shape_b = tb[j].shape;
      if (d.shape_a != d.shape_b) {
        d.status = TensorDiff::Status::shape;
      } else {
        compared.emplace_back(&ta[i], &tb[j]);
        compared_as.push_back(r.tensors.size());
      }
      ++i;
      ++j;
    }
    r.tensors.push_back(std::move(d));
  }
  std::vector<std::int64_t> sizes;
  for (const auto& c : compared) {
    sizes.push_back(c.first->elements);
  }
  const std::size_t n = compared.size();
  std::vector<double> max_abs(n, 0.0);
  std::vector<double> max_b(n, 0.0);
  std::vector<std::int64_t> differing(n, 0);
  comm::agree(comm, [&] {
    std::vector<float> va;
    std::vector<float> vb;
    const io::Group ra = fa.root();
    const io::Group rb = fb.root();
    for (const Piece& piece : split_elements(sizes, rank_of(comm), size_of(comm))) {
      const TensorEntry& ea = *compared[piece.tensor].first;
      const io::Dataset da = ra.open_dataset(ea.path.substr(1));
      const io::Dataset db = rb.open_dataset(ea.path.substr(1));
      double& mabs = max_abs[piece.tensor];
      double& mb = max_b[piece.tensor];
      std::int64_t& diffs = differing[piece.tensor];
      for (std::int64_t at = piece.first; at < piece.first + piece.count; at += kBlockElements) {
        signals::throw_if_stopped("the comparison did not finish");
        const std::int64_t count = std::min(kBlockElements, piece.first + piece.count - at);
        va.resize(static_cast<std::size_t>(count));
        vb.resize(static_cast<std::size_t>(count));
        read_range(da, ea.shape, at, count, va.data());
        read_range(db, ea.shape, at, count, vb.data());
        for (std::size_t k = 0; k < va.size(); ++k) {
          const auto x = static_cast<double>(va[k]);
          const auto y = static_cast<double>(vb[k]);
          if (!std::isnan(y)) {
            mb = std::max(mb, std::abs(y));
          }
          if (std::memcmp(&va[k], &vb[k], sizeof(float)) == 0) {
            continue;
          }
          ++diffs;
          const double delta = std::isnan(x) || std::isnan(y)
                                   ? std::numeric_limits<double>::infinity()
                                   : std::abs(x - y);
          mabs = std::max(mabs, delta);
        }
      }
    }
  });
  reduce_all(comm, max_abs, comm::ReduceOp::max);
  reduce_all(comm, max_b, comm::ReduceOp::max);
  reduce_all(comm, differing, comm::ReduceOp::sum);
  for (std::size_t k = 0; k < n; ++k) {
    TensorDiff& d = r.tensors[compared_as[k]];
    d.max_abs = max_abs[k];
    d.differing = differing[k];
    d.max_rel = max_b[k] > 0.0 ? d.max_abs / max_b[k]
                               : (d.max_abs == 0.0 ? 0.0 : std::numeric_limits<double>::infinity());
    if (d.differing == 0) {
      d.status = TensorDiff::Status::equal;
    } else if ((tolerance > 0.0 || atol > 0.0) && d.max_abs <= atol + tolerance * max_b[k]) {
      d.status = TensorDiff::Status::within;
    } else {
      d.status = TensorDiff::Status::differs;
    }
  }
  for (const TensorDiff& d : r.tensors) {
    if (d.status != TensorDiff::Status::equal && d.status != TensorDiff::Status::within) {
      r.equal = false;
    }
  }
  return r;
}

Outcome diff(MPI_Comm comm, const std::string& a, const std::string& b, double tolerance,
             double atol) {
  const DiffResult r = diff_files(comm, a, b, tolerance, atol);
  Outcome o;
  o.exit_code = r.equal ? kExitOk : kExitFailed;
  if (rank_of(comm) != 0) {
    return o;
  }
  // "relative tolerance 1e-05 [of max |B|] plus absolute tolerance 1e-07", in the header (with
  // what the relative part is of) and the verdict.
  const auto rule_text = [&](bool of_what) {
    std::string text = tolerance > 0.0 ? fmt::format("relative tolerance {:g}{}", tolerance,
                                                     of_what ? " of max |B|" : "")
                                       : "";
    if (atol > 0.0) {
      text += fmt::format("{}absolute tolerance {:g}", text.empty() ? "" : " plus ", atol);
    }
    return text.empty() ? std::string("bit for bit") : text;
  };
  const std::string rule = rule_text(true);
  o.out = fmt::format("diff A = {}, B = {} ({})\n", a, b, rule);
  if (!r.metadata.empty()) {
    o.out += "metadata that differs (A | B; not part of the verdict):\n";
    for (const std::string& m : r.metadata) {
      o.out += "  " + m + "\n";
    }
  }
  std::vector<std::vector<std::string>> rows{
      {"tensor", "shape", "max |A-B|", "max rel", "differing", "result"}};
  std::int64_t beyond = 0;
  std::int64_t within = 0;
  std::int64_t only_a = 0;
  std::int64_t only_b = 0;
  std::int64_t shapes = 0;
  for (const TensorDiff& d : r.tensors) {
    using S = TensorDiff::Status;
    const bool measured = d.status == S::equal || d.status == S::within || d.status == S::differs;
    std::string shape;
    if (d.status == S::shape) {
      shape = shape_text(d.shape_a) + " | " + shape_text(d.shape_b);
    } else {
      shape = shape_text(d.status == S::only_b ? d.shape_b : d.shape_a);
    }
    std::int64_t elements = 1;
    for (hsize_t e : d.shape_a) {
      elements *= static_cast<std::int64_t>(e);
    }
    rows.push_back({printable(d.path), shape, measured ? number(d.max_abs) : "-",
                    measured ? number(d.max_rel) : "-",
                    measured ? fmt::format("{} of {}", d.differing, elements) : "-",
                    status_text(d, "A", "B")});
    beyond += d.status == S::differs ? 1 : 0;
    within += d.status == S::within ? 1 : 0;
    only_a += d.status == S::only_a ? 1 : 0;
    only_b += d.status == S::only_b ? 1 : 0;
    shapes += d.status == S::shape ? 1 : 0;
  }
  o.out += table(rows, {false, false, true, true, true, false});
  const std::size_t total = r.tensors.size();
  if (r.equal) {
    o.out += tolerance > 0.0 || atol > 0.0
                 ? fmt::format("verdict: equal within {}: {} tensors ({} not bit for bit)\n",
                               rule_text(false), total, within)
                 : fmt::format("verdict: equal: {} tensors, bit for bit\n", total);
  } else {
    std::vector<std::string> why;
    if (beyond > 0) {
      why.push_back(fmt::format("{} beyond tolerance", beyond));
    }
    if (only_a > 0) {
      why.push_back(fmt::format("{} only in A", only_a));
    }
    if (only_b > 0) {
      why.push_back(fmt::format("{} only in B", only_b));
    }
    if (shapes > 0) {
      why.push_back(fmt::format("{} with another shape", shapes));
    }
    o.out += fmt::format("verdict: different: {} of {} tensors differ ({})\n",
                         beyond + only_a + only_b + shapes, total, fmt::join(why, ", "));
  }
  return o;
}

// --- export ------------------------------------------------------------------------------------

Outcome export_model(MPI_Comm comm, const std::string& file, const std::string& out,
                     bool force_zip64) {
  Outcome o;
  const std::string ext = fs::path(out).extension().string();
  const bool npz = ext == ".npz";
  comm::agree(comm, [&] {
    if (rank_of(comm) == 0) {
      io::check_output_file(out, {file});
    }
    if (!npz && ext != ".h5" && ext != ".hdf5") {
      throw input_error(
          fmt::format("export: {}: the output must end in .h5 (HDF5) or .npz (numpy)", out));
    }
  });
  saying_if_stopped(fmt::format("nothing written to {}", out),
                    [&] { require_verified(comm, file, "exported"); });
  const std::string tmp = partial_path(out);
  comm::agree(comm, [&] {
    if (rank_of(comm) != 0) {
      return;
    }
    const io::File f = open_checkpoint(file);
    require_checkpoint(f);
    std::vector<TensorEntry> model;
    for (TensorEntry& e : tensors_of(f)) {
      if (is_model(e)) {
        if (!e.error.empty()) {
          throw input_error(fmt::format("{}: {}: cannot be read ({})", file, printable(e.path),
                                        printable(e.error)));
        }
        model.push_back(std::move(e));
      }
    }
    if (model.empty()) {
      throw input_error(fmt::format("{}: no tensors under /model", file));
    }
    const io::Group src = f.root();
    const auto step = root_int(src, "step");
    io::make_output_folder(out);
    io::create_partial(out, tmp);
    try {
      std::optional<io::File> h5;
      std::optional<ZipWriter> zip;
      if (npz) {
        zip.emplace(tmp, force_zip64);
      } else {
        h5.emplace(io::File::create(tmp, MPI_COMM_SELF));
        const io::Group root = h5->root();
        const io::Attributes a = root.attributes();
        a.set("source", file);
        if (step) {
          a.set("step", *step);
        }
        a.set("tessera_version", root_string(src, "tessera_version"));
        a.set("exported_by", std::string("tessera-ckpt export"));
      }
      std::vector<float> values;
      std::int64_t bytes = 0;
      for (const TensorEntry& e : model) {
        signals::throw_if_stopped(fmt::format("nothing written to {}", out));
        values.resize(static_cast<std::size_t>(e.elements));
        read_range(src.open_dataset(e.path.substr(1)), e.shape, 0, e.elements, values.data());
        const std::uint64_t sum = io::checksum_partial(values.data(), 0, e.elements);
        const auto expected = e.checksum ? parse_checksum(*e.checksum) : std::nullopt;
        if (expected && *expected != sum) {
          throw input_error(fmt::format(
              "{}: {}: checksum {} does not match the stored {}: the checkpoint is damaged, "
              "nothing exported (tessera-ckpt verify {})",
              file, printable(e.path), io::checksum_string(sum), io::checksum_string(*expected),
              file));
        }
        const std::string name = e.parameter_name();
        if (zip) {
          zip->add(name + ".npy", npy_header(e.shape), values.data(), values.size() * 4);
        } else {
          const io::Dataset d = h5->root().create_dataset(name, io::ElementType::f32, e.shape);
          d.write({std::vector<hsize_t>(e.shape.size(), 0), e.shape}, io::ElementType::f32,
                  values.data(), false);
          if (!e.kind.empty()) {
            d.attributes().set("kind", e.kind);
          }
          d.attributes().set("checksum", io::checksum_string(sum));
        }
        bytes += e.elements * 4;
      }
      if (zip) {
        zip->finish();
      } else {
        h5->close();
      }
      o.out =
          fmt::format("exported {} tensors ({}) of {}{} to {}\n", model.size(), human_bytes(bytes),
                      file, step ? fmt::format(" (step {})", *step) : std::string(), out);
    } catch (...) {
      std::error_code ec;
      fs::remove(tmp, ec);
      throw;
    }
  });
  commit_output(comm, tmp, out);
  return o;
}

// --- average -----------------------------------------------------------------------------------

Outcome average(MPI_Comm comm, const std::vector<std::string>& inputs, const std::string& out) {
  const int rank = rank_of(comm);
  const std::size_t k_inputs = inputs.size();
  std::vector<std::optional<io::File>> files(k_inputs);
  std::vector<std::vector<TensorEntry>> model(k_inputs);
  std::vector<TensorEntry> optimizer;  // of the first input, copied
  comm::agree(comm, [&] {
    if (k_inputs < 2) {
      throw input_error(fmt::format("average: needs two checkpoints or more, {} given", k_inputs));
    }
    if (rank == 0) {
      io::check_output_file(out, inputs);
    }
    const std::string ext = fs::path(out).extension().string();
    if (ext != ".h5" && ext != ".hdf5") {
      throw input_error(fmt::format("average: {}: the output must end in .h5 (HDF5)", out));
    }
  });
  saying_if_stopped(fmt::format("nothing written to {}", out), [&] {
    for (const std::string& input : inputs) {
      require_verified(comm, input, "written");
    }
  });
  comm::agree(comm, [&] {
    for (std::size_t i = 0; i < k_inputs; ++i) {
      files[i].emplace(open_checkpoint(inputs[i]));
      require_checkpoint(*files[i]);
      for (TensorEntry& e : tensors_of(*files[i])) {
        if (!e.error.empty()) {
          throw input_error(fmt::format("{}: {}: cannot be read ({})", inputs[i], printable(e.path),
                                        printable(e.error)));
        }
        if (e.type != io::ElementType::f32) {
          throw input_error(fmt::format("{}: {}: dtype {}, expected float32", inputs[i],
                                        printable(e.path),
                                        e.type ? io::element_type_name(*e.type) : "other"));
        }
        if (is_model(e)) {
          model[i].push_back(std::move(e));
        } else if (i == 0) {
          optimizer.push_back(std::move(e));
        }
      }
    }
    if (model[0].empty()) {
      throw input_error(fmt::format("{}: no tensors under /model", inputs[0]));
    }
    for (std::size_t i = 1; i < k_inputs; ++i) {
      std::map<std::string, const TensorEntry*> theirs;
      for (const TensorEntry& e : model[i]) {
        theirs[e.path] = &e;
      }
      for (const TensorEntry& e : model[0]) {
        const auto it = theirs.find(e.path);
        if (it == theirs.end()) {
          throw input_error(fmt::format(
              "average: {} has no {}, which {} has: the checkpoints must hold the same tensors",
              inputs[i], printable(e.path), inputs[0]));
        }
        if (it->second->shape != e.shape) {
          throw input_error(fmt::format("average: {} is {} in {} but {} in {}", printable(e.path),
                                        shape_text(e.shape), inputs[0],
                                        shape_text(it->second->shape), inputs[i]));
        }
        theirs.erase(it);
      }
      if (!theirs.empty()) {
        throw input_error(fmt::format(
            "average: {} has {}, which {} has not: the checkpoints must hold the same tensors",
            inputs[i], theirs.begin()->first, inputs[0]));
      }
    }
  });

  const std::string tmp = partial_path(out);
  comm::agree(comm, [&] {
    if (rank == 0) {
      io::make_output_folder(out);
      io::create_partial(out, tmp);
    }
  });
  const std::string created = broadcast_string(comm, rank == 0 ? utc_now() : std::string());
  std::vector<TensorEntry> outputs = model[0];
  outputs.insert(outputs.end(), optimizer.begin(), optimizer.end());
  const std::size_t n_model = model[0].size();
  std::vector<std::int64_t> sizes;
  std::int64_t bytes = 0;
  for (const TensorEntry& e : outputs) {
    sizes.push_back(e.elements);
    bytes += e.elements * 4;
  }

  // The output file is written collectively (MPI-IO): every rank creates the same groups,
  // datasets and attributes, and writes its element ranges independently.
  std::unique_ptr<io::File> dst;
  comm::agree(comm, [&] {
    try {
      dst = std::make_unique<io::File>(io::File::create(tmp, comm));
    } catch (const Error& e) {
      if (rank == 0) {
        std::error_code ec;
        fs::remove(tmp, ec);
      }
      throw input_error(e.message());
    }
  });
  auto datasets = std::make_unique<std::vector<io::Dataset>>();
  try {
    {
      const io::Group src_root = files[0]->root();
      const io::Group root = dst->root();
      copy_attributes(src_root.id(), src_root.attributes(), root.attributes(),
                      {"tensors", "created", "averaged_from"});
      root.attributes().set("created", created);
      root.attributes().set("tensors", static_cast<std::int64_t>(outputs.size()));
      root.attributes().set("averaged_from", inputs);
      for (const TensorEntry& e : outputs) {
        datasets->push_back(root.create_dataset(e.path.substr(1), io::ElementType::f32, e.shape));
        const io::Dataset src = src_root.open_dataset(e.path.substr(1));
        copy_attributes(src.id(), src.attributes(), datasets->back().attributes(), {"checksum"});
      }
    }
    // Each rank averages (or copies) its element ranges and writes them, summing the checksums
    // of what it read and of what it wrote.
    std::vector<std::uint64_t> written(outputs.size(), 0);
    std::vector<std::uint64_t> read(outputs.size() * k_inputs, 0);
    comm::agree(comm, [&] {
      std::vector<float> in;
      std::vector<float> result;
      std::vector<double> sum;
      for (const Piece& piece : split_elements(sizes, rank, size_of(comm))) {
        const TensorEntry& e = outputs[piece.tensor];
        const bool averaged = piece.tensor < n_model;
        std::vector<io::Dataset> sources;
        for (std::size_t i = 0; i < (averaged ? k_inputs : 1); ++i) {
          sources.push_back(files[i]->root().open_dataset(e.path.substr(1)));
        }
        for (std::int64_t at = piece.first; at < piece.first + piece.count; at += kBlockElements) {
          signals::throw_if_stopped(fmt::format("nothing written to {}", out));
          const std::int64_t n = std::min(kBlockElements, piece.first + piece.count - at);
          const auto un = static_cast<std::size_t>(n);
          in.resize(un);
          result.resize(un);
          sum.assign(un, 0.0);
          for (std::size_t i = 0; i < sources.size(); ++i) {
            read_range(sources[i], e.shape, at, n, in.data());
            read[piece.tensor * k_inputs + i] += io::checksum_partial(in.data(), at, n);
            for (std::size_t x = 0; x < un; ++x) {
              sum[x] += static_cast<double>(in[x]);
            }
          }
          for (std::size_t x = 0; x < un; ++x) {
            result[x] = static_cast<float>(sum[x] / static_cast<double>(sources.size()));
          }
          (*datasets)[piece.tensor].write_range(static_cast<hsize_t>(at), static_cast<hsize_t>(n),
                                                io::ElementType::f32, result.data(), false);
          written[piece.tensor] += io::checksum_partial(result.data(), at, n);
        }
      }
    });
    reduce_all(comm, written, comm::ReduceOp::sum);
    reduce_all(comm, read, comm::ReduceOp::sum);
    // Damaged inputs are refused: every rank holds the same sums, so all throw together.
    comm::agree(comm, [&] {
      for (std::size_t t = 0; t < outputs.size(); ++t) {
        for (std::size_t i = 0; i < (t < n_model ? k_inputs : 1); ++i) {
          const TensorEntry& e = i == 0 ? outputs[t] : model[i][t];
          const auto expected = e.checksum ? parse_checksum(*e.checksum) : std::nullopt;
          const std::uint64_t got = read[t * k_inputs + i];
          if (expected && *expected != got) {
            throw input_error(fmt::format(
                "{}: {}: checksum {} does not match the stored {}: the checkpoint is damaged, "
                "nothing written (tessera-ckpt verify {})",
                inputs[i], printable(e.path), io::checksum_string(got),
                io::checksum_string(*expected), inputs[i]));
          }
        }
      }
    });
    for (std::size_t t = 0; t < outputs.size(); ++t) {
      (*datasets)[t].attributes().set("checksum", io::checksum_string(written[t]));
    }
    datasets.reset();
    dst->close();
    dst.reset();
  } catch (const Error& e) {
    if (!e.on_all_ranks()) {
      // This rank alone: closing the file is collective and would wait for the others forever.
      // Leave the handles open; main() aborts the job.
      static_cast<void>(datasets.release());
      static_cast<void>(dst.release());
      throw;
    }
    datasets.reset();
    dst.reset();
    if (rank == 0) {
      std::error_code ec;
      fs::remove(tmp, ec);
    }
    throw;
  } catch (...) {
    static_cast<void>(datasets.release());
    static_cast<void>(dst.release());
    throw;
  }
  commit_output(comm, tmp, out);
  Outcome o;
  if (rank == 0) {
    o.out = fmt::format(
        "averaged {} checkpoints into {}: {} model tensors averaged, {} optimizer tensors copied "
        "from {} ({})\n",
        k_inputs, out, n_model, optimizer.size(), inputs[0], human_bytes(bytes));
  }
  return o;
}

}  // namespace tessera::ckpt
