#pragma once
// Learning-rate schedules, as a pure function of the optimizer step, so that a restarted run
// resumes the schedule exactly.
#include <cstdint>
#include <string>

namespace tessera::optim {

enum class ScheduleKind { constant, step, cosine };

struct ScheduleOptions {
  ScheduleKind kind = ScheduleKind::constant;
  double base_lr = 0.1;
  std::int64_t warmup_steps = 0;  ///< linear ramp from base_lr / warmup_steps to base_lr
  std::int64_t total_steps = 0;   ///< the run's length: cosine reaches min_lr at total_steps - 1
  std::int64_t step_size = 1;     ///< step: multiply by gamma every step_size steps after warm-up
  double gamma = 0.1;
  double min_lr = 0.0;  ///< cosine floor
};

/// Validates `options` (throws tessera::Error naming the bad field).
void validate(const ScheduleOptions& options);
/// The learning rate used at optimizer step `step` (0-based).
double learning_rate(const ScheduleOptions& options, std::int64_t step);
/// "constant", "step", "cosine"; and back (throws on an unknown name, listing the known ones).
const char* schedule_name(ScheduleKind kind);
ScheduleKind parse_schedule_kind(const std::string& name);

}  // namespace tessera::optim
