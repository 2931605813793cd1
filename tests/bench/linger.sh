#!/usr/bin/env bash
# Adaptive linger: produce ack latency and PUTs per second at steady rates, with it on
# (--idle-linger-ms 5, the default) and off (--idle-linger-ms equal to --linger-ms), against one
# broker on its embedded defaults (embedded metadata, objects in a local directory), default
# linger 250 ms. Each rate runs DURATION seconds of 1 KiB records (`silt bench produce --rate`,
# one producer, client linger 5 ms); PUTs are the broker's object-store PUT counter.
#
#   cargo build --release --bins --features silt-broker/etcd
#   bash tests/bench/linger.sh        # RATES="4 1000 10000" DURATION=15 LINGER_MS=250 CONCURRENCY=1
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
RATES=${RATES:-4 1000 10000}
DURATION=${DURATION:-15}
LINGER_MS=${LINGER_MS:-250}
# shellcheck source=tests/bench/lib.sh
source tests/bench/lib.sh
bench_init linger

start_broker() {
    local log="$work/$1"; shift
    "$BIN/silt-broker" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir "$work/data-$RANDOM" \
        --linger-ms "$LINGER_MS" "$@" 2> "$log" &
    broker_pid=$!
    for _ in $(seq 1 600); do
        grep -q "serving gRPC on" "$log" 2>/dev/null && grep -q "/readyz) on" "$log" && break; sleep 0.05
    done
    addr=$(grep -o "serving gRPC on [0-9.:]*" "$log" | awk '{print $4}')
    admin=$(grep -o "/readyz) on [0-9.:]*" "$log" | awk '{print $3}')
}
stop_broker() { kill "$broker_pid"; wait "$broker_pid" 2>/dev/null || true; broker_pid=""; }
puts() { curl -s "http://$admin/metrics" | awk 'index($0, "silt_object_store_requests_total") == 1 && index($0, "op=\"put\"") { s += $NF } END { printf "%.0f\n", s }'; }

echo "== machine: $(machine_line); linger $LINGER_MS ms"
for idle in 5 "$LINGER_MS"; do
    label=$([ "$idle" = "$LINGER_MS" ] && echo "adaptive linger off" || echo "adaptive linger on (--idle-linger-ms $idle)")
    echo "== $label"
    start_broker "broker-$idle.log" --idle-linger-ms "$idle"
    for rate in $RATES; do
        topic="t-$rate"
        "$BIN/silt" --broker "http://$addr" topic create "$topic" --partitions 8 >/dev/null
        p0=$(puts)
        t0=$(date +%s%3N)
        out=$("$BIN/silt" --broker "http://$addr" bench produce --topic "$topic" --records $(( rate * DURATION )) \
            --rate "$rate" --concurrency "${CONCURRENCY:-1}" --linger-ms 5 --json)
        t1=$(date +%s%3N)
        p1=$(puts)
        python3 - "$out" "$rate" "$((p1 - p0))" "$((t1 - t0))" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); rate = int(sys.argv[2]); puts = int(sys.argv[3]); ms = int(sys.argv[4])
print(f"  {rate:>6} records/s ({rate / 1024:.3g} MiB/s): ack p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms; {puts / (ms / 1000):.2f} PUTs/s")
PY
    done
    stop_broker
done
