#pragma once
// Optimizers: SGD (momentum, Nesterov, weight decay) and AdamW, with PyTorch's update rules so
// that results can be compared with it. An optimizer updates the parameters it is given in one
// fused Kokkos kernel per tensor; its state (momentum, Adam moments) is keyed by parameter name, so
// that it can be checkpointed at global shape and, later, sharded over the data axis (ZeRO-1).
#include "tessera/nn/layer.hpp"

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace tessera::optim {

struct SgdOptions {
  float momentum = 0.0F;
  bool nesterov = false;      ///< needs momentum > 0
  float weight_decay = 0.0F;  ///< L2 penalty added to the gradient (parameters with decay only)
};

/// Kept in double, as PyTorch keeps them (Python floats): the update's constants (1 - β1, 1 - β2,
/// the bias corrections) are computed in double and rounded to float once, so the moments match
/// PyTorch's bit for bit where the float update does (1 - β2 computed in float would be
/// 0.99998713× PyTorch's for β2 = 0.999).
struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;  ///< decoupled: p -= lr * wd * p (parameters with decay only)
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  /// "sgd" or "adamw".
  virtual const char* kind() const = 0;
  /// One update of every parameter from its gradient, with learning rate `lr`.
  virtual void step(const std::vector<nn::Parameter*>& params, double lr) = 0;
  /// Number of step() calls so far (Adam's bias correction uses it).
  std::int64_t steps() const { return m_steps; }
  /// Sets the step count (a restart from a checkpoint).
  void set_steps(std::int64_t steps) { m_steps = steps; }
  /// The state tensors, keyed "<parameter name>.<state>" ("fc1.weight.momentum"); empty until the
  /// first step.
  const std::map<std::string, Tensor>& state() const { return m_state; }
  /// The names of the state tensors this optimizer keeps per parameter ("momentum"; "exp_avg",
  /// "exp_avg_sq"), in a fixed order: what a checkpoint stores.
  virtual std::vector<std::string> state_names() const = 0;
  /// The state tensor `suffix` of `p`, created zero-filled at p's shape on first use (a zero state
  /// is what the first step would start from).
  const Tensor& state_for(const nn::Parameter& p, const std::string& suffix);

 protected:
  std::int64_t m_steps = 0;

 private:
  std::map<std::string, Tensor> m_state;
};

class Sgd final : public Optimizer {
 public:
  explicit Sgd(const SgdOptions& options);
  const char* kind() const override { return "sgd"; }
  /// New options from the next step on (the momentum buffers stay).
  void set_options(const SgdOptions& options) { m_options = options; }
  std::vector<std::string> state_names() const override;
  void step(const std::vector<nn::Parameter*>& params, double lr) override;

 private:
  SgdOptions m_options;
};

class AdamW final : public Optimizer {
 public:
  explicit AdamW(const AdamWOptions& options);
  const char* kind() const override { return "adamw"; }
  /// New options from the next step on (the moments stay).
  void set_options(const AdamWOptions& options) { m_options = options; }
  std::vector<std::string> state_names() const override { return {"exp_avg", "exp_avg_sq"}; }
  void step(const std::vector<nn::Parameter*>& params, double lr) override;

 private:
  AdamWOptions m_options;
};

/// Scales every gradient so that their global L2 norm is at most `max_norm` (PyTorch's
/// clip_grad_norm_: factor max_norm / (norm + 1e-6) when norm > max_norm). `reduce_sum` turns the
/// local sum of squares into the global one (an allreduce over the ranks that hold distinct
/// shards); by default the local sum is the global one. Returns the norm before clipping.
double clip_grad_norm(const std::vector<nn::Parameter*>& params, double max_norm,
                      const std::function<double(double)>& reduce_sum = {});
/// The scaling half of clip_grad_norm: given the global norm `norm`, scales every gradient of
/// `params` by max_norm / (norm + 1e-6) when norm > max_norm.
void scale_to_norm(const std::vector<nn::Parameter*>& params, double norm, double max_norm);

}  // namespace tessera::optim
