#pragma once
// Token + position embedding, the first layer of a GPT-style language model (GPT-2's wte + wpe):
// whole on every rank, or with the token table's rows split over the tensor axis, Megatron-LM's
// VocabParallelEmbedding.
#include "tessera/core/layout.hpp"
#include "tessera/nn/layer.hpp"
#include "tessera/nn/tensor_parallel.hpp"

namespace tessera::nn {

struct EmbeddingOptions {
  Index vocab = 0;      ///< V >= 1: token ids are the integers 0..V-1
  Index dim = 0;        ///< C >= 1: features per token
  Index positions = 0;  ///< P >= 1: rows of the position table, at least the sample's tokens
  bool split = false;   ///< the token table's rows (the vocabulary) split over the tensor axis
};

/// x: (N, T) token ids (float32 holding exact integers in [0, V)) → y: (N, T, C),
/// y[n, t] = wte[x[n, t]] + wpe[t].
///
/// Parameters "<name>.wte" (V, C) and "<name>.wpe" (P, C), both N(0, 0.02²) (GPT-2) and both
/// without weight decay: an embedding row is a lookup, not a weight of a product, and decaying
/// every row every step shrinks the rows of rare tokens, which seldom get a gradient (minGPT's
/// choice; a deck that wants them decayed can say so where the optimizer groups are made).
///
/// Backward: dwte += the rows of dy scattered to their ids (summed, in a fixed order: the result
/// does not depend on threads), dwpe += dy summed over the batch. The ids are data: dL/dx is 0
/// wherever it is defined (the output does not change under a small change of an integer id), so
/// backward returns an undefined Tensor when needs_input_grad() is false (a model's first layer)
/// and a zero (N, T) tensor when it is asked for one.
///
/// Split (split = true, the tensor axis of S ranks; Megatron-LM's vocabulary-parallel embedding):
/// wte is Layout::split({V, C}, 0, tensor), blocks of rows that need not be even (V = 257 over 3
/// ranks: 86, 86, 85 — any vocabulary, no padding, exact); every rank needs at least one row.
/// Each rank writes the rows of the ids in its block and zero for the others, tensor rank 0 adds
/// wpe (replicated), and the output is summed over tensor (reduce_from: one allreduce of
/// (N, T, C)); whole samples in, whole samples out. Backward has no communication: each rank
/// accumulates dwte for its rows only, and dwpe, the same on every rank.
class Embedding : public Layer {
 public:
  /// `input` is one sample's shape (T,), T <= options.positions.
  Embedding(std::string name, const Shape& input, const EmbeddingOptions& options,
            BuildContext context = {});

  const char* kind() const override { return "embedding"; }
  /// (T,) → (T, C).
  Shape output_shape(const Shape& input) const override;
  /// Whole (T,) in; whole (T, C) out, or split with sequence parallelism this rank's token slice
  /// of the sum (reduce-scatter instead of allreduce).
  Layout place_input(const Layout& input) override;

  /// ctx.saved = {x (N, T)}: the ids, where backward scatters dy. Throws, naming the id, its
  /// sample and position, when an id is not an integer in [0, V) (on every rank of the tensor
  /// axis alike: they read the same samples).
  ForwardResult forward(const Tensor& x, const ForwardOptions& options) override;
  Tensor backward(const Tensor& dy, Context&& ctx) override;

  Index tokens() const { return m_tokens; }
  Index vocab() const { return m_vocab; }
  Index dim() const { return m_dim; }
  Index positions() const { return m_positions; }
  bool split() const { return m_split; }
  /// The rows of wte this rank holds: [offset, offset + count) of the vocabulary.
  Range vocab_block() const { return m_block; }
  /// (V, C), this rank's rows.
  Parameter& wte() { return parameters()[0]; }
  /// (P, C), whole.
  Parameter& wpe() { return parameters()[1]; }

 private:
  Index m_tokens = 0;     // T
  Index m_vocab = 0;      // V, whole
  Index m_dim = 0;        // C
  Index m_positions = 0;  // P
  bool m_split = false;
  Range m_block;    // this rank's rows of wte
  Shape m_local_y;  // this rank's output sample: (T, C), or its token slice
  TensorRegion m_region;
  BufferPool m_output;      // (N, T, C)
  BufferPool m_input_grad;  // (N, T): zeros, only when asked for
};

/// The language-model head tied to an Embedding's token table (GPT-2's, "weight tying"): logits
/// y = x · wteᵀ, (N, T, C) → (N, T, V), no bias and no parameters of its own — the gradient
/// dyᵀ · x accumulates into the embedding's wte gradient (which is final, for the data-parallel
/// reduction, once the embedding's own backward has run: the head comes after it in the model).
/// Split like the embedding: with split = true it is Megatron-LM's vocabulary-parallel head, a
/// column-split product over the rows of wte this rank holds, its output split over tensor on
/// the vocabulary (the loss is then the vocabulary-parallel cross entropy); it enters the region
/// with copy_to, or by gathering token slices under sequence parallelism. The deck's `tied_head`
/// ties to the model's first embedding (bind(), before the head is placed).
class TiedHead : public Layer {
 public:
  /// `input` is one sample's shape (T, C).
  TiedHead(std::string name, const Shape& input, BuildContext context = {});

  const char* kind() const override { return "tied_head"; }
  /// Ties the head to `embedding`, whose dim must be the input's features.
  void bind(Embedding& embedding);
  /// Ties the head to a copy of an embedding that lives on an earlier pipeline stage, and holds it:
  /// the copy's parameters, named as the original's, are this layer's children's, so the stage
  /// updates them; the trainer sums their gradients with the original's over the stages that hold
  /// them (parallel::DataParallel), which keeps the copies equal.
  void hold(std::unique_ptr<Embedding> copy);
  std::vector<Layer*> children() override;
  bool bound() const { return m_embedding != nullptr; }
  /// (T, C) → (T, V).
  Shape output_shape(const Shape& input) const override;
  /// Whole (or a token slice under sequence parallelism) in; out split on the vocabulary when the
  /// embedding is split, else whole.
  Layout place_input(const Layout& input) override;
  /// ctx.saved = {x (N, T, C)}: the whole tokens' input.
  ForwardResult forward(const Tensor& x, const ForwardOptions& options) override;
  Tensor backward(const Tensor& dy, Context&& ctx) override;

 private:
  Embedding& embedding() const;

  Shape m_input;  // (T, C)
  Embedding* m_embedding = nullptr;
  std::unique_ptr<Embedding> m_copy;  // the embedding of an earlier pipeline stage, copied
  Shape m_local_x;
  Shape m_local_y;
  bool m_sliced = false;
  TensorRegion m_region;
  BufferPool m_output;      // (N, T, V_r)
  BufferPool m_input_grad;  // (N, T, C)
};

}  // namespace tessera::nn
