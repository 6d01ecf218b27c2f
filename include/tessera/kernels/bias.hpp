#pragma once
// Per-channel (or per-feature) bias: the broadcast add of the forward pass and its gradient, a
// sum over the batch and the spatial dimensions. Dimension 1 is the channel: y is (N, C, S...) —
// NCHW, NCDHW — or (N, F) for a dense layer (no spatial dimensions).
#include "tessera/core/tensor.hpp"

namespace tessera::kernels {

/// y(n, c, s...) += bias(c) for every n; y: (N, C, S...) or (N, C); bias: (C,).
void add_bias(const Tensor& y, const Tensor& bias);
/// The same for samples [first, first + count) of y only (a chunk still in cache).
void add_bias(const Tensor& y, const Tensor& bias, Index first, Index count);

/// y(n, c, s...) = bias(c) for every n (OVERWRITES y; y's previous contents are never read, so y
/// may be uninitialised): how a dense layer starts its output before a GEMM with beta = 1.
/// y: (N, C, S...) or (N, C); bias: (C,).
void broadcast_bias(const Tensor& y, const Tensor& bias);

/// db(c) += Σ_n Σ_s dy(n, c, s...) (ACCUMULATES); dy: (N, C, S...) or (N, C); db: (C,).
void bias_grad(const Tensor& dy, const Tensor& db);
/// The same summing samples [first, first + count) of dy only.
void bias_grad(const Tensor& dy, const Tensor& db, Index first, Index count);

}  // namespace tessera::kernels
