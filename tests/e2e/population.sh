#!/usr/bin/env bash
# Population training (issue 17) as a user runs it: `tessera run` with parallel.trainers = 2 and a
# [population] section, on a small MLP over Fashion-MNIST with a held-out /validation split.
# - independence: with no tournament, each trainer's final checkpoint equals, bit for bit, the same
#   deck run alone on its ranks with the trainer's hyper-parameters and seed (those `tessera check`
#   prints), at 2 ranks (1 per trainer) and 4 (data 2 per trainer);
# - LTFB with a greedy soup: one tournament line per trainer and round, a leaderboard row per
#   trainer, population.jsonl records, and the combined checkpoint that verifies;
# - PBT: the worse trainer copies the better's weights and its learning rate times a perturbation,
#   and with population.significance = 1000 keeps its own, saying by how many standard errors the
#   better model led; with population.score = "average" the score is that of the weights averaged
#   over the steps since the last round (checked against tessera-ckpt average);
# - a trainer whose loss diverges (run.nonfinite = "stop") fails alone: reported, left out of the
#   soup, and its partner trains on without waiting for it; under LTFB and PBT the next round
#   revives it with its partner's (donor's) model, and it trains to the end;
# - a trainer stopped (SIGSTOP) before the tournament it is due at: its partner goes on after
#   population.timeout, warns naming it, and the population finishes once it is continued, the
#   leaderboard naming it under missed exchanges;
# - a trainer's process killed: MPICH's mpiexec ends the whole job (it does by default; see
#   docs/population.md) within seconds, and checkpoint.restart = "auto" resumes every trainer from
#   its newest checkpoint after the same round, ending with the leaderboard and lineage of the
#   uninterrupted run; partners without checkpoints on the same side of a round are refused, and
#   independent trainers that stopped at different steps resume each from its own, bit for bit;
# - a stop signal while a trainer waits at a round: it leaves the round (no state record), and
#   resumed it holds the round first: the uninterrupted run's leaderboard, and no send of the
#   left round is left unmatched at the job's end (UCX's warnings);
# - local SGD stopped by SIGTERM: every trainer at the same average's step, resumed to the
#   uninterrupted run's leaderboard; a resume without population.jsonl refused.
# shellcheck source=tests/e2e/fault_common.bash
source "$(dirname "$0")/fault_common.bash"
if [[ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]]; then
  echo "[  SKIPPED ] Debian's dataset-fashion-mnist is not installed (tools/setup.sh installs it)"
  exit 0
fi
"$bin/tessera-data" import fashion-mnist --validation 2000 --output "$tmp/fm.h5" >/dev/null || exit 1

deck() {  # deck HIDDEN STEPS [population lines...]
  local hidden=$1 steps=$2
  shift 2
  printf '%s\n' '[run]' 'seed = 11' "steps = $steps" 'log_every = 10' \
    '[data]' "train = \"$tmp/fm.h5:/train\"" "test = \"$tmp/fm.h5:/test\"" 'batch = 64' \
    'cache = true' '[model]' 'input = [1, 28, 28]' \
    "layers = [ { flatten = {} }, { linear = { out = $hidden } }, { relu = {} }, { linear = { out = 10 } } ]" \
    'loss = "softmax_cross_entropy"' '[optimizer]' 'type = "sgd"' 'lr = 0.05' 'momentum = 0.9' \
    '[checkpoint]' 'every_steps = 10' 'keep = 5' "$@"
}

# await_line FILE PATTERN TRIES: waits (TRIES × 0.05 s at most) for a line of FILE matching PATTERN.
await_line() {
  local i
  for ((i = 0; i < $3; ++i)); do
    grep -q "$2" "$1" 2>/dev/null && return
    sleep 0.05
  done
}

# equals_alone POP K NP LABEL DECK OVERRIDES...: DECK run alone on NP ranks with OVERRIDES (into
# $tmp/LABEL) ends with the checkpoint of trainer K of the population in $tmp/POP, bit for bit.
equals_alone() {
  local pop=$1 k=$2 np=$3 label=$4 deck=$5
  shift 5
  "$mpiexec" -n "$np" "$bin/tessera" run "$deck" "$@" run.output="$tmp/$label" \
    >"$tmp/$label.log" 2>&1 || { fail "$label: trainer $k's deck alone: exit $?"; return; }
  "$bin/tessera-ckpt" diff "$tmp/$pop/trainer-$k/ckpt/ckpt-00000020.h5" \
    "$tmp/$label/ckpt/ckpt-00000020.h5" >"$tmp/diff.log" 2>&1 ||
    { fail "$label: trainer $k differs from its deck run alone"; cat "$tmp/diff.log"; }
}

# --- independence ------------------------------------------------------------------------------
deck 32 20 '[population]' '[population.hyper]' '"optimizer.lr" = { values = [0.02, 0.1] }' \
  '"optimizer.momentum" = { uniform = [0.5, 0.9] }' >"$tmp/indep.toml"
for np in 2 4; do
  "$mpiexec" -n "$np" "$bin/tessera" run "$tmp/indep.toml" parallel.trainers=2 \
    run.output="$tmp/indep$np" >"$tmp/indep$np.log" 2>&1 || fail "independent population at $np ranks: exit $?"
  "$mpiexec" -n "$np" "$bin/tessera" check "$tmp/indep.toml" parallel.trainers=2 >"$tmp/check$np.log" 2>&1 ||
    fail "tessera check of the population: exit $?"
  for k in 0 1; do
    mapfile -t hyper < <(grep "^population trainer $k: " "$tmp/check$np.log" | sed "s/^population trainer $k: //" | tr ' ' '\n')
    ((${#hyper[@]} == 3)) || fail "tessera check prints trainer $k's overrides: '${hyper[*]}'"
    deck 32 20 >"$tmp/alone.toml"
    equals_alone "indep$np" "$k" $((np / 2)) "alone$np-$k" "$tmp/alone.toml" "${hyper[@]}"
  done
  grep -q "^\[t1\] hyper-parameters: optimizer.lr 0.1, optimizer.momentum 0\.[5-9][0-9]*, seed 12$" "$tmp/indep$np.log" ||
    fail "trainer 1's hyper-parameter line is missing"
done
# A deck's quoted hyper-parameter key, overridden on the command line as the deck writes it.
"$mpiexec" -n 2 "$bin/tessera" check "$tmp/indep.toml" parallel.trainers=2 \
  'population.hyper."optimizer.lr".values=[0.25,0.5]' >"$tmp/quoted.log" 2>&1 ||
  fail "tessera check with a quoted override: exit $?"
grep -q "^population trainer 1: optimizer.lr=0.5 optimizer.momentum=" "$tmp/quoted.log" ||
  { fail "a quoted override of population.hyper: trainer 1's values"; grep "^population\|error" "$tmp/quoted.log"; }
# A trainer's own deck.toml trains it alone, into trainer-K/alone/.
"$mpiexec" -n 1 "$bin/tessera" run "$tmp/indep2/trainer-1/deck.toml" >"$tmp/own.log" 2>&1 ||
  fail "trainer 1's deck.toml alone: exit $?"
"$bin/tessera-ckpt" diff "$tmp/indep2/trainer-1/ckpt/ckpt-00000020.h5" \
  "$tmp/indep2/trainer-1/alone/ckpt/ckpt-00000020.h5" >"$tmp/diff.log" 2>&1 ||
  { fail "trainer 1 differs from its own deck.toml run alone"; cat "$tmp/diff.log"; }
echo "independence: each trainer equals its deck run alone, bit for bit, at 2 and 4 ranks"

# Two trainers given the same hyper-parameters and seed: said once, and they do train the same model.
deck 8 10 '[population]' '[population.hyper]' '"optimizer.lr" = { values = [0.1, 0.1] }' \
  '"run.seed" = { values = [5, 5] }' >"$tmp/twins.toml"
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/twins.toml" parallel.trainers=2 run.output="$tmp/twins" \
  >"$tmp/twins.log" 2>&1 || fail "twin trainers: exit $?"
want="population: trainers 0 and 1 (optimizer.lr=0.10000000000000001, run.seed=5) are given the same hyper-parameters and seed: they train the same model"
[[ $(grep -cxF "$want" "$tmp/twins.log") == 1 ]] ||
  { fail "twin trainers: the warning"; grep -i "same\|warning" "$tmp/twins.log"; }
"$bin/tessera-ckpt" diff "$tmp/twins/trainer-0/ckpt/ckpt-00000010.h5" \
  "$tmp/twins/trainer-1/ckpt/ckpt-00000010.h5" >"$tmp/diff.log" 2>&1 ||
  { fail "twin trainers differ"; cat "$tmp/diff.log"; }
echo "twin trainers: said once, and equal bit for bit"

# --- independent trainers that stopped at different steps resume each from its own ------------
# (a small checkpoint.keep, trainers that drifted apart: trainer 0 kept only step 20, trainer 1
# only step 10). They never meet: trainer 1 trains on from 10 to the uninterrupted run's model.
cp -r "$tmp/indep2" "$tmp/drift"
rm "$tmp/drift/trainer-0/ckpt/ckpt-00000010.h5" "$tmp/drift/trainer-1/ckpt/ckpt-00000020.h5"
echo ckpt-00000010.h5 >"$tmp/drift/trainer-1/ckpt/latest"
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/indep.toml" parallel.trainers=2 run.output="$tmp/drift" \
  checkpoint.restart=auto >"$tmp/drift.log" 2>&1 || fail "independent trainers at steps 20 and 10: exit $?"
grep -qxF "population: the trainers resume from their own newest checkpoints (independent trainers need no step in common): trainer 0 at step 20, trainer 1 at step 10" "$tmp/drift.log" ||
  { fail "independent trainers at steps 20 and 10: the resume line"; grep "^population" "$tmp/drift.log"; }
"$bin/tessera-ckpt" diff "$tmp/indep2/trainer-1/ckpt/ckpt-00000020.h5" \
  "$tmp/drift/trainer-1/ckpt/ckpt-00000020.h5" >"$tmp/diff.log" 2>&1 ||
  { fail "independent trainer 1 resumed from step 10 differs from the uninterrupted run"; cat "$tmp/diff.log"; }
board() { grep '"kind": "leaderboard"' "$1"; }
[[ $(board "$tmp/indep2/population.jsonl") == "$(board "$tmp/drift/population.jsonl")" && -n $(board "$tmp/drift/population.jsonl") ]] ||
  fail "independent trainers resumed at steps 20 and 10: the leaderboard differs"
echo "restart: independent trainers at steps 20 and 10 resume each from its own, bit for bit"

# --- architectures: a layer's width varied per trainer (a key inside model.layers) -------------
deck 32 20 '[population]' '[population.hyper]' '"model.layers[1].linear.out" = { values = [16, 48] }' \
  >"$tmp/arch.toml"
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/arch.toml" parallel.trainers=2 run.output="$tmp/arch" \
  >"$tmp/arch.log" 2>&1 || fail "a population of two widths: exit $?"
for k in 0 1; do
  width=$((k == 0 ? 16 : 48))
  deck "$width" 20 >"$tmp/arch-alone.toml"
  equals_alone arch "$k" 1 "arch-alone$k" "$tmp/arch-alone.toml" run.seed=$((11 + k))
done
grep -q "^  1 | model.layers\[1\].linear.out 48 | " "$tmp/arch.log" ||
  fail "the leaderboard does not name trainer 1's width"
echo "architectures: trainers of widths 16 and 48 each equal their deck run alone, bit for bit"

# --- LTFB with a greedy soup ---------------------------------------------------------------------
deck 32 30 '[population]' 'algorithm = "ltfb"' 'every = 10' 'timeout = 20' \
  "validation = \"$tmp/fm.h5:/validation\"" 'combine = "soup"' '[population.hyper]' \
  '"optimizer.lr" = { log_uniform = [1e-3, 1.0] }' >"$tmp/ltfb.toml"
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/ltfb.toml" parallel.trainers=2 run.output="$tmp/ltfb" \
  >"$tmp/ltfb.log" 2>&1 || fail "ltfb: exit $?"
for k in 0 1; do
  (($(grep -c "^\[t$k\] ltfb step \(10\|20\): \(kept this model\|trainer $((1 - k))'s model scores\)" "$tmp/ltfb.log") == 2)) ||
    fail "ltfb: trainer $k does not report two tournaments"
  grep -q "^\"kind\": \"leaderboard\", \"trainer\": $k" <(sed 's/^{//' "$tmp/ltfb/population.jsonl") ||
    fail "ltfb: no leaderboard record of trainer $k"
  grep -q "^  $k | optimizer.lr [0-9.e-]* | accuracy [0-9.]*% | accuracy [0-9.]*% | " "$tmp/ltfb.log" ||
    fail "ltfb: no leaderboard row for trainer $k"
done
grep -q "^combined (greedy soup) of trainers \[[01, ]*\]: validation accuracy [0-9.]*%, test accuracy [0-9.]*% (its ingredients' mean: accuracy [0-9.]*%; all trainers' mean: accuracy [0-9.]*%)$" "$tmp/ltfb.log" ||
  fail "ltfb: no combined model line"
"$bin/tessera-ckpt" verify "$tmp/ltfb/combined/ckpt-00000030.h5" >/dev/null 2>&1 ||
  fail "ltfb: the combined checkpoint does not verify"
echo "ltfb: tournaments, leaderboard and the soup checkpoint"

# --- PBT -----------------------------------------------------------------------------------------
deck 32 20 '[population]' 'algorithm = "pbt"' 'every = 10' 'timeout = 20' 'perturb = [0.8]' 'resample = 0' \
  "validation = \"$tmp/fm.h5:/validation\"" '[population.hyper]' \
  '"optimizer.lr" = { values = [0.0001, 0.05] }' >"$tmp/pbt.toml"
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/pbt.toml" parallel.trainers=2 run.output="$tmp/pbt" \
  >"$tmp/pbt.log" 2>&1 || fail "pbt: exit $?"
grep -q "^\[t0\] pbt step 10: accuracy [0-9.]*% — copied trainer 1 (accuracy [0-9.]*%), now optimizer.lr 0.04$" "$tmp/pbt.log" ||
  fail "pbt: trainer 0 (lr 1e-4) did not copy trainer 1 and explore to lr 0.04"
grep -q '"lr": 0.04,' <(grep '"step": 20,' "$tmp/pbt/trainer-0/metrics.jsonl") ||
  fail "pbt: trainer 0 does not train with lr 0.04 after the copy"
# PBT ranks trainers by their scores on the whole validation split (on slices of their own, an
# easier slice would outrank a better model): trainer 1's score at step 10 is its step-10
# checkpoint's accuracy on all of /validation, as a run of its own evaluates it.
score=$(sed -n 's/^\[t0\] pbt step 10: .* copied trainer 1 (accuracy \([0-9.]*\)%).*/\1/p' "$tmp/pbt.log")
"$bin/tessera" run "$tmp/alone.toml" checkpoint.restart="$tmp/pbt/trainer-1/ckpt/ckpt-00000010.h5" \
  run.steps=10 data.test="$tmp/fm.h5:/validation" run.output="$tmp/pbt-score" >"$tmp/pbt-score.log" 2>&1 ||
  fail "pbt: scoring trainer 1's checkpoint alone: exit $?"
grep -q "^eval  step 10: $tmp/fm.h5:/validation loss [0-9.]*, accuracy $score% (2000 samples)$" "$tmp/pbt-score.log" ||
  fail "pbt: trainer 1's score $score% is not its accuracy on the whole validation split: $(grep '^eval' "$tmp/pbt-score.log")"
echo "pbt: the worse trainer copies the better and explores; scores on the whole validation split"

# population.significance: a model is taken only when its score is that many standard errors of
# the difference above the other's (the accuracies' sqrt(p (1 - p) / n), n = 2000 here). At 1000
# nothing is copied, and the line says by how many standard errors the better model led, which is
# recomputed here from the two printed accuracies.
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/pbt.toml" parallel.trainers=2 population.significance=1000 \
  run.output="$tmp/pbt-kept" >"$tmp/pbt-kept.log" 2>&1 || fail "pbt, significance 1000: exit $?"
line=$(grep "^\[t0\] pbt step 10: " "$tmp/pbt-kept.log")
[[ $line =~ ^\[t0\]\ pbt\ step\ 10:\ kept\ this\ model\ \(accuracy\ ([0-9.]+)%\ against\ trainer\ 1\'s\ accuracy\ ([0-9.]+)%:\ ([0-9.]+)\ standard\ errors\ above\ it,\ population.significance\ =\ 1000\)$ ]] ||
  fail "pbt, significance 1000: trainer 0 does not keep its model: '$line'"
awk -v x="${BASH_REMATCH[1]}" -v y="${BASH_REMATCH[2]}" -v z="${BASH_REMATCH[3]}" 'BEGIN {
  x /= 100; y /= 100; e = (y - x) / sqrt((x * (1 - x) + y * (1 - y)) / 2000)
  exit !(z > 2 && (z - e) ^ 2 < (0.01 * e + 0.1) ^ 2) }' ||
  fail "pbt, significance 1000: $line: not the standard errors of the two accuracies over 2000 samples"
! grep -q "copied trainer" "$tmp/pbt-kept.log" || fail "pbt, significance 1000: a model was copied"
grep -q '"lr": 0.0001,' <(grep '"step": 20,' "$tmp/pbt-kept/trainer-0/metrics.jsonl") ||
  fail "pbt, significance 1000: trainer 0 does not keep its lr 1e-4"
echo "pbt: population.significance keeps a model that leads by fewer standard errors, and says by how many"

# population.score = "average": a round scores the average of each trainer's weights over the
# steps since the last round. Trainer 1's score at step 10 is the accuracy on /validation of the
# mean of its checkpoints of steps 1 to 10, averaged here by tessera-ckpt and scored by a run of
# its own.
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/pbt.toml" parallel.trainers=2 population.score=average \
  checkpoint.every_steps=1 checkpoint.keep=20 run.output="$tmp/pbt-avg" >"$tmp/pbt-avg.log" 2>&1 ||
  fail "pbt, score average: exit $?"
score=$(sed -n 's/^\[t0\] pbt step 10: .* copied trainer 1 (accuracy \([0-9.]*\)%).*/\1/p' "$tmp/pbt-avg.log")
[[ -n $score ]] || fail "pbt, score average: trainer 0 did not copy trainer 1 at step 10"
# (step 10's first: the average takes its step from its first file, so the run only evaluates it)
"$bin/tessera-ckpt" average "$tmp"/pbt-avg/trainer-1/ckpt/ckpt-000000{10,01,02,03,04,05,06,07,08,09}.h5 \
  -o "$tmp/window.h5" >/dev/null || fail "pbt, score average: tessera-ckpt average: exit $?"
"$bin/tessera" run "$tmp/alone.toml" checkpoint.restart="$tmp/window.h5" run.steps=10 \
  data.test="$tmp/fm.h5:/validation" run.output="$tmp/window-score" >"$tmp/window-score.log" 2>&1 ||
  fail "pbt, score average: scoring the averaged checkpoint: exit $?"
grep -q "^eval  step 10: $tmp/fm.h5:/validation loss [0-9.]*, accuracy $score% (2000 samples)$" "$tmp/window-score.log" ||
  fail "pbt, score average: trainer 1's score $score% is not the accuracy of its steps 1-10 averaged: $(grep '^eval' "$tmp/window-score.log")"
echo "pbt: population.score = \"average\" scores the average of the weights since the last round"

# --- a trainer that diverges ------------------------------------------------------------------
# Independent trainers: the failed one stays failed, reported and left out of the soup
# (recalibrate: it takes part in the soup's collectives without estimating).
deck 32 30 '[population]' 'algorithm = "independent"' \
  "validation = \"$tmp/fm.h5:/validation\"" 'combine = "soup"' 'recalibrate = 5' \
  '[population.hyper]' '"optimizer.lr" = { values = [0.05, 500.0] }' >"$tmp/diverge.toml"
start=$SECONDS
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/diverge.toml" parallel.trainers=2 run.output="$tmp/diverge" \
  >"$tmp/diverge.log" 2>&1 || fail "diverge: exit $?"
((SECONDS - start < 50)) || fail "diverge: $((SECONDS - start)) s: trainer 0 waited for the failed trainer"
grep -q "^\[t1\] error: .*: step [0-9]*: the loss (-\?nan) on rank 0 is not finite; .*; this trainer stops training, the others go on$" "$tmp/diverge.log" ||
  fail "diverge: trainer 1's failure is not reported"
grep -q "^  1 | optimizer.lr 500 | - | failed: .*: step [0-9]*: the loss (-\?nan) on rank 0 is not finite" "$tmp/diverge.log" ||
  fail "diverge: the leaderboard does not show trainer 1 failed"
grep -q "^\[t0\] final: 30 steps" "$tmp/diverge.log" || fail "diverge: trainer 0 did not train to the end"
grep -q "^combined (greedy soup) of trainers \[0\]: " "$tmp/diverge.log" || fail "diverge: the soup takes the failed trainer"
echo "diverge: the failed trainer is reported and left out; the other trains on without waiting"

# LTFB and PBT: the next round hands the failed trainer its partner's (the donor's) healthy model
# and optimizer state; it trains on to the end, the revival in its lineage, and joins the soup's
# candidates.
for alg in ltfb pbt; do
  deck 32 30 '[population]' "algorithm = \"$alg\"" 'every = 10' 'timeout = 60' \
    "validation = \"$tmp/fm.h5:/validation\"" 'combine = "soup"' \
    '[population.hyper]' '"optimizer.lr" = { values = [0.05, 500.0] }' >"$tmp/revive-$alg.toml"
  "$mpiexec" -n 2 "$bin/tessera" run "$tmp/revive-$alg.toml" parallel.trainers=2 \
    run.output="$tmp/revive-$alg" >"$tmp/revive-$alg.log" 2>&1 || fail "revive $alg: exit $?"
  grep -q "^\[t1\] error: .*: step [1-9]: the loss (-\?nan) on rank 0 is not finite; .*; this trainer stops training until a round gives it a healthy trainer's model, the others go on$" "$tmp/revive-$alg.log" ||
    fail "revive $alg: trainer 1's failure before step 10 is not reported"
  if [[ $alg == ltfb ]]; then
    revived="revived with trainer 0's model optimizer.lr 0.05"
  else  # the donor's 0.05 explored: x 0.8 or x 1.25, or drawn anew from the deck's values
    revived="revived with trainer 0's model (optimizer.lr 0.05), explored to optimizer.lr [0-9.e+-]*"
  fi
  grep -q "^\[t1\] $alg step 10: $revived; trains on$" "$tmp/revive-$alg.log" ||
    fail "revive $alg: trainer 1 not revived at step 10"
  grep -q "^  1 | optimizer.lr [0-9.e+-]* | accuracy [0-9.]*% | accuracy [0-9.]*% | step 10: $revived (this trainer had failed: .*not finite.*)" "$tmp/revive-$alg.log" ||
    fail "revive $alg: the leaderboard does not show trainer 1 revived and trained to the end"
  grep -q '"kind": "train", "step": 30, .*"loss": [0-9]' "$tmp/revive-$alg/trainer-1/metrics.jsonl" ||
    fail "revive $alg: trainer 1 has no finite training loss at step 30"
  "$bin/tessera-ckpt" verify "$tmp/revive-$alg/trainer-1/ckpt/ckpt-00000030.h5" >/dev/null ||
    fail "revive $alg: trainer 1's final checkpoint is missing or damaged"
done
echo "revive: under LTFB and PBT the failed trainer takes a healthy model at the next round and trains to the end"

# --- a trainer stopped while a tournament is due ---------------------------------------------
# The tournament is 200 steps in (a second or more of training after the hyper-parameters line,
# where the victim is stopped): at 20 steps in, a loaded machine let the victim reach it first.
deck 2048 400 '[population]' 'algorithm = "ltfb"' 'every = 200' 'timeout = 2' \
  "validation = \"$tmp/fm.h5:/validation\"" >"$tmp/stop.toml"
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/stop.toml" parallel.trainers=2 run.output="$tmp/stop" \
  checkpoint.every_steps=100 >"$tmp/stop.log" 2>&1 &
launcher=$!
await_line "$tmp/stop.log" "^\[t1\] hyper-parameters: " 600
victim=$(rank_pid "tessera run $tmp/stop.toml" 1)
if [[ -z $victim ]]; then
  fail "stop: trainer 1's process not found"
else
  kill -STOP "$victim"
  for ((i = 0; i < 300; ++i)); do
    grep -q "trainer 1 did not answer within 2 s (tournament): skipped" "$tmp/stop.log" && break
    sleep 0.1
  done
  grep -q "^\[t0\] population step 200: trainer 1 did not answer within 2 s (tournament): skipped$" "$tmp/stop.log" ||
    fail "stop: trainer 0 did not go on past the stopped trainer"
  sleep 1
  kill -CONT "$victim"
fi
wait "$launcher" || fail "stop: the population ended with exit $?"
grep -q '"kind": "leaderboard", "trainer": 0, .*"missed": "step 200: trainer 1"}$' "$tmp/stop/population.jsonl" ||
  fail "stop: the leaderboard does not name the stopped trainer"
echo "stop: the partner went on after the timeout and the report names trainer 1"

# --- a trainer killed, the population resumed ------------------------------------------------
deck 1024 40 '[population]' 'algorithm = "ltfb"' 'every = 10' 'timeout = 30' \
  "validation = \"$tmp/fm.h5:/validation\"" '[population.hyper]' \
  '"optimizer.lr" = { log_uniform = [1e-3, 0.3] }' >"$tmp/kill.toml"
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/kill.toml" parallel.trainers=2 run.output="$tmp/whole" \
  >"$tmp/whole.log" 2>&1 || fail "kill: the uninterrupted run: exit $?"
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/kill.toml" parallel.trainers=2 run.output="$tmp/kill" \
  >"$tmp/kill.log" 2>&1 &
launcher=$!
for ((i = 0; i < 600; ++i)); do
  [[ -e $tmp/kill/trainer-1/ckpt/ckpt-00000020.h5 && -e $tmp/kill/trainer-0/ckpt/ckpt-00000020.h5 ]] && break
  sleep 0.05
done
start=$SECONDS
pkill -9 -f "tessera run $tmp/kill.toml parallel.trainers=2 run.output=$tmp/kill" -n
wait "$launcher"
rc=$?
((rc != 0)) || fail "kill: the job exited 0 after a trainer was killed"
((SECONDS - start <= 20)) || fail "kill: the job took $((SECONDS - start)) s to end after a kill"
# A record cut short, as a kill in mid-write leaves it: the restart drops it and says so.
printf '{"kind": "state", "trainer": 1, "step": 2' >>"$tmp/kill/population.jsonl"
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/kill.toml" parallel.trainers=2 run.output="$tmp/kill" \
  checkpoint.restart=auto >"$tmp/resume.log" 2>&1 || fail "kill: the resumed population: exit $?"
grep -q "^\[t[01]\] restart: from $tmp/kill/trainer-[01]/ckpt/ckpt-000000[23]0.h5" "$tmp/resume.log" ||
  fail "kill: no restart line"
grep -q "^population: 1 damaged line of $tmp/kill/population.jsonl dropped (a record cut short, as by a kill in mid-write)$" "$tmp/resume.log" ||
  fail "kill: the half-written record was not reported"
[[ $(board "$tmp/whole/population.jsonl") == "$(board "$tmp/kill/population.jsonl")" && -n $(board "$tmp/whole/population.jsonl") ]] ||
  { fail "kill: the resumed population's leaderboard differs from the uninterrupted one"; board "$tmp/whole/population.jsonl"; board "$tmp/kill/population.jsonl"; }
echo "kill: the job ended (exit $rc); resumed, the leaderboard and lineage equal the uninterrupted run's"
# tools/plot_population.py reads the resumed trainers' curves as the uninterrupted run's: the
# records a restart superseded (steps trained again) left out; a record cut short is skipped.
if [[ -x /usr/bin/python3 ]]; then
  cp "$tmp/kill/population.jsonl" "$tmp/cut.jsonl"
  printf '{"kind": "state", "trainer": 1, "step": 4' >>"$tmp/cut.jsonl"
  curves=$(/usr/bin/python3 - "$(dirname "$0")/../../tools/plot_population.py" "$tmp" 2>"$tmp/plot.err" <<'PY'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("plot_population", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
tmp = sys.argv[2]
for k in (0, 1):
    resumed = module.training_curve(f"{tmp}/kill/trainer-{k}")
    whole = module.training_curve(f"{tmp}/whole/trainer-{k}")
    steps = [s for s, _ in resumed]
    assert resumed == whole and steps == sorted(set(steps)) and steps, (k, resumed, whole)
    with open(f"{tmp}/kill/trainer-{k}/metrics.jsonl") as f:
        assert sum('"kind": "restart"' in line for line in f) == 1, k
# A diverged window's loss is written as null (JSON has no NaN): left out, not refused.
import os
os.makedirs(f"{tmp}/nan-trainer", exist_ok=True)
with open(f"{tmp}/nan-trainer/metrics.jsonl", "w") as f:
    f.write('{"kind": "train", "step": 1, "loss": 2.5, "accuracy": 0.1, "time": 0.1}\n')
    f.write('{"kind": "train", "step": 2, "loss": null, "accuracy": null, "time": 0.2}\n')
assert module.training_curve(f"{tmp}/nan-trainer") == [(1.0, 2.5)], "a null loss"
records = module.records(f"{tmp}/cut.jsonl")
assert records == module.records(f"{tmp}/kill/population.jsonl"), "the cut-short record"
print("same")
PY
  )
  [[ $curves == same ]] || { fail "plot_population: the resumed curves differ from the uninterrupted run's"; cat "$tmp/plot.err"; }
  grep -qxF "plot_population: note: $tmp/cut.jsonl:$(wc -l <"$tmp/cut.jsonl" | awk '{print $1 + 1}'): a record cut short (as by a kill in mid-write): skipped" "$tmp/plot.err" ||
    { fail "plot_population: the note on a record cut short"; cat "$tmp/plot.err"; }
  echo "plot_population: the resumed trainers' curves are the uninterrupted run's; a record cut short skipped"
fi

# LTFB trainers meet every 10 steps: partners resume on the same side of each round they met at.
# Trainer 0 kept steps 30 and 40 (after round 20), trainer 1 only step 10 (before it): refused,
# nothing changed (starting again would lose their progress).
cp -r "$tmp/whole" "$tmp/nocommon"
rm "$tmp/nocommon/trainer-0/ckpt/ckpt-000000"[12]"0.h5" "$tmp/nocommon/trainer-1/ckpt/ckpt-000000"[234]"0.h5"
echo ckpt-00000010.h5 >"$tmp/nocommon/trainer-1/ckpt/latest"
before=$(cd "$tmp/nocommon" && find . -type f -exec md5sum {} + | sort)
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/kill.toml" parallel.trainers=2 run.output="$tmp/nocommon" \
  checkpoint.restart=auto >"$tmp/nocommon.log" 2>&1
rc=$?
want='error: checkpoint.restart = "auto": the trainers'"'"' checkpoints (trainer 0 steps 30, 40; trainer 1 step 10) hold no state from which the population can resume together: trainer 0 has none before the ltfb round at step 20, which trainer 1'"'"'s newest usable one, step 10, is before (trainers that met there resume on the same side of it); nothing was changed. A larger checkpoint.keep keeps one after a crash; to start again from step 0, use another run.output (or remove the trainers'"'"' checkpoints)'
((rc == 2)) && [[ $(grep -c '^error:' "$tmp/nocommon.log") == 1 ]] && grep -qxF "$want" "$tmp/nocommon.log" ||
  { fail "a restart without a consistent state: exit $rc, want 2 and: $want"; grep error "$tmp/nocommon.log"; }
[[ $(cd "$tmp/nocommon" && find . -type f -exec md5sum {} + | sort) == "$before" ]] ||
  fail "a refused restart changed the population's files"
echo "restart: LTFB partners without checkpoints on the same side of a round are refused, nothing changed"

# --- a stop signal while a trainer waits at a round: it leaves the round, and holds it resumed --
# Trainer 1 is stopped (SIGSTOP) before round 150; trainer 0 waits for it there when the job is
# told to stop (SIGTERM): it leaves the round and saves step 150 without the round's state
# record; trainer 1, continued, stops at its own early step. Resumed, trainer 0 holds round 150
# before training on and trainer 1 meets it there: the uninterrupted run's leaderboard.
deck 1024 300 '[population]' 'algorithm = "ltfb"' 'every = 150' 'timeout = 60' \
  "validation = \"$tmp/fm.h5:/validation\"" '[population.hyper]' \
  '"optimizer.lr" = { values = [0.01, 0.1] }' >"$tmp/left.toml"
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/left.toml" parallel.trainers=2 run.output="$tmp/left-whole" \
  >"$tmp/left-whole.log" 2>&1 || fail "left round: the uninterrupted run: exit $?"
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/left.toml" parallel.trainers=2 run.output="$tmp/left" \
  >"$tmp/left.log" 2>&1 &
launcher=$!
await_line "$tmp/left.log" "^\[t1\] hyper-parameters: " 600
victim=$(rank_pid "tessera run $tmp/left.toml" 1)
if [[ -z $victim ]]; then
  fail "left round: trainer 1's process not found"
else
  kill -STOP "$victim"
  await_line "$tmp/left.log" "^\[t0\] step *150/" 1200
  sleep 0.5
  kill -TERM "$launcher"
  sleep 0.2
  kill -CONT "$victim"
fi
wait "$launcher"
rc=$?
((rc == 75)) || fail "left round: exit $rc, want 75"
grep -qxF "[t0] population step 150: the exchange with trainer 1 (tournament) is left: SIGTERM stops the job" "$tmp/left.log" ||
  fail "left round: trainer 0 did not leave the round"
! grep -q '"trainer": 0, "step": 150' "$tmp/left/population.jsonl" ||
  fail "left round: a state record of the round trainer 0 left"
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/left.toml" parallel.trainers=2 run.output="$tmp/left" \
  checkpoint.restart=auto >"$tmp/left-resume.log" 2>&1 || fail "left round resumed: exit $?"
grep -q "^population: the trainers resume from their own newest checkpoints (each on the same side of every round and average as the trainers it met there): trainer 0 at step 150, trainer 1 at step [0-9]*$" "$tmp/left-resume.log" ||
  { fail "left round resumed: the resume line"; grep "^population\|stopped" "$tmp/left.log" "$tmp/left-resume.log"; }
! grep -q "was not matched\|not returned to mpool" "$tmp/left.log" ||
  fail "left round: a send of the left round was left unmatched at the end (UCX warns)"
grep -qxF "[t0] ltfb step 150: this trainer's checkpoint was saved as it left the round for a stop signal: the round is held now" "$tmp/left-resume.log" ||
  fail "left round resumed: trainer 0 did not hold the round"
[[ $(board "$tmp/left-whole/population.jsonl") == "$(board "$tmp/left/population.jsonl")" && -n $(board "$tmp/left/population.jsonl") ]] ||
  { fail "left round resumed: the leaderboard differs from the uninterrupted run's"; board "$tmp/left-whole/population.jsonl"; board "$tmp/left/population.jsonl"; }
echo "stop in a round: trainer 0 left round 150 (exit 75); resumed, it held the round: the uninterrupted run's leaderboard"

# A restart of a population with other hyper-parameter keys: its trainers' states hold values by
# position, so the momentum would take the saved learning rates. Refused, nothing changed.
sed 's/^"optimizer.lr" = .*/"optimizer.momentum" = { values = [0.5, 0.6] }/' "$tmp/kill.toml" >"$tmp/other.toml"
cp "$tmp/whole/population.jsonl" "$tmp/whole.jsonl"
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/other.toml" parallel.trainers=2 run.output="$tmp/whole" \
  run.steps=50 checkpoint.restart=auto >"$tmp/other.log" 2>&1
rc=$?
want="error: checkpoint.restart = \"auto\": $tmp/whole/population.jsonl was written by a population of \"trainers\": 2, \"hyper\": [\"optimizer.lr\"]; this deck's is \"trainers\": 2, \"hyper\": [\"optimizer.momentum\"]: a population resumes with the trainers and hyper-parameter keys it was saved with (the trainers' states hold the values in that order); nothing was changed. Another run.output starts a new population"
((rc == 2)) && [[ $(grep -c '^error:' "$tmp/other.log") == 1 ]] && grep -qxF "$want" "$tmp/other.log" ||
  { fail "other hyper-parameter keys: exit $rc, want 2 and: $want"; grep -v '^[a-z_]* = \|^\[' "$tmp/other.log" | tail -n 3; }
cmp -s "$tmp/whole.jsonl" "$tmp/whole/population.jsonl" || fail "other hyper-parameter keys: population.jsonl changed"
echo "a restart with other hyper-parameter keys: refused, nothing changed"

# --- local SGD stopped by SIGTERM: every trainer at one average's step, resumed as if never ---
# Averages are collective over the trainers: a trainer that stopped between two left the others
# waiting in the next (until the watchdog). A signal now waits for the next average, where the
# population agrees on it: one stop step for all (a checkpoint step in common), exit 75.
deck 256 200 '[population]' 'average_every = 20' '[population.hyper]' \
  '"optimizer.lr" = { values = [0.01, 0.05] }' >"$tmp/avg.toml"
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/avg.toml" parallel.trainers=2 run.output="$tmp/avg-whole" \
  >"$tmp/avg-whole.log" 2>&1 || fail "local SGD: the uninterrupted run: exit $?"
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/avg.toml" parallel.trainers=2 run.output="$tmp/avg" \
  run.watchdog_s=60 >"$tmp/avg.log" 2>&1 &
launcher=$!
await_line "$tmp/avg.log" "^\[t0\] step *50/" 1200
kill -TERM "$launcher"
wait "$launcher"
rc=$?
((rc == 75)) || fail "local SGD stopped: exit $rc, want 75"
stops=$(grep -o "^\[t[01]\] stopped by SIGTERM at step [0-9]*" "$tmp/avg.log" | grep -o "[0-9]*$" | sort -u)
[[ $(grep -c "stopped by SIGTERM at step" "$tmp/avg.log") == 2 && $(wc -w <<<"$stops") == 1 && $((stops % 20)) == 0 ]] ||
  fail "local SGD stopped: the trainers stopped at steps '$stops', want one multiple of 20"
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/avg.toml" parallel.trainers=2 run.output="$tmp/avg" \
  checkpoint.restart=auto >"$tmp/avg-resume.log" 2>&1 || fail "local SGD resumed: exit $?"
[[ $(board "$tmp/avg-whole/population.jsonl") == "$(board "$tmp/avg/population.jsonl")" && -n $(board "$tmp/avg/population.jsonl") ]] ||
  { fail "local SGD: the resumed population's leaderboard differs"; board "$tmp/avg-whole/population.jsonl"; board "$tmp/avg/population.jsonl"; }
echo "local SGD stopped by SIGTERM: both trainers at step $stops (exit 75); resumed, the leaderboard of the uninterrupted run"

# A restart whose population.jsonl is gone: its trainers would resume with their first
# hyper-parameters and no lineage. Refused, nothing changed.
mv "$tmp/whole/population.jsonl" "$tmp/whole.jsonl"
"$mpiexec" -n 2 "$bin/tessera" run "$tmp/kill.toml" parallel.trainers=2 run.output="$tmp/whole" \
  run.steps=50 checkpoint.restart=auto >"$tmp/nojsonl.log" 2>&1
rc=$?
want="error: checkpoint.restart = \"auto\": the trainers have checkpoints, but $tmp/whole/population.jsonl cannot be read (missing): it holds their hyper-parameters and lineage, without which they would resume with their first values; nothing was changed. Restore it, or start a new population in another run.output"
((rc == 2)) && [[ $(grep -c '^error:' "$tmp/nojsonl.log") == 1 ]] && grep -qxF "$want" "$tmp/nojsonl.log" ||
  { fail "no population.jsonl: exit $rc, want 2 and: $want"; grep error "$tmp/nojsonl.log" | tail -n 3; }
[[ ! -e $tmp/whole/population.jsonl ]] || fail "no population.jsonl: one was written"
echo "a restart without population.jsonl: refused, nothing changed"

((failed)) && echo "FAILED" || echo "population training: all checks passed"
exit $failed
