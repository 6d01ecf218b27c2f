#pragma once
// The core of causal multi-head self-attention, FlashAttention's way on the host: the scores of
// one head are computed a block of query rows at a time into a scratch that every head and block
// reuses, the softmax is max-subtracted, and the forward pass keeps only each row's log-sum-exp,
// from which the backward pass recomputes the probabilities. Nothing of size T × T outlives a call.
//
// Layout of the fused projection (nanoGPT's c_attn, Megatron-LM's per-rank block of it): a token's
// row of qkv holds q of every head, then k, then v, each H·D wide; head h reads columns
// [h·D, (h+1)·D) of each. Row t attends to rows 0..t (the causal mask), scores scaled by 1/√D.
//
// The products are kernels::gemm calls on (n, h, row block) slices, the row-wise numerics Kokkos
// kernels ("Attention::softmax", "Attention::softmax_backward"). Host memory only, like
// kernels::gemm's host path.
#include "tessera/core/tensor.hpp"

namespace tessera::kernels {

/// The geometry of one call: N samples of T tokens, H heads of width D (H·D columns of each of q,
/// k, v and of the output).
struct AttentionShape {
  Index batch = 0;     ///< N
  Index tokens = 0;    ///< T
  Index heads = 0;     ///< H
  Index head_dim = 0;  ///< D
  /// H·D: the width of q, of k, of v and of the output.
  Index width() const { return heads * head_dim; }
};

/// Query rows per block of scores: a block of rows [r0, r1) computes scores against keys [0, r1)
/// only, so the causal mask skips about half of the work for long sequences.
inline constexpr Index kAttentionBlockRows = 64;

/// The scratch that causal_attention_forward/backward need for sequences of `tokens`:
/// (2, min(T, kAttentionBlockRows), T) floats — two blocks of scores, reused by every head.
Shape attention_scratch_shape(Index tokens);

/// y (N, T, H·D) = softmax(q kᵀ / √D, causal) v per head, heads side by side; lse (N, H, T) the
/// natural log of each row's softmax denominator, with the row maximum included (what backward
/// needs to recompute the probabilities). qkv: (N, T, 3·H·D). scratch: at least
/// attention_scratch_shape(T) elements; its contents are unspecified after the call.
void causal_attention_forward(const Tensor& qkv, const AttentionShape& shape, const Tensor& y,
                              const Tensor& lse, const Tensor& scratch);

/// The exact gradient of causal_attention_forward: dqkv (N, T, 3·H·D) is OVERWRITTEN with dL/dqkv
/// given dy = dL/dy (N, T, H·D), from the forward pass's qkv, y and lse. Per head and query block,
/// with P recomputed as exp(s - lse): dV = Pᵀ dY, dP = dY Vᵀ, dS = P ∘ (dP − rowsum(dY ∘ Y)),
/// dQ = dS K / √D, dK = dSᵀ Q / √D.
void causal_attention_backward(const Tensor& qkv, const Tensor& y, const Tensor& lse,
                               const Tensor& dy, const AttentionShape& shape, const Tensor& dqkv,
                               const Tensor& scratch);

}  // namespace tessera::kernels
