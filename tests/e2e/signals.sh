#!/usr/bin/env bash
# Stop signals at awkward moments (issue 18): nothing aborts, the exit code is always 75, and a
# chain of stopped runs ends bit for bit where an uninterrupted run ends.
#
# 1. SIGTERM to mpiexec (what a scheduler does), 2 ranks, at random moments, until the run is
#    done (300 to 1200 ms after each link's first progress line): every stopped link exits 75
#    through MPICH's mpiexec (whose proxy used to report 0 for most of them), and the final
#    checkpoint equals an uninterrupted run's bit for bit.
# 2. A storm: STORM (default 200) SIGTERMs and as many SIGUSR1s, each to a one-rank run right after
#    it starts (once it has set up its signal handling) or a random moment later — during the
#    restart from the previous stop, the model's set-up, training, a checkpoint — in two streams
#    side by side. Every one ends with exit 75 and a "stopped by" line, never with an abort, a
#    crash or a heap-corruption message (the signals used to land on oneDNN's threads).
# 3. A signal before or during the final evaluation (a one-step run, signalled as soon as its
#    handlers are set, at 1 rank and to one of 2 ranks): exit 75, "stopped by SIGTERM during the
#    final evaluation", a "stop" record and no "eval" one (it was ignored: a long evaluation
#    outlasted the scheduler's grace period); the restart with "auto" evaluates and exits 0.
# shellcheck source=tests/e2e/fault_common.bash
source "$(dirname "$0")/fault_common.bash"
storm=${STORM:-200}
# The chain of part 1: its length in steps and its most links (a slow build, ASan, wants fewer
# steps).
# Under ASan/UBSan (the sanitizer suite) a step is ~10× slower: a shorter chain of more links.
if ldd "$bin/tessera" 2>/dev/null | grep -q 'libasan'; then
  chain_steps=${CHAIN_STEPS:-400}
  chain_links=${CHAIN_LINKS:-40}
else
  chain_steps=${CHAIN_STEPS:-4000}
  chain_links=${CHAIN_LINKS:-20}
fi
deck() {  # deck FILE STEPS EVERY
  cat >"$1" <<EOF
[run]
seed = 3
steps = $2
log_every = 50
[data]
train = "$tmp/gs.h5:/train"
batch = 8
[model]
input = [1, 16, 16]
layers = [ { flatten = {} }, { linear = { out = 256 } }, { relu = {} }, { linear = { out = 2 } } ]
loss = "mse"
[optimizer]
type = "adamw"
lr = 0.0001
[checkpoint]
every_steps = $3
keep = 2
restart = "auto"
EOF
}

# --- 1. SIGTERM to mpiexec, a chain of stops, bit for bit --------------------------------------
deck "$tmp/chain.toml" "$chain_steps" $((chain_steps / 8))
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/chain.toml" run.output="$tmp/whole" >"$tmp/whole.log" 2>&1 ||
  fail "the uninterrupted run failed: $(tail -n 3 "$tmp/whole.log")"
RANDOM=11
stops=0
for ((link = 1; link <= chain_links; ++link)); do
  : >"$tmp/link.log"  # empty before the link starts: the wait below reads it
  "$mpiexec" -n 2 "$bin/tessera" run "$tmp/chain.toml" run.output="$tmp/chain" \
    >"$tmp/link.log" 2>&1 &
  launcher=$!
  # From the link's first progress line (its step 1): a loaded machine's slow start-up would
  # otherwise take the whole delay, and every link stop at its first step.
  for ((i = 0; i < 3000; ++i)); do
    grep -q '^step ' "$tmp/link.log" 2>/dev/null && break
    kill -0 "$launcher" 2>/dev/null || break
    sleep 0.01
  done
  ms=$((300 + RANDOM % 900))
  sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"
  kill -TERM "$launcher" 2>/dev/null
  wait "$launcher"
  rc=$?
  if ((rc == 0)); then
    echo "link $link: done (exit 0)"
    break
  fi
  ((++stops))
  step=$(sed -nE 's/^stopped by SIGTERM at step ([0-9]+).*/\1/p' "$tmp/link.log")
  echo "link $link: SIGTERM to mpiexec after ${ms} ms: exit $rc, stopped at step ${step:-?}"
  ((rc == 75)) || fail "link $link: exit $rc instead of 75: $(grep -i error "$tmp/link.log" | head -n 3)"
  [[ -n $step ]] || fail "link $link: no 'stopped by SIGTERM' line"
done
((stops >= 2)) || fail "only $stops stops: the chain did not test much"
final=ckpt/$(printf 'ckpt-%08d.h5' "$chain_steps")
if [[ ! -f $tmp/chain/$final ]]; then
  fail "the chain did not reach step $chain_steps: $(ls "$tmp/chain" "$tmp/chain/ckpt")"
elif ! "$mpiexec" -n 1 "$bin/tessera-ckpt" diff "$tmp/chain/$final" "$tmp/whole/$final" >"$tmp/diff.log" 2>&1; then
  fail "the chain's final checkpoint differs from the uninterrupted run's: $(tail -n 3 "$tmp/diff.log")"
else
  echo "chain of $stops stops: the final checkpoint equals the uninterrupted run's bit for bit"
fi

# --- 2. the storm ------------------------------------------------------------------------------
deck "$tmp/storm.toml" 100000000 25
# Runs one trial: starts a one-rank run, waits until its signals are deferred (SIGINT, SIGTERM
# and SIGUSR1 blocked: 0x4202 in /proc's SigBlk), waits 0 to 400 ms more, sends the signal.
trial() {  # trial STREAM N SIGNAL
  local dir=$tmp/storm$1 log=$tmp/storm$1/trial.log
  mkdir -p "$dir"
  "$bin/tessera" run "$tmp/storm.toml" run.output="$dir/run" >"$log" 2>&1 &
  local pid=$! mask
  for ((i = 0; i < 2000; ++i)); do
    mask=$(awk '/^SigBlk/ {print $2}' "/proc/$pid/status" 2>/dev/null)
    [[ -n $mask ]] && (((16#$mask & 0x4202) == 0x4202)) && break
    sleep 0.002
  done
  local ms=$((RANDOM % 400))
  sleep "$(printf '0.%03d' "$ms")"
  kill "-$3" "$pid" 2>/dev/null
  wait "$pid"
  local rc=$?
  if ((rc != 75)) || ! grep -q "^stopped by SIG$3" "$log" ||
    grep -Eqi 'corrupt|double free|abort|segmentation|sanitizer|core dumped|error' "$log"; then
    echo "FAIL: stream $1 trial $2: $3 after ${ms} ms: exit $rc"
    tail -n 5 "$log"
    return 1
  fi
}
stream() {  # stream ID: STORM/2 SIGTERMs and STORM/2 SIGUSR1s, alternating
  local bad=0
  RANDOM=$((100 + $1))
  for ((n = 1; n <= storm; ++n)); do
    trial "$1" "$n" "$( ((n % 2)) && echo TERM || echo USR1)" || bad=1
  done
  return $bad
}
start=$SECONDS
stream 1 &
first=$!
stream 2 || fail "storm stream 2"
wait "$first" || fail "storm stream 1"
echo "storm: $storm SIGTERMs and $storm SIGUSR1s in $((SECONDS - start)) s:" \
  "$( ((failed)) && echo "some FAILED" || echo "every one exit 75, no abort")"

# --- 3. a signal before the final evaluation ---------------------------------------------------
deck "$tmp/final.toml" 1 1
for np in 1 2; do
  out=$tmp/final$np
  "$mpiexec" -n $np "$bin/tessera" run "$tmp/final.toml" data.test="$tmp/gs.h5:/train" \
    run.output="$out" >"$out.log" 2>&1 &
  launcher=$!
  pid=""
  for ((i = 0; i < 2000; ++i)); do
    pid=$(rank_pid "run.output=$out" $((np - 1)))
    mask=$([[ -n $pid ]] && awk '/^SigBlk/ {print $2}' "/proc/$pid/status" 2>/dev/null)
    [[ -n $mask ]] && (((16#$mask & 0x4202) == 0x4202)) && break
    sleep 0.002
  done
  kill -TERM "$pid" 2>/dev/null
  wait "$launcher"
  rc=$?
  if ((rc != 75)) || ! grep -q '^stopped by SIGTERM during the final evaluation, after step 1 of 1' "$out.log" ||
    ! grep -q '"kind": "stop", "step": 1' "$out/metrics.jsonl" || grep -q '"kind": "eval"' "$out/metrics.jsonl"; then
    fail "SIGTERM before the final evaluation at $np rank(s): exit $rc: $(tail -n 2 "$out.log")"
    continue
  fi
  "$mpiexec" -n $np "$bin/tessera" run "$tmp/final.toml" data.test="$tmp/gs.h5:/train" \
    run.output="$out" >"$out-again.log" 2>&1 ||
    { fail "the restart after a stopped evaluation at $np rank(s): $(tail -n 2 "$out-again.log")"; continue; }
  grep -q '^eval  step 1: .*(64 samples)$' "$out-again.log" ||
    fail "the restart at $np rank(s) did not evaluate: $(tail -n 2 "$out-again.log")"
  echo "$np rank(s): SIGTERM before the final evaluation: exit 75, the restart evaluates"
done

((failed)) && echo "FAILED" || echo "all signal tests passed"
exit $failed
