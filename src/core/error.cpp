#include "tessera/core/error.hpp"

#if TESSERA_HAVE_MPI
#include <mpi.h>

#include <atomic>
#endif

namespace tessera {
namespace {

// The world rank for the message, or -1. The CUDA-only build (TESSERA_GPU_ONLY) has no MPI.
// Errors are also made on helper threads (a dataset reader's prefetch, the watchdog): only the
// calls MPI allows from any thread are made there (MPI_Initialized, MPI_Finalized,
// MPI_Query_thread, MPI_Is_thread_main), MPI_Comm_rank only on the main thread or under
// MPI_THREAD_MULTIPLE; the rank, once known, is kept.
int world_rank_or_minus_one() {
#if TESSERA_HAVE_MPI
  static std::atomic<int> known{-1};
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) {
    return -1;
  }
  if (const int rank = known.load(std::memory_order_relaxed); rank >= 0) {
    return rank;
  }
  int level = MPI_THREAD_SINGLE;
  int main_thread = 0;
  MPI_Query_thread(&level);
  MPI_Is_thread_main(&main_thread);
  if (main_thread != 0 || level == MPI_THREAD_MULTIPLE) {
    int rank = -1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    known.store(rank, std::memory_order_relaxed);
    return rank;
  }
#endif
  return -1;
}

std::string with_location(const std::string& message, const DeckLocation& where) {
  if (where.empty()) {
    return message;
  }
  if (where.line > 0) {
    return where.file + ":" + std::to_string(where.line) + ": " + message;
  }
  return (where.file.empty() ? where.key : where.file) + ": " + message;
}

}  // namespace

Error::Error(const std::string& message, DeckLocation where)
    : std::runtime_error(with_location(message, where)),
      m_message(message),
      m_where(std::move(where)),
      m_rank(world_rank_or_minus_one()) {}

namespace detail {
void throw_check_failure(const char* file, int line, const char* condition,
                         const std::string& message) {
  throw Error(message + " [check '" + condition + "' failed at " + file + ":" +
              std::to_string(line) + "]");
}
}  // namespace detail

}  // namespace tessera
