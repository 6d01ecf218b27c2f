#!/usr/bin/env bash
# A restart with another data.batch than the checkpoint's run: the checkpoint's data cursor counts
# batches of the old size, so the epoch's position in samples goes on in batches of the new one
# (with a warning naming both), instead of skipping or re-reading samples silently. 64 samples;
# 2 steps of 16 leave the epoch 32 samples in: batch 4 of 8 continues exactly there, batch 2 of 12
# reads 8 samples again, and batch 48 starts at its batch 0 (32 samples again). A restart with
# another run.seed or data.train is said too (one line each), and one with neither says nothing.
# With run.epochs, another batch changes how many steps are left; data.drop_last set on a restart
# whose cursor is at the dropped short batch goes on at the next epoch; a cosine schedule over
# another run.steps says how its learning rate moves.
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
    # metrics.jsonl's epoch is where the cursor is: batch 4 of 8 read, 5/8 of epoch 0 (not 3/8).
    [[ $batch != 8 ]] || grep -q '"kind": "train", "step": 3, "epoch": 0.625,' "$tmp/again/metrics.jsonl" ||
      fail "batch 8 at $np ranks: step 3's epoch: $(grep -o '"step": 3, "epoch": [^,]*' "$tmp/again/metrics.jsonl")"
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
# Another learning rate, warm-up and sample order than the checkpoint's run:
# one line naming each key with both values.
rm -rf "$tmp/again"
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/deck.toml" run.output="$tmp/again" run.steps=3 \
  optimizer.lr=0.02 optimizer.schedule.warmup_steps=1 data.shuffle=true \
  checkpoint.restart="$tmp/first/ckpt/ckpt-00000002.h5" >"$tmp/again.log" 2>&1 || fail "changed keys: exit $?"
grep -qxF "restart: the deck changes what the checkpoint's run trained with: data.shuffle = false → true, optimizer.lr = 0.01 → 0.02, optimizer.schedule.warmup_steps = 0 → 1; training goes on with the deck's values" "$tmp/again.log" ||
  fail "changed keys: $(grep '^restart: the deck' "$tmp/again.log")"
echo "another lr, warm-up and shuffle: one line naming each"
# A checkpoint past the run's end: said, nothing trained, the model stays at its step.
rm -rf "$tmp/again"
"$mpiexec" -n 1 "$bin/tessera" run "$tmp/deck.toml" run.output="$tmp/again" run.steps=1 \
  checkpoint.restart="$tmp/first/ckpt/ckpt-00000002.h5" >"$tmp/again.log" 2>&1 || fail "past the end: exit $?"
grep -qF "at step 2 (saved on 1 rank: trainers 1 × data 1 × pipeline 1 × tensor 1 × spatial [1, 1], zero 0); it is past the run's 1 step: nothing is left to train (the model stays at step 2; a run.steps above 2 trains on from it" "$tmp/again.log" ||
  fail "past the end: $(grep '^restart:' "$tmp/again.log")"
echo "a checkpoint past the run's end: said"

# run.epochs counts epochs: a restart with another batch ends where the cursor ends the last epoch
# (2 epochs of 64 from 32 samples in: batch 8 leaves 4 + 8 steps after the 2 done, batch 12 reads
# 8 samples again and leaves 4 + 6), not at 2 epochs of the new batch's steps.
for case in "8 14" "12 12"; do
  read -r batch total <<<"$case"
  rm -rf "$tmp/again"
  "$mpiexec" -n 1 "$bin/tessera" run "$tmp/deck.toml" run.output="$tmp/again" run.steps= run.epochs=2 \
    data.batch="$batch" checkpoint.restart="$tmp/first/ckpt/ckpt-00000002.h5" >"$tmp/again.log" 2>&1 ||
    fail "epochs, batch $batch: exit $?"
  grep -q "^final: $total steps in " "$tmp/again.log" ||
    fail "epochs, batch $batch: want $total steps, got: $(grep '^final:' "$tmp/again.log")"
  [[ $(grep -c '"kind": "train"' "$tmp/again/metrics.jsonl") == $((total - 2)) ]] ||
    fail "epochs, batch $batch: $((total - 2)) steps trained after the restart"
done
echo "run.epochs = 2 after 32 samples: 14 steps in all at batch 8, 12 at batch 12"

# data.drop_last = true where the checkpoint's run kept the short last batch (64 = 24 + 24 + 16)
# and stopped before it: the restart goes on at the next epoch, with a line saying so.
rm -rf "$tmp/dl" "$tmp/again"
"$mpiexec" -n 1 "$bin/tessera" run "$tmp/deck.toml" run.output="$tmp/dl" data.batch=24 >"$tmp/dl.log" 2>&1 ||
  fail "drop_last: the first run: exit $?"
"$mpiexec" -n 1 "$bin/tessera" run "$tmp/deck.toml" run.output="$tmp/again" data.batch=24 \
  data.drop_last=true run.steps=4 checkpoint.restart="$tmp/dl/ckpt/ckpt-00000002.h5" >"$tmp/again.log" 2>&1 ||
  fail "drop_last: exit $? ($(grep error "$tmp/again.log"))"
grep -qxF "restart: data.drop_last = true, the checkpoint's run kept the short last batch, where its cursor was: training goes on from epoch 2" "$tmp/again.log" ||
  fail "drop_last: the warning"
grep -q '"kind": "train", "step": 3, "epoch": 1.5,' "$tmp/again/metrics.jsonl" ||  # the first of 2 batches
  fail "drop_last: step 3 is not the first of epoch 2"
echo "drop_last set on a restart at the short last batch: the next epoch"

# Another length with a cosine schedule: the decay follows the new length, said with the learning
# rate of the next step against the one the checkpoint's run used there (its metrics).
cosine='optimizer.schedule={ type = "cosine", min_lr = 0.001 }'
rm -rf "$tmp/cos" "$tmp/again"
"$mpiexec" -n 1 "$bin/tessera" run "$tmp/deck.toml" run.output="$tmp/cos" run.steps=4 \
  checkpoint.every_steps=2 "$cosine" >"$tmp/cos.log" 2>&1 || fail "cosine: the first run: exit $?"
"$mpiexec" -n 1 "$bin/tessera" run "$tmp/deck.toml" run.output="$tmp/again" run.steps=6 "$cosine" \
  checkpoint.restart="$tmp/cos/ckpt/ckpt-00000002.h5" >"$tmp/again.log" 2>&1 || fail "cosine: exit $?"
lr_of() { grep '"kind": "train", "step": 3,' "$1" | sed -E 's/.*"lr": ([^,]+),.*/\1/' | xargs printf '%.4g'; }
ours=$(lr_of "$tmp/again/metrics.jsonl")
theirs=$(lr_of "$tmp/cos/metrics.jsonl")
want="restart: the run has 6 steps, the checkpoint's run 4: the cosine learning-rate schedule decays over the new length from here on (step 3: lr $ours, where the checkpoint's run had $theirs)"
grep -qxF "$want" "$tmp/again.log" ||
  { fail "cosine: the warning"; echo "    want: $want"; grep '^restart:' "$tmp/again.log" | sed 's/^/    got:  /'; }
[[ $ours != "$theirs" ]] || fail "cosine: the same learning rate at step 3 ($ours)"
echo "a cosine run lengthened on restart: step 3 at lr $ours instead of $theirs, said"

# A run resumed in its own folder after losing its newest checkpoint (killed between two saves):
# metrics.jsonl holds steps 3-4 twice, a "restart" record between; tools/plot_metrics.py keeps the
# later ones, and their times continue the first segment's.
rm -rf "$tmp/lost"
"$mpiexec" -n 1 "$bin/tessera" run "$tmp/deck.toml" run.output="$tmp/lost" run.steps=4 \
  checkpoint.every_steps=2 >"$tmp/lost.log" 2>&1 || fail "lost: the first run: exit $?"
rm -f "$tmp/lost/ckpt/ckpt-00000004.h5" "$tmp/lost/ckpt/latest"
"$mpiexec" -n 1 "$bin/tessera" run "$tmp/deck.toml" run.output="$tmp/lost" run.steps=4 \
  checkpoint.every_steps=2 checkpoint.restart=auto >"$tmp/lost.log" 2>&1 || fail "lost: the resumed run: exit $?"
[[ $(grep -c '"kind": "train", "step": 3,' "$tmp/lost/metrics.jsonl") == 2 ]] ||
  fail "lost: metrics.jsonl does not hold step 3 twice"
if [[ -x /usr/bin/python3 ]]; then
  steps=$(/usr/bin/python3 - "$(dirname "$0")/../../tools/plot_metrics.py" "$tmp/lost/metrics.jsonl" <<'PY'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("plot_metrics", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
run = module.load(sys.argv[2], "lost")
times = [p["time"] for p in run.train]
assert times == sorted(times), times
print(" ".join(str(int(p["step"])) for p in run.train))
PY
  )
  [[ $steps == "1 2 3 4" ]] || fail "lost: plot_metrics reads the steps $steps, want 1 2 3 4 (times rising)"
  echo "a resumed run's repeated steps: plot_metrics keeps the later ($steps)"
fi
# A refused restart in the run's own folder (another optimizer than the checkpoint's) leaves the
# folder's deck.toml and metrics.jsonl as the run it would have resumed wrote them.
cp "$tmp/first/deck.toml" "$tmp/deck.before"
cp "$tmp/first/metrics.jsonl" "$tmp/metrics.before"
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/deck.toml" run.output="$tmp/first" run.steps=3 \
  optimizer.type=adamw checkpoint.restart=auto >"$tmp/refused.log" 2>&1
code=$?
[[ $code == 2 ]] || fail "refused restart: exit $code, want 2"
grep -q 'it holds the state of optimizer "sgd", the deck asks for "adamw"' "$tmp/refused.log" ||
  fail "refused restart: $(grep error "$tmp/refused.log" | head -1)"
cmp -s "$tmp/deck.before" "$tmp/first/deck.toml" || fail "refused restart: deck.toml was rewritten"
cmp -s "$tmp/metrics.before" "$tmp/first/metrics.jsonl" || fail "refused restart: metrics.jsonl changed"
echo "a refused restart: exit 2, the folder's deck.toml and metrics.jsonl unchanged"
# Refused into folders that did not exist (run.output two levels deep, a checkpoint.dir apart):
# the folders the run made to take its locks are gone again; a folder that existed stays.
mkdir "$tmp/kept"
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/deck.toml" run.output="$tmp/new/run/" run.steps=3 \
  checkpoint.dir="$tmp/kept/ckpt/a" optimizer.type=adamw \
  checkpoint.restart="$tmp/first/ckpt/ckpt-00000002.h5" >"$tmp/refused.log" 2>&1
code=$?
[[ $code == 2 ]] || fail "refused restart into new folders: exit $code, want 2"
[[ ! -e $tmp/new && ! -e $tmp/kept/ckpt && -d $tmp/kept ]] ||
  fail "refused restart into new folders: left $(cd "$tmp" && find new kept 2>/dev/null | tr '\n' ' ')"
echo "a refused restart into new folders: they are removed again, the one that existed kept"
((failed)) && echo "FAILED" || echo "a restart with another batch goes on from the epoch's position in samples"
exit $failed
