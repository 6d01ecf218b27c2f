// Dropout: the mask is the documented function of (seed, layer name, step, global element index),
// so a batch processed whole equals its halves processed with their sample offsets, bit for bit;
// the kept fraction is 1 - p; evaluation and p == 0 are the identity; finite-difference gradient
// check with a fixed mask; exact error messages.
#include "support/gradcheck.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/nn/dropout.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <set>
#include <string>
#include <vector>

using namespace tessera;
using tessera::testing::error_of;
namespace tt = tessera::testing;

namespace {

// Rows [first, first + count) of a (N, ...) tensor, as a new tensor.
Tensor rows_of(const Tensor& t, Index first, Index count) {
  const Index per = t.numel() / t.dim(0);
  const std::vector<float> all = t.to_host();
  Shape s = t.shape();
  s[0] = count;
  return Tensor::from_host(
      "rows", s,
      std::vector<float>(all.begin() + first * per, all.begin() + (first + count) * per));
}

}  // namespace

TEST(Dropout, MaskIsTheDocumentedFunctionOfGlobalIndex) {
  const Shape sample{3, 5};
  const Index per = 15;
  const float p = 0.3F;
  nn::Dropout layer("drop1", sample, {p});
  const Tensor x = tt::random_tensor("x", nn::batch_shape(4, sample), 1, 0.5F, 2.0F);
  nn::ForwardOptions fo;
  fo.seed = 1234;
  fo.step = 17;
  fo.sample_offset = 6;  // these 4 samples are 6..9 of the global batch
  const nn::ForwardResult fwd = layer.forward(x, fo);
  const std::vector<float> xv = x.to_host();
  const std::vector<float> yv = fwd.output.to_host();
  const rng::CounterRng gen(1234, nn::dropout_stream("drop1", 17));
  for (Index n = 0; n < 4; ++n) {
    for (Index j = 0; j < per; ++j) {
      const auto i = static_cast<size_t>(n * per + j);
      const bool keep = gen.uniform(static_cast<std::uint64_t>((6 + n) * per + j)) >= p;
      const double expected = keep ? static_cast<double>(xv[i]) / (1.0 - double{p}) : 0.0;
      EXPECT_NEAR(static_cast<double>(yv[i]), expected, 1e-6 * std::fabs(expected))
          << "sample " << n << " element " << j;
    }
  }
  // The stream mixes the name and the step as documented.
  EXPECT_EQ(nn::dropout_stream("drop1", 17) ^ nn::dropout_stream("drop1", 0),
            nn::dropout_stream("other", 17) ^ nn::dropout_stream("other", 0));
  EXPECT_EQ(nn::dropout_stream("drop1", 5) ^ nn::dropout_stream("other", 5),
            rng::hash_name("drop1") ^ rng::hash_name("other"));
}

TEST(Dropout, WholeBatchEqualsHalvesBitForBit) {
  const Shape sample{2, 3, 4};
  nn::Dropout layer("drop", sample, {0.4F});
  const Tensor x = tt::random_tensor("x", nn::batch_shape(8, sample), 2);
  nn::ForwardOptions fo;
  fo.seed = 99;
  fo.step = 3;
  fo.sample_offset = 0;
  nn::ForwardResult whole = layer.forward(x, fo);
  const Tensor dy = tt::random_tensor("dy", x.shape(), 3);
  const std::vector<float> y_whole = whole.output.to_host();
  const std::vector<float> dx_whole = layer.backward(dy, std::move(whole.ctx)).to_host();

  std::vector<float> y_halves;
  std::vector<float> dx_halves;
  for (Index offset : {0, 4}) {
    fo.sample_offset = offset;
    nn::ForwardResult half = layer.forward(rows_of(x, offset, 4), fo);
    const std::vector<float> y = half.output.to_host();
    const std::vector<float> dx =
        layer.backward(rows_of(dy, offset, 4), std::move(half.ctx)).to_host();
    y_halves.insert(y_halves.end(), y.begin(), y.end());
    dx_halves.insert(dx_halves.end(), dx.begin(), dx.end());
  }
  ASSERT_EQ(y_halves.size(), y_whole.size());
  EXPECT_EQ(std::memcmp(y_halves.data(), y_whole.data(), y_whole.size() * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(dx_halves.data(), dx_whole.data(), dx_whole.size() * sizeof(float)), 0);
  // Some, not all, were dropped.
  const auto dropped = std::count(y_whole.begin(), y_whole.end(), 0.0F);
  EXPECT_GT(dropped, 0);
  EXPECT_LT(dropped, static_cast<long>(y_whole.size()));
}

TEST(Dropout, KeptFractionAndScale) {
  const Shape sample{50, 50};
  for (float p : {0.1F, 0.5F, 0.8F}) {
    nn::Dropout layer("drop", sample, {p});
    const Tensor x("x", nn::batch_shape(8, sample));
    x.fill(1.0F);
    nn::ForwardOptions fo;
    fo.seed = 5;
    fo.step = 1;
    const std::vector<float> y = layer.forward(x, fo).output.to_host();
    Index kept = 0;
    double total = 0.0;
    for (float v : y) {
      if (v != 0.0F) {
        ++kept;
        ASSERT_NEAR(static_cast<double>(v), 1.0 / (1.0 - double{p}), 1e-6 / (1.0 - double{p}));
      }
      total += static_cast<double>(v);
    }
    // 20000 elements: the kept fraction's standard deviation is <= 0.0036.
    const double fraction = static_cast<double>(kept) / static_cast<double>(y.size());
    EXPECT_NEAR(fraction, 1.0 - double{p}, 0.015) << "p = " << p;
    // Inverted dropout keeps the mean.
    EXPECT_NEAR(total / static_cast<double>(y.size()), 1.0, 0.1) << "p = " << p;
  }
}

TEST(Dropout, NewMaskEveryStepAndLayer) {
  const Shape sample{64};
  nn::Dropout a("drop_a", sample, {0.5F});
  nn::Dropout b("drop_b", sample, {0.5F});
  const Tensor x("x", nn::batch_shape(4, sample));
  x.fill(1.0F);
  nn::ForwardOptions fo;
  fo.seed = 8;
  std::set<std::vector<float>> masks;
  for (std::uint64_t step = 0; step < 5; ++step) {
    fo.step = step;
    masks.insert(a.forward(x, fo).output.to_host());
    masks.insert(b.forward(x, fo).output.to_host());
  }
  EXPECT_EQ(masks.size(), 10U);
  fo.step = 2;
  EXPECT_EQ(a.forward(x, fo).output.to_host(), a.forward(x, fo).output.to_host());
  nn::ForwardOptions other_seed = fo;
  other_seed.seed = 9;
  EXPECT_NE(a.forward(x, fo).output.to_host(), a.forward(x, other_seed).output.to_host());
}

TEST(Dropout, IdentityInEvaluationAndForZeroP) {
  const Shape sample{3, 7};
  const Tensor x = tt::random_tensor("x", nn::batch_shape(5, sample), 4);
  const Tensor dy = tt::random_tensor("dy", x.shape(), 5);
  nn::Dropout layer("drop", sample, {0.5F});
  nn::ForwardOptions eval;
  eval.training = false;
  nn::ForwardResult fwd = layer.forward(x, eval);
  EXPECT_EQ(fwd.output.to_host(), x.to_host());
  EXPECT_TRUE(fwd.ctx.saved.empty());
  EXPECT_EQ(layer.backward(dy, std::move(fwd.ctx)).to_host(), dy.to_host());

  nn::Dropout zero("drop0", sample, {0.0F});
  nn::ForwardResult fwd0 = zero.forward(x, {});
  EXPECT_EQ(fwd0.output.to_host(), x.to_host());
  EXPECT_EQ(zero.backward(dy, std::move(fwd0.ctx)).to_host(), dy.to_host());
}

TEST(Dropout, BackwardIsDyTimesMask) {
  const Shape sample{40};
  nn::Dropout layer("drop", sample, {0.25F});
  const Tensor x = tt::random_tensor("x", nn::batch_shape(3, sample), 6, 0.5F, 1.5F);
  const Tensor dy = tt::random_tensor("dy", x.shape(), 7);
  nn::ForwardOptions fo;
  fo.seed = 3;
  fo.step = 4;
  nn::ForwardResult fwd = layer.forward(x, fo);
  ASSERT_EQ(fwd.ctx.saved.size(), 1U);
  const std::vector<float> y = fwd.output.to_host();
  const std::vector<float> dyv = dy.to_host();
  const std::vector<float> dx = layer.backward(dy, std::move(fwd.ctx)).to_host();
  for (size_t i = 0; i < y.size(); ++i) {
    const double expected = y[i] == 0.0F ? 0.0 : static_cast<double>(dyv[i]) / 0.75;
    EXPECT_NEAR(static_cast<double>(dx[i]), expected, 1e-6) << i;
  }
}

TEST(Dropout, GradCheckWithFixedMask) {
  const Shape sample{4, 6};
  nn::Dropout layer("drop", sample, {0.3F});
  const Tensor x = tt::random_tensor("x", nn::batch_shape(3, sample), 8);
  tt::GradCheckOptions o;
  o.forward.seed = 11;
  o.forward.step = 2;
  o.forward.sample_offset = 5;
  EXPECT_EQ(tt::gradcheck(layer, x, o), 0);
  o.forward.training = false;
  EXPECT_EQ(tt::gradcheck(layer, x, o), 0);
}

TEST(Dropout, ErrorMessages) {
  EXPECT_EQ(error_of([] { nn::Dropout d("drop1", {4}, {1.0F}); }),
            "dropout 'drop1': p = 1 must be in [0, 1)");
  EXPECT_EQ(error_of([] { nn::Dropout d("drop1", {4}, {-0.25F}); }),
            "dropout 'drop1': p = -0.25 must be in [0, 1)");
  EXPECT_EQ(error_of([] { nn::Dropout d("drop1", {4}, {std::nanf("")}); }),
            "dropout 'drop1': p = nan must be in [0, 1)");
  EXPECT_EQ(error_of([] {
              nn::Dropout d("drop1", {0, 4}, {});
            }),
            "dropout 'drop1': input sample shape (0, 4) has an extent < 1");
  nn::Dropout layer("drop2", {3, 4}, {0.5F});
  EXPECT_STREQ(layer.kind(), "dropout");
  EXPECT_EQ(layer.output_shape({3, 4}), (Shape{3, 4}));
  EXPECT_EQ(error_of([&] {
              (void)layer.forward(Tensor("x", {2, 12}), {});
            }),
            "dropout 'drop2': input has shape (2, 12), expected (N, 3, 4) with N >= 1");
  nn::ForwardOptions negative;
  negative.sample_offset = -1;
  EXPECT_EQ(error_of([&] {
              (void)layer.forward(Tensor("x", {2, 3, 4}), negative);
            }),
            "dropout 'drop2': sample_offset = -1 must be >= 0");
  nn::ForwardResult fwd = layer.forward(Tensor("x", {2, 3, 4}), {});
  EXPECT_EQ(error_of([&] {
              (void)layer.backward(Tensor("dy", {3, 3, 4}), std::move(fwd.ctx));
            }),
            "dropout 'drop2': output grad has shape (3, 3, 4), but the forward context is for "
            "input (2, 3, 4) (1 saved tensors, expected at most 1)");
}
