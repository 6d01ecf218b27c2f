// main() of the serial unit tests: Kokkos lives for the whole run; every View dies before finalize.
#include <gtest/gtest.h>
#include <Kokkos_Core.hpp>

#include "tessera/kernels/gemm.hpp"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  Kokkos::ScopeGuard kokkos(argc, argv);
  tessera::kernels::set_blas_threads(1);
  return RUN_ALL_TESTS();
}
