// kernels/reduce: the whole-tensor reductions against double sums computed here, the non-finite
// search at every kind of non-finite value and position; and the Tensor's host access
// (host_view, host_staging + store, at), which a CUDA build routes through host copies.
#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/kernels/reduce.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

using namespace tessera;

namespace {
std::vector<float> ramp(Index n) {
  std::vector<float> v(static_cast<size_t>(n));
  for (Index i = 0; i < n; ++i) {
    v[static_cast<size_t>(i)] = 0.25F * static_cast<float>(i % 17) - 1.5F;
  }
  return v;
}
}  // namespace

TEST(Reduce, SumsAgainstDoubleLoops) {
  const std::vector<float> a = ramp(1001);
  std::vector<float> b = ramp(1001);
  std::reverse(b.begin(), b.end());
  double sum = 0.0, dot = 0.0, squares = 0.0, largest = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    sum += double(a[i]);
    dot += double(a[i]) * double(b[i]);
    squares += double(a[i]) * double(a[i]);
    largest = std::max(largest, std::fabs(double(a[i])));
  }
  const Tensor x = Tensor::from_host("x", {7, 143}, a);
  const Tensor y = Tensor::from_host("y", {1001}, b);
  EXPECT_DOUBLE_EQ(kernels::sum(x), sum);
  EXPECT_DOUBLE_EQ(kernels::dot(x, y), dot);
  EXPECT_DOUBLE_EQ(kernels::sum_squares(x), squares);
  EXPECT_DOUBLE_EQ(kernels::max_abs(x), largest);
  EXPECT_EQ(kernels::max_abs(Tensor("empty", {0})), 0.0);
}

// Every kind of non-finite value (NaN, +Inf, -Inf) at the first, a middle and the last position,
// with a second one after it (the first is reported); finite extremes are not.
TEST(Reduce, FirstNonFiniteFindsEveryKindAtEveryPosition) {
  const Index n = 4099;
  const float kinds[] = {std::numeric_limits<float>::quiet_NaN(),
                         std::numeric_limits<float>::infinity(),
                         -std::numeric_limits<float>::infinity()};
  std::vector<float> values = ramp(n);
  values[10] = std::numeric_limits<float>::max();
  values[11] = -std::numeric_limits<float>::max();
  values[12] = std::numeric_limits<float>::denorm_min();
  values[13] = -0.0F;
  EXPECT_EQ(kernels::first_nonfinite(Tensor::from_host("finite", {n}, values)), -1);
  for (const float bad : kinds) {
    for (const Index at : {Index{0}, Index{2048}, n - 1}) {
      std::vector<float> v = values;
      v[static_cast<size_t>(at)] = bad;
      if (at + 7 < n) {
        v[static_cast<size_t>(at + 7)] = std::numeric_limits<float>::quiet_NaN();
      }
      const Tensor t = Tensor::from_host("t", {n}, v);
      EXPECT_EQ(kernels::first_nonfinite(t), at) << bad << " at " << at;
      const float seen = t.at(at);
      EXPECT_TRUE(std::isnan(bad) ? std::isnan(seen) : seen == bad);
    }
  }
  EXPECT_EQ(kernels::first_nonfinite(Tensor("empty", {0})), -1);
}

TEST(Tensor, HostAccessReadsWritesAndStores) {
  const std::vector<float> values = ramp(60);
  const Tensor t = Tensor::from_host("t", {3, 4, 5}, values);
  const Tensor::HostView h = t.host_view();
  ASSERT_EQ(static_cast<Index>(h.extent(0)), t.numel());
  for (Index i = 0; i < t.numel(); ++i) {
    EXPECT_EQ(h(i), values[static_cast<size_t>(i)]);
    EXPECT_EQ(t.at(i), values[static_cast<size_t>(i)]);
  }
  // An alias into an arena: staging and storing reach exactly its elements.
  const Tensor arena("arena", {100});
  const Tensor part = Tensor::alias("part", arena.view(), 30, {2, 5});
  const Tensor::HostView w = part.host_staging();
  for (Index i = 0; i < part.numel(); ++i) {
    w(i) = 1.0F + static_cast<float>(i);
  }
  part.store(w);
  const std::vector<float> all = arena.to_host();
  for (Index i = 0; i < 100; ++i) {
    const float want = i >= 30 && i < 40 ? 1.0F + static_cast<float>(i - 30) : 0.0F;
    EXPECT_EQ(all[static_cast<size_t>(i)], want) << i;
  }
  try {
    (void)t.at(60);
    FAIL() << "an element past the end must throw";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("tensor 't' of shape (3, 4, 5) has no element 60 [", 0),
              0U)
        << e.what();
  }
  try {
    part.store(h);
    FAIL() << "storing 60 values into 10 must throw";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(
                  "tensor 'part' of shape (2, 5): 60 host values stored, 10 expected [", 0),
              0U)
        << e.what();
  }
}
