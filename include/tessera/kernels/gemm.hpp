#pragma once
// GEMM, the one routine the dense and convolution layers spend their time in. Row-major, like the
// tensors. Host memory goes to CBLAS (OpenBLAS); device memory to cuBLAS (kernels/cuda/).
#include "tessera/core/tensor.hpp"

#include <cstdint>
#include <string>

namespace tessera::kernels {

enum class Trans { no, yes };

/// The precision of the process's matrix products (run.precision; PyTorch's
/// torch.set_float32_matmul_precision): fp32, or bf16 — A and B rounded to bfloat16 (to nearest,
/// ties to even), the products accumulated and C written in fp32. The tensors, and everything
/// else, stay fp32: bf16 is the precision of the multiplications only (as under PyTorch's autocast,
/// with fp32 weights).
enum class MatmulPrecision { fp32, bf16 };
void set_matmul_precision(MatmulPrecision precision);
/// run.precision's value ("fp32" or "bf16", as the deck checked it) as a MatmulPrecision.
MatmulPrecision matmul_precision_named(const std::string& name);
MatmulPrecision matmul_precision();

/// `x` rounded to the nearest bfloat16 (ties to even; NaN stays NaN), as its 16 bits.
std::uint16_t to_bf16(float x);

/// C (m×n) = alpha · op(A) · op(B) + beta · C, all row-major; op(A) is m×k, op(B) is k×n;
/// lda/ldb/ldc are the row strides (in elements) of A, B, C as stored. In the bf16 matmul
/// precision, A and B are rounded to bfloat16 first (oneDNN's bf16 matmul where the build and the
/// CPU have it; else the rounded values multiplied in fp32).
void gemm(Trans trans_a, Trans trans_b, Index m, Index n, Index k, float alpha, const float* a,
          Index lda, const float* b, Index ldb, float beta, float* c, Index ldc);

/// c = alpha · op(a) · op(b) + beta · c on 2-D tensors; throws with `what` and the three shapes
/// when they do not chain.
void matmul(const Tensor& a, Trans trans_a, const Tensor& b, Trans trans_b, const Tensor& c,
            float alpha = 1.0F, float beta = 0.0F, const std::string& what = "matmul");

/// Sets the BLAS library's thread count (OpenBLAS) and, in a build with oneDNN, the thread count
/// of oneDNN's host convolutions (its OpenMP runtime); 1 for one thread per MPI rank.
void set_blas_threads(int threads);

/// The rate of this process's GEMM, in FLOP/s: the fastest of `repeats` products of two n×n
/// matrices (2n³ FLOPs each, after one untimed warm-up) in the current matmul precision, on the
/// BLAS threads set. The peak a CPU rank's model FLOPs utilisation is measured against
/// (train::Trainer): what the machine's fastest kernel reaches, its clock and vector units
/// included, without a table of CPUs.
double measure_gemm_flops(Index n = 1024, int repeats = 5);

}  // namespace tessera::kernels
