#!/usr/bin/env bash
# bench/spatial.sh — spatial decomposition on two ranks against one rank (issue 15), side by side in
# one run, on the 3-D CNN of inputs/grayscott3d.toml at SIZE³ per sample (default 128; Gray-Scott
# volumes made here with tessera-data gen):
#   1. speed: `tessera run` on one rank and with parallel.spatial = [2,1,1] on two ranks, with the
#      convolutions' interior overlapping the halo exchange and without (TESSERA_HALO_OVERLAP=0),
#      alternated REPEATS times (default 5); samples/s of the last progress window, medians; the
#      ratios; the halo exchanges' share of the step (metrics "halo_s") in both;
#   2. memory: the most activation bytes a rank held at once (metrics
#      "peak_activation_bytes_max") on one rank and on the splits [2,1,1], [4,1,1], [2,2,1] (4
#      ranks oversubscribe this machine: memory only), against 1/N;
#   3. the limit: run.activation_limit_mb between the split's estimate and one rank's refuses the
#      deck on one rank, and it trains on [2,1,1].
#
#   bench/spatial.sh       environment: BIN (build/bin), MPIEXEC (mpiexec.mpich), SIZE (128),
#                          BATCH (4), STEPS (9), REPEATS (5)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-build/bin}
mpiexec=${MPIEXEC:-mpiexec.mpich}
size=${SIZE:-128}
batch=${BATCH:-4}
steps=${STEPS:-9}
repeats=${REPEATS:-5}
deck=inputs/grayscott3d.toml
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
window=$((steps / 3))

"$mpiexec" -n 2 "$bin/tessera-data" gen -q -d 3 -s "$size" -n $((2 * batch)) --steps 100 --seed 3 \
  --unit-targets -o "$tmp/gs.h5"
common=(model.input="[1,$size,$size,$size]" data.train="$tmp/gs.h5:/train" data.test=
  data.batch="$batch" data.cache=false run.steps="$steps" run.epochs= run.log_every="$window"
  run.eval_every=0 checkpoint.every_steps=0 checkpoint.at_end=false
  optimizer.schedule.warmup_steps=1)

last_record() { grep '"kind": "train"' "$1/metrics.jsonl" | tail -n 1; }
# rate RUN: samples/s over RUN's last window, from the records' times (the line's samples_per_s
# has one decimal).
rate() {
  grep '"kind": "train"' "$1/metrics.jsonl" | tail -n 2 | sed -E 's/.*"time": ([0-9.]+).*/\1/' |
    awk -v n=$((batch * window)) 'NR == 1 { a = $1 } NR == 2 { printf "%.4f\n", n / ($1 - a) }'
}
field() { sed -E "s/.*\"$2\": \[?([^],}]*)\]?.*/\1/" <<<"$1"; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "machine: $(nproc) cores; $(lscpu | sed -n 's/^Model name: *//p')"
echo "deck: $deck at ${size}^3, batch $batch, $steps steps, rates of the last window (steps $((steps - window + 1))-$steps)"
echo
echo "## 1. speed: one rank against spatial [2,1,1] on two ranks, with and without the overlap"
# share RUN: the halo's share of the last window's step, in %.
share() {
  local rec
  rec=$(last_record "$1")
  awk -v h="$(field "$rec" halo_s)" -v c="$(field "$rec" compute_s)" -v m="$(field "$rec" comm_s)" \
    -v d="$(field "$rec" data_s)" 'BEGIN { print 100 * h / (h + c + m + d) }'
}
one=() two=() halo=() plain=() plain_halo=()
for ((r = 1; r <= repeats; ++r)); do
  "$bin/tessera" run "$deck" "${common[@]}" run.output="$tmp/one$r" >/dev/null
  a=$(rate "$tmp/one$r")
  "$mpiexec" -n 2 "$bin/tessera" run "$deck" "${common[@]}" parallel.spatial="[2,1,1]" \
    parallel.data=1 run.output="$tmp/two$r" >/dev/null
  b=$(rate "$tmp/two$r")
  h=$(share "$tmp/two$r")
  TESSERA_HALO_OVERLAP=0 "$mpiexec" -n 2 "$bin/tessera" run "$deck" "${common[@]}" \
    parallel.spatial="[2,1,1]" parallel.data=1 run.output="$tmp/plain$r" >/dev/null
  c=$(rate "$tmp/plain$r")
  hc=$(share "$tmp/plain$r")
  printf 'round %d: one rank %6.3f samples/s; [2,1,1] %6.3f (%.2fx, halo %.1f%% of the step); without overlap %6.3f (%.2fx, halo %.1f%%)\n' \
    "$r" "$a" "$b" "$(awk -v a="$a" -v b="$b" 'BEGIN { print b / a }')" "$h" \
    "$c" "$(awk -v a="$a" -v b="$c" 'BEGIN { print b / a }')" "$hc"
  one+=("$a") two+=("$b") halo+=("$h") plain+=("$c") plain_halo+=("$hc")
done
ma=$(median "${one[@]}")
mb=$(median "${two[@]}")
mc=$(median "${plain[@]}")
printf 'median: one rank %.3f samples/s; [2,1,1] %.3f: %.2fx, halo %.1f%% of the step; without overlap %.3f: %.2fx, halo %.1f%%\n' \
  "$ma" "$mb" "$(awk -v a="$ma" -v b="$mb" 'BEGIN { print b / a }')" "$(median "${halo[@]}")" \
  "$mc" "$(awk -v a="$ma" -v b="$mc" 'BEGIN { print b / a }')" "$(median "${plain_halo[@]}")"

echo
echo "## 2. peak activation bytes held by a rank (saved contexts), against 1/N"
short=("${common[@]}" run.steps=2 run.log_every=2)
"$bin/tessera" run "$deck" "${short[@]}" run.output="$tmp/mem1" >/dev/null
base=$(field "$(last_record "$tmp/mem1")" peak_activation_bytes_max)
printf '%-10s %2d rank(s): %8.1f MiB\n' "[1,1,1]" 1 "$(awk -v b="$base" 'BEGIN { print b / 1048576 }')"
for split in "2,1,1" "4,1,1" "2,2,1"; do
  n=$(awk -F, '{ print $1 * $2 * $3 }' <<<"$split")
  "$mpiexec" -n "$n" "$bin/tessera" run "$deck" "${short[@]}" parallel.spatial="[$split]" \
    parallel.data=1 run.output="$tmp/mem$split" >/dev/null
  b=$(field "$(last_record "$tmp/mem$split")" peak_activation_bytes_max)
  printf '%-10s %2d rank(s): %8.1f MiB = %.3f of one rank'"'"'s (1/N = %.3f)\n' "[$split]" "$n" \
    "$(awk -v b="$b" 'BEGIN { print b / 1048576 }')" "$(awk -v a="$base" -v b="$b" 'BEGIN { print b / a }')" \
    "$(awk -v n="$n" 'BEGIN { print 1 / n }')"
done

echo
echo "## 3. run.activation_limit_mb: refused on one rank, accepted on [2,1,1]"
estimate() { sed -nE 's/.* \+ activations ([0-9.]+) \+.*/\1/p' | head -n 1; }
whole=$("$bin/tessera" check "$deck" "${common[@]}" | estimate)
half=$("$mpiexec" -n 2 "$bin/tessera" check "$deck" "${common[@]}" parallel.spatial="[2,1,1]" \
  parallel.data=1 | estimate)
limit=$(awk -v a="$whole" -v b="$half" 'BEGIN { printf "%.0f", (a + b) / 2 }')
echo "estimated activations per rank: one rank $whole MiB, [2,1,1] $half MiB; limit $limit MiB"
if "$bin/tessera" check "$deck" "${common[@]}" run.activation_limit_mb="$limit" >"$tmp/refused" 2>&1; then
  echo "FAIL: one rank accepted"
  exit 1
fi
echo "one rank: $(grep '^error' "$tmp/refused")"
"$mpiexec" -n 2 "$bin/tessera" run "$deck" "${short[@]}" run.activation_limit_mb="$limit" \
  parallel.spatial="[2,1,1]" parallel.data=1 run.output="$tmp/limit" | tail -n 1
