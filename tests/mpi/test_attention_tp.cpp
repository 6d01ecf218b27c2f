// The language model's layers split over the tensor axis do not change the math (DESIGN.md, idea
// 3): on tensor = world, CausalSelfAttention with its heads split (Megatron-LM) and Embedding with
// its vocabulary split (uneven blocks: V = 257 over 2, 3 and 4 ranks), built with the same seed as
// the whole layers on one rank, give the same output, input gradient and parameter gradients —
// each rank's block, and every gradient gathered whole — within 1e-5 relative, alone and chained
// (embedding → attention, the chain's first layer computing no input gradient). Expectations come
// from the world size; a head count the world does not divide is skipped.
#include "support/gradcheck.hpp"
#include "support/mpi.hpp"
#include "tessera/comm/process_grid.hpp"
#include "tessera/nn/attention.hpp"
#include "tessera/nn/embedding.hpp"
#include "tessera/nn/sequential.hpp"

#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

using namespace tessera;
using namespace tessera::testing;

namespace {

constexpr double kTolerance = 1e-5;

// Largest |a - b| over largest |b|.
double relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) {
    return 1e30;
  }
  double scale = 1e-30;
  double diff = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  }
  return diff / scale;
}

// The grid of the whole world on the tensor axis.
comm::GridSpec tensor_world() {
  return {1, 0, 1, world_size(), {1, 1}};
}

// The whole tensor of which `local` is this rank's block under `layout`, on every rank: each
// element written once — by the rank holding it when the tensor is split over tensor, by tensor
// rank 0 when it is replicated — and summed over the world as bit patterns (exact).
std::vector<float> gather_whole(const Tensor& local, const Layout& layout, const GridPlace& place,
                                comm::Communicator& world) {
  std::vector<std::uint64_t> bits(static_cast<size_t>(numel(layout.global_shape())), 0);
  if (layout.split_axes().contains(GridAxis::tensor) || place.coord_of(GridAxis::tensor) == 0) {
    const std::vector<Index> global = layout.global_indices(place);
    const std::vector<float> values = local.to_host();
    for (size_t k = 0; k < values.size(); ++k) {
      std::uint32_t word = 0;
      std::memcpy(&word, &values[k], sizeof(word));
      bits[static_cast<size_t>(global[k])] = word;
    }
  }
  world.allreduce(comm::Buffer(bits))->wait();
  std::vector<float> out(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) {
    const auto word = static_cast<std::uint32_t>(bits[i]);
    std::memcpy(&out[i], &word, sizeof(word));
  }
  return out;
}

// The block of the whole tensor `whole` that `layout` gives the rank at `place`, in local order.
std::vector<float> block_of(const std::vector<float>& whole, const Layout& layout,
                            const GridPlace& place) {
  std::vector<float> out;
  for (const Index g : layout.global_indices(place)) {
    out.push_back(whole[static_cast<size_t>(g)]);
  }
  return out;
}

// Every parameter of `split` holds exactly its block of the same parameter of `whole` (after
// initialize with the same seed, bit for bit); then both get the same random values, scaled by
// `scale`, so that the attention's softmaxes are far from uniform.
void same_parameters(nn::Layer& split, nn::Layer& whole, const GridPlace& place, float scale) {
  const std::vector<nn::Parameter*> s = split.all_parameters();
  const std::vector<nn::Parameter*> w = whole.all_parameters();
  ASSERT_EQ(s.size(), w.size());
  std::uint64_t seed = 100;
  for (size_t i = 0; i < s.size(); ++i) {
    ASSERT_EQ(s[i]->name, w[i]->name);
    ASSERT_EQ(s[i]->layout.global_shape(), w[i]->layout.global_shape()) << s[i]->name;
    EXPECT_EQ(s[i]->value.to_host(), block_of(w[i]->value.to_host(), s[i]->layout, place))
        << s[i]->name << ": initialize(seed) did not give this rank its block";
    std::vector<float> values = random_values(w[i]->value.numel(), seed++, -scale, scale);
    w[i]->value.copy_from_host(values);
    s[i]->value.copy_from_host(block_of(values, s[i]->layout, place));
  }
}

// Forward and backward of both layers on the same x and dy; the outputs, input gradients and every
// parameter gradient (this rank's block, and gathered whole) agree within kTolerance.
void expect_same_step(nn::Layer& split, nn::Layer& whole, const Tensor& x, const Tensor& dy,
                      const comm::ProcessGrid& grid, const std::string& what) {
  split.zero_grad();
  whole.zero_grad();
  nn::ForwardResult fs = split.forward(x, {});
  nn::ForwardResult fw = whole.forward(x, {});
  EXPECT_LE(relative_difference(fs.output.to_host(), fw.output.to_host()), kTolerance)
      << what << ": output";
  const Tensor dxs = split.backward(dy, std::move(fs.ctx));
  const Tensor dxw = whole.backward(dy, std::move(fw.ctx));
  ASSERT_EQ(dxs.defined(), dxw.defined()) << what;
  if (dxw.defined()) {
    EXPECT_LE(relative_difference(dxs.to_host(), dxw.to_host()), kTolerance)
        << what << ": input gradient";
  }
  const std::vector<nn::Parameter*> s = split.all_parameters();
  const std::vector<nn::Parameter*> w = whole.all_parameters();
  for (size_t i = 0; i < s.size(); ++i) {
    const std::vector<float> want = w[i]->grad.to_host();
    EXPECT_LE(relative_difference(s[i]->grad.to_host(), block_of(want, s[i]->layout, grid.place())),
              kTolerance)
        << what << ": " << s[i]->name << " gradient (this rank's block, "
        << s[i]->layout.to_string() << ")";
    EXPECT_LE(relative_difference(
                  gather_whole(s[i]->grad, s[i]->layout, grid.place(), grid.trainer()), want),
              kTolerance)
        << what << ": " << s[i]->name << " gradient gathered whole";
  }
}

// Ids in [0, vocab), the same on every rank, with the first and last id of every rank's block.
Tensor ids(const Shape& shape, Index vocab, std::uint64_t seed) {
  std::vector<float> v = random_values(numel(shape), seed, 0.0F, static_cast<float>(vocab));
  for (float& e : v) {
    e = std::floor(e);
  }
  Index k = 0;
  for (int r = 0; r < world_size() && k + 1 < static_cast<Index>(v.size()); ++r) {
    const Range b = block_range(vocab, world_size(), r);
    v[static_cast<size_t>(k++)] = static_cast<float>(b.offset);
    v[static_cast<size_t>(k++)] = static_cast<float>(b.offset + b.count - 1);
  }
  return Tensor::from_host("ids", shape, v);
}

nn::EmbeddingOptions embedding_options(Index vocab, Index dim, Index positions, bool split) {
  nn::EmbeddingOptions o;
  o.vocab = vocab;
  o.dim = dim;
  o.positions = positions;
  o.split = split;
  return o;
}

}  // namespace

TEST(AttentionTensorParallel, HeadsSplitMatchWholeLayer) {
  const comm::ProcessGrid grid(MPI_COMM_WORLD, tensor_world());
  const int tensor = world_size();
  struct Case {
    Index tokens, features, heads;
    bool bias;
  };
  // 12 heads split over 1-4 ranks; 4 heads of 16 over 70 tokens (two query blocks) except at 3.
  int ran = 0;
  for (const Case& c : {Case{10, 48, 12, true}, Case{9, 24, 12, false}, Case{70, 64, 4, true}}) {
    const std::string what = "T " + std::to_string(c.tokens) + ", C " + std::to_string(c.features) +
                             ", H " + std::to_string(c.heads) + (c.bias ? "" : ", no bias") +
                             " over " + std::to_string(tensor);
    if (c.heads % tensor != 0) {
      continue;  // the constructor refuses it (BadSplitsAreRefusedOnEveryRank)
    }
    ++ran;
    nn::CausalSelfAttention split("attn", {c.tokens, c.features},
                                  nn::AttentionOptions{c.heads, c.bias, true},
                                  nn::BuildContext(grid));
    nn::CausalSelfAttention whole("attn", {c.tokens, c.features},
                                  nn::AttentionOptions{c.heads, c.bias, false});
    EXPECT_EQ(split.local_heads(), c.heads / tensor) << what;
    split.initialize(7);
    whole.initialize(7);
    same_parameters(split, whole, grid.place(), 0.5F);
    const Tensor x = random_tensor("x", {3, c.tokens, c.features}, 11);
    const Tensor dy = random_tensor("dy", {3, c.tokens, c.features}, 12);
    expect_same_step(split, whole, x, dy, grid, what);
    // As a model's first layer: no input gradient, no allreduce, the same parameter gradients.
    split.set_needs_input_grad(false);
    whole.set_needs_input_grad(false);
    expect_same_step(split, whole, x, dy, grid, what + ", first layer");
  }
  EXPECT_GE(ran, 2);
}

TEST(AttentionTensorParallel, VocabularySplitMatchesWholeLayer) {
  const comm::ProcessGrid grid(MPI_COMM_WORLD, tensor_world());
  for (const Index vocab : {Index{257}, Index{256}, Index{5}}) {
    const std::string what = "V " + std::to_string(vocab) + " over " + std::to_string(world_size());
    nn::Embedding split("emb", {6}, embedding_options(vocab, 8, 9, true), nn::BuildContext(grid));
    nn::Embedding whole("emb", {6}, embedding_options(vocab, 8, 9, false));
    const Range block = block_range(vocab, world_size(), grid.place().coord_of(GridAxis::tensor));
    EXPECT_EQ(split.vocab_block().offset, block.offset) << what;
    EXPECT_EQ(split.vocab_block().count, block.count) << what;
    split.initialize(3);
    whole.initialize(3);
    same_parameters(split, whole, grid.place(), 1.0F);
    const Tensor x = ids({4, 6}, vocab, 21);
    const Tensor dy = random_tensor("dy", {4, 6, 8}, 22);
    expect_same_step(split, whole, x, dy, grid, what);
    split.set_needs_input_grad(false);
    whole.set_needs_input_grad(false);
    expect_same_step(split, whole, x, dy, grid, what + ", first layer");
    // A bad id fails on every rank alike, before the allreduce.
    std::vector<float> bad = x.to_host();
    bad[5] = static_cast<float>(vocab);
    EXPECT_EQ(error_of([&] {
                (void)split.forward(Tensor::from_host("x", {4, 6}, bad), {});
              }),
              "embedding 'emb': token id " + std::to_string(vocab) +
                  " at sample 0, position 5 is not an integer in [0, " + std::to_string(vocab) +
                  ") (option vocab)");
  }
}

TEST(AttentionTensorParallel, SplitChainMatchesWholeChain) {
  // embedding (vocabulary split) → attention (heads split) → attention (whole), the way a GPT
  // block chains them; the model's input is data, so the embedding computes no input gradient
  // while the first attention's dx is summed over tensor.
  const comm::ProcessGrid grid(MPI_COMM_WORLD, tensor_world());
  const Index t = 7, c = 24, vocab = 257;
  const auto build = [&](bool split) {
    const nn::BuildContext context = split ? nn::BuildContext(grid) : nn::BuildContext();
    auto model = std::make_unique<nn::Sequential>("gpt", Shape{t}, context);
    model->emplace<nn::Embedding>("emb", embedding_options(vocab, c, 8, split), context);
    model->emplace<nn::CausalSelfAttention>("attn0", nn::AttentionOptions{12, true, split},
                                            context);
    model->emplace<nn::CausalSelfAttention>("attn1", nn::AttentionOptions{6, true, false}, context);
    model->set_needs_input_grad(false);
    return model;
  };
  const std::unique_ptr<nn::Sequential> split = build(true);
  const std::unique_ptr<nn::Sequential> whole = build(false);
  EXPECT_FALSE((*split)[0].needs_input_grad());
  EXPECT_TRUE((*split)[1].needs_input_grad());
  EXPECT_EQ(split->output_layout(), Layout::replicated({t, c}));
  split->initialize(5);
  whole->initialize(5);
  same_parameters(*split, *whole, grid.place(), 0.5F);
  expect_same_step(*split, *whole, ids({3, t}, vocab, 31), random_tensor("dy", {3, t, c}, 32), grid,
                   "chain over " + std::to_string(world_size()));
}

TEST(AttentionTensorParallel, BadSplitsAreRefusedOnEveryRank) {
  const comm::ProcessGrid grid(MPI_COMM_WORLD, tensor_world());
  const int tensor = world_size();
  const std::string heads = tensor == 4 ? "6" : "5";  // 6 over 4, else 5 over 2 or 3
  const std::string message = error_of([&] {
    nn::CausalSelfAttention("a1", {8, 60}, nn::AttentionOptions{std::stoll(heads), true, true},
                            nn::BuildContext(grid));
  });
  if (tensor == 1) {
    EXPECT_EQ(message, "no error");
  } else {
    EXPECT_EQ(message, "attention 'a1': heads = " + heads + " do not split over " +
                           std::to_string(tensor) + " tensor ranks");
  }
  const std::string vocab = error_of(
      [&] { nn::Embedding("e0", {4}, embedding_options(1, 8, 8, true), nn::BuildContext(grid)); });
  EXPECT_EQ(vocab, tensor == 1 ? "no error"
                               : "embedding 'e0': split = true cuts its vocabulary of 1 tokens "
                                 "over " +
                                     std::to_string(tensor) +
                                     " tensor ranks; every rank needs at least one");
}
