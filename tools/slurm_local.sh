#!/usr/bin/env bash
# tools/slurm_local.sh — a one-node Slurm cluster on this machine, for the job-script tests.
#
#   dir=$(tools/slurm_local.sh start)     # start munged, slurmctld, slurmd; print the cluster's folder
#   source "$dir/env"                     # SLURM_CONF: sbatch, srun, squeue, scancel now use it
#   sbatch --wait --wrap hostname
#   tools/slurm_local.sh status "$dir"    # sinfo and squeue
#   tools/slurm_local.sh stop "$dir"      # cancel the jobs, stop the daemons, remove the folder
#   tools/slurm_local.sh available        # exit 0 if slurm-wlm and munge are installed
#
# Needs Debian's slurm-wlm and munge (`tools/setup.sh --slurm` installs them). Runs as the current
# user (root in a container) without systemd: everything lives in one temporary folder (or the
# folder given to start, which must not exist yet) — slurm.conf written at start-up (node name from
# `hostname -s`, CPUs and memory as `slurmd -C` finds them, loopback address, two free TCP ports),
# a fresh munge key and munged's socket, the state, spool and log files. The daemons are stopped by
# the PIDs they wrote into that folder, never by name, so other clusters and daemons on the machine
# are untouched; stop then ends whatever outlived them that belongs to this cluster (a process
# whose environment names its slurm.conf: a job step, a task), and a failed start stops what it
# started. Measured on a 2-core machine: up in 0.1-1.5 s, a trivial batch job done in 2-3 s,
# stop in about 7 s (most of it slurmctld saving its state).
#
# Exit codes: 0 done; 3 Slurm or munge is not installed (the tests skip); 1 anything else (start
# prints the daemons' logs).
set -euo pipefail

sbin=/usr/sbin
progs=(munged mungekey slurmctld slurmd sbatch srun squeue sinfo scancel scontrol)

say() { echo "slurm_local: $*" >&2; }

available() {
  local p
  for p in "${progs[@]}"; do
    command -v "$p" >/dev/null 2>&1 || [[ -x $sbin/$p ]] || {
      say "$p not found: install Debian's slurm-wlm and munge (tools/setup.sh --slurm)"
      return 3
    }
  done
}

# A TCP port on 127.0.0.1 that nothing listens on, other than $1, from a random start in
# 20000-59999.
free_port() {
  local p=$((20000 + (RANDOM * 32768 + RANDOM) % 40000)) i
  for ((i = 0; i < 200; ++i, p = p >= 59999 ? 20000 : p + 1)); do
    [[ $p == "${1:-}" ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  say "no free TCP port found"
  return 1
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# The PID in a daemon's PID file, if that process is alive.
pid_of() {
  local f=$1 pid
  [[ -s $f ]] || return 1
  read -r pid <"$f" || return 1
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# TERM a PID, wait up to $2 seconds for it to go, then KILL it.
end_pid() {
  local pid=$1 wait_s=${2:-5} i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < wait_s * 10; ++i)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

# The parent PID of a process (field 4 of /proc/PID/stat, after the command name in parentheses).
ppid_of() {
  local stat ppid
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  read -r _ ppid _ <<<"$stat"  # state, ppid, ...
  echo "$ppid"
}

# Is PID this process, one of its ancestors or one of its descendants?
related() {
  local p=$1 q
  q=$$
  while [[ -n $q && $q != 0 ]]; do  # an ancestor of this script (or the script itself)
    [[ $q == "$p" ]] && return 0
    q=$(ppid_of "$q") || break
  done
  q=$p
  while [[ -n $q && $q != 0 && $q != 1 ]]; do  # a descendant of this script (a subshell)
    [[ $q == "$$" ]] && return 0
    q=$(ppid_of "$q") || break
  done
  return 1
}

# Leftovers of this cluster: processes whose environment names its slurm.conf (slurmstepd and the
# jobs' tasks, which inherit SLURM_CONF from slurmd and from the submitting shell).
leftovers() {
  local conf=$1 e p
  for e in /proc/[0-9]*/environ; do
    p=${e#/proc/}
    p=${p%/environ}
    grep -qzxF "SLURM_CONF=$conf" "$e" 2>/dev/null || continue
    related "$p" && continue
    echo "$p"
  done
}

stop_cluster() {
  local dir=$1 conf pid i name
  conf=$dir/slurm.conf
  [[ -d $dir ]] || { say "$dir: no such folder"; return 0; }
  if [[ -f $conf ]] && pid_of "$dir/slurmctld.pid" >/dev/null; then
    # Cancel every job of this cluster and give the steps a moment to end (KillWait is short).
    SLURM_CONF=$conf timeout 10 scancel --quiet --user="$(id -un)" 2>/dev/null || true
    for ((i = 0; i < 50; ++i)); do
      [[ -z $(SLURM_CONF=$conf timeout 5 squeue -h -o %i 2>/dev/null) ]] && break
      sleep 0.2
    done
  fi
  for name in slurmd slurmctld munged; do
    if pid=$(pid_of "$dir/$name.pid"); then
      end_pid "$pid" 5
    fi
  done
  # Anything the cluster started that outlived its daemons (a step whose slurmd has gone).
  for pid in $(leftovers "$conf"); do
    say "ending leftover process $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-80))"
    end_pid "$pid" 2
  done
  rm -rf "$dir"
}

status_cluster() {
  local dir=$1
  export SLURM_CONF=$dir/slurm.conf
  sinfo
  squeue
}

show_logs() {
  local dir=$1 f
  for f in "$dir"/daemons.out "$dir"/munged.log "$dir"/slurmctld.log "$dir"/slurmd.log; do
    [[ -f $f ]] || continue
    echo "----- $f (last 20 lines)" >&2
    tail -n 20 "$f" >&2
  done
}

# If start fails after creating its folder: show the logs, stop what it started, remove the folder.
start_dir=""
on_start_exit() {
  local rc=$?
  if ((rc)) && [[ -n $start_dir ]]; then
    say "start failed (exit $rc)"
    show_logs "$start_dir"
    stop_cluster "$start_dir"
  fi
}

start_cluster() {
  local dir=${1:-} t0 node cpus conf up state="" i
  available || return $?
  PATH=$PATH:$sbin
  t0=$(now)
  if [[ -n $dir ]]; then
    mkdir -m 700 "$dir"  # fails if it exists: never reuse a folder of another cluster
  else
    dir=$(mktemp -d "${TMPDIR:-/tmp}/tessera-slurm.XXXXXX")
  fi
  dir=$(cd "$dir" && pwd)
  chmod 711 "$dir"  # munged wants its socket's folder searchable by all; nothing in it is readable
  conf=$dir/slurm.conf
  start_dir=$dir
  trap on_start_exit EXIT
  trap 'exit 1' INT TERM HUP
  mkdir -p "$dir/state" "$dir/spool"

  # munge: a key of our own and a daemon of our own on a socket in the folder.
  mungekey --create --keyfile="$dir/munge.key" 2>/dev/null ||
    { dd if=/dev/urandom of="$dir/munge.key" bs=1024 count=1 status=none && chmod 600 "$dir/munge.key"; }
  # The daemons get no terminal and no pipe of the caller (a `$(...)` or ctest would wait for them).
  munged --socket="$dir/munge.sock" --key-file="$dir/munge.key" --pid-file="$dir/munged.pid" \
    --log-file="$dir/munged.log" --seed-file="$dir/munged.seed" --force \
    </dev/null >>"$dir/daemons.out" 2>&1
  for ((i = 0; i < 100; ++i)); do
    [[ -S $dir/munge.sock ]] && pid_of "$dir/munged.pid" >/dev/null && break
    sleep 0.05
  done
  [[ -S $dir/munge.sock ]] || { say "munged did not come up"; return 1; }

  # The node as slurmd sees it (CPUs, sockets, cores, threads, memory): the configuration must not
  # promise more than the machine has, or slurmd drains the node.
  node=$(hostname -s)
  local hw
  hw=$(slurmd -C | head -n 1 | sed -E 's/^NodeName=[^ ]+ //')
  if [[ $hw != *CPUs=* ]]; then  # slurmd -C failed: nproc and /proc/meminfo (kB -> MB)
    hw="CPUs=$(nproc) RealMemory=$(($(awk '/^MemTotal/ { print $2 }' /proc/meminfo) / 1024))"
  fi
  cpus=$(sed -E 's/.*CPUs=([0-9]+).*/\1/' <<<"$hw")
  local ctld_port slurmd_port
  ctld_port=$(free_port)
  slurmd_port=$(free_port "$ctld_port")
  cat >"$conf" <<EOF
# Written by tools/slurm_local.sh for a one-node test cluster in $dir.
ClusterName=tessera-test
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge.sock
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$dir/plugstack.conf
# No cgroups (none in a container without systemd): processes tracked by parentage, no binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=pmi2
ReturnToService=2
MailProg=/bin/true
# Short waits, so that tests and stop do not sit idle: SIGTERM to SIGKILL 5 s; time limits
# enforced without grace; finished jobs forgotten after 4 s (and the next purge, within a minute):
# "sbatch --wait" polls every MinJobAge/2 s up to 32 s, so with the default 300 it notices the end
# of a job up to 32 s late, with 4 every 2 s.
KillWait=5
MinJobAge=4
OverTimeLimit=0
InactiveLimit=0
MessageTimeout=10
NodeName=$node NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
  : >"$dir/plugstack.conf"
  printf 'export SLURM_CONF=%q\nexport TESSERA_SLURM_DIR=%q\n' "$conf" "$dir" >"$dir/env"

  export SLURM_CONF=$conf
  slurmctld -f "$conf" </dev/null >>"$dir/daemons.out" 2>&1
  slurmd -f "$conf" -N "$node" </dev/null >>"$dir/daemons.out" 2>&1
  for ((i = 0; i < 300; ++i)); do
    state=$(sinfo -h -n "$node" -o %t 2>/dev/null || true)
    [[ $state == idle ]] && break
    sleep 0.1
  done
  [[ $state == idle ]] || { say "node $node is '${state:-unknown}', not idle, after 30 s"; return 1; }
  up=$(elapsed "$t0")
  trap - EXIT INT TERM HUP
  say "up in $up s: node $node ($cpus CPUs), slurmctld :$ctld_port, slurmd :$slurmd_port, folder $dir"
  echo "$dir"
}

cmd=${1:-}
case $cmd in
  start) start_cluster "${2:-}" ;;
  stop) stop_cluster "${2:?usage: $0 stop DIR}" ;;
  status) status_cluster "${2:?usage: $0 status DIR}" ;;
  available) available ;;
  *)
    echo "usage: $0 start [DIR] | stop DIR | status DIR | available" >&2
    exit 1
    ;;
esac
