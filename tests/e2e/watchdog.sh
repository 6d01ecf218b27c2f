#!/usr/bin/env bash
# The watchdog (issue 18): a rank that stops (SIGSTOP) in the middle of training used to leave the
# other spinning forever. With run.watchdog_s = 3, the job now ends within the limit plus the time
# the live ranks take to ask the others: exit 124, the live rank's last collectives printed, and
# the stopped rank named as the one that did not answer. Tried with each of the two ranks stopped.
# shellcheck source=tests/e2e/fault_common.bash
source "$(dirname "$0")/fault_common.bash"
printf '%s\n' '[run]' 'seed = 5' 'steps = 100000000' 'log_every = 100' 'watchdog_s = 3' \
  '[data]' "train = \"$tmp/gs.h5:/train\"" 'batch = 8' \
  '[model]' 'input = [1, 16, 16]' \
  'layers = [ { flatten = {} }, { linear = { out = 64 } }, { relu = {} }, { linear = { out = 2 } } ]' \
  'loss = "mse"' '[optimizer]' 'type = "sgd"' 'lr = 0.01' >"$tmp/deck.toml"

for stopped in 1 0; do
  live=$((1 - stopped))
  "$mpiexec" -n 2 "$bin/tessera" run "$tmp/deck.toml" run.output="$tmp/run$stopped" \
    >"$tmp/out$stopped.log" 2>&1 &
  launcher=$!
  # Wait for training (the progress line of step 200: past the first step's longer limit), then
  # stop one rank.
  for ((i = 0; i < 300; ++i)); do
    grep -q "^step *200/" "$tmp/out$stopped.log" 2>/dev/null && break
    sleep 0.1
  done
  ranks=()
  for pid in $(pgrep -f "tessera run $tmp/deck.toml run.output=$tmp/run$stopped"); do
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == tessera ]] && ranks+=("$pid")
  done
  if ((${#ranks[@]} != 2)); then
    fail "expected 2 rank processes, found ${#ranks[@]}"
    kill -9 "$launcher"
    continue
  fi
  # The rank with PMI_RANK=$stopped in its environment.
  victim=
  for pid in "${ranks[@]}"; do
    tr '\0' '\n' <"/proc/$pid/environ" | grep -qx "PMI_RANK=$stopped" && victim=$pid
  done
  [[ -n $victim ]] || victim=${ranks[$stopped]}
  kill -STOP "$victim"
  start=$SECONDS
  wait "$launcher"
  rc=$?
  took=$((SECONDS - start))
  kill -9 "$victim" 2>/dev/null
  echo "rank $stopped stopped: exit $rc after $took s"
  grep "watchdog" "$tmp/out$stopped.log" | grep -v "^  #" | sed 's/^/    /'
  ((rc == 124)) || fail "rank $stopped stopped: exit $rc, expected 124"
  ((took <= 15)) || fail "rank $stopped stopped: the job took $took s to end (limit 3 s)"
  grep -q "^rank $live on .*: watchdog: blocked [0-9.]* s (limit 3 s, run.watchdog_s) waiting for collective #[0-9]* at step [0-9]*; its last collectives:" \
    "$tmp/out$stopped.log" || fail "rank $stopped stopped: no diagnosis from rank $live"
  grep -q "^  #[0-9]* allreduce on 'trainer', [0-9]* B, step [0-9]*, started [0-9.]* s ago$" "$tmp/out$stopped.log" ||
    fail "rank $stopped stopped: the last collectives are not listed"
  grep -q "^rank $live: watchdog: rank $stopped did not answer within [0-9]* s (stopped, dead, or stuck outside MPI); ending the job (exit code 124)" \
    "$tmp/out$stopped.log" || fail "rank $stopped stopped: rank $stopped is not named"
done
((failed)) && echo "FAILED" || echo "a stopped rank is named and the job ends with exit 124"
exit $failed
