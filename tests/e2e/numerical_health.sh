#!/usr/bin/env bash
# Numerical health (issue 18). A learning rate of 1e30 makes the weights huge after the first
# update, so the second step's loss overflows. At 1 and 2 ranks:
#   - run.nonfinite = "stop" (the default): one message naming the step, the tensor and the rank,
#     exit 2 on every rank, before the update; `latest` stays at the last good checkpoint (step 1);
#   - "skip": every later step is skipped (a "skip" record each in metrics.jsonl, a warning each)
#     and the run ends, when run.skip_limit allows 19 in a row; at the default limit (10) the
#     step after ten skipped ones stops the run (exit 2): it is not recovering;
#   - at lr = 3e38 the first update itself overflows the weights to infinity: the next step stops
#     the run naming the weight and the update that left it so ("stop"; with "skip" too: skipping
#     would skip every later step), and a
#     checkpoint due right after such an update is refused (exit 2) instead of being written and
#     marked good.
# shellcheck source=tests/e2e/fault_common.bash
source "$(dirname "$0")/fault_common.bash"
printf '%s\n' '[run]' 'seed = 3' 'steps = 20' 'log_every = 5' \
  '[data]' "train = \"$tmp/gs.h5:/train\"" 'batch = 8' \
  '[model]' 'input = [1, 16, 16]' \
  'layers = [ { flatten = {} }, { linear = { out = 32 } }, { relu = {} }, { linear = { out = 2 } } ]' \
  'loss = "mse"' '[optimizer]' 'type = "adamw"' 'lr = 1e30' \
  '[checkpoint]' 'every_steps = 1' 'keep = 2' >"$tmp/deck.toml"

for np in 1 2; do
  out=$tmp/run$np
  # --- stop ---
  "$mpiexec" -n "$np" "$bin/tessera" run "$tmp/deck.toml" run.output="$out/stop" >"$tmp/log" 2>&1
  rc=$?
  message=$(grep "^error:" "$tmp/log")
  echo "$np rank(s), stop: exit $rc: $message"
  ((rc == 2)) || fail "stop at $np ranks: exit $rc, expected 2"
  [[ $(grep -c "^error:" "$tmp/log") == 1 ]] || fail "stop at $np ranks: not exactly one error line"
  [[ $message =~ ^error:\ .*step\ 2:\ the\ (loss|gradient\ of\ [a-z0-9_.]+)\ .*on\ rank\ 0\ is\ not\ finite\;\ the\ run\ stops\ before\ applying\ it ]] ||
    fail "stop at $np ranks: message"
  [[ $(head -n 1 "$out/stop/ckpt/latest" 2>/dev/null) == ckpt-00000001.h5 ]] ||
    fail "stop at $np ranks: latest is not the step-1 checkpoint"
  [[ ! -e $out/stop/ckpt/ckpt-00000002.h5 ]] || fail "stop at $np ranks: step 2 was checkpointed"

  # --- skip, no checkpoints, a limit the 19 skipped steps stay within: the run ends ---
  "$mpiexec" -n "$np" "$bin/tessera" run "$tmp/deck.toml" run.output="$out/skip" \
    run.nonfinite='"skip"' run.skip_limit=19 checkpoint.every_steps=0 checkpoint.at_end=false \
    >"$tmp/log" 2>&1
  rc=$?
  skips=$(grep -c '"kind": "skip"' "$out/skip/metrics.jsonl")
  warnings=$(grep -c "the step is skipped" "$tmp/log")
  echo "$np rank(s), skip: exit $rc, $skips skip records, $warnings warnings"
  ((rc == 0)) || fail "skip at $np ranks: exit $rc ($(grep error: "$tmp/log"))"
  ((skips == 19 && warnings >= 1)) || fail "skip at $np ranks: expected steps 2-20 skipped"
  grep -q '^final: 20 steps in .*; 19 steps skipped (run.nonfinite = "skip")$' "$tmp/log" ||
    fail "skip at $np ranks: the final line does not count the skipped steps"

  # --- skip at the default limit: steps 2-11 skipped, step 12 stops the run ---
  "$mpiexec" -n "$np" "$bin/tessera" run "$tmp/deck.toml" run.output="$out/skiplimit" \
    run.nonfinite='"skip"' checkpoint.every_steps=0 checkpoint.at_end=false >"$tmp/log" 2>&1
  rc=$?
  skips=$(grep -c '"kind": "skip"' "$out/skiplimit/metrics.jsonl")
  message=$(grep "^error:" "$tmp/log")
  echo "$np rank(s), skip at the default limit: exit $rc, $skips skip records: $message"
  ((rc == 2 && skips == 10)) || fail "skip limit at $np ranks: exit $rc, $skips skips (expected 2, 10)"
  [[ $(grep -c "^error:" "$tmp/log") == 1 ]] || fail "skip limit at $np ranks: not exactly one error line"
  [[ $message =~ ^error:\ command\ line:\ step\ 12:\ the\ (loss|gradient\ of\ [a-z0-9_.]+)\ .*on\ rank\ 0\ is\ not\ finite\;\ the\ 10\ steps\ before\ it\ were\ skipped\ too\ \(run.skip_limit\ =\ 10\):\ the\ run\ is\ not\ recovering\ and\ stops ]] ||
    fail "skip limit at $np ranks: message"

  # --- skip, but an update left the weights infinite: skipping cannot mend them, the run stops ---
  "$mpiexec" -n "$np" "$bin/tessera" run "$tmp/deck.toml" run.output="$out/skipinf" \
    optimizer.lr=3e38 run.nonfinite='"skip"' checkpoint.every_steps=0 >"$tmp/log" 2>&1
  rc=$?
  message=$(grep "^error:" "$tmp/log")
  echo "$np rank(s), skip with infinite weights: exit $rc: $message"
  ((rc == 2)) || fail "skip with infinite weights at $np ranks: exit $rc, expected 2"
  [[ $message =~ ^error:\ command\ line:\ step\ 2:\ the\ loss\ .*\ on\ rank\ 0\ is\ not\ finite\;\ parameter\ [a-z0-9_.]+\ \(element\ [0-9]+:\ -?inf\)\ on\ rank\ 0\ is\ not\ finite\ either,\ left\ so\ by\ an\ earlier\ update:\ skipping\ steps\ cannot\ mend\ it ]] ||
    fail "skip with infinite weights at $np ranks: message"
  ls "$out/skipinf/ckpt"/*.h5 >/dev/null 2>&1 && fail "skip with infinite weights at $np ranks: a checkpoint was written"

  # --- stop, and an update left the weights infinite: the message names the weight ---
  "$mpiexec" -n "$np" "$bin/tessera" run "$tmp/deck.toml" run.output="$out/stopinf" \
    optimizer.lr=3e38 checkpoint.every_steps=0 checkpoint.at_end=false >"$tmp/log" 2>&1
  rc=$?
  message=$(grep "^error:" "$tmp/log")
  echo "$np rank(s), stop with infinite weights: exit $rc: $message"
  ((rc == 2)) || fail "stop with infinite weights at $np ranks: exit $rc, expected 2"
  [[ $message =~ ^error:\ .*step\ 2:\ the\ loss\ .*\ on\ rank\ 0\ is\ not\ finite\;\ parameter\ [a-z0-9_.]+\ \(element\ [0-9]+:\ -?inf\)\ on\ rank\ 0\ is\ not\ finite\ either,\ left\ so\ by\ step\ 1\'s\ update:\ the\ run\ stops\ \(a\ lower\ optimizer.lr ]] ||
    fail "stop with infinite weights at $np ranks: message"
  grep -q 'run.nonfinite = "skip"' "$tmp/log" && fail "stop with infinite weights: suggests skip"

  # --- the last update overflows the weights: the checkpoint at the end is refused ---
  "$mpiexec" -n "$np" "$bin/tessera" run "$tmp/deck.toml" run.output="$out/lastinf" \
    optimizer.lr=3e38 run.steps=1 checkpoint.every_steps=0 >"$tmp/log" 2>&1
  rc=$?
  message=$(grep "^error:" "$tmp/log")
  echo "$np rank(s), infinite weights at the end: exit $rc: $message"
  ((rc == 2)) || fail "infinite weights at $np ranks: exit $rc, expected 2"
  [[ $message =~ ^error:\ step\ 1:\ parameter\ [a-z0-9_.]+\ holds\ a\ non-finite\ value\ .*the\ checkpoint\ is\ not\ written,\ there\ is\ no\ earlier\ checkpoint$ ]] ||
    fail "infinite weights at $np ranks: message"
  ls "$out/lastinf/ckpt"/*.h5 >/dev/null 2>&1 && fail "infinite weights at $np ranks: a checkpoint was written"
done
((failed)) && echo "FAILED" || echo "non-finite values stop the run (or skip steps), never checkpointed"
exit $failed
