#include "tessera/kernels/gemm.hpp"

#include "tessera/core/check.hpp"
#include "tessera/kernels/conv_dnnl.hpp"

#include <cblas.h>

// OpenBLAS's own thread control; declared here because Debian's cblas.h for the generic BLAS
// alternative does not carry it.
extern "C" void openblas_set_num_threads(int num_threads);

namespace tessera::kernels {
namespace {
CBLAS_TRANSPOSE to_cblas(Trans t) {
  return t == Trans::yes ? CblasTrans : CblasNoTrans;
}
}  // namespace

void gemm(Trans trans_a, Trans trans_b, Index m, Index n, Index k, float alpha, const float* a,
          Index lda, const float* b, Index ldb, float beta, float* c, Index ldc) {
  static_assert(Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible,
                "device-memory GEMM goes through kernels/cuda (cuBLAS)");
  if (m == 0 || n == 0) {
    return;
  }
  // oneDNN's sgemm where the build has it (AVX-512 here), else OpenBLAS
  // (src/kernels/conv_dnnl*.cpp).
  if (dnnl_gemm(trans_a == Trans::yes, trans_b == Trans::yes, m, n, k, alpha, a, lda, b, ldb, beta,
                c, ldc)) {
    return;
  }
  cblas_sgemm(CblasRowMajor, to_cblas(trans_a), to_cblas(trans_b), static_cast<int>(m),
              static_cast<int>(n), static_cast<int>(k), alpha, a, static_cast<int>(lda), b,
              static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

void matmul(const Tensor& a, Trans trans_a, const Tensor& b, Trans trans_b, const Tensor& c,
            float alpha, float beta, const std::string& what) {
  TESSERA_CHECK(a.rank() == 2 && b.rank() == 2 && c.rank() == 2,
                "{}: matmul needs 2-D tensors, got {}, {} and {}", what, to_string(a.shape()),
                to_string(b.shape()), to_string(c.shape()));
  const Index m = trans_a == Trans::no ? a.dim(0) : a.dim(1);
  const Index k = trans_a == Trans::no ? a.dim(1) : a.dim(0);
  const Index kb = trans_b == Trans::no ? b.dim(0) : b.dim(1);
  const Index n = trans_b == Trans::no ? b.dim(1) : b.dim(0);
  TESSERA_CHECK(k == kb && c.dim(0) == m && c.dim(1) == n,
                "{}: shapes do not chain: op(A) {}x{}, op(B) {}x{}, C {}", what, m, k, kb, n,
                to_string(c.shape()));
  gemm(trans_a, trans_b, m, n, k, alpha, a.data(), a.dim(1), b.data(), b.dim(1), beta, c.data(),
       c.dim(1));
}

void set_blas_threads(int threads) {
  openblas_set_num_threads(threads);
  set_dnnl_threads(threads);  // oneDNN's convolutions (OpenMP); nothing without oneDNN
}

}  // namespace tessera::kernels
