#!/usr/bin/env bash
# A throw-away single-node Slurm cluster for the ctest suites (tests/test_cli_slurm.cpp):
#
#   tests/slurm/cluster.sh start DIR   # munged + slurmctld + slurmd on 127.0.0.1, every file under DIR;
#                                      # prints SLURM_CONF=DIR/etc/slurm.conf once the node is idle
#   tests/slurm/cluster.sh stop DIR    # cancels the cluster's jobs, stops its daemons by PID, removes DIR
#
# Runs as root, without systemd or cgroups. Needs slurmctld slurmd slurm-client munge (Debian 12:
# scripts/install-deps.sh installs them); missing tools are an error, never a skip. Ports are free ones
# picked at random, so several clusters (parallel test runs) can coexist on one machine.
# Knobs: STRATA_SLURM_CPUS (CPUs the node offers, default: nproc), STRATA_SLURM_TIMEOUT (s, default 60).
set -uo pipefail

usage() { echo "usage: $0 start|stop DIR (absolute)" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1 dir=$2
case "$dir" in /?*) ;; *) usage ;; esac
case "$dir" in *[[:space:]]*) echo "cluster.sh: DIR must not contain spaces" >&2; exit 2 ;; esac
say() { echo "[slurm-fixture] $*" >&2; }

# The PID in a pid file, if that process is alive and runs the expected program.
live_pid() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(<"$1")
  kill -0 "$pid" 2>/dev/null || return 1
  case "$(readlink "/proc/$pid/exe" 2>/dev/null)" in *"$2"*) echo "$pid" ;; *) return 1 ;; esac
}

# Job processes of this cluster that outlived their daemons: job scripts run from DIR/spool.
leftover_jobs() {
  local proc
  for proc in /proc/[0-9]*; do
    if { tr '\0' ' ' <"$proc/cmdline"; } 2>/dev/null | grep -q -- "$dir/spool/"; then echo "${proc#/proc/}"; fi
  done
}

stop_cluster() {
  [ -d "$dir" ] || return 0
  local conf="$dir/etc/slurm.conf" ctld slurmd munged pids=() pid
  ctld=$(live_pid "$dir/run/slurmctld.pid" slurmctld) || ctld=""
  slurmd=$(live_pid "$dir/run/slurmd.pid" slurmd) || slurmd=""
  munged=$(live_pid "$dir/munge/munged.pid" munged) || munged=""
  # Jobs first, while slurmd can still end them (its job steps survive it otherwise).
  if [ -n "$ctld" ] && [ -n "$slurmd" ]; then
    export SLURM_CONF="$conf"
    local jobs
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
      say "cancelling jobs $jobs"
      # shellcheck disable=SC2086
      timeout 10 scancel $jobs 2>/dev/null
      for _ in $(seq 100); do
        [ -z "$(timeout 10 squeue -h -t RUNNING,COMPLETING -o %A 2>/dev/null)" ] && break
        sleep 0.1
      done
    fi
  fi
  for pid in $slurmd $ctld $munged; do pids+=("$pid"); kill -TERM "$pid" 2>/dev/null; done
  for _ in $(seq 100); do
    local alive=""
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
    [ -z "$alive" ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && { say "KILL $pid (ignored TERM)"; kill -KILL "$pid"; }; done
  for pid in $(leftover_jobs); do say "killing leftover job process $pid"; kill -KILL "$pid" 2>/dev/null; done
  rm -rf "$dir"
}

start_cluster() {
  local tool
  [ "$(id -u)" = 0 ] || { say "must run as root (slurmd starts jobs as their user)"; return 1; }
  for tool in munged munge unmunge slurmctld slurmd sbatch squeue scontrol sinfo scancel; do
    command -v "$tool" >/dev/null || {
      say "$tool is missing: run scripts/install-deps.sh (apt-get install slurmctld slurmd slurm-client munge)"
      return 1
    }
  done
  stop_cluster
  mkdir -p "$dir"/{etc,state,spool,log,run,munge} && chmod 0755 "$dir" "$dir"/* || return 1

  # munged as root with every file of its own under DIR (Debian's /etc/munge, /run/munge stay untouched);
  # the socket directory must be world-searchable.
  dd if=/dev/urandom of="$dir/munge/key" bs=1024 count=1 status=none && chmod 0400 "$dir/munge/key"
  munged --key-file="$dir/munge/key" --socket="$dir/munge/socket" --pid-file="$dir/munge/munged.pid" \
    --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/seed" </dev/null >"$dir/log/munged.out" 2>&1 ||
    { say "munged did not start: $(cat "$dir/log/munged.out")"; return 1; }

  # Two free TCP ports from a random base (parallel test runs each get their own).
  local port ports=() base=$((20000 + RANDOM % 30000))
  for port in $(seq "$base" $((base + 500))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue
    ports+=("$port")
    [ ${#ports[@]} -eq 2 ] && break
  done

  local cpus="${STRATA_SLURM_CPUS:-$(nproc)}" mem=4096
  cat >"$dir/etc/slurm.conf" <<CONF
# Written by tests/slurm/cluster.sh for one test run; everything lives under $dir.
ClusterName=strata-ctest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=${ports[0]}
SlurmdPort=${ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/socket
# No cgroups (containers, no systemd).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
# Schedule at once on submit and on job end (tests wait on it).
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without it every job would get the whole node's memory and tasks would run one at a time.
DefMemPerCPU=$((mem / cpus))
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF="$dir/etc/slurm.conf"
  echo "export SLURM_CONF=$SLURM_CONF" >"$dir/env.sh"

  slurmctld -f "$SLURM_CONF" </dev/null >"$dir/log/slurmctld.out" 2>&1 || { say "slurmctld did not start"; return 1; }
  slurmd -f "$SLURM_CONF" -N localhost </dev/null >"$dir/log/slurmd.out" 2>&1 || { say "slurmd did not start"; return 1; }
  local deadline=$(($(date +%s) + ${STRATA_SLURM_TIMEOUT:-60})) state
  while :; do
    state=$(timeout 5 sinfo -h -n localhost -o %t 2>/dev/null)
    [ "$state" = idle ] && break
    if [ "$(date +%s)" -ge "$deadline" ]; then
      say "node not idle after ${STRATA_SLURM_TIMEOUT:-60}s (state '$state'); logs:"
      tail -n 20 "$dir"/log/*.log >&2
      return 1
    fi
    sleep 0.1
  done
  say "cluster up: ports ${ports[*]}, $cpus CPUs"
  echo "SLURM_CONF=$SLURM_CONF"
}

case "$action" in
  start) start_cluster || { rc=$?; say "start failed; stopping what started"; stop_cluster; exit "$rc"; } ;;
  stop) stop_cluster ;;
  *) usage ;;
esac
