#include "tessera/io/checkpoint.hpp"

#include "tessera/core/strings.hpp"

#include "tessera/comm/agree.hpp"
#include "tessera/comm/watchdog.hpp"
#include "tessera/core/timer.hpp"
#include "tessera/io/checkpoint_reader.hpp"
#include "tessera/io/hdf5.hpp"
#include "tessera/io/output_file.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>

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

// Where a registry entry lives in the file.
std::string dataset_path(const parallel::StateEntry& e) {
  return e.state.empty() ? model_path(e.name) : optimizer_path(e.name, e.state);
}

Box file_box(const Block& b) {
  return {std::vector<hsize_t>(b.global_offset.begin(), b.global_offset.end()),
          std::vector<hsize_t>(b.count.begin(), b.count.end())};
}

// Row-major flat index of `index` in a tensor of `shape`.
Index flat_index(const Shape& index, const Shape& shape) {
  Index flat = 0;
  for (size_t d = 0; d < shape.size(); ++d) {
    flat = flat * shape[d] + index[d];
  }
  return flat;
}

// Elements of one row (the innermost dimension's run) of block `b`.
Index row_length(const Block& b) {
  return b.count.empty() ? 1 : b.count.back();
}

// Calls f(local_flat, global_flat, box_flat) for the first element of every row of block `b` of an
// entry whose local block has shape `local` and whose global tensor has shape `global`.
template <class F>
void for_each_row(const Block& b, const Shape& local, const Shape& global, F&& f) {
  const size_t nd = b.count.size();
  const Index row = row_length(b);
  Index rows = 1;
  for (size_t d = 0; d + 1 < nd; ++d) {
    rows *= b.count[d];
  }
  Shape at_local = b.local_offset;
  Shape at_global = b.global_offset;
  for (Index r = 0; r < rows && row > 0; ++r) {
    Index rest = r;
    for (size_t d = nd - 1; d-- > 0;) {  // the row's index in every dimension but the last
      at_local[d] = b.local_offset[d] + rest % b.count[d];
      at_global[d] = b.global_offset[d] + rest % b.count[d];
      rest /= b.count[d];
    }
    f(flat_index(at_local, local), flat_index(at_global, global), r * row);
  }
}

// Whether block `b` is one contiguous run of the local block of shape `local` (every dimension
// after the first partial one whole, every one before it of extent 1), so that HDF5 reads and
// writes it in place.
bool contiguous(const Block& b, const Shape& local) {
  bool inner_whole = true;  // every dimension after d is whole
  for (size_t d = b.count.size(); d-- > 0;) {
    if (!inner_whole && b.count[d] != 1) {
      return false;
    }
    inner_whole = inner_whole && b.count[d] == local[d];
  }
  return true;
}

// Block `b` of entry `e` in box order: a pointer into `values` (the entry's elements [e.first,
// ...) of its local block) where the block is contiguous there, else gathered into `scratch`.
const float* block_values(const parallel::StateEntry& e, const Shape& local, const Block& b,
                          const float* values, std::vector<float>& scratch) {
  if (contiguous(b, local)) {
    return values + (flat_index(b.local_offset, local) - e.first);
  }
  scratch.resize(static_cast<size_t>(numel(b.count)));
  const auto bytes = static_cast<size_t>(row_length(b)) * sizeof(float);
  for_each_row(b, local, e.layout.global_shape(), [&](Index l, Index, Index at) {
    std::memcpy(scratch.data() + at, values + (l - e.first), bytes);
  });
  return scratch.data();
}

// Puts block `b`, read in box order into `box`, where it belongs in `values`.
void scatter_block(const parallel::StateEntry& e, const Shape& local, const Block& b,
                   const float* box, float* values) {
  const auto bytes = static_cast<size_t>(row_length(b)) * sizeof(float);
  for_each_row(b, local, e.layout.global_shape(), [&](Index l, Index, Index at) {
    std::memcpy(values + (l - e.first), box + at, bytes);
  });
}

// The checksum terms of block `b` (its values in box order).
std::uint64_t block_checksum(const parallel::StateEntry& e, const Shape& local, const Block& b,
                             const float* box) {
  std::uint64_t sum = 0;
  const Index row = row_length(b);
  for_each_row(b, local, e.layout.global_shape(),
               [&](Index, Index g, Index at) { sum += checksum_partial(box + at, g, row); });
  return sum;
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

std::string describe_last_good(const std::string& dir) {
  const std::string latest = dir + "/" + kLatestMarker;
  return fs::exists(latest) ? latest + " still names the last good checkpoint"
                            : "there is no earlier checkpoint";
}

SaveReport save_checkpoint(const std::string& dir, const CheckpointInfo& info,
                           const parallel::StateRegistry& state, comm::Communicator& comm,
                           int keep) {
  const Stopwatch clock;
  const int rank = comm.rank();
  const std::string name = checkpoint_file_name(info.step);
  const std::string partial = dir + "/" + partial_file_name(info.step);
  comm::agree(comm, [&] {
    if (rank == 0) {
      std::error_code ec;
      fs::create_directories(dir, ec);
      if (ec) {
        throw write_error(
            fmt::format("checkpoint.dir = \"{}\": cannot create it: {}", dir, ec.message()));
      }
    }
  });
  const std::vector<parallel::StateEntry>& all = state.entries();
  SaveReport report;
  report.file = dir + "/" + name;
  // Writing. A rank's failure (a full disk, an I/O error) is noted, not thrown: every rank goes on
  // through HDF5's collective calls to the file's close — a rank that left early would leave the
  // others waiting there forever. After each tensor the ranks learn whether any has failed and
  // stop together; then the partial file goes, and the previous checkpoint and `latest` stay.
  std::string failure;
  const auto attempt = [&failure](const auto& work) {
    if (!failure.empty()) {
      return;
    }
    try {
      work();
    } catch (const std::exception& e) {
      failure = e.what();
    }
  };
  const auto any_failed = [&] {
    int failed = failure.empty() ? 0 : 1;
    comm.allreduce(comm::Buffer(&failed, 1), {comm::ReduceOp::max})->wait();
    return failed != 0;
  };
  // Room for it first: the tensors' bytes and HDF5's metadata, on the file system rank 0 sees (one
  // file: every rank writes into the same one).
  double payload = 0;
  for (const parallel::StateEntry& e : all) {
    payload += static_cast<double>(numel(e.layout.global_shape())) * 4.0;
  }
  const double needed = hdf5_bytes_needed(payload);
  comm::agree(comm, [&] {
    // TESSERA_TEST_NO_SPACE_CHECK=1 (tests only) skips it, to meet a disk that fills mid-write.
    if (rank != 0 || std::getenv("TESSERA_TEST_NO_SPACE_CHECK") != nullptr) {
      return;
    }
    const FreeSpace space = free_space_for(partial);
    const double free_bytes = static_cast<double>(space.bytes);
    if (free_bytes < needed) {
      throw write_error(fmt::format(
          "checkpoint: no space left on device for {}: {} has {:.1f} MiB free, the checkpoint "
          "needs {:.1f} MiB; nothing was written, {}",
          report.file, dir, free_bytes / 1048576.0, needed / 1048576.0, describe_last_good(dir)));
    }
  });
  std::optional<File> f;
  attempt([&] { f.emplace(File::create(partial, comm.mpi_comm())); });
  if (!any_failed()) {  // H5Fcreate is collective: a rank's failure is every rank's
    {
      const Group root = f->root();
      attempt([&] {
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
        a.set("optimizer", info.optimizer);
        a.set("optimizer_steps", info.optimizer_steps);
        a.set("deck", info.deck);
        a.set("grid", info.grid);
        a.set("ranks", static_cast<std::int64_t>(info.ranks));
        a.set("data_size", static_cast<std::int64_t>(info.data_size));
        a.set("zero", static_cast<std::int64_t>(info.zero));
        a.set("tensors", static_cast<std::int64_t>(all.size()));
      });
      std::vector<float> scratch;
      for (const parallel::StateEntry& e : all) {
        if (any_failed()) {
          break;
        }
        // Every rank creates every dataset (HDF5 metadata is collective); the owners of its
        // elements write them, each block independently, from where the rank's layout holds them.
        const Shape& shape = e.layout.global_shape();
        std::uint64_t sum = 0;
        std::optional<Dataset> ds;
        attempt([&] {
          std::string leaf;
          const Group parent = parent_group(root, dataset_path(e), &leaf);
          ds.emplace(parent.create_dataset(leaf, ElementType::f32,
                                           std::vector<hsize_t>(shape.begin(), shape.end())));
          if (e.owner && !e.blocks.empty()) {
            const Shape local = e.layout.local_shape(state.place());
            // The tensor's own storage on the host, a host copy of it in a CUDA build.
            const Tensor::HostView values = e.local.host_view();
            for (const Block& b : e.blocks) {
              const float* box = block_values(e, local, b, values.data(), scratch);
              ds->write(file_box(b), ElementType::f32, box, false);
              sum += block_checksum(e, local, b, box);
            }
          }
        });
        comm.allreduce(comm::Buffer(&sum, 1))->wait();
        attempt([&] {
          ds->attributes().set("checksum", checksum_string(sum));
          ds->attributes().set("kind", std::string(parallel::state_kind_name(e.kind)));
        });
        report.bytes += static_cast<double>(numel(shape)) * 4.0;
      }
    }  // every group and dataset closed before the file
    // HDF5 flushes its metadata when the file closes, collectively, and does not survive a rank
    // whose flush fails (the ranks part ways inside it). After a failed write the data is
    // worthless: rank 0 empties the file first, so the flush finds room on a full disk.
    if (any_failed() && rank == 0) {
      (void)truncate(partial.c_str(), 0);
    }
    comm.barrier()->wait();
    attempt([&] {
      const comm::watchdog::Blocked blocked;  // a close that hangs all the same ends the job
      f->close();
    });
    f.reset();  // a file whose close failed is let go (HDF5 keeps it until H5close)
    // The data reaches the disk before the rename makes it a checkpoint: every rank syncs what
    // its node wrote (one node: the first does the work, the others find nothing dirty).
    attempt([&] { sync_path(partial); });
  }
  const bool failed = any_failed();
  if (failed && rank == 0) {
    std::error_code ec;
    fs::remove(partial, ec);  // nothing half-written stays behind
  }
  comm::agree(comm, [&] {
    if (!failure.empty()) {
      throw write_error(
          fmt::format("checkpoint: cannot write {} ({}); the partial file is "
                      "removed, {}",
                      report.file, failure, describe_last_good(dir)));
    }
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
        const int error = errno;
        marker.close();
        std::error_code ec;
        fs::remove(tmp, ec);
        throw write_error(fmt::format("checkpoint: cannot write {} ({}); {}", tmp,
                                      std::strerror(error), describe_last_good(dir)));
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

std::vector<std::string> checkpoints_in(const std::string& dir) {
  std::vector<std::pair<std::int64_t, std::string>> found;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (const std::int64_t step = checkpoint_step(name); step >= 0) {
      found.emplace_back(step, it->path().string());
    }
  }
  std::sort(found.rbegin(), found.rend());
  std::vector<std::string> files;
  for (auto& [step, file] : found) {
    files.push_back(std::move(file));
  }
  return files;
}

std::string resolve_restart(const std::string& restart, const std::string& dir, std::string* note) {
  if (restart != "auto") {
    return restart;
  }
  const std::string marker = dir + "/" + kLatestMarker;
  try {
    refuse_special_file(marker);
    if (std::error_code ec; fs::is_directory(marker, ec)) {
      throw input_error(marker + ": is a folder, not a file");
    }
  } catch (const Error& e) {
    throw input_error("checkpoint.restart = \"auto\": " + e.message());
  }
  std::ifstream in(marker);
  if (!in) {
    // latest lost (deleted, or a copy of the folder without it): starting afresh would overwrite
    // the checkpoints there. The newest one instead.
    const std::vector<std::string> files = checkpoints_in(dir);
    if (files.empty()) {
      return "";
    }
    if (note != nullptr) {
      *note = fmt::format("{} is missing but {} checkpoint{} there: resuming from the newest, {}",
                          marker, files.size(), files.size() == 1 ? " is" : "s are",
                          fs::path(files.front()).filename().string());
    }
    return files.front();
  }
  const LatestMarker latest = read_latest(in);
  const std::string& name = latest.name;
  if (!latest.clean) {
    throw input_error(
        fmt::format("checkpoint.restart = \"auto\": {} holds more than the one line naming a "
                    "checkpoint file (it starts \"{}\")",
                    marker, quoted_excerpt(name)));
  }
  if (checkpoint_step(name) < 0) {
    throw input_error(
        fmt::format("checkpoint.restart = \"auto\": {} holds \"{}\", not the name of "
                    "a checkpoint file",
                    marker, quoted_excerpt(name)));
  }
  const std::string file = dir + "/" + name;
  if (!fs::exists(file)) {
    throw input_error(fmt::format(
        "checkpoint.restart = \"auto\": {} names {}, which does not exist", marker, file));
  }
  return file;
}

CheckpointHeader read_header(const File& f, const std::vector<TensorEntry>& tensors,
                             const std::string& optimizer) {
  const Group root = f.root();
  CheckpointHeader header;
  // Types and ranges first: every value read below is then one of the right kind.
  header.problems = root_attribute_problems(root);
  if (!header.problems.empty()) {
    return header;
  }
  const Attributes a = root.attributes();
  CheckpointInfo& info = header.info.emplace();
  info.step = a.get_int("step");
  info.total_steps = a.get_int("total_steps");
  info.cursor = {a.get_int("cursor_epoch"), a.get_int("cursor_batch")};
  info.seed = static_cast<std::uint64_t>(a.get_int("rng_seed"));
  info.deck = a.get_string("deck");
  info.grid = a.get_string("grid");
  info.ranks = static_cast<int>(a.get_int("ranks"));
  info.data_size = static_cast<int>(a.get_int("data_size"));
  info.zero = static_cast<int>(a.get_int("zero"));
  info.optimizer = a.get_string("optimizer");
  info.optimizer_steps = a.get_int("optimizer_steps");
  if (!optimizer.empty() && info.optimizer != optimizer) {
    header.problems.push_back(
        fmt::format("it holds the state of optimizer \"{}\", the deck asks for \"{}\"",
                    info.optimizer, optimizer));
  }
  // The checks that need no model are the ones tessera-ckpt verify makes, worded the same.
  for (std::string& p : root_problems(root, tensors)) {
    header.problems.push_back(std::move(p));  // the root attributes are sound: `tensors` disagrees
  }
  return header;
}

namespace {

// The problems of a checkpoint's metadata and tensor list against `state` and `optimizer`, the
// same on every rank (they read the same file). Fills `info` from the root attributes.
std::vector<std::string> check_contents(const File& f, const parallel::StateRegistry& state,
                                        const std::string& optimizer, CheckpointInfo& info) {
  std::vector<TensorEntry> tensors = checkpoint_tensors(f);
  CheckpointHeader header = read_header(f, tensors, optimizer);
  if (!header.info) {
    return header.problems;  // the root attributes are unsound: nothing below can be judged
  }
  info = *header.info;
  std::vector<std::string> problems = std::move(header.problems);
  std::map<std::string, TensorEntry> stored;
  for (TensorEntry& t : tensors) {
    stored[t.path] = std::move(t);
  }
  for (const parallel::StateEntry& e : state.entries()) {
    const std::string path = dataset_path(e);
    const auto it = stored.find(path);
    if (it == stored.end()) {
      problems.push_back(fmt::format("{} is missing", path));
      continue;
    }
    const TensorEntry& t = it->second;
    const Shape& want = e.layout.global_shape();
    std::optional<std::uint64_t> checksum;
    const std::vector<std::string> own = tensor_problems(t, checksum);
    problems.insert(problems.end(), own.begin(), own.end());
    if (t.error.empty() && Shape(t.shape.begin(), t.shape.end()) != want) {
      problems.push_back(fmt::format("{} has shape {}, the model's is {}", path,
                                     to_string(Shape(t.shape.begin(), t.shape.end())),
                                     to_string(want)));
    }
    stored.erase(it);
  }
  for (const auto& [path, t] : stored) {
    if (optimizer.empty() && path.rfind("/optimizer/", 0) == 0) {
      continue;  // the model alone is loaded
    }
    problems.push_back(
        fmt::format("{} is not a tensor of this run's model or optimizer", printable(path)));
  }
  return problems;
}

[[noreturn]] void throw_problems(const std::string& file,
                                 const std::vector<std::string>& problems) {
  std::string list;
  for (const std::string& p : problems) {
    list += "\n  " + p;
  }
  throw input_error(fmt::format("checkpoint: {} does not fit this run ({} problem{}):{}", file,
                                problems.size(), problems.size() == 1 ? "" : "s", list));
}

}  // namespace

CheckpointInfo load_checkpoint(const std::string& file, const parallel::StateRegistry& state,
                               const std::string& optimizer, comm::Communicator& comm) {
  CheckpointInfo info;
  std::unique_ptr<File> f;
  // The file, its format and its tensors against the run's: every rank reads them, and they agree.
  comm::agree(comm, [&] {
    try {
      f = std::make_unique<File>(open_checkpoint(file));
    } catch (const Error& e) {
      throw input_error("checkpoint: " + e.message());
    }
    if (const std::string problem = format_problem(*f); !problem.empty()) {
      throw input_error(fmt::format("checkpoint: {}: {}", file, problem));
    }
    const std::vector<std::string> problems = check_contents(*f, state, optimizer, info);
    if (!problems.empty()) {
      throw_problems(file, problems);
    }
  });
  // Every rank reads the boxes its layout holds; the owners' checksum terms add up, over the
  // trainer, to each tensor's stored checksum.
  const std::vector<parallel::StateEntry>& all = state.entries();
  std::vector<std::uint64_t> sums(all.size(), 0);
  std::vector<std::uint64_t> nonfinite(all.size(), 0);  // NaN or infinite elements (owners count)
  std::vector<std::uint64_t> negative(all.size(), 0);   // below zero (owners count)
  std::vector<std::uint64_t> stored(all.size(), 0);
  comm::agree(comm, [&] {
    const Group root = f->root();
    std::vector<float> scratch;
    for (size_t i = 0; i < all.size(); ++i) {
      const parallel::StateEntry& e = all[i];
      const Dataset ds = root.open_dataset(dataset_path(e).substr(1));
      // Well-formed: check_contents refused any other.
      stored[i] = parse_checksum(ds.attributes().get_string("checksum")).value_or(0);
      if (e.blocks.empty()) {
        continue;
      }
      const Shape local = e.layout.local_shape(state.place());
      // Read into the tensor's storage on the host, into a host copy of it in a CUDA build.
      const Tensor::HostView values = e.local.host_view();
      for (const Block& b : e.blocks) {
        // In place where the block is contiguous in the rank's storage, else through `scratch`.
        const bool direct = contiguous(b, local);
        float* box = direct ? values.data() + (flat_index(b.local_offset, local) - e.first)
                            : (scratch.resize(static_cast<size_t>(numel(b.count))), scratch.data());
        ds.read(file_box(b), ElementType::f32, box);
        if (e.owner) {
          sums[i] += block_checksum(e, local, b, box);
          const Index n = numel(b.count);
          for (Index k = 0; k < n; ++k) {
            nonfinite[i] += std::isfinite(box[k]) ? 0 : 1;
            negative[i] += box[k] < 0.0F ? 1 : 0;
          }
        }
        if (!direct) {
          scatter_block(e, local, b, box, values.data());
        }
      }
      e.local.store(values);
    }
  });
  comm.allreduce(comm::Buffer(sums))->wait();
  comm.allreduce(comm::Buffer(nonfinite))->wait();
  comm.allreduce(comm::Buffer(negative))->wait();
  comm::agree(comm, [&] {
    std::vector<std::string> problems;
    for (size_t i = 0; i < all.size(); ++i) {
      const std::string path = dataset_path(all[i]);
      if (std::string p = data_problem(path, sums[i], stored[i], nonfinite[i],
                                       nonnegative_tensor(path) ? negative[i] : 0);
          !p.empty()) {
        problems.push_back(std::move(p));
      }
    }
    if (!problems.empty()) {
      throw_problems(file, problems);
    }
  });
  return info;
}

}  // namespace tessera::io
