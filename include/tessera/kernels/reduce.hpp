#pragma once
// Reductions and BLAS-1 style updates over whole tensors (flat views). Reductions accumulate in
// double so that their result does not drift with the tensor's size.
#include "tessera/core/tensor.hpp"

namespace tessera::kernels {

/// Σ x_i.
double sum(const Tensor& x);
/// Σ x_i · y_i (same numel).
double dot(const Tensor& x, const Tensor& y);
/// Σ x_i².
double sum_squares(const Tensor& x);
/// max |x_i| (0 for an empty tensor).
double max_abs(const Tensor& x);
/// The index of the first Inf or NaN of `x`, or -1 when every value is finite.
Index first_nonfinite(const Tensor& x);

/// y += alpha · x (same numel).
void axpy(float alpha, const Tensor& x, const Tensor& y);
/// x *= alpha.
void scale(float alpha, const Tensor& x);
/// out = a + b (same numel; out may alias a or b).
void add(const Tensor& a, const Tensor& b, const Tensor& out);

}  // namespace tessera::kernels
