#!/usr/bin/env bash
# bench/peers/scaling.sh — data-parallel scaling from 1 to 2 ranks, Tessera (MPI) against PyTorch
# DDP (gloo), on the Fashion-MNIST MLP and CNN, global batch 256, one thread per rank.
#
#   bench/peers/scaling.sh                      # from anywhere; runs in the repository root
#   ROUNDS=5 MODELS=mlp OUT=/tmp/scal bench/peers/scaling.sh
#   TESSERA_ARGS="parallel.bucket_mb=1" bench/peers/scaling.sh     # extra Tessera overrides
#
# For each round (ROUNDS, default 3) and each model it runs, one after the other: Tessera on 1
# rank, PyTorch in 1 process, Tessera on 2 ranks, PyTorch DDP in 2 processes, for the same fixed
# number of steps of global batch BATCH (256), so the peers alternate and a drift in the machine's
# load hits both. Then it prints the median samples/s per (model, peer, ranks), the speed-up
# 2 ranks / 1 rank of each peer (ratio of the medians, and each round's paired ratio) against the
# acceptance target (Tessera >= 1.6), and Tessera's time split at 2 ranks: the median over the
# rounds of the compute / exposed-communication / data-wait shares of rank 0's step time.
#
# Tessera: mpiexec.mpich -n R tessera run inputs/fashion_<m>.toml data.batch=256 run.steps=S
# run.log_every=20 run.eval_every=0 run.blas_threads=1 parallel.data=0, then TESSERA_ARGS; the
# decks' data.prefetch (2: a background reader thread per rank) is kept. The 2 ranks split each
# global batch (128 samples each) and reduce the gradients during backward. PyTorch:
# fashion_torch.py --batch 256 --threads 1 --world R (R processes, DistributedDataParallel over
# gloo on 127.0.0.1, each with its block of the global batch).
#
# Steady state as in compare.sh (lib.sh): the records of the first log window are dropped, the
# rest combine as total samples / total time; samples/s count the global batch. Evaluation on the
# test split (EVAL=1) is not timed; it checks that 1 and 2 ranks trained alike.
#
# Environment: TESSERA (build/bin/tessera), PYTHON (/usr/bin/python3, Debian's, which has
# python3-torch), ROUNDS (3), MLP_STEPS (3000), CNN_STEPS (300), BATCH (256), LOG_EVERY (20),
# EVAL (1), MODELS ("mlp cnn"), TESSERA_ARGS (extra key=value overrides, split at blanks),
# MPIEXEC (mpiexec.mpich), OUT (a new folder under /tmp: every log and metrics.jsonl,
# results.csv, summary.txt). Needs data/fashion-mnist.h5 (build/bin/tessera-data import
# fashion-mnist) and at least 2 cores to mean anything.
# Exit: 0 all runs done (target met or not); 1 a run failed; 2 bad set-up.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=bench/peers/lib.sh
source bench/peers/lib.sh

TESSERA=${TESSERA:-build/bin/tessera}
PYTHON=${PYTHON:-/usr/bin/python3}
ROUNDS=${ROUNDS:-3}
MLP_STEPS=${MLP_STEPS:-3000}
CNN_STEPS=${CNN_STEPS:-300}
BATCH=${BATCH:-256}
LOG_EVERY=${LOG_EVERY:-20}
EVAL=${EVAL:-1}
MODELS=${MODELS:-"mlp cnn"}
MPIEXEC=${MPIEXEC:-mpiexec.mpich}
read -ra tessera_args <<<"${TESSERA_ARGS:-}"
OUT=${OUT:-$(mktemp -d /tmp/tessera-scaling.XXXXXX)}
DATA=data/fashion-mnist.h5
TARGET=1.6  # acceptance: Tessera on 2 ranks >= 1.6x its samples/s on 1 rank

die() { echo "scaling: $*" >&2; exit 2; }
peers_check_setup scaling 'import torch, torch.distributed as d; assert d.is_gloo_available()' \
  "cannot import torch with gloo: apt-get install python3-torch (for /usr/bin/python3)" \
  ROUNDS MLP_STEPS CNN_STEPS BATCH LOG_EVERY EVAL
((BATCH >= 2)) || die "BATCH must be >= 2 (one sample per rank at least)"
mkdir -p "$OUT"

cores=$(nproc)  # before OMP_NUM_THREADS=1, which nproc obeys
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
start_load=$(cut -d' ' -f1-3 /proc/loadavg)

csv=$OUT/results.csv
echo "round,model,peer,ranks,steps,samples_per_s,test_accuracy_pct,compute_pct,comm_pct,data_pct,load_before,load_after,seconds" >"$csv"
torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__)')
echo "scaling: Tessera ($TESSERA) vs PyTorch $torch_version DDP gloo ($PYTHON), 1 and 2 ranks," \
  "global batch $BATCH, 1 thread per rank; $ROUNDS rounds; models: $MODELS; output in $OUT"
echo "scaling: Tessera overrides after the fixed ones: ${TESSERA_ARGS:-(none)}"
echo "scaling: $cores cores; load average at start: $start_load"
((cores >= 2)) || echo "scaling: WARNING: $cores core(s) for 2 ranks: the 2-rank runs share one core" >&2
peers_describe_build scaling "$TESSERA"

failed=0

# run_tessera ROUND MODEL RANKS STEPS
run_tessera() {
  local round=$1 m=$2 ranks=$3 steps=$4 dir before t0 rate acc split secs
  local test_override=()
  ((EVAL)) || test_override=(data.test=)
  dir=$OUT/tessera-$m-n$ranks-r$round
  before=$(peers_load)
  t0=$(date +%s%N)
  if "$MPIEXEC" -n "$ranks" "$TESSERA" run "inputs/fashion_$m.toml" data.batch="$BATCH" \
    run.steps="$steps" run.log_every="$LOG_EVERY" run.eval_every=0 run.blas_threads=1 \
    parallel.data=0 run.output="$dir" "${test_override[@]}" "${tessera_args[@]}" \
    >"$dir.log" 2>&1; then
    rate=$(peers_tessera_rate "$dir/metrics.jsonl" "$BATCH" "$LOG_EVERY") || { rate=nan; failed=1; }
    acc=$(peers_tessera_accuracy "$dir/metrics.jsonl") || acc=-
    split=$(peers_tessera_split "$dir/metrics.jsonl" "$LOG_EVERY") || split="- - -"
  else
    echo "scaling: tessera $m $ranks rank(s) round $round failed (exit $?); see $dir.log" >&2
    tail -5 "$dir.log" >&2
    failed=1
    rate=nan acc=- split="- - -"
  fi
  secs=$(peers_seconds_since "$t0")
  local compute comm data
  read -r compute comm data <<<"$split"
  printf 'round %d  %-3s  tessera  %d rank(s)  %9s samples/s  test acc %6s%%  ' \
    "$round" "$m" "$ranks" "$rate" "$acc"
  printf 'compute %5s%% comm %5s%% data %5s%%  (%5.1f s, load %s -> %s)\n' \
    "$compute" "$comm" "$data" "$secs" "$before" "$(peers_load)"
  echo "$round,$m,tessera,$ranks,$steps,$rate,$acc,$compute,$comm,$data,$before,$(peers_load),$secs" >>"$csv"
}

# run_torch ROUND MODEL RANKS STEPS
run_torch() {
  local round=$1 m=$2 ranks=$3 steps=$4 log before t0 rate acc secs
  local eval_flag=()
  ((EVAL)) || eval_flag=(--no-eval)
  log=$OUT/torch-$m-n$ranks-r$round.log
  before=$(peers_load)
  t0=$(date +%s%N)
  if "$PYTHON" bench/peers/fashion_torch.py --model "$m" --steps "$steps" --batch "$BATCH" \
    --threads 1 --world "$ranks" --skip "$LOG_EVERY" --log-every "$LOG_EVERY" \
    --output "$OUT/torch-$m-n$ranks-r$round" "${eval_flag[@]}" >"$log" 2>&1; then
    read -r rate acc < <(peers_torch_summary "$log") || { rate=nan acc=-; failed=1; }
  else
    echo "scaling: pytorch $m $ranks rank(s) round $round failed (exit $?); see $log" >&2
    tail -5 "$log" >&2
    failed=1
    rate=nan acc=-
  fi
  secs=$(peers_seconds_since "$t0")
  printf 'round %d  %-3s  pytorch  %d rank(s)  %9s samples/s  test acc %6s%%  ' \
    "$round" "$m" "$ranks" "$rate" "$acc"
  printf '%40s(%5.1f s, load %s -> %s)\n' "" "$secs" "$before" "$(peers_load)"
  echo "$round,$m,pytorch,$ranks,$steps,$rate,$acc,-,-,-,$before,$(peers_load),$secs" >>"$csv"
}

for ((round = 1; round <= ROUNDS; ++round)); do
  for m in $MODELS; do
    steps_var=${m^^}_STEPS
    for ranks in 1 2; do
      run_tessera "$round" "$m" "$ranks" "${!steps_var}"
      run_torch "$round" "$m" "$ranks" "${!steps_var}"
    done
  done
done

echo
"$PYTHON" - "$csv" "$cores" "$TARGET" "${start_load%% *}" <<'EOF' | tee "$OUT/summary.txt"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
cores, target, start_load = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
COMM_HIDDEN = 10.0  # exposed communication under this share (%) of the step reads "mostly hidden"


def rates(model, peer, ranks):
    return [float(r["samples_per_s"]) for r in rows if r["model"] == model and
            r["peer"] == peer and r["ranks"] == str(ranks) and r["samples_per_s"] != "nan"]


print(f"{'model':5} {'peer':8} {'ranks':>5} {'median samples/s':>16} {'min':>9} {'max':>9} "
      f"{'spread':>7}")
noisy = False
models = list(dict.fromkeys(r["model"] for r in rows))
med = {}
for model in models:
    for peer in ("tessera", "pytorch"):
        for ranks in (1, 2):
            v = rates(model, peer, ranks)
            if not v:
                continue
            m = med[model, peer, ranks] = statistics.median(v)
            spread = (max(v) - min(v)) / m
            noisy |= spread > 0.10
            print(f"{model:5} {peer:8} {ranks:5d} {m:16.1f} {min(v):9.1f} {max(v):9.1f} "
                  f"{100 * spread:6.1f}%")

print()
print("speed-up, 2 ranks / 1 rank (ratio of the medians; each round's paired ratio; their median)")
for model in models:
    for peer in ("tessera", "pytorch"):
        if (model, peer, 1) not in med or (model, peer, 2) not in med:
            print(f"  {model:3} {peer:8} -  (a run failed)")
            continue
        speedup = med[model, peer, 2] / med[model, peer, 1]
        by_round = {}
        for r in rows:
            if r["model"] == model and r["peer"] == peer and r["samples_per_s"] != "nan":
                by_round.setdefault(r["round"], {})[r["ranks"]] = float(r["samples_per_s"])
        paired = [v["2"] / v["1"] for v in by_round.values() if len(v) == 2]
        rounds = ", ".join(f"{p:.2f}" for p in paired)
        if peer == "tessera":
            verdict = (f"meets the target >= {target}" if speedup >= target
                       else f"BELOW the target >= {target}")
        else:
            verdict = "reference: DDP gloo"
        paired_median = f"{statistics.median(paired):.2f}" if paired else "-"
        print(f"  {model:3} {peer:8} {speedup:5.2f}  ({verdict}); per round {rounds or '-'}, "
              f"median {paired_median}")

print()
print("Tessera / PyTorch samples/s at the same rank count (ratio of the medians)")
for model in models:
    parts = [f"{ranks} rank(s) {med[model, 'tessera', ranks] / med[model, 'pytorch', ranks]:.2f}"
             for ranks in (1, 2) if (model, "tessera", ranks) in med and
             (model, "pytorch", ranks) in med]
    print(f"  {model:3} " + ("; ".join(parts) if parts else "-"))

print()
print("Tessera's time split, rank 0, steps after the first window (median over the rounds):")
for model in models:
    for ranks in (1, 2):
        split = [[float(r[k]) for k in ("compute_pct", "comm_pct", "data_pct")] for r in rows
                 if r["model"] == model and r["peer"] == "tessera" and r["ranks"] == str(ranks)
                 and "-" not in (r["compute_pct"], r["comm_pct"], r["data_pct"])]
        if not split:
            print(f"  {model:3} {ranks} rank(s): -")
            continue
        compute, comm, data = (statistics.median(s[i] for s in split) for i in range(3))
        note = ""
        if ranks == 2:
            note = ("  communication mostly hidden" if comm < COMM_HIDDEN else
                    f"  communication NOT hidden (exposed >= {COMM_HIDDEN:.0f}% of the step)")
        print(f"  {model:3} {ranks} rank(s): compute {compute:5.1f}%  comm {comm:5.1f}%  "
              f"data {data:5.1f}%{note}")

loads = [float(r[k]) for r in rows for k in ("load_before", "load_after")]
print()
print(f"load average: {start_load:.2f} at the start, {min(loads):.2f}-{max(loads):.2f} during the "
      f"runs, on {cores} cores")
# The 2-rank runs keep every core of a 2-core machine busy themselves: more than half a core
# beyond that (or a busy machine before the first run) is other work competing.
why = []
if cores < 2:
    why.append(f"{cores} core(s) for 2 ranks")
if start_load > 0.5:
    why.append("the machine was not idle at the start")
if max(loads) > cores + 0.5:
    why.append("the machine was busy with other work")
if noisy:
    why.append("a peer's runs spread more than 10% around its median")
if why:
    print("WARNING: numbers likely perturbed (" + "; ".join(why) + "): "
          "rerun when `uptime` is quiet")
EOF
exit $failed
