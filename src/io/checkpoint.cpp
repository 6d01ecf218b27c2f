#include "tessera/io/checkpoint.hpp"

#include "tessera/comm/agree.hpp"
#include "tessera/core/timer.hpp"
#include "tessera/io/hdf5.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>

namespace fs = std::filesystem;

namespace tessera::io {
namespace {

std::string utc_now() {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

std::vector<hsize_t> dims_of(const Shape& shape) {
  std::vector<hsize_t> d;
  for (Index e : shape) {
    d.push_back(static_cast<hsize_t>(e));
  }
  return d;
}

// Opens (creating the missing ones) the groups of `path`'s parent and returns the last of them.
Group parent_group(const Group& root, const std::string& path, std::string* leaf) {
  Group g = root.open_group("/");
  size_t at = 1;
  for (size_t slash = path.find('/', at); slash != std::string::npos; slash = path.find('/', at)) {
    const std::string name = path.substr(at, slash - at);
    g = g.has(name) ? g.open_group(name) : g.create_group(name);
    at = slash + 1;
  }
  *leaf = path.substr(at);
  return g;
}

// fsync of a file or a folder by path (the rename of a file is durable once its folder is).
void sync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) {
    throw Error(
        fmt::format("checkpoint: cannot open {} to sync it: {}", path, std::strerror(errno)));
  }
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) {
    throw Error(fmt::format("checkpoint: fsync of {} failed: {}", path, std::strerror(errno)));
  }
}

// One tensor of the checkpoint as this rank writes or reads it: the elements [offset, offset +
// count) of the flattened global tensor, held in `local` (count elements).
struct Slice {
  std::string path;
  std::string kind;  // "parameter", "buffer", "state"
  Shape shape;       // global
  Tensor local;
  Index offset = 0;
  Index count = 0;
  bool whole_on_every_rank = false;  // every rank reads it whole (checksum checked locally)
};

// Every tensor of the checkpoint, in a fixed order (the same on every rank), with this rank's
// part: parameters and buffers are written by data rank 0 and read whole by every rank; optimizer
// state likewise without ZeRO-1, and under it each rank's pieces.
std::vector<Slice> slices(parallel::DataParallel& dp, optim::Optimizer& optimizer, int rank) {
  std::vector<Slice> out;
  for (const auto& [list, kind] :
       {std::pair<const std::vector<nn::Parameter*>*, const char*>{&dp.parameters(), "parameter"},
        {&dp.buffers(), "buffer"}}) {
    for (nn::Parameter* p : *list) {
      const Index n = p->value.numel();
      out.push_back({model_path(p->name), kind, p->layout.global_shape(), p->value, 0,
                     rank == 0 ? n : 0, true});
    }
  }
  std::map<std::string, std::pair<nn::Parameter*, parallel::Shard>> pieces;
  for (size_t i = 0; i < dp.shards().size(); ++i) {
    pieces[dp.shards()[i].name] = {dp.pieces()[i], dp.shards()[i]};
  }
  for (nn::Parameter* p : dp.parameters()) {
    for (const std::string& state : optimizer.state_names()) {
      Slice s{optimizer_path(p->name, state),
              "state",
              p->layout.global_shape(),
              Tensor(),
              0,
              0,
              !dp.zero()};
      if (!dp.zero()) {
        s.local = optimizer.state_for(*p, state);
        s.count = rank == 0 ? p->value.numel() : 0;
      } else if (const auto it = pieces.find(p->name); it != pieces.end()) {
        s.local = optimizer.state_for(*it->second.first, state);
        s.offset = it->second.second.offset;
        s.count = it->second.second.count;
      }
      out.push_back(std::move(s));
    }
  }
  return out;
}

// Whether tensors live in host memory (a Serial or OpenMP build of Kokkos), so that HDF5 can write
// their storage in place.
constexpr bool kHostStorage = Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible;

std::uint64_t sum_over(MPI_Comm comm, std::uint64_t mine) {
  std::uint64_t total = 0;
  TESSERA_MPI_CHECK(MPI_Allreduce(&mine, &total, 1, MPI_UINT64_T, MPI_SUM, comm));
  return total;
}

// The newest `keep` complete checkpoints stay (and always the one `latest` names); older ones and
// stale partial files go.
void prune(const std::string& dir, int keep, const std::string& latest) {
  std::vector<std::pair<std::int64_t, fs::path>> complete;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (const std::int64_t step = checkpoint_step(name); step >= 0) {
      complete.emplace_back(step, entry.path());
    } else if (name.size() > 8 && name.rfind(".partial") == name.size() - 8 && name[0] == '.') {
      fs::remove(entry.path());
    }
  }
  std::sort(complete.begin(), complete.end());
  const auto excess = static_cast<std::ptrdiff_t>(complete.size()) - keep;
  for (std::ptrdiff_t i = 0; i < excess; ++i) {
    if (complete[static_cast<size_t>(i)].second.filename() != latest) {
      fs::remove(complete[static_cast<size_t>(i)].second);
    }
  }
}

}  // namespace

SaveReport save_checkpoint(const std::string& dir, const CheckpointInfo& info,
                           parallel::DataParallel& dp, optim::Optimizer& optimizer, MPI_Comm comm,
                           int keep) {
  const Stopwatch clock;
  dp.sync_parameters();
  int rank = 0;
  TESSERA_MPI_CHECK(MPI_Comm_rank(comm, &rank));
  const std::string name = checkpoint_file_name(info.step);
  const std::string partial = dir + "/" + partial_file_name(info.step);
  comm::agree(comm, [&] {
    if (rank == 0) {
      std::error_code ec;
      fs::create_directories(dir, ec);
      if (ec) {
        throw Error(
            fmt::format("checkpoint.dir = \"{}\": cannot create it: {}", dir, ec.message()));
      }
    }
  });
  const std::vector<Slice> all = slices(dp, optimizer, rank);
  SaveReport report;
  report.file = dir + "/" + name;
  comm::agree(comm, [&] {
    File f = File::create(partial, comm);
    {
      const Group root = f.root();
      const Attributes a = root.attributes();
      a.set("format", std::string(kCheckpointFormat));
      a.set("format_version", kCheckpointVersion);
      a.set("tessera_version", std::string(TESSERA_VERSION));
      a.set("created", utc_now());
      a.set("step", info.step);
      a.set("total_steps", info.total_steps);
      a.set("cursor_epoch", info.cursor.epoch);
      a.set("cursor_batch", info.cursor.batch);
      a.set("rng_seed", static_cast<std::int64_t>(info.seed));
      a.set("optimizer", std::string(optimizer.kind()));
      a.set("optimizer_steps", optimizer.steps());
      a.set("deck", info.deck);
      a.set("grid", info.grid);
      a.set("ranks", static_cast<std::int64_t>(info.ranks));
      a.set("data_size", static_cast<std::int64_t>(info.data_size));
      a.set("zero", static_cast<std::int64_t>(info.zero));
      a.set("tensors", static_cast<std::int64_t>(all.size()));
      for (const Slice& s : all) {
        std::string leaf;
        const Group parent = parent_group(root, s.path, &leaf);
        const Dataset ds = parent.create_dataset(leaf, ElementType::f32, dims_of(s.shape));
        // The tensor's own storage where it is host memory, a host copy in a device build;
        // written independently (each rank its own range, no two-phase aggregation).
        std::vector<float> copy;
        const float* values = s.local.defined() ? s.local.data() : nullptr;
        if (s.count > 0 && !kHostStorage) {
          copy = s.local.to_host();
          values = copy.data();
        }
        ds.write_range(static_cast<hsize_t>(s.offset), static_cast<hsize_t>(s.count),
                       ElementType::f32, values, false);
        const std::uint64_t sum = sum_over(comm, checksum_partial(values, s.offset, s.count));
        ds.attributes().set("checksum", checksum_string(sum));
        ds.attributes().set("kind", s.kind);
        report.bytes += static_cast<double>(numel(s.shape)) * 4.0;
      }
    }  // every group and dataset closed before the file
    f.close();
    // The data reaches the disk before the rename makes it a checkpoint: every rank syncs what
    // its node wrote (one node: the first does the work, the others find nothing dirty).
    sync_path(partial);
  });
  // Commit: the complete file takes its name, then `latest` moves to it atomically.
  comm::agree(comm, [&] {
    if (rank != 0) {
      return;
    }
    fs::rename(partial, report.file);
    sync_path(dir);
    const std::string tmp = dir + "/" + kLatestMarker + ".tmp";
    {
      std::ofstream marker(tmp, std::ios::trunc);
      marker << name << '\n';
      if (!marker.flush()) {
        throw Error(fmt::format("checkpoint: cannot write {}", tmp));
      }
    }
    sync_path(tmp);
    fs::rename(tmp, dir + "/" + kLatestMarker);
    sync_path(dir);
    prune(dir, keep, name);
  });
  report.seconds = clock.seconds();
  return report;
}

std::string resolve_restart(const std::string& restart, const std::string& dir) {
  if (restart != "auto") {
    return restart;
  }
  const std::string marker = dir + "/" + kLatestMarker;
  std::ifstream in(marker);
  if (!in) {
    return "";
  }
  std::string name;
  std::getline(in, name);
  if (checkpoint_step(name) < 0) {
    throw input_error(
        fmt::format("checkpoint.restart = \"auto\": {} holds \"{}\", not the name of "
                    "a checkpoint file",
                    marker, name));
  }
  const std::string file = dir + "/" + name;
  if (!fs::exists(file)) {
    throw input_error(fmt::format(
        "checkpoint.restart = \"auto\": {} names {}, which does not exist", marker, file));
  }
  return file;
}

CheckpointInfo load_checkpoint(const std::string& file, parallel::DataParallel& dp,
                               optim::Optimizer& optimizer, MPI_Comm comm) {
  int rank = 0;
  TESSERA_MPI_CHECK(MPI_Comm_rank(comm, &rank));
  CheckpointInfo info;
  if (!fs::exists(file)) {
    throw input_error(fmt::format("checkpoint: {}: no such file", file));
  }
  File f = [&] {
    try {
      return File::open_parallel(file, comm);
    } catch (const Error& e) {
      throw input_error("checkpoint: " + e.message());
    }
  }();
  const Group root = f.root();
  const Attributes a = root.attributes();
  std::vector<std::string> problems;
  if (!a.has("format") || a.get_string("format") != kCheckpointFormat) {
    throw input_error(
        fmt::format("checkpoint: {}: not a Tessera checkpoint (its root attribute "
                    "format is not \"{}\")",
                    file, kCheckpointFormat));
  }
  if (!a.has("format_version") || a.get_int("format_version") != kCheckpointVersion) {
    throw input_error(fmt::format(
        "checkpoint: {}: format_version {} is not one this Tessera reads (it reads {})", file,
        a.has("format_version") ? fmt::format("{}", a.get_int("format_version")) : "(missing)",
        kCheckpointVersion));
  }
  for (const char* key : {"step", "total_steps", "cursor_epoch", "cursor_batch", "rng_seed",
                          "optimizer_steps", "ranks", "data_size", "zero"}) {
    if (!a.has(key)) {
      problems.push_back(fmt::format("root attribute {} is missing", key));
    }
  }
  for (const char* key : {"optimizer", "deck", "grid"}) {
    if (!a.has(key)) {
      problems.push_back(fmt::format("root attribute {} is missing", key));
    }
  }
  if (problems.empty() && a.get_string("optimizer") != optimizer.kind()) {
    problems.push_back(
        fmt::format("it holds the state of optimizer \"{}\", the deck asks for "
                    "\"{}\"",
                    a.get_string("optimizer"), optimizer.kind()));
  }
  std::vector<Slice> all = slices(dp, optimizer, rank);
  // Every rank reads what it owns: whole tensors, or under ZeRO-1 its pieces' ranges.
  for (Slice& s : all) {
    if (s.whole_on_every_rank) {
      s.offset = 0;
      s.count = s.local.numel();
    }
  }
  std::vector<std::pair<const Slice*, std::vector<float>>> loaded;
  std::vector<std::uint64_t> partial_sums;
  std::vector<std::string> stored(all.size());  // pieces' stored checksums, checked once summed
  const auto check_sum = [&problems](const std::string& path, std::uint64_t sum,
                                     const std::string& expected) {
    if (checksum_string(sum) != expected) {
      problems.push_back(
          fmt::format("{}: checksum {} does not match the stored {} (the data is "
                      "corrupt)",
                      path, checksum_string(sum), expected));
    }
  };
  for (const Slice& s : all) {
    if (!root.has(s.path.substr(1))) {
      problems.push_back(fmt::format("{} is missing", s.path));
      partial_sums.push_back(0);
      continue;
    }
    const Dataset ds = root.open_dataset(s.path.substr(1));
    const std::vector<hsize_t> want = dims_of(s.shape);
    if (ds.shape() != want) {
      const std::vector<hsize_t> has = ds.shape();
      problems.push_back(fmt::format("{} has shape {}, the model's is {}", s.path,
                                     to_string(Shape(has.begin(), has.end())), to_string(s.shape)));
      partial_sums.push_back(0);
      continue;
    }
    // Straight into the tensor's storage where it is host memory (no copy: reading back is no
    // slower than writing); through a host vector in a device build.
    std::vector<float> values;
    float* into = s.local.data();
    if (!kHostStorage) {
      values.resize(static_cast<size_t>(s.count));
      into = values.data();
    }
    ds.read_boxes(
        flat_range_boxes(want, static_cast<hsize_t>(s.offset), static_cast<hsize_t>(s.count)),
        ElementType::f32, into);
    const std::uint64_t sum = checksum_partial(into, s.offset, s.count);
    if (!ds.attributes().has("checksum")) {
      problems.push_back(fmt::format("{} has no checksum attribute", s.path));
    } else if (s.whole_on_every_rank) {
      check_sum(s.path, sum, ds.attributes().get_string("checksum"));
    } else {
      stored[&s - all.data()] = ds.attributes().get_string("checksum");
    }
    partial_sums.push_back(s.whole_on_every_rank ? 0 : sum);
    if (!kHostStorage) {
      loaded.emplace_back(&s, std::move(values));
    }
  }
  // Pieces (ZeRO-1): the ranks' partial sums add up to each tensor's checksum.
  std::vector<std::uint64_t> sums(partial_sums.size());
  TESSERA_MPI_CHECK(MPI_Allreduce(partial_sums.data(), sums.data(), static_cast<int>(sums.size()),
                                  MPI_UINT64_T, MPI_SUM, comm));
  for (size_t i = 0; i < all.size(); ++i) {
    if (!stored[i].empty()) {
      check_sum(all[i].path, sums[i], stored[i]);
    }
  }
  if (!problems.empty()) {
    std::string list;
    for (const std::string& p : problems) {
      list += "\n  " + p;
    }
    throw input_error(fmt::format("checkpoint: {} does not fit this run ({} problem{}):{}", file,
                                  problems.size(), problems.size() == 1 ? "" : "s", list));
  }
  for (const auto& [s, values] : loaded) {
    s->local.copy_from_host(values);
  }
  optimizer.set_steps(a.get_int("optimizer_steps"));
  info.step = a.get_int("step");
  info.total_steps = a.get_int("total_steps");
  info.cursor = {a.get_int("cursor_epoch"), a.get_int("cursor_batch")};
  info.seed = static_cast<std::uint64_t>(a.get_int("rng_seed"));
  info.deck = a.get_string("deck");
  info.grid = a.get_string("grid");
  info.ranks = static_cast<int>(a.get_int("ranks"));
  info.data_size = static_cast<int>(a.get_int("data_size"));
  info.zero = static_cast<int>(a.get_int("zero"));
  return info;
}

}  // namespace tessera::io
