#pragma once
// Helpers for the MPI tests (tests/mpi): this process's place in MPI_COMM_WORLD.
#include <mpi.h>

namespace tessera::testing {

inline int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

inline int world_size() {
  int s = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

}  // namespace tessera::testing
