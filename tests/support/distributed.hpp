#pragma once
// Whole tensors from their distributed pieces, for the MPI tests: every owner puts its elements at
// their global indices (core::Layout::global_indices, the registry's owner rule) and a sum over the
// trainer's ranks assembles the tensor on every rank. The values travel as their bit patterns in
// integers, so the assembly is exact (a float sum would turn -0 into +0).
#include "tessera/comm/communicator.hpp"
#include "tessera/parallel/registry.hpp"

#include <cstdint>
#include <cstring>
#include <vector>

namespace tessera::testing {

/// The global tensor of registry entry `e` (row-major), on every rank of `trainer`.
inline std::vector<float> gather_global(const parallel::StateEntry& e, const GridPlace& place,
                                        comm::Communicator& trainer) {
  std::vector<std::uint64_t> bits(static_cast<size_t>(numel(e.layout.global_shape())), 0);
  if (e.owner && e.local.defined()) {
    // Element k of the entry is element first + k of the rank's local block.
    const std::vector<Index> global = e.layout.global_indices(place);
    const std::vector<float> values = e.local.to_host();
    for (size_t k = 0; k < values.size(); ++k) {
      std::uint32_t word = 0;
      std::memcpy(&word, &values[k], sizeof(word));
      bits[static_cast<size_t>(global[static_cast<size_t>(e.first) + k])] = word;
    }
  }
  trainer.allreduce(comm::Buffer(bits))->wait();
  std::vector<float> out(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) {
    const auto word = static_cast<std::uint32_t>(bits[i]);
    std::memcpy(&out[i], &word, sizeof(word));
  }
  return out;
}

/// The whole value of every entry of `registry` of kind `kind`, in registry order.
inline std::vector<std::vector<float>> gather_all(const parallel::StateRegistry& registry,
                                                  parallel::StateKind kind,
                                                  comm::Communicator& trainer) {
  std::vector<std::vector<float>> out;
  for (const parallel::StateEntry& e : registry.entries()) {
    if (e.kind == kind) {
      out.push_back(gather_global(e, registry.place(), trainer));
    }
  }
  return out;
}

}  // namespace tessera::testing
