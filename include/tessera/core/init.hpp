#pragma once
// Parameter initialisation keyed by (seed, parameter name, global element index): a shard computes
// exactly its slice of the serial tensor, so the model does not depend on the decomposition.
#include "tessera/core/layout.hpp"
#include "tessera/core/tensor.hpp"

#include <cstdint>
#include <string>

namespace tessera {

enum class InitKind { constant, uniform, normal };

/// constant(a); uniform in [a, b); normal with mean a and standard deviation b.
struct InitSpec {
  InitKind kind = InitKind::constant;
  float a = 0.0F;
  float b = 0.0F;

  static InitSpec constant(float value) { return {InitKind::constant, value, 0.0F}; }
  static InitSpec uniform(float lo, float hi) { return {InitKind::uniform, lo, hi}; }
  static InitSpec normal(float mean, float stddev) { return {InitKind::normal, mean, stddev}; }
};

/// Fills `local`, the block of `layout` held at `place`, so that its element at global
/// multi-index g equals element g of the whole tensor initialised with the same seed and name.
void init_shard(const Tensor& local, const Layout& layout, const GridPlace& place,
                std::uint64_t seed, const std::string& name, const InitSpec& spec);

}  // namespace tessera
