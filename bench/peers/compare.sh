#!/usr/bin/env bash
# bench/peers/compare.sh — Tessera vs PyTorch (CPU) samples/s on the Fashion-MNIST MLP and CNN,
# one rank, one thread, in one invocation.
#
#   bench/peers/compare.sh                      # from anywhere; runs in the repository root
#   ROUNDS=5 MLP_STEPS=3000 CNN_STEPS=300 OUT=/tmp/cmp bench/peers/compare.sh
#
# For each round (ROUNDS, default 3) and each model it runs Tessera, then PyTorch, for the same
# fixed number of steps of the deck's settings (batch 128, SGD momentum 0.9, cosine schedule with
# 200 warm-up steps), so the two alternate and drift in the machine's load hits both. It prints
# each run's steady-state samples/s, then the median per peer and the ratio Tessera/PyTorch per
# model, against the acceptance targets (MLP >= 1.3, CNN >= 1.5).
#
# Steady state: Tessera logs a "train" record every LOG_EVERY (20) steps with the samples/s of that
# window (wall time, printing excluded); the first window (steps 1-20, and the one-step record of
# step 1) is dropped and the rest combine as total samples / total time. fashion_torch.py times
# steps 21..N the same way. Evaluation is outside the timing in both.
#
# One thread: OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 for both,
# run.blas_threads=1 for Tessera, torch.set_num_threads(1) for PyTorch, and data.prefetch=0 so
# Tessera's reader prepares batches on the training thread as the PyTorch loop does (PREFETCH=2
# measures the decks' shipped setting, with its background reader thread). Tessera runs as one
# MPI rank under mpiexec.mpich (MPICH named explicitly: DESIGN.md).
#
# Environment: TESSERA (build/bin/tessera), PYTHON (/usr/bin/python3, Debian's, which has
# python3-torch), ROUNDS (3), MLP_STEPS (5000), CNN_STEPS (240), LOG_EVERY (20), PREFETCH (0),
# EVAL (1: evaluate on the test split after each run, a check that both trained alike), MODELS
# ("mlp cnn"), OUT (a new folder under /tmp: logs, metrics and results.csv are kept there).
# Needs data/fashion-mnist.h5 (build/bin/tessera-data import fashion-mnist).
# Exit: 0 all runs done (targets missed or not); 1 a run failed; 2 bad set-up.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=bench/peers/lib.sh
source bench/peers/lib.sh

TESSERA=${TESSERA:-build/bin/tessera}
PYTHON=${PYTHON:-/usr/bin/python3}
ROUNDS=${ROUNDS:-3}
MLP_STEPS=${MLP_STEPS:-5000}
CNN_STEPS=${CNN_STEPS:-240}
LOG_EVERY=${LOG_EVERY:-20}
PREFETCH=${PREFETCH:-0}
EVAL=${EVAL:-1}
MODELS=${MODELS:-"mlp cnn"}
MPIEXEC=${MPIEXEC:-mpiexec.mpich}
OUT=${OUT:-$(mktemp -d /tmp/tessera-peers.XXXXXX)}
DATA=data/fashion-mnist.h5

peers_check_setup compare 'import torch' \
  "cannot import torch: apt-get install python3-torch (Debian's, for /usr/bin/python3)" \
  ROUNDS MLP_STEPS CNN_STEPS LOG_EVERY PREFETCH
mkdir -p "$OUT"

cores=$(nproc)  # before OMP_NUM_THREADS=1, which nproc obeys
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

csv=$OUT/results.csv
echo "round,model,peer,steps,samples_per_s,test_accuracy_pct,load_before,load_after,seconds" >"$csv"
torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__)')
echo "compare: Tessera ($TESSERA) vs PyTorch $torch_version ($PYTHON), 1 rank, 1 thread," \
  "data.prefetch=$PREFETCH; $ROUNDS rounds; models: $MODELS; output in $OUT"
echo "compare: $cores cores; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
peers_describe_build compare "$TESSERA"

failed=0
for ((round = 1; round <= ROUNDS; ++round)); do
  for m in $MODELS; do
    steps_var=${m^^}_STEPS
    steps=${!steps_var}
    # --- Tessera ------------------------------------------------------------------------------
    dir=$OUT/tessera-$m-r$round
    test_override=()
    ((EVAL)) || test_override=(data.test=)
    before=$(peers_load)
    t0=$(date +%s%N)
    if "$MPIEXEC" -n 1 "$TESSERA" run "inputs/fashion_$m.toml" run.steps="$steps" \
      run.log_every="$LOG_EVERY" run.eval_every=0 run.blas_threads=1 data.prefetch="$PREFETCH" \
      run.output="$dir" "${test_override[@]}" >"$dir.log" 2>&1; then
      # 128: the decks' data.batch
      rate=$(peers_tessera_rate "$dir/metrics.jsonl" 128 "$LOG_EVERY") || { rate=nan; failed=1; }
      acc=$(peers_tessera_accuracy "$dir/metrics.jsonl") || acc=-
    else
      echo "compare: tessera $m round $round failed (exit $?); see $dir.log" >&2
      tail -5 "$dir.log" >&2
      failed=1
      rate=nan acc=-
    fi
    secs=$(peers_seconds_since "$t0")
    printf 'round %d  %-3s  tessera  %9s samples/s  test acc %6s%%  (%5.1f s, load %s -> %s)\n' \
      "$round" "$m" "$rate" "$acc" "$secs" "$before" "$(peers_load)"
    echo "$round,$m,tessera,$steps,$rate,$acc,$before,$(peers_load),$secs" >>"$csv"

    # --- PyTorch ------------------------------------------------------------------------------
    log=$OUT/torch-$m-r$round.log
    eval_flag=()
    ((EVAL)) || eval_flag=(--no-eval)
    before=$(peers_load)
    t0=$(date +%s%N)
    if "$PYTHON" bench/peers/fashion_torch.py --model "$m" --steps "$steps" --threads 1 \
      --skip "$LOG_EVERY" --log-every "$LOG_EVERY" --output "$OUT/torch-$m-r$round" \
      "${eval_flag[@]}" >"$log" 2>&1; then
      read -r rate acc < <(peers_torch_summary "$log") ||
        { rate=nan acc=-; failed=1; }
    else
      echo "compare: pytorch $m round $round failed (exit $?); see $log" >&2
      tail -5 "$log" >&2
      failed=1
      rate=nan acc=-
    fi
    secs=$(peers_seconds_since "$t0")
    printf 'round %d  %-3s  pytorch  %9s samples/s  test acc %6s%%  (%5.1f s, load %s -> %s)\n' \
      "$round" "$m" "$rate" "$acc" "$secs" "$before" "$(peers_load)"
    echo "$round,$m,pytorch,$steps,$rate,$acc,$before,$(peers_load),$secs" >>"$csv"
  done
done

echo
"$PYTHON" - "$csv" "$cores" <<'EOF' | tee "$OUT/summary.txt"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
cores = int(sys.argv[2])
targets = {"mlp": 1.3, "cnn": 1.5}
print(f"{'model':5} {'peer':8} {'median samples/s':>16} {'min':>9} {'max':>9} {'spread':>7}")
noisy, loaded = False, False
ratios = {}
for model in dict.fromkeys(r["model"] for r in rows):
    med = {}
    for peer in ("tessera", "pytorch"):
        v = [float(r["samples_per_s"]) for r in rows
             if r["model"] == model and r["peer"] == peer and r["samples_per_s"] != "nan"]
        if not v:
            continue
        med[peer] = statistics.median(v)
        spread = (max(v) - min(v)) / med[peer]
        noisy |= spread > 0.10
        print(f"{model:5} {peer:8} {med[peer]:16.1f} {min(v):9.1f} {max(v):9.1f} "
              f"{100 * spread:6.1f}%")
    if len(med) == 2:
        # Also the median of each round's ratio (Tessera and PyTorch ran back to back), which
        # drifts in the machine's load disturb less than the ratio of the medians.
        by_round = {}
        for r in rows:
            if r["model"] == model and r["samples_per_s"] != "nan":
                by_round.setdefault(r["round"], {})[r["peer"]] = float(r["samples_per_s"])
        paired = [v["tessera"] / v["pytorch"] for v in by_round.values() if len(v) == 2]
        ratios[model] = (med["tessera"] / med["pytorch"], statistics.median(paired), paired)
loads = [float(r[k]) for r in rows for k in ("load_before", "load_after")]
loaded = max(loads) > cores - 1 + 0.5  # more than one other busy process beside the benchmark
print()
for model, (ratio, paired_median, paired) in ratios.items():
    goal = targets[model]
    verdict = "meets" if ratio >= goal else "BELOW"
    rounds = ", ".join(f"{p:.2f}" for p in paired)
    print(f"ratio Tessera/PyTorch {model}: {ratio:.2f}  ({verdict} the target >= {goal}); "
          f"per round {rounds}, median {paired_median:.2f}")
print()
print(f"load average during the runs: {min(loads):.2f}-{max(loads):.2f} on {cores} cores")
if loaded or noisy:
    why = []
    if loaded:
        why.append("the machine was busy with other work")
    if noisy:
        why.append("a peer's runs spread more than 10% around its median")
    print("WARNING: numbers likely perturbed (" + "; ".join(why) + "): "
          "rerun when `uptime` is quiet")
EOF
exit $failed
