#pragma once
// The commands of tessera-ckpt (docs/checkpoint-format.md, "tessera-ckpt"), as functions that
// main() calls and tests call in-process. Every command is called on every rank of `comm`; the
// work of verify, diff and average is spread over the ranks by element ranges, and the results are
// reduced to rank 0. Bad input (a file that is missing, not HDF5, truncated, not a checkpoint…)
// throws a tessera::Error with exit code 2 that every rank holds together (comm::agree), which
// main() reports once; what a command finds is returned as an Outcome (or a result struct).
#include <hdf5.h>
#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

namespace tessera::ckpt {

/// Exit codes of tessera-ckpt.
inline constexpr int kExitOk = 0;        ///< verified, or the files are equal (within tolerance)
inline constexpr int kExitFailed = 1;    ///< verification failed, or the files differ
inline constexpr int kExitBadInput = 2;  ///< unreadable input, not a checkpoint, bad command line

/// What a command reports: rank 0 prints `out` on stdout and `err` on stderr (on the other ranks
/// both are empty); every rank returns `exit_code`.
struct Outcome {
  int exit_code = kExitOk;
  std::string out;
  std::string err;
};

/// `ls PATH`: a checkpoint file's metadata and tensor tree, or a folder's checkpoints.
Outcome ls(MPI_Comm comm, const std::string& path);

/// `deck FILE`: the embedded deck, as saved (ending with a newline).
Outcome deck(MPI_Comm comm, const std::string& file);

/// What verify found in one file.
struct FileVerdict {
  std::string file;
  /// Non-empty when the file could not be read at all (missing, not HDF5, truncated): the message.
  std::string unreadable;
  /// Every problem found, in file order, each without the "FILE: " prefix.
  std::vector<std::string> problems;
  std::int64_t tensors = 0;  ///< tensor datasets under /model and /optimizer
  std::int64_t bytes = 0;    ///< their data, float32
  bool ok() const { return unreadable.empty() && problems.empty(); }
};
/// Verifies one checkpoint: the format and version, every required root attribute and its type,
/// the tensor count, every tensor's type and checksum (recomputed, the elements spread over the
/// ranks), the optimizer state each parameter needs and its shape.
FileVerdict verify_file(MPI_Comm comm, const std::string& file);
/// `verify FILE...`: "FILE: OK (...)" or one line per problem; exit code 0, 1 (a problem found) or
/// 2 (a file unreadable).
Outcome verify(MPI_Comm comm, const std::vector<std::string>& files);

/// One tensor compared by diff.
struct TensorDiff {
  enum class Status { equal, within, differs, only_a, only_b, shape };
  std::string path;
  Status status = Status::equal;
  std::vector<hsize_t> shape_a;
  std::vector<hsize_t> shape_b;
  double max_abs = 0.0;        ///< max |a - b| (infinite where one is NaN and the other not)
  double max_rel = 0.0;        ///< max_abs / max |b|
  std::int64_t differing = 0;  ///< elements whose bits differ
};
struct DiffResult {
  std::vector<std::string> metadata;  ///< root attributes that differ: "step: 100 | 200"
  std::vector<TensorDiff> tensors;    ///< every tensor of either file, by path
  bool equal = true;                  ///< the verdict: tensor data alone decides
};
/// Compares every tensor of `a` and `b`: one is within when max_abs <= `atol` + `tolerance` ·
/// max |b| (both 0: bit for bit). The absolute part serves a tensor that holds rounding noise
/// only (a parameter whose gradient is zero: a bias before BatchNorm), which no relative
/// tolerance of its own tiny maximum admits.
DiffResult diff_files(MPI_Comm comm, const std::string& a, const std::string& b, double tolerance,
                      double atol = 0.0);
/// `diff A B [--tolerance REL] [--atol ABS]`: a table and a verdict line; exit code 0 (equal) or 1.
Outcome diff(MPI_Comm comm, const std::string& a, const std::string& b, double tolerance,
             double atol = 0.0);

/// `export FILE -o OUT`: the /model tensors into OUT (.h5: plain HDF5, datasets named like the
/// parameters; .npz: numpy's archive). OUT is not FILE (io::check_output_file). Rank 0 does the
/// work. `force_zip64` is for tests.
Outcome export_model(MPI_Comm comm, const std::string& file, const std::string& out,
                     bool force_zip64 = false);

/// `average A B ... -o OUT`: the element-wise mean of the /model tensors as a checkpoint whose
/// metadata and optimizer state are copied from the first input. OUT ends in .h5 or .hdf5 and is
/// none of the inputs (io::check_output_file).
Outcome average(MPI_Comm comm, const std::vector<std::string>& inputs, const std::string& out);

}  // namespace tessera::ckpt
