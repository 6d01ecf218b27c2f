#!/usr/bin/env bash
# bench/peers/versus.sh — two Tessera builds side by side on the Tessera runs of compare.sh and
# scaling.sh: did a change make training slower?
#
#   A=/tmp/tessera-base/build/bin/tessera B=build/bin/tessera ROUNDS=5 bench/peers/versus.sh
#
# Workloads (the same settings as the two scripts' Tessera runs, on inputs/fashion_<m>.toml):
#   compare   1 rank, 1 thread, batch 128, data.prefetch=0, MLP_STEPS / CNN_STEPS steps
#   scaling   1 and 2 ranks, global batch 256, the decks' prefetch, SCALE_MLP_STEPS /
#             SCALE_CNN_STEPS steps
# For each round and each workload it runs A, then B (the order alternates every round), so a
# drift in the machine's load hits both. Steady-state samples/s as in compare.sh (lib.sh: the
# first log window dropped). Prints every run, then per workload the medians of A and B over the
# rounds, the ratio B/A of the medians and the median of the rounds' paired ratios.
#
# Environment: A, B (tessera binaries; required), ROUNDS (5), MODELS ("mlp cnn"), MLP_STEPS (5000),
# CNN_STEPS (240), SCALE_MLP_STEPS (3000), SCALE_CNN_STEPS (300), LOG_EVERY (20), PYTHON
# (/usr/bin/python3), MPIEXEC (mpiexec.mpich), OUT (a new folder under /tmp: logs, results.csv).
# Needs data/fashion-mnist.h5. Exit: 0 all runs done; 1 a run failed; 2 bad set-up.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=bench/peers/lib.sh
source bench/peers/lib.sh

A=${A:?A=path of the first tessera binary}
B=${B:?B=path of the second tessera binary}
ROUNDS=${ROUNDS:-5}
MODELS=${MODELS:-"mlp cnn"}
MLP_STEPS=${MLP_STEPS:-5000}
CNN_STEPS=${CNN_STEPS:-240}
SCALE_MLP_STEPS=${SCALE_MLP_STEPS:-3000}
SCALE_CNN_STEPS=${SCALE_CNN_STEPS:-300}
LOG_EVERY=${LOG_EVERY:-20}
PYTHON=${PYTHON:-/usr/bin/python3}
MPIEXEC=${MPIEXEC:-mpiexec.mpich}
OUT=${OUT:-$(mktemp -d /tmp/tessera-versus.XXXXXX)}
DATA=data/fashion-mnist.h5

for t in "$A" "$B"; do
  [[ -x $t ]] || { echo "versus: $t is not an executable" >&2; exit 2; }
done
[[ -f $DATA ]] || { echo "versus: $DATA missing (tessera-data import fashion-mnist)" >&2; exit 2; }
mkdir -p "$OUT"
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
csv=$OUT/results.csv
echo "round,workload,build,samples_per_s" >"$csv"
echo "versus: A = $A (linked $(date -r "$A" '+%F %T')), B = $B (linked $(date -r "$B" '+%F %T'))"
echo "versus: CPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $ROUNDS rounds, out $OUT"

failed=0
# run ROUND WORKLOAD BUILD BINARY RANKS BATCH STEPS ARGS... → one line and one csv row
run() {
  local round=$1 workload=$2 build=$3 bin=$4 ranks=$5 batch=$6 steps=$7
  shift 7
  local dir=$OUT/$workload-$build-r$round rate
  if "$MPIEXEC" -n "$ranks" "$bin" run "inputs/fashion_${workload%%-*}.toml" run.steps="$steps" \
    run.log_every="$LOG_EVERY" run.eval_every=0 run.blas_threads=1 data.test= parallel.data=0 \
    data.batch="$batch" run.output="$dir" "$@" >"$dir.log" 2>&1; then
    rate=$(peers_tessera_rate "$dir/metrics.jsonl" "$batch" "$LOG_EVERY") || { rate=nan; failed=1; }
  else
    echo "versus: $workload $build round $round failed; see $dir.log" >&2
    failed=1
    rate=nan
  fi
  printf 'round %d  %-12s  %s  %10s samples/s\n' "$round" "$workload" "$build" "$rate"
  echo "$round,$workload,$build,$rate" >>"$csv"
}

workloads=()
for m in $MODELS; do
  workloads+=("$m-compare" "$m-scale1" "$m-scale2")
done
for ((round = 1; round <= ROUNDS; ++round)); do
  order="A B"
  ((round % 2 == 0)) && order="B A"
  for w in "${workloads[@]}"; do
    m=${w%%-*}
    for build in $order; do
      bin=$A
      [[ $build == B ]] && bin=$B
      case $w in
        *-compare)
          steps_var=${m^^}_STEPS
          run "$round" "$w" "$build" "$bin" 1 128 "${!steps_var}" data.prefetch=0
          ;;
        *-scale1 | *-scale2)
          steps_var=SCALE_${m^^}_STEPS
          run "$round" "$w" "$build" "$bin" "${w: -1}" 256 "${!steps_var}"
          ;;
      esac
    done
  done
done

"$PYTHON" - "$csv" <<'EOF' | tee "$OUT/summary.txt"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(f"{'workload':<14} {'A median':>12} {'B median':>12} {'B/A':>7} {'paired B/A (median)':>21}")
for w in dict.fromkeys(r["workload"] for r in rows):
    rate = {(r["round"], r["build"]): float(r["samples_per_s"]) for r in rows if r["workload"] == w}
    a = [v for (k, b), v in rate.items() if b == "A"]
    b = [v for (k, bb), v in rate.items() if bb == "B"]
    paired = [rate[(k, "B")] / rate[(k, "A")] for (k, bb) in rate if bb == "A" and (k, "B") in rate]
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"{w:<14} {ma:>12.1f} {mb:>12.1f} {mb / ma:>7.3f} {statistics.median(paired):>21.3f}")
EOF
exit $failed
