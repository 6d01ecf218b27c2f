#!/usr/bin/env bash
# tessera run end to end on the real Fashion-MNIST: a short MLP run at 1 and 2 ranks learns
# (test accuracy above 80% after 300 steps), writes its metrics and resolved deck, and the
# resolved deck is itself a valid deck; SIGTERM stops a run at a step boundary on every rank with
# exit code 75.
set -euo pipefail
bin=${TESSERA_BIN:?}
mpiexec=${MPIEXEC:-mpiexec.mpich}
root=$(cd "$(dirname "$0")/../.." && pwd)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
if [[ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]]; then
  echo "[  SKIPPED ] Debian's dataset-fashion-mnist is not installed (tools/setup.sh installs it)"
  exit 0
fi
"$bin/tessera-data" import fashion-mnist --output "$dir/fm.h5" >/dev/null
data="data.train=$dir/fm.h5:/train data.test=$dir/fm.h5:/test"

for n in 1 2; do
  out=$("$mpiexec" -n $n "$bin/tessera" run "$root/inputs/fashion_mlp.toml" run.steps=300 \
        run.log_every=100 run.eval_every=0 run.output="$dir/mlp$n" $data 2>&1)
  final=$(grep '^final: ' <<<"$out")
  acc=$(sed -E 's/.*test accuracy ([0-9.]+)%.*/\1/' <<<"$final")
  echo "$n rank(s): $final"
  awk -v a="$acc" 'BEGIN { exit !(a > 80.0) }' || { echo "FAIL: accuracy $acc% <= 80%"; exit 1; }
  # One progress line per log_every steps, plus the first: steps 1, 100, 200, 300.
  [[ $(grep -c '^step ' <<<"$out") -eq 4 ]] || { echo "FAIL: progress lines"; echo "$out"; exit 1; }
  grep -q 'compute .*% comm .*% data .*%' <<<"$out"
  # metrics.jsonl: 4 train records and 1 eval record, each a JSON object.
  [[ $(grep -c '"kind": "train"' "$dir/mlp$n/metrics.jsonl") -eq 4 ]]
  [[ $(grep -c '"kind": "eval"' "$dir/mlp$n/metrics.jsonl") -eq 1 ]]
  if [[ -x /usr/bin/python3 ]]; then  # every line parses as JSON
    /usr/bin/python3 -c 'import json,sys; [json.loads(l) for l in open(sys.argv[1])]' "$dir/mlp$n/metrics.jsonl"
  fi
  # The saved, resolved deck is a deck that checks.
  "$bin/tessera" check "$dir/mlp$n/deck.toml" >/dev/null
done

# SIGTERM to every rank (as srun --signal or a scheduler delivers it) stops them together at a step
# boundary; they exit 75 and mpiexec passes that on. (Hydra's own handling of a SIGTERM sent to
# mpiexec races with the ranks' exit status, so the signal goes to the ranks.)
set +e
"$mpiexec" -n 2 "$bin/tessera" run "$root/inputs/fashion_mlp.toml" run.epochs=50 run.log_every=20 \
  run.output="$dir/stop" $data >"$dir/stop.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  grep -q '^step ' "$dir/stop.log" 2>/dev/null && break
  sleep 0.2
done
pkill -TERM -f "^$bin/tessera run .*$dir/stop" || true  # the ranks, not mpiexec
wait $pid
code=$?
set -e
grep -E '^stopped by SIGTERM at step [0-9]+ of 23450' "$dir/stop.log" || { cat "$dir/stop.log"; exit 1; }
[[ $code -eq 75 ]] || { echo "FAIL: exit code $code, expected 75"; cat "$dir/stop.log"; exit 1; }
grep -q '"kind": "stop"' "$dir/stop/metrics.jsonl"
echo "SIGTERM: stopped at a step boundary, exit 75"
