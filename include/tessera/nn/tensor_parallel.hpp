#pragma once
// Megatron-LM's conjugate operators on the tensor axis (tensor_parallel/mappings.py), the only
// communication of a tensor-parallel layer, called at the edges of its split region:
//
//   operator           forward                              backward
//   copy_to            x unchanged (every rank)             dx summed over the axis (allreduce)
//   reduce_from        y summed over the axis (allreduce)   dy unchanged
//   gather_tokens      x's token slices joined (allgather)  dx summed, each rank keeps its slice
//                                                           (reduce-scatter)
//   reduce_scatter     y summed, each rank keeps its slice  dy's slices joined (allgather)
//
// A column-split layer (output features split) enters the region with copy_to; a row-split layer
// (input features split) leaves it with reduce_from; between the two, activations stay split and
// nothing is communicated. Layers call enter_forward/enter_backward and leave_forward/
// leave_backward, which pick the operator. With sequence parallelism
// (BuildContext::sequence_parallel) the activations outside the regions are split along their
// tokens (dimension 1 of a batch (N, T,
// ...), in equal slices): a region is entered with gather_tokens and left with reduce_scatter,
// which move the same bytes as the allreduce they replace, and the LayerNorms and element-wise
// layers between regions work on 1/tensor of the tokens. Every operator does nothing on an axis
// of one rank, and times its communication on the context's TensorCommClock.
#include "tessera/core/tensor.hpp"
#include "tessera/core/timer.hpp"
#include "tessera/nn/build_context.hpp"
#include "tessera/nn/layer.hpp"

#include <string>
#include <vector>

namespace tessera::nn {

class TensorRegion {
 public:
  /// The tensor axis of `context` (none when it has one rank); `name` labels its buffers.
  TensorRegion(const BuildContext& context, std::string name);

  int size() const { return m_size; }
  /// The layout of activations of global sample `shape` (T, ...) outside a region: split over the
  /// tensor axis on the tokens with sequence parallelism (whatever the tensor size, so that a
  /// deck's placements check the same everywhere), else whole. Throws when the tensor size does not
  /// divide the tokens.
  Layout outside(const Shape& shape) const;
  /// Whether `input` is a token slice as outside() makes it (a column-split layer gathers it).
  bool is_sliced(const Layout& input) const;

  /// x: (N, T/size, ...) this rank's token slice → (N, T, ...) every rank's, in token order.
  Tensor gather_tokens_forward(const Tensor& x);
  /// dx: (N, T, ...) partial over the axis → (N, T/size, ...) the sum's slice of this rank.
  Tensor gather_tokens_backward(const Tensor& dx) { return reduce_scatter_tokens(dx); }
  /// y: (N, T, ...) partial over the axis → (N, T/size, ...) the sum's slice of this rank.
  Tensor reduce_scatter_forward(const Tensor& y) { return reduce_scatter_tokens(y); }
  /// dy: (N, T/size, ...) → (N, T, ...) every rank's slice joined.
  Tensor reduce_scatter_backward(const Tensor& dy) { return gather_tokens_forward(dy); }

  /// Entering a column-split layer: the whole input (gathered from the token slices when
  /// `sliced`); its backward sums dx over the axis (and keeps this rank's slice when `sliced`).
  Tensor enter_forward(const Tensor& x, bool sliced) {
    return sliced ? gather_tokens_forward(x) : x;
  }
  Tensor enter_backward(const Tensor& dx, bool sliced) {
    if (sliced) {
      return gather_tokens_backward(dx);
    }
    sum(dx);  // copy_to's backward
    return dx;
  }
  /// Leaving a row-split layer: y partial over the axis becomes the sum, or this rank's token
  /// slice of it with sequence parallelism; its backward joins dy's slices.
  Tensor leave_forward(const Tensor& y) {
    if (m_sequence) {
      return reduce_scatter_forward(y);
    }
    sum(y);  // reduce_from
    return y;
  }
  Tensor leave_backward(const Tensor& dy) { return m_sequence ? reduce_scatter_backward(dy) : dy; }

 private:
  /// In place: t becomes its sum over the axis (nothing on an axis of one rank).
  void sum(const Tensor& t);
  Tensor reduce_scatter_tokens(const Tensor& t);
  /// Runs the communication `op`, adding its time to the context's TensorCommClock.
  template <class Op>
  void timed(Op&& op) {
    const Stopwatch clock;
    op();
    m_clock->seconds += clock.seconds();
    m_clock->calls += 1;
  }
  comm::Communicator& comm() const;

  comm::Communicator* m_comm = nullptr;
  TensorCommClock* m_clock = nullptr;
  std::string m_name;
  int m_size = 1;
  // The deck's sequence parallelism: activations outside regions are token slices (the layouts)
  // and, with more than one tensor rank, move (the communication).
  bool m_sequence_layout = false;
  bool m_sequence = false;
  BufferPool m_gathered;   // (N, T, ...) outputs of gather_tokens
  BufferPool m_scattered;  // (N, T/size, ...) outputs of reduce_scatter_tokens
  BufferPool m_packs;      // the rank-major order MPI's allgather and reduce-scatter use
};

}  // namespace tessera::nn
