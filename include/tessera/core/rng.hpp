#pragma once
// Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11). A value is a pure function of
// (key, counter): no state advances, so any rank can compute element i of a tensor without
// computing elements 0..i-1. That is what makes a parameter initialised in shards equal, element
// for element, the same parameter initialised whole (DESIGN.md, idea 3), and a dropout mask
// independent of how the batch is split.
#include "tessera/core/math.hpp"

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <string_view>

namespace tessera::rng {

struct Philox4x32 {
  std::uint32_t v[4];
};

namespace detail {
KOKKOS_INLINE_FUNCTION std::uint32_t mulhilo(std::uint32_t a, std::uint32_t b, std::uint32_t* hi) {
  const std::uint64_t p = static_cast<std::uint64_t>(a) * b;
  *hi = static_cast<std::uint32_t>(p >> 32);
  return static_cast<std::uint32_t>(p);
}
}  // namespace detail

/// Philox4x32 with 10 rounds: 128 random bits from a 128-bit counter and a 64-bit key.
KOKKOS_INLINE_FUNCTION Philox4x32 philox4x32(Philox4x32 ctr, std::uint32_t k0, std::uint32_t k1) {
  constexpr std::uint32_t kM0 = 0xD2511F53U;
  constexpr std::uint32_t kM1 = 0xCD9E8D57U;
  constexpr std::uint32_t kW0 = 0x9E3779B9U;
  constexpr std::uint32_t kW1 = 0xBB67AE85U;
  for (int round = 0; round < 10; ++round) {
    std::uint32_t hi0 = 0;
    std::uint32_t hi1 = 0;
    const std::uint32_t lo0 = detail::mulhilo(kM0, ctr.v[0], &hi0);
    const std::uint32_t lo1 = detail::mulhilo(kM1, ctr.v[2], &hi1);
    ctr = Philox4x32{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
    k0 += kW0;
    k1 += kW1;
  }
  return ctr;
}

/// FNV-1a 64-bit hash of a name: turns "fc1.weight" into a stream number.
constexpr std::uint64_t hash_name(std::string_view name) {
  std::uint64_t h = 1469598103934665603ULL;
  for (char c : name) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ULL;
  }
  return h;
}

/// A stream of random numbers keyed by (seed, stream), indexed by a 64-bit counter. Copyable into
/// Kokkos kernels.
class CounterRng {
 public:
  KOKKOS_INLINE_FUNCTION CounterRng(std::uint64_t seed, std::uint64_t stream)
      : m_k0(static_cast<std::uint32_t>(seed)),
        m_k1(static_cast<std::uint32_t>(seed >> 32)),
        m_s0(static_cast<std::uint32_t>(stream)),
        m_s1(static_cast<std::uint32_t>(stream >> 32)) {}

  /// The 128 random bits at `index`.
  KOKKOS_INLINE_FUNCTION Philox4x32 bits(std::uint64_t index) const {
    return philox4x32(Philox4x32{{static_cast<std::uint32_t>(index),
                                  static_cast<std::uint32_t>(index >> 32), m_s0, m_s1}},
                      m_k0, m_k1);
  }
  /// Uniform in [0, 1), 24 random bits.
  KOKKOS_INLINE_FUNCTION float uniform(std::uint64_t index) const {
    return static_cast<float>(bits(index).v[0] >> 8) * (1.0F / 16777216.0F);
  }
  /// Standard normal (Box–Muller on two 32-bit words of the same counter).
  KOKKOS_INLINE_FUNCTION float normal(std::uint64_t index) const {
    const Philox4x32 r = bits(index);
    const double u1 = (static_cast<double>(r.v[0]) + 1.0) * (1.0 / 4294967296.0);  // (0, 1]
    const double u2 = static_cast<double>(r.v[1]) * (1.0 / 4294967296.0);          // [0, 1)
    constexpr double kTwoPi = 6.283185307179586476925;
    return static_cast<float>(math::sqrt(-2.0 * math::log(u1)) * math::cos(kTwoPi * u2));
  }

 private:
  std::uint32_t m_k0, m_k1, m_s0, m_s1;
};

}  // namespace tessera::rng
