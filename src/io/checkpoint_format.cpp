#include "tessera/io/checkpoint_format.hpp"

#include "tessera/core/clones.hpp"
#include "tessera/core/strings.hpp"

#include <fmt/format.h>

#include <cstring>
#include <regex>

namespace tessera::io {
namespace {
std::uint64_t splitmix64(std::uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

std::string slashed(const std::string& name) {
  std::string out = name;
  for (char& c : out) {
    if (c == '.') {
      c = '/';
    }
  }
  return out;
}
}  // namespace

std::string checkpoint_file_name(std::int64_t step) {
  return fmt::format("ckpt-{:08d}.h5", step);
}

std::string partial_file_name(std::int64_t step) {
  return fmt::format(".ckpt-{:08d}.h5.partial", step);
}

std::int64_t checkpoint_step(const std::string& name) {
  static const std::regex pattern("ckpt-([0-9]{8,})\\.h5");
  std::smatch m;
  if (!std::regex_match(name, m, pattern)) {
    return -1;
  }
  return std::stoll(m[1].str());
}

std::string model_path(const std::string& parameter) {
  return "/model/" + slashed(parameter);
}

std::string optimizer_path(const std::string& parameter, const std::string& state) {
  return "/optimizer/" + slashed(parameter) + "/" + state;
}

// Cloned for AVX-512 (64-bit multiplies in vector registers) with a baseline fallback, chosen at
// load time: the checksum of a checkpoint runs at memory speed where the CPU allows.
TESSERA_CLONES_AVX512
std::uint64_t checksum_partial(const float* values, std::int64_t first, std::int64_t count) {
  std::uint64_t sum = 0;
  for (std::int64_t k = 0; k < count; ++k) {
    std::uint32_t bits = 0;
    std::memcpy(&bits, values + k, sizeof(bits));
    sum += splitmix64((static_cast<std::uint64_t>(first + k) << 32) | bits);
  }
  return sum;
}

std::string checksum_string(std::uint64_t checksum) {
  return fmt::format("0x{:016x}", checksum);
}

LatestMarker read_latest(std::istream& in) {
  constexpr std::streamsize kMost = 4096;
  std::string text(static_cast<size_t>(kMost) + 1, '\0');
  in.read(text.data(), kMost + 1);
  text.resize(static_cast<size_t>(in.gcount()));
  LatestMarker m;
  const size_t end = text.find('\n');
  m.name = text.substr(0, end);
  m.clean = text.size() <= static_cast<size_t>(kMost) &&
            (end == std::string::npos || end + 1 == text.size());
  return m;
}

std::string quoted_excerpt(const std::string& text) {
  constexpr size_t kMost = 200;
  return text.size() <= kMost ? printable(text) : printable(text.substr(0, kMost)) + "...";
}

}  // namespace tessera::io
