#pragma once
// Where a run's words go. Library code never prints (STYLE.md, "Errors"): the trainer hands its
// progress lines, notes and warnings to a Reporter on the trainer's rank 0 only, and the program
// that owns the reporter decides where they end up. ConsoleReporter is the one place in src/ that
// writes to the terminal (besides main()'s last word on an error, apps/app_main.cpp).
#include <string>

namespace tessera::train {

class Reporter {
 public:
  virtual ~Reporter() = default;
  /// A progress line or a note (one line, no newline).
  virtual void info(const std::string& line) = 0;
  /// Something the user should act on that does not stop the run.
  virtual void warning(const std::string& line) = 0;
};

/// info to stdout, warnings to stderr, each line flushed at once (a job log shows it live).
class ConsoleReporter final : public Reporter {
 public:
  void info(const std::string& line) override;
  void warning(const std::string& line) override;
};

/// Says nothing: a trainer built without a reporter (tests, library use).
class SilentReporter final : public Reporter {
 public:
  void info(const std::string& /*line*/) override {}
  void warning(const std::string& /*line*/) override {}
};

}  // namespace tessera::train
