# tests/e2e/fault_common.bash — sourced by the fault tests of issue 18 (numerical_health, run_lock,
# signals, watchdog; the e2e glob takes *.sh only).
#
# Provides: $bin (the build's bin/), $mpiexec, $tmp (a scratch folder: on exit every process whose
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

"$mpiexec" -n 1 "$bin/tessera-data" gen -q -o "$tmp/gs.h5" --samples 64 --size 16 --dims 2 \
  --steps 5 --seed 1 || exit 1
