#include "tessera/optim/schedule.hpp"

#include "tessera/core/check.hpp"

#include <cmath>

namespace tessera::optim {

const char* schedule_name(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::constant:
      return "constant";
    case ScheduleKind::step:
      return "step";
    case ScheduleKind::cosine:
      return "cosine";
  }
  return "unknown";
}

ScheduleKind parse_schedule_kind(const std::string& name) {
  for (ScheduleKind k : {ScheduleKind::constant, ScheduleKind::step, ScheduleKind::cosine}) {
    if (name == schedule_name(k)) {
      return k;
    }
  }
  TESSERA_THROW("unknown schedule type '{}' (known: constant, step, cosine)", name);
}

void validate(const ScheduleOptions& o) {
  TESSERA_CHECK(o.base_lr > 0.0, "schedule: lr = {} must be > 0", o.base_lr);
  TESSERA_CHECK(o.warmup_steps >= 0, "schedule: warmup_steps = {} must be >= 0", o.warmup_steps);
  if (o.kind == ScheduleKind::step) {
    TESSERA_CHECK(o.step_size >= 1, "schedule: step_size = {} must be >= 1", o.step_size);
    TESSERA_CHECK(o.gamma > 0.0 && o.gamma <= 1.0, "schedule: gamma = {} must be in (0, 1]",
                  o.gamma);
  }
  if (o.kind == ScheduleKind::cosine) {
    TESSERA_CHECK(o.total_steps > o.warmup_steps,
                  "schedule: cosine needs total_steps ({}) > warmup_steps ({})", o.total_steps,
                  o.warmup_steps);
    TESSERA_CHECK(o.min_lr >= 0.0 && o.min_lr <= o.base_lr,
                  "schedule: min_lr = {} must be in [0, lr = {}]", o.min_lr, o.base_lr);
  }
}

double learning_rate(const ScheduleOptions& o, std::int64_t step) {
  if (step < o.warmup_steps) {
    return o.base_lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup_steps);
  }
  const std::int64_t after = step - o.warmup_steps;
  switch (o.kind) {
    case ScheduleKind::constant:
      return o.base_lr;
    case ScheduleKind::step:
      return o.base_lr * std::pow(o.gamma, static_cast<double>(after / o.step_size));
    case ScheduleKind::cosine: {
      // min_lr at the run's last step, total_steps - 1 (a run of one step past the warm-up takes
      // it at once).
      const auto span = static_cast<double>(o.total_steps - 1 - o.warmup_steps);
      const double progress = span > 0.0 ? std::min(1.0, static_cast<double>(after) / span) : 1.0;
      constexpr double kPi = 3.14159265358979323846;
      return o.min_lr + 0.5 * (o.base_lr - o.min_lr) * (1.0 + std::cos(kPi * progress));
    }
  }
  return o.base_lr;
}

}  // namespace tessera::optim
