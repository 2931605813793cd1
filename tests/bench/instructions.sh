#!/usr/bin/env bash
# Instructions per MiB ingested on the produce pass-through path: a machine-independent CPU
# figure, repeatable on a noisy box (BENCHMARKS.md, "CPU per byte"). One broker with in-memory
# metadata and object store runs under `valgrind --tool=callgrind` while `silt bench produce
# --replay` sends RECORDS records of 1 KiB (pre-encoded batches, so the client's encoding is not
# counted, and the client runs outside valgrind); the same with 1 record gives the fixed cost
# (start-up, shutdown), and the difference over the bytes is the figure. Only the broker's
# user-space instructions are counted (not the kernel's).
#
#   cargo build --release --bins --features silt-broker/etcd
#   bash tests/bench/instructions.sh          # RECORDS=40000 RUNS=1
#
# STORE_ARGS replaces the store flags, e.g. a local MinIO, signed and unsigned uploads:
#   STORE_ARGS="--metadata memory --object-store s3://silt/i --s3-endpoint http://127.0.0.1:9000
#     --s3-region us-east-1 --create-bucket --s3-sign-payload true" bash tests/bench/instructions.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
RECORDS=${RECORDS:-40000}
RUNS=${RUNS:-1}
# The broker starts itself again with these glibc settings unless GLIBC_TUNABLES is set (see
# ARCHITECTURE, "Memory reuse"); under valgrind that second start would run outside it.
export GLIBC_TUNABLES=${GLIBC_TUNABLES-glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456}
command -v valgrind >/dev/null || { echo "this benchmark needs valgrind (apt-get install valgrind)" >&2; exit 1; }
# shellcheck source=tests/bench/lib.sh
source tests/bench/lib.sh
bench_init instructions

# instructions N: the broker's total user-space instructions for a run of N records.
instructions() {
    local n=$1 log="$work/broker-$1.log" out="$work/callgrind-$1.out"
    # shellcheck disable=SC2086 # STORE_ARGS is a list of flags
    valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN/silt-broker" \
        --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir "$work/data-$n" \
        ${STORE_ARGS:---metadata memory --object-store memory://} > /dev/null 2> "$log" &
    broker_pid=$!
    local addr=""
    for _ in $(seq 1 1200); do
        addr=$(grep -o "serving gRPC on [0-9.:]*" "$log" 2>/dev/null | awk '{print $4}') || true
        [ -n "$addr" ] && break
        kill -0 "$broker_pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "the broker did not start under valgrind" >&2; cat "$log" >&2; exit 1; }
    "$BIN/silt" --broker "http://$addr" bench produce --topic t --records "$n" --record-size 1KiB \
        --concurrency 8 --replay --json > "$work/produce-$n.json"
    kill -TERM "$broker_pid"
    wait "$broker_pid" || true
    broker_pid=""
    # The totals of the main process's profile (`summary:` / `totals:` line).
    awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

echo "== machine: $(machine_line)"
for run in $(seq 1 "$RUNS"); do
    base=$(instructions 1)
    full=$(instructions "$RECORDS")
    python3 -c "
base, full, n = $base, $full, $RECORDS
mib = (n - 1) * 1024 / 2**20
print(f'  run $run: {full:,} instructions for {n} records, {base:,} for 1: {(full - base) / mib / 1e6:.2f} M instructions per MiB')"
done
