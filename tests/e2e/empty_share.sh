#!/usr/bin/env bash
# A data rank with no samples. 64 samples in batches of 7 leave a last batch of one sample, which
# the first of 2 data ranks takes: the second has an empty share at step 10. Each layout trains
# 10 steps at 2 ranks and must equal the same deck at 1 rank (within reassociation, 1e-5):
#   - micro-batches (data.micro_batches = 2): the empty share's micro-batches are empty too (they
#     divided by its size, SIGFPE);
#   - SyncBatchNorm (batchnorm2d sync = true): the empty rank takes part in the statistics'
#     reductions with nothing to add (it skipped them, and its partner waited for ever), and its
#     running statistics follow the global batch's, as every rank's do.
# And an evaluation whose last batch leaves a data rank none (61 test samples in batches of 6 at
# 2 and 3 ranks, data.batch = 7: a last batch of one sample; it ended the run with "input has
# shape (0, 1, 16, 16)", exit 1): the same test loss as at 1 rank, every sample counted once.
# shellcheck source=tests/e2e/fault_common.bash
source "$(dirname "$0")/fault_common.bash"
deck() {  # deck LAYERS
  printf '%s\n' '[run]' 'seed = 7' 'steps = 10' 'log_every = 5' 'watchdog_s = 30' \
    '[data]' "train = \"$tmp/gs.h5:/train\"" 'batch = 7' \
    '[model]' 'input = [1, 16, 16]' "layers = $1" 'loss = "mse"' \
    '[optimizer]' 'type = "sgd"' 'lr = 0.01' \
    '[checkpoint]' 'every_steps = 0'
}
deck '[ { flatten = {} }, { linear = { out = 16 } }, { relu = {} }, { linear = { out = 2 } } ]' \
  >"$tmp/mlp.toml"
deck '[ { conv2d = { out = 4, kernel = 3, pad = 1 } }, { batchnorm2d = { sync = true } },
  { relu = {} }, { flatten = {} }, { linear = { out = 2 } } ]' >"$tmp/syncbn.toml"

same_as_one_rank() {  # same_as_one_rank LABEL DECK OVERRIDES...
  local label=$1 deck=$2
  shift 2
  for np in 1 2; do
    timeout -k 5 120 "$mpiexec" -n "$np" "$bin/tessera" run "$deck" "$@" \
      run.output="$tmp/$label-$np" >"$tmp/$label-$np.log" 2>&1
    local rc=$?
    ((rc == 0)) || { fail "$label at $np ranks: exit $rc"; tail -n 5 "$tmp/$label-$np.log"; return; }
  done
  "$bin/tessera-ckpt" diff --tolerance 1e-5 "$tmp/$label-2/ckpt/ckpt-00000010.h5" \
    "$tmp/$label-1/ckpt/ckpt-00000010.h5" >"$tmp/$label-diff.log" 2>&1 ||
    { fail "$label: 2 ranks differ from 1"; tail -n 8 "$tmp/$label-diff.log"; return; }
  echo "$label: an empty share at step 10; 2 ranks equal 1 ($(tail -n 1 "$tmp/$label-diff.log"))"
}
same_as_one_rank micro "$tmp/mlp.toml" data.micro_batches=2
same_as_one_rank syncbn "$tmp/syncbn.toml"
"$bin/tessera-data" gen -q -o "$tmp/test61.h5" --samples 61 --size 16 --dims 2 --steps 50 \
  --seed 3 --unit-targets || fail "gen of the test split"
for np in 1 2 3; do
  timeout -k 5 120 "$mpiexec" -n "$np" "$bin/tessera" run "$tmp/syncbn.toml" run.steps=2 \
    data.test="$tmp/test61.h5:/train" run.output="$tmp/eval-$np" >"$tmp/eval-$np.log" 2>&1 ||
    { fail "evaluation at $np ranks: exit $?"; tail -n 3 "$tmp/eval-$np.log"; continue; }
  record=$(grep '"kind": "eval"' "$tmp/eval-$np/metrics.jsonl")
  [[ $record =~ \"loss\":\ ([0-9.e-]+),.*\"samples\":\ 61, ]] ||
    { fail "evaluation at $np ranks: '$record'"; continue; }
  eval_loss[np]=${BASH_REMATCH[1]}
done
if [[ -n ${eval_loss[1]:-} ]]; then
  for np in 2 3; do
    awk -v a="${eval_loss[1]}" -v b="${eval_loss[np]:-nan}" 'BEGIN { d = a - b; exit !(d < 1e-5 * a && -d < 1e-5 * a) }' ||
      fail "evaluation at $np ranks: test loss ${eval_loss[np]:-none}, 1 rank ${eval_loss[1]}"
  done
  echo "evaluation with an empty share: test loss ${eval_loss[*]} at 1, 2, 3 ranks (61 samples)"
fi
((failed)) && echo "FAILED" || echo "a data rank with no samples trains on with the others"
exit $failed
