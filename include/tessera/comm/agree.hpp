#pragma once
// Collective agreement on errors (LAMMPS's "all" errors): a phase that can fail on some ranks —
// opening a dataset, validating a deck — runs on every rank, then the ranks agree on the outcome.
// If any rank failed, every rank throws the same tessera::Error (the message of the lowest failing
// rank, marked on_all_ranks), so rank 0 reports once and all ranks leave together. Nobody hangs in
// a later collective waiting for a rank that has already left.
#include "tessera/core/error.hpp"

#include <mpi.h>

#include <functional>

namespace tessera::comm {

class Communicator;

/// Runs `phase` on every rank of `comm` and agrees on its outcome (see above). Must be called by
/// every rank of `comm`.
void agree(MPI_Comm comm, const std::function<void()>& phase);
/// The same over the ranks of `comm` (whatever its backend: the agreement uses its MPI group).
void agree(const Communicator& comm, const std::function<void()>& phase);

/// Checks an MPI return code; throws tessera::Error naming the call.
void check_mpi(int code, const char* call, const char* file, int line);

}  // namespace tessera::comm

#define TESSERA_MPI_CHECK(call) ::tessera::comm::check_mpi((call), #call, __FILE__, __LINE__)
