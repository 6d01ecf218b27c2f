#pragma once
// Losses. Each returns this rank's share of the mean over the GLOBAL batch (DESIGN.md, idea 3):
//   loss = (Σ over local samples of the per-sample loss) / global_batch,
// so summing LossOutput::loss over the data-parallel ranks gives the global mean, and the
// gradients summed over ranks are those of the global mean. grad = dloss/dprediction.
#include "tessera/comm/communicator.hpp"
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

/// softmax_cross_entropy over rows whose classes are split over the ranks of `axis` (a
/// vocabulary-parallel LM head; Megatron-LM's vocab_parallel_cross_entropy): this rank holds
/// `logits` (..., V_local), the classes [offset, offset + V_local) of `classes`, for every row
/// (the leading dimensions flattened: rows = numel / V_local), and `labels` holds one global class
/// per row. The logits are never gathered: each row's maximum, its sum of exponentials with the
/// label's logit, and its first argmax (for `correct`) are reduced over the axis — three
/// allreduces of one value per row. Every rank returns the whole loss and correct count; `grad` is
/// this rank's block, (softmax − onehot) / global_rows. Equal to softmax_cross_entropy on the
/// whole rows up to the sums' reassociation. A label outside [0, classes) is an error naming its
/// row.
LossOutput vocab_parallel_cross_entropy(const Tensor& logits, const IntView& labels,
                                        Index global_rows, Index offset, Index classes,
                                        comm::Communicator& axis);

/// Per-sample loss mean_f (prediction_nf - target_nf)² (with global_batch == N: PyTorch's MSELoss
/// with reduction 'mean'); grad = 2 (prediction - target) / (F · global_batch), F the elements
/// per sample. prediction, target: (N, F...) of equal shape, N >= 1, F >= 1; global_batch >= N.
LossOutput mean_squared_error(const Tensor& prediction, const Tensor& target, Index global_batch);

}  // namespace tessera::nn
