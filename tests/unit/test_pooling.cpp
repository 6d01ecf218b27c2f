// Pooling and flatten layers: hand-computed cases, forward and backward against naive loops
// written here (the backward as a true scatter-add, while the kernels gather), finite-difference
// gradient checks, and the exact messages for bad options and shapes.
#include "support/gradcheck.hpp"
#include "tessera/core/error.hpp"
#include "tessera/nn/flatten.hpp"
#include "tessera/nn/pooling.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

using namespace tessera;
using tessera::testing::expect_error;
using tessera::testing::expect_near;
using tessera::testing::gradcheck;
using tessera::testing::random_tensor;
using tessera::testing::random_values;

namespace {

// Values 0.05 · (k - n/2) for k a fixed permutation of 0..n-1. Neighbouring values are 0.05
// apart, so a gradient check perturbing one element by eps = 1e-2 never changes which element of
// a window is the maximum, and max pooling stays differentiable at every checked point.
Tensor shuffled_ramp(const std::string& label, const Shape& shape, std::uint32_t seed) {
  const Index n = numel(shape);
  std::vector<Index> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), Index{0});
  std::mt19937 gen(seed);  // mt19937's sequence is fixed by the standard; so is this shuffle
  for (Index i = n - 1; i > 0; --i) {
    std::swap(perm[static_cast<size_t>(i)],
              perm[static_cast<size_t>(static_cast<Index>(gen()) % (i + 1))]);
  }
  std::vector<float> v(static_cast<size_t>(n));
  for (Index i = 0; i < n; ++i) {
    v[static_cast<size_t>(i)] = 0.05F * static_cast<float>(perm[static_cast<size_t>(i)] - n / 2);
  }
  return Tensor::from_host(label, shape, v);
}

// --- a naive pooling over (N, C, D, H, W), written independently of the kernels ----------------

struct Naive {
  Index n = 1, c = 1;
  Index in[3] = {1, 1, 1};
  Index k[3] = {1, 1, 1};
  Index s[3] = {1, 1, 1};
  Index p[3] = {0, 0, 0};

  Index out(int a) const { return (in[a] + 2 * p[a] - k[a]) / s[a] + 1; }
  Index out_numel() const { return n * c * out(0) * out(1) * out(2); }
  Index in_index(Index plane, Index d, Index h, Index w) const {
    return ((plane * in[0] + d) * in[1] + h) * in[2] + w;
  }

  // Calls f(output index, input index) for every in-bounds input position of every window.
  template <class F>
  void for_each_window_element(F&& f) const {
    Index o = 0;
    for (Index plane = 0; plane < n * c; ++plane) {
      for (Index od = 0; od < out(0); ++od) {
        for (Index oh = 0; oh < out(1); ++oh) {
          for (Index ow = 0; ow < out(2); ++ow, ++o) {
            for (Index kd = 0; kd < k[0]; ++kd) {
              for (Index kh = 0; kh < k[1]; ++kh) {
                for (Index kw = 0; kw < k[2]; ++kw) {
                  const Index d = od * s[0] - p[0] + kd;
                  const Index h = oh * s[1] - p[1] + kh;
                  const Index w = ow * s[2] - p[2] + kw;
                  if (d >= 0 && d < in[0] && h >= 0 && h < in[1] && w >= 0 && w < in[2]) {
                    f(o, in_index(plane, d, h, w));
                  }
                }
              }
            }
          }
        }
      }
    }
  }

  // Max pooling: y and the input index of each window's (first) maximum.
  std::pair<std::vector<float>, std::vector<Index>> max_forward(const std::vector<float>& x) const {
    std::vector<float> y(static_cast<size_t>(out_numel()), 0.0F);
    std::vector<Index> arg(static_cast<size_t>(out_numel()), -1);
    for_each_window_element([&](Index o, Index i) {
      const auto uo = static_cast<size_t>(o);
      if (arg[uo] < 0 || x[static_cast<size_t>(i)] > y[uo]) {
        y[uo] = x[static_cast<size_t>(i)];
        arg[uo] = i;
      }
    });
    return {y, arg};
  }
  // Scatter-add of dy into the argmax positions.
  std::vector<float> max_backward(const std::vector<float>& dy,
                                  const std::vector<Index>& arg) const {
    std::vector<float> dx(static_cast<size_t>(n * c * in[0] * in[1] * in[2]), 0.0F);
    for (size_t o = 0; o < dy.size(); ++o) {
      dx[static_cast<size_t>(arg[o])] += dy[o];
    }
    return dx;
  }
  // Average pooling with padding counted as zeros (count_include_pad = true).
  std::vector<float> avg_forward(const std::vector<float>& x) const {
    std::vector<double> acc(static_cast<size_t>(out_numel()), 0.0);
    for_each_window_element([&](Index o, Index i) {
      acc[static_cast<size_t>(o)] += static_cast<double>(x[static_cast<size_t>(i)]);
    });
    std::vector<float> y;
    for (double a : acc) {
      y.push_back(static_cast<float>(a / static_cast<double>(k[0] * k[1] * k[2])));
    }
    return y;
  }
  std::vector<float> avg_backward(const std::vector<float>& dy) const {
    std::vector<double> acc(static_cast<size_t>(n * c * in[0] * in[1] * in[2]), 0.0);
    for_each_window_element([&](Index o, Index i) {
      acc[static_cast<size_t>(i)] +=
          static_cast<double>(dy[static_cast<size_t>(o)]) / static_cast<double>(k[0] * k[1] * k[2]);
    });
    return std::vector<float>(acc.begin(), acc.end());
  }
};

struct PoolCase {
  bool max;
  int dims;
  Shape sample;  // (C, spatial...)
  nn::PoolOptions options;
};

std::unique_ptr<nn::PoolNd> make_pool(const PoolCase& pc, const std::string& name) {
  if (pc.dims == 2) {
    if (pc.max) {
      return std::make_unique<nn::MaxPool2d>(name, pc.sample, pc.options);
    }
    return std::make_unique<nn::AvgPool2d>(name, pc.sample, pc.options);
  }
  if (pc.max) {
    return std::make_unique<nn::MaxPool3d>(name, pc.sample, pc.options);
  }
  return std::make_unique<nn::AvgPool3d>(name, pc.sample, pc.options);
}

// The naive description of `pc` for a batch of n.
Naive naive_of(const PoolCase& pc, Index n) {
  Naive nv;
  nv.n = n;
  nv.c = pc.sample[0];
  const int first = 3 - pc.dims;  // 2-D: depth stays 1
  auto pick = [&](const std::vector<Index>& v, int i, Index fallback) {
    if (v.empty()) {
      return fallback;
    }
    return v.size() == 1 ? v[0] : v[static_cast<size_t>(i)];
  };
  for (int i = 0; i < pc.dims; ++i) {
    nv.in[first + i] = pc.sample[static_cast<size_t>(i + 1)];
    nv.k[first + i] = pick(pc.options.kernel, i, 0);
    nv.s[first + i] = pick(pc.options.stride, i, nv.k[first + i]);
    nv.p[first + i] = pick(pc.options.pad, i, 0);
  }
  return nv;
}

const std::vector<PoolCase>& pool_cases() {
  static const std::vector<PoolCase> cases = {
      {true, 2, {2, 6, 7}, {{2}, {}, {}}},             // non-overlapping, odd width drops a column
      {true, 2, {3, 7, 6}, {{3}, {2}, {1}}},           // overlapping, padded
      {true, 2, {1, 5, 8}, {{2, 3}, {1, 2}, {1, 0}}},  // per-dim options
      {true, 3, {2, 4, 5, 6}, {{2}, {}, {}}},
      {true, 3, {2, 5, 4, 5}, {{3, 2, 3}, {2, 1, 2}, {1, 0, 1}}},
      {false, 2, {2, 6, 7}, {{2}, {}, {}}},
      {false, 2, {3, 7, 6}, {{3}, {2}, {1}}},
      {false, 2, {1, 5, 8}, {{2, 3}, {1, 2}, {1, 0}}},
      {false, 3, {2, 4, 5, 6}, {{2}, {}, {}}},
      {false, 3, {2, 5, 4, 5}, {{3, 2, 3}, {2, 1, 2}, {1, 0, 1}}},
  };
  return cases;
}

std::string describe(const PoolCase& pc) {
  return std::string(pc.max ? "max" : "avg") + std::to_string(pc.dims) + "d " +
         to_string(pc.sample);
}

}  // namespace

// --- hand-computed cases -----------------------------------------------------------------------

// One 4x4 plane:        2x2 windows, stride 2:
//   1 2 | 5 3           max: 4 5     avg: 7/4  11/4
//   4 0 | 1 2                9 6          27/4 11/4
//   ----+----
//   7 8 | 1 0
//   3 9 | 6 4
const std::vector<float> kPlane4x4 = {1, 2, 5, 3, 4, 0, 1, 2, 7, 8, 1, 0, 3, 9, 6, 4};

TEST(MaxPool2d, HandExample4x4) {
  nn::MaxPool2d pool("pool1", {1, 4, 4}, {{2}, {}, {}});
  EXPECT_STREQ(pool.kind(), "maxpool2d");
  EXPECT_EQ(pool.output_shape({1, 4, 4}), (Shape{1, 2, 2}));
  const Tensor x = Tensor::from_host("x", {1, 1, 4, 4}, kPlane4x4);
  nn::ForwardResult fwd = pool.forward(x, {});
  EXPECT_EQ(fwd.output.shape(), (Shape{1, 1, 2, 2}));
  EXPECT_EQ(fwd.output.to_host(), (std::vector<float>{4, 5, 9, 6}));
  // The gradient goes to the maxima: 4 at (1,0), 5 at (0,2), 9 at (3,1), 6 at (3,2).
  const Tensor dy = Tensor::from_host("dy", {1, 1, 2, 2}, {10, 20, 30, 40});
  const Tensor dx = pool.backward(dy, std::move(fwd.ctx));
  EXPECT_EQ(dx.shape(), x.shape());
  EXPECT_EQ(dx.to_host(), (std::vector<float>{0, 0, 20, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 30, 40, 0}));
}

TEST(MaxPool2d, OverlappingWindowsSumTheirGradients) {
  // 1x3 row, kernel (1, 2), stride 1: windows {1, 5} and {5, 2}; 5 is the maximum of both.
  nn::MaxPool2d pool("pool", {1, 1, 3}, {{1, 2}, {1}, {}});
  const Tensor x = Tensor::from_host("x", {1, 1, 1, 3}, {1, 5, 2});
  nn::ForwardResult fwd = pool.forward(x, {});
  EXPECT_EQ(fwd.output.to_host(), (std::vector<float>{5, 5}));
  const Tensor dx =
      pool.backward(Tensor::from_host("dy", {1, 1, 1, 2}, {1.5F, 2.25F}), std::move(fwd.ctx));
  EXPECT_EQ(dx.to_host(), (std::vector<float>{0, 3.75F, 0}));
}

TEST(MaxPool2d, PaddingIsIgnoredNotZero) {
  // All-negative 2x2 input, kernel 2, stride 2, pad 1: every window holds one real element and
  // three padded ones; the maximum is the real (negative) element, not a padded zero.
  nn::MaxPool2d pool("pool", {1, 2, 2}, {{2}, {}, {1}});
  const Tensor x = Tensor::from_host("x", {1, 1, 2, 2}, {-1, -2, -3, -4});
  EXPECT_EQ(pool.forward(x, {}).output.to_host(), (std::vector<float>{-1, -2, -3, -4}));
}

TEST(AvgPool2d, HandExample4x4) {
  nn::AvgPool2d pool("pool1", {1, 4, 4}, {{2}, {}, {}});
  EXPECT_STREQ(pool.kind(), "avgpool2d");
  const Tensor x = Tensor::from_host("x", {1, 1, 4, 4}, kPlane4x4);
  nn::ForwardResult fwd = pool.forward(x, {});
  EXPECT_EQ(fwd.output.to_host(), (std::vector<float>{1.75F, 2.75F, 6.75F, 2.75F}));
  const Tensor dx =
      pool.backward(Tensor::from_host("dy", {1, 1, 2, 2}, {4, 8, 12, 16}), std::move(fwd.ctx));
  EXPECT_EQ(dx.to_host(), (std::vector<float>{1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4}));
}

TEST(AvgPool2d, PaddingCountsAsZero) {
  // 3x3 of ones, kernel 2, stride 2, pad 1 -> 2x2 windows holding 1, 2, 2 and 4 real ones, each
  // divided by 4 (count_include_pad = true).
  nn::AvgPool2d pool("pool", {1, 3, 3}, {{2}, {2}, {1}});
  const Tensor x = Tensor::from_host("x", {1, 1, 3, 3}, std::vector<float>(9, 1.0F));
  EXPECT_EQ(pool.forward(x, {}).output.to_host(), (std::vector<float>{0.25F, 0.5F, 0.5F, 1.0F}));
}

TEST(Pooling, KindsAndOptionDefaults) {
  nn::MaxPool3d max3("m3", {2, 4, 6, 8}, {{2}, {}, {}});
  EXPECT_STREQ(max3.kind(), "maxpool3d");
  EXPECT_EQ(max3.kernel(), (std::vector<Index>{2, 2, 2}));
  EXPECT_EQ(max3.stride(), (std::vector<Index>{2, 2, 2}));  // empty stride = kernel
  EXPECT_EQ(max3.pad(), (std::vector<Index>{0, 0, 0}));     // empty pad = 0
  EXPECT_EQ(max3.output_shape({2, 4, 6, 8}), (Shape{2, 2, 3, 4}));
  nn::AvgPool3d avg3("a3", {1, 5, 5, 5}, {{3, 3, 1}, {1, 2, 1}, {1, 0, 0}});
  EXPECT_STREQ(avg3.kind(), "avgpool3d");
  EXPECT_EQ(avg3.output_shape({1, 5, 5, 5}), (Shape{1, 5, 2, 5}));
  EXPECT_TRUE(max3.parameters().empty());
  EXPECT_TRUE(avg3.buffers().empty());
}

// --- against the naive loops -------------------------------------------------------------------

TEST(Pooling, ForwardAndBackwardMatchNaiveLoops) {
  std::uint64_t seed = 1;
  for (const PoolCase& pc : pool_cases()) {
    SCOPED_TRACE(describe(pc));
    const Index n = 2;
    auto pool = make_pool(pc, "pool");
    const Naive nv = naive_of(pc, n);
    const Shape in_shape = nn::batch_shape(n, pc.sample);
    const Tensor x = random_tensor("x", in_shape, seed++);  // distinct values: a unique argmax
    nn::ForwardResult fwd = pool->forward(x, {});
    ASSERT_EQ(fwd.output.numel(), nv.out_numel());
    ASSERT_EQ(fwd.output.shape(), nn::batch_shape(n, pool->output_shape(pc.sample)));
    const std::vector<float> dy = random_values(nv.out_numel(), seed++);
    const Tensor dx =
        pool->backward(Tensor::from_host("dy", fwd.output.shape(), dy), std::move(fwd.ctx));
    if (pc.max) {
      const auto [y, arg] = nv.max_forward(x.to_host());
      EXPECT_EQ(fwd.output.to_host(), y);
      expect_near(dx.to_host(), nv.max_backward(dy, arg), 1e-6, "dx");
    } else {
      expect_near(fwd.output.to_host(), nv.avg_forward(x.to_host()), 1e-6, "y");
      expect_near(dx.to_host(), nv.avg_backward(dy), 1e-6, "dx");
    }
  }
}

TEST(Pooling, GradientCheck) {
  std::uint32_t seed = 11;
  for (const PoolCase& pc : pool_cases()) {
    SCOPED_TRACE(describe(pc));
    auto pool = make_pool(pc, "pool");
    const Shape in_shape = nn::batch_shape(2, pc.sample);
    // Max pooling: a shuffled ramp with spacing 0.05 against eps = 1e-2 (the gradcheck default),
    // so no perturbation changes a window's argmax. Average pooling is linear: any input does.
    const Tensor x =
        pc.max ? shuffled_ramp("x", in_shape, seed++) : random_tensor("x", in_shape, seed++);
    EXPECT_EQ(gradcheck(*pool, x), 0);
  }
}

// --- global average pooling --------------------------------------------------------------------

TEST(GlobalAvgPool, ForwardBackwardAndGradcheck) {
  for (const Shape& sample : {Shape{3, 4, 5}, Shape{2, 3, 2, 4}}) {
    SCOPED_TRACE(to_string(sample));
    nn::GlobalAvgPool gap("gap", sample);
    EXPECT_STREQ(gap.kind(), "global_avgpool");
    EXPECT_EQ(gap.output_shape(sample), (Shape{sample[0]}));
    const Index n = 2;
    const Index c = sample[0];
    const Index plane = numel(sample) / c;
    const Tensor x = random_tensor("x", nn::batch_shape(n, sample), 5);
    nn::ForwardResult fwd = gap.forward(x, {});
    EXPECT_EQ(fwd.output.shape(), (Shape{n, c}));
    const std::vector<float> xv = x.to_host();
    std::vector<float> expected;
    for (Index p = 0; p < n * c; ++p) {
      double s = 0.0;
      for (Index j = 0; j < plane; ++j) {
        s += static_cast<double>(xv[static_cast<size_t>(p * plane + j)]);
      }
      expected.push_back(static_cast<float>(s / static_cast<double>(plane)));
    }
    expect_near(fwd.output.to_host(), expected, 1e-6, "y");
    const std::vector<float> dy = random_values(n * c, 6);
    const Tensor dx = gap.backward(Tensor::from_host("dy", {n, c}, dy), std::move(fwd.ctx));
    std::vector<float> expected_dx;
    for (Index i = 0; i < n * c * plane; ++i) {
      expected_dx.push_back(dy[static_cast<size_t>(i / plane)] / static_cast<float>(plane));
    }
    expect_near(dx.to_host(), expected_dx, 1e-7, "dx");
    EXPECT_EQ(gradcheck(gap, x), 0);
  }
}

// --- flatten -----------------------------------------------------------------------------------

TEST(Flatten, ReshapesWithoutCopy) {
  nn::Flatten flat("flat", {2, 3, 4});
  EXPECT_STREQ(flat.kind(), "flatten");
  EXPECT_EQ(flat.output_shape({2, 3, 4}), (Shape{24}));
  const Tensor x = random_tensor("x", {5, 2, 3, 4}, 8);
  nn::ForwardResult fwd = flat.forward(x, {});
  EXPECT_EQ(fwd.output.shape(), (Shape{5, 24}));
  EXPECT_EQ(fwd.output.data(), x.data());  // shares storage
  EXPECT_EQ(fwd.output.to_host(), x.to_host());
  const Tensor dy = random_tensor("dy", {5, 24}, 9);
  const Tensor dx = flat.backward(dy, std::move(fwd.ctx));
  EXPECT_EQ(dx.shape(), (Shape{5, 2, 3, 4}));
  EXPECT_EQ(dx.data(), dy.data());
  EXPECT_EQ(gradcheck(flat, x), 0);
}

// --- errors ------------------------------------------------------------------------------------

TEST(Pooling, BadOptionsThrowNamingLayerOptionAndShapes) {
  expect_error(
      [] {
        nn::MaxPool2d("pool1", {1, 8, 8}, {{0}, {}, {}});
      },
      "maxpool2d 'pool1': option kernel = [0] must be >= 1 in every spatial dim");
  expect_error(
      [] {
        nn::MaxPool2d("pool1", {1, 8, 8}, {{2, 2, 2}, {}, {}});
      },
      "maxpool2d 'pool1': option kernel = [2, 2, 2] must hold 1 or 2 values (one per "
      "spatial dim)");
  expect_error(
      [] {
        nn::AvgPool3d("p", {1, 8, 8, 8}, {});
      },
      "avgpool3d 'p': option kernel = [] must hold 1 or 3 values (one per spatial dim)");
  expect_error(
      [] {
        nn::AvgPool2d("pool2", {1, 8, 8}, {{2}, {2, 0}, {}});
      },
      "avgpool2d 'pool2': option stride = [2, 0] must be >= 1 in every spatial dim");
  expect_error(
      [] {
        nn::MaxPool2d("pool1", {1, 8, 8}, {{2}, {}, {1, 2}});
      },
      "maxpool2d 'pool1': option pad = [1, 2] must be >= 0 and < kernel = [2] in every "
      "spatial dim");
  expect_error(
      [] {
        nn::MaxPool3d("m", {1, 8, 8, 8}, {{3}, {}, {-1}});
      },
      "maxpool3d 'm': option pad = [-1] must be >= 0 and < kernel = [3] in every spatial "
      "dim");
  expect_error(
      [] {
        nn::AvgPool3d("p3", {2, 1, 4, 4}, {{2}, {}, {}});
      },
      "avgpool3d 'p3': input sample shape (2, 1, 4, 4) with kernel = [2, 2, 2], stride = "
      "[2, 2, 2], pad = [0, 0, 0] gives output (2, 0, 2, 2); every output extent must "
      "be >= 1");
}

TEST(Pooling, WrongShapesThrowNamingLayerAndShapes) {
  expect_error(
      [] {
        nn::MaxPool2d("pool1", {28, 28}, {{2}, {}, {}});
      },
      "maxpool2d 'pool1': input sample shape (28, 28) must be (C, H, W) with every "
      "extent >= 1");
  expect_error(
      [] {
        nn::AvgPool3d("p", {1, 8, 8}, {{2}, {}, {}});
      },
      "avgpool3d 'p': input sample shape (1, 8, 8) must be (C, D, H, W) with every "
      "extent >= 1");
  nn::MaxPool2d pool("pool1", {1, 8, 8}, {{2}, {}, {}});
  expect_error(
      [&] {
        (void)pool.forward(Tensor("x", {2, 3, 8, 8}), {});
      },
      "maxpool2d 'pool1': input has shape (2, 3, 8, 8), expected (N, 1, 8, 8) with "
      "N >= 1");
  nn::ForwardResult fwd = pool.forward(Tensor("x", {2, 1, 8, 8}), {});
  expect_error(
      [&] {
        (void)pool.backward(Tensor("dy", {2, 1, 3, 4}), std::move(fwd.ctx));
      },
      "maxpool2d 'pool1': output grad has shape (2, 1, 3, 4), expected (N, 1, 4, 4) "
      "with N >= 1");
  expect_error(
      [&] {
        (void)pool.backward(Tensor("dy", {3, 1, 4, 4}), std::move(fwd.ctx));
      },
      "maxpool2d 'pool1': output grad of shape (3, 1, 4, 4) does not match the context "
      "of the forward pass (input (2, 1, 8, 8))");
  expect_error([] { nn::GlobalAvgPool("gap", {16}); },
               "global_avgpool 'gap': input sample shape (16,) must be (C, H, W) or (C, D, H, W) "
               "with every extent >= 1");
  nn::GlobalAvgPool gap("gap", {4, 2, 2});
  expect_error(
      [&] {
        (void)gap.forward(Tensor("x", {1, 4, 2, 3}), {});
      },
      "global_avgpool 'gap': input has shape (1, 4, 2, 3), expected (N, 4, 2, 2) with "
      "N >= 1");
  expect_error([] { nn::Flatten("flat", {}); },
               "flatten 'flat': input sample shape () must have at least one dimension");
  nn::Flatten flat("flat", {2, 3});
  expect_error(
      [&] {
        (void)flat.forward(Tensor("x", {4, 3, 2}), {});
      },
      "flatten 'flat': input has shape (4, 3, 2), expected (N, 2, 3) with N >= 1");
}
