#!/usr/bin/env bash
# One capacity measurement on this machine: sink simulators, the engine on a fresh data dir,
# and loadgen, all on loopback. Usage:
#   scripts/capacity.sh PROFILE RATE DURATION [extra loadgen args...]
# e.g. scripts/capacity.sh steady 2000 30s --max-p99 50
# Needs `cargo build --release -p orderhub-engine -p orderhub-loadgen` first.
# Optional environment: ENGINE_BIN (another orderhub binary, for A/B runs), DATA_DIR (an existing data directory instead of a fresh one),
# ENGINE_EXTRA (TOML appended to the engine's config), ENGINE_LOG (keep the engine's log there)
# and ENGINE_RUST_LOG (its log filter, default warn). DETAILS=1 makes the simulators serve the
# Douyin and Youzan order APIs too and turns the engine's order-detail enrichment on against
# them, so the run includes one detail fetch per order (and one more on paid).
set -euo pipefail
profile=${1:?profile}; rate=${2:?rate}; duration=${3:?duration}; shift 3
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/target/release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

export ORDERHUB_DOUYIN_APP_KEY=${ORDERHUB_DOUYIN_APP_KEY:-capacity}
export ORDERHUB_DOUYIN_APP_SECRET=${ORDERHUB_DOUYIN_APP_SECRET:-capacity-secret}
export ORDERHUB_EVENTS_SECRET=${ORDERHUB_EVENTS_SECRET:-whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD}
sinks_port=${SINKS_PORT:-19100}; engine_port=${ENGINE_PORT:-19180}
sink_rate=${SINK_RATE:-100000/s}
details_flag=""
if [ "${DETAILS:-0}" = 1 ]; then
  details_flag="--details"
  export ORDERHUB_DOUYIN_SHOP_ID=capacity-shop ORDERHUB_YOUZAN_KDT_ID=capacity-kdt
  export ORDERHUB_YOUZAN_CLIENT_ID=${ORDERHUB_YOUZAN_CLIENT_ID:-capacity} ORDERHUB_YOUZAN_CLIENT_SECRET=${ORDERHUB_YOUZAN_CLIENT_SECRET:-capacity-secret}
fi

{
  echo 'sla = []'
  for name in erp wms notify; do
    printf '[[sinks]]\nname = "%s"\nkind = "webhook"\nurl = "http://127.0.0.1:%s/%s"\nrate = "%s"\nmax_in_flight = 64\n\n' \
      "$name" "$sinks_port" "$name" "$sink_rate"
  done
  if [ -n "$details_flag" ]; then
    printf '[sources.douyin.details]\ngateway = "http://127.0.0.1:%s"\nshop_id_env = "ORDERHUB_DOUYIN_SHOP_ID"\nrate = "100000/s"\nmax_in_flight = 64\n\n' "$sinks_port"
    printf '[sources.youzan.details]\ngateway = "http://127.0.0.1:%s"\nshop_id_env = "ORDERHUB_YOUZAN_KDT_ID"\nrate = "100000/s"\nmax_in_flight = 64\n\n' "$sinks_port"
  fi
  printf '%b\n' "${ENGINE_EXTRA:-}"
} > "$work/engine.toml"
data_dir=${DATA_DIR:-$work/data}
engine_log=${ENGINE_LOG:-$work/engine.log}

"$bin/loadgen" sinks --listen "127.0.0.1:$sinks_port" --latency 1ms..5ms $details_flag > "$work/sinks.log" 2>&1 &
RUST_LOG=${ENGINE_RUST_LOG:-warn} "${ENGINE_BIN:-$bin/orderhub}" serve --config "$work/engine.toml" --data-dir "$data_dir" \
  --listen "127.0.0.1:$engine_port" > "$engine_log" 2>&1 &
engine_pid=$!
for _ in $(seq 600); do
  curl -fsS "http://127.0.0.1:$engine_port/readyz" > /dev/null 2>&1 && break
  sleep 0.1
done
"$bin/loadgen" run --target "http://127.0.0.1:$engine_port" --sinks "http://127.0.0.1:$sinks_port" \
  --profile "$profile" --rate "$rate" --duration "$duration" --engine-pid "$engine_pid" \
  --quiet --report "${REPORT:-$root/target/capacity-report.json}" "$@"
