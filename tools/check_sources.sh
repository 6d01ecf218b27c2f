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
#   3. no HDF5 call in src/ outside the library lock: the HDF5 that Debian ships is not built
#      thread-safe, and a dataset reader's thread reads beside the main thread's checkpoint I/O
#      (an unlocked H5Pget_layout in a restart crashed 1 run in 5). Each call is wrapped in
#      TESSERA_H5(...), or its function (or block) holds hdf5_mutex() (TESSERA_H5_LOCK) before it —
#      HDF5's predefined classes and types (H5P_FILE_ACCESS, H5T_NATIVE_FLOAT) count as calls: each
#      expands to H5open() and a library global; a callback
#      that HDF5 calls under the caller's lock says "hdf5_mutex() held" in a comment (code that
#      runs before main: "no hdf5_mutex() needed").
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
# A function starts and ends at column 0 (namespaces are not indented); inside it a lock line
# (TESSERA_H5_LOCK or hdf5_mutex()) covers the raw calls after it.
unlocked=$(find src -name '*.cpp' -o -name '*.hpp' -o -name '*.cu' | sort | xargs awk '
  function indent(text) { match(text, /^[[:space:]]*/); return RLENGTH }
  FNR == 1 { locked = 0; inwrap = 0 }
  /^[^[:space:]#\/]/ { locked = 0 }
  locked && /^[[:space:]]*}/ && indent($0) < lock_indent { locked = 0 }
  /\/\/.*hdf5_mutex\(\) (held|needed)/ { locked = 1; lock_indent = indent($0) }
  /^[[:space:]]*\/\// { next }
  {
    line = $0
    sub(/\/\/.*/, "", line)
    if (line ~ /TESSERA_H5_LOCK|hdf5_mutex\(\)/) { locked = 1; lock_indent = indent(line) }
    was_wrapped = inwrap
    if (line ~ /;[[:space:]]*$/) { inwrap = 0 }
    if (was_wrapped) { next }
    if (sub(/TESSERA_H5\(.*/, "", line) && $0 !~ /;[[:space:]]*(\/\/.*)?$/) { inwrap = 1 }
    # A call, or a predefined class or type (H5P_FILE_ACCESS, H5T_NATIVE_FLOAT): each expands to
    # H5open() and a library global.
    gsub(/H5P_DEFAULT/, "", line)
    if (!locked && (line ~ /(^|[^A-Za-z0-9_])H5[A-Za-z][A-Za-z0-9_]*[[:space:]]*\(/ ||
                    line ~ /(^|[^A-Za-z0-9_])(H5P_[A-Z_]+|H5T_(NATIVE|STD|IEEE)_[A-Z0-9_]+|H5T_C_S1)/)) {
      print FILENAME ":" FNR ":" $0
    }
  }')
if [[ -n $unlocked ]]; then
  echo "check_sources: HDF5 called outside its lock (wrap in TESSERA_H5 or hold hdf5_mutex()):"
  sed 's/^/  /' <<<"$unlocked"
  status=1
fi
[[ $status -eq 0 ]] &&
  echo "check_sources: OK (MPI only in src/comm/, printing only through the reporter, HDF5 under its lock)"
exit $status
