# bench/peers/lib.sh — shell functions shared by compare.sh and scaling.sh (sourced, not run).
#
#   source "bench/peers/lib.sh"
#
# The functions that parse files run Python as "$PYTHON" (the caller sets it; /usr/bin/python3 has
# Debian's python3-torch). Nothing here changes shell options or the environment.
# shellcheck shell=bash

# peers_tessera_rate METRICS BATCH FIRST
# Steady-state samples/s of a Tessera metrics.jsonl: drop the "train" records of steps <= FIRST
# (the first log window and the one-step record of step 1), then total samples / total time over
# the remaining windows (each window's samples / its rate). A window's samples are its steps x the
# global BATCH (the short last batch of an epoch is counted as a full one: it changes that
# window's weight, by well under 1%, not its rate). Prints the rate with one decimal; fails with a
# message when no record is left.
peers_tessera_rate() {
  "$PYTHON" - "$1" "$2" "$3" <<'EOF'
import json, sys
path, batch, first = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
records = [r for r in map(json.loads, filter(str.strip, open(path))) if r.get("kind") == "train"]
samples = seconds = 0.0
previous = 0
for r in records:
    n = (r["step"] - previous) * batch
    previous = r["step"]
    if r["step"] <= first or r["samples_per_s"] <= 0:
        continue
    samples += n
    seconds += n / r["samples_per_s"]
if seconds <= 0:
    sys.exit(f"{path}: no train records after step {first}")
print(f"{samples / seconds:.1f}")
EOF
}

# peers_tessera_split METRICS FIRST
# Where rank 0's step time went after step FIRST: the shares (%) of compute, exposed
# communication and data wait, from the compute_s, comm_s and data_s fields of the "train"
# records (summed over the windows, then divided by their total). Prints "compute comm data"
# with one decimal each, or "- - -" when the records lack the fields.
peers_tessera_split() {
  "$PYTHON" - "$1" "$2" <<'EOF'
import json, sys
path, first = sys.argv[1], int(sys.argv[2])
records = [r for r in map(json.loads, filter(str.strip, open(path)))
           if r.get("kind") == "train" and r["step"] > first]
keys = ("compute_s", "comm_s", "data_s")
if not records or any(k not in r for r in records for k in keys):
    print("- - -")
    sys.exit(0)
sums = [sum(r[k] for r in records) for k in keys]
total = sum(sums)
print(" ".join("%.1f" % (100 * s / total) if total > 0 else "-" for s in sums))
EOF
}

# peers_tessera_tensor_share METRICS FIRST
# The share (%) of rank 0's step time after step FIRST that the tensor-parallel layers spent in
# their collectives (tensor_s over compute_s + tensor_s + comm_s + data_s of the "train" records),
# with one decimal; "-" when the records lack tensor_s.
peers_tessera_tensor_share() {
  "$PYTHON" - "$1" "$2" <<'EOF'
import json, sys
path, first = sys.argv[1], int(sys.argv[2])
records = [r for r in map(json.loads, filter(str.strip, open(path)))
           if r.get("kind") == "train" and r["step"] > first]
keys = ("compute_s", "tensor_s", "comm_s", "data_s")
if not records or any(k not in r for r in records for k in keys):
    print("-")
    sys.exit(0)
sums = [sum(r[k] for r in records) for k in keys]
print("%.1f" % (100 * sums[1] / sum(sums)) if sum(sums) > 0 else "-")
EOF
}

# peers_tessera_accuracy METRICS
# Test accuracy (%) of the last "eval" record of a Tessera metrics.jsonl ("-" without one).
peers_tessera_accuracy() {
  "$PYTHON" -c '
import json, sys
ev = [r for r in map(json.loads, filter(str.strip, open(sys.argv[1]))) if r.get("kind") == "eval"]
print("%.2f" % (100 * ev[-1]["accuracy"]) if ev else "-")' "$1"
}

# peers_torch_summary LOG
# Parses the JSON summary, the last line of a fashion_torch.py log: prints "samples_per_s
# test_accuracy_pct" ("-" for the accuracy after --no-eval). Fails when the last line is not one.
peers_torch_summary() {
  "$PYTHON" -c '
import json, sys
s = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
acc = s.get("test_accuracy")
print("%.1f" % s["samples_per_s"], "-" if acc is None else "%.2f" % (100 * acc))' "$1"
}

# peers_load: the 1-minute load average.
peers_load() { cut -d' ' -f1 /proc/loadavg; }

# peers_seconds_since STAMP: seconds since a `date +%s%N` stamp, with one decimal.
peers_seconds_since() {
  local ds=$((($(date +%s%N) - $1) / 100000000))
  echo "$((ds / 10)).$((ds % 10))"
}

# peers_describe_build NAME TESSERA: the lines that say which build, CPU and BLAS kernels ran,
# each prefixed "NAME: ".
peers_describe_build() {
  local name=$1 tessera=$2 commit
  # The commit checked out (a read-only git query) and when the binary was linked.
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo "not a git checkout")
  echo "$name: $tessera linked $(date -r "$tessera" '+%F %T'), source at commit $commit;" \
    "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  # OpenBLAS picks its kernels from the CPU unless OPENBLAS_CORETYPE forces a set (Haswell = AVX2
  # only, even on an AVX-512 CPU); both peers' dense layers use OpenBLAS, PyTorch's convolutions
  # use oneDNN, which ignores it. Say which applies.
  echo "$name: OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-(unset: OpenBLAS detects the CPU)}"
}

_peers_fail() { echo "$1: $2" >&2; exit 2; }

# peers_check_setup PROG TORCH_CHECK TORCH_HINT INTEGER_VAR...
# The set-up both comparisons need, from the caller's TESSERA, MPIEXEC, DATA, PYTHON, ROUNDS,
# LOG_EVERY, MODELS and <MODEL>_STEPS: the programs and the data exist, "$PYTHON" -c TORCH_CHECK
# succeeds (else TORCH_HINT), each INTEGER_VAR is a non-negative integer, and every model's steps
# exceed the schedule's 200 warm-up steps and span three log windows. Exits 2 with "PROG: ..." on
# the first problem.
# shellcheck disable=SC2153  # TESSERA, MPIEXEC, DATA, ... are the caller's settings
peers_check_setup() {
  local prog=$1 torch_check=$2 torch_hint=$3 n m steps_var
  shift 3
  [[ -x $TESSERA ]] || _peers_fail "$prog" "$TESSERA not found: build Tessera first (tools/setup.sh), or set TESSERA="
  command -v "$MPIEXEC" >/dev/null || _peers_fail "$prog" "$MPIEXEC not found (apt-get install mpich)"
  [[ -f $DATA ]] || _peers_fail "$prog" "$DATA missing: run $(dirname "$TESSERA")/tessera-data import fashion-mnist"
  "$PYTHON" -c "$torch_check" 2>/dev/null || _peers_fail "$prog" "$PYTHON $torch_hint"
  for n in "$@"; do
    [[ ${!n} =~ ^[0-9]+$ ]] || _peers_fail "$prog" "$n=${!n} is not a non-negative integer"
  done
  ((ROUNDS >= 1)) || _peers_fail "$prog" "ROUNDS must be >= 1"
  ((LOG_EVERY >= 1)) || _peers_fail "$prog" "LOG_EVERY must be >= 1"
  for m in $MODELS; do
    [[ $m == mlp || $m == cnn ]] || _peers_fail "$prog" "MODELS holds '$m'; known: mlp cnn"
    steps_var=${m^^}_STEPS
    # The cosine schedule needs more steps than its 200 warm-up steps; the steady state needs
    # at least two log windows after the first.
    ((${!steps_var} > 200 && ${!steps_var} >= 3 * LOG_EVERY)) ||
      _peers_fail "$prog" "$steps_var=${!steps_var}: need > 200 (warm-up) and >= 3 x LOG_EVERY"
  done
}
