// cuBLAS GEMM (row-major, all four transpose combinations, padded leading dimensions) against a
// naive host loop in double; DeviceBuffer and the fill kernel. Skipped without a CUDA device.
#include "gpu_test.hpp"
#include "tessera/core/error.hpp"
#include "tessera/kernels/cuda/check.hpp"
#include "tessera/kernels/cuda/device.hpp"
#include "tessera/kernels/cuda/elementwise.hpp"
#include "tessera/kernels/cuda/gemm.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

using namespace tessera;
using namespace tessera::kernels::cuda;
using tessera::testing::random_values;

namespace {

class CudaGemm : public tessera::testing::GpuTest {};
class CudaMemory : public tessera::testing::GpuTest {};

struct GemmCase {
  Trans ta;
  Trans tb;
  Index m, n, k;
  Index pad;  // extra elements per row of A, B and C (leading dimension = columns + pad)
  float alpha;
  float beta;
};

// x rounded to bfloat16 (to nearest, ties to even), as an fp32 value: what a bf16 product reads.
float round_bf16(float x) {
  std::uint32_t bits = 0;
  std::memcpy(&bits, &x, sizeof bits);
  bits += 0x7fffU + ((bits >> 16) & 1U);
  bits &= 0xffff0000U;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

// C = alpha op(A) op(B) + beta C on the host, in double; row-major with leading dimensions.
std::vector<float> reference_gemm(const GemmCase& g, const std::vector<float>& a, Index lda,
                                  const std::vector<float>& b, Index ldb, std::vector<float> c,
                                  Index ldc) {
  for (Index i = 0; i < g.m; ++i) {
    for (Index j = 0; j < g.n; ++j) {
      double sum = 0.0;
      for (Index p = 0; p < g.k; ++p) {
        const double aip = g.ta == Trans::no ? a[static_cast<std::size_t>(i * lda + p)]
                                             : a[static_cast<std::size_t>(p * lda + i)];
        const double bpj = g.tb == Trans::no ? b[static_cast<std::size_t>(p * ldb + j)]
                                             : b[static_cast<std::size_t>(j * ldb + p)];
        sum += aip * bpj;
      }
      float& cij = c[static_cast<std::size_t>(i * ldc + j)];
      cij = static_cast<float>(static_cast<double>(g.alpha) * sum +
                               static_cast<double>(g.beta) * static_cast<double>(cij));
    }
  }
  return c;
}

// bf16: the reference multiplies the operands rounded to bfloat16, so that only the order of the
// fp32 accumulation separates it from the device's.
void run_case(const CublasHandle& handle, const GemmCase& g,
              Precision precision = Precision::fp32) {
  // Stored shapes: A is m×k (or k×m when transposed), B is k×n (or n×k), C is m×n.
  const Index a_rows = g.ta == Trans::no ? g.m : g.k;
  const Index a_cols = g.ta == Trans::no ? g.k : g.m;
  const Index b_rows = g.tb == Trans::no ? g.k : g.n;
  const Index b_cols = g.tb == Trans::no ? g.n : g.k;
  const Index lda = a_cols + g.pad;
  const Index ldb = b_cols + g.pad;
  const Index ldc = g.n + g.pad;
  const auto a = random_values(static_cast<std::size_t>(a_rows * lda), 1);
  const auto b = random_values(static_cast<std::size_t>(b_rows * ldb), 2);
  const auto c0 = random_values(static_cast<std::size_t>(g.m * ldc), 3);
  auto rounded = [&](std::vector<float> v) {
    if (precision == Precision::bf16) {
      for (float& x : v) {
        x = round_bf16(x);
      }
    }
    return v;
  };
  const auto expected = reference_gemm(g, rounded(a), lda, rounded(b), ldb, c0, ldc);

  DeviceBuffer<float> da(a);
  DeviceBuffer<float> db(b);
  DeviceBuffer<float> dc(c0);
  gemm(handle, g.ta, g.tb, g.m, g.n, g.k, g.alpha, da.data(), lda, db.data(), ldb, g.beta,
       dc.data(), ldc, precision);
  const std::vector<float> got = dc.to_host();

  const std::string what = std::string(precision == Precision::bf16 ? "bf16, " : "fp32, ") +
                           "trans_a = " + (g.ta == Trans::yes ? "yes" : "no") +
                           ", trans_b = " + (g.tb == Trans::yes ? "yes" : "no") +
                           ", m n k = " + std::to_string(g.m) + " " + std::to_string(g.n) + " " +
                           std::to_string(g.k);
  int mismatches = 0;
  for (Index i = 0; i < g.m; ++i) {
    for (Index j = 0; j < ldc; ++j) {
      const auto at = static_cast<std::size_t>(i * ldc + j);
      // Inside C: FP32 accumulation error grows like sqrt(k); the padding must stay untouched.
      const float tolerance = j < g.n ? 1e-5F * static_cast<float>(g.k + 1) : 0.0F;
      if (!(std::fabs(got[at] - expected[at]) <= tolerance) && ++mismatches <= 5) {
        ADD_FAILURE() << what << ": C(" << i << ", " << j << ") = " << got[at] << ", expected "
                      << expected[at];
      }
    }
  }
  EXPECT_EQ(mismatches, 0) << what;
}

}  // namespace

TEST_F(CudaGemm, AllTransposeCombinationsMatchNaiveLoops) {
  CublasHandle handle;
  for (const Trans ta : {Trans::no, Trans::yes}) {
    for (const Trans tb : {Trans::no, Trans::yes}) {
      run_case(handle, {ta, tb, 5, 7, 3, 2, 1.0F, 0.0F});       // small, padded rows
      run_case(handle, {ta, tb, 67, 45, 129, 3, 1.5F, -0.5F});  // beyond one tile, beta ≠ 0
      run_case(handle, {ta, tb, 1, 33, 17, 0, 0.5F, 1.0F});     // a row vector, packed
    }
  }
}

// run.precision = "bf16" on the device: the operands rounded to bfloat16 (to nearest, ties to
// even, as PyTorch's autocast rounds them) and the products accumulated in fp32.
TEST_F(CudaGemm, Bf16RoundsBothOperandsAndAccumulatesInFp32) {
  CublasHandle handle;
  for (const Trans ta : {Trans::no, Trans::yes}) {
    for (const Trans tb : {Trans::no, Trans::yes}) {
      run_case(handle, {ta, tb, 67, 45, 129, 3, 1.5F, -0.5F}, Precision::bf16);
      run_case(handle, {ta, tb, 256, 128, 512, 0, 1.0F, 0.0F}, Precision::bf16);
    }
  }
}

TEST_F(CudaGemm, EdgeSizes) {
  CublasHandle handle;
  // k = 0: C = beta C.
  std::vector<float> c = {1.0F, 2.0F, 3.0F, 4.0F, 5.0F, 6.0F};  // (2, 3)
  DeviceBuffer<float> dc(c);
  DeviceBuffer<float> dummy(1);
  gemm(handle, Trans::no, Trans::no, 2, 3, 0, 1.0F, dummy.data(), 1, dummy.data(), 3, 2.0F,
       dc.data(), 3);
  EXPECT_EQ(dc.to_host(), (std::vector<float>{2.0F, 4.0F, 6.0F, 8.0F, 10.0F, 12.0F}));
  // m = 0 or n = 0: nothing to do, even with null pointers.
  EXPECT_NO_THROW(
      gemm(handle, Trans::no, Trans::no, 0, 3, 4, 1.0F, nullptr, 4, nullptr, 3, 0.0F, nullptr, 3));
}

TEST_F(CudaGemm, RunsOnTheHandlesStream) {
  Stream stream;
  CublasHandle handle(stream.get());
  EXPECT_EQ(handle.stream(), stream.get());
  // (2, 3) · (3, 2) by hand.
  DeviceBuffer<float> a(std::vector<float>{1, 2, 3, 4, 5, 6});
  DeviceBuffer<float> b(std::vector<float>{7, 8, 9, 10, 11, 12});
  DeviceBuffer<float> c(4);
  gemm(handle, Trans::no, Trans::no, 2, 2, 3, 1.0F, a.data(), 3, b.data(), 2, 0.0F, c.data(), 2);
  stream.synchronize();
  EXPECT_EQ(c.to_host(), (std::vector<float>{58, 64, 139, 154}));
}

TEST_F(CudaGemm, BadLeadingDimensionThrowsBeforeCublas) {
  CublasHandle handle;
  DeviceBuffer<float> a(15);
  DeviceBuffer<float> b(21);
  DeviceBuffer<float> c(35);
  try {
    gemm(handle, Trans::no, Trans::no, 5, 7, 3, 1.0F, a.data(), 2, b.data(), 7, 0.0F, c.data(), 7);
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(),
                 "cuda::gemm: lda = 2 is smaller than 3, the columns of A as stored (5x3, "
                 "trans_a = no); op(A) 5x3, op(B) 3x7, C 5x7");
  }
  try {
    // op(B) = Bᵀ is 3x7, so B is stored 7x3: its row stride must be at least 3.
    gemm(handle, Trans::no, Trans::yes, 5, 7, 3, 1.0F, a.data(), 3, b.data(), 2, 0.0F, c.data(), 7);
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(),
                 "cuda::gemm: ldb = 2 is smaller than 3, the columns of B as stored (7x3, "
                 "trans_b = yes); op(A) 5x3, op(B) 3x7, C 5x7");
  }
}

TEST_F(CudaGemm, FailingCublasCallThrowsWithTheCall) {
  CublasHandle handle;
  DeviceBuffer<float> a(16);
  const float one = 1.0F;
  try {
    // Column-major lda = 1 < m = 4: cuBLAS rejects it.
    TESSERA_CUBLAS_CHECK(cublasSgemm(handle.get(), CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one,
                                     a.data(), 1, a.data(), 4, &one, a.data(), 4));
    FAIL() << "no exception";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("cuBLAS call 'cublasSgemm(handle.get(), CUBLAS_OP_N"), std::string::npos)
        << message;
    EXPECT_NE(message.find("failed: CUBLAS_STATUS_INVALID_VALUE"), std::string::npos) << message;
    EXPECT_NE(message.find("[test_gpu_gemm.cpp:"), std::string::npos) << message;
  }
}

TEST_F(CudaMemory, DeviceBufferRoundTripMoveAndErrors) {
  const std::vector<float> values = random_values(1000, 7);
  DeviceBuffer<float> a(values);
  EXPECT_EQ(a.size(), 1000U);
  EXPECT_EQ(a.bytes(), 4000U);
  EXPECT_EQ(a.to_host(), values);

  DeviceBuffer<float> b(std::move(a));
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(b.to_host(), values);
  a = std::move(b);
  EXPECT_EQ(a.to_host(), values);

  a.zero();
  EXPECT_EQ(a.to_host(), std::vector<float>(1000, 0.0F));

  try {
    a.copy_from_host(std::vector<float>(999));
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(),
                 "DeviceBuffer::copy_from_host: host vector has 999 elements, the device buffer "
                 "1000");
  }
  try {
    DeviceBuffer<float> huge(std::size_t{1} << 50);  // 4 PiB
    FAIL() << "no exception";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.rfind("CUDA call 'cudaMalloc(&ptr, size * sizeof(T))' failed: "
                            "cudaErrorMemoryAllocation",
                            0),
              0U)
        << message;
  }
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

TEST_F(CudaMemory, FillKernel) {
  Stream stream;
  DeviceBuffer<float> x(100003);
  fill(x.data(), static_cast<Index>(x.size()), 2.5F, stream.get());
  stream.synchronize();
  EXPECT_EQ(x.to_host(), std::vector<float>(100003, 2.5F));
  EXPECT_THROW(fill(x.data(), -1, 0.0F), Error);
}
