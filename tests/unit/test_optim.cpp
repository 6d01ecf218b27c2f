// optim: every update rule against an independent scalar implementation in double (PyTorch's
// formulas written out), hand-computed first steps, the schedules at chosen steps, and clipping.
#include "support/gradcheck.hpp"
#include "tessera/core/check.hpp"
#include "tessera/optim/optimizer.hpp"
#include "tessera/optim/schedule.hpp"

#include <gtest/gtest.h>

#include <cmath>

using namespace tessera;
using tessera::testing::expect_near;
using tessera::testing::random_values;

namespace {

// A free-standing parameter with given values and gradient.
nn::Parameter make_param(const std::string& name, const std::vector<float>& value,
                         const std::vector<float>& grad, bool decay = true) {
  const Shape shape{static_cast<Index>(value.size())};
  return nn::Parameter{name,
                       Tensor::from_host(name, shape, value),
                       Tensor::from_host(name + ".grad", shape, grad),
                       Layout::replicated(shape),
                       InitSpec::constant(0),
                       decay};
}

// Reference SGD (torch.optim.SGD, dampening 0) in double.
struct RefSgd {
  double mu, wd;
  bool nesterov;
  std::vector<double> buf;
  void step(std::vector<double>& w, const std::vector<double>& g, double lr) {
    buf.resize(w.size(), 0.0);
    for (size_t i = 0; i < w.size(); ++i) {
      double d = g[i] + wd * w[i];
      if (mu != 0.0) {
        buf[i] = mu * buf[i] + d;
        d = nesterov ? d + mu * buf[i] : buf[i];
      }
      w[i] -= lr * d;
    }
  }
};

// Reference AdamW (torch.optim.AdamW) in double.
struct RefAdamW {
  double b1, b2, eps, wd;
  std::vector<double> m, v;
  int t = 0;
  void step(std::vector<double>& w, const std::vector<double>& g, double lr) {
    m.resize(w.size(), 0.0);
    v.resize(w.size(), 0.0);
    ++t;
    for (size_t i = 0; i < w.size(); ++i) {
      w[i] *= 1.0 - lr * wd;
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      const double mhat = m[i] / (1 - std::pow(b1, t));
      const double vhat = v[i] / (1 - std::pow(b2, t));
      w[i] -= lr * mhat / (std::sqrt(vhat) + eps);
    }
  }
};

std::vector<double> to_double(const std::vector<float>& v) {
  return {v.begin(), v.end()};
}
std::vector<float> to_float(const std::vector<double>& v) {
  std::vector<float> out;
  for (double d : v) {
    out.push_back(static_cast<float>(d));
  }
  return out;
}

// Runs `steps` updates with gradients that change every step, on both implementations.
template <class Opt, class Ref>
void compare_with_reference(Opt& opt, Ref& ref, bool decay, double tol) {
  const Index n = 50;
  std::vector<float> w0 = random_values(n, 1);
  nn::Parameter p = make_param("w", w0, std::vector<float>(n, 0.0F), decay);
  std::vector<double> w = to_double(w0);
  std::vector<nn::Parameter*> params{&p};
  for (int s = 0; s < 8; ++s) {
    const std::vector<float> g = random_values(n, 100 + static_cast<std::uint64_t>(s));
    p.grad.copy_from_host(g);
    const double lr = 0.05 * (1.0 + 0.1 * s);
    opt.step(params, lr);
    ref.step(w, to_double(g), lr);
    expect_near(p.value.to_host(), to_float(w), tol, "step " + std::to_string(s));
  }
}

}  // namespace

TEST(Sgd, HandComputedFirstSteps) {
  // w = 1, g = 0.5, lr = 0.1, momentum 0.9: buf = 0.5, w = 0.95; then g = 0.5 again:
  // buf = 0.9 * 0.5 + 0.5 = 0.95, w = 0.95 - 0.095 = 0.855.
  nn::Parameter p = make_param("w", {1.0F}, {0.5F});
  optim::Sgd sgd({0.9F, false, 0.0F});
  std::vector<nn::Parameter*> params{&p};
  sgd.step(params, 0.1);
  EXPECT_FLOAT_EQ(p.value.to_host()[0], 0.95F);
  sgd.step(params, 0.1);
  EXPECT_FLOAT_EQ(p.value.to_host()[0], 0.855F);
  EXPECT_EQ(sgd.steps(), 2);
  EXPECT_EQ(sgd.state().count("w.momentum"), 1U);
}

TEST(Sgd, MatchesReference) {
  for (bool nesterov : {false, true}) {
    for (float wd : {0.0F, 1e-2F}) {
      for (bool decay : {true, false}) {
        optim::Sgd sgd({0.9F, nesterov, wd});
        RefSgd ref{0.9, decay ? static_cast<double>(wd) : 0.0, nesterov, {}};
        compare_with_reference(sgd, ref, decay, 1e-5);
      }
    }
  }
  optim::Sgd plain({0.0F, false, 0.0F});
  RefSgd ref{0.0, 0.0, false, {}};
  compare_with_reference(plain, ref, true, 1e-6);
  EXPECT_TRUE(plain.state().empty());  // plain SGD keeps no state
}

TEST(AdamW, HandComputedFirstStep) {
  // First step: mhat = g, vhat = g^2, so w -= lr * (g / (|g| + eps)) after decay: with w = 2,
  // g = -3, lr = 0.1, wd = 0.5: w = 2 * (1 - 0.05) = 1.9, then 1.9 + 0.1 * 3 / (3 + 1e-8) = 2.0.
  nn::Parameter p = make_param("w", {2.0F}, {-3.0F});
  optim::AdamW adam({0.9F, 0.999F, 1e-8F, 0.5F});
  std::vector<nn::Parameter*> params{&p};
  adam.step(params, 0.1);
  EXPECT_NEAR(p.value.to_host()[0], 2.0F, 1e-6);
}

TEST(AdamW, ConstantsInDoubleAsPyTorch) {
  // PyTorch computes 1 - beta2 in double (0.001 for beta2 = 0.999) and rounds it to float once;
  // in float, 1 - 0.999F is 0.00099998713. After one step from zero with g = 1, exp_avg_sq holds
  // exactly float(1 - 0.999) and exp_avg float(1 - 0.9).
  nn::Parameter p = make_param("w", {2.0F}, {1.0F});
  optim::AdamW adam({0.9, 0.999, 1e-8, 0.0});
  std::vector<nn::Parameter*> params{&p};
  adam.step(params, 0.1);
  EXPECT_EQ(adam.state().at("w.exp_avg_sq").to_host()[0], static_cast<float>(1.0 - 0.999));
  EXPECT_EQ(adam.state().at("w.exp_avg").to_host()[0], static_cast<float>(1.0 - 0.9));
  EXPECT_NE(static_cast<float>(1.0 - 0.999), 1.0F - 0.999F);  // the difference this pins
}

TEST(AdamW, MatchesReference) {
  for (bool decay : {true, false}) {
    optim::AdamW adam({0.9F, 0.999F, 1e-8F, 0.01F});
    RefAdamW ref{0.9, 0.999, 1e-8, decay ? 0.01 : 0.0, {}, {}};
    compare_with_reference(adam, ref, decay, 2e-5);
  }
}

TEST(Optimizers, MinimiseAQuadratic) {
  // f(w) = 0.5 * Σ a_i (w_i - c_i)^2 with a in [1, 3]; every optimizer must get close to c.
  const Index n = 20;
  const std::vector<float> a = random_values(n, 5, 1.0F, 3.0F);
  const std::vector<float> c = random_values(n, 6);
  std::vector<std::unique_ptr<optim::Optimizer>> opts;
  opts.push_back(std::make_unique<optim::Sgd>(optim::SgdOptions{0.9F, true, 0.0F}));
  opts.push_back(std::make_unique<optim::AdamW>(optim::AdamWOptions{0.9F, 0.999F, 1e-8F, 0.0F}));
  for (auto& opt : opts) {
    nn::Parameter p = make_param("w", std::vector<float>(n, 0.0F), std::vector<float>(n, 0.0F));
    std::vector<nn::Parameter*> params{&p};
    for (int s = 0; s < 500; ++s) {
      const std::vector<float> w = p.value.to_host();
      std::vector<float> g(static_cast<size_t>(n));
      for (size_t i = 0; i < g.size(); ++i) {
        g[i] = a[i] * (w[i] - c[i]);
      }
      p.grad.copy_from_host(g);
      opt->step(params, opt->kind() == std::string("sgd") ? 0.05 : 0.02);
    }
    expect_near(p.value.to_host(), c, 1e-3, opt->kind());
  }
}

TEST(Optimizers, BadOptionsThrow) {
  EXPECT_THROW(optim::Sgd({1.5F, false, 0.0F}), Error);
  try {
    optim::Sgd({0.0F, true, 0.0F});
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("sgd: nesterov = true needs momentum > 0", 0), 0U)
        << e.what();
  }
  EXPECT_THROW(optim::AdamW({0.9F, 1.0F, 1e-8F, 0.0F}), Error);
  // A parameter without a gradient is named.
  nn::Parameter p{
      "buf", Tensor("buf", {3}), Tensor(), Layout::replicated({3}), InitSpec::constant(0), false};
  optim::Sgd sgd({});
  std::vector<nn::Parameter*> params{&p};
  try {
    sgd.step(params, 0.1);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("sgd: parameter 'buf' (3,) has no gradient", 0), 0U)
        << e.what();
  }
}

TEST(Schedule, ValuesAtChosenSteps) {
  optim::ScheduleOptions c{optim::ScheduleKind::constant, 0.1, 0, 0, 1, 0.1, 0.0};
  EXPECT_DOUBLE_EQ(optim::learning_rate(c, 0), 0.1);
  EXPECT_DOUBLE_EQ(optim::learning_rate(c, 12345), 0.1);

  optim::ScheduleOptions w = c;
  w.warmup_steps = 4;  // 0.025, 0.05, 0.075, 0.1, then 0.1
  EXPECT_DOUBLE_EQ(optim::learning_rate(w, 0), 0.025);
  EXPECT_DOUBLE_EQ(optim::learning_rate(w, 2), 0.075);
  EXPECT_DOUBLE_EQ(optim::learning_rate(w, 3), 0.1);
  EXPECT_DOUBLE_EQ(optim::learning_rate(w, 100), 0.1);

  optim::ScheduleOptions s{optim::ScheduleKind::step, 1.0, 0, 0, 10, 0.5, 0.0};
  EXPECT_DOUBLE_EQ(optim::learning_rate(s, 9), 1.0);
  EXPECT_DOUBLE_EQ(optim::learning_rate(s, 10), 0.5);
  EXPECT_DOUBLE_EQ(optim::learning_rate(s, 25), 0.25);

  // Cosine with warm-up 10 in a run of 111 steps, from 1.0 to 0.1 at the last step (110):
  // half-way (step 60) is 0.55.
  optim::ScheduleOptions cos{optim::ScheduleKind::cosine, 1.0, 10, 111, 1, 0.1, 0.1};
  optim::validate(cos);
  EXPECT_DOUBLE_EQ(optim::learning_rate(cos, 4), 0.5);
  EXPECT_DOUBLE_EQ(optim::learning_rate(cos, 10), 1.0);
  EXPECT_NEAR(optim::learning_rate(cos, 60), 0.55, 1e-12);
  EXPECT_NEAR(optim::learning_rate(cos, 35), 0.1 + 0.45 * (1 + std::cos(M_PI / 4)), 1e-12);
  EXPECT_DOUBLE_EQ(optim::learning_rate(cos, 110), 0.1);  // the run's last step: min_lr
  EXPECT_GT(optim::learning_rate(cos, 109), 0.1);
  EXPECT_DOUBLE_EQ(optim::learning_rate(cos, 500), 0.1);  // stays at the floor
  // One step after the warm-up is the last: it takes min_lr.
  optim::ScheduleOptions one{optim::ScheduleKind::cosine, 1.0, 3, 4, 1, 0.1, 0.2};
  EXPECT_DOUBLE_EQ(optim::learning_rate(one, 2), 1.0);
  EXPECT_DOUBLE_EQ(optim::learning_rate(one, 3), 0.2);
}

TEST(Schedule, BadOptionsThrow) {
  optim::ScheduleOptions cos{optim::ScheduleKind::cosine, 1.0, 100, 50, 1, 0.1, 0.0};
  try {
    optim::validate(cos);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(
                  "schedule: cosine needs total_steps (50) > warmup_steps (100)", 0),
              0U)
        << e.what();
  }
  try {
    (void)optim::parse_schedule_kind("cosin");
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "unknown schedule type 'cosin' (known: constant, step, cosine)");
  }
  EXPECT_EQ(optim::parse_schedule_kind("step"), optim::ScheduleKind::step);
}

TEST(Clip, GlobalNormOverAllParameters) {
  // Gradients (3, 4) and (12): global norm 13.
  nn::Parameter a = make_param("a", {0, 0}, {3, 4});
  nn::Parameter b = make_param("b", {0}, {12});
  std::vector<nn::Parameter*> params{&a, &b};
  EXPECT_NEAR(optim::clip_grad_norm(params, 100.0), 13.0, 1e-12);
  expect_near(a.grad.to_host(), {3, 4}, 0.0, "unclipped");
  EXPECT_NEAR(optim::clip_grad_norm(params, 6.5), 13.0, 1e-12);
  const double f = 6.5 / (13.0 + 1e-6);
  expect_near(a.grad.to_host(), {static_cast<float>(3 * f), static_cast<float>(4 * f)}, 1e-6);
  expect_near(b.grad.to_host(), {static_cast<float>(12 * f)}, 1e-6);
  // The reduction hook sees the local sum of squares and returns the global one (here: doubled,
  // as if a second rank held an identical shard).
  double seen = 0.0;
  const double norm = optim::clip_grad_norm(params, 1e9, [&](double local) {
    seen = local;
    return 2.0 * local;
  });
  EXPECT_NEAR(seen, 6.5 * 6.5, 1e-3);
  EXPECT_NEAR(norm, std::sqrt(2.0) * 6.5, 1e-3);
}
