#!/usr/bin/env bash
# A single-node Slurm cluster on this machine for the system tests (tests/test_slurm.py):
#   bash scripts/slurm_local.sh start    # munge + slurmctld + slurmd, partition "debug", squeue status mode
#   bash scripts/slurm_local.sh status
#   bash scripts/slurm_local.sh stop     # stops only the daemons this script started, by PID
# Needs root and the Debian packages slurmctld slurmd slurm-client munge (scripts/install_system_test_deps.sh).
# The configuration must live at /etc/slurm/slurm.conf (the executor's job-step plugin drops SLURM_CONF before
# its inner srun). It is written only when absent or when it carries this script's marker; an existing
# configuration written by anyone else is never touched: start then fails with exit code 3.
# Accounting is off (no slurmdbd), so Snakemake must use `--slurm-status-command squeue`; MinJobAge=600 keeps
# finished jobs visible to squeue long enough for the plugin's status checks.
set -euo pipefail
BASE=${EBFT_SLURM_BASE:-/tmp/ebft-slurm}
CONF=${EBFT_SLURM_CONF:-/etc/slurm/slurm.conf}   # override only to test the refusal; Slurm needs the default
MARKER="# written by ebft scripts/slurm_local.sh"
H=$(hostname -s)

die() { echo "slurm_local.sh: $*" >&2; exit "${2:-1}"; }

ours() { [ -f "$CONF" ] && head -n1 "$CONF" | grep -qF "$MARKER"; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  if [ -f "$CONF" ] && ! ours; then
    die "$CONF exists and was not written by this script; refusing to overwrite it" 3
  fi
  [ "$(id -u)" -eq 0 ] || die "must run as root (slurmd, munged)"
  for b in slurmctld slurmd munged sinfo squeue; do command -v "$b" >/dev/null || die "$b not found: run scripts/install_system_test_deps.sh"; done
  mkdir -p "$BASE"/{state,spool,log,run} /run/munge /etc/slurm
  chown munge:munge /run/munge 2>/dev/null || true
  if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- munged
    for _ in $(seq 1 40); do [ -f /run/munge/munged.pid ] && break; sleep 0.1; done
    cp /run/munge/munged.pid "$BASE/run/munged.pid"   # started here, so stopped here
  fi
  local mem
  mem=$(( $(free -m | awk '/Mem:/{print $2}') * 8 / 10 ))
  cat > "$CONF" <<EOC
$MARKER (remove this file only when no other Slurm uses it)
ClusterName=ebftlocal
SlurmctldHost=$H
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
ReturnToService=2
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
NodeName=$H CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP
EOC
  alive "$BASE/run/slurmctld.pid" || slurmctld
  alive "$BASE/run/slurmd.pid" || slurmd
  for _ in $(seq 1 120); do
    sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)' && { sinfo; return 0; }
    sleep 0.25
  done
  sinfo || true
  die "the node did not become idle; logs in $BASE/log"
}

stop() {
  # slurmd removes its pid file on SIGTERM: read every PID first, then kill, then wait.
  local pids=()
  for f in slurmd slurmctld munged; do
    if [ -f "$BASE/run/$f.pid" ]; then
      pid=$(cat "$BASE/run/$f.pid")
      kill -0 "$pid" 2>/dev/null && pids+=("$pid")
      [ "$f" = munged ] && rm -f "$BASE/run/munged.pid"
    fi
  done
  [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  echo "stopped: ${pids[*]:-nothing}"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) sinfo && squeue ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
