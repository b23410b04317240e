#!/usr/bin/env bash
# Start a two-node Slurm test cluster on this host (Debian/Ubuntu, root, no systemd needed).
#
#   tests/slurm/start_cluster.sh [STATE_DIR]     # default STATE_DIR=/tmp/octo-slurm (or $OCTO_SLURM_DIR)
#   tests/slurm/stop_cluster.sh  [STATE_DIR]
#
# Two pseudo-nodes node1/node2 (2 CPUs each, no GPUs) run as two `slurmd -N` daemons on 127.0.0.1, with
# one `slurmctld`, munge authentication and no accounting (no slurmdbd/sacct). The script is idempotent:
# when the cluster already answers it does nothing. It installs the Debian packages when the binaries are
# missing, writes /etc/slurm/slurm.conf (clients such as sbatch/scontrol read it there), creates a munge
# key if absent, adds node1/node2 to /etc/hosts, and keeps state, logs and pid files under STATE_DIR.
# Every daemon it starts is listed in STATE_DIR/started so stop_cluster.sh stops exactly those.
set -euo pipefail

DIR="${1:-${OCTO_SLURM_DIR:-/tmp/octo-slurm}}"
CONF=/etc/slurm/slurm.conf
HOST="$(hostname)"

log() { echo "[start_cluster] $*"; }
die() { echo "[start_cluster] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it writes /etc/slurm/slurm.conf and /etc/hosts and starts daemons)"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

cluster_up() {
    alive "$DIR/run/slurmctld.pid" && alive "$DIR/run/slurmd-node1.pid" && alive "$DIR/run/slurmd-node2.pid" \
        && timeout 5 sinfo -h -o '%D %t' 2>/dev/null | grep -Eq '^2 (idle|mix|alloc)'
}

if [ -f "$CONF" ] && cluster_up; then
    log "cluster already running ($DIR)"; sinfo; exit 0
fi

if [ -f "$CONF" ] && ! grep -q "Written by octo tests/slurm/start_cluster.sh" "$CONF" \
        && [ "${OCTO_SLURM_FORCE:-0}" != 1 ]; then
    die "$CONF exists and was not written by this script (a real Slurm setup?); refusing to overwrite it. \
Set OCTO_SLURM_FORCE=1 to replace it (it is backed up to $CONF.octo-backup)."
fi
[ -f "$CONF" ] && ! grep -q "Written by octo" "$CONF" && cp "$CONF" "$CONF.octo-backup"

# ---- packages --------------------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
        || ! command -v munged >/dev/null; then
    log "installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi
for b in slurmctld slurmd sbatch munged; do command -v $b >/dev/null || die "$b not found after install"; done

# ---- host names ------------------------------------------------------------------------------------------
# torch.distributed resolves MASTER_ADDR=node1; without these lines rendezvous times out.
for name in node1 node2 "$HOST"; do
    grep -Eq "^[^#]*[[:space:]]$name([[:space:]]|\$)" /etc/hosts || echo "127.0.0.1 $name" >> /etc/hosts
done

# ---- leftovers from a previous run of ours -----------------------------------------------------------------
if [ -f "$DIR/started" ]; then
    log "stopping leftovers of a previous start"
    "$(dirname "$0")/stop_cluster.sh" "$DIR" || true
fi
mkdir -p "$DIR"/{run,log,spool,state}
rm -rf "$DIR/state"/* "$DIR/spool"/*
: > "$DIR/started"

# ---- munge -------------------------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    log "creating munge key"
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 755 /run/munge
if alive /run/munge/munged.pid && munge -n </dev/null >/dev/null 2>&1; then
    log "munged already running (not ours; left alone)"
else
    rm -f /run/munge/munged.pid /run/munge/munge.socket.2*
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n </dev/null >/dev/null 2>&1 || die "munged did not start (see /var/log/munge/munged.log)"
    echo "munged /run/munge/munged.pid" >> "$DIR/started"
fi

# ---- slurm.conf --------------------------------------------------------------------------------------------
MEM_MB=$(awk '/MemTotal/ {print int($2/1024/2)}' /proc/meminfo)   # each pseudo-node claims half the RAM
FIRST_ID=$(( ($(date +%s) % 600000) * 100 + 1 ))                   # clock-based: fresh ids on every start
mkdir -p /etc/slurm
cat > "$CONF" <<EOF
# Written by octo tests/slurm/start_cluster.sh - a 2-node CPU test cluster on one host.
ClusterName=octotest
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=16817
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=5
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
KillWait=2
MinJobAge=300
InactiveLimit=0
Waittime=0
MessageTimeout=10
SlurmdTimeout=300
ReturnToService=2
JobRequeue=1
FirstJobId=$FIRST_ID
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=node[1-2] NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17001-17002 CPUs=2 RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=node[1-2] Default=YES MaxTime=INFINITE State=UP
EOF

# ---- daemons -----------------------------------------------------------------------------------------------
slurmctld -i                                  # -i: ignore (fresh) state; daemonises, writes its pid file
echo "slurmctld $DIR/run/slurmctld.pid" >> "$DIR/started"
for n in node1 node2; do
    slurmd -N "$n"
    echo "slurmd-$n $DIR/run/slurmd-$n.pid" >> "$DIR/started"
done

for _ in $(seq 100); do
    cluster_up && { log "cluster up in $DIR"; sinfo; exit 0; }
    sleep 0.2
done
# nodes may come up DOWN/DRAIN after an unclean stop: resume them once
scontrol update NodeName=node[1-2] State=RESUME >/dev/null 2>&1 || true
for _ in $(seq 50); do
    cluster_up && { log "cluster up in $DIR"; sinfo; exit 0; }
    sleep 0.2
done
sinfo -R || true
die "cluster did not come up; see $DIR/log/"
