// Buffer and ConstBuffer made from a Tensor: its storage, as Kokkos placed it. Apart from the rest
// of communicator.cpp because it needs Kokkos, which the GPU-only build does without.
#include "tessera/comm/communicator.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::comm {
namespace {

constexpr Memory tensor_memory() {
  return kHostTensors ? Memory::host : Memory::device;
}

}  // namespace

Buffer::Buffer(const Tensor& tensor)
    : data(tensor.data()), count(tensor.numel()), dtype(tensor.dtype()), memory(tensor_memory()) {}

ConstBuffer::ConstBuffer(const Tensor& tensor)
    : data(tensor.data()), count(tensor.numel()), dtype(tensor.dtype()), memory(tensor_memory()) {}

void enable_device_staging() {
  if constexpr (tensor_memory() == Memory::device) {
    using Bytes = Kokkos::View<char*, MemSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
    using HostBytes =
        Kokkos::View<char*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
    // Kokkos::deep_copy fences before and after: the kernels that wrote a buffer have finished
    // before it is read, and the copy back is done before the next kernel reads it.
    set_device_copies(
        {[](void* host, const void* device, std::size_t bytes) {
           Kokkos::deep_copy(HostBytes(static_cast<char*>(host), bytes),
                             Bytes(static_cast<char*>(const_cast<void*>(device)), bytes));
         },
         [](void* device, const void* host, std::size_t bytes) {
           Kokkos::deep_copy(Bytes(static_cast<char*>(device), bytes),
                             HostBytes(static_cast<char*>(const_cast<void*>(host)), bytes));
         }});
  }
}

}  // namespace tessera::comm
