#include "tessera/kernels/cuda/device.hpp"

namespace tessera::kernels::cuda {
namespace {

// The runtime's answer, with a failed query cleared so that later checks do not see it.
cudaError_t query_device_count(int& count) noexcept {
  count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    static_cast<void>(cudaGetLastError());
    count = 0;
  }
  return status;
}

}  // namespace

int device_count() noexcept {
  int count = 0;
  query_device_count(count);
  return count;
}

std::string no_device_reason() {
  int count = 0;
  const cudaError_t status = query_device_count(count);
  if (status != cudaSuccess) {
    return std::string("cudaGetDeviceCount: ") + cudaGetErrorString(status);
  }
  if (count == 0) {
    return "no CUDA device visible (CUDA_VISIBLE_DEVICES?)";
  }
  return {};
}

// --- Stream ------------------------------------------------------------------------------------

Stream::Stream() {
  TESSERA_CUDA_CHECK(cudaStreamCreateWithFlags(&m_stream, cudaStreamNonBlocking));
}

Stream::~Stream() {
  if (m_stream != nullptr) {
    static_cast<void>(cudaStreamDestroy(m_stream));
  }
}

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    Stream old(std::move(*this));
    m_stream = std::exchange(other.m_stream, nullptr);
  }
  return *this;
}

void Stream::synchronize() const {
  TESSERA_CUDA_CHECK(cudaStreamSynchronize(m_stream));
}

// --- CublasHandle ------------------------------------------------------------------------------

CublasHandle::CublasHandle(cudaStream_t stream) {
  TESSERA_CUBLAS_CHECK(cublasCreate(&m_handle));
  try {
    TESSERA_CUBLAS_CHECK(cublasSetPointerMode(m_handle, CUBLAS_POINTER_MODE_HOST));
    TESSERA_CUBLAS_CHECK(cublasSetMathMode(m_handle, CUBLAS_DEFAULT_MATH));
    set_stream(stream);
  } catch (...) {
    static_cast<void>(cublasDestroy(m_handle));
    throw;
  }
}

CublasHandle::~CublasHandle() {
  if (m_handle != nullptr) {
    static_cast<void>(cublasDestroy(m_handle));
  }
}

CublasHandle& CublasHandle::operator=(CublasHandle&& other) noexcept {
  if (this != &other) {
    CublasHandle old(std::move(*this));
    m_handle = std::exchange(other.m_handle, nullptr);
    m_stream = std::exchange(other.m_stream, nullptr);
  }
  return *this;
}

void CublasHandle::set_stream(cudaStream_t stream) {
  TESSERA_CUBLAS_CHECK(cublasSetStream(m_handle, stream));
  m_stream = stream;
}

// --- CudnnHandle -------------------------------------------------------------------------------

CudnnHandle::CudnnHandle(cudaStream_t stream) {
  TESSERA_CUDNN_CHECK(cudnnCreate(&m_handle));
  try {
    set_stream(stream);
  } catch (...) {
    static_cast<void>(cudnnDestroy(m_handle));
    throw;
  }
}

CudnnHandle::~CudnnHandle() {
  if (m_handle != nullptr) {
    static_cast<void>(cudnnDestroy(m_handle));
  }
}

CudnnHandle& CudnnHandle::operator=(CudnnHandle&& other) noexcept {
  if (this != &other) {
    CudnnHandle old(std::move(*this));
    m_handle = std::exchange(other.m_handle, nullptr);
    m_stream = std::exchange(other.m_stream, nullptr);
  }
  return *this;
}

void CudnnHandle::set_stream(cudaStream_t stream) {
  TESSERA_CUDNN_CHECK(cudnnSetStream(m_handle, stream));
  m_stream = stream;
}

}  // namespace tessera::kernels::cuda
