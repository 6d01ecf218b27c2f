# GPU-only build (TESSERA_GPU_ONLY): can the NCCL communicator (tessera_comm_nccl) and its test
# (gpu_nccl) be built too? They need, besides CUDA and GoogleTest:
#   - NCCL (Tessera::nccl, from TesseraCuda);
#   - MPI, whose communicator bootstraps NCCL and whose mpiexec runs the test. On a GPU machine
#     without one, tools/gpu_check.sh passes the MPICH that tools/gpu_prepare.sh carries, by path:
#     MPI_CXX_HEADER_DIR, MPI_CXX_LIB_NAMES=mpich, MPI_mpich_LIBRARY and MPIEXEC_EXECUTABLE, with
#     MPI_SKIP_COMPILER_WRAPPER and MPI_SKIP_GUESSING so that FindMPI detects nothing itself;
#   - fmt's headers, used header-only (TESSERA_FMT_INCLUDE_DIR; carried too).
# No Kokkos. Sets TESSERA_GPU_ONLY_NCCL, defines Tessera::fmt, and says what it builds or why not.
set(TESSERA_GPU_ONLY_NCCL OFF)
set(_tessera_skip_reason "")
if(NOT TARGET Tessera::nccl)
  set(_tessera_skip_reason "NCCL not found next to the CUDA toolkit (set NCCL_ROOT, or "
                           "NCCL_INCLUDE_DIR and NCCL_LIBRARY)")
else()
  if(NOT MPI_SKIP_COMPILER_WRAPPER AND NOT MPI_CXX_COMPILER)
    find_program(MPI_CXX_COMPILER NAMES mpicxx.mpich)  # MPICH by name, as the host build does
  endif()
  set(MPI_CXX_SKIP_MPICXX ON)  # the C API only: no libmpichcxx to carry
  find_package(MPI COMPONENTS CXX)
  find_path(TESSERA_FMT_INCLUDE_DIR fmt/format.h
            DOC "fmt's headers, used header-only by the GPU-only build")
  if(NOT MPI_CXX_FOUND)
    set(_tessera_skip_reason "no MPI found (give one by path, as tools/gpu_check.sh does with "
                             "the MPICH in .carry/: MPI_CXX_HEADER_DIR, MPI_CXX_LIB_NAMES, "
                             "MPI_<name>_LIBRARY, MPIEXEC_EXECUTABLE)")
  elseif(TESSERA_BUILD_TESTS AND NOT MPIEXEC_EXECUTABLE)
    set(_tessera_skip_reason "MPI found but no mpiexec (set MPIEXEC_EXECUTABLE)")
  elseif(NOT TESSERA_FMT_INCLUDE_DIR)
    set(_tessera_skip_reason "fmt's headers not found (set TESSERA_FMT_INCLUDE_DIR)")
  else()
    set(TESSERA_GPU_ONLY_NCCL ON)
  endif()
endif()
string(REPLACE ";" "" _tessera_skip_reason "${_tessera_skip_reason}")

if(TESSERA_GPU_ONLY_NCCL)
  add_library(Tessera::fmt INTERFACE IMPORTED)
  target_include_directories(Tessera::fmt INTERFACE ${TESSERA_FMT_INCLUDE_DIR})
  target_compile_definitions(Tessera::fmt INTERFACE FMT_HEADER_ONLY=1)
  message(STATUS "GPU-only: building the NCCL communicator and its test (MPI ${MPI_CXX_VERSION}: "
                 "${MPI_CXX_LIBRARIES}; ${MPIEXEC_EXECUTABLE}; fmt ${TESSERA_FMT_INCLUDE_DIR})")
else()
  message(STATUS "GPU-only: skipping the NCCL communicator (tessera_comm_nccl) and its test "
                 "(gpu_nccl): ${_tessera_skip_reason}")
endif()
