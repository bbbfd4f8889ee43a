#!/usr/bin/env bash
# How long a node takes to rebuild partitions it never held, from snapshots or by replaying the
# stream: one NATS JetStream server, engine a in cluster mode (64 partitions, one replica) takes
# ORDERS order lifecycles from `loadgen lifecycle` (five events each, one rule syncing three of
# them), then engine b starts on an empty data directory and a stops (SIGTERM: its leases are
# released at once), so b takes every partition. Usage:
#   scripts/cluster-rebuild.sh [ORDERS] [snapshots|replay]
# `snapshots`: a snapshots every 2s, and b starts once a's snapshots cover everything;
# `replay`: a never snapshots during the run, so b replays the whole stream.
# Prints the snapshots' size in the object store, then how long b took from its start until it
# had every partition's events in its journal and its order index (every one of the ORDERS x 5
# events appended, none waiting to be indexed) and the CPU it spent.
# Needs `cargo build --release -p orderhub-engine -p orderhub-loadgen` and nats-server 2.15 on
# PATH (pip install --require-hashes -r .ci/requirements-nats.txt).
set -euo pipefail
orders=${1:-20000}; mode=${2:-snapshots}
case "$mode" in
  snapshots) every=2s ;;
  replay) every=1000h ;;
  *) echo "mode is snapshots or replay, not $mode" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/target/release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
command -v nats-server > /dev/null || { echo "nats-server is not on PATH" >&2; exit 1; }

export ORDERHUB_EVENTS_SECRET=${ORDERHUB_EVENTS_SECRET:-whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD}
sinks_port=${SINKS_PORT:-19300}; engine_port=${ENGINE_PORT:-19380}
nats_port=${NATS_PORT:-19520}; monitor_port=$((nats_port + 1))

nats-server -a 127.0.0.1 -p "$nats_port" -m "$monitor_port" -js -sd "$work/nats" > "$work/nats.log" 2>&1 &
for node in a b; do
  cat > "$work/$node.toml" <<TOML
[[sinks]]
name = "erp"
kind = "webhook"
url = "http://127.0.0.1:$sinks_port/erp"
rate = "1000000/s"
burst = 1000
max_in_flight = 256

[[rules]]
name = "erp_on_progress"
when = 'order.state in ["paid", "packed", "in_transit"]'
sync = "erp"
operation = "progress"

[cluster]
nats = ["nats://127.0.0.1:$nats_port"]
node = "$node"
partitions = 64
replicas = 1
lease_ttl = "6s"
snapshot_every = "$every"
TOML
done

metric() { # metric PORT NAME [LABELS]: the sample's value, 0 when absent
  local name=$2
  if [ -n "${3:-}" ]; then name="$2{$3}"; fi
  curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null \
    | awk -v name="$name" '$1 == name {print $2; found=1} END {if (!found) print 0}'
}
cpu_seconds() { # the process's user + system CPU, in seconds
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"
}
wait_ready() {
  for _ in $(seq 600); do
    curl -fsS "http://127.0.0.1:$1/readyz" > /dev/null 2>&1 && return
    sleep 0.1
  done
  echo "engine on $1 never became ready" >&2; exit 1
}

"$bin/loadgen" sinks --listen "127.0.0.1:$sinks_port" --latency 0ms..0ms > "$work/sinks.log" 2>&1 &
RUST_LOG=warn,orderhub_engine::cluster::snapshot=debug NO_COLOR=1 "$bin/orderhub" serve --config "$work/a.toml" --data-dir "$work/a" \
  --listen "127.0.0.1:$engine_port" > "$work/a.log" 2>&1 &
a_pid=$!
wait_ready "$engine_port"
"$bin/loadgen" lifecycle --target "http://127.0.0.1:$engine_port" --sinks "http://127.0.0.1:$sinks_port" \
  --orders "$orders" --batch 50 --report "$work/lifecycle.json" > "$work/lifecycle.log" 2>&1 \
  || { cat "$work/lifecycle.log" >&2; exit 1; }
echo "a applied $orders orders ($((orders * 5)) events)"

if [ "$mode" = snapshots ]; then
  # Snapshots cover everything once a round writes nothing (no partition moved since).
  last=-1
  while :; do
    written=$(metric "$engine_port" orderhub_cluster_snapshots_total 'outcome="written"')
    [ "$written" = "$last" ] && break
    last=$written
    sleep 5
  done
  grep 'partition snapshots written' "$work/a.log" | tail -1 | sed 's/.*partitions=\([0-9]*\).*took_ms=\([0-9]*\).*/last full round on a: \1 partitions in \2 ms/'
  curl -fsS "http://127.0.0.1:$monitor_port/jsz?streams=true" | python3 -c '
import json, sys
for account in json.load(sys.stdin).get("account_details") or []:
    for stream in account.get("stream_detail") or []:
        if stream["name"] in ("OBJ_orderhub_snapshots", "ORDERHUB_EVENTS"):
            state = stream["state"]
            print("%s: %.1f MB in %d messages" % (stream["name"], state["bytes"] / 1e6, state["messages"]))'
fi

started=$(date +%s.%N)
RUST_LOG=info "$bin/orderhub" serve --config "$work/b.toml" --data-dir "$work/b" \
  --listen "127.0.0.1:$((engine_port + 1))" > "$work/b.log" 2>&1 &
b_pid=$!
wait_ready "$((engine_port + 1))"
kill -TERM "$a_pid"
while :; do
  owned=$(metric "$((engine_port + 1))" orderhub_cluster_partitions_owned)
  appended=$(metric "$((engine_port + 1))" orderhub_journal_appended_events_total)
  unindexed=$(metric "$((engine_port + 1))" orderhub_journal_index_backlog)
  [ "$owned" = 64 ] && [ "$appended" = "$((orders * 5))" ] && [ "$unindexed" = 0 ] && break
  if [ "$(echo "$(date +%s.%N) - $started > 300" | bc)" = 1 ]; then
    echo "b did not finish in 5 minutes: owned $owned, appended $appended, unindexed $unindexed" >&2
    tail -20 "$work/b.log" >&2; exit 1
  fi
  sleep 0.1
done
finished=$(date +%s.%N)
restored=$(metric "$((engine_port + 1))" orderhub_cluster_snapshots_total 'outcome="restored"')
printf 'b (%s): every partition applied %.1f s after it started, %.1f s of CPU, %s partitions restored from snapshots\n' \
  "$mode" "$(echo "$finished - $started" | bc)" "$(cpu_seconds "$b_pid")" "$restored"
