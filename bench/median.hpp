#pragma once
// The median of a bench's repeated measurements (the mean of the middle two for an even count).
#include <algorithm>
#include <cstddef>
#include <vector>

namespace tessera::bench {

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 == 1 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

}  // namespace tessera::bench
