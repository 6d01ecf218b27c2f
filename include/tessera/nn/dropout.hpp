#pragma once
// Inverted dropout: in training each element is kept with probability 1 - p and scaled by
// 1 / (1 - p), so evaluation (and p == 0) is the identity. The mask is a pure function of
// (run seed, layer name, optimizer step, GLOBAL element index), so it does not depend on how the
// batch is split over data-parallel ranks: element j of local sample n is kept iff
//   CounterRng(options.seed, dropout_stream(name, options.step))
//       .uniform((options.sample_offset + n) * sample_numel + j) >= p.
#include "tessera/nn/layer.hpp"

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tessera::nn {

struct DropoutOptions {
  float p = 0.5F;  ///< probability of dropping an element, 0 <= p < 1
};

/// The random stream of layer `name` at optimizer step `step`: rng::hash_name(name) XOR the
/// SplitMix64 finalizer of `step`, so every step of every layer draws a fresh mask.
std::uint64_t dropout_stream(std::string_view name, std::uint64_t step);

class Dropout : public Layer {
 public:
  /// `input`: one sample's shape (batch excluded), every extent >= 1.
  Dropout(std::string name, const Shape& input, const DropoutOptions& options,
          BuildContext context = {});

  const char* kind() const override { return "dropout"; }
  /// The input shape.
  Shape output_shape(const Shape& input) const override;
  /// Passes a split of the sample's first dimension through (a token slice under sequence
  /// parallelism): each element draws the mask of its global position, so the masks are the
  /// whole batch's on any grid.
  Layout place_input(const Layout& input) override;
  /// x: (N, input...) -> (N, input...). Training with p > 0: ctx.saved = {mask}, mask_i being
  /// 0 or 1 / (1 - p) (so dx = dy · mask). Evaluation or p == 0: a copy of x, ctx.saved = {}.
  ForwardResult forward(const Tensor& x, const ForwardOptions& options) override;
  /// dy: (N, input...) -> dx = dy · mask (a copy of dy when forward was the identity).
  Tensor backward(const Tensor& dy, Context&& ctx) override;

  float p() const { return m_options.p; }

 private:
  Shape m_input;                 // one sample
  Shape m_local_input;           // this rank's part of it
  Index m_local_offset = 0;      // where that part starts in the sample (elements)
  IndexView m_offsets;  // a spatial tile: each local element's index in the sample (else empty)
  DropoutOptions m_options;
};

}  // namespace tessera::nn
