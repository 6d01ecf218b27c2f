#pragma once
// Wall-clock timing for progress lines and benchmarks.
#include <chrono>

namespace tessera {

class Stopwatch {
 public:
  Stopwatch() : m_start(Clock::now()) {}
  void restart() { m_start = Clock::now(); }
  double seconds() const { return std::chrono::duration<double>(Clock::now() - m_start).count(); }

 private:
  using Clock = std::chrono::steady_clock;
  Clock::time_point m_start;
};

/// Adds the lifetime of the scope to `total` (seconds).
class ScopedTimer {
 public:
  explicit ScopedTimer(double& total) : m_total(total) {}
  ~ScopedTimer() { m_total += m_watch.seconds(); }
  ScopedTimer(const ScopedTimer&) = delete;
  ScopedTimer& operator=(const ScopedTimer&) = delete;

 private:
  double& m_total;
  Stopwatch m_watch;
};

}  // namespace tessera
