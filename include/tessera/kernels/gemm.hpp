#pragma once
// GEMM, the one routine the dense and convolution layers spend their time in. Row-major, like the
// tensors. Host memory goes to CBLAS (OpenBLAS); device memory to cuBLAS (kernels/cuda/).
#include "tessera/core/tensor.hpp"

#include <string>

namespace tessera::kernels {

enum class Trans { no, yes };

/// C (m×n) = alpha · op(A) · op(B) + beta · C, all row-major; op(A) is m×k, op(B) is k×n;
/// lda/ldb/ldc are the row strides (in elements) of A, B, C as stored.
void gemm(Trans trans_a, Trans trans_b, Index m, Index n, Index k, float alpha, const float* a,
          Index lda, const float* b, Index ldb, float beta, float* c, Index ldc);

/// c = alpha · op(a) · op(b) + beta · c on 2-D tensors; throws with `what` and the three shapes
/// when they do not chain.
void matmul(const Tensor& a, Trans trans_a, const Tensor& b, Trans trans_b, const Tensor& c,
            float alpha = 1.0F, float beta = 0.0F, const std::string& what = "matmul");

/// Sets the BLAS library's thread count (OpenBLAS) and, in a build with oneDNN, the thread count
/// of oneDNN's host convolutions (its OpenMP runtime); 1 for one thread per MPI rank.
void set_blas_threads(int threads);

}  // namespace tessera::kernels
