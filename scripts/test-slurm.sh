#!/usr/bin/env bash
# Starts a single-node SLURM on localhost, submits scripts/raider-bids.sbatch for a 3-participant
# demo dataset (an array of 3 tasks, 2 at once into one output directory, then the group level as
# a dependent job), checks every output and exit code, and stops the daemons by PID.
#
#   scripts/test-slurm.sh [WORK_DIR]       (as root; default WORK_DIR: ./slurm-test)
#
# RAIDER_BIDS is how the tasks run the app (default: the raider-bids on PATH; e.g. a podman or
# ch-run command line to run the image instead). Installs slurm and munge from Debian if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=$(realpath -m "${1:-slurm-test}")
PYTHON=${PYTHON:-python3}
start=$SECONDS
step() { echo "== [$((SECONDS - start)) s] $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
input_hashes() { (cd "$WORK/demo" && find . -type f -exec sha256sum {} + | sort); }

step "tools"
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi
export RAIDER_BIDS=${RAIDER_BIDS:-$(command -v raider-bids || fail "raider-bids is not on PATH; pip install . first")}

rm -rf "$WORK"
mkdir -p "$WORK"/{state,spool,run,logs}
export SLURM_CONF=$WORK/slurm.conf
cat > "$SLURM_CONF" <<CONF
ClusterName=ci
SlurmctldHost=localhost
AuthType=auth/munge
SlurmUser=root
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/run/slurmctld.pid
SlurmdPidFile=$WORK/run/slurmd.pid
SlurmctldLogFile=$WORK/logs/slurmctld.log
SlurmdLogFile=$WORK/logs/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=20000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

stop() {
    for pidfile in "$WORK/run/slurmd.pid" "$WORK/run/slurmctld.pid" /run/munge/munged.pid; do
        if [ -s "$pidfile" ]; then
            pid=$(cat "$pidfile")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        fi
    done
}
trap stop EXIT

step "start munged, slurmctld, slurmd"
mkdir -p /run/munge
chown munge:munge /run/munge
[ -s /etc/munge/munge.key ] || runuser -u munge -- /usr/sbin/mungekey --create
# munged runs as munge: its PID file stays in its own /run/munge.
runuser -u munge -- /usr/sbin/munged
/usr/sbin/slurmctld
/usr/sbin/slurmd -N localhost
for _ in $(seq 100); do
    [ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && break
    sleep 0.2
done
[ "$(sinfo -h -o %T)" = idle ] || fail "the node is not idle: $(sinfo -h -o %T)"

step "3-participant demo dataset"
raider-bids-demo "$WORK/demo" --data-only --participants 3 >/dev/null
BIDS=$WORK/demo/bids
OUT=$WORK/out
export RAIDER_BIDS_WORK=$WORK/raider-bids-work
before=$(input_hashes)

step "sbatch: participant array (2 tasks at once, 1 CPU each) and the dependent group job"
N=$(( $(wc -l < "$BIDS/participants.tsv") - 1 ))
jid=$(sbatch --parsable --array=1-${N}%2 --cpus-per-task=1 --mem=4G --output="$WORK/logs/%x-%A_%a.out" \
    scripts/raider-bids.sbatch "$BIDS" "$OUT" participant)
echo "array job $jid"
sbatch --wait --dependency=afterany:"${jid}" --cpus-per-task=1 --mem=4G --output="$WORK/logs/%x-%j.out" \
    scripts/raider-bids.sbatch "$BIDS" "$OUT" group --roi-dataset "$WORK/demo/rois" \
    || { tail -n 5 "$WORK"/logs/*.out; fail "the group job failed"; }

step "checks"
cat "$RAIDER_BIDS_WORK/exit_codes.tsv"
[ "$(head -1 "$RAIDER_BIDS_WORK/exit_codes.tsv")" = "$(printf 'time\tjob\ttask\tparticipant\texit_code')" ] \
    || fail "exit_codes.tsv has no header first"
codes=$(tail -n +2 "$RAIDER_BIDS_WORK/exit_codes.tsv" | cut -f4,5 | sort | tr '\n' ' ')
[ "$codes" = "$(printf '01\t0 02\t0 03\t0 group\t0 ')" ] || fail "exit codes: $codes"
for label in 01 02 03; do
    [ -f "$RAIDER_BIDS_WORK/sub-$label/raider-bids.log" ] || fail "no work dir log for sub-$label"
    # The job's --mem=4G reaches the app as its memory limit.
    grep -q '"4096MB"' "$OUT/sub-$label/anat/sub-${label}_provenance.json" || fail "sub-$label: no --mem 4096MB"
done
[ "$(input_hashes)" == "$before" ] || fail "the input changed"
"$PYTHON" scripts/check_demo_outputs.py "$OUT" - 01 02 03
if command -v bids-validator-deno >/dev/null; then
    bids-validator-deno "$OUT" >"$WORK/logs/validator.txt" 2>&1 || { tail -20 "$WORK/logs/validator.txt"; fail "bids-validator"; }
fi

step "stop the daemons"
stop
trap - EXIT
left=$(for daemon in slurmctld slurmd munged; do pgrep -x "$daemon" || true; done)
[ -z "$left" ] || fail "daemons still running: $left"
step "all SLURM checks passed"
