#!/usr/bin/env bash
# The job scripts under a real Slurm (tools/slurm_local.sh: one node, started and stopped here):
# a trivial `sbatch --wait` completes; jobs/slurm/fashion_mlp.sbatch, submitted unchanged as a user
# submits it (from a folder laid out like the repository root), trains the deck as shipped (10
# epochs) on a world of 2 ranks (srun --mpi=pmi2 wires MPICH's ranks into one MPI_COMM_WORLD: "on
# 2 ranks") and `sbatch --wait` returns its exit code 0 with the final test accuracy in the job log
# (89.7% here; the issue's 88.5% is the floor); jobs/slurm/fashion_cnn.sbatch runs a short CNN job on 2 ranks.
# Skips with a message where Slurm is not installed (see slurm_common.bash).
# shellcheck source=tests/e2e/slurm_common.bash
source "$(dirname "$0")/slurm_common.bash"

# A trivial job: submission, scheduling, launch and the end of the job seen by sbatch --wait.
t0=$(date +%s.%N)
run_bg timeout 60 sbatch --wait --quiet --output="$work/hostname.out" --wrap hostname
[[ $(cat "$work/hostname.out") == "$(hostname)" ]] || { echo "FAIL: hostname job"; exit 1; }
echo "sbatch --wait --wrap hostname: $(since "$t0") s"

# The MLP job as shipped: 10 epochs, 4690 steps of 128.
t0=$(date +%s.%N)
set +e
run_bg timeout 600 sbatch --parsable --wait "$root/jobs/slurm/fashion_mlp.sbatch" >"$work/jid"
code=$?
set -e
jid=$(cat "$work/jid")
log=fashion-mlp.$jid.out
echo "fashion_mlp.sbatch: job $jid, exit $code, $(since "$t0") s"
[[ $code -eq 0 && -f $log ]] || { echo "FAIL: exit code $code"; cat "$log" 2>/dev/null; exit 1; }
grep -q '^tessera: fashion-mlp on 2 ranks' "$log" ||
  { echo "FAIL: not one world of 2 ranks"; cat "$log"; exit 1; }
grep -q '^fashion_mlp.sbatch: job [0-9]*, link 1 of at most 10, on' "$log"
final=$(grep '^final: ' "$log") || { echo "FAIL: no final line"; cat "$log"; exit 1; }
echo "$final"
[[ $final == "final: 4690 steps in "* ]] || { echo "FAIL: expected 4690 steps"; exit 1; }
acc=$(sed -E 's/.*test accuracy ([0-9.]+)%.*/\1/' <<<"$final")
awk -v a="$acc" 'BEGIN { exit !(a >= 88.5) }' || { echo "FAIL: accuracy $acc% < 88.5%"; exit 1; }
grep -q '^fashion_mlp.sbatch: tessera exited with code 0' "$log"
if grep -q 'resubmitted' "$log"; then echo "FAIL: a finished run resubmitted"; exit 1; fi
[[ -f runs/fashion-mlp/ckpt/ckpt-00004690.h5 && $(cat runs/fashion-mlp/ckpt/latest) == ckpt-00004690.h5 ]] ||
  { echo "FAIL: no final checkpoint"; ls -R runs; exit 1; }

# The CNN job (4 ranks as shipped; 2 here, the cores of this node), a few steps, no evaluation.
t0=$(date +%s.%N)
set +e
run_bg timeout 300 sbatch --parsable --wait --ntasks=2 "$root/jobs/slurm/fashion_cnn.sbatch" \
  run.steps=20 run.log_every=10 optimizer.schedule.warmup_steps=5 data.test= >"$work/jid"
code=$?
set -e
jid=$(cat "$work/jid")
log=fashion-cnn.$jid.out
echo "fashion_cnn.sbatch --ntasks=2 run.steps=20: job $jid, exit $code, $(since "$t0") s"
[[ $code -eq 0 ]] || { echo "FAIL: exit code $code"; cat "$log" 2>/dev/null; exit 1; }
grep -q '^tessera: fashion-cnn on 2 ranks' "$log" || { echo "FAIL: not 2 ranks"; cat "$log"; exit 1; }
grep '^final: 20 steps' "$log"
echo "OK"
