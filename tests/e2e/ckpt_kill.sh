#!/usr/bin/env bash
# Killing a run with SIGKILL at random moments never leaves an unreadable `latest`, and loses no
# more than checkpoint.every_steps steps (issue 6's acceptance).
#
# TRIALS (default 20) times: a 2-rank run that checkpoints every EVERY (10) steps, resuming with
# checkpoint.restart = "auto" from what the previous trial left, is killed with SIGKILL (every rank
# and mpiexec) after a random 0.3-1.8 s — mid-step, mid-save, mid-rename, wherever it happens to
# be. Then:
#   - `latest`, once it exists, names a checkpoint file that exists, and a run restarted from it
#     loads it (format, every tensor's shape and checksum: tessera exits 0 having nothing left to
#     train when run.steps is the checkpoint's own step);
#   - the steps done (the last "train" record of metrics.jsonl, written every step) minus the
#     checkpoint's step is at most EVERY.
# Prints one line per trial; exits 1 if any trial failed.
set -uo pipefail
bin=${TESSERA_BIN:?}
mpiexec=${MPIEXEC:-mpiexec.mpich}
trials=${TRIALS:-20}
every=${EVERY:-10}
tmp=$(mktemp -d)
trap 'pkill -9 -f "$bin/tessera run $tmp/" 2>/dev/null; rm -rf "$tmp"' EXIT

"$mpiexec" -n 1 "$bin/tessera-data" gen -q -o "$tmp/gs.h5" --samples 64 --size 16 --dims 2 \
  --steps 5 --seed 1 || exit 1
cat >"$tmp/kill.toml" <<EOF
[run]
seed = 5
steps = 1000000
log_every = 1
output = "$tmp/run"
[data]
train = "$tmp/gs.h5:/train"
batch = 8
prefetch = 0
[model]
input = [1, 16, 16]
layers = [ { flatten = {} }, { linear = { out = 512 } }, { relu = {} }, { linear = { out = 2 } } ]
loss = "mse"
[optimizer]
type = "adamw"
lr = 0.0001
[checkpoint]
every_steps = $every
keep = 2
restart = "auto"
EOF

last_done() {  # the last step a "train" record was written for
  grep '"kind": "train"' "$tmp/run/metrics.jsonl" 2>/dev/null | tail -n 1 |
    sed -E 's/.*"step": ([0-9]+),.*/\1/'
}

failed=0
RANDOM=7
for ((t = 1; t <= trials; ++t)); do
  "$mpiexec" -n 2 "$bin/tessera" run "$tmp/kill.toml" >"$tmp/trial.log" 2>&1 &
  launcher=$!
  ms=$((300 + RANDOM % 1500))
  delay=$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))
  sleep "$delay"
  pkill -9 -f "$bin/tessera run $tmp/kill.toml"
  kill -9 "$launcher" 2>/dev/null
  { wait "$launcher"; } 2>/dev/null
  # Until the killed ranks are gone (a rank still exiting holds its folders' locks).
  for ((i = 0; i < 100; ++i)); do
    pgrep -f "$bin/tessera run $tmp/kill.toml" >/dev/null || break
    sleep 0.1
  done

  done_steps=$(last_done)
  if [[ ! -f $tmp/run/ckpt/latest ]]; then
    printf 'trial %2d: killed after %s s at step %s, no checkpoint yet\n' "$t" "$delay" "${done_steps:-0}"
    if [[ -n $done_steps ]] && ((done_steps > every)); then
      echo "  FAIL: $done_steps steps done and no latest (checkpoint every $every)"
      failed=1
    fi
    continue
  fi
  name=$(head -n 1 "$tmp/run/ckpt/latest")
  step=$((10#$(sed -E 's/ckpt-([0-9]+)\.h5/\1/' <<<"$name")))
  status=ok
  if [[ ! -f $tmp/run/ckpt/$name ]]; then
    status="latest names $name, which does not exist"
  elif ! out=$(timeout -k 5 60 "$mpiexec" -n 2 "$bin/tessera" run "$tmp/kill.toml" \
    run.steps="$step" run.output="$tmp/check" checkpoint.dir="$tmp/run/ckpt" \
    checkpoint.every_steps=0 checkpoint.at_end=false 2>&1); then
    status="restart from $name failed: $(grep error: <<<"$out" | head -n 3)"
  elif ((${done_steps:-0} - step > every)); then
    status="lost $((done_steps - step)) steps (done $done_steps, checkpoint at $step)"
  fi
  printf 'trial %2d: killed after %s s at step %s; latest %s loads; lost %d step(s): %s\n' \
    "$t" "$delay" "${done_steps:-?}" "$name" $((${done_steps:-0} - step)) "$status"
  [[ $status == ok ]] || failed=1
done
((failed)) && echo "FAILED" || echo "all $trials trials: latest always loadable, at most $every steps lost"
exit $failed
