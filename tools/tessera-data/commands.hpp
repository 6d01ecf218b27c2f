#pragma once
// The sub-commands of tessera-data. Each is called on every rank of MPI_COMM_WORLD.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace tessera::data {

struct ImportOptions {
  std::string source = "/usr/share/datasets/fashion-mnist";  ///< Debian's dataset-fashion-mnist
  std::string output = "data/fashion-mnist.h5";
  /// The last `validation` training images go to /validation instead of /train (0: none).
  std::uint32_t validation = 0;
};
/// Fashion-MNIST IDX files → train/test (and validation) splits. Rank 0 does the work; all ranks
/// agree on errors.
void import_fashion_mnist(const ImportOptions& options);

/// Text is cut into blocks of this many bytes before the blocks are dealt to train and validation.
inline constexpr std::size_t kTextBlockBytes = 65536;

struct TextImportOptions {
  std::vector<std::string> files;  ///< concatenated in this order
  std::string output;
  double validation = 0.05;  ///< fraction of the blocks held out, in [0, 0.5]
};
/// Text files → byte-level token streams (docs/dataset-format.md): the files' bytes concatenated,
/// cut into blocks of kTextBlockBytes, block i to /validation iff floor((i+1)·f) > floor(i·f),
/// else to /train (f = 0: no /validation). Rank 0 does the work; all ranks agree on errors.
void import_text(const TextImportOptions& options);

struct KjvImportOptions {
  std::string output = "data/kjv.h5";
  double validation = 0.05;
};
/// The King James Bible as Debian's bible-kjv prints it (`bible Gen1:1-Rev22:21`), imported as
/// import_text() imports a file.
void import_kjv(const KjvImportOptions& options);

struct GenOptions {
  std::string output = "data/gray-scott.h5";
  std::string split = "train";
  std::int64_t samples = 16;
  std::int64_t size = 32;  ///< grid points per dimension
  int dims = 2;            ///< 2 or 3
  int steps = 200;
  std::uint64_t seed = 1;
  std::string dtype = "float32";  ///< float32 or float16
  /// Targets (F - 0.02) / 0.04 and (k - 0.045) / 0.02: both in [0, 1], for training (the ranges
  /// are in the split's @target_low and @target_high).
  bool unit_targets = false;
  bool quiet = false;
};
/// Simulates `samples` Gray–Scott runs, domain-decomposed over every rank, and writes them
/// collectively into one file. Returns the seconds spent writing (for benchmarks).
double generate_gray_scott(const GenOptions& options);

/// Adds checksums to a dataset file written before tessera-data wrote them (rank 0; all ranks
/// agree on errors): every split is first verified as the trainer verifies it (existing checksums,
/// labels against @classes, finite values), then a copy with checksums replaces the file.
void add_checksums(const std::string& path);

/// Prints groups, datasets, attributes and per-split statistics of a dataset file (rank 0).
void list_file(const std::string& path, bool statistics);

}  // namespace tessera::data
