# The CUDA backend: nvcc for the .cu sources, cuBLAS for GEMM, cuDNN for convolution (NCCL comes
# with the communication layer). NCCL and cuDNN ship no CMake config: they are found next to the
# toolkit's own include and library directories.
include(CheckLanguage)
if(NOT CMAKE_CUDA_COMPILER)
  find_program(_tessera_nvcc nvcc PATHS /usr/local/cuda/bin ENV CUDA_HOME PATH_SUFFIXES bin)
  if(_tessera_nvcc)
    set(CMAKE_CUDA_COMPILER "${_tessera_nvcc}")
  endif()
endif()
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  message(FATAL_ERROR "TESSERA_ENABLE_CUDA=ON but no nvcc was found (set CMAKE_CUDA_COMPILER or "
                      "put the CUDA toolkit's bin/ on PATH)")
endif()
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES 90)  # H100 / H200; override with -DCMAKE_CUDA_ARCHITECTURES=...
endif()
# One CUDA runtime per process: the shared libcudart that CUDA::cudart, cuBLAS and cuDNN use (the
# default, Static, would also link cudart_static into every executable that links a .cu object).
if(NOT DEFINED CMAKE_CUDA_RUNTIME_LIBRARY)
  set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
endif()
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
find_package(CUDAToolkit REQUIRED)

get_filename_component(_cuda_root "${CUDAToolkit_BIN_DIR}" DIRECTORY)
set(_cuda_hints ${CUDAToolkit_INCLUDE_DIRS} ${CUDAToolkit_LIBRARY_DIR} ${_cuda_root}/lib
                ${_cuda_root}/lib64)

find_path(CUDNN_INCLUDE_DIR cudnn.h HINTS ${_cuda_hints} ENV CUDNN_ROOT PATH_SUFFIXES include)
find_library(CUDNN_LIBRARY cudnn HINTS ${_cuda_hints} ENV CUDNN_ROOT PATH_SUFFIXES lib lib64)
if(NOT CUDNN_INCLUDE_DIR OR NOT CUDNN_LIBRARY)
  message(FATAL_ERROR "cuDNN not found next to the CUDA toolkit (${_cuda_root}); set CUDNN_ROOT")
endif()
add_library(Tessera::cudnn INTERFACE IMPORTED)
target_include_directories(Tessera::cudnn INTERFACE ${CUDNN_INCLUDE_DIR})
target_link_libraries(Tessera::cudnn INTERFACE ${CUDNN_LIBRARY})

find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${_cuda_hints} ENV NCCL_ROOT PATH_SUFFIXES include)
find_library(NCCL_LIBRARY nccl HINTS ${_cuda_hints} ENV NCCL_ROOT PATH_SUFFIXES lib lib64)
if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
  add_library(Tessera::nccl INTERFACE IMPORTED)
  target_include_directories(Tessera::nccl INTERFACE ${NCCL_INCLUDE_DIR})
  target_link_libraries(Tessera::nccl INTERFACE ${NCCL_LIBRARY})
endif()
message(STATUS "CUDA ${CUDAToolkit_VERSION} (${CMAKE_CUDA_COMPILER}), archs ${CMAKE_CUDA_ARCHITECTURES}; "
               "cuDNN ${CUDNN_LIBRARY}; NCCL ${NCCL_LIBRARY}")
