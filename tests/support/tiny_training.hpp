#pragma once
// What the MPI training tests share: a folder every rank sees, a tiny learnable classification
// dataset, and a small deck that exercises every kind of layer state (conv, pooling, dense,
// dropout) in a few steps.
#include "support/mpi.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/io/dataset.hpp"
#include "tessera/io/hdf5.hpp"
#include "tessera/nn/layer.hpp"

#include <mpi.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

namespace tessera::testing {

/// A temporary folder named by rank 0's pid, created by rank 0 and removed at the end.
class SharedTempDir {
 public:
  explicit SharedTempDir(const std::string& stem) {
    long pid = static_cast<long>(getpid());
    MPI_Bcast(&pid, 1, MPI_LONG, 0, MPI_COMM_WORLD);
    m_path = (std::filesystem::temp_directory_path() / (stem + "-" + std::to_string(pid))).string();
    if (world_rank() == 0) {
      std::filesystem::create_directories(m_path);
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
  ~SharedTempDir() {
    MPI_Barrier(MPI_COMM_WORLD);
    if (world_rank() == 0) {
      std::filesystem::remove_all(m_path);
    }
  }
  SharedTempDir(const SharedTempDir&) = delete;
  SharedTempDir& operator=(const SharedTempDir&) = delete;
  const std::string& path() const { return m_path; }

 private:
  std::string m_path;
};

/// The group of split `name` with @task `task` in the new file `f`, whose root it marks as a
/// Tessera dataset (format and version).
inline io::Group dataset_split(const io::File& f, const std::string& name,
                               const std::string& task) {
  const io::Group root = f.root();
  root.attributes().set("format", std::string(io::kDatasetFormat));
  root.attributes().set("format_version", io::kDatasetVersion);
  io::Group g = root.create_group(name);
  g.attributes().set("task", task);
  return g;
}

/// A classification split /train of 40 random 1×4×4 samples in 3 classes, written by rank 0.
inline void write_tiny_dataset(const std::string& path) {
  if (world_rank() == 0) {
    const hsize_t n = 40;
    std::vector<float> x(n * 16);
    std::vector<std::int32_t> y(n);
    const rng::CounterRng gen(5, 6);
    for (size_t i = 0; i < x.size(); ++i) {
      x[i] = gen.uniform(i) - 0.5F;
    }
    for (hsize_t i = 0; i < n; ++i) {
      y[i] = static_cast<std::int32_t>(i % 3);
      x[i * 16] += 0.5F * static_cast<float>(y[i]);  // make it learnable
    }
    io::File f = io::File::create(path, MPI_COMM_SELF);
    {
      const io::Group g = dataset_split(f, "train", "classification");
      g.create_dataset("x", io::ElementType::f32, {n, 1, 4, 4})
          .write({{0, 0, 0, 0}, {n, 1, 4, 4}}, io::ElementType::f32, x.data(), false);
      g.create_dataset("y", io::ElementType::i32, {n})
          .write({{0}, {n}}, io::ElementType::i32, y.data(), false);
    }
    f.close();
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

/// A regression split /train, written by rank 0: `x` holds the samples of shape `sample` (C, H,
/// W...) one after another, `y` each sample's `targets` targets.
inline void write_regression_split(const std::string& path, const Shape& sample,
                                   const std::vector<float>& x, hsize_t targets,
                                   const std::vector<float>& y) {
  if (world_rank() == 0) {
    const hsize_t n = y.size() / targets;
    std::vector<hsize_t> dims{n};
    for (Index e : sample) {
      dims.push_back(static_cast<hsize_t>(e));
    }
    const std::vector<hsize_t> zero(dims.size(), 0);
    io::File f = io::File::create(path, MPI_COMM_SELF);
    {
      const io::Group g = dataset_split(f, "train", "regression");
      g.create_dataset("x", io::ElementType::f32, dims)
          .write({zero, dims}, io::ElementType::f32, x.data(), false);
      g.create_dataset("y", io::ElementType::f32, {n, targets})
          .write({{0, 0}, {n, targets}}, io::ElementType::f32, y.data(), false);
    }
    f.close();
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

/// A language-modeling split /train (and /validation) of byte tokens, a short text repeated to
/// `bytes` bytes, with vocabulary `vocab` (the text's bytes folded below it), written by rank 0.
inline void write_tiny_tokens(const std::string& path, hsize_t bytes = 4096,
                              std::int64_t vocab = 256) {
  if (world_rank() == 0) {
    const std::string text = "In the beginning was the Word, and the Word was with God. ";
    std::vector<std::uint8_t> t(bytes);
    for (hsize_t i = 0; i < bytes; ++i) {
      t[i] = static_cast<std::uint8_t>(static_cast<unsigned char>(text[i % text.size()]) % vocab);
    }
    io::File f = io::File::create(path, MPI_COMM_SELF);
    {
      const io::Group root = f.root();
      root.attributes().set("format", std::string(io::kDatasetFormat));
      root.attributes().set("format_version", io::kDatasetVersion);
      for (const char* split : {"train", "validation"}) {
        const io::Group g = root.create_group(split);
        g.attributes().set("task", std::string("language_modeling"));
        g.attributes().set("vocab", vocab);
        g.attributes().set("tokenizer", std::string("bytes"));
        g.create_dataset("tokens", io::ElementType::u8, {bytes})
            .write({{0}, {bytes}}, io::ElementType::u8, t.data(), false);
      }
    }
    f.close();
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

/// 6 steps of batch 12 on write_tiny_dataset's split (given as data.train by the test).
inline const char* kTinyDeck = R"(
[run]
seed = 7
steps = 6
log_every = 100
[data]
batch = 12
[model]
input = [1, 4, 4]
layers = [
  { conv2d = { out = 3, kernel = 3, pad = 1 } }, { tanh = {} }, { maxpool2d = { kernel = 2 } },
  { flatten = {} }, { linear = { out = 8 } }, { gelu = {} }, { dropout = { p = 0.25 } },
  { linear = { out = 3 } },
]
loss = "softmax_cross_entropy"
[optimizer]
type = "sgd"
lr = 0.1
momentum = 0.9
clip_grad_norm = 5.0
)";

/// The values of every parameter of a model, in model order.
inline std::vector<std::vector<float>> parameter_values(nn::Layer& model) {
  std::vector<std::vector<float>> out;
  for (const nn::Parameter* p : model.all_parameters()) {
    out.push_back(p->value.to_host());
  }
  return out;
}

/// Largest |a - b| / max|b| over the elements of one tensor.
inline double relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double scale = 1e-12;
  double diff = 0.0;
  for (size_t j = 0; j < a.size() && j < b.size(); ++j) {
    scale = std::max(scale, std::fabs(static_cast<double>(b[j])));
    diff = std::max(diff, std::fabs(static_cast<double>(a[j]) - static_cast<double>(b[j])));
  }
  return diff / scale;
}

}  // namespace tessera::testing
