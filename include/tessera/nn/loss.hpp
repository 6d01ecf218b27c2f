#pragma once
// Losses. Each returns this rank's share of the mean over the GLOBAL batch (DESIGN.md, idea 3):
//   loss = (Σ over local samples of the per-sample loss) / global_batch,
// so summing LossOutput::loss over the data-parallel ranks gives the global mean, and the
// gradients summed over ranks are those of the global mean. grad = dloss/dprediction.
#include "tessera/core/tensor.hpp"

namespace tessera::nn {

struct LossOutput {
  double loss = 0.0;  ///< Σ_local per-sample loss / global_batch
  Index correct = 0;  ///< local samples whose argmax equals the label (0 for regression losses)
  Tensor grad;        ///< dloss/dprediction, the prediction's shape
};

/// Per-sample loss log Σ_c exp(logits_nc) - logits_n,label (computed max-shifted, in double);
/// grad = (softmax(logits) - onehot(label)) / global_batch. logits: (N, classes) with N >= 1 and
/// classes >= 1; labels: (N), each in [0, classes); global_batch >= N. The argmax of a row with
/// tied maxima is its first maximum.
LossOutput softmax_cross_entropy(const Tensor& logits, const IntView& labels, Index global_batch);

/// Per-sample loss mean_f (prediction_nf - target_nf)² (with global_batch == N: PyTorch's MSELoss
/// with reduction 'mean'); grad = 2 (prediction - target) / (F · global_batch), F the elements
/// per sample. prediction, target: (N, F...) of equal shape, N >= 1, F >= 1; global_batch >= N.
LossOutput mean_squared_error(const Tensor& prediction, const Tensor& target, Index global_batch);

}  // namespace tessera::nn
