#!/usr/bin/env bash
# The closed-loop capacity benchmark of issue 12 on this machine: a webhook sink simulator
# answering at once, the engine on a fresh data directory with one rule syncing paid, packed
# and in_transit to it (rate 1000000/s, burst 1000, max_in_flight 256) and the default SLA
# rules, then `loadgen lifecycle`. Usage:
#   scripts/lifecycle.sh [ORDERS] [BATCH] [extra loadgen lifecycle args...]
# e.g. scripts/lifecycle.sh 20000 1      # one event per request
#      scripts/lifecycle.sh 20000 50     # 50 events per request
# Needs `cargo build --release -p orderhub-engine -p orderhub-loadgen` first.
# Optional environment: ENGINE_BIN (another orderhub binary, for A/B runs), METRICS_OUT (see the end), DATA_DIR (an existing data directory), ENGINE_EXTRA (TOML appended to
# the engine's config), ENGINE_LOG (keep the engine's log there), ENGINE_WRAP (a command the
# engine runs under, e.g. "valgrind --tool=callgrind"), REPORT (the JSON report's path),
# WALSTAT=1 (the engine never checkpoints; at the end scripts/walstat.py attributes every page
# it wrote to the WAL to its table or index — keep ORDERS small, the WAL keeps everything).
set -euo pipefail
orders=${1:-20000}; batch=${2:-1}; shift $(( $# < 2 ? $# : 2 ))
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/target/release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

export ORDERHUB_EVENTS_SECRET=${ORDERHUB_EVENTS_SECRET:-whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD}
sinks_port=${SINKS_PORT:-19200}; engine_port=${ENGINE_PORT:-19280}

cat > "$work/engine.toml" <<TOML

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

$(printf '%b' "${ENGINE_EXTRA:-}")
TOML
data_dir=${DATA_DIR:-$work/data}
engine_log=${ENGINE_LOG:-$work/engine.log}

"$bin/loadgen" sinks --listen "127.0.0.1:$sinks_port" --latency 0ms..0ms > "$work/sinks.log" 2>&1 &
sinks_pid=$!
if [ -n "${WALSTAT:-}" ]; then export ORDERHUB_DEBUG_WAL_AUTOCHECKPOINT=0; fi
RUST_LOG=${ENGINE_RUST_LOG:-warn} ${ENGINE_WRAP:-} "${ENGINE_BIN:-$bin/orderhub}" serve --config "$work/engine.toml" \
  --data-dir "$data_dir" --listen "127.0.0.1:$engine_port" > "$engine_log" 2>&1 &
engine_pid=$!
for _ in $(seq 1200); do
  curl -fsS "http://127.0.0.1:$engine_port/readyz" > /dev/null 2>&1 && break
  sleep 0.1
done
# The two cores' budget over loadgen's run: the host's busy CPU (/proc/stat, all processes
# and the kernel) and the sink simulator's own, printed after loadgen's report, so a reader
# can tell how much of the machine the engine had.
# (A process that is gone counts 0: the budget line must never cost loadgen's exit status.)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
host_busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat; }
read -r busy_before idle_before < <(host_busy); sinks_before=$(cpu_ticks "$sinks_pid")
"$bin/loadgen" lifecycle --target "http://127.0.0.1:$engine_port" --sinks "http://127.0.0.1:$sinks_port" \
  --orders "$orders" --batch "$batch" --engine-pid "$engine_pid" \
  --report "${REPORT:-$root/target/lifecycle-report.json}" "$@" || status=$?
read -r busy_after idle_after < <(host_busy); sinks_after=$(cpu_ticks "$sinks_pid")
hz=$(getconf CLK_TCK)
sinks_requests=$(curl -fsS "http://127.0.0.1:$sinks_port/_records" 2>/dev/null \
  | python3 -c 'import json,sys; print(sum(r["count"] for r in json.load(sys.stdin)))' 2>/dev/null || echo 0)
awk -v b=$(( busy_after - busy_before )) -v i=$(( idle_after - idle_before )) \
    -v s=$(( sinks_after - sinks_before )) -v hz="$hz" -v n="$sinks_requests" -v cores="$(grep -c '^cpu[0-9]' /proc/stat)" 'BEGIN {
  if (b + i == 0) exit
  t = (b + i) / hz / cores
  printf "host over the run: %.2f of %d cores busy (all processes and the kernel); sink simulator %.2f cores", b / hz / t, cores, s / hz / t
  if (n > 0) printf ", %.0f us per sync it received", s / hz * 1e6 / n
  printf "\n"
}' || true
# METRICS_OUT=FILE keeps the engine's /metrics as they stood at the end of the run.
if [ -n "${METRICS_OUT:-}" ]; then
  curl -fsS "http://127.0.0.1:$engine_port/metrics" > "$METRICS_OUT" || true
fi
if [ -n "${WALSTAT:-}" ]; then
  python3 "$root/scripts/walstat.py" "$data_dir/orderhub.db" "$data_dir/orderhub.db-wal" $(( orders * 5 ))
fi
exit "${status:-0}"
