#!/usr/bin/env bash
# The consumer-group figures of BENCHMARKS.md, against ONE broker on etcd metadata (started
# here on free loopback ports, with its objects in a temporary directory):
#   1. offset commits: `silt bench commits` — 10 groups, 1000 and 5000 commits/s (RATES), 10 s
#      — commit latency and the metadata transactions the coordinator spent (RUNS runs);
#      ONLY=commits stops after this part;
#   2. rebalance times: a second member joining (until both hold their share) and a member
#      killed with kill -9 (until the survivor holds everything), with a 6 s session;
#   3. consume throughput: one `silt consume --group` member vs three, reading 8 partitions of
#      RECORDS 1 KiB records to the end.
#
#   cargo build --release --bins --features silt-broker/etcd
#   bash tests/bench/groups.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
RUNS=${RUNS:-3}
RECORDS=${RECORDS:-400000}
work=$(mktemp -d "${TMPDIR:-/tmp}/silt-bench-groups.XXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }

etcd_port=$(free_port); peer_port=$(free_port)
etcd --name=silt-bench --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "silt-bench=http://127.0.0.1:$peer_port" > "$work/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do etcdctl --endpoints "127.0.0.1:$etcd_port" endpoint health >/dev/null 2>&1 && break; sleep 0.05; done

"$BIN/silt-broker" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir "$work/broker" \
    --linger-ms 20 --metadata "etcd://127.0.0.1:$etcd_port" --cluster bench \
    --object-store "file://$work/objects" 2> "$work/broker.log" &
pids+=($!)
for _ in $(seq 1 400); do grep -q "serving gRPC on" "$work/broker.log" && grep -q "/readyz) on" "$work/broker.log" && break; sleep 0.05; done
addr=$(grep -o "serving gRPC on [0-9.:]*" "$work/broker.log" | awk '{print $4}')
admin=$(grep -o "/readyz) on [0-9.:]*" "$work/broker.log" | awk '{print $3}')
S=("$BIN/silt" --broker "http://$addr")
"${S[@]}" topic create bench-commits --partitions 8 >/dev/null
"${S[@]}" topic create bench-consume --partitions 8 >/dev/null

for rate in ${RATES:-1000 5000}; do
    echo "== offset commits (10 groups, ${rate}/s, 10 s), ${RUNS} runs"
    for run in $(seq 1 "$RUNS"); do
        "${S[@]}" bench commits --topic bench-commits --groups 10 --rate "$rate" --duration 10s \
            --admin-url "http://$admin" --json
    done
done
[ "${ONLY:-}" = commits ] && exit 0

echo "== rebalance times (session 6 s)"
"${S[@]}" bench produce --topic bench-consume --records 8000 --record-size 100B --json >/dev/null
member() { "${S[@]}" consume bench-consume --group "$1" --follow --session-timeout 6s > /dev/null 2> "$work/$2.err" & pids+=($!); echo $!; }
wait_line() { for _ in $(seq 1 600); do grep -q "$2" "$work/$1.err" && return 0; sleep 0.02; done; echo "timeout waiting for $2 in $1" >&2; return 1; }
for run in $(seq 1 "$RUNS"); do
    g="rebalance-$run"
    a=$(member "$g" "a$run"); wait_line "a$run" "assigned"
    t0=$(now_ms); b=$(member "$g" "b$run"); wait_line "b$run" "assigned bench"
    t1=$(now_ms)
    echo "{\"run\":$run,\"join_ms\":$((t1 - t0))}"
    sleep 1
    t2=$(now_ms); kill -9 "$b"
    # The survivor's next assignment holds all 8 partitions again.
    for _ in $(seq 1 1000); do
        [ "$(grep -c assigned "$work/a$run.err")" -ge 2 ] && break
        sleep 0.02
    done
    t3=$(now_ms)
    echo "{\"run\":$run,\"after_kill9_ms\":$((t3 - t2)),\"session_ms\":6000}"
    kill "$a" 2>/dev/null || true
done

echo "== consume: 1 member vs 3 members, ${RECORDS} x 1 KiB over 8 partitions (until the group's lag is 0)"
"${S[@]}" bench produce --topic bench-consume --records "$RECORDS" --record-size 1KiB --json >/dev/null
total=$("${S[@]}" topic describe bench-consume | awk '/^ *[0-9]+ /{s+=$3} END{print s}')
lag_of() {
    "${S[@]}" group describe "$1" --json 2>/dev/null \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(p["lag"] for p in d["partitions"]) if len(d["partitions"]) == 8 else -1)' 2>/dev/null \
        || echo -1
}
for run in $(seq 1 "$RUNS"); do
    for members in 1 3; do
        g="consume-$run-$members"
        cpids=()
        t0=$(now_ms)
        for _ in $(seq 1 "$members"); do
            "${S[@]}" consume bench-consume --group "$g" --follow > /dev/null 2>> "$work/$g.err" &
            cpids+=($!)
        done
        until [ "$(lag_of "$g")" = 0 ]; do sleep 0.05; done
        t1=$(now_ms)
        kill "${cpids[@]}"; wait "${cpids[@]}" 2>/dev/null || true
        echo "{\"run\":$run,\"members\":$members,\"ms\":$((t1 - t0)),\"records\":$total}"
    done
done
