# jobs/slurm/chain.bash — the checkpoint-and-resubmit chain of the job scripts in this folder,
# sourced by them from the repository root they run in (not a job script itself).
#
# A job script traps USR1 as its first command (`early_usr1=0; trap 'early_usr1=1' USR1`: Slurm's
# warning may come before anything else has run, and bash's default for USR1 ends the shell), cds
# to the submit directory, sources this file and calls
#
#   chain_start EXE DECK HINT      # checks EXE and DECK exist (else exit 2, HINT says how to build)
#   ...                            # its own environment (threads, NCCL)
#   chain_run RESOURCES... -- "$@" # srun the step with RESOURCES, resubmit when the time limit
#                                  # stopped it; exits with tessera's code
#
# with `me` (its name, for messages) set. RESOURCES are the options that srun and the successor's
# sbatch share (--ntasks, --cpus-per-task, --gpus-per-task); "$@" are the user's deck overrides.
#
# The chain: Slurm sends SIGUSR1 to the batch shell before the time limit (#SBATCH --signal=B:...);
# the shell passes it to tessera, which saves a checkpoint at the next step boundary and exits 75.
# The shell then submits the same script again (this job's resources, log file and deck overrides,
# after this job ends) and the next job resumes from the checkpoint: every job runs tessera with
# checkpoint.restart=auto (after the user's overrides in the successors, before them in the first),
# which reads <checkpoint.dir>/latest, or starts at step 0 when there is none yet. The link that
# finishes the training exits 0 and submits nothing. A run stopped any other way (scancel, which
# sends SIGTERM; a crash) is not resubmitted. At most TESSERA_MAX_LINKS jobs (default 10) run in one
# chain; TESSERA_LINK counts them (1 for the job you submit).
#
# Exit code: tessera's (0 done, 2 bad input, 75 stopped by a signal, 1 anything else), except that
# a link that has resubmitted exits 0 (COMPLETED in Slurm's accounting: its successor carries the
# run on); the last link the cap allows, or one whose resubmission failed, exits 75.
#
# A USR1 at any moment is taken: before the step has started it is passed on once the step runs;
# srun passes a signal only to tasks it has started, and a task that gets it before tessera has set
# its handlers (a fraction of a second after it starts) dies of it — so it is passed on again every
# 5 s until the step ends (tessera takes repeats as one), and a step that died of USR1 (exit 138)
# after the warning counts as stopped: nothing was saved, the successor resumes from the previous
# checkpoint.
#
# --signal: Slurm does not tell a job its own --signal, so one given on the sbatch command line is
# not passed on to the successors (they get the script's #SBATCH line). Give it in the environment
# instead, SBATCH_SIGNAL=B:USR1@300 sbatch ..., which every link inherits, or edit the #SBATCH line.
#
# shellcheck disable=SC2154  # me and early_usr1 are the job script's

chain_start() {  # EXE DECK HINT
  exe=$1
  deck=$2
  if [[ ! -x $exe || ! -f $deck ]]; then
    echo "$me: submit from the Tessera repository root after building it $3: no $exe or $deck" \
      "in $PWD" >&2
    exit 2
  fi
  link=${TESSERA_LINK:-1}
  max_links=${TESSERA_MAX_LINKS:-10}
  if ! [[ $link =~ ^[1-9][0-9]*$ && $max_links =~ ^[1-9][0-9]*$ ]]; then
    echo "$me: TESSERA_LINK=$link and TESSERA_MAX_LINKS=$max_links must be positive integers" >&2
    exit 2
  fi
  time_limit_near=0
  srun_pid=""
  forwarder=""
  trap chain_usr1 USR1
  if ((${early_usr1:-0})); then
    chain_usr1
  fi
}

# The trap: note the warning and pass it on (once the step runs: chain_run does it if not yet).
# shellcheck disable=SC2317  # invoked by the trap
chain_usr1() {
  interrupted=1
  if ((time_limit_near)); then
    return  # a repeat: the forwarder passes it on
  fi
  time_limit_near=1
  echo "$me: USR1 at $(date -Is) (time limit near): asking tessera to stop"
  chain_forward
}

# Passes USR1 to the step now and every 5 s until it ends, in a background loop.
chain_forward() {
  [[ -n $srun_pid && -z $forwarder ]] || return 0
  kill -USR1 "$srun_pid" 2>/dev/null
  (
    trap - USR1
    while sleep 5 && kill -0 "$srun_pid" 2>/dev/null; do
      kill -USR1 "$srun_pid" 2>/dev/null
    done
  ) &
  forwarder=$!
}

chain_run() {  # RESOURCES... -- OVERRIDES...
  local resources=() args=()
  while (($# > 0)) && [[ $1 != -- ]]; do
    resources+=("$1")
    shift
  done
  shift  # --
  echo "$me: job ${SLURM_JOB_ID:-?}, link $link of at most $max_links, on" \
    "${SLURM_JOB_NODELIST:-?}, ${SLURM_NTASKS:-?} ranks, started $(date -Is)"

  # --mpi=pmi2: Debian's MPICH finds its peers through PMI, and Slurm's pmi2 plugin serves it (PMI-2
  # and the PMI-1 wire protocol). With --mpi=none each task would start as its own one-rank
  # MPI_COMM_WORLD: N separate copies of the run instead of one run on N ranks. Started in the
  # background and waited for, so that the shell can take the USR1 trap while the step runs (bash
  # runs traps only between commands, never during a foreground srun).
  srun --mpi=pmi2 "${resources[@]}" --kill-on-bad-exit=1 "$exe" run "$deck" \
    checkpoint.restart=auto "$@" &
  srun_pid=$!
  if ((time_limit_near)); then
    chain_forward  # the warning came before the step started
  fi

  # A trapped signal ends `wait` early (status 128 + signal) while the step still runs: wait again
  # until the step itself has ended, and keep its exit code (the highest of the ranks').
  local code
  while :; do
    interrupted=0
    wait "$srun_pid"
    code=$?
    ((interrupted)) || break
  done
  [[ -n $forwarder ]] && kill "$forwarder" 2>/dev/null
  echo "$me: tessera exited with code $code at $(date -Is)"

  # Only after our USR1: exit 75 (stopped at a step boundary), or 138 (a task that got it before
  # it had set its handlers). A run cancelled by hand (scancel sends SIGTERM: 75 too) or failed
  # stays stopped.
  if ! ((time_limit_near && (code == 75 || code == 138))); then
    exit "$code"
  fi
  if ((code == 138)); then
    echo "$me: the step ended by the USR1 itself (it came while tessera was starting): nothing" \
      "was saved in this job; the next resumes from the previous checkpoint"
    code=75
  fi
  if ((link >= max_links)); then
    echo "$me: link $link is the last the cap allows (TESSERA_MAX_LINKS=$max_links): not" \
      "resubmitting. The checkpoint is kept; submit again (with a higher TESSERA_MAX_LINKS if" \
      "need be) to go on from it."
    exit "$code"
  fi
  # The successor gets this job's resources (including options given to sbatch on the command
  # line, which the #SBATCH lines of the copy do not show), this job's log file (appended to), the
  # same deck overrides and checkpoint.restart = "auto" last, so that it resumes from the newest
  # checkpoint even if this link was started from a given file.
  local job limit log next
  job=$(scontrol show job -o "$SLURM_JOB_ID")
  field() { sed -nE "s/.* $1=([^ ]*).*/\1/p" <<<"$job"; }
  local opts=(--dependency="afterany:$SLURM_JOB_ID" --kill-on-invalid-dep=yes
    --job-name="$SLURM_JOB_NAME" --nodes="${SLURM_JOB_NUM_NODES:-1}" "${resources[@]}"
    --open-mode=append)
  limit=$(field TimeLimit)
  [[ -n $limit && $limit != UNLIMITED ]] && opts+=(--time="$limit")
  log=$(field StdOut)
  [[ -n $log ]] && opts+=(--output="$log")
  [[ -n ${SLURM_JOB_PARTITION:-} ]] && opts+=(--partition="$SLURM_JOB_PARTITION")
  [[ -n ${SLURM_JOB_ACCOUNT:-} ]] && opts+=(--account="$SLURM_JOB_ACCOUNT")
  for a in "$@"; do
    [[ $a == checkpoint.restart=* ]] || args+=("$a")
  done
  args+=(checkpoint.restart=auto)
  # $0 is Slurm's copy of the job script: the whole chain runs one script even if the repository's
  # copy changes meanwhile. This job's SLURM_* variables are left out of the successor's
  # environment (sbatch and srun would read some of them as options); SLURM_CONF stays, and so do
  # SBATCH_* (the user's SBATCH_SIGNAL among them).
  next=$(
    for v in $(compgen -e); do
      [[ $v == SLURM_* && $v != SLURM_CONF ]] && unset "$v"
    done
    sbatch --parsable "${opts[@]}" \
      --export="ALL,TESSERA_LINK=$((link + 1)),TESSERA_MAX_LINKS=$max_links" "$0" "${args[@]}"
  ) || {
    echo "$me: resubmitting failed (sbatch exit $?): the chain stops here" >&2
    exit "$code"
  }
  echo "$me: resubmitted as job ${next%%;*} (link $((link + 1)) of at most $max_links), to" \
    "resume from the newest checkpoint once job $SLURM_JOB_ID has ended; this job exits 0"
  # Handed over: this link did its share, so Slurm shows it COMPLETED, not FAILED (--mail-type=FAIL
  # would mail for every link). The last link the cap allows, and a failed resubmission, exit 75.
  exit 0
}
