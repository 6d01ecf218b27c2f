#include "ckpt_file.hpp"

#include "tessera/core/error.hpp"
#include "tessera/io/checkpoint_format.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

namespace tessera::ckpt {

std::vector<Piece> split_elements(const std::vector<std::int64_t>& sizes, int rank, int ranks) {
  std::int64_t total = 0;
  for (std::int64_t s : sizes) {
    total += s;
  }
  const std::int64_t base = total / ranks;
  const std::int64_t extra = total % ranks;
  auto start = [&](std::int64_t r) { return r * base + std::min(r, extra); };
  const std::int64_t lo = start(rank);
  const std::int64_t hi = start(rank + 1);
  std::vector<Piece> out;
  std::int64_t at = 0;
  for (std::size_t t = 0; t < sizes.size(); ++t) {
    const std::int64_t a = std::max(lo, at);
    const std::int64_t b = std::min(hi, at + sizes[t]);
    if (a < b) {
      out.push_back(Piece{t, a - at, b - a});
    }
    at += sizes[t];
  }
  return out;
}

std::string shape_text(const std::vector<hsize_t>& shape) {
  return fmt::format("({})", fmt::join(shape, ", "));
}

}  // namespace tessera::ckpt
