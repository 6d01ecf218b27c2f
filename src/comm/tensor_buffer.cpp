// Buffer and ConstBuffer made from a Tensor: its storage, as Kokkos placed it. Apart from the rest
// of communicator.cpp because it needs Kokkos, which the GPU-only build does without.
#include "tessera/comm/communicator.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::comm {
namespace {

constexpr Memory tensor_memory() {
  return Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible ? Memory::host
                                                                             : Memory::device;
}

}  // namespace

Buffer::Buffer(const Tensor& tensor)
    : data(tensor.data()), count(tensor.numel()), dtype(tensor.dtype()), memory(tensor_memory()) {}

ConstBuffer::ConstBuffer(const Tensor& tensor)
    : data(tensor.data()), count(tensor.numel()), dtype(tensor.dtype()), memory(tensor_memory()) {}

}  // namespace tessera::comm
