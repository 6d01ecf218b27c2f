#pragma once
// The watchdog: a job whose ranks wait for one that never comes ends with a diagnosis instead of
// burning its allocation.
//
// Every collective a rank starts is recorded (a sequence number, the operation, the axis, the
// bytes, the training step) in a small ring, and every blocking wait for communication — a Work's
// wait(), comm::agree, the shared-memory reduction's spin — marks the rank "blocked since t".
// A thread per rank looks at that mark a few times a second. When a rank has been blocked longer
// than the limit (`run.watchdog_s`; the first step, which loads data and warms caches, is allowed
// three times that), its watchdog:
//   1. prints the rank's last collectives;
//   2. asks every other rank's watchdog, over its own duplicate of MPI_COMM_WORLD, where it is —
//      each live rank prints its own last collectives and answers with its position;
//   3. names the ranks that did not answer (stopped, dead, or stuck outside MPI) and those that are
//      computing or at an earlier collective, and aborts the job with kExitWatchdog.
// Ranks answer from their watchdog thread, so a rank blocked in a collective still answers; that
// needs MPI_THREAD_MULTIPLE (app_main asks for it). Without it the watchdog prints this rank's
// part and aborts.
//
// The debug mode `run.check_collectives` (set_check_signatures) compares each collective's
// signature — operation, element count and type, root — across its communicator before starting
// it, and names the first mismatch instead of letting MPI hang or mix buffers.
#include <mpi.h>

#include <cstdint>
#include <string>

namespace tessera::comm {

/// Exit code of a job the watchdog ended (a rank waited past run.watchdog_s).
inline constexpr int kExitWatchdog = 124;

namespace watchdog {

/// Records a collective this rank starts; returns its sequence number (1, 2, ...).
std::uint64_t record_start(const char* op, const std::string& axis, std::int64_t bytes);

/// The sequence number of the last collective started (0: none yet).
std::uint64_t last_started();

/// The training step the records are tagged with.
void set_step(std::int64_t step);

/// Marks the calling thread blocked until destroyed, waiting for collective `seq` (0: the last
/// started). Nests: the outermost guard counts.
class Blocked {
 public:
  explicit Blocked(std::uint64_t seq = 0);
  ~Blocked();
  Blocked(const Blocked&) = delete;
  Blocked& operator=(const Blocked&) = delete;

 private:
  bool m_outer = false;
};

/// Starts this rank's watchdog thread; collective over `comm` (the job's ranks: it duplicates it).
/// `limit_s` <= 0: no thread (only the records are kept).
void start(MPI_Comm comm, double limit_s);

/// The first training step is done: the limit drops from 3 × limit_s to limit_s.
void first_step_done();

/// Stops the thread (if any).
void stop();

/// start() for as long as it lives, stop() when destroyed (also when an exception unwinds).
class Scope {
 public:
  Scope(MPI_Comm comm, double limit_s) { start(comm, limit_s); }
  ~Scope() { stop(); }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;
};

/// The last collectives, oldest first, one per line (for messages and tests).
std::string recent(int count = 8);

/// Debug mode: compare each collective's signature across its communicator before starting it.
void set_check_signatures(bool on);
bool check_signatures();

}  // namespace watchdog
}  // namespace tessera::comm
