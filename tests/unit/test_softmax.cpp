// Row-wise softmax and log-softmax: forward against a double-precision reference written here and
// hand-computed values, stability for huge logits, backward against finite differences, and
// error messages.
#include "support/gradcheck.hpp"
#include "tessera/core/error.hpp"
#include "tessera/kernels/softmax.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

using namespace tessera;
using tessera::testing::error_of;
namespace tt = tessera::testing;

namespace {

// log-softmax of each row, in double, max-shifted.
std::vector<double> ref_log_softmax(const std::vector<float>& x, Index rows, Index cols) {
  std::vector<double> y(x.size());
  for (Index r = 0; r < rows; ++r) {
    const auto* row = &x[static_cast<size_t>(r * cols)];
    const double m = static_cast<double>(*std::max_element(row, row + cols));
    double s = 0.0;
    for (Index j = 0; j < cols; ++j) {
      s += std::exp(static_cast<double>(row[j]) - m);
    }
    for (Index j = 0; j < cols; ++j) {
      y[static_cast<size_t>(r * cols + j)] = static_cast<double>(row[j]) - m - std::log(s);
    }
  }
  return y;
}

using Kernel = void (*)(const Tensor&, const Tensor&);
using BackwardKernel = void (*)(const Tensor&, const Tensor&, const Tensor&);

// Central differences of L = Σ r ∘ f(x) against backward(f(x), r): the same check as gradcheck,
// for a kernel pair instead of a layer.
int fd_check(Kernel forward, BackwardKernel backward, const Shape& shape, const char* what) {
  const Tensor x = tt::random_tensor("x", shape, 31, -3.0F, 3.0F);
  const Tensor y("y", shape);
  forward(x, y);
  const std::vector<float> r = tt::random_values(x.numel(), 32);
  const Tensor dy = Tensor::from_host("dy", shape, r);
  const Tensor dx("dx", shape);
  backward(y, dy, dx);
  const std::vector<float> dxv = dx.to_host();

  auto loss = [&]() {
    forward(x, y);
    const std::vector<float> yv = y.to_host();
    double s = 0.0;
    for (size_t i = 0; i < yv.size(); ++i) {
      s += static_cast<double>(yv[i]) * static_cast<double>(r[i]);
    }
    return s;
  };
  const float eps = 1e-2F;
  std::vector<float> xv = x.to_host();
  int failures = 0;
  for (size_t i = 0; i < xv.size(); ++i) {
    const float orig = xv[i];
    xv[i] = orig + eps;
    x.copy_from_host(xv);
    const double lp = loss();
    xv[i] = orig - eps;
    x.copy_from_host(xv);
    const double lm = loss();
    xv[i] = orig;
    x.copy_from_host(xv);
    const double numeric = (lp - lm) / (2.0 * static_cast<double>(eps));
    const double analytic = static_cast<double>(dxv[i]);
    const double tol = 2e-3 + 2e-2 * std::max(std::fabs(numeric), std::fabs(analytic));
    if (std::fabs(numeric - analytic) > tol && ++failures <= 10) {
      ADD_FAILURE() << what << " dx[" << i << "]: numeric " << numeric << " vs analytic "
                    << analytic;
    }
  }
  return failures;
}

}  // namespace

TEST(Softmax, MatchesDoubleReference) {
  const Index rows = 6;
  const Index cols = 11;
  const Tensor x = tt::random_tensor("x", {rows, cols}, 7, -10.0F, 10.0F);
  const std::vector<double> ref = ref_log_softmax(x.to_host(), rows, cols);
  const Tensor y("y", {rows, cols});
  const Tensor ly("ly", {rows, cols});
  kernels::softmax(x, y);
  kernels::log_softmax(x, ly);
  const std::vector<float> yv = y.to_host();
  const std::vector<float> lyv = ly.to_host();
  for (Index r = 0; r < rows; ++r) {
    double row_sum = 0.0;
    for (Index j = 0; j < cols; ++j) {
      const auto i = static_cast<size_t>(r * cols + j);
      EXPECT_NEAR(static_cast<double>(yv[i]), std::exp(ref[i]), 1e-6 * std::exp(ref[i]) + 1e-9);
      EXPECT_NEAR(static_cast<double>(lyv[i]), ref[i], 1e-5);
      row_sum += static_cast<double>(yv[i]);
    }
    EXPECT_NEAR(row_sum, 1.0, 1e-6);
  }
}

TEST(Softmax, HandComputed) {
  // log(e^1 + e^2 + e^3) = 3.40760596444438.
  const double lse = 3.40760596444438;
  const Tensor x = Tensor::from_host("x", {2, 3}, {1.0F, 2.0F, 3.0F, 0.0F, 0.0F, 0.0F});
  const Tensor ly("ly", {2, 3});
  kernels::log_softmax(x, ly);
  const std::vector<float> v = ly.to_host();
  EXPECT_NEAR(static_cast<double>(v[0]), 1.0 - lse, 1e-6);
  EXPECT_NEAR(static_cast<double>(v[1]), 2.0 - lse, 1e-6);
  EXPECT_NEAR(static_cast<double>(v[2]), 3.0 - lse, 1e-6);
  for (int j = 3; j < 6; ++j) {
    EXPECT_NEAR(static_cast<double>(v[static_cast<size_t>(j)]), -std::log(3.0), 1e-6);
  }
  // In place, and one column: softmax 1, log-softmax 0.
  kernels::softmax(x, x);
  const std::vector<float> p = x.to_host();
  EXPECT_NEAR(static_cast<double>(p[2]), std::exp(3.0 - lse), 1e-6);
  EXPECT_NEAR(static_cast<double>(p[4]), 1.0 / 3.0, 1e-7);
  const Tensor one = Tensor::from_host("one", {3, 1}, {-5.0F, 0.0F, 80.0F});
  const Tensor out("out", {3, 1});
  kernels::softmax(one, out);
  EXPECT_EQ(out.to_host(), (std::vector<float>{1.0F, 1.0F, 1.0F}));
  kernels::log_softmax(one, out);
  EXPECT_EQ(out.to_host(), (std::vector<float>{0.0F, 0.0F, 0.0F}));
}

TEST(Softmax, StableForHugeLogits) {
  // exp(1000) overflows float and double; max-shifting keeps every value finite.
  const Tensor x = Tensor::from_host("x", {2, 3}, {1000.0F, 1001.0F, 1002.0F, -1e30F, 0.0F, 1e30F});
  const Tensor y("y", {2, 3});
  const Tensor ly("ly", {2, 3});
  kernels::softmax(x, y);
  kernels::log_softmax(x, ly);
  const std::vector<float> p = y.to_host();
  const std::vector<float> lp = ly.to_host();
  const double lse = 3.40760596444438 - 3.0;  // log(1 + e^-1 + e^-2)
  EXPECT_NEAR(static_cast<double>(lp[0]), -2.0 - lse, 1e-5);
  EXPECT_NEAR(static_cast<double>(lp[2]), -lse, 1e-5);
  EXPECT_NEAR(static_cast<double>(p[2]), std::exp(-lse), 1e-6);
  EXPECT_EQ(p[3], 0.0F);
  EXPECT_EQ(p[5], 1.0F);
  EXPECT_EQ(lp[5], 0.0F);
  for (float v : p) {
    EXPECT_TRUE(std::isfinite(v));
  }
}

TEST(Softmax, BackwardMatchesFiniteDifferences) {
  EXPECT_EQ(fd_check(kernels::softmax, kernels::softmax_backward, {4, 9}, "softmax"), 0);
  EXPECT_EQ(fd_check(kernels::log_softmax, kernels::log_softmax_backward, {4, 9}, "log_softmax"),
            0);
}

TEST(Softmax, ErrorMessages) {
  EXPECT_EQ(error_of([] { kernels::softmax(Tensor("logits", {6}), Tensor("y", {6})); }),
            "softmax: 'logits' has shape (6,), expected (rows, cols)");
  EXPECT_EQ(error_of([] {
              kernels::log_softmax(Tensor("logits", {2, 3}), Tensor("y", {3, 2}));
            }),
            "log_softmax: 'y' has shape (3, 2), expected (2, 3) like 'logits'");
  EXPECT_EQ(
      error_of([] {
        kernels::softmax_backward(Tensor("y", {2, 3}), Tensor("dy", {2, 3}), Tensor("dx", {2, 4}));
      }),
      "softmax_backward: 'dx' has shape (2, 4), expected (2, 3) like 'y'");
}
