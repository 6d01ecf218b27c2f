#pragma once
// Megatron-LM's conjugate operators on the tensor axis (tensor_parallel/mappings.py), the only
// communication of a tensor-parallel layer, called at the edges of its split region:
//
//   operator      forward                         backward
//   copy_to       x unchanged (every rank)        dx summed over the axis (allreduce)
//   reduce_from   y summed over the axis          dy unchanged
//
// A column-split layer (output features split) enters the region with copy_to; a row-split layer
// (input features split) leaves it with reduce_from; between the two, activations stay split and
// nothing is communicated. (gather_from / scatter_to, for sequence parallelism and the
// vocabulary-parallel layers, join them with the transformer.) Each half works in place on this
// rank's tensor and does nothing on an axis of one rank.
#include "tessera/core/tensor.hpp"
#include "tessera/nn/build_context.hpp"

namespace tessera::nn {

class TensorRegion {
 public:
  /// The tensor axis of `context` (none when it has one rank).
  explicit TensorRegion(const BuildContext& context);

  int size() const { return m_size; }

  void copy_to_forward(const Tensor& /*x*/) const {}
  /// dx (partial over the axis: each rank's part of the input gradient) becomes the sum.
  void copy_to_backward(const Tensor& dx) const { sum(dx); }
  /// y (partial over the axis) becomes the sum.
  void reduce_from_forward(const Tensor& y) const { sum(y); }
  void reduce_from_backward(const Tensor& /*dy*/) const {}

 private:
  void sum(const Tensor& t) const;
  comm::Communicator* m_comm = nullptr;
  int m_size = 1;
};

}  // namespace tessera::nn
