#!/usr/bin/env bash
# Is the produce pipeline ever the bottleneck? Against an in-process store that costs what a
# remote S3-compatible one does per request (`memory://?latency_ms=L&mib_per_s=B`: L ms to first
# byte, then B MiB/s per request, requests overlapping), compare:
#   raw:     `silt bench object-store`, 8 MiB PUTs, 4 in flight (the broker's flush size and
#            --max-inflight-flushes defaults);
#   produce: one broker (in-memory metadata) on the same store, `silt bench produce --replay`
#            (8 senders of pre-encoded 1 KiB-record batches), RUNS runs.
# The ratio produce / raw says how much of the store's throughput the pipeline delivers.
#
#   cargo build --release --bins --features silt-broker/etcd
#   bash tests/bench/pipeline.sh      # STORES="30:20 30:64" RUNS=3
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
STORES=${STORES:-30:20 30:64}
RUNS=${RUNS:-3}
# shellcheck source=tests/bench/lib.sh
source tests/bench/lib.sh
bench_init pipeline
field() { python3 -c "import json, sys; print(json.load(sys.stdin)['$1'])"; }

echo "== machine: $(machine_line)"
for store in $STORES; do
    latency=${store%%:*}; bandwidth=${store##*:}
    url="memory://?latency_ms=$latency&mib_per_s=$bandwidth"
    echo "== store: $latency ms to first byte, $bandwidth MiB/s per request"
    raw=$("$BIN/silt" bench object-store --object-store "$url" --object-size 8MiB \
        --total-bytes "$(( bandwidth * 32 ))MiB" --concurrency 4 --json | field mib_per_s)
    echo "  raw 8 MiB PUTs, 4 in flight: $raw MiB/s"
    log="$work/broker-$store.log"
    "$BIN/silt-broker" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir "$work/data-$store" \
        --metadata memory --object-store "$url" 2> "$log" &
    broker_pid=$!
    for _ in $(seq 1 200); do grep -q "serving gRPC on" "$log" 2>/dev/null && break; sleep 0.05; done
    addr=$(grep -o "serving gRPC on [0-9.:]*" "$log" | awk '{print $4}')
    for run in $(seq 1 "$RUNS"); do
        mib=$("$BIN/silt" --broker "http://$addr" bench produce --topic "t$run" \
            --records $(( bandwidth * 32 * 1024 )) --record-size 1KiB --concurrency 8 --replay --json | field mib_per_s)
        echo "  produce run $run: $mib MiB/s = $(python3 -c "print(f'{$mib / $raw:.2f}')") of raw"
    done
    kill "$broker_pid"; wait "$broker_pid" 2>/dev/null || true; broker_pid=""
done
