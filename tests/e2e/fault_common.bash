# tests/e2e/fault_common.bash — sourced by the fault tests of issue 18 (numerical_health, run_lock,
# signals, watchdog; the e2e glob takes *.sh only).
#
# Provides: $bin (the build's bin/), $mpiexec, `rank_pid PATTERN RANK` (the pid of the tessera
# process of MPI rank RANK whose command line matches PATTERN), $tmp (a scratch folder: on exit every process whose
# command line names it is continued and killed — a test may leave a stopped or live rank behind —
# and the folder removed), `fail MESSAGE` (prints it and marks the test failed: $failed = 1) and
# $tmp/gs.h5, a Gray-Scott regression dataset (split /train: 64 samples of (1, 16, 16), 2
# targets) the tests' decks train on.
set -uo pipefail
bin=${TESSERA_BIN:?TESSERA_BIN must name the bin/ folder of the build under test}
mpiexec=${MPIEXEC:-mpiexec.mpich}
tmp=$(mktemp -d)
trap 'pkill -CONT -f "$tmp/" 2>/dev/null; pkill -9 -f "$tmp/" 2>/dev/null; rm -rf "$tmp"' EXIT
failed=0
fail() {
  echo "FAIL: $*"
  failed=1
}
rank_pid() {  # rank_pid PATTERN RANK: by PMI_RANK in the process's environment; "" when none
  local pid
  for pid in $(pgrep -f "$1"); do
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == tessera ]] || continue
    if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "PMI_RANK=$2"; then
      echo "$pid"
      return
    fi
  done
}

"$mpiexec" -n 1 "$bin/tessera-data" gen -q -o "$tmp/gs.h5" --samples 64 --size 16 --dims 2 \
  --steps 5 --seed 1 || exit 1
