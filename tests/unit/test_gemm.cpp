// kernels::gemm in the bf16 matmul precision (run.precision = "bf16"): bfloat16 rounding against
// an independent rounding written here (the two neighbouring bfloat16 values, the nearer one, ties
// to even); every transpose, row stride, alpha and beta against a double-precision product of the
// rounded inputs; and the fp32 product unchanged by the setting.
#include "tessera/kernels/gemm.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

using namespace tessera;
using kernels::MatmulPrecision;
using kernels::Trans;

namespace {

float bits_to_float(std::uint32_t bits) {
  float x = 0.0F;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

// The bfloat16 nearest to x, as a float: of the value truncated to its upper 16 bits and the next
// bfloat16 away from zero, the nearer; on a tie the one whose last kept bit is 0.
float reference_bf16(float x) {
  std::uint32_t bits = 0;
  std::memcpy(&bits, &x, sizeof bits);
  const std::uint32_t low = bits & 0xFFFF0000U;
  const std::uint32_t high = low + 0x10000U;
  const double dl = std::fabs(static_cast<double>(x) - static_cast<double>(bits_to_float(low)));
  const double dh = std::fabs(static_cast<double>(bits_to_float(high)) - static_cast<double>(x));
  if (dl < dh) {
    return bits_to_float(low);
  }
  if (dh < dl) {
    return bits_to_float(high);
  }
  return bits_to_float((low & 0x10000U) == 0 ? low : high);
}

double wide(float x) {
  return static_cast<double>(x);
}

float from_bf16(std::uint16_t h) {
  return bits_to_float(static_cast<std::uint32_t>(h) << 16);
}

// Sets the matmul precision for one test and puts fp32 back.
struct Precision {
  explicit Precision(MatmulPrecision p) { kernels::set_matmul_precision(p); }
  ~Precision() { kernels::set_matmul_precision(MatmulPrecision::fp32); }
  Precision(const Precision&) = delete;
  Precision& operator=(const Precision&) = delete;
};

}  // namespace

TEST(Bf16, RoundsToNearestTiesToEven) {
  std::mt19937 gen(3);
  std::uniform_int_distribution<std::uint32_t> any;
  for (int i = 0; i < 200000; ++i) {
    const float x = bits_to_float(any(gen));
    if (!std::isfinite(x) || std::fabs(x) > 3.0e38F) {
      continue;  // the largest finite floats round to infinity: checked below
    }
    ASSERT_EQ(from_bf16(kernels::to_bf16(x)), reference_bf16(x)) << x;
  }
  // Ties: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: to 1 (even); 1 + 3·2^-8 to 1 + 2^-6.
  EXPECT_EQ(from_bf16(kernels::to_bf16(1.0F + 0x1.0p-8F)), 1.0F);
  EXPECT_EQ(from_bf16(kernels::to_bf16(1.0F + 3 * 0x1.0p-8F)), 1.0F + 0x1.0p-6F);
  EXPECT_EQ(from_bf16(kernels::to_bf16(-2.5F)), -2.5F);  // exactly representable
  EXPECT_EQ(from_bf16(kernels::to_bf16(std::numeric_limits<float>::max())),
            std::numeric_limits<float>::infinity());
  EXPECT_EQ(from_bf16(kernels::to_bf16(-std::numeric_limits<float>::infinity())),
            -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(from_bf16(kernels::to_bf16(std::nanf("")))));
  EXPECT_TRUE(std::isnan(from_bf16(kernels::to_bf16(bits_to_float(0x7F800001U)))));  // not inf
}

TEST(Bf16, GemmIsTheProductOfTheRoundedInputs) {
  std::mt19937 gen(11);
  std::normal_distribution<float> normal;
  struct Case {
    Trans ta, tb;
    Index m, n, k, pad;
    float alpha, beta;
  };
  const std::vector<Case> cases = {
      {Trans::no, Trans::no, 37, 29, 53, 0, 1.0F, 0.0F},
      {Trans::no, Trans::yes, 64, 96, 128, 3, 1.0F, 1.0F},   // a linear layer's forward
      {Trans::yes, Trans::no, 19, 40, 70, 5, 1.0F, 1.0F},    // its weight gradient
      {Trans::yes, Trans::yes, 8, 13, 21, 1, 0.125F, 0.5F},  // attention's scaled scores
      {Trans::no, Trans::yes, 1, 1, 1, 0, 2.0F, -1.0F},
  };
  for (const Case& t : cases) {
    const Index a_rows = t.ta == Trans::no ? t.m : t.k;
    const Index a_cols = t.ta == Trans::no ? t.k : t.m;
    const Index b_rows = t.tb == Trans::no ? t.k : t.n;
    const Index b_cols = t.tb == Trans::no ? t.n : t.k;
    const Index lda = a_cols + t.pad;
    const Index ldb = b_cols + t.pad;
    const Index ldc = t.n + t.pad;
    std::vector<float> a(static_cast<size_t>(a_rows * lda));
    std::vector<float> b(static_cast<size_t>(b_rows * ldb));
    std::vector<float> c0(static_cast<size_t>(t.m * ldc));
    for (float& v : a) {
      v = normal(gen);
    }
    for (float& v : b) {
      v = normal(gen);
    }
    for (float& v : c0) {
      v = normal(gen);
    }
    const auto at = [&](Index i, Index p) {  // op(A)[i][p]
      return t.ta == Trans::no ? a[static_cast<size_t>(i * lda + p)]
                               : a[static_cast<size_t>(p * lda + i)];
    };
    const auto bt = [&](Index p, Index j) {
      return t.tb == Trans::no ? b[static_cast<size_t>(p * ldb + j)]
                               : b[static_cast<size_t>(j * ldb + p)];
    };
    std::vector<float> c16 = c0;
    std::vector<float> c32 = c0;
    {
      const Precision bf16(MatmulPrecision::bf16);
      EXPECT_EQ(kernels::matmul_precision(), MatmulPrecision::bf16);
      kernels::gemm(t.ta, t.tb, t.m, t.n, t.k, t.alpha, a.data(), lda, b.data(), ldb, t.beta,
                    c16.data(), ldc);
    }
    kernels::gemm(t.ta, t.tb, t.m, t.n, t.k, t.alpha, a.data(), lda, b.data(), ldb, t.beta,
                  c32.data(), ldc);
    double worst_rounded = 0.0;
    double worst_fp32 = 0.0;
    double largest_bf16_effect = 0.0;
    for (Index i = 0; i < t.m; ++i) {
      for (Index j = 0; j < t.n; ++j) {
        double rounded = 0.0;
        double exact = 0.0;
        double scale = 0.0;
        for (Index p = 0; p < t.k; ++p) {
          rounded += wide(reference_bf16(at(i, p))) * wide(reference_bf16(bt(p, j)));
          exact += wide(at(i, p)) * wide(bt(p, j));
          scale += std::fabs(wide(at(i, p)) * wide(bt(p, j)));
        }
        const size_t ij = static_cast<size_t>(i * ldc + j);
        const double old = wide(t.beta) * wide(c0[ij]);
        scale = std::fabs(wide(t.alpha)) * scale + std::fabs(old);
        worst_rounded = std::max(
            worst_rounded, std::fabs(wide(c16[ij]) - (wide(t.alpha) * rounded + old)) / scale);
        worst_fp32 =
            std::max(worst_fp32, std::fabs(wide(c32[ij]) - (wide(t.alpha) * exact + old)) / scale);
        largest_bf16_effect =
            std::max(largest_bf16_effect, std::fabs(wide(t.alpha) * (rounded - exact)) / scale);
      }
      // The padding between rows is not written.
      for (Index j = t.n; j < ldc; ++j) {
        const size_t ij = static_cast<size_t>(i * ldc + j);
        EXPECT_EQ(c16[ij], c0[ij]);
      }
    }
    // fp32 accumulation of k products: a few float epsilons of the sum of magnitudes.
    EXPECT_LT(worst_rounded, 2e-6) << "m " << t.m << " n " << t.n << " k " << t.k;
    EXPECT_LT(worst_fp32, 2e-6) << "m " << t.m << " n " << t.n << " k " << t.k;
    if (t.k > 1) {  // the rounding is there: bf16 keeps 8 significant bits, not 24
      EXPECT_GT(largest_bf16_effect, 1e-4) << "m " << t.m << " n " << t.n << " k " << t.k;
    }
  }
}
