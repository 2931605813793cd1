#!/usr/bin/env bash
# etcd's database under a long run of tiny flushes, with and without the controller's history
# compaction (BENCHMARKS.md, "etcd's history"). One broker on etcd metadata (a fresh etcd per
# case, on free loopback ports) and a local object directory, --linger-ms 10, with compaction of
# objects on (4 MiB objects, due after 10 s, so flush keys come and go as in a long run),
# produces 1 KiB records at RATE records/s for MINUTES minutes; every SAMPLE_S
# seconds the script prints etcd's revision, key count and database size (file and in use).
#
#   cargo build --release --bins --features silt-broker/etcd
#   bash tests/bench/etcd-history.sh          # MINUTES=4 RATE=2000 HISTORY_MS=60000
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
MINUTES=${MINUTES:-4}
RATE=${RATE:-2000}
SAMPLE_S=${SAMPLE_S:-30}
HISTORY_MS=${HISTORY_MS:-60000}
work=$(mktemp -d "${TMPDIR:-/tmp}/silt-bench-etcd-history.XXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
for tool in etcd etcdctl python3; do
    command -v "$tool" >/dev/null || { echo "this benchmark needs $tool (apt-get install etcd-server etcd-client)" >&2; exit 1; }
done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

status() {
    "${E[@]}" endpoint status --write-out=json | python3 -c '
import json, sys
s = json.load(sys.stdin)[0]["Status"]
print("revision %d, DB %.1f MiB (in use %.1f MiB)" % (s["header"]["revision"], s["dbSize"] / 2**20, s["dbSizeInUse"] / 2**20))'
}

# run NAME HISTORY_MS: one case on a fresh etcd.
run() {
    local name=$1 history=$2 dir=$work/$1
    mkdir -p "$dir"
    local port peer
    port=$(free_port); peer=$(free_port)
    etcd --name=silt-bench --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$port" \
        --advertise-client-urls "http://127.0.0.1:$port" --listen-peer-urls "http://127.0.0.1:$peer" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "silt-bench=http://127.0.0.1:$peer" > "$dir/etcd.log" 2>&1 &
    local etcd_pid=$!
    pids+=("$etcd_pid")
    E=(etcdctl --endpoints "127.0.0.1:$port")
    for _ in $(seq 1 200); do "${E[@]}" endpoint health >/dev/null 2>&1 && break; sleep 0.05; done
    "$BIN/silt-broker" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir "$dir/broker" \
        --linger-ms 10 --metadata "etcd://127.0.0.1:$port" --cluster bench \
        --retention-check-ms 5000 --gc-grace-ms 10000 --compaction-min-age-ms 10000 \
        --compaction-max-delay-ms 10000 --compaction-target-bytes 4MiB \
        --metadata-history-ms "$history" 2> "$dir/broker.log" &
    local broker_pid=$!
    pids+=("$broker_pid")
    for _ in $(seq 1 600); do grep -q "serving gRPC on" "$dir/broker.log" && break; sleep 0.05; done
    local addr
    addr=$(grep -o "serving gRPC on [0-9.:]*" "$dir/broker.log" | awk '{print $4}')
    "$BIN/silt" --broker "http://$addr" topic create t --partitions 8 >/dev/null
    echo "== $name (--metadata-history-ms $history): $RATE records/s of 1 KiB for $MINUTES min, linger 10 ms"
    local records=$(( RATE * MINUTES * 60 ))
    "$BIN/silt" --broker "http://$addr" bench produce --topic t --records "$records" --rate "$RATE" \
        --concurrency 2 --json > "$dir/produce.json" &
    local producer=$!
    local t=0
    while kill -0 "$producer" 2>/dev/null; do
        echo "  t=${t}s: $(status), $("${E[@]}" get --prefix --keys-only /silt/ | grep -c '^/silt/') keys"
        sleep "$SAMPLE_S"; t=$(( t + SAMPLE_S ))
    done
    wait "$producer"
    python3 -c "import json,sys; r = json.load(open(sys.argv[1])); print('  produced %d records, %d flushes, ack p50 %.1f ms' % (r['records'], r['flushes'], r['p50_ms']))" "$dir/produce.json"
    echo "  end: $(status)"
    kill "$broker_pid" "$etcd_pid"; wait "$broker_pid" "$etcd_pid" 2>/dev/null || true
}

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
run without 0
run with "$HISTORY_MS"
