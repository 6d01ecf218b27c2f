#!/usr/bin/env bash
# tessera run on a data × tensor grid as a user runs it (DESIGN.md: the trainer is the unit of
# identity), on the real Fashion-MNIST with an MLP whose hidden layers are a Linear split by output
# rows and one split by input columns over the tensor axis:
# - on 2 × 2 ranks: exactly one progress line per logged step and one grid line, one metrics file
#   with one record per logged step, one commit per checkpoint and no partial file left;
# - tessera-ckpt sees whole tensors: verify passes, ls lists the global shapes, the checkpoint
#   equals (within 1e-5) the same 10 steps on one rank, and a restart at step 5 on 1 rank and on
#   tensor = 4 ends where the 2 × 2 run ended (within 1e-5);
# - a bad deck value exits 2 on every rank with one message; an error on one tensor rank only (its
#   dataset missing) exits 2 on every rank together; a rank killed mid-run ends the job (no hang).
set -uo pipefail
bin=$(cd "${TESSERA_BIN:?}" && pwd)
mpiexec=${MPIEXEC:-mpiexec.mpich}
dir=$(mktemp -d)
trap 'pkill -KILL -f "$dir" 2>/dev/null; rm -rf "$dir"' EXIT
if [[ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]]; then
  echo "[  SKIPPED ] Debian's dataset-fashion-mnist is not installed (tools/setup.sh installs it)"
  exit 0
fi
"$bin/tessera-data" import fashion-mnist --output "$dir/fm.h5" >/dev/null || exit 1

cat >"$dir/tp.toml" <<EOF
[run]
name = "tp"
seed = 5
steps = 10
log_every = 5
[parallel]
tensor = 2
[data]
train = "$dir/fm.h5:/train"
batch = 64
[model]
input = [1, 28, 28]
layers = [
  { flatten = {} },
  { linear = { out = 96, split = "output" } }, { relu = {} },
  { linear = { out = 64, split = "input" } }, { relu = {} },
  { linear = { out = 10 } },
]
loss = "softmax_cross_entropy"
[optimizer]
type = "sgd"
lr = 0.05
momentum = 0.9
clip_grad_norm = 1.0
[checkpoint]
every_steps = 5
keep = 5
EOF

failed=0
fail() {
  echo "FAIL: $*"
  failed=$((failed + 1))
}
run() {  # args: log, ranks, tessera arguments... → exit code
  local log=$1 n=$2
  shift 2
  timeout -k 10 120 "$mpiexec" -n "$n" "$bin/tessera" "$@" >"$log" 2>&1 </dev/null
}

# --- 2 × 2: one voice, one metrics file, one commit per checkpoint ------------------------------
run "$dir/grid.log" 4 run "$dir/tp.toml" run.output="$dir/grid" || fail "2 × 2 run: exit $?"
grep -qx 'grid: 4 ranks = trainers 1 × data 2 × pipeline 1 × tensor 2 × spatial \[1, 1\]' \
  "$dir/grid.log" || fail "no grid line"
[[ $(grep -c '^grid: ' "$dir/grid.log") -eq 1 ]] || fail "grid lines: want 1"
for s in 1 5 10; do
  [[ $(grep -cE "^step +$s/10 " "$dir/grid.log") -eq 1 ]] || fail "progress lines for step $s: want 1"
done
[[ $(grep -c '^step ' "$dir/grid.log") -eq 3 ]] || fail "progress lines: want 3"
[[ $(grep -c '^checkpoint: ' "$dir/grid.log") -eq 2 ]] || fail "checkpoint lines: want 2"
[[ $(find "$dir/grid" -name metrics.jsonl | wc -l) -eq 1 ]] || fail "metrics files: want 1"
[[ $(grep -c '"kind": "train"' "$dir/grid/metrics.jsonl") -eq 3 ]] || fail "train records: want 3"
[[ $(grep -c '"kind": "checkpoint"' "$dir/grid/metrics.jsonl") -eq 2 ]] || fail "checkpoint records"
grep -q '"grad_norm": ' "$dir/grid/metrics.jsonl" || fail "no grad_norm in the metrics"
listing=$(ls -A "$dir/grid/ckpt" | tr '\n' ' ')
[[ $listing == "ckpt-00000005.h5 ckpt-00000010.h5 latest " ]] || fail "checkpoint folder: $listing"
[[ $(cat "$dir/grid/ckpt/latest") == ckpt-00000010.h5 ]] || fail "latest"
grep -q '^final: 10 steps' "$dir/grid.log" || fail "no final line"
[[ $failed -eq 0 ]] || sed 's/^/    /' "$dir/grid.log" | tail -n 30

# --- tessera-ckpt sees whole tensors ------------------------------------------------------------
ckpt="$dir/grid/ckpt/ckpt-00000010.h5"
out=$("$bin/tessera-ckpt" verify "$ckpt" 2>&1) || fail "verify: $out"
grep -q 'OK (12 tensors' <<<"$out" || fail "verify: $out"
out=$("$bin/tessera-ckpt" ls "$ckpt" 2>&1)
# The tree lists each tensor's leaf name under its layer: linear1's bias, then its weight, ...
shapes=$(grep -E '^ +(bias|weight) +\(' <<<"$out" | awk '{print $1, $2, $3}' | head -n 4 | tr '\n' ';')
[[ $shapes == "bias (96) float32;weight (96, 784);bias (64) float32;weight (64, 96);" ]] ||
  fail "ls: whole shapes of linear1 and linear3, got: $shapes"
"$bin/tessera-ckpt" export "$ckpt" -o "$dir/w.npz" >/dev/null || fail "export"
if /usr/bin/python3 -c 'import numpy' 2>/dev/null; then
  /usr/bin/python3 - "$dir/w.npz" <<'EOF' || fail "export: shapes"
import sys, numpy
w = numpy.load(sys.argv[1])
shapes = {k: w[k].shape for k in w.files}
want = {"linear1.weight": (96, 784), "linear3.weight": (64, 96), "linear5.weight": (10, 64)}
for k, s in want.items():
    key = [f for f in w.files if f.endswith(k)]
    assert key and w[key[0]].shape == s, (k, shapes)
EOF
fi
run "$dir/one.log" 1 run "$dir/tp.toml" run.output="$dir/one" parallel.tensor=1 ||
  fail "one rank: exit $?"
out=$("$bin/tessera-ckpt" diff "$ckpt" "$dir/one/ckpt/ckpt-00000010.h5" --tolerance 1e-5 2>&1) ||
  fail "2 × 2 vs one rank: $(tail -n 3 <<<"$out")"

# --- restart at step 5 on 1 rank and on tensor = 4 -----------------------------------------------
for grid in "1 parallel.tensor=1" "4 parallel.tensor=4"; do
  read -r n over <<<"$grid"
  run "$dir/re$n.log" "$n" run "$dir/tp.toml" run.output="$dir/re$n" "$over" \
    checkpoint.restart="$dir/grid/ckpt/ckpt-00000005.h5" || fail "restart on $n: exit $?"
  grep -q '^restart: from .*ckpt-00000005.h5 at step 5 (saved on 4 ranks: trainers 1 × data 2 × pipeline 1 × tensor 2' "$dir/re$n.log" ||
    fail "restart on $n: no restart line"
  out=$("$bin/tessera-ckpt" diff "$ckpt" "$dir/re$n/ckpt/ckpt-00000010.h5" --tolerance 1e-5 2>&1) ||
    fail "restart on $n ($over) vs 2 × 2: $(tail -n 3 <<<"$out")"
done

# --- bad input on a 2 × 2 grid: exit 2, one message, every rank --------------------------------
expect_error() {  # args: label, log, exit code, message
  local label=$1 log=$2 code=$3 message=$4
  if [[ $code -ne 2 || $(grep -c '^error: ' "$log") -ne 1 ]] || ! grep -qxF "error: $message" "$log"; then
    fail "$label: exit $code (want 2) and one line: error: $message"
    sed 's/^/    got: /' "$log" | tail -n 5
  fi
}
run "$dir/bad1.log" 4 run "$dir/tp.toml" run.output="$dir/bad1" model.layers[3].linear.split=none
expect_error "a whole layer after a split one" "$dir/bad1.log" $? \
  "command line: linear 'model.layers[3]' needs whole samples, but its input is (96,) dim 0 over tensor; end the split before it (a linear with split = \"input\" joins the tensor axis's blocks)"
run "$dir/bad2.log" 4 run "$dir/tp.toml" run.output="$dir/bad2" model.layers[1].linear.out=1
expect_error "a split wider than its features" "$dir/bad2.log" $? \
  "command line: linear 'linear1': split = \"output\" cuts its 1 output features over 2 tensor ranks; every rank needs at least one"

# An error on one tensor rank only: the last rank (data 1, tensor 1) runs in a folder without the
# dataset the deck names relatively; every rank leaves together with its message.
mkdir -p "$dir/good" "$dir/bad"
ln -s "$dir/fm.h5" "$dir/good/fm.h5"
timeout -k 10 60 "$mpiexec" -n 3 -wdir "$dir/good" "$bin/tessera" run "$dir/tp.toml" \
  data.train=fm.h5:/train run.output="$dir/mpmd" : -n 1 -wdir "$dir/bad" "$bin/tessera" run \
  "$dir/tp.toml" data.train=fm.h5:/train run.output="$dir/mpmd" >"$dir/mpmd.log" 2>&1 </dev/null
code=$?
[[ $code -eq 2 ]] || fail "one rank without its data: exit $code (want 2; 124 is a hang)"
grep -q "^error: .*data.train: fm.h5: no such file" "$dir/mpmd.log" ||
  { fail "one rank without its data: message"; sed 's/^/    got: /' "$dir/mpmd.log" | tail -n 5; }
[[ $(grep -c '^error: ' "$dir/mpmd.log") -eq 1 ]] || fail "one rank without its data: one message"

# A tensor rank killed mid-run: mpiexec ends the job instead of the others waiting forever.
timeout -k 10 60 "$mpiexec" -n 4 "$bin/tessera" run "$dir/tp.toml" run.steps=1000000 \
  run.log_every=1 run.output="$dir/killed" >"$dir/killed.log" 2>&1 </dev/null &
pid=$!
for _ in $(seq 1 150); do
  grep -q '^step ' "$dir/killed.log" 2>/dev/null && break
  sleep 0.2
done
victim=$(pgrep -f "tessera run .*$dir/killed" | sort -n | tail -n 1)
[[ -n $victim ]] && kill -KILL "$victim"
wait $pid
code=$?
[[ $code -ne 0 && $code -ne 124 && $code -ne 137 ]] || fail "a killed rank: exit $code (124/137: hang)"

if [[ $failed -ne 0 ]]; then
  echo "$failed check(s) failed"
  exit 1
fi
echo "tensor parallel end to end: every check passed"
