#!/usr/bin/env bash
# tools/check_sources.sh [ROOT] — the project's source rules that a compiler does not check
# (docs/architecture.md, "Who talks to MPI, who prints"):
#   1. no MPI call outside src/comm/ (every collective goes through comm::Communicator, so that any
#      grid axis can be served by MPI, shared memory or NCCL), except the program's start-up and
#      last word (src/apps/app_main.cpp: MPI_Init, MPI_Abort, MPI_Finalize) and the rank an error
#      names (src/core/error.cpp); HDF5's MPI-IO set-up (src/io/hdf5.cpp) takes a communicator's
#      MPI_Comm and calls no MPI function. Applies to src/ and tools/.
#   2. no printing from src/ outside the reporter (src/train/reporter.cpp) and main()'s error line
#      (src/apps/app_main.cpp): library code throws or hands its words to the program's Reporter.
# Prints every offending line as FILE:LINE: TEXT and exits 1; exits 0 when there is none.
set -uo pipefail
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$root" || exit 2
status=0

mpi=$(grep -rnE '\bMPI_[A-Z][a-z_]*[[:space:]]*\(' src tools --include='*.cpp' --include='*.hpp' \
  --include='*.cu' |
  grep -vE '^src/comm/|^src/apps/app_main\.cpp:|^src/core/error\.cpp:' |
  grep -vE '^[^:]+:[0-9]+:[[:space:]]*//')
if [[ -n $mpi ]]; then
  echo "check_sources: MPI called outside src/comm/ (use comm::Communicator):"
  sed 's/^/  /' <<<"$mpi"
  status=1
fi

printing=$(grep -rnE '\b(printf|fprintf|vprintf|puts|fputs|putchar|perror)[[:space:]]*\(|std::(cout|cerr|clog)\b|fmt::print\b' \
  src --include='*.cpp' --include='*.hpp' --include='*.cu' |
  grep -vE '^src/train/reporter\.cpp:|^src/apps/app_main\.cpp:' |
  grep -vE '^[^:]+:[0-9]+:[[:space:]]*//')
if [[ -n $printing ]]; then
  echo "check_sources: printing in src/ outside the reporter (train::Reporter):"
  sed 's/^/  /' <<<"$printing"
  status=1
fi
[[ $status -eq 0 ]] && echo "check_sources: OK (MPI only in src/comm/, printing only through the reporter)"
exit $status
