// Normalisation layers: BatchNorm2d/3d and LayerNorm against naive loops written here (statistics
// in double), BatchNorm's running estimates after training steps and its eval mode, finite-
// difference gradient checks of inputs and parameters, and the exact messages for bad options and
// shapes.
#include "support/gradcheck.hpp"
#include "tessera/core/error.hpp"
#include "tessera/nn/norm.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

using namespace tessera;
using tessera::testing::expect_error;
using tessera::testing::expect_near;
using tessera::testing::gradcheck;
using tessera::testing::random_tensor;
using tessera::testing::random_values;

namespace {

// Per-channel batch statistics of x viewed as (N, C, S): mean and biased variance, in double.
struct ChannelStats {
  std::vector<double> mean;
  std::vector<double> var;
};
ChannelStats channel_stats(const std::vector<float>& x, Index n, Index c, Index s) {
  ChannelStats st{std::vector<double>(static_cast<size_t>(c), 0.0),
                  std::vector<double>(static_cast<size_t>(c), 0.0)};
  const auto m = static_cast<double>(n * s);
  for (Index ch = 0; ch < c; ++ch) {
    double sum = 0.0;
    double sum_sq = 0.0;
    for (Index b = 0; b < n; ++b) {
      for (Index j = 0; j < s; ++j) {
        const auto v = static_cast<double>(x[static_cast<size_t>((b * c + ch) * s + j)]);
        sum += v;
        sum_sq += v * v;
      }
    }
    const double mean = sum / m;
    st.mean[static_cast<size_t>(ch)] = mean;
    st.var[static_cast<size_t>(ch)] = sum_sq / m - mean * mean;
  }
  return st;
}

// y = w · (x - mean) / sqrt(var + eps) + b per channel of x viewed as (N, C, S).
std::vector<float> normalize_channels(const std::vector<float>& x, Index n, Index c, Index s,
                                      const std::vector<double>& mean,
                                      const std::vector<double>& var, const std::vector<float>& w,
                                      const std::vector<float>& b, double eps) {
  std::vector<float> y(x.size());
  for (Index i = 0; i < n * c * s; ++i) {
    const auto ch = static_cast<size_t>((i / s) % c);
    const double xh =
        (static_cast<double>(x[static_cast<size_t>(i)]) - mean[ch]) / std::sqrt(var[ch] + eps);
    y[static_cast<size_t>(i)] =
        static_cast<float>(static_cast<double>(w[ch]) * xh + static_cast<double>(b[ch]));
  }
  return y;
}

// Gives the layer's weight and bias non-trivial values, so that their gradients are tested too.
void randomize_affine(nn::Layer& layer, std::uint64_t seed) {
  for (nn::Parameter& p : layer.parameters()) {
    p.value.copy_from_host(random_values(p.value.numel(), seed++, 0.5F, 1.5F));
  }
}

}  // namespace

// --- BatchNorm ---------------------------------------------------------------------------------

TEST(BatchNorm, ParametersAndBuffers) {
  nn::BatchNorm2d bn("bn1", {3, 4, 4});
  EXPECT_STREQ(bn.kind(), "batchnorm2d");
  EXPECT_EQ(bn.output_shape({3, 4, 4}), (Shape{3, 4, 4}));
  ASSERT_EQ(bn.parameters().size(), 2U);
  ASSERT_EQ(bn.buffers().size(), 2U);
  EXPECT_EQ(bn.parameters()[0].name, "bn1.weight");
  EXPECT_EQ(bn.parameters()[1].name, "bn1.bias");
  EXPECT_EQ(bn.buffers()[0].name, "bn1.running_mean");
  EXPECT_EQ(bn.buffers()[1].name, "bn1.running_var");
  for (const nn::Parameter& p : bn.parameters()) {
    EXPECT_FALSE(p.decay) << p.name;
    EXPECT_EQ(p.value.shape(), (Shape{3})) << p.name;
    EXPECT_EQ(p.grad.shape(), (Shape{3})) << p.name;
  }
  for (const nn::Parameter& b : bn.buffers()) {
    EXPECT_FALSE(b.grad.defined()) << b.name;
  }
  const std::vector<float> ones(3, 1.0F);
  const std::vector<float> zeros(3, 0.0F);
  EXPECT_EQ(bn.weight().value.to_host(), ones);  // set by the constructor already
  EXPECT_EQ(bn.running_var().value.to_host(), ones);
  bn.weight().value.fill(7.0F);
  bn.running_mean().value.fill(7.0F);
  bn.initialize(42);
  EXPECT_EQ(bn.weight().value.to_host(), ones);
  EXPECT_EQ(bn.bias().value.to_host(), zeros);
  EXPECT_EQ(bn.running_mean().value.to_host(), zeros);
  EXPECT_EQ(bn.running_var().value.to_host(), ones);
  nn::BatchNorm3d bn3("bn3", {2, 2, 3, 3}, {0.2F, 1e-3F});
  EXPECT_STREQ(bn3.kind(), "batchnorm3d");
  EXPECT_FLOAT_EQ(bn3.options().momentum, 0.2F);
  EXPECT_FLOAT_EQ(bn3.options().eps, 1e-3F);
}

TEST(BatchNorm, TrainingForwardMatchesNaiveAndUpdatesRunningStats) {
  const Index n = 4, c = 3, s = 5 * 6;
  nn::BatchNorm2d bn("bn1", {c, 5, 6});
  randomize_affine(bn, 10);
  const std::vector<float> w = bn.weight().value.to_host();
  const std::vector<float> b = bn.bias().value.to_host();
  const Tensor x = random_tensor("x", {n, c, 5, 6}, 1, -2.0F, 3.0F);
  const nn::ForwardResult fwd = bn.forward(x, {});  // training
  const ChannelStats st = channel_stats(x.to_host(), n, c, s);
  expect_near(fwd.output.to_host(),
              normalize_channels(x.to_host(), n, c, s, st.mean, st.var, w, b, 1e-5), 2e-5, "y");
  // Running estimates after one step from (0, 1), momentum 0.1, unbiased variance.
  const auto m = static_cast<double>(n * s);
  std::vector<float> mean1;
  std::vector<float> var1;
  for (Index ch = 0; ch < c; ++ch) {
    const auto k = static_cast<size_t>(ch);
    mean1.push_back(static_cast<float>(0.1 * st.mean[k]));
    var1.push_back(static_cast<float>(0.9 + 0.1 * st.var[k] * m / (m - 1.0)));
  }
  expect_near(bn.running_mean().value.to_host(), mean1, 1e-6, "running_mean");
  expect_near(bn.running_var().value.to_host(), var1, 1e-6, "running_var");
}

TEST(BatchNorm, RunningStatsFollowMomentumOverSteps) {
  const Index n = 2, c = 2, s = 3 * 3 * 2;
  nn::BatchNorm3d bn("bn", {c, 3, 3, 2}, {0.3F, 1e-5F});
  const Tensor x1 = random_tensor("x1", {n, c, 3, 3, 2}, 3, 0.0F, 4.0F);
  const Tensor x2 = random_tensor("x2", {n, c, 3, 3, 2}, 4, -1.0F, 1.0F);
  (void)bn.forward(x1, {});
  (void)bn.forward(x2, {});
  const ChannelStats s1 = channel_stats(x1.to_host(), n, c, s);
  const ChannelStats s2 = channel_stats(x2.to_host(), n, c, s);
  const auto unbias = static_cast<double>(n * s) / static_cast<double>(n * s - 1);
  std::vector<float> mean;
  std::vector<float> var;
  for (size_t k = 0; k < static_cast<size_t>(c); ++k) {
    const double m1 = 0.3 * s1.mean[k];
    const double v1 = 0.7 * 1.0 + 0.3 * s1.var[k] * unbias;
    mean.push_back(static_cast<float>(0.7 * m1 + 0.3 * s2.mean[k]));
    var.push_back(static_cast<float>(0.7 * v1 + 0.3 * s2.var[k] * unbias));
  }
  expect_near(bn.running_mean().value.to_host(), mean, 1e-6, "running_mean");
  expect_near(bn.running_var().value.to_host(), var, 1e-6, "running_var");
}

TEST(BatchNorm, EvalUsesRunningStatsAndLeavesThemAlone) {
  const Index n = 3, c = 2, s = 4 * 4;
  nn::BatchNorm2d bn("bn", {c, 4, 4}, {0.1F, 1e-3F});
  randomize_affine(bn, 20);
  bn.running_mean().value.copy_from_host({0.5F, -1.0F});
  bn.running_var().value.copy_from_host({2.0F, 0.25F});
  const Tensor x = random_tensor("x", {n, c, 4, 4}, 5);
  nn::ForwardOptions eval;
  eval.training = false;
  const nn::ForwardResult fwd = bn.forward(x, eval);
  expect_near(fwd.output.to_host(),
              normalize_channels(x.to_host(), n, c, s, {0.5, -1.0}, {2.0, 0.25},
                                 bn.weight().value.to_host(), bn.bias().value.to_host(), 1e-3),
              2e-5, "y");
  EXPECT_EQ(bn.running_mean().value.to_host(), (std::vector<float>{0.5F, -1.0F}));
  EXPECT_EQ(bn.running_var().value.to_host(), (std::vector<float>{2.0F, 0.25F}));
  // Eval needs no batch: one value per channel is fine.
  nn::BatchNorm2d single("single", {c, 1, 1});
  EXPECT_EQ(
      single.forward(Tensor::from_host("x", {1, c, 1, 1}, {3.0F, -2.0F}), eval).output.shape(),
      (Shape{1, c, 1, 1}));
}

TEST(BatchNorm, GradientCheck) {
  {
    nn::BatchNorm2d bn("bn2", {2, 3, 2});
    randomize_affine(bn, 30);
    EXPECT_EQ(gradcheck(bn, random_tensor("x", {3, 2, 3, 2}, 6)), 0);
  }
  {
    nn::BatchNorm3d bn("bn3", {2, 2, 2, 3});
    randomize_affine(bn, 40);
    EXPECT_EQ(gradcheck(bn, random_tensor("x", {2, 2, 2, 2, 3}, 7)), 0);
  }
  {
    // Eval mode: the statistics are constants, the layer is affine in x.
    nn::BatchNorm2d bn("bn_eval", {3, 2, 2});
    randomize_affine(bn, 50);
    bn.running_mean().value.copy_from_host({0.1F, -0.2F, 0.3F});
    bn.running_var().value.copy_from_host({0.5F, 1.5F, 2.5F});
    tessera::testing::GradCheckOptions o;
    o.forward.training = false;
    EXPECT_EQ(gradcheck(bn, random_tensor("x", {2, 3, 2, 2}, 8), o), 0);
  }
}

TEST(BatchNorm, BadOptionsAndShapesThrow) {
  expect_error(
      [] {
        nn::BatchNorm2d("bn1", {3, 28});
      },
      "batchnorm2d 'bn1': input sample shape (3, 28) must be (C, H, W) with every "
      "extent >= 1");
  expect_error(
      [] {
        nn::BatchNorm3d("bn", {3, 4, 4});
      },
      "batchnorm3d 'bn': input sample shape (3, 4, 4) must be (C, D, H, W) with every "
      "extent >= 1");
  expect_error(
      [] {
        nn::BatchNorm2d("bn1", {3, 4, 4}, {1.5F, 1e-5F});
      },
      "batchnorm2d 'bn1': option momentum = 1.5 must be in [0, 1]");
  expect_error(
      [] {
        nn::BatchNorm2d("bn1", {3, 4, 4}, {0.1F, 0.0F});
      },
      "batchnorm2d 'bn1': option eps = 0 must be > 0");
  nn::BatchNorm2d bn("bn1", {3, 5, 5});
  expect_error(
      [&] {
        (void)bn.forward(Tensor("x", {2, 4, 5, 5}), {});
      },
      "batchnorm2d 'bn1': input has shape (2, 4, 5, 5), expected (N, 3, 5, 5) with "
      "N >= 1");
  nn::ForwardResult fwd = bn.forward(random_tensor("x", {2, 3, 5, 5}, 1), {});
  expect_error(
      [&] {
        (void)bn.backward(Tensor("dy", {1, 3, 5, 5}), std::move(fwd.ctx));
      },
      "batchnorm2d 'bn1': output grad of shape (1, 3, 5, 5) does not match the context "
      "of the forward pass (input (2, 3, 5, 5))");
  nn::BatchNorm2d single("bn1", {3, 1, 1});
  expect_error(
      [&] {
        (void)single.forward(Tensor("x", {1, 3, 1, 1}), {});
      },
      "batchnorm2d 'bn1': training needs more than one value per channel to take batch "
      "statistics, got input of shape (1, 3, 1, 1)");
}

// --- LayerNorm ---------------------------------------------------------------------------------

namespace {
// Every row of x viewed as (rows, C) normalised over C with the biased variance, then affine.
std::vector<float> naive_layer_norm(const std::vector<float>& x, Index width,
                                    const std::vector<float>& w, const std::vector<float>& b,
                                    double eps) {
  std::vector<float> y(x.size());
  const Index rows = static_cast<Index>(x.size()) / width;
  for (Index r = 0; r < rows; ++r) {
    double sum = 0.0;
    for (Index j = 0; j < width; ++j) {
      sum += static_cast<double>(x[static_cast<size_t>(r * width + j)]);
    }
    const double mean = sum / static_cast<double>(width);
    double sq = 0.0;
    for (Index j = 0; j < width; ++j) {
      const double d = static_cast<double>(x[static_cast<size_t>(r * width + j)]) - mean;
      sq += d * d;
    }
    const double inv = 1.0 / std::sqrt(sq / static_cast<double>(width) + eps);
    for (Index j = 0; j < width; ++j) {
      const auto i = static_cast<size_t>(r * width + j);
      y[i] = static_cast<float>(static_cast<double>(w[static_cast<size_t>(j)]) *
                                    (static_cast<double>(x[i]) - mean) * inv +
                                static_cast<double>(b[static_cast<size_t>(j)]));
    }
  }
  return y;
}
}  // namespace

TEST(LayerNorm, NormalisesTheLastDimension) {
  // (T, C) samples: each of the T rows over C.
  nn::LayerNorm ln("ln", {5, 8}, {1e-3F});
  EXPECT_STREQ(ln.kind(), "layernorm");
  EXPECT_EQ(ln.output_shape({5, 8}), (Shape{5, 8}));
  ASSERT_EQ(ln.parameters().size(), 2U);
  EXPECT_EQ(ln.parameters()[0].name, "ln.weight");
  EXPECT_EQ(ln.parameters()[1].name, "ln.bias");
  EXPECT_EQ(ln.weight().value.shape(), (Shape{8}));
  EXPECT_FALSE(ln.weight().decay);
  EXPECT_FALSE(ln.bias().decay);
  EXPECT_EQ(ln.weight().value.to_host(), std::vector<float>(8, 1.0F));
  EXPECT_TRUE(ln.buffers().empty());
  randomize_affine(ln, 60);
  const Tensor x = random_tensor("x", {3, 5, 8}, 9, -3.0F, 2.0F);
  const nn::ForwardResult fwd = ln.forward(x, {});
  const std::vector<float> expected = naive_layer_norm(x.to_host(), 8, ln.weight().value.to_host(),
                                                       ln.bias().value.to_host(), 1e-3);
  expect_near(fwd.output.to_host(), expected, 2e-5, "y (T, C)");
  nn::ForwardOptions eval;
  eval.training = false;
  EXPECT_EQ(ln.forward(x, eval).output.to_host(), fwd.output.to_host());  // eval = training

  // (C,) samples: one row per sample.
  nn::LayerNorm row("row", {6});
  const Tensor x1 = random_tensor("x1", {4, 6}, 10);
  expect_near(row.forward(x1, {}).output.to_host(),
              naive_layer_norm(x1.to_host(), 6, std::vector<float>(6, 1.0F),
                               std::vector<float>(6, 0.0F), 1e-5),
              2e-5, "y (C,)");
  // A constant row normalises to 0 (its variance is 0; eps keeps it finite).
  const Tensor flat = Tensor::from_host("flat", {1, 6}, std::vector<float>(6, 2.5F));
  EXPECT_EQ(row.forward(flat, {}).output.to_host(), std::vector<float>(6, 0.0F));
}

TEST(LayerNorm, GradientCheck) {
  {
    nn::LayerNorm ln("ln", {4, 6});
    randomize_affine(ln, 70);
    EXPECT_EQ(gradcheck(ln, random_tensor("x", {2, 4, 6}, 11)), 0);
  }
  {
    nn::LayerNorm ln("ln1", {7});
    randomize_affine(ln, 80);
    EXPECT_EQ(gradcheck(ln, random_tensor("x", {3, 7}, 12)), 0);
  }
}

TEST(LayerNorm, BadOptionsAndShapesThrow) {
  expect_error([] { nn::LayerNorm("ln", {}); },
               "layernorm 'ln': input sample shape () must be (..., C) with every extent >= 1");
  expect_error(
      [] {
        nn::LayerNorm("ln", {4, 0});
      },
      "layernorm 'ln': input sample shape (4, 0) must be (..., C) with every extent >= 1");
  expect_error([] { nn::LayerNorm("ln", {8}, {-1.0F}); },
               "layernorm 'ln': option eps = -1 must be > 0");
  nn::LayerNorm ln("ln", {4, 8});
  expect_error(
      [&] {
        (void)ln.forward(Tensor("x", {2, 4, 7}), {});
      },
      "layernorm 'ln': input has shape (2, 4, 7), expected (N, 4, 8) with N >= 1");
  nn::ForwardResult fwd = ln.forward(random_tensor("x", {2, 4, 8}, 2), {});
  expect_error(
      [&] {
        (void)ln.backward(Tensor("dy", {2, 8}), std::move(fwd.ctx));
      },
      "layernorm 'ln': output grad has shape (2, 8), expected (N, 4, 8) with N >= 1");
}
