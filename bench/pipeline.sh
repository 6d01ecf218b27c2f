#!/usr/bin/env bash
# bench/pipeline.sh — pipeline parallelism on two ranks against one rank (issue 14), side by side in
# one run on inputs/kjv_gpt.toml (the transformer deck; needs data/kjv.h5):
#   1. speed: `tessera run` on one rank and with parallel.pipeline = 2 on two ranks, both with
#      M micro-batches (data.micro_batches; default 8), alternated REPEATS times (default 5);
#      samples/s of the last progress window (steps after the first STEPS/3), medians; the ratio;
#   2. the bubble: each stage's measured idle share of a step (metrics "idle", last window) at
#      m = 4, 8, 16 against the schedule's theory (p - 1) / (m + p - 1), 1F1B — on the transformer
#      deck (whose stages differ by the head and the loss) and (2b) on 8 equal blocks, beside the
#      share the schedule alone gives stages of the measured costs (metrics "idle_predicted");
#      (2c) the schedule alone on stages of equal, known cost (tessera-bench-pipeline:
#      busy-waiting layers, real transfers) — the balanced stages the theory assumes;
#   3. memory: the most bytes the saved contexts of a stage held at once (metrics
#      "peak_activation_bytes") under 1F1B and GPipe at m = 8: 1F1B keeps at most p - s
#      micro-batches alive on stage s, GPipe all m.
#
#   bench/pipeline.sh          environment: BIN (build/bin), MPIEXEC (mpiexec.mpich), STEPS (12),
#                              REPEATS (5), M (8), DECK (inputs/kjv_gpt.toml)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-build/bin}
mpiexec=${MPIEXEC:-mpiexec.mpich}
steps=${STEPS:-12}
repeats=${REPEATS:-5}
m=${M:-8}
deck=${DECK:-inputs/kjv_gpt.toml}
[[ -e data/kjv.h5 ]] || { echo "pipeline bench: data/kjv.h5 is missing: $bin/tessera-data import kjv" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
window=$((steps / 3))
common=(run.steps="$steps" run.epochs= run.log_every="$window" run.eval_every=0 data.test=
  checkpoint.every_steps=0 checkpoint.at_end=false optimizer.schedule.warmup_steps=2)

last_record() { grep '"kind": "train"' "$1/metrics.jsonl" | tail -n 1; }
field() { sed -E "s/.*\"$2\": \[?([^],}]*)\]?.*/\1/" <<<"$1"; }
# idle_line M RUN: each stage's idle share of RUN's last window against 1/(M + 1) (p = 2), the
# stages' compute seconds over the window, and the share the schedule alone gives stages that
# compute that long (metrics "idle_predicted": the trainer's simulation of the schedule on each
# stage's measured time in its forwards and backwards; equal stages give 1/(M + 1)).
idle_line() {
  local rec idle compute pred
  rec=$(last_record "$2")
  idle=$(sed -E 's/.*"idle": \[([^]]*)\].*/\1/' <<<"$rec")
  compute=$(sed -E 's/.*"stage_compute_s": \[([^]]*)\].*/\1/' <<<"$rec")
  pred=$(sed -E 's/.*"idle_predicted": \[([^]]*)\].*/\1/' <<<"$rec")
  awk -v m="$1" -v idle="$idle" -v compute="$compute" -v pred="$pred" 'BEGIN {
    theory = 1 / (m + 1); n = split(idle, s, ", "); split(compute, c, ", "); split(pred, q, ", ");
    line = sprintf("m = %2d: theory %5.1f%%; measured", m, 100 * theory);
    for (i = 1; i <= n; ++i) line = line sprintf(" stage %d %5.1f%% (%+.0f%%)", i - 1, 100 * s[i], 100 * (s[i] - theory) / theory);
    line = line "; compute s";
    for (i = 1; i <= n; ++i) line = line sprintf(" %.2f", c[i]);
    line = line "; schedule on these stages";
    for (i = 1; i <= n; ++i) line = line sprintf(" %5.1f%%", 100 * q[i]);
    print line }'
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "machine: $(nproc) cores; $(lscpu | sed -n 's/^Model name: *//p')"
echo "deck: $deck, $steps steps, rates of the last window (steps $((steps - window + 1))-$steps)"
echo
echo "## 1. speed, $m micro-batches"
one=() two=()
for ((r = 1; r <= repeats; ++r)); do
  "$bin/tessera" run "$deck" "${common[@]}" data.micro_batches="$m" run.output="$tmp/one$r" >/dev/null
  a=$(field "$(last_record "$tmp/one$r")" samples_per_s)
  "$mpiexec" -n 2 "$bin/tessera" run "$deck" "${common[@]}" data.micro_batches="$m" \
    parallel.pipeline=2 run.output="$tmp/two$r" >/dev/null
  b=$(field "$(last_record "$tmp/two$r")" samples_per_s)
  printf 'round %d: one rank %7.2f samples/s, pipeline 2 on 2 ranks %7.2f samples/s (%.2fx)\n' \
    "$r" "$a" "$b" "$(awk -v a="$a" -v b="$b" 'BEGIN { print b / a }')"
  one+=("$a") two+=("$b")
done
ma=$(median "${one[@]}")
mb=$(median "${two[@]}")
printf 'median: one rank %.2f, pipeline 2 %.2f samples/s: %.2fx\n' "$ma" "$mb" \
  "$(awk -v a="$ma" -v b="$mb" 'BEGIN { print b / a }')"

echo
echo "## 2. idle share per stage against (p - 1) / (m + p - 1), 1F1B, 2 stages"
for mm in 4 8 16; do
  "$mpiexec" -n 2 "$bin/tessera" run "$deck" "${common[@]}" data.micro_batches="$mm" \
    parallel.pipeline=2 run.output="$tmp/idle$mm" >/dev/null
  idle_line "$mm" "$tmp/idle$mm"
done

echo
echo "## 2b. the same on balanced stages: 8 equal blocks (linear 1024 + relu) on 32x32 Gray-Scott fields"
"$mpiexec" -n 1 "$bin/tessera-data" gen -q -o "$tmp/gs.h5" --samples 1024 --size 32 --dims 2 \
  --steps 5 --seed 1
cat >"$tmp/blocks.toml" <<EOF
[run]
seed = 1
steps = 60
[data]
train = "$tmp/gs.h5:/train"
batch = 256
[model]
input = [1, 32, 32]
layers = [
  { flatten = {} },
  { repeat = { times = 8, layers = [ { linear = { out = 1024 } }, { relu = {} } ] } },
  { linear = { out = 2 } },
]
loss = "mse"
[optimizer]
type = "sgd"
lr = 0.001
EOF
blocks=(run.log_every=20 run.eval_every=0 checkpoint.every_steps=0 checkpoint.at_end=false)
for mm in 4 8 16; do
  "$mpiexec" -n 2 "$bin/tessera" run "$tmp/blocks.toml" "${blocks[@]}" data.micro_batches="$mm" \
    parallel.pipeline=2 run.output="$tmp/blocks$mm" >/dev/null
  idle_line "$mm" "$tmp/blocks$mm"
done

echo
echo "## 2c. the schedule alone: stages of equal, known cost (busy-waiting layers), real transfers"
echo "(tessera-bench-pipeline; the first: 2 + 4 ms and 128 KiB per micro-batch; the second: the"
echo "transformer deck's stage at m = 8, about 20 + 40 ms, and its 512 KiB activations)"
"$mpiexec" -n 2 "$bin/tessera-bench-pipeline" --micro 4,8,16 --steps 20
"$mpiexec" -n 2 "$bin/tessera-bench-pipeline" --micro 4,8,16 --steps 10 --forward-ms 20 \
  --backward-ms 40 --floats 131072

echo
echo "## 3. peak activation bytes per stage, m = 8"
for schedule in 1f1b gpipe; do
  "$mpiexec" -n 2 "$bin/tessera" run "$deck" "${common[@]}" data.micro_batches=8 \
    parallel.pipeline=2 parallel.schedule="$schedule" run.output="$tmp/mem-$schedule" >/dev/null
  rec=$(last_record "$tmp/mem-$schedule")
  bytes=$(sed -E 's/.*"peak_activation_bytes": \[([^]]*)\].*/\1/' <<<"$rec")
  awk -v s="$schedule" -v b="$bytes" 'BEGIN { n = split(b, x, ", "); line = sprintf("%-5s:", s);
    for (i = 1; i <= n; ++i) line = line sprintf(" stage %d %8.2f MiB", i - 1, x[i] / 1048576);
    print line }'
done
