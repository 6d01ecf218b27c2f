#!/usr/bin/env bash
# The checkpoint-restart chain of jobs/slurm/fashion_mlp.sbatch under a real Slurm
# (tools/slurm_local.sh), on 2 ranks, the MLP deck with 15 epochs (7035 steps):
#
# 1. A reference run, uninterrupted, through the same script.
# 2. The chain: the job is signalled three times; each time tessera checkpoints and exits 75, the
#    script resubmits itself (dependency afterany on itself, the same log file appended to) and
#    the next link resumes from `latest`; the fourth link finishes and exits 0, and nothing more is
#    submitted. The final checkpoint equals the reference's bit for bit (tessera-ckpt diff; same
#    deck, same rank count) and so do the final test loss and accuracy.
# 3. The cap: with TESSERA_MAX_LINKS=1 the signalled job does not resubmit and exits 75.
# 4. A job cancelled by hand (scancel: SIGTERM) is not resubmitted.
# 5. A SIGUSR1 while srun is starting the step (before tessera has set its handlers) stops the
#    link and the chain goes on.
# 6. Slurm's own time-limit warning (the signal a real chain gets), no scancel: the user's
#    --signal (given as SBATCH_SIGNAL) is kept in every link — each is warned at the user's lead
#    time, not the script's.
#
# How the signal is delivered: `scancel --batch --signal=USR1 JOB`, at moments the test chooses —
# what --signal=B:USR1@120 makes slurmctld do before the time limit (SIGUSR1 to the batch shell
# only). Real time limits would make this test slow and its timing random: --time counts in
# minutes, and slurmctld sends the warning at its periodic time-limit check (every 30 s), so each
# link would take up to a minute and stop at an unknown step. Part 6 checks the real warning, on
# two links. Each link is signalled once its "restart:" line is in the log: by then every
# rank has installed its signal handlers (the line follows collective calls), and the link still
# has most of its steps ahead: at about 1000 steps/s on an idle machine the signal lands 20-1000
# steps into a link (measured), so three links stopped early leave the fourth at least 4000 of the
# 7035 steps. (With 1407 steps, 3 epochs, a third link once finished before its signal landed.)
#
# Skips with a message where Slurm is not installed (see slurm_common.bash).
# shellcheck source=tests/e2e/slurm_common.bash
source "$(dirname "$0")/slurm_common.bash"

script=$root/jobs/slurm/fashion_mlp.sbatch
overrides=(run.epochs=15 run.log_every=100 run.eval_every=0)
total=7035

# --- 1. the reference: one uninterrupted run -------------------------------------------------
t0=$(date +%s.%N)
set +e
run_bg timeout 600 sbatch --parsable --wait "$script" "${overrides[@]}" run.output=runs/ref \
  >"$work/jid"
code=$?
set -e
jid=$(cat "$work/jid")
ref_log=fashion-mlp.$jid.out
[[ $code -eq 0 ]] || { echo "FAIL: reference run exit $code"; cat "$ref_log"; exit 1; }
ref_final=$(grep '^final: ' "$ref_log")
echo "reference (job $jid, $(since "$t0") s): $ref_final"

# --- 2. the chain ------------------------------------------------------------------------------
# The number of "restart:" lines in a log: one per link that has started training.
restarts() {
  local n
  n=$(grep -c '^restart: ' "$1" 2>/dev/null) || true
  echo "${n:-0}"
}
at_least_restarts() { (($(restarts "$1") >= $2)); }
# The job id of link $2 in log $1.
link_job() { sed -nE "s/^fashion_mlp.sbatch: job ([0-9]+), link $2 of at most $3, .*/\1/p" "$1"; }

t0=$(date +%s.%N)
jid=$(sbatch --parsable --export=ALL,TESSERA_MAX_LINKS=5 "$script" "${overrides[@]}" \
  run.output=runs/chain)
log=fashion-mlp.$jid.out
for k in 1 2 3; do
  wait_for 300 "link $k training" at_least_restarts "$log" "$k" || { cat "$log"; exit 1; }
  id=$(link_job "$log" "$k" 5)
  [[ -n $id ]] || { echo "FAIL: no job line for link $k"; cat "$log"; exit 1; }
  scancel --batch --signal=USR1 "$id"
  echo "link $k (job $id): SIGUSR1 to the batch shell at $(since "$t0") s"
done
wait_for 600 "end of the chain" no_jobs_left || { cat "$log"; exit 1; }
echo "chain done in $(since "$t0") s; its log:"
grep -E '^(fashion_mlp.sbatch|restart:|stopped|checkpoint:|final)' "$log"

fail() {
  echo "FAIL: $*"
  cat "$log"
  exit 1
}
[[ $(grep -c '^fashion_mlp.sbatch: job [0-9]*, link [1-4] of at most 5, ' "$log") -eq 4 ]] ||
  fail "expected 4 links in one log"
[[ $(grep -c '^fashion_mlp.sbatch: resubmitted as job [0-9]* (link [2-4] of at most 5)' "$log") -eq 3 ]] ||
  fail "expected 3 resubmissions"
[[ $(grep -c "^stopped by SIGUSR1 at step [0-9]* of $total" "$log") -eq 3 ]] ||
  fail "expected 3 stops by SIGUSR1"
codes=$(sed -nE 's/^fashion_mlp.sbatch: tessera exited with code ([0-9]+) .*/\1/p' "$log" | tr '\n' ' ')
[[ $codes == "75 75 75 0 " ]] || fail "exit codes of the links: $codes, expected 75 75 75 0"
# Every link after the first resumes exactly where the previous one stopped.
stops=$(sed -nE 's/^stopped by SIGUSR1 at step ([0-9]+) of .*/\1/p' "$log" | tr '\n' ' ')
resumes=$(sed -nE 's|^restart: from runs/chain/ckpt/ckpt-[0-9]+\.h5 at step ([0-9]+) .*|\1|p' "$log" |
  tr '\n' ' ')
[[ -n $stops && $stops == "$resumes" ]] || fail "stopped at steps $stops, resumed at $resumes"
grep -q '^restart: no checkpoint in runs/chain/ckpt yet: starting from step 0' "$log" ||
  fail "link 1 did not start afresh"
final=$(grep '^final: ' "$log") || fail "no final line"
[[ $final == "final: $total steps in "* ]] || fail "$final"
# The same model: tensors bit for bit, and so the same test loss and accuracy.
[[ ${final#*;} == "${ref_final#*;}" ]] || fail "final evaluation ${final#*;} != reference ${ref_final#*;}"
ckpt=$(printf 'ckpt-%08d.h5' "$total")
[[ $(cat runs/chain/ckpt/latest) == "$ckpt" ]] || fail "latest is not $ckpt"
run_bg "$bin/tessera-ckpt" diff "runs/ref/ckpt/$ckpt" "runs/chain/ckpt/$ckpt" >"$work/diff.txt" 2>&1 ||
  { cat "$work/diff.txt"; fail "the chain's final checkpoint differs from the reference's"; }
grep -E '^verdict' "$work/diff.txt" || true
echo "chain: 4 links, 3 resubmissions, final model equal to the uninterrupted run's"

# --- 3. the cap ------------------------------------------------------------------------------
jid=$(sbatch --parsable --export=ALL,TESSERA_MAX_LINKS=1 "$script" "${overrides[@]}" run.output=runs/cap)
log=fashion-mlp.$jid.out
wait_for 300 "the capped job training" at_least_restarts "$log" 1 || fail "no restart line"
scancel --batch --signal=USR1 "$jid"
wait_for 120 "end of the capped job" no_jobs_left || fail "capped job still there"
cap_line='^fashion_mlp.sbatch: link 1 is the last the cap allows \(TESSERA_MAX_LINKS=1\): not resub'
grep -qE "$cap_line" "$log" || fail "no cap message"
grep -q '^fashion_mlp.sbatch: tessera exited with code 75' "$log" || fail "capped job did not exit 75"
if grep -q 'resubmitted' "$log"; then fail "the capped job resubmitted"; fi
[[ -f runs/cap/ckpt/latest ]] || fail "the capped job left no checkpoint"
echo "cap: TESSERA_MAX_LINKS=1 stops the chain after one link (exit 75, checkpoint kept)"

# --- 4. cancelled by hand --------------------------------------------------------------------
jid=$(sbatch --parsable "$script" "${overrides[@]}" run.output=runs/cancel)
log=fashion-mlp.$jid.out
wait_for 300 "the job to cancel training" at_least_restarts "$log" 1 || fail "no restart line"
scancel "$jid"
wait_for 120 "end of the cancelled job" no_jobs_left || fail "cancelled job still there"
if grep -q 'resubmitted' "$log"; then fail "a cancelled job resubmitted"; fi
echo "scancel: the job ended without resubmitting"

cap2_line='^fashion_mlp.sbatch: link 2 is the last the cap allows \(TESSERA_MAX_LINKS=2\)'

# --- 5. a signal while srun starts the step --------------------------------------------------
# SIGUSR1 as soon as the link's first line is in its log: the shell has just started srun, whose
# tasks have not set their handlers yet. The chain goes on: the step stops at its first step
# boundary (or dies of the signal before tessera took it, which counts as stopped), and link 2,
# signalled once training, resubmits nothing past the cap.
# (Long enough that link 2 is still training when it is signalled; link 1 may die of the signal
# before printing anything of tessera's, so link 2's training is its restart line after its own.)
link_training() { awk -v k="$2" '$0 ~ "^fashion_mlp.sbatch: job [0-9]+, link " k " " { s = 1 }
  s && /^restart: / { f = 1 } END { exit !f }' "$1"; }
jid=$(sbatch --parsable --export=ALL,TESSERA_MAX_LINKS=2 "$script" run.epochs=1000 \
  run.log_every=100000 run.eval_every=0 run.output=runs/startup)
log=fashion-mlp.$jid.out
wait_for 120 "link 1's first line" grep -q "^fashion_mlp.sbatch: job $jid, link 1" "$log" ||
  fail "link 1 did not start"
scancel --batch --signal=USR1 "$jid"
wait_for 300 "link 2 training" link_training "$log" 2 || fail "no link 2"
scancel --batch --signal=USR1 "$(link_job "$log" 2 2)"
wait_for 120 "end of the start-up chain" no_jobs_left || fail "start-up chain still there"
grep -q "^fashion_mlp.sbatch: resubmitted as job [0-9]* (link 2 of at most 2)" "$log" ||
  fail "a USR1 during srun's start-up broke the chain"
grep -qE "$cap2_line" "$log" || fail "link 2 did not stop at the cap"
echo "USR1 during srun's start-up: $(grep -E '^(stopped by|fashion_mlp.sbatch: the step ended)' \
  "$log" | head -1)"

# --- 6. Slurm's own time limit drives the chain, with the user's --signal in every link -------
# The user's --signal=B:USR1@40 through sbatch's environment (SBATCH_SIGNAL), --time=2: Slurm
# sends the warning 40-100 s before the limit ("up to 60 s early"), 20-80 s after a link starts;
# the script's own #SBATCH --signal=B:USR1@120 would send it at once. Both links must be warned by
# Slurm itself (no scancel here) at least 15 s after they started, checkpoint, exit 75; link 1
# resubmits, link 2 stops at the cap.
# `sbatch --wait` returns link 1's exit code: 0, as it handed over to link 2 (Slurm shows it
# COMPLETED, not FAILED).
t0=$(date +%s.%N)
set +e
SBATCH_SIGNAL=B:USR1@40 run_bg timeout 200 sbatch --parsable --wait --time=2 \
  --export=ALL,TESSERA_MAX_LINKS=2 "$script" run.epochs=1000 run.log_every=100000 \
  run.eval_every=0 run.output=runs/timelimit >"$work/jid"
code=$?
set -e
jid=$(cat "$work/jid")
log=fashion-mlp.$jid.out
((code == 0)) || fail "link 1, which resubmitted, exited $code (Slurm: FAILED), expected 0"
wait_for 200 "end of the time-limit chain" no_jobs_left || fail "time-limit chain still there"
[[ $(grep -c '^stopped by SIGUSR1 at step' "$log") -eq 2 ]] || fail "expected 2 stops by USR1"
grep -q "^fashion_mlp.sbatch: resubmitted as job [0-9]* (link 2 of at most 2)" "$log" ||
  fail "link 1 did not resubmit"
grep -qE "$cap2_line" "$log" || fail "link 2 did not stop at the cap"
starts=$(sed -nE 's/^fashion_mlp.sbatch: job [0-9]+, link [12] of .* started (.*)$/\1/p' "$log")
warned=$(sed -nE 's/^fashion_mlp.sbatch: USR1 at (.*) \(time limit near\).*/\1/p' "$log")
mapfile -t starts <<<"$starts"
mapfile -t warned <<<"$warned"
((${#starts[@]} == 2 && ${#warned[@]} == 2)) || fail "expected 2 links and 2 warnings"
for k in 0 1; do
  after=$(($(date -d "${warned[k]}" +%s) - $(date -d "${starts[k]}" +%s)))
  echo "time limit: link $((k + 1)) warned by Slurm $after s after it started"
  ((after >= 15)) || fail "link $((k + 1)) was warned after $after s: not the user's --signal"
done
echo "time-limit chain: 2 links in $(since "$t0") s"
echo "OK"
