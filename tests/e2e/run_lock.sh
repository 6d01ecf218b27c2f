#!/usr/bin/env bash
# One run per run.output (issue 18): a second run into the folder of a live one is refused with one
# message naming the first (exit 2), and so is one into its checkpoint.dir (elsewhere), and the
# first goes on untouched; once the first has ended the
# folder is free again; a lock whose run is gone — its process dead on this host, or another
# host's heartbeat older than a minute — is taken over with a note.
# shellcheck source=tests/e2e/fault_common.bash
source "$(dirname "$0")/fault_common.bash"
printf '%s\n' '[run]' 'seed = 5' 'steps = 100000000' 'log_every = 100' \
  "output = \"$tmp/run\"" '[data]' "train = \"$tmp/gs.h5:/train\"" 'batch = 8' \
  '[model]' 'input = [1, 16, 16]' \
  'layers = [ { flatten = {} }, { linear = { out = 16 } }, { relu = {} }, { linear = { out = 2 } } ]' \
  'loss = "mse"' '[optimizer]' 'type = "sgd"' 'lr = 0.01' >"$tmp/deck.toml"

# The first run, on 2 ranks, training.
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/deck.toml" checkpoint.dir="$tmp/shared" >"$tmp/first.log" 2>&1 &
first=$!
# Until it trains: its first progress line ("step      1/..."; the resolved deck it prints
# before, with its "steps = " line, comes before the lock), up to 2 minutes (an ASan build on a
# loaded machine starts slowly).
for ((i = 0; i < 1200; ++i)); do
  grep -Eq "^step +[0-9]+/" "$tmp/first.log" 2>/dev/null && break
  sleep 0.1
done
pid=; host=
read -r pid host _ <"$tmp/run/.lock" || fail "no lock in the first run's folder"
for np in 1 2; do
  "$mpiexec" -n "$np" "$bin/tessera" run "$tmp/deck.toml" run.steps=10 >"$tmp/second.log" 2>&1
  rc=$?
  echo "second run on $np rank(s): exit $rc: $(grep "^error:" "$tmp/second.log")"
  ((rc == 2)) || fail "the second run on $np ranks: exit $rc, expected 2"
  grep -qx "error: run.output = \"$tmp/run\" is in use by another run (process $pid on $host, since [0-9-]* [0-9:]* UTC; lock $tmp/run/.lock); give this run another run.output (or run.name), or wait for that one to end" \
    "$tmp/second.log" || fail "the second run on $np ranks: message"
done
# Another run.output, but the first run's checkpoint folder: refused too (the two would prune and
# overwrite each other's checkpoints).
"$mpiexec" -n 1 "$bin/tessera" run "$tmp/deck.toml" run.steps=10 run.output="$tmp/other" \
  checkpoint.dir="$tmp/shared" >"$tmp/second.log" 2>&1
rc=$?
echo "a second run into the first's checkpoint.dir: exit $rc: $(grep "^error:" "$tmp/second.log")"
((rc == 2)) || fail "a second run into the first's checkpoint.dir: exit $rc, expected 2"
grep -qx "error: checkpoint.dir = \"$tmp/shared\" is in use by another run (process $pid on $host, since [0-9-]* [0-9:]* UTC; lock $tmp/shared/.lock); give this run another checkpoint.dir, or wait for that one to end" \
  "$tmp/second.log" || fail "a second run into the first's checkpoint.dir: message"
kill -0 "$first" 2>/dev/null || fail "the first run did not survive the second's attempt"
kill -TERM "$first"
wait "$first"
rc=$?
((rc == 75)) || fail "the first run: exit $rc after SIGTERM, expected 75"
[[ ! -e $tmp/run/.lock && ! -e $tmp/shared/.lock ]] || fail "a lock outlived its run"
ls "$tmp/shared"/ckpt-*.h5 >/dev/null 2>&1 || fail "the stopped run saved no checkpoint in checkpoint.dir"

# Free again.
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/deck.toml" run.steps=10 >"$tmp/third.log" 2>&1 ||
  fail "a run into the freed folder: $(grep error: "$tmp/third.log")"

# A stale lock of this host: its process is gone.
sleep 30 &
dead=$!
kill -9 "$dead"
wait "$dead" 2>/dev/null
echo "$dead $(hostname) 2026-01-01 00:00:00 UTC" >"$tmp/run/.lock"
"$mpiexec" -n 1 "$bin/tessera" run "$tmp/deck.toml" run.steps=10 >"$tmp/stale.log" 2>&1 ||
  fail "a run over a dead process's lock: $(grep error: "$tmp/stale.log")"
grep -q "^run.output: taking over the lock of a run that is gone (process $dead on $(hostname)" \
  "$tmp/stale.log" || fail "no note on taking over a dead process's lock"

# Another host's lock: live while its heartbeat is fresh, stale a minute later.
echo "1 elsewhere 2026-01-01 00:00:00 UTC" >"$tmp/run/.lock"
"$mpiexec" -n 1 "$bin/tessera" run "$tmp/deck.toml" run.steps=10 >"$tmp/remote.log" 2>&1 &&
  fail "a run over another host's fresh lock was not refused"
grep -q "^error: run.output = .* is in use by another run (process 1 on elsewhere" "$tmp/remote.log" ||
  fail "another host's fresh lock: message $(grep error: "$tmp/remote.log")"
touch -d '2 minutes ago' "$tmp/run/.lock"
"$mpiexec" -n 1 "$bin/tessera" run "$tmp/deck.toml" run.steps=10 >"$tmp/remote.log" 2>&1 ||
  fail "a run over another host's stale lock: $(grep error: "$tmp/remote.log")"

((failed)) && echo "FAILED" || echo "one run per run.output; stale locks taken over"
exit $failed
