#!/usr/bin/env bash
# Low-latency mode (BENCHMARKS.md, "Low-latency mode"): one broker with --linger-ms 10 on etcd
# metadata and a local MinIO, produce at moderate, steady rates (`silt bench produce --rate`, not
# saturated) with every record also read back by push-subscribe streams (`--subscribe`): produce
# ack p50/p99 and put -> subscribe delivery p50/p99, RUNS runs per rate (a fresh broker each),
# then medians.
#
#   cargo build --release --bins --features silt-broker/etcd
#   bash deploy/local/etcd-minio.sh start     # etcd :2379, MinIO :9000
#   bash tests/bench/latency.sh               # RATES="1000 5000" DURATION=20 RUNS=3 LINGER_MS=10
#                                             # CONCURRENCY=2 CLIENT_LINGER_MS=5 (the producer's linger)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
RATES=${RATES:-1000 5000}
DURATION=${DURATION:-20}
RUNS=${RUNS:-3}
LINGER_MS=${LINGER_MS:-10}
CONCURRENCY=${CONCURRENCY:-2}
CLIENT_LINGER_MS=${CLIENT_LINGER_MS:-5}
OUT=${OUT:-/tmp/silt-bench-latency.jsonl}
LOCAL=${SILT_LOCAL_DIR:-./silt-local}
[ -x "$BIN/silt-broker" ] || { echo "no $BIN/silt-broker: cargo build --release --bins --features silt-broker/etcd" >&2; exit 1; }
# shellcheck source=tests/bench/lib.sh
source tests/bench/lib.sh
need_local_store "$LOCAL" minio
bench_init latency
: > "$OUT"

echo "== machine: $(machine_line); linger $LINGER_MS ms, $CONCURRENCY producers (linger $CLIENT_LINGER_MS ms), ${DURATION} s per run"
for run in $(seq 1 "$RUNS"); do
    for rate in $RATES; do
        dir=$(mktemp -d "$work/run.XXXX")
        cluster="bench-latency-$run-$rate-$$"
        "$BIN/silt-broker" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir "$dir" \
            --linger-ms "$LINGER_MS" --metadata etcd://127.0.0.1:2379 --cluster "$cluster" \
            --object-store "s3://silt/$cluster" --s3-endpoint http://127.0.0.1:9000 \
            --s3-region us-east-1 --create-bucket 2> "$dir/broker.log" &
        pid=$!
        addr=$(broker_addr "$dir/broker.log")
        out=$("$BIN/silt" --broker "http://$addr" bench produce --topic l --partitions 8 \
            --records $(( rate * DURATION )) --rate "$rate" --concurrency "$CONCURRENCY" \
            --linger-ms "${CLIENT_LINGER_MS:-5}" --subscribe --json)
        echo "{\"rate\":$rate,\"run\":$run,\"result\":$out}" | tee -a "$OUT" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read()); x = r["result"]
print("  rate %d/s run %d: ack p50 %.1f p99 %.1f ms; delivery p50 %.1f p99 %.1f ms; %d flushes" % (
    r["rate"], r["run"], x["p50_ms"], x["p99_ms"], x["delivery_p50_ms"], x["delivery_p99_ms"], x["flushes"]))'
        kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    done
done

python3 - "$OUT" <<'PY'
import collections, json, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs[r["rate"]].append(r["result"])
for rate, rs in sorted(runs.items()):
    m = {k: statistics.median(x[k] for x in rs) for k in ("p50_ms", "p99_ms", "delivery_p50_ms", "delivery_p99_ms", "mib_per_s")}
    print(f"rate {rate}/s ({m['mib_per_s']:.1f} MiB/s), median of {len(rs)}: ack p50 {m['p50_ms']:.1f} ms, p99 {m['p99_ms']:.1f} ms; "
          f"delivery p50 {m['delivery_p50_ms']:.1f} ms, p99 {m['delivery_p99_ms']:.1f} ms")
PY
