#!/usr/bin/env bash
# The journal-retention benchmark (BENCHMARKS.md): N finished orders older than journal.retain,
# compacted offline (time, journal size before and after), then the same steady ingest load
# without and with the engine's background compaction running beside it, alternated PAIRS
# times (each run on a fresh copy of the journal, written back to disk before it starts).
# Usage:
#   scripts/retention-bench.sh [N] [RATE] [DURATION] [PAIRS]   (defaults: 1000000 1000 60s 2)
# Needs `cargo build --release -p orderhub-engine -p orderhub-loadgen -p orderhub-benches
# --examples` first; WORK=DIR keeps the data directories, logs and reports there (several GB
# for a million orders).
set -euo pipefail
n=${1:-1000000}; rate=${2:-1000}; duration=${3:-60s}; pairs=${4:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/target/release
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
size() { du -cb --apparent-size "$1"/orderhub.db* | tail -1 | cut -f1; }
fresh() { rm -rf "${work:?}/$1"; cp -a "$work/base" "$work/$1"; sync; sleep 3; }

echo "== filling $n finished orders (paid, then completed with contents), received 40 days ago"
rm -rf "$work/base"
"$bin/examples/fill_journal" "$work/base" "$n" --finished 40
# One start folds them into the order index (as after a crash), then a clean stop.
port=${ENGINE_PORT:-19180}
printf '[journal]\ncompact_every = "0s"\n' > "$work/fold.toml"
RUST_LOG=warn "$bin/orderhub" serve --config "$work/fold.toml" --data-dir "$work/base" \
  --listen "127.0.0.1:$port" > "$work/fold.log" 2>&1 &
pid=$!
until curl -fsS "http://127.0.0.1:$port/readyz" > /dev/null 2>&1; do sleep 0.5; done
kill -TERM "$pid"; wait "$pid"
echo "journal with $n finished orders: $(size "$work/base") bytes"

echo "== offline: orderhub compact"
fresh offline
/usr/bin/time -f "wall %e s, cpu %U+%S s, max RSS %M KB" "$bin/orderhub" compact --data-dir "$work/offline"
echo "journal after: $(size "$work/offline") bytes; archive: $(du -cb "$work/offline/archive" | tail -1 | cut -f1) bytes"

for i in $(seq "$pairs"); do
  for run in quiet busy; do
    fresh "$run"
    every='"0s"'; [ "$run" = busy ] && every='"1h"'   # busy: the first pass starts 10 s in
    echo "== $run $i: steady $rate/s for $duration, compact_every = $every"
    DATA_DIR=$work/$run ENGINE_EXTRA="[journal]\ncompact_every = $every" ENGINE_LOG=$work/$run-$i.log \
      ENGINE_RUST_LOG=info REPORT=$work/$run-$i.json "$root/scripts/capacity.sh" steady "$rate" "$duration" \
      | grep -E "^(ack|rate|syncs|engine|PASSED|FAILED)" || true
    grep -a "journal compacted" "$work/$run-$i.log" | sed 's/\x1b\[[0-9;]*m//g' \
      | grep -oE "(orders|took_ms|reclaimed_bytes)=[0-9]+" | tr '\n' ' ' || true
    echo
  done
done
