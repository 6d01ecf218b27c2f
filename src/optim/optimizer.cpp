#include "tessera/optim/optimizer.hpp"

#include "tessera/core/check.hpp"
#include "tessera/core/math.hpp"
#include "tessera/kernels/reduce.hpp"

#include <cmath>

namespace tessera::optim {
namespace {
using Policy = Kokkos::RangePolicy<ExecSpace>;

void check_parameter(const nn::Parameter& p, const char* kind) {
  TESSERA_CHECK(p.grad.defined() && p.grad.numel() == p.value.numel(),
                "{}: parameter '{}' {} has no gradient of its size", kind, p.name,
                to_string(p.value.shape()));
}
}  // namespace

const Tensor& Optimizer::state_for(const nn::Parameter& p, const std::string& suffix) {
  const std::string key = p.name + "." + suffix;
  auto it = m_state.find(key);
  if (it == m_state.end()) {
    it = m_state.emplace(key, Tensor(key, p.value.shape())).first;
  }
  TESSERA_CHECK(it->second.numel() == p.value.numel(),
                "optimizer state '{}' {} does not match parameter {}", key,
                to_string(it->second.shape()), to_string(p.value.shape()));
  return it->second;
}

Sgd::Sgd(const SgdOptions& options) : m_options(options) {
  TESSERA_CHECK(options.momentum >= 0.0F && options.momentum < 1.0F,
                "sgd: momentum = {} must be in [0, 1)", options.momentum);
  TESSERA_CHECK(options.weight_decay >= 0.0F, "sgd: weight_decay = {} must be >= 0",
                options.weight_decay);
  TESSERA_CHECK(!options.nesterov || options.momentum > 0.0F,
                "sgd: nesterov = true needs momentum > 0");
}

std::vector<std::string> Sgd::state_names() const {
  if (m_options.momentum > 0.0F) {
    return {"momentum"};
  }
  return {};
}

void Sgd::step(const std::vector<nn::Parameter*>& params, double lr) {
  const auto rate = static_cast<float>(lr);
  const float mu = m_options.momentum;
  const bool nesterov = m_options.nesterov;
  for (nn::Parameter* p : params) {
    check_parameter(*p, "sgd");
    const float wd = p->decay ? m_options.weight_decay : 0.0F;
    const FloatView w = p->value.view();
    const FloatView g = p->grad.view();
    if (mu == 0.0F) {
      Kokkos::parallel_for(
          "Sgd::step", Policy(0, p->value.numel()),
          KOKKOS_LAMBDA(const Index i) { w(i) -= rate * (g(i) + wd * w(i)); });
      continue;
    }
    const FloatView buf = state_for(*p, "momentum").view();
    Kokkos::parallel_for(
        "Sgd::step_momentum", Policy(0, p->value.numel()), KOKKOS_LAMBDA(const Index i) {
          const float d = g(i) + wd * w(i);
          const float b = mu * buf(i) + d;
          buf(i) = b;
          w(i) -= rate * (nesterov ? d + mu * b : b);
        });
  }
  ++m_steps;
}

AdamW::AdamW(const AdamWOptions& options) : m_options(options) {
  TESSERA_CHECK(options.beta1 >= 0.0 && options.beta1 < 1.0, "adamw: beta1 = {} must be in [0, 1)",
                options.beta1);
  TESSERA_CHECK(options.beta2 >= 0.0 && options.beta2 < 1.0, "adamw: beta2 = {} must be in [0, 1)",
                options.beta2);
  TESSERA_CHECK(options.eps > 0.0, "adamw: eps = {} must be > 0", options.eps);
  TESSERA_CHECK(options.weight_decay >= 0.0, "adamw: weight_decay = {} must be >= 0",
                options.weight_decay);
}

void AdamW::step(const std::vector<nn::Parameter*>& params, double lr) {
  ++m_steps;
  const double t = static_cast<double>(m_steps);
  // Every constant in double, rounded to float once (PyTorch's scalars are doubles).
  const auto b1 = static_cast<float>(m_options.beta1);
  const auto b2 = static_cast<float>(m_options.beta2);
  const auto c1 = static_cast<float>(1.0 - m_options.beta1);
  const auto c2 = static_cast<float>(1.0 - m_options.beta2);
  const auto eps = static_cast<float>(m_options.eps);
  // Bias corrections folded into the step size and the denominator, as PyTorch does.
  const auto step_size = static_cast<float>(lr / (1.0 - std::pow(m_options.beta1, t)));
  const auto sqrt_c2 = static_cast<float>(std::sqrt(1.0 - std::pow(m_options.beta2, t)));
  for (nn::Parameter* p : params) {
    check_parameter(*p, "adamw");
    const auto decay = static_cast<float>(p->decay ? lr * m_options.weight_decay : 0.0);
    const FloatView w = p->value.view();
    const FloatView g = p->grad.view();
    const FloatView m = state_for(*p, "exp_avg").view();
    const FloatView v = state_for(*p, "exp_avg_sq").view();
    Kokkos::parallel_for(
        "AdamW::step", Policy(0, p->value.numel()), KOKKOS_LAMBDA(const Index i) {
          const float gi = g(i);
          const float mi = b1 * m(i) + c1 * gi;
          const float vi = b2 * v(i) + c2 * gi * gi;
          m(i) = mi;
          v(i) = vi;
          const float wi = w(i) * (1.0F - decay);
          w(i) = wi - step_size * mi / (math::sqrt(vi) / sqrt_c2 + eps);
        });
  }
}

double clip_grad_norm(const std::vector<nn::Parameter*>& params, double max_norm,
                      const std::function<double(double)>& reduce_sum) {
  TESSERA_CHECK(max_norm > 0.0, "gradient clipping: max_norm = {} must be > 0", max_norm);
  double local = 0.0;
  for (const nn::Parameter* p : params) {
    local += kernels::sum_squares(p->grad);
  }
  const double norm = std::sqrt(reduce_sum ? reduce_sum(local) : local);
  scale_to_norm(params, norm, max_norm);
  return norm;
}

void scale_to_norm(const std::vector<nn::Parameter*>& params, double norm, double max_norm) {
  if (norm > max_norm) {
    const auto factor = static_cast<float>(max_norm / (norm + 1e-6));
    for (const nn::Parameter* p : params) {
      kernels::scale(factor, p->grad);
    }
  }
}

}  // namespace tessera::optim
