#include "commands.hpp"

#include "gray_scott.hpp"
#include "idx.hpp"
#include "tessera/comm/agree.hpp"
#include "tessera/comm/cartesian.hpp"
#include "tessera/comm/communicator.hpp"
#include "tessera/core/check.hpp"
#include "tessera/core/signals.hpp"
#include "tessera/core/strings.hpp"
#include "tessera/core/timer.hpp"
#include "tessera/io/dataset.hpp"
#include "tessera/io/hdf5.hpp"
#include "tessera/io/output_file.hpp"

#include <fcntl.h>
#include <fmt/ranges.h>
#include <mpi.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <set>
#include <tuple>

namespace tessera::data {
namespace {

using comm::rank_of;

// Writes to `path`.partial and renames into place once complete, so that a file that exists
// under its name is always whole.
std::string partial_name(const std::string& path) {
  return path + ".partial";
}

// "nothing written to OUT": what a stop signal leaves (signals::throw_if_stopped).
std::string nothing_written(const std::string& out) {
  return fmt::format("nothing written to {}", out);
}

// Runs `write`, which writes `tmp` (created here: a name that cannot be written is refused naming
// `out`); when it fails or is stopped, removes `tmp` (nothing half-written is left).
void removing_on_failure(const std::string& out, const std::string& tmp,
                         const std::function<void()>& write) {
  try {
    io::create_partial(out, tmp);
    write();
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    throw;
  }
}

const std::vector<std::string> kFashionClasses{"T-shirt/top", "Trouser",   "Pullover", "Dress",
                                               "Coat",        "Sandal",    "Shirt",    "Sneaker",
                                               "Bag",         "Ankle boot"};

void write_root_attributes(const io::Group& root, const std::string& source,
                           const std::string& licence) {
  root.attributes().set("format", std::string(io::kDatasetFormat));
  root.attributes().set("format_version", io::kDatasetVersion);
  root.attributes().set("source", source);
  root.attributes().set("licence", licence);
}

}  // namespace

void import_fashion_mnist(const ImportOptions& o) {
  struct Split {
    const char* name;
    const char* images;
    const char* labels;
    io::ElementType type = io::ElementType::u8;
    data::IdxArray x, y;
  };
  Split splits[] = {
      {"train", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", {}, {}, {}},
      {"test", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", {}, {}, {}}};
  const bool root = rank_of(MPI_COMM_WORLD) == 0;
  comm::agree(MPI_COMM_WORLD, [&] {
    if (!root) {
      return;
    }
    std::vector<std::string> inputs;
    for (const Split& s : splits) {
      inputs.push_back(o.source + "/" + s.images);
      inputs.push_back(o.source + "/" + s.labels);
    }
    io::check_output_file(o.output, inputs);
    for (Split& s : splits) {
      const std::string ipath = o.source + "/" + s.images;
      const std::string lpath = o.source + "/" + s.labels;
      signals::throw_if_stopped(nothing_written(o.output));
      s.x = read_idx(ipath, 3);
      s.y = read_idx(lpath, 1);
      if (s.x.dims[0] != s.y.dims[0]) {
        throw input_error(fmt::format("{} holds {} images but {} holds {} labels", ipath,
                                      s.x.dims[0], lpath, s.y.dims[0]));
      }
      if (s.x.dims[1] != 28 || s.x.dims[2] != 28) {
        throw input_error(fmt::format("{}: images are {}x{}, Fashion-MNIST's are 28x28", ipath,
                                      s.x.dims[1], s.x.dims[2]));
      }
      for (std::size_t i = 0; i < s.y.values.size(); ++i) {
        if (s.y.values[i] > 9) {
          throw input_error(
              fmt::format("{}: label {} of sample {} is not a class 0-9", lpath, s.y.values[i], i));
        }
      }
    }
    // Normalisation from the training images: x_float = (x / 255 - mean) / std.
    double sum = 0.0;
    double sum2 = 0.0;
    for (std::uint8_t v : splits[0].x.values) {
      const double f = v / 255.0;
      sum += f;
      sum2 += f * f;
    }
    const auto n = static_cast<double>(splits[0].x.values.size());
    const double mean = sum / n;
    const double stddev = std::sqrt(std::max(0.0, sum2 / n - mean * mean));

    std::vector<Split*> written{&splits[0], &splits[1]};
    Split validation{"validation", "", "", io::ElementType::u8, {}, {}};
    if (o.validation > 0) {
      const std::uint32_t images = splits[0].x.dims[0];
      if (o.validation >= images) {
        throw input_error(fmt::format("--validation {} leaves no training image of the {}",
                                      o.validation, images));
      }
      const std::uint32_t keep = images - o.validation;
      const size_t per = 28 * 28;
      validation.x.dims = {o.validation, 28, 28};
      validation.x.values.assign(splits[0].x.values.begin() + keep * per, splits[0].x.values.end());
      validation.y.dims = {o.validation};
      validation.y.values.assign(splits[0].y.values.begin() + keep, splits[0].y.values.end());
      splits[0].x.dims[0] = keep;
      splits[0].x.values.resize(keep * per);
      splits[0].y.dims[0] = keep;
      splits[0].y.values.resize(keep);
      written.push_back(&validation);
    }
    io::make_output_folder(o.output);
    const std::string tmp = partial_name(o.output);
    removing_on_failure(o.output, tmp, [&] {
      io::File f = io::File::create(tmp, MPI_COMM_SELF);
      {
        const io::Group r = f.root();
        write_root_attributes(r, "Fashion-MNIST (Zalando Research), imported from " + o.source,
                              "MIT");
        for (Split* sp : written) {
          signals::throw_if_stopped(nothing_written(o.output));
          Split& s = *sp;
          const io::Group g = r.create_group(s.name);
          const auto count = static_cast<hsize_t>(s.x.dims[0]);
          const io::Dataset x =
              g.create_dataset("x", io::ElementType::u8, {count, 1, 28, 28}, {1, 1, 28, 28});
          x.write({{0, 0, 0, 0}, {count, 1, 28, 28}}, io::ElementType::u8, s.x.values.data(),
                  false);
          std::vector<std::int32_t> labels(s.y.values.begin(), s.y.values.end());
          const io::Dataset y = g.create_dataset("y", io::ElementType::i32, {count});
          y.write({{0}, {count}}, io::ElementType::i32, labels.data(), false);
          const io::Attributes a = g.attributes();
          a.set("task", std::string("classification"));
          a.set("classes", kFashionClasses);
          a.set("scale", 1.0 / 255.0);
          a.set("mean", std::vector<double>{mean});
          a.set("std", std::vector<double>{stddev});
        }
      }
      f.close();
      signals::throw_if_stopped(nothing_written(o.output));
      io::write_checksums(tmp);
      signals::throw_if_stopped(nothing_written(o.output));
      std::filesystem::rename(tmp, o.output);
    });
    std::printf(
        "tessera-data: wrote %s: train %u, test %u%s samples of 1x28x28 uint8 (mean %.4f, "
        "std %.4f)\n",
        o.output.c_str(), splits[0].x.dims[0], splits[1].x.dims[0],
        o.validation > 0 ? fmt::format(", validation {}", o.validation).c_str() : "", mean, stddev);
  });
}

namespace {

// Chunks of the token datasets: 1 MiB (or the whole stream when it is shorter).
constexpr hsize_t kTokenChunk = hsize_t{1} << 20;

// A byte-level token stream's two splits.
struct TokenSplits {
  std::vector<std::uint8_t> train, validation;
};

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

// The bytes of `files`, concatenated in order. `who` names the command in messages.
std::vector<std::uint8_t> read_files(const std::vector<std::string>& files,
                                     const std::string& who) {
  std::vector<std::uint8_t> bytes;
  for (const std::string& path : files) {
    auto bad = [&](const std::string& what) {
      return input_error(fmt::format("{}: {}: {}", who, path, what));
    };
    std::error_code ec;
    const auto status = std::filesystem::status(path, ec);
    if (status.type() == std::filesystem::file_type::not_found) {
      throw bad("no such file");
    }
    if (ec) {
      throw bad(fmt::format("cannot open ({})", ec.message()));
    }
    if (std::filesystem::is_directory(status)) {
      throw bad("is a directory, not a text file");
    }
    const std::unique_ptr<std::FILE, FileCloser> f(std::fopen(path.c_str(), "rb"));
    if (!f) {
      throw bad(fmt::format("cannot open ({})", std::strerror(errno)));
    }
    std::vector<std::uint8_t> buffer(size_t{1} << 20);
    size_t got = 0;
    while ((got = std::fread(buffer.data(), 1, buffer.size(), f.get())) > 0) {
      bytes.insert(bytes.end(), buffer.begin(), buffer.begin() + static_cast<std::ptrdiff_t>(got));
    }
    if (std::ferror(f.get()) != 0) {
      throw bad(fmt::format("cannot read ({})", std::strerror(errno)));
    }
  }
  return bytes;
}

// Block i of the text goes to validation iff floor((i+1)·f) > floor(i·f): every 1/f-th block,
// spread over the text, the same for the same f.
bool validation_block(std::uint64_t block, double fraction) {
  const auto i = static_cast<double>(block);
  return std::floor((i + 1.0) * fraction) > std::floor(i * fraction);
}

// The first block validation takes at fraction f > 0: about 1/f − 1, settled by the rule itself.
double first_validation_block(double fraction) {
  double block = std::max(0.0, std::ceil(1.0 / fraction) - 3.0);
  while (block < 9e15 && !validation_block(static_cast<std::uint64_t>(block), fraction)) {
    block += 1.0;
  }
  return block;
}

// Deals `text`'s blocks to the two splits and checks that each split written holds 2 tokens.
TokenSplits split_blocks(const std::vector<std::uint8_t>& text, double fraction,
                         const std::string& who) {
  TokenSplits s;
  const std::uint64_t blocks = (text.size() + kTextBlockBytes - 1) / kTextBlockBytes;
  for (std::uint64_t b = 0; b < blocks; ++b) {
    const auto begin = text.begin() + static_cast<std::ptrdiff_t>(b * kTextBlockBytes);
    const auto end = text.begin() + static_cast<std::ptrdiff_t>(std::min<std::uint64_t>(
                                        (b + 1) * kTextBlockBytes, text.size()));
    std::vector<std::uint8_t>& to = validation_block(b, fraction) ? s.validation : s.train;
    to.insert(to.end(), begin, end);
  }
  if (fraction > 0.0 && s.validation.empty()) {
    throw input_error(fmt::format(
        "{}: --validation {} leaves the validation split empty: its first block is block {:.15g} "
        "(from byte {:.15g}), but the text has {} bytes; give more text or a larger --validation",
        who, fraction, first_validation_block(fraction),
        first_validation_block(fraction) * static_cast<double>(kTextBlockBytes), text.size()));
  }
  for (const auto& [name, tokens] :
       {std::pair<const char*, const std::vector<std::uint8_t>*>{"train", &s.train},
        {"validation", &s.validation}}) {
    if ((!tokens->empty() || std::strcmp(name, "train") == 0) && tokens->size() < 2) {
      throw input_error(
          fmt::format("{}: the {} split would hold {} token(s), fewer than the 2 a split needs "
                      "(text of {} byte(s), blocks of {}, --validation {})",
                      who, name, tokens->size(), text.size(), kTextBlockBytes, fraction));
    }
  }
  return s;
}

// Writes the splits (vocab 256, tokenizer "bytes") to `output` via its partial name.
void write_token_file(const std::string& output, const TokenSplits& s, const std::string& source,
                      const std::string& licence) {
  io::make_output_folder(output);
  const std::string tmp = partial_name(output);
  removing_on_failure(output, tmp, [&] {
    io::File f = io::File::create(tmp, MPI_COMM_SELF);
    {
      const io::Group r = f.root();
      write_root_attributes(r, source, licence);
      for (const auto& [name, tokens] :
           {std::pair<const char*, const std::vector<std::uint8_t>*>{"train", &s.train},
            {"validation", &s.validation}}) {
        if (tokens->empty()) {
          continue;  // no validation split (--validation 0)
        }
        const io::Group g = r.create_group(name);
        const auto n = static_cast<hsize_t>(tokens->size());
        const io::Dataset d =
            g.create_dataset("tokens", io::ElementType::u8, {n}, {std::min(n, kTokenChunk)});
        d.write({{0}, {n}}, io::ElementType::u8, tokens->data(), false);
        const io::Attributes a = g.attributes();
        a.set("task", std::string("language_modeling"));
        a.set("vocab", std::int64_t{256});
        a.set("tokenizer", std::string("bytes"));
      }
    }
    f.close();
    signals::throw_if_stopped(nothing_written(output));
    io::write_checksums(tmp);
    signals::throw_if_stopped(nothing_written(output));
    std::filesystem::rename(tmp, output);
  });
}

// Checks --validation (every rank: it is the command line), then on rank 0 checks `output` (none
// of `inputs`), gets the text from `read`, splits it, writes `output` and prints one line.
void import_bytes(const std::string& who, double fraction, const std::string& output,
                  const std::vector<std::string>& inputs,
                  const std::function<std::vector<std::uint8_t>()>& read,
                  const std::function<std::string()>& source, const std::string& licence) {
  TokenSplits s;
  comm::agree(MPI_COMM_WORLD, [&] {
    if (!(fraction >= 0.0 && fraction <= 0.5)) {
      throw input_error(fmt::format("{}: --validation {} must be in [0, 0.5]", who, fraction));
    }
    if (rank_of(MPI_COMM_WORLD) != 0) {
      return;
    }
    io::check_output_file(output, inputs);
    s = split_blocks(read(), fraction, who);
    signals::throw_if_stopped(nothing_written(output));
    write_token_file(output, s, source(), licence);
  });
  if (rank_of(MPI_COMM_WORLD) == 0) {
    if (s.validation.empty()) {
      std::printf(
          "tessera-data: wrote %s: train %zu tokens, no validation split (vocab 256, "
          "bytes)\n",
          output.c_str(), s.train.size());
    } else {
      std::printf("tessera-data: wrote %s: train %zu, validation %zu tokens (vocab 256, bytes)\n",
                  output.c_str(), s.train.size(), s.validation.size());
    }
  }
}

// The path of executable `name` on PATH, or "" when there is none.
std::string find_program(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::string dirs = path != nullptr ? path : "";
  size_t begin = 0;
  for (;;) {
    const size_t end = dirs.find(':', begin);
    std::string dir =
        dirs.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
    const std::string candidate = (dir.empty() ? std::string(".") : dir) + "/" + name;
    std::error_code ec;
    if (std::filesystem::is_regular_file(candidate, ec) && ::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
    if (end == std::string::npos) {
      return "";
    }
    begin = end + 1;
  }
}

// Runs `argv` (argv[0] a path) with stdin from /dev/null and COLUMNS=80 in its environment, and
// returns what it writes to stdout. Throws naming `what` when it cannot run or fails.
std::vector<std::uint8_t> program_output(const std::vector<std::string>& argv,
                                         const std::string& what) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    throw Error(fmt::format("{}: pipe: {}", what, std::strerror(errno)));
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  std::vector<char*> args;
  for (const std::string& a : argv) {
    args.push_back(const_cast<char*>(a.c_str()));
  }
  args.push_back(nullptr);
  // bible breaks lines at COLUMNS − 1: fix it, so the text does not depend on the terminal.
  std::vector<std::string> env_strings{"COLUMNS=80"};
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "COLUMNS=", 8) != 0) {
      env_strings.emplace_back(*e);
    }
  }
  std::vector<char*> env;
  for (std::string& e : env_strings) {
    env.push_back(e.data());
  }
  env.push_back(nullptr);
  pid_t pid = 0;
  const int spawned =
      posix_spawn(&pid, argv[0].c_str(), &actions, nullptr, args.data(), env.data());
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);
  std::vector<std::uint8_t> out;
  if (spawned == 0) {
    std::vector<std::uint8_t> buffer(size_t{1} << 16);
    for (;;) {
      const ssize_t n = ::read(fds[0], buffer.data(), buffer.size());
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n <= 0) {
        break;
      }
      out.insert(out.end(), buffer.begin(), buffer.begin() + n);
    }
  }
  ::close(fds[0]);
  if (spawned != 0) {
    throw Error(fmt::format("{}: cannot run {}: {}", what, argv[0], std::strerror(spawned)));
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw Error(fmt::format("{}: `{}` failed ({} {})", what, fmt::join(argv, " "),
                            WIFEXITED(status) ? "exit status" : "signal",
                            WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status)));
  }
  return out;
}

std::string joined(const std::vector<std::string>& v) {
  return fmt::format("{}", fmt::join(v, ", "));
}

}  // namespace

void import_text(const TextImportOptions& o) {
  const std::string who = "tessera-data import text";
  import_bytes(
      who, o.validation, o.output, o.files,
      [&] {
        std::vector<std::uint8_t> text = read_files(o.files, who);
        if (text.empty()) {
          throw input_error(
              fmt::format("{}: {}: the input is empty (0 bytes)", who, joined(o.files)));
        }
        return text;
      },
      [&] {
        return fmt::format(
            "text files {} (tessera-data import text: {}-byte blocks, validation "
            "fraction {})",
            joined(o.files), kTextBlockBytes, o.validation);
      },
      "unspecified (that of the text files)");
}

void import_kjv(const KjvImportOptions& o) {
  const std::string who = "tessera-data import kjv";
  const std::vector<std::string> args{"Gen1:1-Rev22:21"};
  std::string version;
  import_bytes(
      who, o.validation, o.output, {},
      [&] {
        const std::string bible = find_program("bible");
        if (bible.empty()) {
          throw input_error(who +
                            ": the `bible` program is not installed (apt-get install bible-kjv; "
                            "tools/setup.sh installs it)");
        }
        std::vector<std::uint8_t> text = program_output({bible, args[0]}, who);
        if (text.empty()) {
          throw input_error(fmt::format("{}: `bible {}` printed nothing", who, args[0]));
        }
        // The package's version, for the record (none when bible did not come from Debian).
        const std::string dpkg = find_program("dpkg-query");
        if (!dpkg.empty()) {
          try {
            const auto v = program_output({dpkg, "-W", "-f=${Version}", "bible-kjv"}, who);
            version.assign(v.begin(), v.end());
          } catch (const Error&) {
            version.clear();
          }
        }
        return text;
      },
      [&] {
        return fmt::format(
            "King James Version of the Bible, from Debian's bible-kjv{}: the output of `bible {}` "
            "(COLUMNS=80) as printed (tessera-data import kjv: {}-byte blocks, validation "
            "fraction {})",
            version.empty() ? std::string() : " " + version, args[0], kTextBlockBytes,
            o.validation);
      },
      "public domain");
}

namespace {
// Checks gen's command line (every rank) and, on the root rank, its output: a name that is no
// folder, on a file system with room for the dataset. Makes the output's folder. Returns the
// samples' element type.
io::ElementType check_gen_options(const GenOptions& o, bool root) {
  auto bad = [](const std::string& what) { return input_error("tessera-data gen: " + what); };
  if (o.dims != 2 && o.dims != 3) {
    throw bad(fmt::format("--dims {} must be 2 or 3", o.dims));
  }
  // Each option out of its range, and only those.
  std::vector<std::string> limits;
  for (const auto& [name, value, least] :
       {std::tuple<const char*, std::int64_t, std::int64_t>{"--samples", o.samples, 1},
        {"--size", o.size, 4},
        {"--steps", o.steps, 0}}) {
    if (value < least) {
      limits.push_back(fmt::format("{} {} must be >= {}", name, value, least));
    }
  }
  if (!limits.empty()) {
    throw bad(fmt::format("{}", fmt::join(limits, ", ")));
  }
  io::ElementType type = io::ElementType::f32;
  if (o.dtype == "float16") {
    type = io::ElementType::f16;
  } else if (o.dtype != "float32") {
    throw bad(fmt::format("--dtype {} must be float32 or float16", o.dtype));
  }
  if (o.split.empty() || o.split == "." || o.split.find('/') != std::string::npos) {
    throw bad(
        fmt::format("--split \"{}\": must be a plain group name like \"train\" (not empty, not "
                    "\".\", no '/')",
                    printable(o.split)));
  }
  // HDF5 stores each sample as one chunk, and a chunk must be under 4 GiB.
  const double sample_bytes =
      std::pow(static_cast<double>(o.size), o.dims) * (type == io::ElementType::f16 ? 2.0 : 4.0);
  if (sample_bytes >= 4294967296.0) {
    throw bad(fmt::format(
        "--size {} --dims {}: one sample is {} of {}, but HDF5 stores a sample as one chunk, "
        "which must be under 4 GiB; give a smaller --size",
        o.size, o.dims, human_bytes(sample_bytes), o.dtype));
  }
  if (root) {
    io::check_output_file(o.output);
    // Room for it: the samples and targets, and HDF5's metadata.
    const double needed =
        io::hdf5_bytes_needed(static_cast<double>(o.samples) * (sample_bytes + 8.0));
    const io::FreeSpace space = io::free_space_for(o.output);
    if (static_cast<double>(space.bytes) < needed) {
      throw bad(fmt::format(
          "no space left on device for {}: {} has {} free, the dataset needs {}; nothing was "
          "written",
          o.output, space.folder, human_bytes(static_cast<double>(space.bytes)),
          human_bytes(needed)));
    }
    io::make_output_folder(o.output);
  }
  return type;
}
}  // namespace

double generate_gray_scott(const GenOptions& o) {
  comm::MpiCommunicator world(MPI_COMM_WORLD, "world");
  const int rank = world.rank();
  io::ElementType type = io::ElementType::f32;
  std::vector<Index> extent;
  comm::agree(MPI_COMM_WORLD, [&] { type = check_gen_options(o, rank == 0); });
  extent.assign(static_cast<size_t>(o.dims), o.size);
  const comm::CartesianGrid grid(MPI_COMM_WORLD, extent, true);
  const std::string tmp = partial_name(o.output);
  double write_seconds = 0.0;
  std::int64_t redrawn = 0;  // runs that died out and were drawn again
  std::unique_ptr<io::File> f;
  try {
    comm::agree(MPI_COMM_WORLD, [&] {
      if (rank == 0) {
        io::create_partial(o.output, tmp);
      }
    });
    f = std::make_unique<io::File>(io::File::create(tmp, MPI_COMM_WORLD));
    {
      const io::Group r = f->root();
      write_root_attributes(r,
                            fmt::format("tessera-data gen: Gray-Scott reaction-diffusion, {}-D "
                                        "grid {}, {} steps, seed {}",
                                        o.dims, o.size, o.steps, o.seed),
                            "CC0-1.0 (generated data)");
      const io::Group g = r.create_group(o.split);
      const auto n = static_cast<hsize_t>(o.samples);
      std::vector<hsize_t> xshape{n, 1};
      std::vector<hsize_t> chunk{1, 1};
      for (Index e : extent) {
        xshape.push_back(static_cast<hsize_t>(e));
        chunk.push_back(static_cast<hsize_t>(e));
      }
      const io::Dataset x = g.create_dataset("x", type, xshape, chunk);
      const io::Dataset y = g.create_dataset("y", io::ElementType::f32, {n, 2});
      const io::Attributes a = g.attributes();
      a.set("task", std::string("regression"));
      a.set("target_names", std::vector<std::string>{"F", "k"});
      if (o.unit_targets) {
        a.set("target_low", std::vector<double>{kFeedLow, kKillLow});
        a.set("target_high", std::vector<double>{kFeedLow + kFeedRange, kKillLow + kKillRange});
      }
      a.set("field", std::string("v"));
      a.set("scale", 1.0);
      a.set("mean", std::vector<double>{0.0});
      a.set("std", std::vector<double>{1.0});
      a.set("steps", static_cast<std::int64_t>(o.steps));
      a.set("seed", static_cast<std::int64_t>(o.seed));

      const GrayScottOptions sim{0.16F, 0.08F, o.steps};
      io::Box box{{0, 0}, {1, 1}};
      for (size_t d = 0; d < extent.size(); ++d) {
        box.offset.push_back(static_cast<hsize_t>(grid.local_offset()[d]));
        box.count.push_back(static_cast<hsize_t>(grid.local_extent()[d]));
      }
      std::vector<float> targets;
      const Stopwatch total;
      const std::int64_t every = std::max<std::int64_t>(1, o.samples / 10);
      for (std::int64_t s = 0; s < o.samples; ++s) {
        // A run that dies out is drawn again (kExtinct): the maximum over the whole volume decides,
        // the same on every rank.
        GrayScottParameters p;
        std::vector<float> field;
        for (int draw = 0;; ++draw) {
          TESSERA_CHECK(draw < kMaxDraws,
                        "tessera-data gen: sample {}: {} draws of (F, k) all died out", s, draw);
          p = sample_parameters(o.seed, s, draw);
          field = simulate(grid, o.seed, s, p, sim);
          float peak = field.empty() ? 0.0F : *std::max_element(field.begin(), field.end());
          world.allreduce(comm::Buffer(&peak, 1), {comm::ReduceOp::max})->wait();
          if (peak >= kExtinct) {
            break;
          }
          ++redrawn;
        }
        box.offset[0] = static_cast<hsize_t>(s);
        {
          const ScopedTimer t(write_seconds);
          x.write(box, io::ElementType::f32, field.data(), true);
        }
        // A stop signal on any rank stops every rank between two samples.
        comm::agree(MPI_COMM_WORLD, [&] { signals::throw_if_stopped(nothing_written(o.output)); });
        if (o.unit_targets) {
          targets.push_back((p.feed - kFeedLow) / kFeedRange);
          targets.push_back((p.kill - kKillLow) / kKillRange);
        } else {
          targets.push_back(p.feed);
          targets.push_back(p.kill);
        }
        if (!o.quiet && rank == 0 && ((s + 1) % every == 0 || s + 1 == o.samples)) {
          std::printf("tessera-data gen: %lld/%lld samples, %.1f s\n",
                      static_cast<long long>(s + 1), static_cast<long long>(o.samples),
                      total.seconds());
          std::fflush(stdout);
        }
      }
      a.set("redrawn", redrawn);
      const ScopedTimer t(write_seconds);
      // The targets are small: rank 0 writes them, the others take part with empty selections.
      const io::Box ybox = rank == 0 ? io::Box{{0, 0}, {n, 2}} : io::Box{{0, 0}, {0, 0}};
      y.write(ybox, io::ElementType::f32, targets.data(), true);
    }
    {
      // Until the data is on the disk, as `dd conv=fdatasync` measures it.
      const ScopedTimer t(write_seconds);
      f->close();
      if (rank == 0) {
        const int fd = ::open(tmp.c_str(), O_RDONLY);
        if (fd >= 0) {
          ::fdatasync(fd);
          ::close(fd);
        }
      }
      world.barrier()->wait();
    }
    // The checksums from what the file holds, by rank 0 alone (the file is closed everywhere).
    comm::agree(MPI_COMM_WORLD, [&] {
      if (rank == 0) {
        io::write_checksums(tmp);
      }
    });
    comm::agree(MPI_COMM_WORLD, [&] { signals::throw_if_stopped(nothing_written(o.output)); });
    if (rank == 0) {
      std::filesystem::rename(tmp, o.output);
    }
  } catch (...) {
    // Nothing half-written is left. Closing the file is collective: every rank closes it after an
    // error they all hold (a stop signal, said by comm::agree); a rank that failed alone leaves its
    // handle open (main() aborts the job) rather than wait for the others forever.
    bool together = world.size() == 1;
    try {
      throw;
    } catch (const Error& e) {
      together = together || e.on_all_ranks();
    } catch (...) {
    }
    if (together) {
      f.reset();
    } else {
      static_cast<void>(f.release());
    }
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    throw;
  }
  if (rank == 0) {
    if (!o.quiet) {
      std::printf(
          "tessera-data gen: wrote %s: %lld samples of %s %s on a %s rank grid (%lld runs that "
          "died out drawn again)\n",
          o.output.c_str(), static_cast<long long>(o.samples),
          fmt::format("{}", fmt::join(extent, "x")).c_str(), o.dtype.c_str(),
          fmt::format("{}", fmt::join(grid.dims(), "x")).c_str(), static_cast<long long>(redrawn));
    }
  }
  world.barrier()->wait();
  return write_seconds;
}

namespace {
std::string shape_string(const std::vector<hsize_t>& s) {
  return fmt::format("({})", fmt::join(s, ", "));
}

void print_attributes(const io::Attributes& a, const std::string& indent) {
  for (const std::string& name : a.names()) {
    std::string value;
    try {
      const auto strings = a.get_strings(name);
      // Text from the file: printed escaped (a control byte never reaches the terminal).
      std::vector<std::string> shown;
      for (const std::string& text : strings) {
        shown.push_back(printable(text));
      }
      value =
          shown.size() == 1 ? "\"" + shown[0] + "\"" : fmt::format("[{}]", fmt::join(shown, ", "));
    } catch (const Error&) {
      const auto v = a.get_doubles(name);
      if (name == io::kChecksum) {  // one per block of rows: their count says enough
        std::printf("%s@%s = [%zu CRC-32 values]\n", indent.c_str(), printable(name).c_str(),
                    v.size());
        continue;
      }
      value = v.size() == 1 ? fmt::format("{:g}", v[0]) : fmt::format("[{:g}]", fmt::join(v, ", "));
    }
    std::printf("%s@%s = %s\n", indent.c_str(), printable(name).c_str(), value.c_str());
  }
}

void print_statistics(const io::Group& g, const std::string& file) {
  const io::SplitInfo info = io::inspect_split(file, g.path());
  const io::Dataset x = g.open_dataset("x");
  const io::Dataset y = g.open_dataset("y");
  const Index per = numel(info.sample_shape);
  const Index block = std::max<Index>(1, (1 << 22) / std::max<Index>(per, 1));
  double sum = 0.0;
  double sum2 = 0.0;
  double lo = std::numeric_limits<double>::infinity();
  double hi = -lo;
  std::vector<float> buf;
  for (Index s = 0; s < info.samples; s += block) {
    const Index count = std::min(block, info.samples - s);
    io::Box b{std::vector<hsize_t>(info.sample_shape.size() + 1, 0), {static_cast<hsize_t>(count)}};
    b.offset[0] = static_cast<hsize_t>(s);
    for (Index e : info.sample_shape) {
      b.count.push_back(static_cast<hsize_t>(e));
    }
    buf.resize(static_cast<size_t>(count * per));
    x.read(b, io::ElementType::f32, buf.data());
    for (float v : buf) {
      const auto d = static_cast<double>(v);
      sum += d;
      sum2 += d * d;
      lo = std::min(lo, d);
      hi = std::max(hi, d);
    }
  }
  const double n = static_cast<double>(info.samples) * static_cast<double>(per);
  const double mean = sum / n;
  std::printf("    x (as stored): mean %.6g, std %.6g, min %.6g, max %.6g\n", mean,
              std::sqrt(std::max(0.0, sum2 / n - mean * mean)), lo, hi);
  if (info.task == io::Task::classification) {
    // inspect_split() checked y's size against what the file stores. Labels outside the classes
    // are counted apart (a label of 2^31 − 1 once grew the counts to 16 GiB).
    std::vector<std::int32_t> labels(static_cast<size_t>(info.samples));
    y.read_all(io::ElementType::i32, labels.data());
    std::int32_t top = 0;
    for (std::int32_t l : labels) {
      top = std::max(top, l);
    }
    const size_t classes =
        !info.classes.empty() ? info.classes.size() : static_cast<size_t>(std::min(top, 999)) + 1;
    std::vector<std::int64_t> counts(classes, 0);
    std::int64_t outside = 0;
    for (std::int32_t l : labels) {
      if (l >= 0 && static_cast<size_t>(l) < classes) {
        ++counts[static_cast<size_t>(l)];
      } else {
        ++outside;
      }
    }
    std::printf("    y: samples per class [%s]%s\n",
                fmt::format("{}", fmt::join(counts, ", ")).c_str(),
                outside == 0 ? "" : fmt::format(", {} outside [0, {})", outside, classes).c_str());
  } else {
    std::vector<float> targets(static_cast<size_t>(info.samples * info.targets));
    y.read_all(io::ElementType::f32, targets.data());
    for (Index t = 0; t < info.targets; ++t) {
      double tlo = std::numeric_limits<double>::infinity();
      double thi = -tlo;
      double tsum = 0.0;
      for (Index s = 0; s < info.samples; ++s) {
        const auto v = static_cast<double>(targets[static_cast<size_t>(s * info.targets + t)]);
        tlo = std::min(tlo, v);
        thi = std::max(thi, v);
        tsum += v;
      }
      std::printf("    y[%lld]: mean %.6g, min %.6g, max %.6g\n", static_cast<long long>(t),
                  tsum / static_cast<double>(info.samples), tlo, thi);
    }
  }
}

// A token split: how many tokens, of which vocabulary, and how many distinct ids occur.
void print_token_statistics(const io::Group& g, const std::string& file) {
  const io::SplitInfo info = io::inspect_split(file, g.path());
  std::vector<std::int32_t> tokens(static_cast<size_t>(info.tokens));
  g.open_dataset("tokens").read_all(io::ElementType::i32, tokens.data());
  const std::set<std::int32_t> distinct(tokens.begin(), tokens.end());
  const std::string tokenizer = info.tokenizer.empty() ? "" : " (" + info.tokenizer + ")";
  std::printf("    tokens: %lld of vocab %lld%s, %zu distinct ids in [%d, %d]\n",
              static_cast<long long>(info.tokens), static_cast<long long>(info.vocab),
              tokenizer.c_str(), distinct.size(), *distinct.begin(), *distinct.rbegin());
}

// `seen`: the addresses of the groups listed so far, so that each is listed once (a damaged file
// may link a group to its own ancestor: listed without end).
void list_group(const io::Group& g, const std::string& file, bool statistics, int depth,
                std::set<std::uint64_t>& seen) {
  const std::string indent(static_cast<size_t>(2 * depth), ' ');
  print_attributes(g.attributes(), indent + "  ");
  for (const std::string& m : g.members()) {
    if (g.is_group(m)) {
      const io::Group child = g.open_group(m);
      if (!seen.insert(g.address_of(m)).second) {
        std::printf("%s  %s/ (a second link to a group listed above)\n", indent.c_str(),
                    printable(child.path()).c_str());
        continue;
      }
      std::printf("%s  %s/\n", indent.c_str(), printable(child.path()).c_str());
      list_group(child, file, false, depth + 1, seen);
      if (statistics && (child.has("tokens") || (child.has("x") && child.has("y")))) {
        // The split's task decides which statistics (a token split may hold an x and y too).
        const io::SplitInfo info = io::inspect_split(file, child.path());
        if (info.task == io::Task::language_modeling) {
          print_token_statistics(child, file);
        } else {
          print_statistics(child, file);
        }
        const double seconds = io::verify_split(info, {});
        std::string sums = fmt::format("checksums: verified ({:.2f} s)", seconds);
        if (const std::string name = info.lone_unchecked(); !name.empty()) {
          sums = fmt::format(
              "checksums: {} verified ({:.2f} s); {} has none (rewritten by another "
              "tool?): unverified",
              name == "x" ? "y" : "x", seconds, name);
        } else if (!info.checksummed()) {
          sums = "checksums: none (a file from before tessera-data wrote them): unverified";
        }
        std::printf("    %s\n", sums.c_str());
      }
    } else {
      const io::Dataset d = g.open_dataset(m);
      const auto t = d.element_type();
      std::printf("%s  %s %s %s\n", indent.c_str(), printable(d.path()).c_str(),
                  shape_string(d.shape()).c_str(),
                  t ? io::element_type_name(*t) : d.type_name().c_str());
      print_attributes(d.attributes(), indent + "    ");
    }
  }
}
}  // namespace

void add_checksums(const std::string& path) {
  comm::agree(MPI_COMM_WORLD, [&] {
    if (rank_of(MPI_COMM_WORLD) != 0) {
      return;
    }
    std::vector<std::string> splits;
    {
      const io::File f = [&] {
        try {
          return io::File::open_serial(path);
        } catch (const Error& e) {
          throw input_error(e.message());
        }
      }();
      const io::Group root = f.root();
      for (const std::string& m : root.members()) {
        if (root.is_group(m)) {
          splits.push_back("/" + m);
        }
      }
    }
    for (const std::string& split : splits) {  // what is there now must be good
      (void)io::verify_split(io::inspect_split(path, split), {});
    }
    const std::string tmp = partial_name(path);
    removing_on_failure(path, tmp, [&] {
      std::filesystem::copy_file(path, tmp, std::filesystem::copy_options::overwrite_existing);
      io::write_checksums(tmp);
      signals::throw_if_stopped(fmt::format("{} left as it was", path));
      std::filesystem::rename(tmp, path);
    });
    std::printf("tessera-data: added checksums to %s (%zu split%s)\n", path.c_str(), splits.size(),
                splits.size() == 1 ? "" : "s");
  });
}

void list_file(const std::string& path, bool statistics) {
  comm::agree(MPI_COMM_WORLD, [&] {
    if (rank_of(MPI_COMM_WORLD) != 0) {
      return;
    }
    const io::File f = [&] {
      try {
        return io::File::open_serial(path);
      } catch (const Error& e) {
        throw input_error(e.message());
      }
    }();
    std::printf("%s\n", path.c_str());
    try {
      std::set<std::uint64_t> seen{f.root().address_of(".")};
      list_group(f.root(), path, statistics, 0, seen);
    } catch (const Error& e) {
      throw input_error(e.message());  // about the file's content
    }
  });
}

}  // namespace tessera::data
