#!/usr/bin/env bash
# Pipeline parallelism as a user runs it: `tessera run` with parallel.pipeline on the MLP, the CNN
# (BatchNorm's running statistics on a stage) and the transformer (a `repeat` cut between blocks),
# each against the same deck on one rank accumulating the same micro-batches (the CNN at data 2
# against data 2 without a pipeline: BatchNorm normalises over each data rank's micro-batch):
# - pipeline 2 and 4, data × pipeline 2 × 2 and tensor × pipeline 2 × 2: after 10 steps every
#   tensor of the checkpoint (parameters, buffers, optimizer state) equals one rank's within 1e-5
#   (tessera-ckpt diff), and so does the printed loss;
# - GPipe and 1F1B give the same checkpoint bit for bit, and a pure pipeline equals one rank bit
#   for bit (each stage computes what one rank computes, in the same order);
# - one progress line per window with each stage's idle share and the schedule's prediction for the
#   stages' measured compute ("idle NN%/NN% (schedule NN%/NN%)") and metrics records with "idle",
#   "idle_predicted" and "peak_activation_bytes" per stage; the grid and stage lines from rank 0 only;
# - restarts across pipeline sizes and stage cuts without conversion, bit for bit in
#   deterministic mode, with gradient clipping: the checkpoint of step 5 written at pipeline 2
#   resumes at pipeline 1, 4, another cut and data × pipeline 2 × 2 and ends where the
#   uninterrupted run ends;
# - a head tied to the embedding of an earlier stage trains as on one rank (within 1e-5, at
#   pipeline 2 and tensor × pipeline 2 × 2), its table stored once; a one-rank checkpoint restarts
#   at pipeline 4; with ZeRO-1 it is refused (exit 2, one message).
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
awk 'BEGIN { for (i = 0; i < 600; i++) print "In the beginning God created the heaven and the earth. And the earth was without form." }' >"$dir/text.txt"
"$bin/tessera-data" import text "$dir/text.txt" --output "$dir/text.h5" --validation 0 >/dev/null || exit 1

common() {  # the [run], [optimizer] and [checkpoint] of every deck
  cat <<EOF
[run]
name = "pp"
seed = 3
steps = 10
log_every = 5
[optimizer]
type = "sgd"
lr = 0.05
momentum = 0.9
clip_grad_norm = 1.0
[checkpoint]
every_steps = 5
keep = 5
EOF
}
{
  common
  cat <<EOF
[data]
train = "$dir/fm.h5:/train"
batch = 32
micro_batches = 4
[model]
input = [1, 28, 28]
layers = [
  { flatten = {} },
  { linear = { out = 48, split = "output" } }, { relu = {} },
  { linear = { out = 32, split = "input" } }, { relu = {} },
  { linear = { out = 10 } },
]
loss = "softmax_cross_entropy"
EOF
} >"$dir/mlp.toml"
{
  common
  cat <<EOF
[data]
train = "$dir/fm.h5:/train"
batch = 16
micro_batches = 4
[model]
input = [1, 28, 28]
layers = [
  { conv2d = { out = 4, kernel = 3, pad = 1, bias = false } }, { batchnorm2d = {} }, { relu = {} },
  { maxpool2d = { kernel = 2 } },
  { conv2d = { out = 8, kernel = 3 } }, { relu = {} }, { maxpool2d = { kernel = 2 } },
  { flatten = {} },
  { linear = { out = 32, split = "output" } }, { relu = {} },
  { linear = { out = 10, split = "input" } },
]
loss = "softmax_cross_entropy"
EOF
} >"$dir/cnn.toml"
{
  common
  cat <<EOF
[data]
train = "$dir/text.h5:/train"
batch = 8
micro_batches = 4
[model]
context = 16
layers = [
  { embedding = { vocab = 256, dim = 32, split = true } },
  { repeat = { times = 3, layers = [
      { residual = { layers = [ { layernorm = {} }, { attention = { heads = 4, split = true } } ] } },
      { residual = { layers = [ { layernorm = {} }, { linear = { out = 64, split = "output" } },
                               { gelu = {} }, { linear = { out = 32, split = "input" } },
                               { dropout = { p = 0.1 } } ] } },
  ] } },
  { layernorm = {} },
  { linear = { out = 256, bias = false, split = "output" } },
]
loss = "softmax_cross_entropy"
EOF
} >"$dir/gpt.toml"

failed=0
fail() {
  echo "FAIL: $*"
  failed=$((failed + 1))
}
run() {  # run NAME RANKS DECK overrides... → exit code; output in $dir/NAME, log $dir/NAME.log
  local name=$1 n=$2 deck=$3
  shift 3
  timeout -k 10 300 "$mpiexec" -n "$n" "$bin/tessera" run "$deck" run.output="$dir/$name" "$@" \
    >"$dir/$name.log" 2>&1 </dev/null
}
ckpt() { echo "$dir/$1/ckpt/ckpt-000000$2.h5"; }
same() {  # same A B [tolerance]: tessera-ckpt diff's verdict
  local out
  out=$("$bin/tessera-ckpt" diff "$1" "$2" ${3:+--tolerance "$3"} 2>&1) ||
    { echo "$out" | grep -v ' equal$\| within tolerance$' | tail -n 8; return 1; }
}
last_loss() { grep -E '^step +10/10 ' "$dir/$1.log" | sed -E 's/.* loss ([0-9.]+) .*/\1/'; }

for model in mlp cnn gpt; do
  deck=$dir/$model.toml
  run "$model-1" 1 "$deck" || fail "$model on one rank: exit $?"
  ref=$(ckpt "$model-1" 10)
  for case in "p2 2 parallel.pipeline=2" "p4 4 parallel.pipeline=4" \
    "d2p2 4 parallel.pipeline=2 parallel.data=2" "t2p2 4 parallel.pipeline=2 parallel.tensor=2" \
    "gpipe 2 parallel.pipeline=2 parallel.schedule=gpipe"; do
    read -r name n overrides <<<"$case"
    # shellcheck disable=SC2086
    run "$model-$name" "$n" "$deck" $overrides || { fail "$model $name: exit $?"; continue; }
    base=$model-1
    if [[ $model == cnn && $name == d2p2 ]]; then
      # BatchNorm normalises over each data rank's micro-batch: the reference for data 2 is data
      # 2 without a pipeline (the same groups of samples), not one rank.
      run cnn-d2 2 "$deck" parallel.data=2 || fail "cnn data 2: exit $?"
      base=cnn-d2
    fi
    same "$(ckpt "$base" 10)" "$(ckpt "$model-$name" 10)" 1e-5 ||
      fail "$model $name: the checkpoint differs from $base's beyond 1e-5"
    [[ $(last_loss "$model-$name") == "$(last_loss "$base")" ]] ||
      fail "$model $name: loss $(last_loss "$model-$name"), $base $(last_loss "$base")"
  done
  same "$ref" "$(ckpt "$model-p2" 10)" || fail "$model: pipeline 2 is not one rank's bit for bit"
  same "$(ckpt "$model-p2" 10)" "$(ckpt "$model-gpipe" 10)" || fail "$model: GPipe and 1F1B differ"
done

# --- what a pipelined run prints and records ------------------------------------------------------
log=$dir/mlp-p2.log
[[ $(grep -c '^grid: ' "$log") -eq 1 ]] || fail "grid lines: want 1"
grep -qE '^pipeline: 2 stages \(flatten0\.\.linear[0-9] \| [a-z]+[0-9]\.\.linear5\), 1f1b, 4 micro-batches of 8 per step; bubble 20% in theory$' "$log" ||
  fail "no stage line: $(grep '^pipeline' "$log")"
[[ $(grep -c '^step ' "$log") -eq 3 ]] || fail "progress lines: want 3 (steps 1, 5, 10)"
grep -qE '^step +10/10 .* idle +[0-9]+%/[0-9]+% \(schedule [0-9]+%/[0-9]+%\) comm' "$log" ||
  fail "no idle shares per stage"
rec=$(grep '"kind": "train"' "$dir/mlp-p2/metrics.jsonl" | tail -n 1)
grep -qE '"idle": \[[0-9.]+, [0-9.]+\], "idle_predicted": \[[0-9.]+, [0-9.]+\], "peak_activation_bytes": \[[0-9]+, [0-9]+\], "stage_compute_s": \[[0-9.]+, [0-9.]+\], "stage_schedule_s": \[[0-9.]+, [0-9.]+\]' \
  <<<"$rec" || fail "no idle, idle_predicted or peak_activation_bytes per stage in the metrics"
# The schedule's prediction for the stages' time in their forwards and backwards: a share in
# [0, 1) on both, from stage times above zero. (Which stage waits more is not checked here: the
# share is the predicted wait over the stage's whole working time, which holds the optimizer,
# loss and data as well; on this tiny MLP those outweigh the schedule's 1 ms, and the order of the
# shares need not follow the order of the schedule times — CI saw [0.016, 0.047] beside
# [0.0008, 0.0009] s. unit_pipeline checks the simulation's waits against timelines worked by
# hand.)
pred=$(sed -E 's/.*"idle_predicted": \[([^]]*)\].*/\1/' <<<"$rec")
work=$(sed -E 's/.*"stage_schedule_s": \[([^]]*)\].*/\1/' <<<"$rec")
awk -v p="$pred" -v c="$work" 'BEGIN { split(p, x, ", "); split(c, t, ", ");
  ok = x[1] >= 0 && x[1] < 1 && x[2] >= 0 && x[2] < 1 && t[1] > 0 && t[2] > 0;
  exit ok ? 0 : 1 }' || fail "idle_predicted [$pred] is not a share, or stage_schedule_s [$work] not times"
[[ $(find "$dir/mlp-p2" -name metrics.jsonl | wc -l) -eq 1 ]] || fail "metrics files: want 1"
"$bin/tessera-ckpt" verify "$(ckpt mlp-p2 10)" >/dev/null || fail "verify of a pipelined checkpoint"
grep -qx 'grid: 4 ranks = trainers 1 × data 1 × pipeline 4 × tensor 1 × spatial \[1, 1\]' \
  "$dir/mlp-p4.log" || fail "no 4-stage grid line"

# --- restart across pipeline sizes and cuts, bit for bit in deterministic mode ------------------
det="parallel.deterministic=true parallel.sample_groups=4 data.micro_batches=1"
# shellcheck disable=SC2086
run det-p2 2 "$dir/mlp.toml" parallel.pipeline=2 $det || fail "deterministic pipeline 2: exit $?"
for case in "p1 1 parallel.pipeline=1" "p4 4 parallel.pipeline=4" \
  "cut 2 parallel.pipeline=2 parallel.stages=[1,5]" "d2p2 4 parallel.pipeline=2 parallel.data=2"; do
  read -r name n overrides <<<"$case"
  mkdir -p "$dir/det-$name/ckpt"
  cp "$(ckpt det-p2 05)" "$dir/det-$name/ckpt/"
  # shellcheck disable=SC2086
  run "det-$name" "$n" "$dir/mlp.toml" $det $overrides checkpoint.restart="$dir/det-$name/ckpt/ckpt-00000005.h5" ||
    fail "restart at $name: exit $?"
  grep -q '^restart: from .*ckpt-00000005.h5 at step 5 (saved on 2 ranks' "$dir/det-$name.log" ||
    fail "restart at $name: no restart line"
  same "$(ckpt det-p2 10)" "$(ckpt "det-$name" 10)" || fail "restart at $name: not bit for bit"
done

# --- a head tied to the embedding of another stage -----------------------------------------------
# The last stage holds a copy of the embedding's table; the two gradients are summed over the
# stages, the copies stay equal, the checkpoint holds the table once.
sed -e 's/{ linear = { out = 256, bias = false, split = "output" } }/{ tied_head = {} }/' \
  "$dir/gpt.toml" >"$dir/tied.toml"
run tied-1 1 "$dir/tied.toml" || fail "tied head on one rank: exit $?"
for case in "p2 2 parallel.pipeline=2" "t2p2 4 parallel.pipeline=2 parallel.tensor=2"; do
  read -r name n overrides <<<"$case"
  # shellcheck disable=SC2086
  run "tied-$name" "$n" "$dir/tied.toml" $overrides || { fail "tied head $name: exit $?"; continue; }
  same "$(ckpt tied-1 10)" "$(ckpt "tied-$name" 10)" 1e-5 || fail "tied head $name: differs from one rank"
done
# One rank's tensors, no more: the copy on the last stage is not written twice.
tensors() { "$bin/tessera-ckpt" verify "$1" | sed -nE 's/.*OK \(([0-9]+) tensors.*/\1/p'; }
[[ -n $(tensors "$(ckpt tied-p2 10)") && $(tensors "$(ckpt tied-p2 10)") == "$(tensors "$(ckpt tied-1 10)")" ]] ||
  fail "tied head: $(tensors "$(ckpt tied-p2 10)") tensors in the checkpoint, one rank's has $(tensors "$(ckpt tied-1 10)")"
mkdir -p "$dir/tied-r4/ckpt"
cp "$(ckpt tied-1 05)" "$dir/tied-r4/ckpt/"
run tied-r4 4 "$dir/tied.toml" parallel.pipeline=4 \
  checkpoint.restart="$dir/tied-r4/ckpt/ckpt-00000005.h5" || fail "tied head: restart at pipeline 4"
same "$(ckpt tied-1 10)" "$(ckpt tied-r4 10)" 1e-5 || fail "tied head: the restart at pipeline 4 differs"
run tied-zero 4 "$dir/tied.toml" parallel.pipeline=2 parallel.data=2 parallel.zero=1
rc=$?
[[ $rc -eq 2 && $(grep -c '^error: ' "$dir/tied-zero.log") -eq 1 ]] &&
  grep -q 'parallel.zero = 1 with a weight tied across pipeline stages (embedding0.wte, which tied_head[0-9]* reuses on a later stage) is not available' \
    "$dir/tied-zero.log" || fail "tied head with ZeRO-1: exit $rc, want 2 and one message"

((failed)) && echo "FAILED ($failed)" || echo "all pipeline tests passed"
exit $failed
