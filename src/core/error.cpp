#include "tessera/core/error.hpp"

#include <mpi.h>

namespace tessera {
namespace {

int world_rank_or_minus_one() {
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) {
    return -1;
  }
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

std::string with_location(const std::string& message, const DeckLocation& where) {
  if (where.empty()) {
    return message;
  }
  if (where.line > 0) {
    return fmt::format("{}:{}: {}", where.file, where.line, message);
  }
  return fmt::format("{}: {}", where.file.empty() ? where.key : where.file, message);
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
  throw Error(fmt::format("{} [check '{}' failed at {}:{}]", message, condition, file, line));
}
}  // namespace detail

}  // namespace tessera
