#include "tessera/kernels/elementwise.hpp"

#include "checks.hpp"
#include "tessera/core/check.hpp"
#include "tessera/core/clones.hpp"
#include "tessera/core/rng.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace tessera::kernels {
namespace {
using Policy = Kokkos::RangePolicy<ExecSpace>;

using detail::check_same_size;

// Functors over one element, so that one loop launches every activation.
struct ReluForward {
  KOKKOS_INLINE_FUNCTION float operator()(float x) const { return act::relu(x); }
};
struct LeakyReluForward {
  float slope;
  KOKKOS_INLINE_FUNCTION float operator()(float x) const { return act::leaky_relu(x, slope); }
};
struct GeluForward {
  KOKKOS_INLINE_FUNCTION float operator()(float x) const { return act::gelu(x); }
};
struct TanhForward {
  KOKKOS_INLINE_FUNCTION float operator()(float x) const { return act::tanh(x); }
};
struct SigmoidForward {
  KOKKOS_INLINE_FUNCTION float operator()(float x) const { return act::sigmoid(x); }
};

struct ReluBackward {
  KOKKOS_INLINE_FUNCTION float operator()(float s, float dy) const { return act::relu_grad(s, dy); }
};
struct LeakyReluBackward {
  float slope;
  KOKKOS_INLINE_FUNCTION float operator()(float s, float dy) const {
    return act::leaky_relu_grad(s, dy, slope);
  }
};
struct GeluBackward {
  KOKKOS_INLINE_FUNCTION float operator()(float x, float dy) const { return act::gelu_grad(x, dy); }
};
struct TanhBackward {
  KOKKOS_INLINE_FUNCTION float operator()(float y, float dy) const { return act::tanh_grad(y, dy); }
};
struct SigmoidBackward {
  KOKKOS_INLINE_FUNCTION float operator()(float y, float dy) const {
    return act::sigmoid_grad(y, dy);
  }
};

// --- GELU on the host, vectorised -------------------------------------------------------------
// A transformer's MLP applies GELU to 4C values per token; with libm's scalar erff and expf that
// was 13% of a step. These forms have no library call, so the compiler vectorises the loops
// (cloned for AVX-512): erf as Eigen's rational approximation (|error| <= 3.6e-7, 3 float ulp of 1,
// on [-4, 4]; ±1 beyond), exp(-x²/2) by range reduction to 2^n · e^r with a degree-6 polynomial
// on |r| <= ln2/2 (relative error ~2e-7). GELU and its derivative stay within 1e-6 of the
// double-precision functions (unit_activation), libm's within 1.1e-7.

inline float erf_poly(float x) {
  x = x < -4.0F ? -4.0F : (x > 4.0F ? 4.0F : x);  // comparisons, not fminf: no library call
  const float x2 = x * x;
  float p = -2.72614225801306e-10F;
  p = p * x2 + 2.77068142495902e-08F;
  p = p * x2 - 2.10102402082508e-06F;
  p = p * x2 - 5.69250639462346e-05F;
  p = p * x2 - 7.34990630326855e-04F;
  p = p * x2 - 2.95459980854025e-03F;
  p = p * x2 - 1.60960333262415e-02F;
  p = p * x;
  float q = -1.45660718464996e-05F;
  q = q * x2 - 2.13374055278905e-04F;
  q = q * x2 - 1.68282697438203e-03F;
  q = q * x2 - 7.37332916720468e-03F;
  q = q * x2 - 1.42647390514189e-02F;
  return p / q;
}

// e^y for y <= 0 (underflows to 0 below about -87).
inline float exp_nonpositive(float y) {
  y = y < -87.0F ? -87.0F : y;
  // n = round(y / ln 2): adding 1.5 · 2^23 rounds to an integer in the last place (no libm call).
  const float n = (y * 1.44269504088896341F + 12582912.0F) - 12582912.0F;
  const float r = (y - n * 0.693145751953125F) - n * 1.42860682030941723e-06F;  // Cody-Waite
  float e = 1.0F / 720.0F;
  e = e * r + 1.0F / 120.0F;
  e = e * r + 1.0F / 24.0F;
  e = e * r + 1.0F / 6.0F;
  e = e * r + 0.5F;
  e = e * r + 1.0F;
  e = e * r + 1.0F;
  const auto bits = static_cast<std::int32_t>(n + 127.0F) << 23;  // 2^n, n in [-126, 0]
  float scale = 0.0F;
  std::memcpy(&scale, &bits, sizeof(scale));
  return e * scale;
}

TESSERA_CLONES_AVX512
void gelu_forward_host(const float* x, float* y, Index n) {
  for (Index i = 0; i < n; ++i) {
    y[i] = 0.5F * x[i] * (1.0F + erf_poly(x[i] * act::kInvSqrt2));
  }
}

TESSERA_CLONES_AVX512
void gelu_backward_host(const float* x, const float* dy, float* dx, Index n) {
  for (Index i = 0; i < n; ++i) {
    const float v = x[i];
    const float cdf = 0.5F * (1.0F + erf_poly(v * act::kInvSqrt2));
    const float pdf = act::kInvSqrt2Pi * exp_nonpositive(-0.5F * v * v);
    dx[i] = dy[i] * (cdf + v * pdf);
  }
}

// y_i = f(x_i).
template <class F>
void map_unary(const char* label, const Tensor& x, const Tensor& y, F f) {
  const FloatView a = x.view();
  const FloatView b = y.view();
  Kokkos::parallel_for(
      label, Policy(0, x.numel()), KOKKOS_LAMBDA(const Index i) { b(i) = f(a(i)); });
}

// out_i = f(s_i, dy_i).
template <class F>
void map_binary(const char* label, const Tensor& s, const Tensor& dy, const Tensor& out, F f) {
  const FloatView a = s.view();
  const FloatView b = dy.view();
  const FloatView c = out.view();
  Kokkos::parallel_for(
      label, Policy(0, s.numel()), KOKKOS_LAMBDA(const Index i) { c(i) = f(a(i), b(i)); });
}
}  // namespace

const char* activation_name(ActivationKind kind) {
  switch (kind) {
    case ActivationKind::relu:
      return "relu";
    case ActivationKind::leaky_relu:
      return "leaky_relu";
    case ActivationKind::gelu:
      return "gelu";
    case ActivationKind::tanh:
      return "tanh";
    case ActivationKind::sigmoid:
      return "sigmoid";
  }
  return "unknown";
}

std::optional<ActivationKind> activation_from_name(std::string_view name) {
  for (ActivationKind k : {ActivationKind::relu, ActivationKind::leaky_relu, ActivationKind::gelu,
                           ActivationKind::tanh, ActivationKind::sigmoid}) {
    if (name == activation_name(k)) {
      return k;
    }
  }
  return std::nullopt;
}

ActivationSaved activation_saved(ActivationKind kind, float negative_slope) {
  switch (kind) {
    case ActivationKind::relu:
    case ActivationKind::tanh:
    case ActivationKind::sigmoid:
      return ActivationSaved::output;
    case ActivationKind::leaky_relu:
      return negative_slope >= 0.0F ? ActivationSaved::output : ActivationSaved::input;
    case ActivationKind::gelu:
      return ActivationSaved::input;
  }
  return ActivationSaved::input;
}

void activation_forward(ActivationKind kind, const Tensor& x, const Tensor& y,
                        float negative_slope) {
  check_same_size(x, y, "activation_forward");
  switch (kind) {
    case ActivationKind::relu:
      map_unary("kernels::relu_forward", x, y, ReluForward{});
      return;
    case ActivationKind::leaky_relu:
      map_unary("kernels::leaky_relu_forward", x, y, LeakyReluForward{negative_slope});
      return;
    case ActivationKind::gelu:
      if constexpr (kHostTensors) {
        gelu_forward_host(x.data(), y.data(), x.numel());
      } else {
        map_unary("kernels::gelu_forward", x, y, GeluForward{});
      }
      return;
    case ActivationKind::tanh:
      map_unary("kernels::tanh_forward", x, y, TanhForward{});
      return;
    case ActivationKind::sigmoid:
      map_unary("kernels::sigmoid_forward", x, y, SigmoidForward{});
      return;
  }
}

void activation_backward(ActivationKind kind, const Tensor& saved, const Tensor& dy,
                         const Tensor& dx, float negative_slope) {
  check_same_size(saved, dy, "activation_backward");
  check_same_size(saved, dx, "activation_backward");
  switch (kind) {
    case ActivationKind::relu:
      map_binary("kernels::relu_backward", saved, dy, dx, ReluBackward{});
      return;
    case ActivationKind::leaky_relu:
      map_binary("kernels::leaky_relu_backward", saved, dy, dx, LeakyReluBackward{negative_slope});
      return;
    case ActivationKind::gelu:
      if constexpr (kHostTensors) {
        gelu_backward_host(saved.data(), dy.data(), dx.data(), saved.numel());
      } else {
        map_binary("kernels::gelu_backward", saved, dy, dx, GeluBackward{});
      }
      return;
    case ActivationKind::tanh:
      map_binary("kernels::tanh_backward", saved, dy, dx, TanhBackward{});
      return;
    case ActivationKind::sigmoid:
      map_binary("kernels::sigmoid_backward", saved, dy, dx, SigmoidBackward{});
      return;
  }
}

void multiply(const Tensor& a, const Tensor& b, const Tensor& out) {
  check_same_size(a, b, "multiply");
  check_same_size(a, out, "multiply");
  const FloatView x = a.view();
  const FloatView y = b.view();
  const FloatView z = out.view();
  Kokkos::parallel_for(
      "kernels::multiply", Policy(0, a.numel()),
      KOKKOS_LAMBDA(const Index i) { z(i) = x(i) * y(i); });
}

void dropout_forward(const Tensor& x, const Tensor& y, const Tensor& mask, float p,
                     std::uint64_t seed, std::uint64_t stream, std::uint64_t first_counter,
                     Index block, std::uint64_t block_stride) {
  check_same_size(x, y, "dropout_forward");
  check_same_size(x, mask, "dropout_forward");
  TESSERA_CHECK(p >= 0.0F && p < 1.0F, "dropout_forward: p = {} must be in [0, 1)", p);
  const FloatView in = x.view();
  const FloatView out = y.view();
  const FloatView m = mask.view();
  const rng::CounterRng gen(seed, stream);
  const float keep_scale = 1.0F / (1.0F - p);
  TESSERA_CHECK(block >= 0, "dropout_forward: block = {} must be >= 0", block);
  const Index b = block > 0 ? block : std::max<Index>(1, x.numel());
  const std::uint64_t stride = block > 0 ? block_stride : static_cast<std::uint64_t>(b);
  Kokkos::parallel_for(
      "kernels::dropout_forward", Policy(0, x.numel()), KOKKOS_LAMBDA(const Index i) {
        const std::uint64_t counter = first_counter + static_cast<std::uint64_t>(i / b) * stride +
                                      static_cast<std::uint64_t>(i % b);
        const float u = gen.uniform(counter);
        const float s = act::dropout_keep(u, p) ? keep_scale : 0.0F;
        m(i) = s;
        out(i) = in(i)*s;
      });
}

void dropout_forward_indexed(const Tensor& x, const Tensor& y, const Tensor& mask, float p,
                             std::uint64_t seed, std::uint64_t stream, std::uint64_t first_counter,
                             const IndexView& offsets, std::uint64_t block_stride) {
  check_same_size(x, y, "dropout_forward_indexed");
  check_same_size(x, mask, "dropout_forward_indexed");
  TESSERA_CHECK(p >= 0.0F && p < 1.0F, "dropout_forward_indexed: p = {} must be in [0, 1)", p);
  const auto b = static_cast<Index>(offsets.extent(0));
  TESSERA_CHECK(b >= 1 && x.numel() % b == 0,
                "dropout_forward_indexed: {} elements are not blocks of {}", x.numel(), b);
  const IndexView where = offsets;
  const FloatView in = x.view();
  const FloatView out = y.view();
  const FloatView m = mask.view();
  const rng::CounterRng gen(seed, stream);
  const float keep_scale = 1.0F / (1.0F - p);
  Kokkos::parallel_for(
      "kernels::dropout_forward_indexed", Policy(0, x.numel()), KOKKOS_LAMBDA(const Index i) {
        const std::uint64_t counter = first_counter +
                                      static_cast<std::uint64_t>(i / b) * block_stride +
                                      static_cast<std::uint64_t>(where(i % b));
        const float u = gen.uniform(counter);
        const float s = act::dropout_keep(u, p) ? keep_scale : 0.0F;
        m(i) = s;
        out(i) = in(i)*s;
      });
}

}  // namespace tessera::kernels
