#include "tessera/comm/progress.hpp"

#include <mpi.h>

#include <utility>

namespace tessera::comm {

BackgroundProgress::BackgroundProgress(std::vector<Work*> work, std::chrono::microseconds period) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  int level = MPI_THREAD_SINGLE;
  if (initialized != 0) {
    MPI_Query_thread(&level);
  }
  if (level < MPI_THREAD_MULTIPLE || work.empty()) {
    return;
  }
  m_started = true;
  m_thread = std::thread([this, work = std::move(work), period] {
    std::unique_lock<std::mutex> lock(m_mutex);
    for (;;) {
      bool all = true;
      try {
        for (Work* w : work) {
          all = (w->is_completed() || w->test()) && all;
        }
      } catch (...) {
        m_error = std::current_exception();
        return;
      }
      if (all || m_wake.wait_for(lock, period, [this] { return m_stop; })) {
        return;
      }
    }
  });
}

BackgroundProgress::~BackgroundProgress() {
  try {
    stop();
  } catch (...) {  // NOLINT(bugprone-empty-catch): the error surfaces when the caller waits
  }
}

void BackgroundProgress::stop() {
  if (!m_thread.joinable()) {
    return;
  }
  {
    const std::lock_guard<std::mutex> lock(m_mutex);
    m_stop = true;
  }
  m_wake.notify_one();
  m_thread.join();
  if (m_error) {
    std::rethrow_exception(std::exchange(m_error, nullptr));
  }
}

}  // namespace tessera::comm
