#pragma once
// Finite-difference gradient check for any nn::Layer. The scalar checked is
// L(x, θ) = Σ_i r_i · y_i(x, θ) for a fixed random r, so dL/dy = r is what backward() receives.
// Every input element (up to max_checks of them, spread evenly) and every parameter element
// (likewise) is perturbed by ±eps and the central difference compared with the analytic gradient.
#include "tessera/core/error.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/nn/layer.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

namespace tessera::testing {

struct GradCheckOptions {
  float eps = 1e-2F;   ///< perturbation
  double atol = 2e-3;  ///< |numeric - analytic| <= atol + rtol * max(|numeric|, |analytic|)
  double rtol = 2e-2;
  Index max_checks = 200;  ///< per tensor
  nn::ForwardOptions forward{};
};

/// Deterministic values in [lo, hi) for test inputs.
inline std::vector<float> random_values(Index n, std::uint64_t seed, float lo = -1.0F,
                                        float hi = 1.0F) {
  const rng::CounterRng gen(seed, 99);
  std::vector<float> v(static_cast<size_t>(n));
  for (Index i = 0; i < n; ++i) {
    v[static_cast<size_t>(i)] = lo + (hi - lo) * gen.uniform(static_cast<std::uint64_t>(i));
  }
  return v;
}

inline Tensor random_tensor(const std::string& label, const Shape& shape, std::uint64_t seed,
                            float lo = -1.0F, float hi = 1.0F) {
  return Tensor::from_host(label, shape, random_values(numel(shape), seed, lo, hi));
}

namespace detail {
inline double weighted_sum(const Tensor& y, const std::vector<float>& r) {
  const std::vector<float> h = y.to_host();
  double s = 0.0;
  for (size_t i = 0; i < h.size(); ++i) {
    s += static_cast<double>(h[i]) * static_cast<double>(r[i]);
  }
  return s;
}

inline void compare(const std::string& what, Index i, double numeric, double analytic,
                    const GradCheckOptions& o, int& failures) {
  const double tol = o.atol + o.rtol * std::max(std::fabs(numeric), std::fabs(analytic));
  if (std::fabs(numeric - analytic) > tol) {
    if (++failures <= 10) {
      ADD_FAILURE() << what << "[" << i << "]: numeric " << numeric << " vs analytic " << analytic
                    << " (tol " << tol << ")";
    }
  }
}

inline std::vector<Index> sample_indices(Index n, Index max_checks) {
  std::vector<Index> idx;
  const Index step = std::max<Index>(1, n / std::max<Index>(1, max_checks));
  for (Index i = 0; i < n; i += step) {
    idx.push_back(i);
  }
  return idx;
}
}  // namespace detail

/// Checks dL/dx and dL/dθ of `layer` at input `x`. Returns the number of mismatches (each is
/// also reported as a test failure).
inline int gradcheck(nn::Layer& layer, const Tensor& x, const GradCheckOptions& o = {}) {
  nn::ForwardResult fwd = layer.forward(x, o.forward);
  const std::vector<float> r = random_values(fwd.output.numel(), 777);
  const Tensor dy = Tensor::from_host("dy", fwd.output.shape(), r);
  layer.zero_grad();
  const Tensor dx = layer.backward(dy, std::move(fwd.ctx));
  EXPECT_EQ(dx.shape(), x.shape()) << layer.kind() << " backward returned a wrong shape";

  auto loss = [&]() { return detail::weighted_sum(layer.forward(x, o.forward).output, r); };
  int failures = 0;

  // Inputs.
  {
    std::vector<float> xv = x.to_host();
    const std::vector<float> dxv = dx.to_host();
    for (Index i : detail::sample_indices(x.numel(), o.max_checks)) {
      const float orig = xv[static_cast<size_t>(i)];
      xv[static_cast<size_t>(i)] = orig + o.eps;
      x.copy_from_host(xv);
      const double lp = loss();
      xv[static_cast<size_t>(i)] = orig - o.eps;
      x.copy_from_host(xv);
      const double lm = loss();
      xv[static_cast<size_t>(i)] = orig;
      x.copy_from_host(xv);
      detail::compare(std::string(layer.kind()) + " dL/dx", i,
                      (lp - lm) / (2.0 * static_cast<double>(o.eps)),
                      static_cast<double>(dxv[static_cast<size_t>(i)]), o, failures);
    }
  }
  // Parameters.
  for (nn::Parameter* param : layer.all_parameters()) {
    nn::Parameter& p = *param;
    std::vector<float> pv = p.value.to_host();
    const std::vector<float> gv = p.grad.to_host();
    for (Index i : detail::sample_indices(p.value.numel(), o.max_checks)) {
      const float orig = pv[static_cast<size_t>(i)];
      pv[static_cast<size_t>(i)] = orig + o.eps;
      p.value.copy_from_host(pv);
      const double lp = loss();
      pv[static_cast<size_t>(i)] = orig - o.eps;
      p.value.copy_from_host(pv);
      const double lm = loss();
      pv[static_cast<size_t>(i)] = orig;
      p.value.copy_from_host(pv);
      detail::compare("dL/d" + p.name, i, (lp - lm) / (2.0 * static_cast<double>(o.eps)),
                      static_cast<double>(gv[static_cast<size_t>(i)]), o, failures);
    }
  }
  return failures;
}

/// The message of the tessera::Error `f` throws, or "no error".
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

/// Expects `f` to throw a tessera::Error whose what() is exactly `message`.
template <class F>
void expect_error(F&& f, const std::string& message) {
  try {
    f();
    ADD_FAILURE() << "expected tessera::Error: " << message;
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), message);
  }
}

/// Expects `actual` to equal `expected` within `tol` element-wise, with the first differences
/// reported.
inline void expect_near(const std::vector<float>& actual, const std::vector<float>& expected,
                        double tol, const std::string& what = "") {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  int shown = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    if (std::fabs(static_cast<double>(actual[i]) - static_cast<double>(expected[i])) > tol &&
        shown++ < 10) {
      ADD_FAILURE() << what << "[" << i << "]: " << actual[i] << " vs expected " << expected[i];
    }
  }
}

}  // namespace tessera::testing
