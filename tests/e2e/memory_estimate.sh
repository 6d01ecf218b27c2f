#!/usr/bin/env bash
# `tessera check`'s activation memory per rank against what a run measures (metrics.jsonl's
# peak_activation_bytes_max, or peak_activation_bytes per pipeline stage: the bytes of the saved
# forward contexts a rank held at once). The estimate's part "kept for backward" counts every
# layer's output, nested layers (repeat, residual) and attention's q/k/v included (its gradients
# come on top, and are not measured): it must cover the measured peak and stay within
# 2.5 times it, and grow as the measured peak grows, for
# - a GPT whose blocks are a `repeat` (1 block and 3 blocks: the estimate grows with them),
#   and the same as tensor = 2 with sequence parallelism on 2 ranks;
# - a 3-D CNN whole and on spatial tiles [2, 1, 1] (the estimate halves with the tile);
# - an MLP cut into 2 pipeline stages under 1F1B with 4 micro-batches: each stage's peak in the
#   stage table (gradients included, within 3x), the memory line the larger stage's.
set -uo pipefail
bin=$(cd "${TESSERA_BIN:?}" && pwd)
mpiexec=${MPIEXEC:-mpiexec.mpich}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir" || exit 1
failed=0
fail() {
  echo "FAIL: $*"
  failed=1
}

awk 'BEGIN { for (i = 0; i < 2600; i++) print "In the beginning God created the heaven and the earth." }' >text.txt
"$bin/tessera-data" import text text.txt --output text.h5 --validation 0.5 >/dev/null || exit 1
"$bin/tessera-data" gen -q -d 3 -s 16 -n 32 --steps 50 --seed 1 --unit-targets -o gs.h5 || exit 1
"$bin/tessera-data" gen -q -d 2 -s 16 -n 64 --steps 50 --seed 1 --unit-targets -o gs2.h5 || exit 1

cat >gpt.toml <<'DECK'
[run]
steps = 2
log_every = 2
[data]
train = "text.h5:/train"
batch = 8
[model]
context = 64
layers = [
  { embedding = { vocab = 256, dim = 32, split = true } },
  { repeat = { times = 1, layers = [
      { residual = { layers = [ { layernorm = {} }, { attention = { heads = 4, split = true } } ] } },
      { residual = { layers = [ { layernorm = {} }, { linear = { out = 128, split = "output" } },
                               { gelu = {} }, { linear = { out = 32, split = "input" } } ] } },
  ] } },
  { layernorm = {} },
  { linear = { out = 256, bias = false, split = "output" } },
]
loss = "softmax_cross_entropy"
[optimizer]
type = "adamw"
lr = 0.001
[checkpoint]
every_steps = 0
at_end = false
DECK
# The regression decks' optimizer, and no checkpoints.
sgd_tail() {
  printf '%s\n' '[optimizer]' 'type = "sgd"' 'lr = 0.01' '[checkpoint]' 'every_steps = 0' 'at_end = false'
}
cat >cnn3d.toml <<'DECK'
[run]
steps = 2
log_every = 2
[data]
train = "gs.h5:/train"
batch = 8
[model]
input = [1, 16, 16, 16]
layers = [
  { conv3d = { out = 8, kernel = 3, pad = 1 } }, { relu = {} }, { maxpool3d = { kernel = 2 } },
  { conv3d = { out = 16, kernel = 3, pad = 1 } }, { relu = {} }, { global_avgpool = {} },
  { linear = { out = 2 } },
]
loss = "mse"
DECK
sgd_tail >>cnn3d.toml
cat >mlp.toml <<'DECK'
[run]
steps = 2
log_every = 2
[parallel]
pipeline = 2
[data]
train = "gs2.h5:/train"
batch = 32
micro_batches = 4
[model]
input = [1, 16, 16]
layers = [
  { flatten = {} }, { linear = { out = 512 } }, { relu = {} }, { linear = { out = 256 } },
  { relu = {} }, { linear = { out = 128 } }, { relu = {} }, { linear = { out = 2 } },
]
loss = "mse"
DECK
sgd_tail >>mlp.toml

# within LABEL ESTIMATE_MIB MEASURED_BYTES [FACTOR]: measured <= estimate <= FACTOR (2.5) x measured.
within() {
  local label=$1 estimate=$2 measured=$3 factor=${4:-2.5}
  echo "$label: estimate $estimate MiB, measured $(awk -v m="$measured" 'BEGIN { printf "%.2f", m / 1048576 }') MiB"
  awk -v e="$estimate" -v m="$measured" -v f="$factor" 'BEGIN { e *= 1048576; exit !(m > 0 && m <= e && e <= f * m) }' ||
    fail "$label: the estimate $estimate MiB does not cover the measured $measured bytes within ${factor}x"
}
# estimate_of LOG: the activations kept for backward of check's "(this deck)" memory line, in MiB.
estimate_of() {
  sed -n 's/^memory per rank (estimate), .*(this deck): .* + activations [0-9.]* (\([0-9.]*\) kept for backward, .*/\1/p' "$1"
}
# measure NAME RANKS DECK OVERRIDES...: check's estimate and a 2-step run's peak, compared.
measure() {
  local name=$1 n=$2 deck=$3
  shift 3
  timeout 120 "$mpiexec" -n "$n" "$bin/tessera" check "$deck" "$@" >"$name.check" 2>&1 ||
    { fail "$name: check failed: $(tail -n 2 "$name.check")"; return; }
  timeout 300 "$mpiexec" -n "$n" "$bin/tessera" run "$deck" run.output="$name" "$@" >"$name.log" 2>&1 ||
    { fail "$name: run failed: $(tail -n 2 "$name.log")"; return; }
  local peak estimate
  peak=$(sed -n 's/.*"peak_activation_bytes_max": \([0-9]*\).*/\1/p' "$name/metrics.jsonl" | tail -n 1)
  estimate=$(estimate_of "$name.check")
  [[ -n $peak && -n $estimate ]] || { fail "$name: no estimate ('$estimate') or peak ('$peak')"; return; }
  within "$name" "$estimate" "$peak"
  eval "est_$name=$estimate peak_$name=$peak"
}

measure gpt1 1 gpt.toml
measure gpt3 1 gpt.toml 'model.layers[1].repeat.times=3'
measure gpt3t2 2 gpt.toml 'model.layers[1].repeat.times=3' parallel.tensor=2 parallel.sequence_parallel=true
measure cnn 1 cnn3d.toml
measure cnns2 2 cnn3d.toml 'parallel.spatial=[2,1,1]' parallel.data=1
# Two more blocks: the estimate grows by what the run's peak grows, within 2.5x; a tile of half
# the volume: the estimate halves (within 10%) as the peak does.
awk -v e1="${est_gpt1:-0}" -v e3="${est_gpt3:-0}" -v m1="${peak_gpt1:-0}" -v m3="${peak_gpt3:-0}" \
  'BEGIN { g = (e3 - e1) * 1048576; d = m3 - m1; exit !(d > 0 && g >= 0.9 * d && g <= 2.5 * d) }' ||
  fail "2 more blocks: the estimate grew from ${est_gpt1:-?} to ${est_gpt3:-?} MiB, the peak from ${peak_gpt1:-?} to ${peak_gpt3:-?} bytes"
awk -v a="${est_cnn:-0}" -v b="${est_cnns2:-0}" 'BEGIN { exit !(a > 0 && b > 0.45 * a && b < 0.55 * a) }' ||
  fail "spatial [2, 1, 1] estimated at ${est_cnns2:-?} MiB, whole at ${est_cnn:-?} MiB"

# A pipeline: each stage's "peak activations MiB" in check's stage table against the stage's
# measured peak_activation_bytes; the memory line takes the larger stage.
timeout 120 "$mpiexec" -n 2 "$bin/tessera" check mlp.toml >mlp.check 2>&1 || fail "mlp: check failed"
timeout 300 "$mpiexec" -n 2 "$bin/tessera" run mlp.toml run.output=mlp >mlp.log 2>&1 ||
  fail "mlp: run failed: $(tail -n 2 mlp.log)"
# The table's peak includes one micro-batch's gradients (not measured): within 3x here.
mapfile -t stages < <(awk '/^stage +MFLOP\/sample +share/ { on = 1; next } on && /^[0-9]+ / { print $6 } on && !/^[0-9]+ / { on = 0 }' mlp.check)
peaks=$(sed -n 's/.*"peak_activation_bytes": \[\([0-9, ]*\)\].*/\1/p' mlp/metrics.jsonl | tail -n 1)
IFS=', ' read -r -a measured <<<"$peaks"
if [[ ${#stages[@]} == 2 && ${#measured[@]} == 2 ]]; then
  within "mlp stage 0" "${stages[0]}" "${measured[0]}" 3
  within "mlp stage 1" "${stages[1]}" "${measured[1]}" 3
  line=$(sed -n 's/^memory per rank (estimate), .*(this deck): .* + activations \([0-9.]*\) (.*/\1/p' mlp.check)
  awk -v a="$line" -v b="${stages[0]}" -v c="${stages[1]}" \
    'BEGIN { m = b > c ? b : c; exit !(a - m < 0.06 && m - a < 0.06) }' ||
    fail "mlp: the memory line's activations $line MiB are not the larger stage's (${stages[*]})"
else
  fail "mlp: stage table '${stages[*]}', measured '$peaks'"
fi

((failed == 0)) && echo "PASS: memory estimates cover the measured peaks within 2.5x"
exit $failed
