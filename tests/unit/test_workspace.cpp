// Storage reuse between steps: Tensor::uninitialized, nn::BufferPool (reuse only of storage no one
// else holds, growth, the bound on held allocations), kernels::broadcast_bias and the dense
// bias_grad blocks against loops written here, and Linear/Activation layers whose outputs and input
// gradients come from a pool: repeated calls match loops written here, and a tensor the caller
// keeps is never overwritten by a later call.
#include "support/gradcheck.hpp"
#include "tessera/core/error.hpp"
#include "tessera/kernels/bias.hpp"
#include "tessera/nn/activation.hpp"
#include "tessera/nn/linear.hpp"
#include "tessera/nn/sequential.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

using namespace tessera;
namespace tt = tessera::testing;

namespace {

// The message before TESSERA_CHECK's " [file:line: condition]" suffix.
std::string check_message(const std::function<void()>& f) {
  const std::string m = tt::error_of(f);
  return m.substr(0, m.find(" ["));
}

// y = x · Wᵀ + b in double; x (n, in), w (out, in), b (out,).
std::vector<float> linear_ref(const std::vector<float>& x, const std::vector<float>& w,
                              const std::vector<float>& b, Index n, Index in, Index out) {
  std::vector<float> y(static_cast<size_t>(n * out));
  for (Index i = 0; i < n; ++i) {
    for (Index o = 0; o < out; ++o) {
      double s = static_cast<double>(b[static_cast<size_t>(o)]);
      for (Index k = 0; k < in; ++k) {
        s += static_cast<double>(x[static_cast<size_t>(i * in + k)]) *
             static_cast<double>(w[static_cast<size_t>(o * in + k)]);
      }
      y[static_cast<size_t>(i * out + o)] = static_cast<float>(s);
    }
  }
  return y;
}

// dx = dy · W in double; dy (n, out), w (out, in).
std::vector<float> linear_dx_ref(const std::vector<float>& dy, const std::vector<float>& w, Index n,
                                 Index in, Index out) {
  std::vector<float> dx(static_cast<size_t>(n * in));
  for (Index i = 0; i < n; ++i) {
    for (Index k = 0; k < in; ++k) {
      double s = 0.0;
      for (Index o = 0; o < out; ++o) {
        s += static_cast<double>(dy[static_cast<size_t>(i * out + o)]) *
             static_cast<double>(w[static_cast<size_t>(o * in + k)]);
      }
      dx[static_cast<size_t>(i * in + k)] = static_cast<float>(s);
    }
  }
  return dx;
}

}  // namespace

TEST(Tensor, UninitializedHasShapeAndHoldsWrites) {
  const Tensor t = Tensor::uninitialized("u", {3, 4});
  EXPECT_TRUE(t.defined());
  EXPECT_EQ(t.label(), "u");
  EXPECT_EQ(t.shape(), (Shape{3, 4}));
  EXPECT_EQ(t.numel(), 12);
  EXPECT_EQ(t.dtype(), DType::f32);
  EXPECT_EQ(t.view().extent(0), 12U);
  std::vector<float> v(12);
  for (size_t i = 0; i < v.size(); ++i) {
    v[i] = static_cast<float>(i) - 5.5F;
  }
  t.copy_from_host(v);
  EXPECT_EQ(t.to_host(), v);
  EXPECT_EQ(Tensor::uninitialized("empty", {0, 7}).numel(), 0);
  EXPECT_EQ(check_message([] {
              Tensor::uninitialized("bad", {2, -1});
            }),
            "tensor 'bad': negative extent in shape (2, -1)");
}

TEST(Tensor, FromHostAndCloneCopyEveryElement) {
  // Both allocate without zero-filling and then copy: every element must be the source's.
  const std::vector<float> v = tt::random_values(1000, 3);
  const Tensor a = Tensor::from_host("a", {10, 100}, v);
  EXPECT_EQ(a.to_host(), v);
  const Tensor b = a.clone("b");
  EXPECT_EQ(b.label(), "b");
  EXPECT_EQ(b.shape(), (Shape{10, 100}));
  EXPECT_EQ(b.to_host(), v);
  EXPECT_NE(a.data(), b.data());
}

TEST(Tensor, FillWritesExactlyItsOwnElements) {
  const Tensor storage = Tensor::from_host("s", {6}, {1, 2, 3, 4, 5, 6});
  const Tensor middle = Tensor::alias("m", storage.view(), 2, {3});  // elements [2, 5)
  middle.zero();
  EXPECT_EQ(storage.to_host(), (std::vector<float>{1, 2, 0, 0, 0, 6}));
  middle.fill(-0.0F);  // negative zero is not all zero bits
  for (float v : middle.to_host()) {
    EXPECT_EQ(v, 0.0F);
    EXPECT_TRUE(std::signbit(v));
  }
  storage.fill(2.5F);
  EXPECT_EQ(storage.to_host(), std::vector<float>(6, 2.5F));
  storage.zero();
  EXPECT_EQ(storage.to_host(), std::vector<float>(6, 0.0F));
  Tensor().zero();  // undefined: nothing to do
}

TEST(BufferPool, ReusesStorageOnlyWhenNothingElseHoldsIt) {
  nn::BufferPool pool;
  EXPECT_EQ(pool.held(), 0U);
  const float* first = nullptr;
  {
    const Tensor a = pool.get("a", {4, 8});
    EXPECT_EQ(a.shape(), (Shape{4, 8}));
    EXPECT_EQ(a.numel(), 32);
    EXPECT_EQ(a.label(), "a");
    first = a.data();
    EXPECT_EQ(pool.held(), 1U);
    // `a` is alive: a second request gets other storage.
    const Tensor b = pool.get("b", {4, 8});
    EXPECT_NE(b.data(), a.data());
    EXPECT_EQ(pool.held(), 2U);
  }
  // Both released: the first held allocation is handed out again, no new one.
  const Tensor c = pool.get("c", {4, 8});
  EXPECT_EQ(c.data(), first);
  EXPECT_EQ(pool.held(), 2U);
}

TEST(BufferPool, CopiesReshapesAndContextsKeepStorageBusy) {
  nn::BufferPool pool;
  Tensor kept_copy;
  nn::Context ctx;
  const float* storage = nullptr;
  {
    const Tensor a = pool.get("a", {2, 3});
    storage = a.data();
    a.copy_from_host({1, 2, 3, 4, 5, 6});
    kept_copy = a.reshaped({6});  // shares a's storage
    ctx.saved.push_back(a);
  }
  const Tensor b = pool.get("b", {2, 3});
  EXPECT_NE(b.data(), storage);
  b.fill(-1.0F);
  EXPECT_EQ(kept_copy.to_host(), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  kept_copy = Tensor();
  const Tensor c = pool.get("c", {2, 3});
  EXPECT_NE(c.data(), storage);  // still in the context
  ctx = nn::Context();
  {
    const Tensor d = pool.get("d", {3, 2});  // b and c alive: the first allocation is free again
    EXPECT_EQ(d.data(), storage);
  }
}

TEST(BufferPool, SmallerShapesReuseLargerStorageAndLargerOnesReplaceIt) {
  nn::BufferPool pool;
  const float* big = nullptr;
  {
    const Tensor a = pool.get("a", {256, 10});  // an evaluation batch
    big = a.data();
  }
  {
    const Tensor b = pool.get("b", {128, 10});  // a training batch fits in it
    EXPECT_EQ(b.data(), big);
    EXPECT_EQ(b.numel(), 1280);
    EXPECT_EQ(b.view().extent(0), 1280U);
  }
  {
    const Tensor c = pool.get("c", {512, 10});  // too large: replaces the free allocation
    EXPECT_EQ(c.numel(), 5120);
    EXPECT_EQ(pool.held(), 1U);
  }
  EXPECT_EQ(pool.get("d", {0, 10}).numel(), 0);
  EXPECT_EQ(check_message([&] {
              pool.get("bad", {-2, 10});
            }),
            "tensor 'bad': negative extent in shape (-2, 10)");
}

TEST(BufferPool, HoldsAtMostKMaxHeld) {
  nn::BufferPool pool;
  std::vector<Tensor> alive;
  for (std::size_t i = 0; i < nn::BufferPool::kMaxHeld + 3; ++i) {
    alive.push_back(pool.get("t", {5}));
    alive.back().fill(static_cast<float>(i));
  }
  EXPECT_EQ(pool.held(), nn::BufferPool::kMaxHeld);
  for (std::size_t i = 0; i < alive.size(); ++i) {  // no two share storage
    EXPECT_EQ(alive[i].to_host(), std::vector<float>(5, static_cast<float>(i)));
  }
  alive.clear();
  pool.clear();
  EXPECT_EQ(pool.held(), 0U);
}

TEST(Bias, BroadcastBiasOverwritesEveryElement) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (const Shape& shape : {Shape{3, 5}, Shape{2, 3, 4, 5}, Shape{1, 7}, Shape{2, 4, 1, 2, 3}}) {
    const Tensor y = Tensor::uninitialized("y", shape);
    y.fill(nan);  // whatever was there must not leak through
    const Index c = shape[1];
    const Tensor b = tt::random_tensor("b", {c}, 8);
    kernels::broadcast_bias(y, b);
    const std::vector<float> bv = b.to_host();
    const Index s = y.numel() / (shape[0] * c);
    std::vector<float> expected(static_cast<size_t>(y.numel()));
    for (Index i = 0; i < y.numel(); ++i) {
      expected[static_cast<size_t>(i)] = bv[static_cast<size_t>((i / s) % c)];
    }
    EXPECT_EQ(y.to_host(), expected) << to_string(shape);
  }
  const Tensor y("y", {2, 3, 4});
  EXPECT_EQ(check_message([&] { kernels::broadcast_bias(y, Tensor("b", {4})); }),
            "broadcast_bias: bias 'b' has shape (4,), expected (3,) for output of shape (2, 3, 4)");
  EXPECT_EQ(check_message([&] { kernels::broadcast_bias(Tensor("v", {3}), Tensor("b", {3})); }),
            "broadcast_bias: output 'v' has shape (3,), expected (N, C, ...)");
}

TEST(Bias, DenseGradBlocksAndSampleRanges) {
  // Feature counts below, at and across the kernel's 16-column blocks.
  for (Index f : {1, 15, 16, 17, 33, 256}) {
    const Index n = 9;
    const Tensor dy = tt::random_tensor("dy", {n, f}, 11);
    const Tensor db = tt::random_tensor("db", {f}, 12);
    const std::vector<float> g = dy.to_host();
    const std::vector<float> db0 = db.to_host();
    kernels::bias_grad(dy, db, 2, 5);  // samples [2, 7)
    const std::vector<float> got = db.to_host();
    for (Index k = 0; k < f; ++k) {
      double e = static_cast<double>(db0[static_cast<size_t>(k)]);
      for (Index i = 2; i < 7; ++i) {
        e += static_cast<double>(g[static_cast<size_t>(i * f + k)]);
      }
      EXPECT_NEAR(static_cast<double>(got[static_cast<size_t>(k)]), e, 1e-6)
          << "features " << f << " column " << k;
    }
  }
}

TEST(Linear, PooledOutputsMatchLoopsAndKeptTensorsSurvive) {
  const Index in = 13;
  const Index out = 21;
  nn::Linear fc("fc", {in}, nn::LinearOptions{out});
  fc.initialize(3);
  const std::vector<float> w = fc.weight().value.to_host();
  const std::vector<float> b = fc.bias().value.to_host();
  // Steps with varying batch sizes (an evaluation batch, training batches, a short last batch).
  std::vector<Tensor> kept_outputs;
  std::vector<std::vector<float>> kept_values;
  Index seed = 20;
  for (Index n : {8, 5, 5, 8, 3, 5}) {
    const Tensor x = tt::random_tensor("x", {n, in}, static_cast<std::uint64_t>(++seed));
    const Tensor dy = tt::random_tensor("dy", {n, out}, static_cast<std::uint64_t>(++seed));
    nn::ForwardResult r = fc.forward(x, {});
    const std::vector<float> y_ref = linear_ref(x.to_host(), w, b, n, in, out);
    tt::expect_near(r.output.to_host(), y_ref, 1e-5, "y");
    const Tensor dx = fc.backward(dy, std::move(r.ctx));
    tt::expect_near(dx.to_host(), linear_dx_ref(dy.to_host(), w, n, in, out), 1e-5, "dx");
    if (n == 5) {  // the caller keeps some outputs; later calls must not write into them
      kept_outputs.push_back(r.output);
      kept_values.push_back(y_ref);
      kept_outputs.push_back(dx);
      kept_values.push_back(dx.to_host());
    }
  }
  for (size_t i = 0; i < kept_outputs.size(); ++i) {
    tt::expect_near(kept_outputs[i].to_host(), kept_values[i], i % 2 == 0 ? 1e-5 : 0.0, "kept");
  }
}

TEST(Linear, WithoutBiasPooledOutputIsExact) {
  // No bias: the GEMM runs with beta = 0 on storage that held the previous step's values.
  nn::Linear fc("fc", {2}, nn::LinearOptions{2, false});
  fc.weight().value.copy_from_host({1, 2, 3, 4});
  for (int step = 0; step < 3; ++step) {
    const auto v = static_cast<float>(step);
    const Tensor x = Tensor::from_host("x", {2, 2}, {1, v, 2, 0});
    const nn::ForwardResult r = fc.forward(x, {});
    EXPECT_EQ(r.output.to_host(), (std::vector<float>{1 + 2 * v, 3 + 4 * v, 2, 6})) << step;
  }
}

TEST(Activation, PooledOutputsAndGradientsMatchLoopsAcrossSteps) {
  nn::Activation relu("relu", {6}, nn::ActivationOptions{});
  std::vector<Tensor> kept;
  std::vector<std::vector<float>> kept_values;
  for (int step = 0; step < 4; ++step) {
    const Index n = step == 1 ? 2 : 3;
    const Tensor x = tt::random_tensor("x", {n, 6}, static_cast<std::uint64_t>(40 + step));
    const Tensor dy = tt::random_tensor("dy", {n, 6}, static_cast<std::uint64_t>(50 + step));
    nn::ForwardResult r = relu.forward(x, {});
    const std::vector<float> xv = x.to_host();
    const std::vector<float> dyv = dy.to_host();
    std::vector<float> y_ref(xv.size());
    std::vector<float> dx_ref(xv.size());
    for (size_t i = 0; i < xv.size(); ++i) {
      y_ref[i] = xv[i] > 0.0F ? xv[i] : 0.0F;
      dx_ref[i] = xv[i] > 0.0F ? dyv[i] : 0.0F;
    }
    EXPECT_EQ(r.output.to_host(), y_ref) << step;
    const Tensor y = r.output;
    const Tensor dx = relu.backward(dy, std::move(r.ctx));
    EXPECT_EQ(dx.to_host(), dx_ref) << step;
    if (step % 2 == 0) {
      kept.push_back(y);
      kept_values.push_back(y_ref);
      kept.push_back(dx);
      kept_values.push_back(dx_ref);
    }
  }
  for (size_t i = 0; i < kept.size(); ++i) {
    EXPECT_EQ(kept[i].to_host(), kept_values[i]) << i;
  }
}

TEST(Sequential, TwoForwardsInFlightDoNotShareBuffers) {
  // Two micro-batches forward before either goes backward (gradient accumulation): each keeps
  // its own activations, so both backward passes give what separate steps give.
  auto make = [] {
    auto m = std::make_unique<nn::Sequential>("m", Shape{5});
    m->emplace<nn::Linear>("fc1", nn::LinearOptions{7});
    m->emplace<nn::Activation>("act", nn::ActivationOptions{});
    m->emplace<nn::Linear>("fc2", nn::LinearOptions{3});
    m->initialize(9);
    return m;
  };
  const auto together = make();
  const auto apart = make();
  const Tensor x1 = tt::random_tensor("x1", {4, 5}, 61);
  const Tensor x2 = tt::random_tensor("x2", {4, 5}, 62);
  const Tensor dy1 = tt::random_tensor("dy1", {4, 3}, 63);
  const Tensor dy2 = tt::random_tensor("dy2", {4, 3}, 64);

  nn::ForwardResult a = together->forward(x1, {});
  nn::ForwardResult b = together->forward(x2, {});
  const std::vector<float> ya = a.output.to_host();
  const Tensor dxb = together->backward(dy2, std::move(b.ctx));
  const Tensor dxa = together->backward(dy1, std::move(a.ctx));

  nn::ForwardResult a2 = apart->forward(x1, {});
  EXPECT_EQ(a2.output.to_host(), ya);
  const std::vector<float> dxa2 = apart->backward(dy1, std::move(a2.ctx)).to_host();
  nn::ForwardResult b2 = apart->forward(x2, {});
  const std::vector<float> dxb2 = apart->backward(dy2, std::move(b2.ctx)).to_host();
  EXPECT_EQ(dxa.to_host(), dxa2);
  EXPECT_EQ(dxb.to_host(), dxb2);
  const std::vector<nn::Parameter*> p1 = together->all_parameters();
  const std::vector<nn::Parameter*> p2 = apart->all_parameters();
  for (size_t i = 0; i < p1.size(); ++i) {
    tt::expect_near(p1[i]->grad.to_host(), p2[i]->grad.to_host(), 1e-6, p1[i]->name);
  }
}
