#include "tessera/comm/agree.hpp"

#include "tessera/comm/communicator.hpp"
#include "tessera/comm/watchdog.hpp"

#include <string>
#include <vector>

namespace tessera::comm {

void check_mpi(int code, const char* call, const char* file, int line) {
  if (code == MPI_SUCCESS) {
    return;
  }
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  throw Error(std::string(call) + " failed: " + std::string(text, static_cast<size_t>(len)) + " [" +
              file + ":" + std::to_string(line) + "]");
}

void agree(MPI_Comm comm, const std::function<void()>& phase) {
  int rank = 0;
  int size = 1;
  TESSERA_MPI_CHECK(MPI_Comm_rank(comm, &rank));
  TESSERA_MPI_CHECK(MPI_Comm_size(comm, &size));
  std::string message;
  int code = 0;
  DeckLocation where;
  try {
    phase();
  } catch (const Error& e) {
    message = e.message();
    code = e.exit_code();
    where = e.where();
  } catch (const std::exception& e) {
    message = e.what();
    code = 1;
  }
  // The lowest failing rank speaks for everyone.
  const int mine = message.empty() && code == 0 ? size : rank;
  int speaker = size;
  {
    watchdog::Blocked blocked(watchdog::record_start("agree (an error check)", "", 4));
    TESSERA_MPI_CHECK(MPI_Allreduce(&mine, &speaker, 1, MPI_INT, MPI_MIN, comm));
  }
  if (speaker == size) {
    return;
  }
  // Broadcast message, deck location and exit code from the speaker.
  std::vector<std::string> parts{message, where.file, where.key};
  std::vector<long long> lengths(parts.size());
  long long ints[2] = {code, where.line};
  for (size_t i = 0; i < parts.size(); ++i) {
    lengths[i] = static_cast<long long>(parts[i].size());
  }
  TESSERA_MPI_CHECK(
      MPI_Bcast(lengths.data(), static_cast<int>(lengths.size()), MPI_LONG_LONG, speaker, comm));
  TESSERA_MPI_CHECK(MPI_Bcast(ints, 2, MPI_LONG_LONG, speaker, comm));
  for (size_t i = 0; i < parts.size(); ++i) {
    parts[i].resize(static_cast<size_t>(lengths[i]));
    TESSERA_MPI_CHECK(
        MPI_Bcast(parts[i].data(), static_cast<int>(lengths[i]), MPI_CHAR, speaker, comm));
  }
  Error agreed(parts[0], DeckLocation{parts[1], static_cast<int>(ints[1]), parts[2]});
  agreed.with_exit_code(static_cast<int>(ints[0])).mark_on_all_ranks();
  throw agreed;
}

void agree(const Communicator& comm, const std::function<void()>& phase) {
  agree(comm.mpi_comm(), phase);
}

}  // namespace tessera::comm
