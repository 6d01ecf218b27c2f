#pragma once
// Where this build's tensors live and its kernels run. Kokkos's default execution space decides
// it when Tessera is built: the host (Serial or OpenMP) with Debian's Kokkos, the GPU with a CUDA
// build of Kokkos (docs/architecture.md). A deck's `run.device` names it and is checked against
// the build; a CUDA build gives each rank the GPU of its node-local rank (Kokkos maps it: local
// rank modulo the visible devices).
#include <string>

namespace tessera {

/// "cuda" when tensors live in GPU memory (a CUDA build of Kokkos), else "cpu".
const char* build_device();

/// This rank's device in words: "cpu (Kokkos Serial)", "cpu (Kokkos OpenMP, 8 threads)",
/// "cuda:0 (NVIDIA H100 80GB HBM3, 79.1 GiB, compute capability 9.0)".
std::string device_description();

/// Why a deck's `run.device = device` cannot run in this build, or "" when it can.
std::string device_mismatch(const std::string& device);

}  // namespace tessera
