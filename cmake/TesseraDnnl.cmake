# Optional oneDNN (Debian: libdnnl-dev) for the host convolutions (src/kernels/conv_dnnl.cpp).
#
#   TESSERA_WITH_DNNL = AUTO (default): use oneDNN when it is found, else im2col + OpenBLAS
#                       ON:             require it (configure fails without it)
#                       OFF:            never use it
#
# Sets TESSERA_HAVE_DNNL (TRUE/FALSE) and, when TRUE, the target Tessera::dnnl (oneDNN and the
# OpenMP runtime it threads with: Tessera sets that runtime's thread count in
# kernels::set_blas_threads). Debian ships a CMake config, dnnl-config.cmake (target DNNL::dnnl); a
# oneDNN without one is found by its header and library.
set(TESSERA_WITH_DNNL AUTO CACHE STRING "Host convolutions with oneDNN: AUTO (when found), ON, OFF")
set_property(CACHE TESSERA_WITH_DNNL PROPERTY STRINGS AUTO ON OFF)

set(TESSERA_HAVE_DNNL FALSE)
set(_dnnl_why "TESSERA_WITH_DNNL=OFF")
if(Kokkos_ENABLE_CUDA)
  # The tensors live in GPU memory, which oneDNN's CPU primitives cannot read: the convolutions are
  # im2col (a Kokkos kernel) + GEMM (cuBLAS) there.
  set(_dnnl_why "the tensors live in GPU memory, a CUDA build of Kokkos")
  if(TESSERA_WITH_DNNL STREQUAL "ON")
    message(FATAL_ERROR "TESSERA_WITH_DNNL=ON with a CUDA build of Kokkos: ${_dnnl_why}, which "
                        "oneDNN's CPU convolutions cannot read")
  endif()
elseif(NOT TESSERA_WITH_DNNL STREQUAL "OFF")
  set(_dnnl_why "oneDNN not found (Debian: libdnnl-dev)")
  # Debian's dnnl-config.cmake requires OpenCL's development files (find_package(OpenCL REQUIRED),
  # a fatal error when missing), which libdnnl-dev only recommends: use the config when they are
  # there, else find the header and library (libdnnl itself needs only the OpenCL runtime).
  find_package(OpenCL QUIET)
  if(OpenCL_FOUND)
    find_package(dnnl CONFIG QUIET)
  endif()
  if(dnnl_FOUND AND TARGET DNNL::dnnl)
    set(_dnnl_target DNNL::dnnl)
    set(_dnnl_runtime "${DNNL_CPU_THREADING_RUNTIME}")
    set(_dnnl_where "${dnnl_DIR}")
  else()
    find_path(TESSERA_DNNL_INCLUDE_DIR oneapi/dnnl/dnnl.hpp)
    find_library(TESSERA_DNNL_LIBRARY dnnl)
    if(TESSERA_DNNL_INCLUDE_DIR AND TESSERA_DNNL_LIBRARY)
      set(_dnnl_target "${TESSERA_DNNL_LIBRARY}")
      set(_dnnl_where "${TESSERA_DNNL_LIBRARY}")
      file(STRINGS "${TESSERA_DNNL_INCLUDE_DIR}/oneapi/dnnl/dnnl_version.h" _dnnl_v
           REGEX "#define DNNL_VERSION_(MAJOR|MINOR|PATCH) ")
      string(REGEX REPLACE "[^0-9;]" "" _dnnl_v "${_dnnl_v}")
      string(REPLACE ";" "." dnnl_VERSION "${_dnnl_v}")
      # The threading runtime the library was built with, from its dnnl_config.h.
      file(STRINGS "${TESSERA_DNNL_INCLUDE_DIR}/oneapi/dnnl/dnnl_config.h" _dnnl_line
           REGEX "#define DNNL_CPU_THREADING_RUNTIME ")
      string(REGEX REPLACE ".*DNNL_RUNTIME_([A-Z]+).*" "\\1" _dnnl_runtime "${_dnnl_line}")
    endif()
  endif()
  if(_dnnl_target)
    # Tessera keeps oneDNN to the rank's thread count through the OpenMP runtime (omp.h, libgomp),
    # the runtime of Debian's build (set_dnnl_threads calls omp_set_num_threads).
    if(_dnnl_runtime STREQUAL "OMP")
      find_package(OpenMP COMPONENTS CXX)
      if(OpenMP_CXX_FOUND)
        set(TESSERA_HAVE_DNNL TRUE)
      else()
        set(_dnnl_why "oneDNN at ${_dnnl_where} threads with OpenMP, but no OpenMP runtime found")
      endif()
    else()
      set(_dnnl_why "oneDNN at ${_dnnl_where} uses the ${_dnnl_runtime} threading runtime; "
                    "Tessera supports OMP (Debian's build)")
    endif()
  endif()
  if(NOT TESSERA_HAVE_DNNL AND TESSERA_WITH_DNNL STREQUAL "ON")
    message(FATAL_ERROR "TESSERA_WITH_DNNL=ON: ${_dnnl_why}")
  endif()
endif()

if(TESSERA_HAVE_DNNL)
  add_library(Tessera::dnnl INTERFACE IMPORTED)
  if(TESSERA_DNNL_INCLUDE_DIR AND NOT _dnnl_target STREQUAL "DNNL::dnnl")
    target_include_directories(Tessera::dnnl INTERFACE ${TESSERA_DNNL_INCLUDE_DIR})
  endif()
  target_link_libraries(Tessera::dnnl INTERFACE ${_dnnl_target})
  # The runtime library only (omp_set_num_threads), not -fopenmp: Tessera has no OpenMP code.
  target_link_libraries(Tessera::dnnl INTERFACE ${OpenMP_CXX_LIBRARIES})
  string(STRIP "oneDNN ${dnnl_VERSION}" _dnnl_name)
  set(TESSERA_HOST_CONV "${_dnnl_name} (${_dnnl_runtime} threading runtime, ${_dnnl_where})")
else()
  if(Kokkos_ENABLE_CUDA)
    set(TESSERA_HOST_CONV "im2col + cuBLAS (${_dnnl_why})")
  else()
    set(TESSERA_HOST_CONV "im2col + OpenBLAS (${_dnnl_why})")
  endif()
endif()
message(STATUS "Tessera host convolution: ${TESSERA_HOST_CONV}")
