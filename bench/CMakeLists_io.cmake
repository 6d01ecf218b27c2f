# I/O benchmarks (bench/RESULTS_IO.md). Included from bench/CMakeLists.txt:
#   include(${CMAKE_CURRENT_SOURCE_DIR}/CMakeLists_io.cmake)
# Paths are relative to this file, so it works from wherever it is included.
#
#   tessera-bench-reader   training loop fed by the DatasetReader: time waiting for data
#   gen_vs_dd.sh           (script, not built) tessera-data gen's write rate against dd's
add_executable(tessera-bench-reader ${CMAKE_CURRENT_LIST_DIR}/bench_reader.cpp)
target_link_libraries(tessera-bench-reader PRIVATE tessera_io tessera_nn tessera_kernels
                                                   tessera_appmain CLI11::CLI11 fmt::fmt
                                                   MPI::MPI_CXX tessera_warnings)
set_target_properties(tessera-bench-reader PROPERTIES RUNTIME_OUTPUT_DIRECTORY
                                                      ${PROJECT_BINARY_DIR}/bin)
