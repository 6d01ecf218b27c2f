// Row-major SGEMM through column-major cuBLAS: a row-major matrix with row stride ld is, read
// column-major, its transpose with leading dimension ld. So C = op(A)·op(B) is computed as
// C^T = op(B)^T · op(A)^T, i.e. cublasSgemm with the operands swapped, the transposes kept, and
// m and n exchanged.
#include "tessera/kernels/cuda/gemm.hpp"

#include <climits>
#include <string>

namespace tessera::kernels::cuda {
namespace {

const char* name(Trans t) {
  return t == Trans::yes ? "yes" : "no";
}

cublasOperation_t to_cublas(Trans t) {
  return t == Trans::yes ? CUBLAS_OP_T : CUBLAS_OP_N;
}

std::string dims(Index rows, Index cols) {
  return std::to_string(rows) + "x" + std::to_string(cols);
}

// A row-major operand stored as rows × cols needs a row stride of at least max(1, cols).
void check_ld(const char* ld_name, Index ld, const char* matrix, Index rows, Index cols,
              const std::string& how, const std::string& shapes) {
  const Index needed = cols > 1 ? cols : 1;
  if (ld < needed) {
    throw Error("cuda::gemm: " + std::string(ld_name) + " = " + std::to_string(ld) +
                " is smaller than " + std::to_string(needed) + ", the columns of " + matrix +
                " as stored (" + dims(rows, cols) + how + "); " + shapes);
  }
}

int to_int(Index value, const char* what) {
  if (value > INT_MAX) {
    throw Error("cuda::gemm: " + std::string(what) + " = " + std::to_string(value) +
                " exceeds cuBLAS's int range");
  }
  return static_cast<int>(value);
}

}  // namespace

void gemm(const CublasHandle& handle, Trans trans_a, Trans trans_b, Index m, Index n, Index k,
          float alpha, const float* a, Index lda, const float* b, Index ldb, float beta, float* c,
          Index ldc, Precision precision) {
  const std::string shapes = "op(A) " + dims(m, k) + ", op(B) " + dims(k, n) + ", C " + dims(m, n);
  if (m < 0 || n < 0 || k < 0) {
    throw Error("cuda::gemm: negative size (m = " + std::to_string(m) +
                ", n = " + std::to_string(n) + ", k = " + std::to_string(k) + ")");
  }
  const std::string how_a = std::string(", trans_a = ") + name(trans_a);
  const std::string how_b = std::string(", trans_b = ") + name(trans_b);
  if (trans_a == Trans::no) {
    check_ld("lda", lda, "A", m, k, how_a, shapes);
  } else {
    check_ld("lda", lda, "A", k, m, how_a, shapes);
  }
  if (trans_b == Trans::no) {
    check_ld("ldb", ldb, "B", k, n, how_b, shapes);
  } else {
    check_ld("ldb", ldb, "B", n, k, how_b, shapes);
  }
  check_ld("ldc", ldc, "C", m, n, "", shapes);
  if (m == 0 || n == 0) {
    return;
  }
  if (c == nullptr || (k > 0 && (a == nullptr || b == nullptr))) {
    throw Error("cuda::gemm: null device pointer (a, b or c); " + shapes);
  }
  if (precision == Precision::bf16) {
    TESSERA_CUBLAS_CHECK(cublasGemmEx(handle.get(), to_cublas(trans_b), to_cublas(trans_a),
                                      to_int(n, "n"), to_int(m, "m"), to_int(k, "k"), &alpha, b,
                                      CUDA_R_32F, to_int(ldb, "ldb"), a, CUDA_R_32F,
                                      to_int(lda, "lda"), &beta, c, CUDA_R_32F, to_int(ldc, "ldc"),
                                      CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT));
    return;
  }
  TESSERA_CUBLAS_CHECK(cublasSgemm(handle.get(), to_cublas(trans_b), to_cublas(trans_a),
                                   to_int(n, "n"), to_int(m, "m"), to_int(k, "k"), &alpha, b,
                                   to_int(ldb, "ldb"), a, to_int(lda, "lda"), &beta, c,
                                   to_int(ldc, "ldc")));
}

}  // namespace tessera::kernels::cuda
