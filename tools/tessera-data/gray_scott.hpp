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

/// The physical parameters of sample `sample` (F in [0.02, 0.06], k in [0.045, 0.065]); `draw`
/// numbers the independent draws a sample may need (0 first, see kExtinct).
GrayScottParameters sample_parameters(std::uint64_t seed, std::int64_t sample, int draw = 0);

/// A run whose final v is below this everywhere has died out to the trivial state (u = 1, v = 0):
/// its field is the same for every (F, k) that kills the pattern, so nothing can read them back
/// from it. tessera-data gen draws such a sample's parameters again (draw 1, 2, ...), at most
/// kMaxDraws times in all. (Of 256 runs of 32³ over 500 steps, 32 died out, with v at most 2e-7;
/// every other run kept v above 0.19 somewhere.)
inline constexpr float kExtinct = 1e-3F;
inline constexpr int kMaxDraws = 64;

/// Runs one sample on this rank's block of `grid` and returns the final v field of the block
/// (row-major over the local extent, no ghosts).
std::vector<float> simulate(const comm::CartesianGrid& grid, std::uint64_t seed,
                            std::int64_t sample, const GrayScottParameters& p,
                            const GrayScottOptions& options);

}  // namespace tessera::data
