// Activation layers and kernels: forward against std:: math in double and hand-computed values,
// backward against the analytic derivative in double and against finite differences
// (gradcheck), which tensor is saved for backward, and exact error messages.
#include "support/gradcheck.hpp"
#include "tessera/core/error.hpp"
#include "tessera/kernels/elementwise.hpp"
#include "tessera/nn/activation.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

using namespace tessera;
using kernels::ActivationKind;
using tessera::testing::error_of;
namespace tt = tessera::testing;

namespace {

const ActivationKind kAllKinds[] = {ActivationKind::relu, ActivationKind::leaky_relu,
                                    ActivationKind::gelu, ActivationKind::tanh,
                                    ActivationKind::sigmoid};

// Independent references in double.
double ref_forward(ActivationKind kind, double x, double slope) {
  switch (kind) {
    case ActivationKind::relu:
      return x > 0 ? x : 0.0;
    case ActivationKind::leaky_relu:
      return x > 0 ? x : slope * x;
    case ActivationKind::gelu:
      return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    case ActivationKind::tanh:
      return std::tanh(x);
    case ActivationKind::sigmoid:
      return 1.0 / (1.0 + std::exp(-x));
  }
  return 0.0;
}

double ref_derivative(ActivationKind kind, double x, double slope) {
  const double pi = 3.14159265358979323846;
  switch (kind) {
    case ActivationKind::relu:
      return x > 0 ? 1.0 : 0.0;
    case ActivationKind::leaky_relu:
      return x > 0 ? 1.0 : slope;
    case ActivationKind::gelu:
      return 0.5 * (1.0 + std::erf(x / std::sqrt(2.0))) +
             x * std::exp(-0.5 * x * x) / std::sqrt(2.0 * pi);
    case ActivationKind::tanh: {
      const double t = std::tanh(x);
      return 1.0 - t * t;
    }
    case ActivationKind::sigmoid: {
      const double s = 1.0 / (1.0 + std::exp(-x));
      return s * (1.0 - s);
    }
  }
  return 0.0;
}

// Values in ±[0.05, 4): away from 0 by more than gradcheck's eps (1e-2), where ReLU and LeakyReLU
// have their kink.
std::vector<float> away_from_zero(Index n, std::uint64_t seed) {
  std::vector<float> v = tt::random_values(n, seed, -4.0F, 4.0F);
  for (float& x : v) {
    if (std::fabs(x) < 0.05F) {
      x = x < 0.0F ? x - 0.05F : x + 0.05F;
    }
  }
  return v;
}

}  // namespace

TEST(Activation, KindNamesRoundTrip) {
  const char* names[] = {"relu", "leaky_relu", "gelu", "tanh", "sigmoid"};
  for (int i = 0; i < 5; ++i) {
    EXPECT_STREQ(kernels::activation_name(kAllKinds[i]), names[i]);
    ASSERT_TRUE(kernels::activation_from_name(names[i]).has_value());
    EXPECT_EQ(*kernels::activation_from_name(names[i]), kAllKinds[i]);
    nn::Activation layer("act", {3}, {kAllKinds[i]});
    EXPECT_STREQ(layer.kind(), names[i]);
    EXPECT_TRUE(layer.parameters().empty());
    EXPECT_EQ(layer.output_shape({3}), (Shape{3}));
  }
  EXPECT_FALSE(kernels::activation_from_name("swish").has_value());
}

TEST(Activation, ForwardMatchesStdMath) {
  const Shape sample{3, 4, 5};
  const Index n = 2;
  const Tensor x = tt::random_tensor("x", nn::batch_shape(n, sample), 5, -8.0F, 8.0F);
  const std::vector<float> xv = x.to_host();
  for (ActivationKind kind : kAllKinds) {
    for (float slope : {0.01F, 0.2F, -0.5F}) {
      if (kind != ActivationKind::leaky_relu && slope != 0.01F) {
        continue;
      }
      nn::Activation layer("act", sample, {kind, slope});
      const nn::ForwardResult fwd = layer.forward(x, {});
      ASSERT_EQ(fwd.output.shape(), x.shape());
      std::vector<float> expected(xv.size());
      for (size_t i = 0; i < xv.size(); ++i) {
        expected[i] =
            static_cast<float>(ref_forward(kind, static_cast<double>(xv[i]), double{slope}));
      }
      tt::expect_near(fwd.output.to_host(), expected, 2e-6, std::string(layer.kind()) + " forward");
    }
  }
}

TEST(Activation, HandComputedValues) {
  struct Case {
    ActivationKind kind;
    float x;
    double y;
  };
  const Case cases[] = {
      {ActivationKind::relu, -1.5F, 0.0},
      {ActivationKind::relu, 2.5F, 2.5},
      {ActivationKind::leaky_relu, -2.0F, -0.02},  // slope 0.01
      {ActivationKind::leaky_relu, 3.0F, 3.0},
      {ActivationKind::gelu, 1.0F, 0.8413447460685429},  // Φ(1) = 0.8413447460685429
      {ActivationKind::gelu, -1.0F, -0.15865525393145705},
      {ActivationKind::gelu, 0.0F, 0.0},
      {ActivationKind::tanh, 0.5F, 0.46211715726000974},
      {ActivationKind::sigmoid, 0.0F, 0.5},
      {ActivationKind::sigmoid, 2.0F, 0.8807970779778823},
      // No overflow far out in the tails.
      {ActivationKind::sigmoid, -100.0F, 0.0},
      {ActivationKind::sigmoid, 100.0F, 1.0},
      {ActivationKind::tanh, -50.0F, -1.0},
      {ActivationKind::gelu, -30.0F, 0.0},
  };
  for (const Case& c : cases) {
    const Tensor x = Tensor::from_host("x", {1}, {c.x});
    const Tensor y("y", {1});
    kernels::activation_forward(c.kind, x, y);
    const float got = y.to_host()[0];
    EXPECT_TRUE(std::isfinite(got));
    EXPECT_NEAR(static_cast<double>(got), c.y, 1e-6)
        << kernels::activation_name(c.kind) << "(" << c.x << ")";
  }
}

TEST(Activation, BackwardMatchesAnalyticDerivative) {
  const Shape sample{7, 6};
  const Tensor x("x", nn::batch_shape(3, sample));
  x.copy_from_host(away_from_zero(x.numel(), 8));
  const std::vector<float> xv = x.to_host();
  const Tensor dy = tt::random_tensor("dy", x.shape(), 9);
  const std::vector<float> dyv = dy.to_host();
  for (ActivationKind kind : kAllKinds) {
    for (float slope : {0.01F, -0.3F}) {
      if (kind != ActivationKind::leaky_relu && slope != 0.01F) {
        continue;
      }
      nn::Activation layer("act", sample, {kind, slope});
      nn::ForwardResult fwd = layer.forward(x, {});
      const Tensor dx = layer.backward(dy, std::move(fwd.ctx));
      ASSERT_EQ(dx.shape(), x.shape());
      std::vector<float> expected(xv.size());
      for (size_t i = 0; i < xv.size(); ++i) {
        expected[i] =
            static_cast<float>(ref_derivative(kind, static_cast<double>(xv[i]), double{slope}) *
                               static_cast<double>(dyv[i]));
      }
      tt::expect_near(dx.to_host(), expected, 2e-6, std::string(layer.kind()) + " backward");
    }
  }
}

TEST(Activation, GradCheckEveryKind) {
  const Shape sample{4, 5};
  for (ActivationKind kind : kAllKinds) {
    for (float slope : {0.01F, 0.25F, -0.4F}) {
      if (kind != ActivationKind::leaky_relu && slope != 0.01F) {
        continue;
      }
      nn::Activation layer("act", sample, {kind, slope});
      const Tensor x("x", nn::batch_shape(3, sample));
      x.copy_from_host(away_from_zero(x.numel(), 21));
      EXPECT_EQ(tt::gradcheck(layer, x), 0) << layer.kind() << " slope " << slope;
    }
  }
  // The smooth ones also right across zero.
  for (ActivationKind kind :
       {ActivationKind::gelu, ActivationKind::tanh, ActivationKind::sigmoid}) {
    nn::Activation layer("act", sample, {kind});
    const Tensor x = tt::random_tensor("x", nn::batch_shape(2, sample), 22, -0.5F, 0.5F);
    EXPECT_EQ(tt::gradcheck(layer, x), 0) << layer.kind();
  }
}

TEST(Activation, SavesTheCheaperTensor) {
  const Shape sample{5};
  const Tensor x = tt::random_tensor("x", nn::batch_shape(2, sample), 3);
  struct Case {
    ActivationKind kind;
    float slope;
    bool saves_output;
  };
  const Case cases[] = {
      {ActivationKind::relu, 0.01F, true},      {ActivationKind::leaky_relu, 0.01F, true},
      {ActivationKind::leaky_relu, 0.0F, true}, {ActivationKind::leaky_relu, -0.1F, false},
      {ActivationKind::gelu, 0.01F, false},     {ActivationKind::tanh, 0.01F, true},
      {ActivationKind::sigmoid, 0.01F, true}};
  for (const Case& c : cases) {
    nn::Activation layer("act", sample, {c.kind, c.slope});
    const nn::ForwardResult fwd = layer.forward(x, {});
    ASSERT_EQ(fwd.ctx.saved.size(), 1U);
    const float* saved = fwd.ctx.saved[0].data();
    EXPECT_EQ(saved, c.saves_output ? fwd.output.data() : x.data())
        << layer.kind() << " slope " << c.slope;
    EXPECT_EQ(fwd.ctx.input_shape, x.shape());
  }
}

TEST(Activation, AnySampleShape) {
  for (const Shape& sample : {Shape{}, Shape{7}, Shape{2, 3, 4, 5}}) {
    nn::Activation layer("act", sample, {ActivationKind::tanh});
    EXPECT_EQ(layer.output_shape(sample), sample);
    const Tensor x = tt::random_tensor("x", nn::batch_shape(3, sample), 4);
    const nn::ForwardResult fwd = layer.forward(x, {});
    EXPECT_EQ(fwd.output.shape(), x.shape());
    const std::vector<float> xv = x.to_host();
    const std::vector<float> yv = fwd.output.to_host();
    for (size_t i = 0; i < xv.size(); ++i) {
      EXPECT_NEAR(static_cast<double>(yv[i]), std::tanh(static_cast<double>(xv[i])), 1e-6);
    }
  }
}

TEST(Activation, KernelInPlace) {
  const std::vector<float> v = {-2.0F, -0.5F, 0.5F, 2.0F};
  const Tensor x = Tensor::from_host("x", {4}, v);
  kernels::activation_forward(ActivationKind::sigmoid, x, x);
  const std::vector<float> y = x.to_host();
  for (size_t i = 0; i < v.size(); ++i) {
    EXPECT_NEAR(static_cast<double>(y[i]), 1.0 / (1.0 + std::exp(-static_cast<double>(v[i]))),
                1e-7);
  }
  // dx aliasing dy.
  const Tensor dy = Tensor::from_host("dy", {4}, {1.0F, 1.0F, 1.0F, 1.0F});
  kernels::activation_backward(ActivationKind::sigmoid, x, dy, dy);
  const std::vector<float> dx = dy.to_host();
  for (size_t i = 0; i < v.size(); ++i) {
    EXPECT_NEAR(static_cast<double>(dx[i]),
                ref_derivative(ActivationKind::sigmoid, static_cast<double>(v[i]), 0.0), 1e-7);
  }
}

TEST(Activation, ErrorMessages) {
  nn::Activation layer("act1", {3, 4}, {ActivationKind::gelu});
  EXPECT_EQ(error_of([&] {
              (void)layer.forward(Tensor("x", {2, 5}), {});
            }),
            "gelu 'act1': input has shape (2, 5), expected (N, 3, 4) with N >= 1");
  nn::ForwardResult fwd = layer.forward(Tensor("x", {2, 3, 4}), {});
  EXPECT_EQ(error_of([&] {
              (void)layer.backward(Tensor("dy", {2, 4, 3}), std::move(fwd.ctx));
            }),
            "gelu 'act1': output grad has shape (2, 4, 3), expected (N, 3, 4) with N >= 1");
  nn::ForwardResult fwd2 = layer.forward(Tensor("x", {2, 3, 4}), {});
  EXPECT_EQ(error_of([&] {
              (void)layer.backward(Tensor("dy", {5, 3, 4}), std::move(fwd2.ctx));
            }),
            "gelu 'act1': output grad has shape (5, 3, 4), but the forward context is for input "
            "(2, 3, 4) (1 saved tensors, expected 1)");
  EXPECT_EQ(error_of([] {
              nn::Activation bad("act2", {3, 0}, {ActivationKind::relu});
            }),
            "relu 'act2': input sample shape (3, 0) has an extent < 1");
  EXPECT_EQ(error_of([] {
              nn::Activation bad(
                  "act3", {3},
                  {ActivationKind::leaky_relu, std::numeric_limits<float>::infinity()});
            }),
            "leaky_relu 'act3': negative_slope = inf must be finite");
  EXPECT_EQ(error_of([] { nn::Activation bad("act4", {3}, {static_cast<ActivationKind>(17)}); }),
            "activation 'act4': unknown activation kind 17");
  EXPECT_THROW(
      kernels::activation_forward(ActivationKind::relu, Tensor("a", {3}), Tensor("b", {4})), Error);
}

TEST(Activation, GeluEqualsTheDoublePrecisionFunctionsEverywhere) {
  // The host kernels use polynomial erf and exp (vectorised): over [-12, 12] in steps of 1e-3,
  // forward and backward stay within 1e-6 of x·Φ(x) and Φ(x) + x·φ(x) in double (relative to
  // max(1, |y|)): the rational erf is within 3.6e-7 of erf (3 float ulp of 1), which x/2 scales
  // to 9e-7 where Φ underflows to its last ulp (x ≈ -5.6); libm's erff gives 1.1e-7.
  const Index n = 24001;
  std::vector<float> xs(static_cast<size_t>(n));
  for (Index i = 0; i < n; ++i) {
    xs[static_cast<size_t>(i)] = -12.0F + 1e-3F * static_cast<float>(i);
  }
  const Tensor x = Tensor::from_host("x", {n}, xs);
  const Tensor y("y", {n});
  const Tensor ones =
      Tensor::from_host("dy", {n}, std::vector<float>(static_cast<size_t>(n), 1.0F));
  const Tensor dx("dx", {n});
  kernels::activation_forward(ActivationKind::gelu, x, y);
  kernels::activation_backward(ActivationKind::gelu, x, ones, dx);
  const std::vector<float> yv = y.to_host();
  const std::vector<float> gv = dx.to_host();
  double worst_y = 0.0;
  double worst_g = 0.0;
  for (Index i = 0; i < n; ++i) {
    const auto v = static_cast<double>(xs[static_cast<size_t>(i)]);
    const double cdf = 0.5 * (1.0 + std::erf(v / std::sqrt(2.0)));
    const double pdf = std::exp(-0.5 * v * v) / std::sqrt(2.0 * M_PI);
    worst_y =
        std::max(worst_y, std::fabs(static_cast<double>(yv[static_cast<size_t>(i)]) - v * cdf) /
                              std::max(1.0, std::fabs(v * cdf)));
    worst_g = std::max(
        worst_g, std::fabs(static_cast<double>(gv[static_cast<size_t>(i)]) - (cdf + v * pdf)));
  }
  EXPECT_LT(worst_y, 1e-6);
  EXPECT_LT(worst_g, 1e-6);
}
