#!/usr/bin/env bash
# The single-broker benchmark matrix of BENCHMARKS.md: for linger 250 ms and 10 ms, RUNS runs
# each of `silt bench produce` (fast path, per-record path at concurrency 4 and 32) and
# `silt bench consume` against a fresh broker on the embedded defaults (local-directory object
# store), then `silt bench object-store` on a local directory. Writes one JSON line per run to
# $OUT and prints the medians.
#
#   cargo build --release --bins && bash tests/bench/single-broker.sh
#
# LINGERS, MODES, CONSUME=0 and OBJECT_STORE=0 pick a subset; BIN points at other binaries
# (e.g. an older build, to compare two versions on the same machine in one session).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
RUNS=${RUNS:-3}
RECORDS=${RECORDS:-300000}
LINGERS=${LINGERS:-250 10}
MODES=${MODES:-fast per-record per-record-c32}
CONSUME=${CONSUME:-1}
OBJECT_STORE=${OBJECT_STORE:-1}
OUT=${OUT:-/tmp/silt-bench-results.jsonl}
: > "$OUT"

pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null || true' EXIT

start_broker() { # linger_ms → sets $pid, $addr, $dir
    dir=$(mktemp -d "${TMPDIR:-/tmp}/silt-bench.XXXX")
    "$BIN/silt-broker" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir "$dir" --linger-ms "$1" 2> "$dir/broker.log" &
    pid=$!
    for _ in $(seq 1 400); do grep -q "serving gRPC on" "$dir/broker.log" && break; sleep 0.05; done
    addr=$(grep -o "serving gRPC on [0-9.:]*" "$dir/broker.log" | awk '{print $4}')
}
stop_broker() { kill "$pid"; wait "$pid" || true; pid=""; rm -rf "$dir"; }
record() { echo "{\"kind\":\"$1\",\"linger_ms\":$2,\"mode\":\"$3\",\"run\":$4,\"result\":$5}" | tee -a "$OUT"; }

for linger in $LINGERS; do
    for run in $(seq 1 "$RUNS"); do
        for mode in $MODES; do
            start_broker "$linger"
            case $mode in
                fast) args=(--concurrency 4) ;;
                per-record) args=(--concurrency 4 --per-record) ;;
                per-record-c32) args=(--concurrency 32 --per-record) ;;
            esac
            p=$("$BIN/silt" --broker "http://$addr" bench produce --topic b --records "$RECORDS" \
                --record-size 1KiB "${args[@]}" --json)
            record produce "$linger" "$mode" "$run" "$p"
            if [ "$mode" = fast ] && [ "$CONSUME" = 1 ]; then
                c=$("$BIN/silt" --broker "http://$addr" bench consume --topic b --json)
                record consume "$linger" "$mode" "$run" "$c"
            fi
            stop_broker
        done
    done
done
for run in $(seq 1 "$RUNS"); do
    [ "$OBJECT_STORE" = 1 ] || break
    d=$(mktemp -d "${TMPDIR:-/tmp}/silt-os.XXXX")
    o=$("$BIN/silt" bench object-store --object-store "file://$d" --object-size 8MiB --total-bytes 1GiB --json)
    record object-store 0 raw "$run" "$o"
    rm -rf "$d"
done

python3 - "$OUT" <<'PY'
import collections, json, statistics, sys
groups = collections.defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    groups[(r["kind"], r["linger_ms"], r["mode"])].append(r["result"])
keys = ["mib_per_s", "records_per_s", "p50_ms", "p99_ms", "p999_ms", "broker_cpu_seconds",
        "mib_per_broker_cpu_second", "put_p50_ms", "put_p99_ms"]
for group, runs in groups.items():
    medians = {k: round(statistics.median(x[k] for x in runs), 2) for k in keys if k in runs[0]}
    print(*group, f"runs={len(runs)}", medians)
PY
