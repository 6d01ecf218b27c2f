#pragma once
// Multi-head causal self-attention, as GPT-2's (nanoGPT's CausalSelfAttention): a fused q/k/v
// projection, scaled dot-product attention of every token on itself and the tokens before it, the
// heads concatenated and projected back. Whole on every rank, or with its heads split over the
// tensor axis as Megatron-LM splits them (ParallelAttention: the fused projection column-split,
// the output projection row-split).
#include "tessera/kernels/attention.hpp"
#include "tessera/nn/layer.hpp"
#include "tessera/nn/tensor_parallel.hpp"

namespace tessera::nn {

struct AttentionOptions {
  Index heads = 0;     ///< H >= 1, dividing the features C (head width D = C / H)
  bool bias = true;    ///< biases on both projections
  bool split = false;  ///< heads split over the tensor axis (H a multiple of the tensor size)
};

/// x: (N, T, C) → (N, T, C), samples (T, C) of T tokens of C features.
///
///   qkv = x · Wqkvᵀ + bqkv                  (N, T, 3C): columns [0, C) q, [C, 2C) k, [2C, 3C) v
///   y_h = softmax(q_h k_hᵀ / √D + mask) v_h  head h: columns [h·D, (h+1)·D) of each of q, k, v;
///                                            mask: token t attends to tokens 0..t
///   y   = [y_0, ..., y_{H-1}]                (N, T, C)
///   out = y · Wprojᵀ + bproj                 (N, T, C)
///
/// Parameters "<name>.qkv.weight" (3C, C) (rows [0, C) make q, [C, 2C) k, [2C, 3C) v, as
/// nanoGPT's c_attn), "<name>.qkv.bias" (3C,), "<name>.proj.weight" (C, C), "<name>.proj.bias"
/// (C,); weights N(0, 0.02²) with weight decay, biases 0 without (the biases only with
/// options.bias). The softmax is max-subtracted; memory-efficient (FlashAttention's way): nothing
/// of size T × T is kept for backward, which recomputes the probabilities from the saved
/// log-sum-exp of every row (kernels/attention.hpp).
///
/// Split over the tensor axis of S ranks (split = true, H a multiple of S; Megatron-LM's heads
/// split): rank r holds heads [r·H/S, (r+1)·H/S), i.e. its block of the q rows, of the k rows and
/// of the v rows of qkv.weight — Layout::split({3C, C}, 0, tensor, 3), a strided split, and the
/// same for qkv.bias — and the matching input columns of proj.weight, Layout::split({C, C}, 1,
/// tensor); proj.bias is replicated and added once, by tensor rank 0 before the sum. Forward
/// enters with copy_to (nothing moves: every rank holds the whole input), computes its heads and
/// its partial projection, and leaves with reduce_from (one allreduce over tensor of (N, T, C)).
/// Backward: no communication but copy_to's allreduce of dx, only where dx is needed; every
/// rank's proj.bias gradient is the same. At S = 1 it is the whole layer.
class CausalSelfAttention : public Layer {
 public:
  /// `input` is one sample's shape (T, C); `context` the grid place and tensor communicator.
  CausalSelfAttention(std::string name, const Shape& input, const AttentionOptions& options,
                      BuildContext context = {});

  const char* kind() const override { return "attention"; }
  /// (T, C) → (T, C).
  Shape output_shape(const Shape& input) const override;
  /// Whole (T, C) in and out; split with sequence parallelism, a token slice in (gathered) and the
  /// sum's token slice out (reduce-scatter).
  Layout place_input(const Layout& input) override;

  /// ctx.saved = {x (N, T, C), qkv (N, T, 3·C_r), y (N, T, C_r), lse (N, H_r, T)}: the input (for
  /// dWqkv), this rank's q/k/v, its heads' output before the projection and each query row's
  /// log-sum-exp; H_r = H / S heads and C_r = H_r · D features on this rank (H and C whole).
  ForwardResult forward(const Tensor& x, const ForwardOptions& options) override;
  Tensor backward(const Tensor& dy, Context&& ctx) override;

  Index tokens() const { return m_tokens; }
  Index features() const { return m_features; }  ///< C
  Index heads() const { return m_heads; }        ///< H, whole
  Index local_heads() const { return m_local_heads; }
  Index head_dim() const { return m_features / m_heads; }
  bool has_bias() const { return m_bias; }
  bool split() const { return m_split; }
  Parameter& qkv_weight() { return parameters()[0]; }
  /// Only when has_bias().
  Parameter& qkv_bias() { return parameters()[1]; }
  Parameter& proj_weight() { return parameters()[m_bias ? 2 : 1]; }
  /// Only when has_bias().
  Parameter& proj_bias() { return parameters()[3]; }

 private:
  kernels::AttentionShape attention_shape(Index batch) const;

  Index m_tokens = 0;
  Index m_features = 0;  // C, whole
  Index m_heads = 0;     // H, whole
  Index m_local_heads = 0;
  Shape m_local_x;             // this rank's input sample as place_input left it
  Shape m_local_y;             // this rank's output sample
  bool m_sliced = false;       // the input is a token slice (sequence parallelism)
  Index m_local_features = 0;  // C_r = H_r · D
  bool m_bias = true;
  bool m_split = false;
  TensorRegion m_region;
  // Reused from step to step (BufferPool): what forward hands out or saves, backward's scratch.
  BufferPool m_qkv;         // (N, T, 3·C_r)
  BufferPool m_heads_out;   // y (N, T, C_r)
  BufferPool m_lse;         // (N, H_r, T)
  BufferPool m_output;      // (N, T, C)
  BufferPool m_scratch;     // kernels::attention_scratch_shape(T)
  BufferPool m_heads_grad;  // dy (N, T, C_r)
  BufferPool m_qkv_grad;    // (N, T, 3·C_r)
  BufferPool m_input_grad;  // (N, T, C)
};

}  // namespace tessera::nn
