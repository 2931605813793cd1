#!/usr/bin/env bash
# The stateless-cluster benchmark of BENCHMARKS.md: RUNS runs of `cluster-bench` (3 brokers on
# etcd + Garage started by the harness on free loopback ports, 64 partitions, lease TTL 2 s),
# each printing one JSON line; then the median of every figure.
#
#   cargo build --release --bins
#   bash tests/bench/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
RUNS=${RUNS:-3}
OUT=${OUT:-/tmp/silt-bench-cluster.jsonl}
export SILT_BIN_DIR="$BIN"
export SILT_TEST_BROKER_LOG=${SILT_TEST_BROKER_LOG:-info}
: > "$OUT"
for run in $(seq 1 "$RUNS"); do
    "$BIN/cluster-bench" "$@" 2>/dev/null | tee -a "$OUT"
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
print(f"runs={len(runs)}", json.dumps({k: round(statistics.median(r[k] for r in runs), 3) for k in keys}))
PY
