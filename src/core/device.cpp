#include "tessera/core/device.hpp"

#include "tessera/core/tensor.hpp"

#include <fmt/format.h>

namespace tessera {

const char* build_device() {
#if defined(KOKKOS_ENABLE_CUDA)
  return std::is_same_v<ExecSpace, Kokkos::Cuda> ? "cuda" : "cpu";
#else
  return "cpu";
#endif
}

std::string device_description() {
#if defined(KOKKOS_ENABLE_CUDA)
  if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda>) {
    const Kokkos::Cuda cuda;
    const cudaDeviceProp& p = cuda.cuda_device_prop();
    return fmt::format("cuda:{} ({}, {:.1f} GiB, compute capability {}.{})", cuda.cuda_device(),
                       p.name, static_cast<double>(p.totalGlobalMem) / (1024.0 * 1024 * 1024),
                       p.major, p.minor);
  }
#endif
  const int threads = ExecSpace().concurrency();
  return threads > 1 ? fmt::format("cpu (Kokkos {}, {} threads)", ExecSpace::name(), threads)
                     : fmt::format("cpu (Kokkos {})", ExecSpace::name());
}

std::string device_mismatch(const std::string& device) {
  const std::string built = build_device();
  if (device == built) {
    return "";
  }
  if (device == "cuda") {
    return fmt::format(
        "this tessera is built without CUDA: its tensors live in host memory and its kernels run "
        "on the CPU (Kokkos {}). A GPU run needs Tessera built against a CUDA build of Kokkos with "
        "-DTESSERA_ENABLE_CUDA=ON (docs/architecture.md); leave run.device out to run on the CPU",
        ExecSpace::name());
  }
  return fmt::format(
      "this tessera is built for CUDA: its tensors live in GPU memory (Kokkos {}). A CPU run "
      "needs the host build (tools/setup.sh, Debian's Kokkos); leave run.device out to run on "
      "the GPU",
      ExecSpace::name());
}

}  // namespace tessera
