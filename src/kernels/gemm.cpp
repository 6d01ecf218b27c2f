#include "tessera/kernels/gemm.hpp"

#include "tessera/core/check.hpp"
#include "tessera/core/clones.hpp"
#include "tessera/kernels/conv_dnnl.hpp"
#if defined(KOKKOS_ENABLE_CUDA)
#include "tessera/kernels/cuda/gemm.hpp"
#endif

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <vector>

// OpenBLAS's own thread control; declared here because Debian's cblas.h for the generic BLAS
// alternative does not carry it.
extern "C" void openblas_set_num_threads(int num_threads);

namespace tessera::kernels {
namespace {
CBLAS_TRANSPOSE to_cblas(Trans t) {
  return t == Trans::yes ? CblasTrans : CblasNoTrans;
}

std::atomic<MatmulPrecision> g_precision{MatmulPrecision::fp32};

/// The bfloat16 nearest to the float with these bits (ties to even; a NaN stays a quiet NaN);
/// branch-free, so that the loops below vectorise.
inline std::uint16_t bf16_of_bits(std::uint32_t bits) {
  const std::uint32_t rounded = (bits + 0x7FFFU + ((bits >> 16) & 1U)) >> 16;
  const std::uint32_t nan = (bits >> 16) | 0x40U;
  return static_cast<std::uint16_t>((bits & 0x7FFFFFFFU) > 0x7F800000U ? nan : rounded);
}

TESSERA_CLONES_AVX512
void round_row(const float* x, Index n, std::uint16_t* out) {
  for (Index j = 0; j < n; ++j) {
    std::uint32_t bits = 0;
    std::memcpy(&bits, x + j, sizeof bits);
    out[j] = bf16_of_bits(bits);
  }
}

/// X (rows×cols as stored, row stride ld) as a dense row-major bfloat16 matrix.
void pack_bf16(Index rows, Index cols, const float* x, Index ld, std::vector<std::uint16_t>& out) {
  out.resize(static_cast<size_t>(rows * cols));
  for (Index i = 0; i < rows; ++i) {
    round_row(x + i * ld, cols, out.data() + i * cols);
  }
}

float from_bf16(std::uint16_t h) {
  const std::uint32_t bits = static_cast<std::uint32_t>(h) << 16;
  float x = 0.0F;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

void gemm_fp32(Trans trans_a, Trans trans_b, Index m, Index n, Index k, float alpha, const float* a,
               Index lda, const float* b, Index ldb, float beta, float* c, Index ldc) {
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

void gemm_bf16(Trans trans_a, Trans trans_b, Index m, Index n, Index k, float alpha, const float* a,
               Index lda, const float* b, Index ldb, float beta, float* c, Index ldc) {
  // A and B rounded as they are stored (dense, row strides k or m and n or k): the matmul reads
  // them transposed where op() says so.
  thread_local std::vector<std::uint16_t> a16;
  thread_local std::vector<std::uint16_t> b16;
  const bool ta = trans_a == Trans::yes;
  const bool tb = trans_b == Trans::yes;
  pack_bf16(ta ? k : m, ta ? m : k, a, lda, a16);
  pack_bf16(tb ? n : k, tb ? k : n, b, ldb, b16);
  if (dnnl_gemm_bf16(ta, tb, m, n, k, alpha, a16.data(), b16.data(), beta, c, ldc)) {
    return;
  }
  // No bf16 matmul here: the rounded values, multiplied and accumulated in fp32.
  thread_local std::vector<float> a32;
  thread_local std::vector<float> b32;
  a32.resize(a16.size());
  b32.resize(b16.size());
  std::transform(a16.begin(), a16.end(), a32.begin(), from_bf16);
  std::transform(b16.begin(), b16.end(), b32.begin(), from_bf16);
  gemm_fp32(trans_a, trans_b, m, n, k, alpha, a32.data(), ta ? m : k, b32.data(), tb ? k : n, beta,
            c, ldc);
}
}  // namespace

void set_matmul_precision(MatmulPrecision precision) {
  g_precision = precision;
}

MatmulPrecision matmul_precision_named(const std::string& name) {
  TESSERA_CHECK(name == "fp32" || name == "bf16", "matmul precision \"{}\": fp32 or bf16", name);
  return name == "bf16" ? MatmulPrecision::bf16 : MatmulPrecision::fp32;
}

MatmulPrecision matmul_precision() {
  return g_precision;
}

std::uint16_t to_bf16(float x) {
  std::uint32_t bits = 0;
  std::memcpy(&bits, &x, sizeof bits);
  return bf16_of_bits(bits);
}

void gemm(Trans trans_a, Trans trans_b, Index m, Index n, Index k, float alpha, const float* a,
          Index lda, const float* b, Index ldb, float beta, float* c, Index ldc) {
  if (m == 0 || n == 0) {
    return;
  }
#if defined(KOKKOS_ENABLE_CUDA)
  // A CUDA build of Kokkos keeps the tensors in device memory: their products go to cuBLAS, on
  // the stream of Kokkos's default execution space (one stream for both: no fence between them).
  static const cuda::CublasHandle handle(Kokkos::DefaultExecutionSpace().cuda_stream());
  const auto op = [](Trans t) { return t == Trans::yes ? cuda::Trans::yes : cuda::Trans::no; };
  cuda::gemm(handle, op(trans_a), op(trans_b), m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
             g_precision == MatmulPrecision::bf16 ? cuda::Precision::bf16 : cuda::Precision::fp32);
#else
  static_assert(kHostTensors, "device-memory GEMM goes through kernels/cuda (cuBLAS)");
  if (k > 0 && g_precision == MatmulPrecision::bf16) {
    gemm_bf16(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  } else {
    gemm_fp32(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
#endif
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

double measure_gemm_flops(Index n, int repeats) {
  TESSERA_CHECK(n > 0 && repeats > 0, "measure_gemm_flops: n = {} and repeats = {} must be > 0", n,
                repeats);
  // Tensors' memory (the device's in a CUDA build), small exact values: no denormals, no overflow.
  const Tensor a = Tensor::uninitialized("measure_gemm_flops::a", {n, n});
  const Tensor b = Tensor::uninitialized("measure_gemm_flops::b", {n, n});
  const Tensor c("measure_gemm_flops::c", {n, n});
  const FloatView av = a.view();
  const FloatView bv = b.view();
  Kokkos::parallel_for(
      "measure_gemm_flops::fill", Kokkos::RangePolicy<ExecSpace>(0, n * n),
      KOKKOS_LAMBDA(const Index i) {
        av(i) = static_cast<float>(i % 7) * 0.125F;
        bv(i) = static_cast<float>(i % 5) * 0.25F;
      });
  const auto product = [&] {
    gemm(Trans::no, Trans::no, n, n, n, 1.0F, a.data(), n, b.data(), n, 0.0F, c.data(), n);
    Kokkos::fence();
  };
  product();
  double best = 1e30;  // the fastest product: the least disturbed by whatever else runs
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    product();
    best = std::min(
        best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  const auto flops = 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n);
  return flops / std::max(best, 1e-9);
}

}  // namespace tessera::kernels
