#pragma once
// Checkpoints (docs/checkpoint-format.md): one HDF5 file per save, written collectively with
// parallel HDF5, every tensor once at its global shape; a commit protocol (write under a partial
// name, rename, move the `latest` marker atomically) so that a crash never loses the previous
// checkpoint and a partial file is never resumed. A restart reads the slices its own layout owns,
// whatever the rank count, data-parallel size or ZeRO setting at save time.
#include "tessera/io/checkpoint_format.hpp"
#include "tessera/io/dataset.hpp"
#include "tessera/optim/optimizer.hpp"
#include "tessera/parallel/data_parallel.hpp"

#include <mpi.h>

#include <cstdint>
#include <string>

namespace tessera::io {

/// What a checkpoint says besides its tensors (its root attributes).
struct CheckpointInfo {
  std::int64_t step = 0;         ///< optimizer steps completed
  std::int64_t total_steps = 0;  ///< the run's length
  Cursor cursor;                 ///< the next batch to read
  std::uint64_t seed = 0;        ///< run.seed (with step, the whole RNG state)
  std::string deck;              ///< the resolved deck (TOML)
  std::string grid;              ///< "trainers 1 × data 2 × ..."
  int ranks = 1;
  int data_size = 1;
  int zero = 0;
};

/// What a save did, for the progress output.
struct SaveReport {
  std::string file;      ///< the committed checkpoint's path
  double bytes = 0.0;    ///< tensor bytes in the file
  double seconds = 0.0;  ///< from the start of the save to the marker's move
};

/// Saves a checkpoint of the data-parallel model `dp` and `optimizer` into `dir` (created when
/// missing) as dir/ckpt-<step>.h5, moves dir/latest to it and keeps the newest `keep`
/// checkpoints. Collective over `comm`, the data axis (every rank holds the same model; under
/// ZeRO-1 each writes its pieces of the optimizer state). Waits for `dp`'s parameters first.
/// Throws tessera::Error on every rank when the save fails; the previous checkpoint is then intact.
SaveReport save_checkpoint(const std::string& dir, const CheckpointInfo& info,
                           parallel::DataParallel& dp, optim::Optimizer& optimizer, MPI_Comm comm,
                           int keep);

/// The checkpoint `restart` names: "auto" → the one dir/latest names, or "" when there is none
/// yet (a fresh start); any other value is a file path, returned as is. Throws tessera::Error (exit
/// code 2) when dir/latest exists but names a file that does not.
std::string resolve_restart(const std::string& restart, const std::string& dir);

/// Loads `file` into `dp`'s parameters and buffers and `optimizer`'s state (the slices this rank
/// owns), verifying format, version, every tensor's presence, shape and checksum. Collective over
/// `comm`. Throws tessera::Error (exit code 2) listing every problem found, on every rank; the
/// tensors' values are then unspecified (a run abandons them). Reads straight into host storage.
CheckpointInfo load_checkpoint(const std::string& file, parallel::DataParallel& dp,
                               optim::Optimizer& optimizer, MPI_Comm comm);

}  // namespace tessera::io
