// Embedding: forward and backward computed by hand (repeated ids add up), against loops written
// here on random tables, finite-difference checks of both tables, the input gradient (none for a
// first layer, zeros when asked), parameters and initialisation, the vocabulary split's blocks
// (uneven, no padding), and exact error messages: bad ids, a sample longer than the position
// table, bad options.
#include "support/gradcheck.hpp"
#include "tessera/core/error.hpp"
#include "tessera/nn/embedding.hpp"
#include "tessera/nn/factory.hpp"
#include "tessera/nn/sequential.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

using namespace tessera;
using nn::Embedding;
using nn::EmbeddingOptions;
namespace tt = tessera::testing;

namespace {

EmbeddingOptions options(Index vocab, Index dim, Index positions, bool split = false) {
  EmbeddingOptions o;
  o.vocab = vocab;
  o.dim = dim;
  o.positions = positions;
  o.split = split;
  return o;
}

// Ids in [0, vocab) as floats.
Tensor random_ids(const Shape& shape, Index vocab, std::uint64_t seed) {
  std::vector<float> v = tt::random_values(numel(shape), seed, 0.0F, static_cast<float>(vocab));
  for (float& e : v) {
    e = std::floor(e);
  }
  return Tensor::from_host("ids", shape, v);
}

// Central differences (step 1e-2) of `loss` in every element of every parameter of `params`
// against the gradients backward accumulated, within 1e-3.
void expect_table_gradients(const std::vector<nn::Parameter*>& params,
                            const std::function<double()>& loss) {
  const float eps = 1e-2F;
  for (nn::Parameter* p : params) {
    std::vector<float> v = p->value.to_host();
    const std::vector<float> grad = p->grad.to_host();
    for (size_t i = 0; i < v.size(); ++i) {
      const float orig = v[i];
      v[i] = orig + eps;
      p->value.copy_from_host(v);
      const double plus = loss();
      v[i] = orig - eps;
      p->value.copy_from_host(v);
      const double minus = loss();
      v[i] = orig;
      p->value.copy_from_host(v);
      EXPECT_NEAR((plus - minus) / (2.0 * static_cast<double>(eps)), static_cast<double>(grad[i]),
                  1e-3)
          << p->name << "[" << i << "]";
    }
  }
}

}  // namespace

TEST(Embedding, HandComputed) {
  Embedding e("e", {3}, options(4, 2, 5));
  e.wte().value.copy_from_host({0, 1, 10, 11, 20, 21, 30, 31});  // (4, 2): row v = [10v, 10v+1]
  e.wpe().value.copy_from_host({0.5F, -0.5F, 1.5F, -1.5F, 2.5F, -2.5F, 9, 9, 9, 9});  // (5, 2)
  const Tensor x = Tensor::from_host("x", {2, 3}, {3, 0, 3, 1, 1, 2});
  nn::ForwardResult r = e.forward(x, {});
  EXPECT_EQ(r.output.shape(), (Shape{2, 3, 2}));
  EXPECT_EQ(r.output.to_host(), (std::vector<float>{30.5F, 30.5F, 1.5F, -0.5F, 32.5F, 28.5F,  //
                                                    10.5F, 10.5F, 11.5F, 9.5F, 22.5F, 18.5F}));
  ASSERT_EQ(r.ctx.saved.size(), 1u);
  EXPECT_EQ(r.ctx.saved[0].shape(), (Shape{2, 3}));
  const Tensor dy = Tensor::from_host("dy", {2, 3, 2}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
  e.zero_grad();
  const Tensor dx = e.backward(dy, std::move(r.ctx));
  // Id 3 at (0, 0) and (0, 2): [1 + 5, 2 + 6]; id 1 at (1, 0) and (1, 1): [7 + 9, 8 + 10].
  EXPECT_EQ(e.wte().grad.to_host(), (std::vector<float>{3, 4, 16, 18, 11, 12, 6, 8}));
  // Positions: summed over the batch; rows 3 and 4 unused.
  EXPECT_EQ(e.wpe().grad.to_host(), (std::vector<float>{8, 10, 12, 14, 16, 18, 0, 0, 0, 0}));
  // Asked for (a standalone layer needs it by default), dL/dx is zero.
  EXPECT_EQ(dx.shape(), (Shape{2, 3}));
  EXPECT_EQ(dx.to_host(), (std::vector<float>(6, 0.0F)));
  // A model's first layer returns none.
  e.set_needs_input_grad(false);
  nn::ForwardResult again = e.forward(x, {});
  EXPECT_FALSE(e.backward(dy, std::move(again.ctx)).defined());
  EXPECT_EQ(e.wte().grad.to_host(), (std::vector<float>{6, 8, 32, 36, 22, 24, 12, 16}));  // +=
}

TEST(Embedding, MatchesLoopsOnRandomTables) {
  const Index n = 5, t = 11, vocab = 13, dim = 37, positions = 16;  // dim: chunks of 16 + 5
  Embedding e("e", {t}, options(vocab, dim, positions));
  e.initialize(3);
  const Tensor x = random_ids({n, t}, vocab, 4);
  const Tensor dy = tt::random_tensor("dy", {n, t, dim}, 5);
  const std::vector<float> xv = x.to_host(), g = dy.to_host();
  const std::vector<float> wte = e.wte().value.to_host(), wpe = e.wpe().value.to_host();
  std::vector<float> y(static_cast<size_t>(n * t * dim));
  std::vector<double> dwte(static_cast<size_t>(vocab * dim), 0.0);
  std::vector<double> dwpe(static_cast<size_t>(positions * dim), 0.0);
  for (Index i = 0; i < n * t; ++i) {
    const auto id = static_cast<Index>(xv[static_cast<size_t>(i)]);
    for (Index c = 0; c < dim; ++c) {
      const auto k = static_cast<size_t>(i * dim + c);
      y[k] = wte[static_cast<size_t>(id * dim + c)] + wpe[static_cast<size_t>((i % t) * dim + c)];
      dwte[static_cast<size_t>(id * dim + c)] += static_cast<double>(g[k]);
      dwpe[static_cast<size_t>((i % t) * dim + c)] += static_cast<double>(g[k]);
    }
  }
  nn::ForwardResult r = e.forward(x, {});
  EXPECT_EQ(r.output.to_host(), y);
  e.zero_grad();
  (void)e.backward(dy, std::move(r.ctx));
  tt::expect_near(e.wte().grad.to_host(), std::vector<float>(dwte.begin(), dwte.end()), 1e-5,
                  "dwte");
  tt::expect_near(e.wpe().grad.to_host(), std::vector<float>(dwpe.begin(), dwpe.end()), 1e-5,
                  "dwpe");
}

TEST(Embedding, GradCheckOfBothTables) {
  // The ids cannot be perturbed (they are integers), so only the tables are checked: central
  // differences of L = Σ r · y against the accumulated gradients.
  Embedding e("e", {5}, options(7, 8, 6));
  e.initialize(9);
  const Tensor x = random_ids({2, 5}, 7, 10);
  nn::ForwardResult f = e.forward(x, {});
  const std::vector<float> r = tt::random_values(f.output.numel(), 777);
  e.zero_grad();
  (void)e.backward(Tensor::from_host("dy", f.output.shape(), r), std::move(f.ctx));
  const auto loss = [&] {
    const std::vector<float> y = e.forward(x, {}).output.to_host();
    double s = 0.0;
    for (size_t i = 0; i < y.size(); ++i) {
      s += static_cast<double>(y[i]) * static_cast<double>(r[i]);
    }
    return s;
  };
  expect_table_gradients(e.all_parameters(), loss);
}

TEST(Embedding, ParametersAndInitialisation) {
  Embedding e("tok", {64}, options(256, 96, 128));
  EXPECT_EQ(e.kind(), std::string("embedding"));
  EXPECT_EQ(e.output_shape({64}), (Shape{64, 96}));
  ASSERT_EQ(e.parameters().size(), 2u);
  EXPECT_EQ(e.wte().name, "tok.wte");
  EXPECT_EQ(e.wte().value.shape(), (Shape{256, 96}));
  EXPECT_EQ(e.wpe().name, "tok.wpe");
  EXPECT_EQ(e.wpe().value.shape(), (Shape{128, 96}));
  e.initialize(1);
  for (const nn::Parameter& p : e.parameters()) {
    EXPECT_FALSE(p.decay) << p.name;
    EXPECT_TRUE(p.layout.is_replicated()) << p.name;
    double sum = 0.0, sum_sq = 0.0;
    for (float v : p.value.to_host()) {
      sum += static_cast<double>(v);
      sum_sq += static_cast<double>(v) * static_cast<double>(v);
    }
    const auto count = static_cast<double>(p.value.numel());
    EXPECT_NEAR(sum / count, 0.0, 0.001) << p.name;
    EXPECT_NEAR(std::sqrt(sum_sq / count), 0.02, 0.001) << p.name;
  }
  // The sample may be shorter than the position table; the layer uses its first T rows.
  EXPECT_EQ(Embedding("e", {1}, options(1, 1, 1)).output_shape({1}), (Shape{1, 1}));
}

TEST(Embedding, VocabularySplitBlocks) {
  // V = 256 over 3 tensor ranks: 86, 85, 85 rows, nothing padded; V = 257: 86, 86, 85.
  for (const auto& [vocab, counts] : {std::pair{Index{256}, std::vector<Index>{86, 85, 85}},
                                      std::pair{Index{257}, std::vector<Index>{86, 86, 85}}}) {
    Index offset = 0;
    for (int r = 0; r < 3; ++r) {
      const GridPlace place = GridPlace::single().with(GridAxis::tensor, 3, r);
      Embedding e("e", {8}, options(vocab, 4, 8, true), nn::BuildContext(place));
      EXPECT_EQ(e.vocab_block().offset, offset) << vocab << " rank " << r;
      EXPECT_EQ(e.vocab_block().count, counts[static_cast<size_t>(r)]) << vocab << " rank " << r;
      EXPECT_EQ(e.wte().value.shape(), (Shape{counts[static_cast<size_t>(r)], 4}));
      EXPECT_EQ(e.wte().layout, Layout::split({vocab, 4}, 0, GridAxis::tensor));
      EXPECT_EQ(e.wpe().value.shape(), (Shape{8, 4}));
      EXPECT_TRUE(e.wpe().layout.is_replicated());
      offset += counts[static_cast<size_t>(r)];
    }
  }
  // Unsplit, every tensor rank holds the whole table.
  const nn::BuildContext rank2(GridPlace::single().with(GridAxis::tensor, 3, 2));
  Embedding whole("e", {8}, options(256, 4, 8), rank2);
  EXPECT_EQ(whole.vocab_block().offset, 0);
  EXPECT_EQ(whole.vocab_block().count, 256);
}

TEST(Embedding, BadIdsThrowExactMessages) {
  Embedding e("e0", {4}, options(256, 8, 4));
  e.initialize(1);
  const auto forward_on = [&](std::vector<float> ids) {
    return tt::error_of([&] { (void)e.forward(Tensor::from_host("x", {2, 4}, ids), {}); });
  };
  std::vector<float> ok{0, 1, 255, 7, 3, 3, 3, 3};
  EXPECT_EQ(forward_on(ok), "no error");
  const std::vector<std::pair<float, std::string>> bad{
      {256.0F, "256"},
      {-1.0F, "-1"},
      {2.5F, "2.5"},
      {std::numeric_limits<float>::quiet_NaN(), "nan"},
      {std::numeric_limits<float>::infinity(), "inf"}};
  for (const auto& [id, text] : bad) {
    std::vector<float> ids = ok;
    ids[6] = id;
    ids[7] = -5.0F;  // a later bad id: the first is named
    EXPECT_EQ(forward_on(ids), "embedding 'e0': token id " + text +
                                   " at sample 1, position 2 is not an integer in [0, 256) "
                                   "(option vocab)");
  }
}

TEST(Embedding, BadArgumentsThrowExactMessages) {
  EXPECT_EQ(tt::error_of([] { Embedding("e0", {300}, options(256, 8, 256)); }),
            "embedding 'e0': the sample's 300 tokens exceed the position table's 256 (option "
            "positions)");
  EXPECT_EQ(tt::error_of([] {
              Embedding("e0", {4, 8}, options(256, 8, 256));
            }),
            "embedding 'e0': input shape (4, 8) must be (tokens,) with tokens >= 1");
  EXPECT_EQ(tt::error_of([] { Embedding("e0", {0}, options(256, 8, 256)); }),
            "embedding 'e0': input shape (0,) must be (tokens,) with tokens >= 1");
  EXPECT_EQ(tt::error_of([] { Embedding("e0", {4}, options(0, 8, 256)); }),
            "embedding 'e0': option vocab = 0 must be >= 1");
  EXPECT_EQ(tt::error_of([] { Embedding("e0", {4}, options(256, 0, 256)); }),
            "embedding 'e0': option dim = 0 must be >= 1");
  EXPECT_EQ(tt::error_of([] { Embedding("e0", {4}, options(256, 8, 0)); }),
            "embedding 'e0': option positions = 0 must be >= 1");
  EXPECT_EQ(tt::error_of([] { Embedding("e0", {4}, options(Index{1} << 25, 8, 8)); }),
            "embedding 'e0': option vocab = 33554432 exceeds 16777216, the largest vocabulary "
            "whose ids float32 holds exactly");
  const nn::BuildContext three(GridPlace::single().with(GridAxis::tensor, 3, 0));
  EXPECT_EQ(tt::error_of([&] { Embedding("e0", {4}, options(2, 8, 8, true), three); }),
            "embedding 'e0': split = true cuts its vocabulary of 2 tokens over 3 tensor ranks; "
            "every rank needs at least one");

  Embedding e("e0", {4}, options(16, 8, 8));
  EXPECT_EQ(tt::error_of([&] { (void)e.output_shape({5}); }),
            "embedding 'e0': input sample shape (5,) does not fit, expected (4,)");
  EXPECT_EQ(tt::error_of([&] {
              (void)e.forward(Tensor("x", {2, 5}), {});
            }),
            "embedding 'e0': input has shape (2, 5), expected (N, 4) with N >= 1");
  nn::ForwardResult r = e.forward(Tensor("x", {2, 4}), {});
  EXPECT_EQ(tt::error_of([&] {
              (void)e.backward(Tensor("dy", {2, 4, 7}), nn::Context(r.ctx));
            }),
            "embedding 'e0': output grad has shape (2, 4, 7), expected (N, 4, 8) with N >= 1");
  EXPECT_EQ(tt::error_of([&] {
              (void)e.backward(Tensor("dy", {3, 4, 8}), nn::Context(r.ctx));
            }),
            "embedding 'e0': output grad of shape (3, 4, 8) does not match the context of the "
            "forward pass (input (2, 4))");
}

TEST(TiedHead, GradientOfTheSharedTableHasBothUses) {
  // embedding → tied_head: the token table is both looked up and multiplied by, and its gradient
  // (the lookup's scatter plus the head's dyᵀ · x) matches central differences of L = Σ r ·
  // logits, as does the position table's (L is quadratic in the tables: central differences are
  // exact but for round-off). The logits equal x · wteᵀ computed here.
  nn::Sequential model("m", {5});
  Embedding& e = model.emplace<Embedding>("e", options(7, 8, 6));
  auto head = std::make_unique<nn::TiedHead>("head", Shape{5, 8});
  nn::tie_to_model(*head, model);
  model.add(std::move(head));
  EXPECT_EQ(model.output_shape(), (Shape{5, 7}));
  EXPECT_EQ(model.all_parameters().size(), 2U);  // wte and wpe: nothing new
  model.initialize(9);
  const Tensor x = random_ids({2, 5}, 7, 10);
  nn::ForwardResult f = model.forward(x, {});
  // The logits by hand from the LayerNorm's output.
  const std::vector<float> h = model[0].forward(x, {}).output.to_host();
  const std::vector<float> wte = e.wte().value.to_host();
  const std::vector<float> y = f.output.to_host();
  for (Index row = 0; row < 10; ++row) {
    for (Index v = 0; v < 7; ++v) {
      double want = 0.0;
      for (Index c = 0; c < 8; ++c) {
        want += static_cast<double>(h[static_cast<size_t>(row * 8 + c)]) *
                static_cast<double>(wte[static_cast<size_t>(v * 8 + c)]);
      }
      EXPECT_NEAR(y[static_cast<size_t>(row * 7 + v)], want, 1e-5) << row << ", " << v;
    }
  }
  const std::vector<float> r = tt::random_values(f.output.numel(), 777);
  model.zero_grad();
  (void)model.backward(Tensor::from_host("dy", f.output.shape(), r), std::move(f.ctx));
  const auto loss = [&] { return tt::detail::weighted_sum(model.forward(x, {}).output, r); };
  expect_table_gradients(model.all_parameters(), loss);
}

TEST(TiedHead, BadModelsThrowExactMessages) {
  nn::Sequential model("m", {5, 8});
  auto head = std::make_unique<nn::TiedHead>("head", Shape{5, 8});
  EXPECT_EQ(tt::error_of([&] { nn::tie_to_model(*head, model); }),
            "tied_head 'head' ties the head to the model's embedding, but there is no embedding "
            "before it");
  Embedding e("e", {5}, options(7, 6, 6));
  EXPECT_EQ(tt::error_of([&] { head->bind(e); }),
            "tied_head 'head': its input has 8 features but embedding 'e' has dim = 6; a tied head "
            "multiplies by the embedding's table, so they must be equal");
}
