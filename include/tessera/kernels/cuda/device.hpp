#pragma once
// Device discovery, device memory and the library handles of the CUDA backend. Owners are RAII and
// move-only (tiny-cuda-nn style); failures throw tessera::Error through the check macros. Headers
// here need only the CUDA toolkit and the standard library (no Kokkos, no fmt).
#include "tessera/kernels/cuda/check.hpp"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace tessera::kernels::cuda {

/// Element counts and extents; the same type as tessera::Index (core/tensor.hpp) without Kokkos.
using Index = std::int64_t;

/// Number of CUDA devices this process can use; 0 when there is no driver or no device. Never
/// throws (a failed query is cleared from the runtime).
int device_count() noexcept;

/// Why device_count() is 0, for test skips and log lines: "cudaGetDeviceCount: <error string>" or
/// "no CUDA device visible (CUDA_VISIBLE_DEVICES?)"; empty when a device exists.
std::string no_device_reason();

/// An owned CUDA stream (non-blocking with respect to the legacy default stream).
class Stream {
 public:
  Stream();
  ~Stream();
  Stream(Stream&& other) noexcept : m_stream(std::exchange(other.m_stream, nullptr)) {}
  Stream& operator=(Stream&& other) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  cudaStream_t get() const { return m_stream; }
  /// Waits for all work queued on the stream; throws when an earlier kernel failed.
  void synchronize() const;

 private:
  cudaStream_t m_stream = nullptr;
};

/// Device memory for `size()` elements of T (uninitialised unless built from host data). Host
/// copies are complete when they return: each is queued on `stream` (nullptr: the legacy default
/// stream, which orders after work on blocking streams but not on a non-blocking Stream) and
/// waited for. Use them for set-up and checks, not in the step loop.
template <class T>
class DeviceBuffer {
  static_assert(std::is_trivially_copyable_v<T>, "DeviceBuffer holds trivially copyable types");

 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t size) : m_size(size) {
    if (size > 0) {
      void* ptr = nullptr;
      TESSERA_CUDA_CHECK(cudaMalloc(&ptr, size * sizeof(T)));
      m_data = static_cast<T*>(ptr);
    }
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
    copy_from_host(host);
  }
  ~DeviceBuffer() {
    if (m_data != nullptr) {
      static_cast<void>(cudaFree(m_data));  // no throwing from a destructor
    }
  }
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : m_data(std::exchange(other.m_data, nullptr)), m_size(std::exchange(other.m_size, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      DeviceBuffer old(std::move(*this));
      m_data = std::exchange(other.m_data, nullptr);
      m_size = std::exchange(other.m_size, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* data() { return m_data; }
  const T* data() const { return m_data; }
  std::size_t size() const { return m_size; }
  std::size_t bytes() const { return m_size * sizeof(T); }
  bool empty() const { return m_size == 0; }

  /// Copies host.size() elements to the device; host.size() must equal size().
  void copy_from_host(const std::vector<T>& host, cudaStream_t stream = nullptr) {
    check_size(host.size(), "copy_from_host");
    if (m_size > 0) {
      TESSERA_CUDA_CHECK(
          cudaMemcpyAsync(m_data, host.data(), bytes(), cudaMemcpyHostToDevice, stream));
      TESSERA_CUDA_CHECK(cudaStreamSynchronize(stream));
    }
  }
  /// Copies the whole buffer into `host` (resized to size()).
  void copy_to_host(std::vector<T>& host, cudaStream_t stream = nullptr) const {
    if (host.size() != m_size) {
      host = std::vector<T>(m_size);
    }
    copy_to_host(host.data(), stream);
  }
  std::vector<T> to_host(cudaStream_t stream = nullptr) const {
    std::vector<T> host(m_size);
    copy_to_host(host.data(), stream);
    return host;
  }
  /// Sets every byte to zero (0.0F for floats), ordered on `stream`.
  void zero(cudaStream_t stream = nullptr) {
    if (m_size > 0) {
      TESSERA_CUDA_CHECK(cudaMemsetAsync(m_data, 0, bytes(), stream));
    }
  }

 private:
  void copy_to_host(T* host, cudaStream_t stream) const {
    if (m_size > 0) {
      TESSERA_CUDA_CHECK(cudaMemcpyAsync(host, m_data, bytes(), cudaMemcpyDeviceToHost, stream));
      TESSERA_CUDA_CHECK(cudaStreamSynchronize(stream));
    }
  }
  void check_size(std::size_t host_size, const char* what) const {
    if (host_size != m_size) {
      throw Error(std::string("DeviceBuffer::") + what + ": host vector has " +
                  std::to_string(host_size) + " elements, the device buffer " +
                  std::to_string(m_size));
    }
  }

  T* m_data = nullptr;
  std::size_t m_size = 0;
};

/// A cuBLAS handle whose work is queued on `stream` (nullptr: the legacy default stream). Host
/// pointer mode (alpha, beta on the host) and default math (no TF32 for SGEMM).
class CublasHandle {
 public:
  explicit CublasHandle(cudaStream_t stream = nullptr);
  ~CublasHandle();
  CublasHandle(CublasHandle&& other) noexcept
      : m_handle(std::exchange(other.m_handle, nullptr)),
        m_stream(std::exchange(other.m_stream, nullptr)) {}
  CublasHandle& operator=(CublasHandle&& other) noexcept;
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;

  cublasHandle_t get() const { return m_handle; }
  cudaStream_t stream() const { return m_stream; }
  void set_stream(cudaStream_t stream);

 private:
  cublasHandle_t m_handle = nullptr;
  cudaStream_t m_stream = nullptr;
};

/// A cuDNN handle whose work is queued on `stream` (nullptr: the legacy default stream).
class CudnnHandle {
 public:
  explicit CudnnHandle(cudaStream_t stream = nullptr);
  ~CudnnHandle();
  CudnnHandle(CudnnHandle&& other) noexcept
      : m_handle(std::exchange(other.m_handle, nullptr)),
        m_stream(std::exchange(other.m_stream, nullptr)) {}
  CudnnHandle& operator=(CudnnHandle&& other) noexcept;
  CudnnHandle(const CudnnHandle&) = delete;
  CudnnHandle& operator=(const CudnnHandle&) = delete;

  cudnnHandle_t get() const { return m_handle; }
  cudaStream_t stream() const { return m_stream; }
  void set_stream(cudaStream_t stream);

 private:
  cudnnHandle_t m_handle = nullptr;
  cudaStream_t m_stream = nullptr;
};

}  // namespace tessera::kernels::cuda
