#!/usr/bin/env bash
# A restart with another data.batch than the checkpoint's run: the checkpoint's data cursor counts
# batches of the old size, so the epoch's position in samples goes on in batches of the new one
# (with a warning naming both), instead of skipping or re-reading samples silently. 64 samples;
# 2 steps of 16 leave the epoch 32 samples in: batch 4 of 8 continues exactly there, batch 2 of 12
# reads 8 samples again, and batch 48 starts at its batch 0 (32 samples again). A restart with
# another run.seed or data.train is said too (one line each), and one with neither says nothing.
# shellcheck source=tests/e2e/fault_common.bash
source "$(dirname "$0")/fault_common.bash"
printf '%s\n' '[run]' 'seed = 3' 'steps = 2' 'log_every = 1' \
  '[data]' "train = \"$tmp/gs.h5:/train\"" 'batch = 16' 'shuffle = false' \
  '[model]' 'input = [1, 16, 16]' \
  'layers = [ { flatten = {} }, { linear = { out = 8 } }, { relu = {} }, { linear = { out = 2 } } ]' \
  'loss = "mse"' '[optimizer]' 'type = "sgd"' 'lr = 0.01' '[checkpoint]' >"$tmp/deck.toml"
"$mpiexec" -n 1 "$bin/tessera" run "$tmp/deck.toml" run.output="$tmp/first" >"$tmp/first.log" 2>&1 ||
  fail "the first run: exit $?"
for case in "8 4 " "12 2  (8 samples of the epoch read again)" "48 0  (32 samples of the epoch read again)"; do
  read -r batch next rest <<<"$case"
  rm -rf "$tmp/again"
  for np in 1 2; do
    rm -rf "$tmp/again"
    "$mpiexec" -n "$np" "$bin/tessera" run "$tmp/deck.toml" run.output="$tmp/again" run.steps=3 \
      data.batch="$batch" checkpoint.restart="$tmp/first/ckpt/ckpt-00000002.h5" >"$tmp/again.log" 2>&1 ||
      { fail "batch $batch at $np ranks: exit $?"; grep error "$tmp/again.log"; continue; }
    want="restart: data.batch = $batch, the checkpoint's run used 16: its epoch was 32 samples in; training goes on from batch $next of $batch${rest:+ $rest}"
    grep -qxF "$want" "$tmp/again.log" ||
      { fail "batch $batch at $np ranks: the warning"; grep "^restart:" "$tmp/again.log"; }
  done
  echo "batch 16 -> $batch: goes on from batch $next${rest:+ $rest}"
done
cp "$tmp/gs.h5" "$tmp/other.h5"
rm -rf "$tmp/again"
"$mpiexec" -n 1 "$bin/tessera" run "$tmp/deck.toml" run.output="$tmp/again" run.steps=3 run.seed=9 \
  data.train="$tmp/other.h5:/train" checkpoint.restart="$tmp/first/ckpt/ckpt-00000002.h5" >"$tmp/again.log" 2>&1 ||
  fail "another seed and split: exit $?"
grep -qxF "restart: run.seed = 9, the checkpoint's run used 3: the order of the samples, the dropout masks and all else drawn from here on follow the new seed" "$tmp/again.log" ||
  fail "another seed: no warning"
grep -qxF "restart: data.train = \"$tmp/other.h5:/train\", the checkpoint's run trained on \"$tmp/gs.h5:/train\": its data cursor (epoch 0, batch 2) goes on in the new split" "$tmp/again.log" ||
  fail "another split: no warning"
rm -rf "$tmp/again"
"$mpiexec" -n 1 "$bin/tessera" run "$tmp/deck.toml" run.output="$tmp/again" run.steps=3 \
  checkpoint.restart="$tmp/first/ckpt/ckpt-00000002.h5" >"$tmp/again.log" 2>&1 || fail "the same deck: exit $?"
[[ $(grep -c "^restart: " "$tmp/again.log") == 1 ]] || fail "the same deck: $(grep '^restart: ' "$tmp/again.log")"
echo "another seed and split: a line each; the same deck: only the restart's own line"
((failed)) && echo "FAILED" || echo "a restart with another batch goes on from the epoch's position in samples"
exit $failed
