#pragma once
// Progress for non-blocking operations while the calling thread computes. MPI moves a rendezvous
// transfer (every message above a few kilobytes) only inside MPI calls of both sides: a send
// posted before a long computation completes only when its receiver next calls MPI, so a rank that
// posts its halo, computes its interior and then waits still waits for its neighbour to reach the
// same point — the overlap hides nothing of a late neighbour. BackgroundProgress tests the given
// operations from a helper thread every `period` until all have completed (or stop()), so that
// each side's transfers complete during the other's computation; MPICH's own asynchronous
// progress (MPIR_CVAR_ASYNC_PROGRESS) spins a core instead, which doubled a step on two cores.
//
// Only where MPI runs with MPI_THREAD_MULTIPLE (tessera's programs and the MPI tests ask for it);
// otherwise it does nothing and the operations move when the caller waits. The caller must not
// wait on or test these operations until stop() (or the destructor) has returned; operations'
// completion callbacks run on the helper thread.
#include "tessera/comm/communicator.hpp"

#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace tessera::comm {

class BackgroundProgress {
 public:
  explicit BackgroundProgress(std::vector<Work*> work,
                              std::chrono::microseconds period = std::chrono::microseconds(200));
  ~BackgroundProgress();
  BackgroundProgress(const BackgroundProgress&) = delete;
  BackgroundProgress& operator=(const BackgroundProgress&) = delete;

  /// Ends the helper thread and joins it; rethrows an error an operation's test raised there.
  void stop();
  /// Whether a helper thread was started (MPI_THREAD_MULTIPLE and something to progress).
  bool active() const { return m_started; }

 private:
  std::mutex m_mutex;
  std::condition_variable m_wake;
  bool m_stop = false;
  bool m_started = false;
  std::exception_ptr m_error;
  std::thread m_thread;
};

}  // namespace tessera::comm
