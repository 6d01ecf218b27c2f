#pragma once
// Checkpoints (docs/checkpoint-format.md): one HDF5 file per save, written collectively with
// parallel HDF5 over the trainer's ranks, every tensor once at its global shape; a commit protocol
// (write under a partial name, rename, move the `latest` marker atomically) so that a crash never
// loses the previous checkpoint and a partial file is never resumed.
//
// What is written and read comes from the trainer's state registry (parallel/registry.hpp): each
// element is written by its owner, from wherever the rank's layout put it (a block of a
// tensor-split weight, a ZeRO-1 piece of an optimizer state), and a restart reads into each rank
// exactly the boxes its own layout holds, whatever the rank count, grid or ZeRO setting at save.
// Per-tensor checksums are sums of per-element terms keyed by the global index, so the owners'
// partial sums add up to the same value whatever the decomposition.
#include "tessera/comm/communicator.hpp"
#include "tessera/io/checkpoint_format.hpp"
#include "tessera/io/checkpoint_reader.hpp"
#include "tessera/io/dataset.hpp"
#include "tessera/parallel/registry.hpp"

#include <cstdint>
#include <optional>
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
  int ranks = 1;                 ///< ranks of the trainer that wrote it
  int data_size = 1;
  int zero = 0;
  std::string optimizer;             ///< "sgd", "adamw"
  std::int64_t optimizer_steps = 0;  ///< the optimizer's step count (Adam's bias correction)
};

/// A checkpoint's root read and judged: the checks that need no model, worded as
/// `tessera-ckpt verify` words them.
struct CheckpointHeader {
  std::optional<CheckpointInfo> info;  ///< the root attributes; nullopt when they are unsound
  std::vector<std::string> problems;   ///< the root's problems, none when it is sound
};

/// Reads `f`'s root attributes and judges them (root_problems against `tensors`, the file's
/// checkpoint_tensors()) and, when they are sound, the optimizer whose state the file holds
/// against `optimizer` ("" accepts any). A restart and `tessera check` use it.
CheckpointHeader read_header(const File& f, const std::vector<TensorEntry>& tensors,
                             const std::string& optimizer);

/// What a save did, for the progress output.
struct SaveReport {
  std::string file;      ///< the committed checkpoint's path
  double bytes = 0.0;    ///< tensor bytes in the file
  double seconds = 0.0;  ///< from the start of the save to the marker's move
};

/// The end of a failed save's message: "DIR/latest still names the last good checkpoint", or
/// "there is no earlier checkpoint".
std::string describe_last_good(const std::string& dir);

/// Saves every tensor of `state` into `dir` (created when missing) as dir/ckpt-<step>.h5, moves
/// dir/latest to it and keeps the newest `keep` checkpoints. Collective over `comm`, the trainer
/// (every rank that holds a part of `state`; each registers the same tensors in the same order).
/// Throws tessera::Error on every rank when the save fails; the previous checkpoint is then intact.
SaveReport save_checkpoint(const std::string& dir, const CheckpointInfo& info,
                           const parallel::StateRegistry& state, comm::Communicator& comm,
                           int keep);

/// The complete checkpoint files (ckpt-<step>.h5) in `dir`, newest first; none when `dir` does
/// not exist.
std::vector<std::string> checkpoints_in(const std::string& dir);

/// The checkpoint `restart` names: "auto" → the one dir/latest names; when dir/latest is missing
/// but checkpoints are there (latest lost), the newest of them, with `note` saying so; "" when
/// there is none (a fresh start). Any other value is a file path, returned as is. Throws
/// tessera::Error (exit code 2) when dir/latest names a file that does not exist or is not a
/// checkpoint's name (printed escaped).
std::string resolve_restart(const std::string& restart, const std::string& dir,
                            std::string* note = nullptr);

/// Loads `file` into the tensors of `state` (the boxes this rank holds), verifying the format, that
/// it holds the optimizer `optimizer` and exactly the tensors of `state`, their shapes, element
/// types and checksums. An empty `optimizer` loads a model alone (`state` holds parameters and
/// buffers; the file's optimizer state is not looked at: tessera generate). Collective over `comm`
/// (the trainer). Throws tessera::Error (exit code 2) listing every problem found, on every rank
/// together; the tensors' values are then unspecified (a run abandons them). Returns the root
/// attributes.
CheckpointInfo load_checkpoint(const std::string& file, const parallel::StateRegistry& state,
                               const std::string& optimizer, comm::Communicator& comm);

}  // namespace tessera::io
