#pragma once
// GEMM on device memory with cuBLAS: the device twin of tessera::kernels::gemm
// (kernels/gemm.hpp), same argument order and meaning, plus the handle that carries the stream.
#include "tessera/kernels/cuda/device.hpp"

namespace tessera::kernels::cuda {

/// Whether an operand is transposed; mirrors tessera::kernels::Trans without pulling in Kokkos.
enum class Trans { no, yes };

/// The products' precision, as kernels::MatmulPrecision: fp32, or bf16 — both operands rounded to
/// bfloat16, products accumulated and C stored in fp32 (cuBLAS's CUBLAS_COMPUTE_32F_FAST_16BF on
/// fp32 matrices: tensor cores, the down-conversion inside the GEMM, no copy of A or B).
enum class Precision { fp32, bf16 };

/// C (m×n) = alpha · op(A) · op(B) + beta · C, all row-major on the device; op(A) is m×k, op(B)
/// is k×n; lda/ldb/ldc are the row strides (in elements) of A, B, C as stored. Queued on
/// handle.stream(), returns at once. Throws tessera::Error (before calling cuBLAS) for negative
/// sizes, a leading dimension smaller than its stored matrix's columns, or sizes beyond cuBLAS's
/// int range; a failing cuBLAS call throws through TESSERA_CUBLAS_CHECK.
void gemm(const CublasHandle& handle, Trans trans_a, Trans trans_b, Index m, Index n, Index k,
          float alpha, const float* a, Index lda, const float* b, Index ldb, float beta, float* c,
          Index ldc, Precision precision = Precision::fp32);

}  // namespace tessera::kernels::cuda
