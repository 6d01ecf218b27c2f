#pragma once
// Row-wise softmax and log-softmax of a (rows, cols) tensor, and their backward passes. Every row
// is shifted by its maximum before exponentiating, so no exp overflows whatever the logits; the
// row sums accumulate in double. One row per work item.
#include "tessera/core/tensor.hpp"

namespace tessera::kernels {

/// y_ij = exp(x_ij - max_j x_ij) / Σ_k exp(x_ik - max_j x_ij). x, y: (rows, cols); y may alias x.
void softmax(const Tensor& x, const Tensor& y);
/// y_ij = x_ij - max_j x_ij - log Σ_k exp(x_ik - max_j x_ij). x, y: (rows, cols); y may alias x.
void log_softmax(const Tensor& x, const Tensor& y);

/// From the softmax output y: dx_ij = y_ij · (dy_ij - Σ_k dy_ik · y_ik). All (rows, cols); dx may
/// alias dy.
void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx);
/// From the log-softmax output y: dx_ij = dy_ij - exp(y_ij) · Σ_k dy_ik. All (rows, cols); dx
/// may alias dy.
void log_softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx);

}  // namespace tessera::kernels
