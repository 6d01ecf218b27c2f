#pragma once
// Check macros for the CUDA runtime, cuBLAS and cuDNN (STYLE.md, "Errors"): a failing call throws
// tessera::Error naming the call as written, the library's status name and description, and the
// file:line of the check, e.g.
//   cuDNN call 'cudnnConvolutionForward(...)' failed: CUDNN_STATUS_BAD_PARAM (...)
//   [conv_cudnn.cpp:88]
// Only the standard library and the vendor headers: no fmt, no Kokkos (the CUDA-only build).
#include "tessera/core/error.hpp"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>

namespace tessera::kernels::cuda::detail {
[[noreturn]] void throw_cuda_error(cudaError_t status, const char* call, const char* file,
                                   int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t status, const char* call, const char* file,
                                     int line);
[[noreturn]] void throw_cudnn_error(cudnnStatus_t status, const char* call, const char* file,
                                    int line);
}  // namespace tessera::kernels::cuda::detail

/// TESSERA_CUDA_CHECK(cudaMemcpy(...)): throw tessera::Error unless the call returns cudaSuccess.
/// The (non-sticky) error is cleared from the runtime before throwing.
#define TESSERA_CUDA_CHECK(...)                                                              \
  do {                                                                                       \
    const cudaError_t tessera_cuda_status_ = (__VA_ARGS__);                                  \
    if (tessera_cuda_status_ != cudaSuccess) {                                               \
      ::tessera::kernels::cuda::detail::throw_cuda_error(tessera_cuda_status_, #__VA_ARGS__, \
                                                         __FILE__, __LINE__);                \
    }                                                                                        \
  } while (false)

/// TESSERA_CUBLAS_CHECK(cublasSgemm(...)): throw unless the call returns CUBLAS_STATUS_SUCCESS.
#define TESSERA_CUBLAS_CHECK(...)                                                                \
  do {                                                                                           \
    const cublasStatus_t tessera_cublas_status_ = (__VA_ARGS__);                                 \
    if (tessera_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                                       \
      ::tessera::kernels::cuda::detail::throw_cublas_error(tessera_cublas_status_, #__VA_ARGS__, \
                                                           __FILE__, __LINE__);                  \
    }                                                                                            \
  } while (false)

/// TESSERA_CUDNN_CHECK(cudnnConvolutionForward(...)): throw unless the call returns
/// CUDNN_STATUS_SUCCESS; the message carries cuDNN's own last-error text when it has one.
#define TESSERA_CUDNN_CHECK(...)                                                               \
  do {                                                                                         \
    const cudnnStatus_t tessera_cudnn_status_ = (__VA_ARGS__);                                 \
    if (tessera_cudnn_status_ != CUDNN_STATUS_SUCCESS) {                                       \
      ::tessera::kernels::cuda::detail::throw_cudnn_error(tessera_cudnn_status_, #__VA_ARGS__, \
                                                          __FILE__, __LINE__);                 \
    }                                                                                          \
  } while (false)
