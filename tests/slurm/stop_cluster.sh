#!/usr/bin/env bash
# Stop exactly the daemons tests/slurm/start_cluster.sh started (listed in STATE_DIR/started).
#   tests/slurm/stop_cluster.sh [STATE_DIR]      # default STATE_DIR=/tmp/octo-slurm (or $OCTO_SLURM_DIR)
set -uo pipefail

DIR="${1:-${OCTO_SLURM_DIR:-/tmp/octo-slurm}}"
LIST="$DIR/started"
[ -f "$LIST" ] || { echo "[stop_cluster] nothing to stop ($LIST absent)"; exit 0; }

# cancel what is left in the queue while the controller still answers
if command -v scancel >/dev/null && timeout 5 squeue -h >/dev/null 2>&1; then
    timeout 10 scancel --user=root >/dev/null 2>&1 || true
fi

stop_one() {  # name pidfile
    local name=$1 pidfile=$2 pid
    [ -f "$pidfile" ] || { echo "[stop_cluster] $name: no pid file"; return; }
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        echo "[stop_cluster] stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
}

# reverse order: slurmd's, slurmctld, then munged
tac "$LIST" | while read -r name pidfile; do
    [ -n "${name:-}" ] && stop_one "$name" "$pidfile"
done
rm -f "$LIST"
