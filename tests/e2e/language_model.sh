#!/usr/bin/env bash
# A byte-level GPT from the command line, as a user runs one: tessera-data import text, then
# `tessera run` on 2 ranks as tensor = 2 with sequence parallelism — one progress line per window
# with the tensor-parallel collectives' share ("tensor NN%", tensor_s in metrics.jsonl), a
# validation loss far below the uniform guess ln 256 = 5.55 nats per byte, one checkpoint holding
# whole matrices (tessera-ckpt ls: qkv (96, 32), the vocabulary's 256 rows); `tessera generate`
# prints the prompt and its continuation, byte for byte the same on 1 and 2 ranks; the tensor-2
# checkpoint restarts on one rank; run.precision = "bf16" trains within 2% of fp32's loss, on 1
# rank and as tensor = 2; the model FLOPs per sample match llm.c's count and mfu is the model's
# FLOP rate over the peak (measured, or run.peak_tflops); bad generate arguments exit 2 with one "error: " line; --help is the
# program's page alone.
set -euo pipefail
bin=${TESSERA_BIN:?}
mpiexec=${MPIEXEC:-mpiexec.mpich}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

awk 'BEGIN { for (i = 0; i < 2900; i++) print "In the beginning God created the heaven and the earth. And the earth was without form." }' >text.txt
"$bin/tessera-data" import text text.txt --output text.h5 --validation 0.25 >/dev/null
cat >lm.toml <<'DECK'
[run]
name = "lm"
seed = 5
steps = 30
log_every = 10
[data]
train = "text.h5:/train"
test = "text.h5:/validation"
batch = 8
[model]
context = 32
layers = [
  { embedding = { vocab = 256, dim = 32, split = true } },
  { repeat = { times = 2, layers = [
      { residual = { layers = [ { layernorm = {} }, { attention = { heads = 4, split = true } } ] } },
      { residual = { layers = [ { layernorm = {} }, { linear = { out = 64, split = "output" } },
                               { gelu = {} }, { linear = { out = 32, split = "input" } },
                               { dropout = { p = 0.1 } } ] } },
  ] } },
  { layernorm = {} },
  { linear = { out = 256, bias = false, split = "output" } },
]
loss = "softmax_cross_entropy"
[optimizer]
type = "adamw"
lr = 0.003
[checkpoint]
every_steps = 30
DECK

timeout 300 "$mpiexec" -n 2 "$bin/tessera" run lm.toml parallel.tensor=2 \
  parallel.sequence_parallel=true >run.log 2>&1 || { cat run.log; fail "tessera run failed"; }
lines=$(grep -c '^step ' run.log)
[[ $lines == 4 ]] || fail "$lines progress lines, want 4 (steps 1, 10, 20, 30: one per window, from one rank)"
grep -q '^step     30/30 .* tensor [ 0-9][0-9]% comm' run.log || fail "no 'tensor NN%' share in the progress line"
grep -q '"tensor_s": ' runs/lm/metrics.jsonl || fail "no tensor_s in metrics.jsonl"
loss=$(sed -n 's/^eval  step 30: .* loss \([0-9.]*\),.*/\1/p' run.log)
[[ -n $loss ]] || fail "no evaluation line"
awk -v l="$loss" 'BEGIN { exit !(l < 3.0) }' || fail "validation loss $loss, want < 3.0 nats per byte"
echo "tensor 2 with sequence parallelism: validation loss $loss nats per byte after 30 steps"

ckpt=runs/lm/ckpt/ckpt-00000030.h5
"$bin/tessera-ckpt" ls "$ckpt" >ls.txt
grep -Eq '^ +weight +\(96, 32\) ' ls.txt || fail "the checkpoint's qkv weight is not whole (96, 32)"
grep -Eq '^ +wte +\(256, 32\) ' ls.txt || fail "the checkpoint's token table is not whole (256, 32)"

for n in 1 2; do
  timeout 120 "$mpiexec" -n $n "$bin/tessera" generate "$ckpt" --prompt "In the" --tokens 40 \
    --seed 3 >"gen$n.txt" || fail "generate at $n ranks failed"
done
cmp -s gen1.txt gen2.txt || fail "generate printed different text at 1 and 2 ranks"
[[ $(head -c 6 gen1.txt) == "In the" ]] || fail "generate did not print the prompt first"
bytes=$(stat -c %s gen1.txt)
[[ $bytes == 47 ]] || fail "generate printed $bytes bytes, want 6 + 40 + a newline"
echo "generate: the same 40 bytes on 1 and 2 ranks"

timeout 120 "$mpiexec" -n 1 "$bin/tessera" run lm.toml run.steps=40 run.output=one \
  "checkpoint.restart=$ckpt" >restart.log 2>&1 || { cat restart.log; fail "restart on one rank failed"; }
grep -q '^step     40/40 ' restart.log || fail "the restart on one rank did not reach step 40"
echo "the tensor-2 checkpoint restarts on one rank"

# run.precision = "bf16": the matrix products on bfloat16 inputs (fp32 accumulation, fp32
# weights): the training follows fp32's closely but not bit for bit, on 1 rank and as tensor = 2.
for p in fp32 fp32b bf16; do
  timeout 120 "$mpiexec" -n 1 "$bin/tessera" run lm.toml run.precision=${p%b} run.output=p-$p \
    >p-$p.log 2>&1 || { cat p-$p.log; fail "run.precision = ${p%b} failed"; }
done
timeout 120 "$mpiexec" -n 2 "$bin/tessera" run lm.toml run.precision=bf16 parallel.tensor=2 \
  run.output=p-bf16-t2 >p-bf16-t2.log 2>&1 || { cat p-bf16-t2.log; fail "bf16 as tensor = 2 failed"; }
val() { sed -n 's/^eval  step 30: .* loss \([0-9.]*\),.*/\1/p' "$1"; }
l32=$(val p-fp32.log)
l16=$(val p-bf16.log)
l16t=$(val p-bf16-t2.log)
[[ -n $l32 && -n $l16 && -n $l16t ]] || fail "no evaluation lines: '$l32' '$l16' '$l16t'"
awk -v a="$l32" -v b="$l16" -v c="$l16t" 'BEGIN { d = a - b; e = b - c
  exit !(d < 0.02 * a && -d < 0.02 * a && e < 0.01 * b && -e < 0.01 * b) }' ||
  fail "validation loss fp32 $l32, bf16 $l16, bf16 tensor 2 $l16t: want within 2% (and 1%)"
# Each window's step, loss and accuracy (not its timings): the same in two fp32 runs (training
# is deterministic), not in fp32 and bf16.
trajectory() { sed -n '/"kind": "train"/s/.*"step": \([0-9]*\),.*"loss": \([^,]*\), "accuracy": \([^,]*\),.*/\1 \2 \3/p' "$1"; }
t32=$(trajectory p-fp32/metrics.jsonl)
[[ $(wc -l <<<"$t32") == 4 ]] || fail "no loss trajectory in p-fp32/metrics.jsonl: '$t32'"
[[ $t32 == "$(trajectory p-fp32b/metrics.jsonl)" ]] || fail "two fp32 runs trained differently"
[[ $t32 != "$(trajectory p-bf16/metrics.jsonl)" ]] ||
  fail "bf16 trained exactly as fp32: the precision setting did nothing"
echo "bf16: validation loss $l16 (tensor 2: $l16t) against fp32's $l32"

# Model FLOPs utilisation: the "flops" record's FLOPs per sample against llm.c's count for this
# GPT (per token, forward and backward: 6 x the matrix products' parameters, the head's V x C
# among them, plus 6 L T C for the causal attention products; Tessera also counts one FLOP per
# element-wise output, about 1% here), the same for the whole model as tensor = 2; every train
# record's model_flops_per_s = samples_per_s x that, and mfu = model_flops_per_s / peak, where the
# peak is measured (1 rank) or run.peak_tflops x ranks (0.5 x 2 below).
timeout 120 "$mpiexec" -n 2 "$bin/tessera" run lm.toml parallel.tensor=2 run.peak_tflops=0.5 \
  run.output=mfu-t2 >mfu-t2.log 2>&1 || { cat mfu-t2.log; fail "run.peak_tflops as tensor = 2 failed"; }
grep -q '^step     30/30 .* samples/s  mfu  *[0-9]*%  compute' mfu-t2.log || fail "no 'mfu NN%' in the progress line"
# The device: the host build's, named on the output (both ranks) and in the "flops" record.
grep -qx 'device: cpu (Kokkos [A-Za-z]*.*), on each of 2 ranks' mfu-t2.log || fail "no device line"
/usr/bin/python3 - p-fp32/metrics.jsonl mfu-t2/metrics.jsonl <<'PY' || fail "model FLOPs or mfu wrong"
import json, sys
T, L, C, H, V = 32, 2, 32, 64, 256  # lm.toml: context, blocks, width, MLP width, vocabulary
per_token = 6 * (L * (3 * C * C + C * C + 2 * C * H) + C * V) + 6 * L * T * C
want = per_token * T
runs = []
for path in sys.argv[1:]:
    records = [json.loads(line) for line in open(path)]
    flops = [r for r in records if r["kind"] == "flops"]
    assert len(flops) == 1, f"{path}: {len(flops)} flops records"
    f = flops[0]
    assert abs(f["per_sample"] / want - 1) < 0.02, f"{path}: {f['per_sample']} FLOPs per sample, llm.c's count {want}"
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 4, f"{path}: {len(train)} train records"
    for r in train:
        # samples_per_s is printed to 0.1, model_flops_per_s to 6 digits
        assert abs(r["model_flops_per_s"] - r["samples_per_s"] * f["per_sample"]) <= 0.05 * f["per_sample"] + 1e-5 * r["model_flops_per_s"], r
        assert abs(r["mfu"] - r["model_flops_per_s"] / f["peak"]) <= 1e-4 * r["mfu"], r
    runs.append(f)
one, t2 = runs
assert one["how"] == "measured" and one["ranks"] == 1 and one["peak"] > 1e8, one
assert t2["how"] == "run.peak_tflops" and t2["ranks"] == 2 and t2["peak"] == 1e12, t2
assert one["per_sample"] == t2["per_sample"], (one, t2)
assert one["device"] == t2["device"] and one["device"].startswith("cpu (Kokkos "), one
print(f"model FLOPs: {one['per_sample']:.0f} per sample (llm.c's count {want}); peak measured "
      f"{one['peak'] / 1e9:.1f} GFLOP/s on one rank")
PY

# A context of one token (a bigram model; attention sees only itself): the output is (N, 1, V),
# trained as any other context, the same at 1 and 2 data ranks and 2 tensor ranks.
for g in 1 d2 t2; do
  n=${g#?}
  [[ $g == 1 ]] && n=1
  over=()
  [[ $g == t2 ]] && over=(parallel.tensor=2)
  timeout 120 "$mpiexec" -n $n "$bin/tessera" run lm.toml model.context=1 run.steps=6 \
    run.log_every=3 checkpoint.every_steps=0 run.output=c1-$g "${over[@]}" >c1-$g.log 2>&1 ||
    { cat c1-$g.log; fail "model.context = 1 ($g) failed"; }
done
t1=$(trajectory c1-1/metrics.jsonl)
[[ $(wc -l <<<"$t1") == 3 ]] || fail "model.context = 1: no loss trajectory: '$t1'"
for g in d2 t2; do
  diff <(awk '{ printf "%s %.5f\n", $1, $2 }' <<<"$t1") \
    <(trajectory c1-$g/metrics.jsonl | awk '{ printf "%s %.5f\n", $1, $2 }') >/dev/null ||
    fail "model.context = 1: $g trained otherwise than 1 rank"
done
echo "model.context = 1: trains, the same on 1 rank, 2 data ranks and 2 tensor ranks"

for n in 1 2; do
  set +e
  out=$(timeout 60 "$mpiexec" -n $n "$bin/tessera" generate "$ckpt" --prompt "" --tokens 5 2>&1)
  code=$?
  set -e
  [[ $code == 2 && $out == "error: generate: --prompt is empty: give at least one byte to continue" ]] ||
    fail "empty prompt at $n ranks: exit $code, '$out'"
done
echo "bad generate arguments: exit 2, one line"

# --help is the program's page, not Kokkos's (Kokkos sees only its --kokkos-* options).
help=$("$bin/tessera" --help 2>&1)
[[ $(head -1 <<<"$help") == "tessera: MPI-first SPMD training of neural networks from an input deck" ]] ||
  fail "tessera --help does not start with the program's own line"
! grep -q "Kokkos command line arguments" <<<"$help" || fail "tessera --help prints Kokkos's help"
echo "tessera --help: the program's page only"
