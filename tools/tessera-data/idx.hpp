#pragma once
// IDX files (the MNIST family's format), plain or gzip-compressed, read with every field checked.
#include <cstdint>
#include <string>
#include <vector>

namespace tessera::data {

struct IdxArray {
  std::vector<std::uint32_t> dims;
  std::vector<std::uint8_t> values;
};

/// Reads an unsigned-byte IDX file (gzip or not; zlib detects which) of `expected_rank`
/// dimensions. Throws tessera::Error (exit code 2) naming the file when the magic number, the
/// rank, or the amount of data does not match, or when bytes follow the data.
IdxArray read_idx(const std::string& path, int expected_rank);

}  // namespace tessera::data
