#!/usr/bin/env bash
# A/B of two broker configurations on the produce path (BENCHMARKS.md, e.g. "Unsigned uploads"):
# one broker on etcd metadata and a local MinIO (deploy/local/etcd-minio.sh) per run, started
# with A_ARGS or B_ARGS (alternating, so the box's drift hits both alike), fed by
# `silt bench produce --replay` (RECORDS x 1 KiB, 8 senders, batches encoded before the run, so
# the client costs little); prints each run's MiB/s and MiB per broker CPU-second, then medians.
# A_BIN and B_BIN (directories holding `silt-broker`, default BIN) compare two builds instead.
#
#   cargo build --release --bins --features silt-broker/etcd
#   bash deploy/local/etcd-minio.sh start
#   A_ARGS="--s3-sign-payload true" B_ARGS="--s3-sign-payload false" bash tests/bench/ab.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
RUNS=${RUNS:-3}
RECORDS=${RECORDS:-200000}
A_ARGS=${A_ARGS:-}
B_ARGS=${B_ARGS:-}
A_BIN=${A_BIN:-$BIN}
B_BIN=${B_BIN:-$BIN}
LOCAL=${SILT_LOCAL_DIR:-./silt-local}
# shellcheck source=tests/bench/lib.sh
source tests/bench/lib.sh
need_local_store "$LOCAL" minio
bench_init ab

# one NAME ARGS BROKER_BIN: a run on a fresh broker; prints "mib_per_s mib_per_cpu_s".
one() {
    local name=$1 args=$2 broker_bin=$3 dir cluster addr
    dir=$(mktemp -d "$work/$name.XXXX")
    cluster="bench-ab-$name-$RANDOM-$$"
    # shellcheck disable=SC2086 # the args are a list of flags
    "$broker_bin/silt-broker" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir "$dir" \
        --metadata etcd://127.0.0.1:2379 --cluster "$cluster" --object-store "s3://silt/$cluster" \
        --s3-endpoint http://127.0.0.1:9000 --s3-region us-east-1 --create-bucket $args 2> "$dir/broker.log" &
    pid=$!
    addr=$(broker_addr "$dir/broker.log")
    "$BIN/silt" --broker "http://$addr" bench produce --topic b --records "$RECORDS" --record-size 1KiB \
        --concurrency 8 --replay --json |
        python3 -c 'import json, sys; r = json.load(sys.stdin); print(r["mib_per_s"], r["mib_per_broker_cpu_second"])'
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
}

echo "== machine: $(machine_line); A: '${A_ARGS}' ($A_BIN) B: '${B_ARGS}' ($B_BIN)"
results=()
for run in $(seq 1 "$RUNS"); do
    a=$(one a "$A_ARGS" "$A_BIN"); b=$(one b "$B_ARGS" "$B_BIN")
    echo "  run $run: A $a, B $b (MiB/s, MiB per broker CPU-second)"
    results+=("$a $b")
done
printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
rows = [list(map(float, line.split())) for line in sys.stdin if line.strip()]
med = [statistics.median(r[i] for r in rows) for i in range(4)]
print(f"medians of {len(rows)}: A {med[0]:.1f} MiB/s, {med[1]:.1f} MiB per broker CPU-second; B {med[2]:.1f} MiB/s, {med[3]:.1f} MiB per broker CPU-second; B/A per CPU-second {med[3] / med[1]:.2f}")'
