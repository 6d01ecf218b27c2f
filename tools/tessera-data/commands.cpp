#include "commands.hpp"

#include "gray_scott.hpp"
#include "idx.hpp"
#include "tessera/comm/agree.hpp"
#include "tessera/comm/cartesian.hpp"
#include "tessera/comm/communicator.hpp"
#include "tessera/core/check.hpp"
#include "tessera/core/timer.hpp"
#include "tessera/io/dataset.hpp"
#include "tessera/io/hdf5.hpp"

#include <fcntl.h>
#include <fmt/ranges.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>

namespace tessera::data {
namespace {

using comm::rank_of;

void make_parent_dir(const std::string& path) {
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::filesystem::create_directories(parent);
  }
}

// Writes to `path`.partial and renames into place once complete, so that a file that exists
// under its name is always whole.
std::string partial_name(const std::string& path) {
  return path + ".partial";
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
    for (Split& s : splits) {
      const std::string ipath = o.source + "/" + s.images;
      const std::string lpath = o.source + "/" + s.labels;
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

    make_parent_dir(o.output);
    const std::string tmp = partial_name(o.output);
    {
      io::File f = io::File::create(tmp, MPI_COMM_SELF);
      {
        const io::Group r = f.root();
        write_root_attributes(r, "Fashion-MNIST (Zalando Research), imported from " + o.source,
                              "MIT");
        for (Split& s : splits) {
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
    }
    std::filesystem::rename(tmp, o.output);
    std::printf(
        "tessera-data: wrote %s: train %u, test %u samples of 1x28x28 uint8 (mean %.4f, "
        "std %.4f)\n",
        o.output.c_str(), splits[0].x.dims[0], splits[1].x.dims[0], mean, stddev);
  });
}

double generate_gray_scott(const GenOptions& o) {
  comm::MpiCommunicator world(MPI_COMM_WORLD, "world");
  const int rank = world.rank();
  io::ElementType type = io::ElementType::f32;
  std::vector<Index> extent;
  comm::agree(MPI_COMM_WORLD, [&] {
    auto bad = [](const std::string& what) { return input_error("tessera-data gen: " + what); };
    if (o.dims != 2 && o.dims != 3) {
      throw bad(fmt::format("--dims {} must be 2 or 3", o.dims));
    }
    if (o.samples < 1 || o.size < 4 || o.steps < 0) {
      throw bad(fmt::format("--samples {} must be >= 1, --size {} >= 4, --steps {} >= 0", o.samples,
                            o.size, o.steps));
    }
    if (o.dtype == "float16") {
      type = io::ElementType::f16;
    } else if (o.dtype != "float32") {
      throw bad(fmt::format("--dtype {} must be float32 or float16", o.dtype));
    }
    if (rank == 0) {
      make_parent_dir(o.output);
    }
  });
  extent.assign(static_cast<size_t>(o.dims), o.size);
  const comm::CartesianGrid grid(MPI_COMM_WORLD, extent, true);
  const std::string tmp = partial_name(o.output);
  io::File f = io::File::create(tmp, MPI_COMM_WORLD);
  double write_seconds = 0.0;
  {
    const io::Group r = f.root();
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
      const GrayScottParameters p = sample_parameters(o.seed, s);
      const std::vector<float> field = simulate(grid, o.seed, s, p, sim);
      box.offset[0] = static_cast<hsize_t>(s);
      {
        const ScopedTimer t(write_seconds);
        x.write(box, io::ElementType::f32, field.data(), true);
      }
      targets.push_back(p.feed);
      targets.push_back(p.kill);
      if (!o.quiet && rank == 0 && ((s + 1) % every == 0 || s + 1 == o.samples)) {
        std::printf("tessera-data gen: %lld/%lld samples, %.1f s\n", static_cast<long long>(s + 1),
                    static_cast<long long>(o.samples), total.seconds());
        std::fflush(stdout);
      }
    }
    const ScopedTimer t(write_seconds);
    // The targets are small: rank 0 writes them, the others take part with empty selections.
    const io::Box ybox = rank == 0 ? io::Box{{0, 0}, {n, 2}} : io::Box{{0, 0}, {0, 0}};
    y.write(ybox, io::ElementType::f32, targets.data(), true);
  }
  {
    // Until the data is on the disk, as `dd conv=fdatasync` measures it.
    const ScopedTimer t(write_seconds);
    f.close();
    if (rank == 0) {
      const int fd = ::open(tmp.c_str(), O_RDONLY);
      if (fd >= 0) {
        ::fdatasync(fd);
        ::close(fd);
      }
    }
    world.barrier()->wait();
  }
  world.barrier()->wait();
  if (rank == 0) {
    std::filesystem::rename(tmp, o.output);
    if (!o.quiet) {
      std::printf("tessera-data gen: wrote %s: %lld samples of %s %s on a %s rank grid\n",
                  o.output.c_str(), static_cast<long long>(o.samples),
                  fmt::format("{}", fmt::join(extent, "x")).c_str(), o.dtype.c_str(),
                  fmt::format("{}", fmt::join(grid.dims(), "x")).c_str());
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
      value = strings.size() == 1 ? "\"" + strings[0] + "\""
                                  : fmt::format("[{}]", fmt::join(strings, ", "));
    } catch (const Error&) {
      const auto v = a.get_doubles(name);
      value = v.size() == 1 ? fmt::format("{:g}", v[0]) : fmt::format("[{:g}]", fmt::join(v, ", "));
    }
    std::printf("%s@%s = %s\n", indent.c_str(), name.c_str(), value.c_str());
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
  std::vector<float> targets(static_cast<size_t>(info.samples * info.targets));
  y.read_all(io::ElementType::f32, targets.data());
  if (info.task == io::Task::classification) {
    std::vector<std::int64_t> counts(std::max<size_t>(info.classes.size(), 1), 0);
    for (float t : targets) {
      const auto c = static_cast<size_t>(t);
      if (c >= counts.size()) {
        counts.resize(c + 1, 0);
      }
      ++counts[c];
    }
    std::printf("    y: samples per class [%s]\n",
                fmt::format("{}", fmt::join(counts, ", ")).c_str());
  } else {
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

void list_group(const io::Group& g, const std::string& file, bool statistics, int depth) {
  const std::string indent(static_cast<size_t>(2 * depth), ' ');
  print_attributes(g.attributes(), indent + "  ");
  for (const std::string& m : g.members()) {
    if (g.is_group(m)) {
      const io::Group child = g.open_group(m);
      std::printf("%s  %s/\n", indent.c_str(), child.path().c_str());
      list_group(child, file, false, depth + 1);
      if (statistics && child.has("x") && child.has("y")) {
        print_statistics(child, file);
      }
    } else {
      const io::Dataset d = g.open_dataset(m);
      const auto t = d.element_type();
      std::printf("%s  %s %s %s\n", indent.c_str(), d.path().c_str(),
                  shape_string(d.shape()).c_str(), t ? io::element_type_name(*t) : "other");
      print_attributes(d.attributes(), indent + "    ");
    }
  }
}
}  // namespace

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
    list_group(f.root(), path, statistics, 0);
  });
}

}  // namespace tessera::data
