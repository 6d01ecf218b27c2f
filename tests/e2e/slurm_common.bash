# tests/e2e/slurm_common.bash — sourced by tests/e2e/slurm_*.sh (the e2e glob takes *.sh only).
#
# Starts a one-node Slurm cluster with tools/slurm_local.sh and a submit folder laid out like the
# repository root, as the job scripts expect it: build/bin -> the build's bin/ under test,
# inputs -> the repository's decks, jobs -> its job scripts, data/fashion-mnist.h5 imported from Debian's
# dataset-fashion-mnist. On exit — success, failure or a signal — the cluster is stopped (its jobs
# cancelled, its daemons ended by PID) and every file removed.
#
# When the tests run: TESSERA_SLURM_TESTS=1 (tools/test.sh sets it from `--slurm`, and .ci/run
# uses it) requires them: Slurm missing or failing to start is then a failure. Otherwise they run
# where slurm-wlm and munge are installed and skip with a message where they are not or where the
# cluster cannot be started; TESSERA_SLURM_TESTS=0 skips them.
#
# Provides: $root (repository), $bin (the build's bin/), $work (scratch), $submit (the submit
# folder, the current directory after sourcing), $cluster (the cluster's folder; its SLURM_CONF is
# exported), and the helpers below.
set -euo pipefail
bin=${TESSERA_BIN:?TESSERA_BIN must name the bin/ folder of the build under test}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
slurm_local=$root/tools/slurm_local.sh

skip() {
  echo "[  SKIPPED ] $*"
  exit 0
}
# Skip, or fail where the Slurm tests were asked for.
unavailable() {
  if [[ ${TESSERA_SLURM_TESTS:-} == 1 ]]; then
    echo "FAIL: $* (TESSERA_SLURM_TESTS=1 requires the Slurm tests)"
    exit 1
  fi
  skip "$*"
}

[[ ${TESSERA_SLURM_TESTS:-} == 0 ]] && skip "Slurm tests turned off (TESSERA_SLURM_TESTS=0)"
"$slurm_local" available 2>/dev/null ||
  unavailable "Slurm is not installed: \`tools/setup.sh --slurm\` (or \`tools/test.sh --slurm\`)" \
    "installs Debian's slurm-wlm and munge for the job-script tests"
[[ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]] ||
  skip "Debian's dataset-fashion-mnist is not installed (tools/setup.sh installs it)"

work=$(mktemp -d)
cluster=""
watchdog=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  cd /
  if [[ -n $cluster ]]; then
    "$slurm_local" stop "$cluster" || true
  fi
  [[ -n $watchdog ]] && kill "$watchdog" 2>/dev/null
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "FAIL: interrupted"; exit 1' INT TERM HUP
# A deadline of our own, below ctest's TIMEOUT (900 s): ctest ends a test that overruns with
# SIGKILL, which would leave the daemons running; this TERM lets cleanup stop them.
deadline=${TESSERA_SLURM_TEST_DEADLINE:-840}
(
  trap 'kill "$s" 2>/dev/null; exit 0' TERM
  sleep "$deadline" &
  s=$!
  wait "$s" && echo "FAIL: the test's own deadline of $deadline s has passed" && kill -TERM $$
) &
watchdog=$!
# Run a long command in the background and wait for it: bash runs the signal traps above only
# between commands, and `wait` is interrupted by a signal where a foreground command is not.
run_bg() {
  "$@" &
  wait $!
}

t_start=$(date +%s.%N)
if ! cluster=$("$slurm_local" start 2>"$work/start.log"); then
  cat "$work/start.log"
  cluster=""
  unavailable "the local Slurm cluster could not be started (tools/slurm_local.sh start; log above)"
fi
cat "$work/start.log"
# shellcheck disable=SC1091
source "$cluster/env"

# Seconds since $1 (a `date +%s.%N`), to 0.1 s.
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.1 s until it succeeds; fail after
# SECONDS (so that a hung job fails the test here, and cleanup still runs, before ctest's timeout).
wait_for() {
  local limit=$1 what=$2 i
  shift 2
  for ((i = 0; i < limit * 10; ++i)); do
    "$@" && return 0
    sleep 0.1
  done
  echo "FAIL: no $what after $limit s"
  squeue || true
  return 1
}

# Jobs of this cluster still pending or running (finished ones leave squeue at once; the test
# cluster forgets them within a minute, so the tests read exit codes from the job logs).
jobs_left() { squeue -h -o %i 2>/dev/null; }
no_jobs_left() { [[ -z $(jobs_left) ]]; }

# The submit folder: what `cd /path/to/tessera` gives a user.
submit=$work/root
mkdir -p "$submit/build" "$submit/data"
ln -s "$bin" "$submit/build/bin"
ln -s "$root/inputs" "$submit/inputs"
ln -s "$root/jobs" "$submit/jobs"  # the scripts source jobs/slurm/chain.bash
run_bg "$bin/tessera-data" import fashion-mnist --output "$submit/data/fashion-mnist.h5" >/dev/null
cd "$submit"
echo "cluster and submit folder ready in $(since "$t_start") s"
