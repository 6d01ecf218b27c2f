#pragma once
// The sub-commands of tessera-data. Each is called on every rank of MPI_COMM_WORLD.
#include <cstdint>
#include <string>

namespace tessera::data {

struct ImportOptions {
  std::string source = "/usr/share/datasets/fashion-mnist";  ///< Debian's dataset-fashion-mnist
  std::string output = "data/fashion-mnist.h5";
};
/// Fashion-MNIST IDX files → train/test splits. Rank 0 does the work; all ranks agree on errors.
void import_fashion_mnist(const ImportOptions& options);

struct GenOptions {
  std::string output = "data/gray-scott.h5";
  std::string split = "train";
  std::int64_t samples = 16;
  std::int64_t size = 32;  ///< grid points per dimension
  int dims = 2;            ///< 2 or 3
  int steps = 200;
  std::uint64_t seed = 1;
  std::string dtype = "float32";  ///< float32 or float16
  bool quiet = false;
};
/// Simulates `samples` Gray–Scott runs, domain-decomposed over every rank, and writes them
/// collectively into one file. Returns the seconds spent writing (for benchmarks).
double generate_gray_scott(const GenOptions& options);

/// Prints groups, datasets, attributes and per-split statistics of a dataset file (rank 0).
void list_file(const std::string& path, bool statistics);

}  // namespace tessera::data
