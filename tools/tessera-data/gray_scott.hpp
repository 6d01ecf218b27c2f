#pragma once
// Gray–Scott reaction–diffusion on a periodic 2-D or 3-D grid, domain-decomposed over the ranks
// with halo exchange:  u' = Du ∇²u − u v² + F (1 − u),   v' = Dv ∇²v + u v² − (F + k) v.
// Every value depends only on (seed, sample, global grid index), never on the decomposition, so
// any rank count produces the same fields bit for bit.
#include "tessera/comm/cartesian.hpp"

#include <cstdint>
#include <vector>

namespace tessera::data {

struct GrayScottParameters {
  float feed = 0.04F;  ///< F
  float kill = 0.06F;  ///< k
};

struct GrayScottOptions {
  float du = 0.16F;
  float dv = 0.08F;
  int steps = 200;
};

/// The ranges the parameters are drawn from: F in [kFeedLow, kFeedLow + kFeedRange], k likewise.
inline constexpr float kFeedLow = 0.02F;
inline constexpr float kFeedRange = 0.04F;
inline constexpr float kKillLow = 0.045F;
inline constexpr float kKillRange = 0.02F;

/// The physical parameters of sample `sample` (F in [0.02, 0.06], k in [0.045, 0.065]).
GrayScottParameters sample_parameters(std::uint64_t seed, std::int64_t sample);

/// Runs one sample on this rank's block of `grid` and returns the final v field of the block
/// (row-major over the local extent, no ghosts).
std::vector<float> simulate(const comm::CartesianGrid& grid, std::uint64_t seed,
                            std::int64_t sample, const GrayScottParameters& p,
                            const GrayScottOptions& options);

}  // namespace tessera::data
