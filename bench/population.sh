#!/usr/bin/env bash
# bench/population.sh — population training on Fashion-MNIST (issue 17), each configuration one
# `tessera run` of inputs/fashion_population.toml (the CNN with BatchNorm, 3 epochs of the 54000
# training images, batch 128; trainers score on the held-out /validation, test only reported):
#   1. grid: 4 independent trainers at lr 1e-3, 1e-2, 1e-1, 1 (the 4-point grid over the range);
#   2. ltfb: 4 trainers, lr log-uniform over [1e-3, 1] (Latin hypercube), a tournament every 100
#      steps; the greedy soup of the final trainers;
#   3. pbt: the same start, PBT every 100 steps (the worst quarter copies the best and perturbs);
#   4. sync: data parallelism on 2 ranks (lr 0.05, global batch 128: a gradient allreduce every
#      step), against local SGD on 2 trainers of batch 64 averaged every 8 and every 32 steps.
# Prints each run's final test accuracies and the comparisons the issue asks for; the population
# runs' folders stay in $OUT (default runs/bench-population) for tools/plot_population.py.
#
#   bench/population.sh    environment: BIN (build/bin), MPIEXEC (mpiexec.mpich), OUT, STEPS (1266)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-build/bin}
mpiexec=${MPIEXEC:-mpiexec.mpich}
out=${OUT:-runs/bench-population}
steps=${STEPS:-1266}
deck=inputs/fashion_population.toml
[[ -e data/fashion-mnist-val.h5 ]] ||
  "$bin/tessera-data" import fashion-mnist --validation 6000 -o data/fashion-mnist-val.h5
rm -rf "$out"
mkdir -p "$out"
# The grid: the same deck, the four points instead of the draws, no tournament.
sed -e 's/^"optimizer.lr" = .*/"optimizer.lr" = { grid = [0.001, 0.01, 0.1, 1.0] }/' \
  -e 's/^algorithm = "ltfb"/algorithm = "independent"/' "$deck" >"$out/grid.toml"
# No population: data parallelism (and local SGD, with its own [population]).
sed -e '/^\[population\]/,$d' "$deck" >"$out/sync.toml"
{
  cat "$out/sync.toml"
  printf '%s\n' '[population]' 'average_every = 8'
} >"$out/local.toml"

run() {  # run NAME RANKS DECK [overrides...]
  local name=$1 ranks=$2 file=$3
  shift 3
  "$mpiexec" -n "$ranks" "$bin/tessera" run "$file" run.steps="$steps" run.output="$out/$name" \
    "$@" >"$out/$name.log" 2>&1 || { echo "$name: exit $?; see $out/$name.log"; exit 1; }
}
tests() {  # each trainer's final test accuracy
  grep -h "final: .* test accuracy" "$1" | sed 's/^\[t\([0-9]*\)\].*test accuracy \([0-9.]*\)%$/\1 \2/' | sort -n
}
run grid 4 "$out/grid.toml"
run ltfb 4 "$deck"
run pbt 4 "$deck" population.algorithm=pbt
run sync 2 "$out/sync.toml" parallel.trainers=1 parallel.data=2
run local8 2 "$out/local.toml" parallel.trainers=2 data.batch=64 population.average_every=8
run local32 2 "$out/local.toml" parallel.trainers=2 data.batch=64 population.average_every=32

echo "== test accuracy (%) after $steps steps per trainer"
for name in grid ltfb pbt local8 local32; do
  echo "$name: $(tests "$out/$name.log" | awk '{printf "t%s %s  ", $1, $2}')"
  grep -h "^combined" "$out/$name.log" || true
done
echo "sync: $(grep -h "^final: " "$out/sync.log" | sed 's/.*test accuracy //')"
python3 - "$out" <<'PYEOF'
import re, statistics, sys
out = sys.argv[1]
def accs(name):
    text = open(f"{out}/{name}.log").read()
    return {int(k): float(a) for k, a in re.findall(r"^\[t(\d+)\] final: .*test accuracy ([0-9.]+)%$", text, re.M)}
grid = accs("grid")
# A grid point that diverged (its trainer failed: no final line) counts as chance, 10%.
points = sorted(grid.get(k, 10.0) for k in range(4))
median, best = statistics.median(points), max(points)
print(f"grid: points {points}, median {median:.2f}%, best {best:.2f}%")
for name in ("ltfb", "pbt"):
    a = max(accs(name).values())
    print(f"{name}: best trainer {a:.2f}% — above the grid's median: {a > median}; "
          f"{best - a:+.2f} points from the grid's best (within 0.3: {best - a <= 0.3})")
sync = float(re.search(r"^final: .*test accuracy ([0-9.]+)%$", open(f"{out}/sync.log").read(), re.M).group(1))
for name, every in (("local8", 8), ("local32", 32)):
    a = accs(name)[0]
    print(f"{name}: {a:.2f}% vs synchronous {sync:.2f}%: {sync - a:+.2f} points "
          f"(within 0.5: {sync - a <= 0.5}), {every}x fewer reductions")
PYEOF
