#pragma once
// The run folder's lock: one run at a time writes into a `run.output` (and into a `checkpoint.dir`
// of its own elsewhere). Two runs into one folder used to interleave their metrics and die on each
// other's partial checkpoints; two sharing a checkpoint folder pruned each other's checkpoints.
//
// Rank 0 of the trainer creates RUN_OUTPUT/.lock (O_CREAT | O_EXCL) holding "pid host start", and
// touches it every 10 s while the run lives (heartbeat); the destructor removes it. A lock that
// exists is the first run's, and a second run is refused naming it — unless it is stale: its
// process is gone (same host), or its heartbeat is older than kStaleSeconds (another host: a job
// killed without a chance to remove it). A stale lock is taken over, with a note.
//
// The lock makes the folder (and its missing parents) when it does not exist, and the destructor
// removes again those of them that are still empty: a run refused after taking its lock (a restart
// whose checkpoint does not fit) leaves no empty folders behind.
#include "tessera/core/error.hpp"

#include <string>

namespace tessera::train {

class RunLock {
 public:
  /// A heartbeat older than this marks another host's lock stale.
  static constexpr double kStaleSeconds = 60.0;

  /// Makes `folder` (with its missing parents; write_error at `where` when it cannot) and takes
  /// its lock, or throws input_error naming the run that holds it and the deck key `key` that
  /// chose the folder ("run.output", "checkpoint.dir"). `note` receives a line when a stale lock
  /// was taken over.
  RunLock(const std::string& folder, const std::string& key, std::string* note,
          DeckLocation where = {});
  ~RunLock();
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

  /// Touches the lock when the last touch is 10 s old or more (call it often: it is cheap).
  void heartbeat();

 private:
  std::string m_path;
  std::string m_folder;  // absolute
  std::string m_made;    // the outermost folder the constructor made, "" when it made none
  double m_last_touch = 0.0;
};

}  // namespace tessera::train
