#pragma once
// The file a command writes (`-o OUT` of tessera-ckpt and tessera-data): one check of the name the
// user gave, made before anything is written, and the room on its file system. The commands write
// OUT under a partial name and rename it into place once complete.
#include <cstdint>
#include <string>
#include <vector>

namespace tessera::io {

/// Checks that `out` names a file a command may write, without touching the disk. Throws
/// input_error (exit code 2) naming `out` when it is empty, ends in '/' or names "." or "..", is
/// an existing folder, or is the same file as one of `inputs` (std::filesystem::equivalent, so
/// another spelling, a hard link or a symbolic link to an input is caught): writing it would
/// destroy what the command reads. Called on rank 0 inside comm::agree, so that every rank leaves
/// together.
void check_output_file(const std::string& out, const std::vector<std::string>& inputs = {});

/// Creates `partial`, the name `out` is written under until it is complete, as an empty file (or
/// empties it). Throws input_error naming `out` — the name the user gave, not `partial` — with the
/// system's reason ("w.npz: cannot create the file (Permission denied)"). Call it before a writer
/// (HDF5, MPI-IO, a stream) opens `partial`: their own messages name `partial` or lack the reason.
void create_partial(const std::string& out, const std::string& partial);

/// Makes the folder of `out` when it is missing; throws input_error when it cannot.
void make_output_folder(const std::string& out);

/// The bytes free to this user on the file system that would hold `out` (that of its nearest
/// existing folder), and that folder; bytes is the largest value when it cannot be told.
struct FreeSpace {
  std::uintmax_t bytes = 0;
  std::string folder;
};
FreeSpace free_space_for(const std::string& out);

/// The bytes an HDF5 file holding `payload` bytes of data needs on disk, with a generous margin
/// for its metadata (1 % + 1 MiB): the one estimate every writer checks the free space against.
double hdf5_bytes_needed(double payload);

}  // namespace tessera::io
