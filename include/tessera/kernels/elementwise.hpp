#pragma once
// Element-wise kernels: the activations (forward and backward), element-wise product and the
// dropout mask. The numerics of each function live in small inline functions (namespace act),
// separate from the loops that launch them over a whole tensor (AMReX style), so that a fused
// kernel elsewhere can call exactly the same formula. Sums, dots, axpy, scale and add are in
// kernels/reduce.hpp.
#include "tessera/core/math.hpp"
#include "tessera/core/tensor.hpp"

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace tessera::kernels {

enum class ActivationKind { relu, leaky_relu, gelu, tanh, sigmoid };

/// The deck's name: "relu", "leaky_relu", "gelu", "tanh", "sigmoid".
const char* activation_name(ActivationKind kind);
/// The kind named `name` (one of activation_name's results), or nullopt.
std::optional<ActivationKind> activation_from_name(std::string_view name);

/// Which tensor activation_backward() needs: the forward input x or the forward output y.
enum class ActivationSaved { input, output };
/// The cheaper tensor to keep for backward. The output wherever the derivative can be written in
/// terms of it (ReLU; LeakyReLU with negative_slope >= 0; Tanh; Sigmoid), because the output is
/// usually kept anyway as the next layer's input; the input for GELU and for LeakyReLU with a
/// negative slope (whose output sign no longer tells the input's).
ActivationSaved activation_saved(ActivationKind kind, float negative_slope = 0.01F);

/// y = f(x) element-wise (same numel; y may alias x). negative_slope is LeakyReLU's.
void activation_forward(ActivationKind kind, const Tensor& x, const Tensor& y,
                        float negative_slope = 0.01F);
/// dx = f'(.) · dy element-wise, where `saved` is the forward input or output as
/// activation_saved(kind, negative_slope) says (same numel; dx may alias dy).
void activation_backward(ActivationKind kind, const Tensor& saved, const Tensor& dy,
                         const Tensor& dx, float negative_slope = 0.01F);

/// out = a · b element-wise (same numel; out may alias a or b).
void multiply(const Tensor& a, const Tensor& b, const Tensor& out);

/// Inverted dropout. Element i is kept iff CounterRng(seed, stream).uniform(first_counter + i) >=
/// p; then mask_i = 1 / (1 - p) and y_i = x_i · mask_i, else mask_i = y_i = 0. Requires 0 <= p < 1.
/// first_counter is the global counter of x's first element, so that a rank holding samples
/// [offset, offset + n) of the global batch draws exactly their part of the whole batch's mask.
/// With block > 0, x is blocks of `block` elements whose first elements are `block_stride`
/// counters apart (a rank's slice of every sample): element i draws counter first_counter +
/// (i / block) · block_stride + i % block.
void dropout_forward(const Tensor& x, const Tensor& y, const Tensor& mask, float p,
                     std::uint64_t seed, std::uint64_t stream, std::uint64_t first_counter,
                     Index block = 0, std::uint64_t block_stride = 0);
/// The same for a rank's block of every sample that is not one contiguous slice (a spatial tile):
/// x is blocks of offsets.extent(0) elements, block k's first `block_stride` counters after the one
/// before, and element i draws counter first_counter + (i / b) · block_stride + offsets[i % b].
void dropout_forward_indexed(const Tensor& x, const Tensor& y, const Tensor& mask, float p,
                             std::uint64_t seed, std::uint64_t stream, std::uint64_t first_counter,
                             const IndexView& offsets, std::uint64_t block_stride);

/// The per-element formulas. f(x) forward; *_grad(s, dy) backward, s the saved tensor's element.
namespace act {

inline constexpr float kInvSqrt2 = 0.70710678118654752440F;    // 1/√2
inline constexpr float kInvSqrt2Pi = 0.39894228040143267794F;  // 1/√(2π)

KOKKOS_INLINE_FUNCTION float relu(float x) {
  return x > 0.0F ? x : 0.0F;
}
/// From the input or the output: y > 0 exactly where x > 0. The derivative at 0 is taken as 0.
KOKKOS_INLINE_FUNCTION float relu_grad(float s, float dy) {
  return s > 0.0F ? dy : 0.0F;
}

KOKKOS_INLINE_FUNCTION float leaky_relu(float x, float slope) {
  return x > 0.0F ? x : slope * x;
}
/// From the input, or from the output when slope >= 0. The derivative at 0 is taken as `slope`.
KOKKOS_INLINE_FUNCTION float leaky_relu_grad(float s, float dy, float slope) {
  return s > 0.0F ? dy : slope * dy;
}

/// Exact GELU: x · Φ(x) = x/2 · (1 + erf(x/√2)) (PyTorch's default, approximate='none').
KOKKOS_INLINE_FUNCTION float gelu(float x) {
  return 0.5F * x * (1.0F + math::erf(x * kInvSqrt2));
}
/// From the input: Φ(x) + x · φ(x).
KOKKOS_INLINE_FUNCTION float gelu_grad(float x, float dy) {
  const float cdf = 0.5F * (1.0F + math::erf(x * kInvSqrt2));
  const float pdf = kInvSqrt2Pi * math::exp(-0.5F * x * x);
  return dy * (cdf + x * pdf);
}

KOKKOS_INLINE_FUNCTION float tanh(float x) {
  return math::tanh(x);
}
/// From the output: 1 - y².
KOKKOS_INLINE_FUNCTION float tanh_grad(float y, float dy) {
  return dy * (1.0F - y * y);
}

/// 1 / (1 + e^-x), written so that exp never overflows.
KOKKOS_INLINE_FUNCTION float sigmoid(float x) {
  if (x >= 0.0F) {
    return 1.0F / (1.0F + math::exp(-x));
  }
  const float e = math::exp(x);
  return e / (1.0F + e);
}
/// From the output: y · (1 - y).
KOKKOS_INLINE_FUNCTION float sigmoid_grad(float y, float dy) {
  return dy * y * (1.0F - y);
}

/// Dropout's keep decision for a uniform draw u in [0, 1).
KOKKOS_INLINE_FUNCTION bool dropout_keep(float u, float p) {
  return u >= p;
}

}  // namespace act
}  // namespace tessera::kernels
