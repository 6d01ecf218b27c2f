// Losses: softmax cross-entropy and mean squared error against hand-computed cases and references
// in double written here; the global-batch convention (the halves' losses and gradients sum to the
// whole batch's); finite-difference checks of both gradients; exact error messages.
#include "support/gradcheck.hpp"
#include "tessera/core/error.hpp"
#include "tessera/nn/loss.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

using namespace tessera;
using tessera::testing::error_of;
namespace tt = tessera::testing;
using nn::LossOutput;

namespace {

IntView make_labels(const std::vector<std::int32_t>& v) {
  const IntView labels("labels", v.size());
  const Kokkos::View<const std::int32_t*, Kokkos::HostSpace,
                     Kokkos::MemoryTraits<Kokkos::Unmanaged>>
      host(v.data(), v.size());
  Kokkos::deep_copy(labels, host);
  return labels;
}

struct Reference {
  double loss = 0.0;
  Index correct = 0;
  std::vector<double> grad;
};

// Cross-entropy in double, from the definition: -log(softmax(x)_label), mean over global_batch.
Reference ref_cross_entropy(const std::vector<float>& x, const std::vector<std::int32_t>& labels,
                            Index classes, Index global_batch) {
  Reference r;
  r.grad.resize(x.size());
  const auto n = static_cast<Index>(labels.size());
  for (Index i = 0; i < n; ++i) {
    const float* row = &x[static_cast<size_t>(i * classes)];
    const auto arg = std::max_element(row, row + classes) - row;  // first maximum
    double m = static_cast<double>(row[arg]);
    double s = 0.0;
    for (Index j = 0; j < classes; ++j) {
      s += std::exp(static_cast<double>(row[j]) - m);
    }
    const auto label = static_cast<Index>(labels[static_cast<size_t>(i)]);
    r.loss += -std::log(std::exp(static_cast<double>(row[label]) - m) / s);
    r.correct += arg == label ? 1 : 0;
    for (Index j = 0; j < classes; ++j) {
      const double p = std::exp(static_cast<double>(row[j]) - m) / s;
      r.grad[static_cast<size_t>(i * classes + j)] =
          (p - (j == label ? 1.0 : 0.0)) / static_cast<double>(global_batch);
    }
  }
  r.loss /= static_cast<double>(global_batch);
  return r;
}

template <class LossFn>
int fd_check_loss(const Tensor& prediction, const LossOutput& out, LossFn loss_of,
                  const char* what) {
  const std::vector<float> g = out.grad.to_host();
  std::vector<float> p = prediction.to_host();
  const float eps = 1e-2F;
  int failures = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const float orig = p[i];
    p[i] = orig + eps;
    prediction.copy_from_host(p);
    const double lp = loss_of();
    p[i] = orig - eps;
    prediction.copy_from_host(p);
    const double lm = loss_of();
    p[i] = orig;
    prediction.copy_from_host(p);
    const double numeric = (lp - lm) / (2.0 * static_cast<double>(eps));
    const double analytic = static_cast<double>(g[i]);
    const double tol = 1e-5 + 1e-3 * std::max(std::fabs(numeric), std::fabs(analytic));
    if (std::fabs(numeric - analytic) > tol && ++failures <= 10) {
      ADD_FAILURE() << what << " grad[" << i << "]: numeric " << numeric << " vs analytic "
                    << analytic;
    }
  }
  return failures;
}

}  // namespace

TEST(CrossEntropy, HandComputed) {
  // Logits (1, 2, 3), label 2: log(e + e^2 + e^3) - 3 = 3.40760596444438 - 3.
  const Tensor logits = Tensor::from_host("logits", {1, 3}, {1.0F, 2.0F, 3.0F});
  const LossOutput out = nn::softmax_cross_entropy(logits, make_labels({2}), 1);
  EXPECT_NEAR(out.loss, 0.40760596444438, 1e-6);
  EXPECT_EQ(out.correct, 1);
  ASSERT_EQ(out.grad.shape(), (Shape{1, 3}));
  // softmax(1, 2, 3) = (0.09003057, 0.24472847, 0.66524096); minus one-hot(2).
  tt::expect_near(out.grad.to_host(), {0.09003057F, 0.24472847F, 0.66524096F - 1.0F}, 1e-6, "grad");
  // Label 0: loss log(e + e^2 + e^3) - 1, not correct.
  const LossOutput wrong = nn::softmax_cross_entropy(logits, make_labels({0}), 1);
  EXPECT_NEAR(wrong.loss, 2.40760596444438, 1e-6);
  EXPECT_EQ(wrong.correct, 0);
  // Uniform logits over 4 classes: log 4 whatever the label; global_batch 2 halves it.
  const Tensor flat = Tensor::from_host("flat", {1, 4}, {0.5F, 0.5F, 0.5F, 0.5F});
  EXPECT_NEAR(nn::softmax_cross_entropy(flat, make_labels({3}), 2).loss, std::log(4.0) / 2, 1e-7);
}

TEST(CrossEntropy, MatchesDoubleReference) {
  const Index n = 7;
  const Index classes = 5;
  const Tensor logits = tt::random_tensor("logits", {n, classes}, 12, -4.0F, 4.0F);
  const std::vector<std::int32_t> labels = {0, 4, 2, 2, 1, 3, 0};
  for (Index global_batch : {n, 3 * n}) {
    const LossOutput out = nn::softmax_cross_entropy(logits, make_labels(labels), global_batch);
    const Reference ref = ref_cross_entropy(logits.to_host(), labels, classes, global_batch);
    EXPECT_NEAR(out.loss, ref.loss, 1e-6 * ref.loss);
    EXPECT_EQ(out.correct, ref.correct);
    const std::vector<float> g = out.grad.to_host();
    for (size_t i = 0; i < g.size(); ++i) {
      EXPECT_NEAR(static_cast<double>(g[i]), ref.grad[i], 1e-7) << i;
    }
  }
}

TEST(CrossEntropy, CorrectCountsFirstArgmax) {
  // Row 0's argmax is 1; rows 1 and 2 tie between classes 0 and 2, and the first (0) counts.
  const Tensor logits =
      Tensor::from_host("logits", {3, 3}, {0.0F, 5.0F, 1.0F, 2.0F, 1.0F, 2.0F, 2.0F, 1.0F, 2.0F});
  EXPECT_EQ(nn::softmax_cross_entropy(logits, make_labels({1, 2, 0}), 3).correct, 2);
  EXPECT_EQ(nn::softmax_cross_entropy(logits, make_labels({0, 0, 0}), 3).correct, 2);
  EXPECT_EQ(nn::softmax_cross_entropy(logits, make_labels({1, 2, 2}), 3).correct, 1);
}

TEST(CrossEntropy, StableForHugeLogits) {
  const Tensor logits =
      Tensor::from_host("logits", {2, 3}, {1000.0F, 0.0F, -1000.0F, 1e30F, -1e30F, 0.0F});
  const LossOutput out = nn::softmax_cross_entropy(logits, make_labels({1, 0}), 2);
  // Row 0: log(e^1000 + 1 + e^-1000) - 0 = 1000 (to double precision); row 1: 0.
  EXPECT_NEAR(out.loss, 1000.0 / 2, 1e-9);
  for (float v : out.grad.to_host()) {
    EXPECT_TRUE(std::isfinite(v));
  }
  tt::expect_near(out.grad.to_host(), {0.5F, -0.5F, 0.0F, 0.0F, 0.0F, 0.0F}, 1e-7, "grad");
}

TEST(CrossEntropy, HalvesSumToWholeBatch) {
  // Two data-parallel "ranks" each holding half the batch, normalised by the global batch.
  const Index classes = 4;
  const Tensor logits = tt::random_tensor("logits", {6, classes}, 13, -2.0F, 2.0F);
  const std::vector<std::int32_t> labels = {3, 1, 0, 2, 2, 1};
  const LossOutput whole = nn::softmax_cross_entropy(logits, make_labels(labels), 6);
  const std::vector<float> lv = logits.to_host();
  double loss_sum = 0.0;
  Index correct_sum = 0;
  std::vector<float> grads;
  for (Index half : {0, 1}) {
    const auto b = static_cast<std::ptrdiff_t>(half * 3);
    const Tensor part = Tensor::from_host(
        "part", {3, classes},
        std::vector<float>(lv.begin() + b * classes, lv.begin() + (b + 3) * classes));
    const LossOutput out = nn::softmax_cross_entropy(
        part, make_labels(std::vector<std::int32_t>(labels.begin() + b, labels.begin() + b + 3)),
        6);
    loss_sum += out.loss;
    correct_sum += out.correct;
    const std::vector<float> g = out.grad.to_host();
    grads.insert(grads.end(), g.begin(), g.end());
  }
  EXPECT_NEAR(loss_sum, whole.loss, 1e-12);
  EXPECT_EQ(correct_sum, whole.correct);
  EXPECT_EQ(grads, whole.grad.to_host());
}

TEST(CrossEntropy, GradientMatchesFiniteDifferences) {
  const Tensor logits = tt::random_tensor("logits", {5, 6}, 14, -3.0F, 3.0F);
  const IntView labels = make_labels({5, 0, 3, 3, 1});
  const LossOutput out = nn::softmax_cross_entropy(logits, labels, 8);
  EXPECT_EQ(fd_check_loss(
                logits, out, [&] { return nn::softmax_cross_entropy(logits, labels, 8).loss; },
                "cross-entropy"),
            0);
}

TEST(CrossEntropy, ErrorMessages) {
  const Tensor logits("logits", {4, 10});
  EXPECT_EQ(error_of([&] {
              nn::softmax_cross_entropy(logits, make_labels({1, 2, 3}), 4);
            }),
            "softmax_cross_entropy: 3 labels for logits of shape (4, 10), expected 4");
  EXPECT_EQ(error_of([&] {
              nn::softmax_cross_entropy(logits, make_labels({1, 10, 3, -1}), 4);
            }),
            "softmax_cross_entropy: sample 1 has label 10, expected a class in [0, 10)");
  EXPECT_EQ(error_of([&] {
              nn::softmax_cross_entropy(logits, make_labels({1, 2, -3, 12}), 4);
            }),
            "softmax_cross_entropy: sample 2 has label -3, expected a class in [0, 10)");
  EXPECT_EQ(error_of([&] {
              nn::softmax_cross_entropy(logits, make_labels({1, 2, 3, 4}), 3);
            }),
            "softmax_cross_entropy: global_batch = 3 is smaller than the local batch N = 4");
  EXPECT_EQ(error_of([] { nn::softmax_cross_entropy(Tensor("l", {10}), make_labels({1}), 4); }),
            "softmax_cross_entropy: logits have shape (10,), expected (N, classes) with N >= 1 "
            "and classes >= 1");
  EXPECT_EQ(error_of([] {
              nn::softmax_cross_entropy(Tensor("l", {2, 0}), make_labels({0, 0}), 4);
            }),
            "softmax_cross_entropy: logits have shape (2, 0), expected (N, classes) with N >= 1 "
            "and classes >= 1");
}

TEST(MeanSquaredError, HandComputed) {
  // Predictions (1, 2) against zeros, one element per sample: per-sample 1 and 4, mean 2.5;
  // grad 2 (p - t) / 2 = (1, 2).
  const Tensor p = Tensor::from_host("p", {2, 1}, {1.0F, 2.0F});
  const Tensor t("t", {2, 1});
  const LossOutput out = nn::mean_squared_error(p, t, 2);
  EXPECT_DOUBLE_EQ(out.loss, 2.5);
  EXPECT_EQ(out.correct, 0);
  EXPECT_EQ(out.grad.to_host(), (std::vector<float>{1.0F, 2.0F}));
  // Two elements per sample: per-sample means ((1 + 9) / 2, (0 + 4) / 2) = (5, 2), mean 3.5.
  const Tensor p2 = Tensor::from_host("p2", {2, 2}, {1.0F, -3.0F, 0.5F, 2.0F});
  const Tensor t2 = Tensor::from_host("t2", {2, 2}, {0.0F, 0.0F, 0.5F, 0.0F});
  EXPECT_DOUBLE_EQ(nn::mean_squared_error(p2, t2, 2).loss, 3.5);
}

TEST(MeanSquaredError, MatchesDoubleReference) {
  const Shape shape{4, 3, 5};
  const Tensor p = tt::random_tensor("p", shape, 15, -2.0F, 2.0F);
  const Tensor t = tt::random_tensor("t", shape, 16, -2.0F, 2.0F);
  const std::vector<float> pv = p.to_host();
  const std::vector<float> tv = t.to_host();
  for (Index global_batch : {4, 10}) {
    // With global_batch == N this is the mean over all elements (PyTorch MSELoss 'mean').
    double sum = 0.0;
    for (size_t i = 0; i < pv.size(); ++i) {
      const double d = static_cast<double>(pv[i]) - static_cast<double>(tv[i]);
      sum += d * d;
    }
    const double expected = sum / 15.0 / static_cast<double>(global_batch);
    const LossOutput out = nn::mean_squared_error(p, t, global_batch);
    EXPECT_NEAR(out.loss, expected, 1e-12 * expected);
    const std::vector<float> g = out.grad.to_host();
    ASSERT_EQ(out.grad.shape(), shape);
    for (size_t i = 0; i < g.size(); ++i) {
      const double d = static_cast<double>(pv[i]) - static_cast<double>(tv[i]);
      EXPECT_NEAR(static_cast<double>(g[i]), 2.0 * d / 15.0 / static_cast<double>(global_batch),
                  1e-7);
    }
  }
}

TEST(MeanSquaredError, GradientMatchesFiniteDifferences) {
  const Tensor p = tt::random_tensor("p", {3, 4}, 17);
  const Tensor t = tt::random_tensor("t", {3, 4}, 18);
  const LossOutput out = nn::mean_squared_error(p, t, 5);
  EXPECT_EQ(fd_check_loss(
                p, out, [&] { return nn::mean_squared_error(p, t, 5).loss; }, "mse"),
            0);
}

TEST(MeanSquaredError, ErrorMessages) {
  EXPECT_EQ(error_of([] {
              nn::mean_squared_error(Tensor("p", {4, 3}), Tensor("t", {4, 2}), 4);
            }),
            "mean_squared_error: prediction has shape (4, 3) but target has shape (4, 2)");
  EXPECT_EQ(error_of([] {
              nn::mean_squared_error(Tensor("p", {4, 3}), Tensor("t", {4, 3}), 2);
            }),
            "mean_squared_error: global_batch = 2 is smaller than the local batch N = 4");
  EXPECT_EQ(error_of([] { nn::mean_squared_error(Tensor("p", {}), Tensor("t", {}), 2); }),
            "mean_squared_error: prediction has shape (), expected (N, F...) with N >= 1 and at "
            "least one element per sample");
  EXPECT_EQ(error_of([] {
              nn::mean_squared_error(Tensor("p", {3, 0}), Tensor("t", {3, 0}), 3);
            }),
            "mean_squared_error: prediction has shape (3, 0), expected (N, F...) with N >= 1 and "
            "at least one element per sample");
}
