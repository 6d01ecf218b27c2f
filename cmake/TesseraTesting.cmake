# tessera_add_test(NAME <name> SOURCES <src...> [LIBS <lib...>] [LABELS <label...>]
#                  [MPI [RANKS <n...>]] [MAIN kokkos|mpi|gtest])
#
# Registers one GoogleTest executable. Serial tests run once; MPI tests run under
# ${MPIEXEC_EXECUTABLE} once per rank count (default 1 2 4, as the Cabana test harness does), and
# compute their expectations from the communicator size. A test that cannot run here (no GPU)
# calls GTEST_SKIP() with the reason; ctest then reports it as skipped, not passed.
function(tessera_add_test)
  cmake_parse_arguments(T "MPI" "NAME;MAIN" "SOURCES;LIBS;LABELS;RANKS" ${ARGN})
  if(NOT T_MAIN)
    set(T_MAIN kokkos)
  endif()
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} GTest::gtest tessera_warnings)
  if(T_MAIN STREQUAL "kokkos")
    target_link_libraries(${T_NAME} PRIVATE tessera_test_main)
  elseif(T_MAIN STREQUAL "mpi")
    target_link_libraries(${T_NAME} PRIVATE tessera_test_mpi_main)
  else()
    target_link_libraries(${T_NAME} PRIVATE GTest::gtest_main)
  endif()
  if(T_MPI)
    if(NOT T_RANKS)
      set(T_RANKS 1 2 4)
    endif()
    foreach(n IN LISTS T_RANKS)
      add_test(NAME ${T_NAME}.np${n}
               COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${n} $<TARGET_FILE:${T_NAME}>)
      set_tests_properties(${T_NAME}.np${n} PROPERTIES LABELS "mpi;${T_LABELS}" PROCESSORS ${n}
                           TIMEOUT 300)
      if("gpu" IN_LIST T_LABELS)
        # As below: the GPU tests skip together (on every rank) where the devices are missing.
        set_tests_properties(${T_NAME}.np${n}
                             PROPERTIES SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]")
      endif()
    endforeach()
  else()
    add_test(NAME ${T_NAME} COMMAND ${T_NAME})
    set_tests_properties(${T_NAME} PROPERTIES LABELS "unit;${T_LABELS}" TIMEOUT 300)
    if("gpu" IN_LIST T_LABELS)
      # Every test of a gpu executable skips together when no device exists.
      set_tests_properties(${T_NAME} PROPERTIES SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]")
    endif()
  endif()
endfunction()
