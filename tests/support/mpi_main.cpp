// main() of the MPI tests (run under mpiexec at several rank counts). Only rank 0 prints the usual
// GoogleTest output; every other rank prints its failures prefixed with its rank, so that a failure
// on any rank shows in ctest's log, and all ranks return the same exit code.
//
// The GPU-only build (TESSERA_GPU_ONLY, tests/gpu/CMakeLists.txt) has no Kokkos and no BLAS: it
// compiles this file with TESSERA_TEST_WITHOUT_KOKKOS.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>

#ifndef TESSERA_TEST_WITHOUT_KOKKOS
#include <Kokkos_Core.hpp>

#include "tessera/kernels/gemm.hpp"
#endif

namespace {
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : m_rank(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed()) {
      std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", m_rank,
                   r.file_name() ? r.file_name() : "?", r.line_number(), r.summary());
    }
  }

 private:
  int m_rank;
};
}  // namespace

int main(int argc, char** argv) {
  // As tessera's programs (apps/app_main.cpp): the watchdog and comm::BackgroundProgress call MPI
  // from helper threads.
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  ::testing::InitGoogleTest(&argc, argv);
  int result = 0;
  {
#ifndef TESSERA_TEST_WITHOUT_KOKKOS
    Kokkos::ScopeGuard kokkos(argc, argv);
    tessera::kernels::set_blas_threads(1);
#endif
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    if (rank != 0) {
      delete listeners.Release(listeners.default_result_printer());
      listeners.Append(new RankFailurePrinter(rank));
    }
    const int mine = RUN_ALL_TESTS();
    MPI_Allreduce(&mine, &result, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  }
  MPI_Finalize();
  return result;
}
