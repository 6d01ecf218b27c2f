// Linear: forward and backward against matmul loops written here (in double) and a case computed
// by hand, gradient accumulation, finite-difference gradient checks of input, weight and bias,
// parameter shapes and initialisation bounds, and exact error messages.
#include "support/gradcheck.hpp"
#include "tessera/core/error.hpp"
#include "tessera/nn/linear.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

using namespace tessera;
using nn::Linear;
using nn::LinearOptions;
namespace tt = tessera::testing;

TEST(Linear, HandComputed) {
  Linear fc("fc", {2}, LinearOptions{2});
  fc.weight().value.copy_from_host({1, 2, 3, 4});  // (out, in) = [[1, 2], [3, 4]]
  fc.bias().value.copy_from_host({0.5F, -1.0F});
  const Tensor x = Tensor::from_host("x", {2, 2}, {1, 1, 2, 0});
  nn::ForwardResult r = fc.forward(x, {});
  // y = x Wᵀ + b: [1, 1] → [1 + 2 + 0.5, 3 + 4 - 1]; [2, 0] → [2 + 0.5, 6 - 1].
  EXPECT_EQ(r.output.shape(), (Shape{2, 2}));
  EXPECT_EQ(r.output.to_host(), (std::vector<float>{3.5F, 6.0F, 2.5F, 5.0F}));

  const Tensor dy = Tensor::from_host("dy", {2, 2}, {1, 0, 0, 2});
  const Tensor dx = fc.backward(dy, std::move(r.ctx));
  // dx = dy W: [1, 0] → [1, 2]; [0, 2] → [6, 8]. dW = dyᵀ x: [[1, 1], [4, 0]]. db = [1, 2].
  EXPECT_EQ(dx.to_host(), (std::vector<float>{1, 2, 6, 8}));
  EXPECT_EQ(fc.weight().grad.to_host(), (std::vector<float>{1, 1, 4, 0}));
  EXPECT_EQ(fc.bias().grad.to_host(), (std::vector<float>{1, 2}));
}

TEST(Linear, MatchesMatmulLoopsAndAccumulates) {
  const Index n = 7, in = 37, out = 19;
  Linear fc("fc", {in}, LinearOptions{out});
  fc.initialize(5);
  const Tensor x = tt::random_tensor("x", {n, in}, 1);
  const Tensor dy = tt::random_tensor("dy", {n, out}, 2);
  const std::vector<float> xv = x.to_host(), dyv = dy.to_host();
  const std::vector<float> w = fc.weight().value.to_host(), b = fc.bias().value.to_host();
  auto at = [](const std::vector<float>& v, Index i) {
    return static_cast<double>(v[static_cast<size_t>(i)]);
  };

  nn::ForwardResult r = fc.forward(x, {});
  std::vector<float> y(static_cast<size_t>(n * out));
  for (Index i = 0; i < n; ++i) {
    for (Index o = 0; o < out; ++o) {
      double s = at(b, o);
      for (Index k = 0; k < in; ++k) {
        s += at(xv, i * in + k) * at(w, o * in + k);
      }
      y[static_cast<size_t>(i * out + o)] = static_cast<float>(s);
    }
  }
  tt::expect_near(r.output.to_host(), y, 1e-5, "y");

  fc.zero_grad();
  const Tensor dx = fc.backward(dy, std::move(r.ctx));
  std::vector<float> edx(static_cast<size_t>(n * in)), edw(static_cast<size_t>(out * in)),
      edb(static_cast<size_t>(out));
  for (Index i = 0; i < n; ++i) {
    for (Index k = 0; k < in; ++k) {
      double s = 0.0;
      for (Index o = 0; o < out; ++o) {
        s += at(dyv, i * out + o) * at(w, o * in + k);
      }
      edx[static_cast<size_t>(i * in + k)] = static_cast<float>(s);
    }
  }
  for (Index o = 0; o < out; ++o) {
    double sb = 0.0;
    for (Index i = 0; i < n; ++i) {
      sb += at(dyv, i * out + o);
    }
    edb[static_cast<size_t>(o)] = static_cast<float>(sb);
    for (Index k = 0; k < in; ++k) {
      double s = 0.0;
      for (Index i = 0; i < n; ++i) {
        s += at(dyv, i * out + o) * at(xv, i * in + k);
      }
      edw[static_cast<size_t>(o * in + k)] = static_cast<float>(s);
    }
  }
  tt::expect_near(dx.to_host(), edx, 1e-5, "dx");
  tt::expect_near(fc.weight().grad.to_host(), edw, 1e-5, "dW");
  tt::expect_near(fc.bias().grad.to_host(), edb, 1e-5, "db");

  // A second backward accumulates: the gradients double.
  nn::ForwardResult r2 = fc.forward(x, {});
  (void)fc.backward(dy, std::move(r2.ctx));
  for (float& v : edw) {
    v *= 2.0F;
  }
  for (float& v : edb) {
    v *= 2.0F;
  }
  tt::expect_near(fc.weight().grad.to_host(), edw, 2e-5, "dW after two backward calls");
  tt::expect_near(fc.bias().grad.to_host(), edb, 2e-5, "db after two backward calls");
}

TEST(Linear, GradCheck) {
  Linear fc("fc", {13}, LinearOptions{6});
  fc.initialize(3);
  EXPECT_EQ(tt::gradcheck(fc, tt::random_tensor("x", {4, 13}, 8)), 0);

  Linear nobias("nb", {5}, LinearOptions{3, false});
  nobias.initialize(3);
  ASSERT_EQ(nobias.parameters().size(), 1u);
  EXPECT_EQ(tt::gradcheck(nobias, tt::random_tensor("x", {2, 5}, 9)), 0);
}

TEST(Linear, PerTokenSamplesAreRowsOfOneGemm) {
  // (N, T, in) samples: every token is a row, as the same layer applied to (N·T, in).
  Linear tokens("fc", {5, 4}, LinearOptions{3});
  Linear rows("fc", {4}, LinearOptions{3});
  tokens.initialize(21);
  rows.initialize(21);
  EXPECT_EQ(tokens.output_shape({5, 4}), (Shape{5, 3}));
  const Tensor x = tt::random_tensor("x", {2, 5, 4}, 22);
  const Tensor dy = tt::random_tensor("dy", {2, 5, 3}, 23);
  nn::ForwardResult a = tokens.forward(x, {});
  nn::ForwardResult b = rows.forward(x.reshaped({10, 4}), {});
  EXPECT_EQ(a.output.shape(), (Shape{2, 5, 3}));
  EXPECT_EQ(a.output.to_host(), b.output.to_host());
  const Tensor dxa = tokens.backward(dy, std::move(a.ctx));
  const Tensor dxb = rows.backward(dy.reshaped({10, 3}), std::move(b.ctx));
  EXPECT_EQ(dxa.shape(), (Shape{2, 5, 4}));
  EXPECT_EQ(dxa.to_host(), dxb.to_host());
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(tokens.parameters()[i].grad.to_host(), rows.parameters()[i].grad.to_host());
  }
  Linear fresh("fc", {3, 6}, LinearOptions{4});
  fresh.initialize(24);
  EXPECT_EQ(tt::gradcheck(fresh, tt::random_tensor("x", {2, 3, 6}, 25)), 0);
}

TEST(Linear, ParametersAndInitialisation) {
  Linear fc("fc1", {784}, LinearOptions{256});
  ASSERT_EQ(fc.parameters().size(), 2u);
  EXPECT_EQ(fc.kind(), std::string("linear"));
  EXPECT_EQ(fc.weight().name, "fc1.weight");
  EXPECT_EQ(fc.weight().value.shape(), (Shape{256, 784}));
  EXPECT_TRUE(fc.weight().decay);
  EXPECT_EQ(fc.bias().name, "fc1.bias");
  EXPECT_EQ(fc.bias().value.shape(), (Shape{256}));
  EXPECT_FALSE(fc.bias().decay);
  EXPECT_EQ(fc.output_shape({784}), (Shape{256}));
  fc.initialize(42);
  const float bound = 1.0F / std::sqrt(784.0F);
  for (const nn::Parameter& p : fc.parameters()) {
    double sum_sq = 0.0;
    for (float v : p.value.to_host()) {
      ASSERT_GE(v, -bound);
      ASSERT_LT(v, bound);
      sum_sq += static_cast<double>(v) * static_cast<double>(v);
    }
    // U(-a, a) has variance a²/3.
    const double var = sum_sq / static_cast<double>(p.value.numel());
    EXPECT_NEAR(var, static_cast<double>(bound * bound) / 3.0,
                0.2 * static_cast<double>(bound * bound));
  }
}

TEST(Linear, BadArgumentsThrowExactMessages) {
  EXPECT_EQ(tt::error_of([] { Linear("fc1", {}, LinearOptions{4}); }),
            "linear 'fc1': input shape () must be (in,) or (tokens, in) with extents >= 1 "
            "(flatten first)");
  EXPECT_EQ(tt::error_of([] {
              Linear("fc1", {2, 3, 4}, LinearOptions{4});
            }),
            "linear 'fc1': input shape (2, 3, 4) must be (in,) or (tokens, in) with extents >= 1 "
            "(flatten first)");
  EXPECT_EQ(tt::error_of([] { Linear("fc1", {0}, LinearOptions{4}); }),
            "linear 'fc1': input shape (0,) must be (in,) or (tokens, in) with extents >= 1 "
            "(flatten first)");
  EXPECT_EQ(tt::error_of([] { Linear("fc1", {8}, LinearOptions{0}); }),
            "linear 'fc1': option out = 0 must be >= 1");

  Linear fc("fc1", {784}, LinearOptions{10});
  EXPECT_EQ(tt::error_of([&] {
              (void)fc.output_shape({28, 28});
            }),
            "linear 'fc1': input sample shape (28, 28) does not fit, expected (784,)");
  EXPECT_EQ(tt::error_of([&] {
              (void)fc.forward(Tensor("x", {4, 5}), {});
            }),
            "linear 'fc1': input has shape (4, 5), expected (N, 784) with N >= 1");
  EXPECT_EQ(tt::error_of([&] {
              (void)fc.forward(Tensor("x", {0, 784}), {});
            }),
            "linear 'fc1': input has shape (0, 784), expected (N, 784) with N >= 1");
  nn::ForwardResult r = fc.forward(Tensor("x", {4, 784}), {});
  EXPECT_EQ(tt::error_of([&] {
              (void)fc.backward(Tensor("dy", {4, 11}), nn::Context(r.ctx));
            }),
            "linear 'fc1': output grad has shape (4, 11), expected (N, 10) with N >= 1");
  EXPECT_NE(tt::error_of([&] {
              (void)fc.backward(Tensor("dy", {3, 10}), nn::Context(r.ctx));
            }).find("linear 'fc1': backward context does not match output grad (3, 10)"),
            std::string::npos);
}
