#!/usr/bin/env bash
# The etcd + Garage benchmark of BENCHMARKS.md: in one session, `silt bench object-store` (raw
# PUT ceiling of the bucket) and `silt bench produce` (fast path, 4 producers, 1 KiB records)
# against a broker on etcd metadata and Garage objects, at linger 250 ms and 10 ms, RUNS runs
# each, alternating so drift hits both alike. Prints one JSON line per run, then medians.
#
#   cargo build --release --bins --features silt-broker/etcd
#   bash deploy/local/etcd-garage.sh start      # etcd :2379, Garage :3900, bucket "silt"
#   bash tests/bench/etcd-garage.sh
#
# PRODUCE_ARGS adds flags to every `silt bench produce` (e.g. "--replay"), BROKER_ARGS to every
# broker (e.g. "--max-inflight-flushes 8"), CONCURRENCY sets the producers (default 4) and
# TOPIC_PARTITIONS the topic's partition count (default 8).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
RUNS=${RUNS:-3}
RECORDS=${RECORDS:-200000}
OUT=${OUT:-/tmp/silt-bench-etcd-garage.jsonl}
LOCAL=${SILT_LOCAL_DIR:-./silt-local}
# shellcheck disable=SC1091
source "$LOCAL/credentials"
S3=(--s3-endpoint http://127.0.0.1:3900 --s3-region garage --s3-allow-http true)
: > "$OUT"
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null || true' EXIT
record() { echo "{\"kind\":\"$1\",\"linger_ms\":$2,\"run\":$3,\"result\":$4}" | tee -a "$OUT"; }

for run in $(seq 1 "$RUNS"); do
    o=$("$BIN/silt" bench object-store --object-store "s3://silt/bench-raw-$run" \
        --s3-endpoint http://127.0.0.1:3900 --s3-region garage --s3-allow-http \
        --object-size 8MiB --total-bytes 512MiB --json)
    record object-store 0 "$run" "$o"
    for linger in 250 10; do
        dir=$(mktemp -d "${TMPDIR:-/tmp}/silt-bench.XXXX")
        cluster="bench-$run-$linger-$$"
        # shellcheck disable=SC2086
        "$BIN/silt-broker" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir "$dir" --linger-ms "$linger" \
            --metadata etcd://127.0.0.1:2379 --cluster "$cluster" \
            --object-store "s3://silt/$cluster" "${S3[@]}" ${BROKER_ARGS:-} 2> "$dir/broker.log" &
        pid=$!
        for _ in $(seq 1 400); do grep -q "serving gRPC on" "$dir/broker.log" && break; sleep 0.05; done
        addr=$(grep -o "serving gRPC on [0-9.:]*" "$dir/broker.log" | awk '{print $4}')
        # shellcheck disable=SC2086
        p=$("$BIN/silt" --broker "http://$addr" bench produce --topic b --records "$RECORDS" \
            --record-size 1KiB --concurrency "${CONCURRENCY:-4}" --partitions "${TOPIC_PARTITIONS:-8}" --json \
            ${PRODUCE_ARGS:-})
        record produce "$linger" "$run" "$p"
        kill "$pid"; wait "$pid" || true; pid=""
        rm -rf "$dir"
    done
done

python3 - "$OUT" <<'PY'
import collections, json, statistics, sys
groups = collections.defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    groups[(r["kind"], r["linger_ms"])].append(r["result"])
for group, runs in groups.items():
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    medians = {k: round(statistics.median(x[k] for x in runs), 3) for k in keys}
    print(*group, f"runs={len(runs)}", json.dumps(medians))
PY
