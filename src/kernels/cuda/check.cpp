#include "tessera/kernels/cuda/check.hpp"

#include <array>
#include <cstring>
#include <string>

namespace tessera::kernels::cuda::detail {
namespace {

// "src/kernels/cuda/gemm_cublas.cpp" -> "gemm_cublas.cpp": enough to find the line, and stable
// across build directories.
const char* base_name(const char* file) {
  const char* slash = std::strrchr(file, '/');
  return slash != nullptr ? slash + 1 : file;
}

std::string compose(const char* library, const char* call, const std::string& status,
                    const char* file, int line) {
  return std::string(library) + " call '" + call + "' failed: " + status + " [" + base_name(file) +
         ":" + std::to_string(line) + "]";
}

}  // namespace

void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line) {
  // Clear the runtime's last error so that the next, unrelated check does not report it again
  // (sticky errors such as an illegal address stay: the context is lost).
  static_cast<void>(cudaGetLastError());
  throw Error(compose(
      "CUDA", call, std::string(cudaGetErrorName(status)) + " (" + cudaGetErrorString(status) + ")",
      file, line));
}

void throw_cublas_error(cublasStatus_t status, const char* call, const char* file, int line) {
  throw Error(
      compose("cuBLAS", call,
              std::string(cublasGetStatusName(status)) + " (" + cublasGetStatusString(status) + ")",
              file, line));
}

void throw_cudnn_error(cudnnStatus_t status, const char* call, const char* file, int line) {
  std::array<char, 512> detail{};
  cudnnGetLastErrorString(detail.data(), detail.size());
  std::string text = cudnnGetErrorString(status);
  if (detail[0] != '\0') {
    text += " (" + std::string(detail.data()) + ")";
  }
  throw Error(compose("cuDNN", call, text, file, line));
}

}  // namespace tessera::kernels::cuda::detail
