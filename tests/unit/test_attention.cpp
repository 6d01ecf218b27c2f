// CausalSelfAttention: forward and backward against a naive double-precision reference written
// here (the full T × T softmax with the causal mask, the textbook softmax backward), at a short
// and at a long sequence (several query blocks, a ragged last one); finite-difference gradient
// checks of the input and every parameter, with and without biases; the causal property in
// forward and backward; what forward saves (nothing T × T); buffer reuse and gradient
// accumulation; the tensor-split geometry of the fused q/k/v weight; exact error messages.
#include "support/gradcheck.hpp"
#include "tessera/core/error.hpp"
#include "tessera/kernels/attention.hpp"
#include "tessera/nn/attention.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

using namespace tessera;
using nn::AttentionOptions;
using nn::CausalSelfAttention;
namespace tt = tessera::testing;

namespace {

using Vec = std::vector<double>;

Vec to_double(const std::vector<float>& v) {
  return Vec(v.begin(), v.end());
}

// Largest |a - b| over largest |b|.
double relative_difference(const std::vector<float>& a, const Vec& b) {
  double scale = 1e-30;
  double diff = 0.0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    scale = std::max(scale, std::fabs(b[i]));
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
  }
  return a.size() == b.size() ? diff / scale : 1e30;
}

// The layer's parameters in double; biases zero where the layer has none.
struct Weights {
  Vec wqkv, bqkv, wproj, bproj;  // (3C, C), (3C,), (C, C), (C,)
};

Weights weights_of(CausalSelfAttention& a) {
  const Index c = a.features();
  Weights w;
  w.wqkv = to_double(a.qkv_weight().value.to_host());
  w.wproj = to_double(a.proj_weight().value.to_host());
  w.bqkv = a.has_bias() ? to_double(a.qkv_bias().value.to_host()) : Vec(3 * c, 0.0);
  w.bproj = a.has_bias() ? to_double(a.proj_bias().value.to_host()) : Vec(c, 0.0);
  return w;
}

// Random parameters large enough that the softmaxes are far from uniform.
void randomize(CausalSelfAttention& a, std::uint64_t seed) {
  for (nn::Parameter* p : a.all_parameters()) {
    p->value.copy_from_host(tt::random_values(p->value.numel(), seed++, -0.6F, 0.6F));
  }
}

// The whole layer in double, straight from the definitions.
struct Reference {
  Vec out, dx, dwqkv, dbqkv, dwproj, dbproj;
};

Reference reference(const Vec& x, const Vec& dout, const Weights& w, Index n_batch, Index t_all,
                    Index c, Index heads) {
  const Index d = c / heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  const auto at = [](Index i) { return static_cast<size_t>(i); };
  Reference r;
  r.out.assign(at(n_batch * t_all * c), 0.0);
  r.dx.assign(at(n_batch * t_all * c), 0.0);
  r.dwqkv.assign(at(3 * c * c), 0.0);
  r.dbqkv.assign(at(3 * c), 0.0);
  r.dwproj.assign(at(c * c), 0.0);
  r.dbproj.assign(at(c), 0.0);
  for (Index n = 0; n < n_batch; ++n) {
    const Index base = n * t_all;
    Vec qkv(at(t_all * 3 * c));  // (T, 3C)
    for (Index t = 0; t < t_all; ++t) {
      for (Index j = 0; j < 3 * c; ++j) {
        double s = w.bqkv[at(j)];
        for (Index k = 0; k < c; ++k) {
          s += x[at((base + t) * c + k)] * w.wqkv[at(j * c + k)];
        }
        qkv[at(t * 3 * c + j)] = s;
      }
    }
    const auto q = [&](Index t, Index j) { return qkv[at(t * 3 * c + j)]; };
    const auto k = [&](Index t, Index j) { return qkv[at(t * 3 * c + c + j)]; };
    const auto v = [&](Index t, Index j) { return qkv[at(t * 3 * c + 2 * c + j)]; };
    Vec y(at(t_all * c), 0.0);   // (T, C) heads side by side
    Vec dy(at(t_all * c), 0.0);  // dL/dy
    Vec dqkv(at(t_all * 3 * c), 0.0);
    for (Index t = 0; t < t_all; ++t) {
      for (Index o = 0; o < c; ++o) {
        const double g = dout[at((base + t) * c + o)];
        r.dbproj[at(o)] += g;
        for (Index j = 0; j < c; ++j) {
          dy[at(t * c + j)] += g * w.wproj[at(o * c + j)];
        }
      }
    }
    for (Index h = 0; h < heads; ++h) {
      const Index off = h * d;
      std::vector<Vec> p(at(t_all), Vec(at(t_all), 0.0));  // full (T, T), masked entries 0
      for (Index t = 0; t < t_all; ++t) {
        double m = -1e300;
        for (Index s = 0; s <= t; ++s) {
          double dot = 0.0;
          for (Index e = 0; e < d; ++e) {
            dot += q(t, off + e) * k(s, off + e);
          }
          p[at(t)][at(s)] = dot * scale;
          m = std::max(m, dot * scale);
        }
        double sum = 0.0;
        for (Index s = 0; s <= t; ++s) {
          p[at(t)][at(s)] = std::exp(p[at(t)][at(s)] - m);
          sum += p[at(t)][at(s)];
        }
        for (Index s = 0; s <= t; ++s) {
          p[at(t)][at(s)] /= sum;
          for (Index e = 0; e < d; ++e) {
            y[at(t * c + off + e)] += p[at(t)][at(s)] * v(s, off + e);
          }
        }
      }
      // dP = dY Vᵀ, dV = Pᵀ dY; dS = P ∘ (dP - Σ_s P dP) (the textbook softmax backward).
      for (Index t = 0; t < t_all; ++t) {
        Vec dp(at(t + 1), 0.0);
        double inner = 0.0;
        for (Index s = 0; s <= t; ++s) {
          for (Index e = 0; e < d; ++e) {
            dp[at(s)] += dy[at(t * c + off + e)] * v(s, off + e);
            dqkv[at(s * 3 * c + 2 * c + off + e)] += p[at(t)][at(s)] * dy[at(t * c + off + e)];
          }
          inner += p[at(t)][at(s)] * dp[at(s)];
        }
        for (Index s = 0; s <= t; ++s) {
          const double ds = p[at(t)][at(s)] * (dp[at(s)] - inner) * scale;
          for (Index e = 0; e < d; ++e) {
            dqkv[at(t * 3 * c + off + e)] += ds * k(s, off + e);
            dqkv[at(s * 3 * c + c + off + e)] += ds * q(t, off + e);
          }
        }
      }
    }
    for (Index t = 0; t < t_all; ++t) {
      for (Index o = 0; o < c; ++o) {
        double s = w.bproj[at(o)];
        for (Index j = 0; j < c; ++j) {
          s += y[at(t * c + j)] * w.wproj[at(o * c + j)];
          r.dwproj[at(o * c + j)] += dout[at((base + t) * c + o)] * y[at(t * c + j)];
        }
        r.out[at((base + t) * c + o)] = s;
      }
      for (Index j = 0; j < 3 * c; ++j) {
        const double g = dqkv[at(t * 3 * c + j)];
        r.dbqkv[at(j)] += g;
        for (Index k2 = 0; k2 < c; ++k2) {
          r.dwqkv[at(j * c + k2)] += g * x[at((base + t) * c + k2)];
          r.dx[at((base + t) * c + k2)] += g * w.wqkv[at(j * c + k2)];
        }
      }
    }
  }
  return r;
}

// Forward and backward of `a` on random x and dout against the reference, within `tol`.
void expect_matches_reference(CausalSelfAttention& a, Index n, double tol, std::uint64_t seed) {
  const Index t = a.tokens();
  const Index c = a.features();
  const Tensor x = tt::random_tensor("x", {n, t, c}, seed);
  const Tensor dout = tt::random_tensor("dout", {n, t, c}, seed + 1);
  const Reference r = reference(to_double(x.to_host()), to_double(dout.to_host()), weights_of(a), n,
                                t, c, a.heads());
  a.zero_grad();
  nn::ForwardResult f = a.forward(x, {});
  EXPECT_LE(relative_difference(f.output.to_host(), r.out), tol) << "output";
  const Tensor dx = a.backward(dout, std::move(f.ctx));
  EXPECT_LE(relative_difference(dx.to_host(), r.dx), tol) << "dx";
  EXPECT_LE(relative_difference(a.qkv_weight().grad.to_host(), r.dwqkv), tol) << "dWqkv";
  EXPECT_LE(relative_difference(a.proj_weight().grad.to_host(), r.dwproj), tol) << "dWproj";
  if (a.has_bias()) {
    EXPECT_LE(relative_difference(a.qkv_bias().grad.to_host(), r.dbqkv), tol) << "dbqkv";
    EXPECT_LE(relative_difference(a.proj_bias().grad.to_host(), r.dbproj), tol) << "dbproj";
  }
}

}  // namespace

TEST(Attention, MatchesDoubleReference) {
  CausalSelfAttention a("a", {5, 8}, AttentionOptions{2});
  randomize(a, 10);
  expect_matches_reference(a, 2, 1e-5, 11);
  CausalSelfAttention one_head("a", {7, 6}, AttentionOptions{1});
  randomize(one_head, 12);
  expect_matches_reference(one_head, 3, 1e-5, 13);
  CausalSelfAttention nobias("a", {6, 12}, AttentionOptions{3, false});
  ASSERT_EQ(nobias.parameters().size(), 2u);
  randomize(nobias, 14);
  expect_matches_reference(nobias, 2, 1e-5, 15);
}

TEST(Attention, LongSequenceMatchesDoubleReference) {
  // T = 64 is one block of query rows; T = 150 is three (64, 64, 22): every block's keys end at
  // its last row, and backward's dK and dV sum over blocks.
  for (const Index t : {Index{64}, Index{150}}) {
    CausalSelfAttention a("a", {t, 16}, AttentionOptions{4});
    randomize(a, 20);
    expect_matches_reference(a, 2, 1e-5, 21);
  }
  EXPECT_EQ(kernels::attention_scratch_shape(150), (Shape{2, 64, 150}));
  EXPECT_EQ(kernels::attention_scratch_shape(5), (Shape{2, 5, 5}));
}

TEST(Attention, GradCheck) {
  CausalSelfAttention a("attn", {5, 8}, AttentionOptions{2});
  randomize(a, 30);
  tt::GradCheckOptions o;
  o.eps = 1e-2F;
  EXPECT_EQ(tt::gradcheck(a, tt::random_tensor("x", {2, 5, 8}, 31), o), 0);

  CausalSelfAttention nobias("attn", {4, 6}, AttentionOptions{3, false});
  randomize(nobias, 32);
  EXPECT_EQ(tt::gradcheck(nobias, tt::random_tensor("x", {2, 4, 6}, 33), o), 0);
}

TEST(Attention, IsCausal) {
  const Index n = 2, t = 9, c = 8;
  CausalSelfAttention a("a", {t, c}, AttentionOptions{2});
  randomize(a, 40);
  const Tensor x = tt::random_tensor("x", {n, t, c}, 41);
  const std::vector<float> base = a.forward(x, {}).output.to_host();
  for (const Index t0 : {Index{0}, Index{4}, Index{8}}) {
    // Perturbing token t0 of every sample changes no output before t0, and the output at t0.
    std::vector<float> xv = x.to_host();
    for (Index i = 0; i < n; ++i) {
      for (Index k = 0; k < c; ++k) {
        xv[static_cast<size_t>((i * t + t0) * c + k)] += 0.5F;
      }
    }
    const std::vector<float> moved =
        a.forward(Tensor::from_host("x2", {n, t, c}, xv), {}).output.to_host();
    for (Index i = 0; i < n; ++i) {
      for (Index s = 0; s < t; ++s) {
        for (Index k = 0; k < c; ++k) {
          const auto e = static_cast<size_t>((i * t + s) * c + k);
          if (s < t0) {
            EXPECT_EQ(moved[e], base[e]) << "sample " << i << " token " << s << " moved by " << t0;
          }
        }
      }
      const auto e = static_cast<size_t>((i * t + t0) * c);
      EXPECT_NE(moved[e], base[e]) << "sample " << i << " token " << t0;
    }
  }
  // In backward: a gradient on the output at token 3 only reaches the inputs at tokens 0..3.
  std::vector<float> g(static_cast<size_t>(n * t * c), 0.0F);
  for (Index k = 0; k < c; ++k) {
    g[static_cast<size_t>(3 * c + k)] = 1.0F;  // sample 0, token 3
  }
  nn::ForwardResult f = a.forward(x, {});
  const std::vector<float> dx =
      a.backward(Tensor::from_host("dy", {n, t, c}, g), std::move(f.ctx)).to_host();
  for (Index i = 0; i < n; ++i) {
    for (Index s = 0; s < t; ++s) {
      double norm = 0.0;
      for (Index k = 0; k < c; ++k) {
        norm += std::fabs(static_cast<double>(dx[static_cast<size_t>((i * t + s) * c + k)]));
      }
      if (i == 0 && s <= 3) {
        EXPECT_GT(norm, 0.0) << "token " << s;
      } else {
        EXPECT_EQ(norm, 0.0) << "sample " << i << " token " << s;
      }
    }
  }
}

TEST(Attention, SavesNothingQuadraticAndReusesBuffers) {
  const Index n = 3, t = 40, c = 12;
  CausalSelfAttention a("a", {t, c}, AttentionOptions{3});
  randomize(a, 50);
  const Tensor x = tt::random_tensor("x", {n, t, c}, 51);
  const Tensor dy = tt::random_tensor("dy", {n, t, c}, 52);
  nn::ForwardResult f = a.forward(x, {});
  ASSERT_EQ(f.ctx.saved.size(), 4u);
  EXPECT_EQ(f.ctx.saved[0].shape(), (Shape{n, t, c}));      // x
  EXPECT_EQ(f.ctx.saved[1].shape(), (Shape{n, t, 3 * c}));  // qkv
  EXPECT_EQ(f.ctx.saved[2].shape(), (Shape{n, t, c}));      // heads' output
  EXPECT_EQ(f.ctx.saved[3].shape(), (Shape{n, 3, t}));      // log-sum-exp per row
  const std::vector<float> y1 = f.output.to_host();
  a.zero_grad();
  const std::vector<float> dx1 = a.backward(dy, std::move(f.ctx)).to_host();
  std::vector<std::vector<float>> g1;
  for (nn::Parameter* p : a.all_parameters()) {
    g1.push_back(p->grad.to_host());
  }
  // Again, on the buffers of the first call: the same output and input gradient, and the
  // parameter gradients accumulate to twice the first.
  for (int round = 0; round < 2; ++round) {
    nn::ForwardResult again = a.forward(x, {});
    EXPECT_EQ(again.output.to_host(), y1);
    EXPECT_EQ(a.backward(dy, std::move(again.ctx)).to_host(), dx1);
  }
  size_t i = 0;
  for (nn::Parameter* p : a.all_parameters()) {
    std::vector<float> want = g1[i++];
    for (float& v : want) {
      v *= 3.0F;
    }
    tt::expect_near(p->grad.to_host(), want, 1e-5, p->name);
  }
  // Two forward passes in flight keep their own tensors.
  nn::ForwardResult first = a.forward(x, {});
  nn::ForwardResult second = a.forward(tt::random_tensor("x2", {n, t, c}, 53), {});
  EXPECT_EQ(first.output.to_host(), y1);
  EXPECT_NE(second.output.to_host(), y1);
  a.zero_grad();
  EXPECT_EQ(a.backward(dy, std::move(first.ctx)).to_host(), dx1);
  tt::expect_near(a.parameters()[0].grad.to_host(), g1[0], 1e-6, "dWqkv, first of two in flight");
}

TEST(Attention, FirstLayerSkipsInputGradient) {
  CausalSelfAttention a("a", {6, 8}, AttentionOptions{2});
  randomize(a, 60);
  const Tensor x = tt::random_tensor("x", {2, 6, 8}, 61);
  const Tensor dy = tt::random_tensor("dy", {2, 6, 8}, 62);
  nn::ForwardResult f = a.forward(x, {});
  a.zero_grad();
  (void)a.backward(dy, std::move(f.ctx));
  const std::vector<float> dw = a.qkv_weight().grad.to_host();
  a.set_needs_input_grad(false);
  nn::ForwardResult g = a.forward(x, {});
  a.zero_grad();
  EXPECT_FALSE(a.backward(dy, std::move(g.ctx)).defined());
  EXPECT_EQ(a.qkv_weight().grad.to_host(), dw);
}

TEST(Attention, ParametersAndInitialisation) {
  CausalSelfAttention a("blk.attn", {16, 64}, AttentionOptions{4});
  EXPECT_EQ(a.kind(), std::string("attention"));
  EXPECT_EQ(a.output_shape({16, 64}), (Shape{16, 64}));
  EXPECT_EQ(a.head_dim(), 16);
  ASSERT_EQ(a.parameters().size(), 4u);
  const std::vector<std::string> names{"blk.attn.qkv.weight", "blk.attn.qkv.bias",
                                       "blk.attn.proj.weight", "blk.attn.proj.bias"};
  const std::vector<Shape> shapes{{192, 64}, {192}, {64, 64}, {64}};
  const std::vector<bool> decay{true, false, true, false};
  a.initialize(7);
  for (size_t i = 0; i < 4; ++i) {
    const nn::Parameter& p = a.parameters()[i];
    EXPECT_EQ(p.name, names[i]);
    EXPECT_EQ(p.value.shape(), shapes[i]);
    EXPECT_EQ(p.decay, decay[i]) << p.name;
    EXPECT_TRUE(p.layout.is_replicated()) << p.name;
    const std::vector<float> v = p.value.to_host();
    double sum_sq = 0.0;
    for (float e : v) {
      sum_sq += static_cast<double>(e) * static_cast<double>(e);
    }
    const double std_dev = std::sqrt(sum_sq / static_cast<double>(v.size()));
    if (decay[i]) {
      EXPECT_NEAR(std_dev, 0.02, 0.002) << p.name;
    } else {
      EXPECT_EQ(std_dev, 0.0) << p.name;
    }
  }
  CausalSelfAttention split_alone("s", {16, 64}, AttentionOptions{4, true, true});
  EXPECT_EQ(split_alone.local_heads(), 4);  // no grid: one tensor rank holds every head
  EXPECT_EQ(split_alone.qkv_weight().value.shape(), (Shape{192, 64}));
}

TEST(Attention, SplitGeometryIsHeadsOfQKAndV) {
  // C = 64, H = 4 over S = 2: rank 1 holds heads 2 and 3, i.e. q rows [32, 64), k rows [96, 128)
  // and v rows [160, 192) of qkv.weight (192, 64), and columns [32, 64) of proj.weight.
  const GridPlace rank1 = GridPlace::single().with(GridAxis::tensor, 2, 1);
  CausalSelfAttention a("a", {8, 64}, AttentionOptions{4, true, true}, nn::BuildContext(rank1));
  CausalSelfAttention whole("a", {8, 64}, AttentionOptions{4});
  EXPECT_EQ(a.local_heads(), 2);
  EXPECT_EQ(a.qkv_weight().value.shape(), (Shape{96, 64}));
  EXPECT_EQ(a.qkv_bias().value.shape(), (Shape{96}));
  EXPECT_EQ(a.proj_weight().value.shape(), (Shape{64, 32}));
  EXPECT_EQ(a.proj_bias().value.shape(), (Shape{64}));
  EXPECT_EQ(a.qkv_weight().layout.to_string(), "(192, 64) dim 0 over tensor/3");
  const std::vector<Block> blocks = a.qkv_weight().layout.blocks(rank1);
  ASSERT_EQ(blocks.size(), 3u);
  for (size_t s = 0; s < 3; ++s) {
    EXPECT_EQ(blocks[s].local_offset, (Shape{static_cast<Index>(32 * s), 0}));
    EXPECT_EQ(blocks[s].global_offset, (Shape{static_cast<Index>(32 + 64 * s), 0}));
    EXPECT_EQ(blocks[s].count, (Shape{32, 64}));
  }
  // initialize() gives the rank exactly those rows (and columns) of the whole tensors.
  a.initialize(3);
  whole.initialize(3);
  const std::vector<float> local = a.qkv_weight().value.to_host();
  const std::vector<float> all = whole.qkv_weight().value.to_host();
  const std::vector<Index> global = a.qkv_weight().layout.global_indices(rank1);
  ASSERT_EQ(global.size(), local.size());
  EXPECT_EQ(global[0], 32 * 64);         // local q row 0 is global row 32
  EXPECT_EQ(global[32 * 64], 96 * 64);   // local k row 0 is global row 96
  EXPECT_EQ(global[64 * 64], 160 * 64);  // local v row 0 is global row 160
  for (size_t i = 0; i < local.size(); ++i) {
    ASSERT_EQ(local[i], all[static_cast<size_t>(global[i])]) << i;
  }
  const std::vector<float> proj = a.proj_weight().value.to_host();
  const std::vector<float> proj_all = whole.proj_weight().value.to_host();
  for (Index o = 0; o < 64; ++o) {
    for (Index j = 0; j < 32; ++j) {
      ASSERT_EQ(proj[static_cast<size_t>(o * 32 + j)],
                proj_all[static_cast<size_t>(o * 64 + 32 + j)]);
    }
  }
}

TEST(Attention, BadArgumentsThrowExactMessages) {
  EXPECT_EQ(tt::error_of([] { CausalSelfAttention("a1", {64}, AttentionOptions{4}); }),
            "attention 'a1': input shape (64,) must be (tokens, features) with extents >= 1");
  EXPECT_EQ(tt::error_of([] {
              CausalSelfAttention("a1", {0, 64}, AttentionOptions{4});
            }),
            "attention 'a1': input shape (0, 64) must be (tokens, features) with extents >= 1");
  EXPECT_EQ(tt::error_of([] {
              CausalSelfAttention("a1", {8, 64}, AttentionOptions{0});
            }),
            "attention 'a1': option heads = 0 must be >= 1");
  EXPECT_EQ(tt::error_of([] {
              CausalSelfAttention("a1", {8, 64}, AttentionOptions{5});
            }),
            "attention 'a1': heads = 5 do not divide the input's 64 features");
  const nn::BuildContext four(GridPlace::single().with(GridAxis::tensor, 4, 0));
  EXPECT_EQ(tt::error_of([&] {
              CausalSelfAttention("a1", {8, 48}, AttentionOptions{6, true, true}, four);
            }),
            "attention 'a1': heads = 6 do not split over 4 tensor ranks");
  // Unsplit, the same layer is whole on every tensor rank.
  EXPECT_EQ(CausalSelfAttention("a1", {8, 48}, AttentionOptions{6}, four).local_heads(), 6);

  CausalSelfAttention a("a1", {8, 64}, AttentionOptions{4});
  EXPECT_EQ(tt::error_of([&] {
              (void)a.output_shape({8, 32});
            }),
            "attention 'a1': input sample shape (8, 32) does not fit, expected (8, 64)");
  EXPECT_EQ(tt::error_of([&] {
              (void)a.forward(Tensor("x", {2, 7, 64}), {});
            }),
            "attention 'a1': input has shape (2, 7, 64), expected (N, 8, 64) with N >= 1");
  nn::ForwardResult r = a.forward(Tensor("x", {2, 8, 64}), {});
  EXPECT_EQ(tt::error_of([&] {
              (void)a.backward(Tensor("dy", {2, 8, 63}), nn::Context(r.ctx));
            }),
            "attention 'a1': output grad has shape (2, 8, 63), expected (N, 8, 64) with N >= 1");
  EXPECT_EQ(tt::error_of([&] {
              (void)a.backward(Tensor("dy", {3, 8, 64}), nn::Context(r.ctx));
            }),
            "attention 'a1': output grad of shape (3, 8, 64) does not match the context of the "
            "forward pass (input (2, 8, 64))");
}
