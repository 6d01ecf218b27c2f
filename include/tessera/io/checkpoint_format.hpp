#pragma once
// The checkpoint format's names and its checksum (docs/checkpoint-format.md), shared by the
// trainer's writer and reader and by the tessera-ckpt tool, which never builds a model.
#include <cstdint>
#include <istream>
#include <string>

namespace tessera::io {

inline constexpr const char* kCheckpointFormat = "tessera-checkpoint";
inline constexpr std::int64_t kCheckpointVersion = 1;
/// The marker file naming the newest complete checkpoint of a folder.
inline constexpr const char* kLatestMarker = "latest";

/// "ckpt-00001000.h5".
std::string checkpoint_file_name(std::int64_t step);
/// ".ckpt-00001000.h5.partial": the name a checkpoint is written under before it is complete.
std::string partial_file_name(std::int64_t step);
/// The step of a checkpoint file name, or -1 when `name` is not one.
std::int64_t checkpoint_step(const std::string& name);

/// "linear1.weight" → "/model/linear1/weight".
std::string model_path(const std::string& parameter);
/// ("linear1.weight", "momentum") → "/optimizer/linear1/weight/momentum".
std::string optimizer_path(const std::string& parameter, const std::string& state);

/// The checksum's terms summed over `count` elements whose first has global (row-major) index
/// `first`: Σ splitmix64((i << 32) | bits(x_i)) mod 2^64. Partial sums over any split of a tensor
/// add up (mod 2^64) to the whole tensor's checksum.
std::uint64_t checksum_partial(const float* values, std::int64_t first, std::int64_t count);
/// "0x0123456789abcdef".
std::string checksum_string(std::uint64_t checksum);

/// What a `latest` marker holds, read from `in` (at most 4 KiB: a marker is one short line):
/// `name` its first line; `clean` whether that was all (one line, its newline optional).
struct LatestMarker {
  std::string name;
  bool clean = true;
};
LatestMarker read_latest(std::istream& in);
/// `text` escaped (printable) and cut to 200 characters, for messages quoting a file's text.
std::string quoted_excerpt(const std::string& text);

}  // namespace tessera::io
