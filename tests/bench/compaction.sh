#!/usr/bin/env bash
# The data-lifecycle figures of BENCHMARKS.md, against ONE broker on etcd metadata and a local
# object directory (both started here on free loopback ports, in a temporary directory):
#   1. history: SIZE_MIB of 1 KiB records into PARTITIONS (8) partitions at WRITE_RATE records/s with
#      --linger-ms 10 (so flushes are 10 ms windows, not 8 MiB ones) and compaction off — the
#      etcd keys, etcd DB size and objects it leaves;
#   2. a cold read of it (the broker restarted: empty read cache): MiB/s, and GETs per MiB;
#      broker start-up time and memory with this history;
#   3. compaction on (64 MiB objects, unthrottled): how long it takes, MiB/s it copies; then
#      the same keys, DB size, objects, cold read and start-up;
#   4. produce ack latency at a moderate rate (RATE records/s, 1 KiB) with compaction idle vs
#      while the default-throttled compaction (32 MiB/s) copies a second history;
#   5. key compaction: SIZE_MIB of 1 KiB records over KEYS keys into a topic with
#      --cleanup-policy compact, written with compaction off, then compacted unthrottled: how
#      long it takes, MiB/s it reads, what is left, and a cold read of it.
#
#   cargo build --release --bins --features silt-broker/etcd
#   bash tests/bench/compaction.sh            # SIZE_MIB=1024 RATE=5000 RUNS=3
#   ONLY=produce COMPACT_ARGS="--compaction-bytes-per-sec 8MiB" bash tests/bench/compaction.sh
#   ONLY=keys KEYS=100000 bash tests/bench/compaction.sh   # (ONLY=history: sections 1-3)
#   HISTORY_ARGS="--compaction-target-bytes 8MiB --index-page-parts 2" ONLY=history ...
#     (broker settings for section 3 and the cold reads after it, e.g. index pages)
#   GC_GRACE_MS=300000 ONLY=produce ...     # --gc-grace-ms (2000): a local write of a compacted object must end within half of it
#   OBJECTS_DIR=/dev/shm ONLY=produce ...   # objects (in a new directory there) off the disk etcd and the broker use
#     (as a remote object store is): what compaction's own disk traffic costs produce
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
SIZE_MIB=${SIZE_MIB:-1024}
RATE=${RATE:-5000}
WRITE_RATE=${WRITE_RATE:-20000}
RUNS=${RUNS:-3}
KEYS=${KEYS:-100000}
PARTITIONS=${PARTITIONS:-8}
work=$(mktemp -d "${TMPDIR:-/tmp}/silt-bench-compaction.XXXX")
objects_dir=$(mktemp -d "${OBJECTS_DIR:-$work}/objects.XXXX")
pids=()
broker_pid=""
cleanup() {
    [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null || true
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work" "$objects_dir"
}
trap cleanup EXIT
for tool in etcd etcdctl curl python3; do
    command -v "$tool" >/dev/null || { echo "this benchmark needs $tool (etcd, etcdctl: apt-get install etcd-server etcd-client)" >&2; exit 1; }
done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }

etcd_port=$(free_port); peer_port=$(free_port)
etcd --name=silt-bench --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "silt-bench=http://127.0.0.1:$peer_port" > "$work/etcd.log" 2>&1 &
pids+=($!)
E=(etcdctl --endpoints "127.0.0.1:$etcd_port")
for _ in $(seq 1 200); do "${E[@]}" endpoint health >/dev/null 2>&1 && break; sleep 0.05; done

# start_broker LOG ARGS...: starts the broker, waits until /readyz answers 200; sets addr,
# admin, broker_pid and startup_ms (how long that took).
start_broker() {
    local log=$1; shift
    local t0; t0=$(now_ms)
    "$BIN/silt-broker" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir "$work/broker" \
        --linger-ms 10 --metadata "etcd://127.0.0.1:$etcd_port" --cluster bench \
        --object-store "file://$objects_dir" --retention-check-ms 1000 --gc-grace-ms "${GC_GRACE_MS:-2000}" "$@" 2> "$work/$log" &
    broker_pid=$!
    for _ in $(seq 1 1200); do
        grep -q "serving gRPC on" "$work/$log" 2>/dev/null && grep -q "/readyz) on" "$work/$log" && break; sleep 0.05
    done
    admin=$(grep -o "/readyz) on [0-9.:]*" "$work/$log" | awk '{print $3}')
    addr=$(grep -o "serving gRPC on [0-9.:]*" "$work/$log" | awk '{print $4}')
    for _ in $(seq 1 1200); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$admin/readyz")" = 200 ] && break; sleep 0.02
    done
    startup_ms=$(( $(now_ms) - t0 ))
}
stop_broker() { [ -n "$broker_pid" ] || return 0; kill "$broker_pid"; wait "$broker_pid" 2>/dev/null || true; broker_pid=""; }
metric() { curl -s "http://$admin/metrics" | awk -v n="$1" -v l="$2" 'index($0, n) == 1 && index($0, l) { s += $NF } END { printf "%.0f\n", s }'; }
rss_mib() { awk '/VmRSS/ { printf "%.0f\n", $2 / 1024 }' "/proc/$broker_pid/status"; }
keys() { "${E[@]}" get --prefix --keys-only "/silt/bench/$1" | grep -c '^/silt/' || true; }
db_size() {
    "${E[@]}" endpoint status --write-out=json | python3 -c '
import json, sys
s = json.load(sys.stdin)[0]["Status"]
print("%.1f MiB (in use %.1f MiB)" % (s["dbSize"] / 2**20, s["dbSizeInUse"] / 2**20))'
}
objects() { find "$objects_dir" -name '*.seg' | wc -l; }
pages() { find "$objects_dir" -name '*.idx' | wc -l; }
archives() { find "$objects_dir" -name '*.ida' | wc -l; }
# The largest index root's value, in bytes.
root_bytes() {
    "${E[@]}" get --prefix "/silt/bench/index/" -w json | python3 -c '
import base64, json, sys
kvs = json.load(sys.stdin).get("kvs", [])
print(max((len(base64.b64decode(kv["value"])) for kv in kvs), default=0))'
}
report_state() {
    echo "  etcd keys: $(keys segments/) segment, $(keys parts/) compacted, $(keys index/) index roots (largest $(root_bytes) bytes), $(keys '') in all; etcd DB $(db_size); objects $(objects) + $(pages) index pages + $(archives) index archives"
}
cold_read() {
    local topic=${READ_TOPIC:-history}
    for run in $(seq 1 "$RUNS"); do
        stop_broker
        start_broker "broker-read-$run.log" "$@"
        local ms=$startup_ms
        local rss; rss=$(rss_mib)
        local gets0; gets0=$(metric silt_object_store_requests_total 'op="get"')
        local out; out=$("$BIN/silt" --broker "http://$addr" bench consume --topic "$topic" --json)
        local gets1; gets1=$(metric silt_object_store_requests_total 'op="get"')
        local page_loads; page_loads=$(metric silt_index_page_loads_total '')
        python3 - "$out" "$ms" "$rss" "$((gets1 - gets0))" "$page_loads" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); mib = r["fetched_bytes"] / 2**20
print(f"  cold read: {mib:.0f} MiB at {r['mib_per_s']:.1f} MiB/s, {int(sys.argv[4])} GETs = {int(sys.argv[4]) / mib:.2f} GETs/MiB ({sys.argv[5]} of them index pages or archives); start-up {sys.argv[2]} ms, RSS after start {sys.argv[3]} MiB")
PY
    done
}

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
records=$(( SIZE_MIB * 1024 ))
if [ -z "${ONLY:-}" ] || [ "$ONLY" = history ]; then
start_broker broker-write.log --compaction-target-bytes 0
"$BIN/silt" --broker "http://$addr" topic create history --partitions "$PARTITIONS" --retention-ms -1 >/dev/null
echo "== 1. history: $SIZE_MIB MiB of 1 KiB records at $WRITE_RATE/s, $PARTITIONS partitions, linger 10 ms, compaction off"
"$BIN/silt" --broker "http://$addr" bench produce --topic history --records "$records" --concurrency 4 --rate "$WRITE_RATE" --json >/dev/null
report_state
echo "== 2. cold reads before compaction ($RUNS runs)"
cold_read --compaction-target-bytes 0

echo "== 3. compaction on: unthrottled, ${HISTORY_ARGS:-64 MiB objects, 16 per index page}"
stop_broker
t0=$(now_ms)
start_broker broker-compact.log --compaction-min-age-ms 0 --compaction-max-delay-ms 0 \
    --compaction-check-ms 200 --compaction-bytes-per-sec 4GiB ${HISTORY_ARGS:-}
for _ in $(seq 1 6000); do [ "$(keys segments/)" = 0 ] && break; sleep 0.1; done
t1=$(now_ms)
copied=$(metric silt_compaction_bytes_total '')
# Roll-up follows compaction pass by pass: wait until the compacted keys stop changing.
last=-1
for _ in $(seq 1 600); do now=$(keys parts/); [ "$now" = "$last" ] && break; last=$now; sleep 1; done
echo "  compacted $((copied / 1048576)) MiB in $((t1 - t0)) ms (from broker start): $(python3 -c "print(f'{$copied/2**20/(($t1-$t0)/1000):.0f}')") MiB/s"
sleep 3 # the grace period, so the flush segments' objects are gone
report_state
"${E[@]}" compact --physical "$("${E[@]}" endpoint status --write-out=json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])')" >/dev/null
"${E[@]}" defrag >/dev/null
echo "  after etcd compact + defrag: DB $(db_size)"
echo "== cold reads after compaction ($RUNS runs)"
cold_read --compaction-min-age-ms 0 --compaction-max-delay-ms 0 ${HISTORY_ARGS:-}

fi

if [ -z "${ONLY:-}" ] || [ "$ONLY" = produce ]; then
echo "== 4. produce at $RATE records/s (1 KiB), compaction idle vs copying a second history (default throttle 32 MiB/s; ${COMPACT_ARGS:-no other settings}) ($RUNS runs each)"
stop_broker
start_broker broker-write2.log --compaction-target-bytes 0
"$BIN/silt" --broker "http://$addr" topic create history2 --partitions 8 --retention-ms -1 >/dev/null
# Twice the history, so the throttled compaction is still copying during every run below.
"$BIN/silt" --broker "http://$addr" bench produce --topic history2 --records "$(( records * 2 ))" --concurrency 4 --json >/dev/null
load_records=$(( RATE * 20 ))
produce_at_rate() {
    "$BIN/silt" --broker "http://$addr" bench produce --topic steady --records "$load_records" --rate "$RATE" \
        --concurrency 2 --linger-ms 5 --json | python3 -c '
import json, sys
r = json.load(sys.stdin)
print("  p50 %.1f ms, p99 %.1f ms, p99.9 %.1f ms, %.1f MiB/s" % (r["p50_ms"], r["p99_ms"], r["p999_ms"], r["mib_per_s"]))'
}
echo " compaction idle:"
for run in $(seq 1 "$RUNS"); do produce_at_rate; done
stop_broker
# Defaults but the age: the history is due at once, the steady topic only once it fills 64 MiB.
start_broker broker-compact2.log --compaction-min-age-ms 0 --compaction-check-ms 200 ${COMPACT_ARGS:-}
echo " compaction copying (32 MiB/s):"
for run in $(seq 1 "$RUNS"); do
    before=$(metric silt_compaction_bytes_total '')
    produce_at_rate
    after=$(metric silt_compaction_bytes_total '')
    echo "    compaction copied $(( (after - before) / 1048576 )) MiB meanwhile ($(metric silt_compactions_total 'outcome="refused"') runs refused, $(metric silt_compactions_total 'outcome="failed"') failed so far)"
done
fi

if [ -z "${ONLY:-}" ] || [ "$ONLY" = keys ]; then
echo "== 5. key compaction: $SIZE_MIB MiB of 1 KiB records over $KEYS keys, 8 partitions, cleanup_policy compact"
stop_broker
start_broker broker-keys.log --compaction-target-bytes 0
"$BIN/silt" --broker "http://$addr" topic create kv --partitions 8 --cleanup-policy compact >/dev/null
"$BIN/silt" --broker "http://$addr" bench produce --topic kv --records "$records" --keys "$KEYS" --concurrency 4 --json >/dev/null
report_state
stop_broker
t0=$(now_ms)
start_broker broker-keys-compact.log --compaction-min-age-ms 0 --compaction-max-delay-ms 0 \
    --compaction-check-ms 200 --compaction-bytes-per-sec 4GiB
for _ in $(seq 1 6000); do [ "$(keys segments/)" = 0 ] && break; sleep 0.1; done
t1=$(now_ms)
read_bytes=$(metric silt_compaction_bytes_total '')
echo "  key-compacted in $((t1 - t0)) ms (from broker start): read $((read_bytes / 1048576)) MiB (both passes), $(python3 -c "print(f'{$read_bytes/2**20/(($t1-$t0)/1000):.0f}')") MiB/s; $(python3 -c "print(f'{$records*1024/2**20/(($t1-$t0)/1000):.0f}')") MiB of history per second"
sleep 3
report_state
echo "  compacted objects: $(find "$objects_dir/parts" -name '*.seg' -printf '%s\n' | awk '{ s += $1 } END { printf "%.1f MiB", s / 1048576 }')"
echo "== cold reads of the compacted topic ($RUNS runs)"
READ_TOPIC=kv cold_read --compaction-min-age-ms 0 --compaction-max-delay-ms 0
fi
