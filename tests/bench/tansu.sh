#!/usr/bin/env bash
# Silt and Tansu side by side (BENCHMARKS.md, "CPU per byte: Silt and Tansu side by side"): the
# same box, the same Garage, the same records, run alternately so the box's drift hits both
# alike. Each run stores RECORDS records of 1 KiB in a topic of 8 partitions:
#
#   - Tansu 0.6 (a Kafka-compatible Rust broker on S3), fed by confluent-kafka's producer
#     (librdkafka; acks=all, linger.ms 250, 8 partitions round robin), on a bucket of its own;
#   - Silt (etcd metadata, Garage objects, linger 250 ms), fed by `silt bench produce
#     --concurrency 8` (gRPC; Silt has no Kafka listener yet).
#
# It reports each broker's throughput and MiB per broker CPU-second (the broker process's
# user + system time from /proc, so neither the client, Garage nor etcd counts), then medians.
#
#   cargo build --release --bins --features silt-broker/etcd
#   bash deploy/local/etcd-garage.sh start     # etcd :2379, Garage :3900
#   bash tests/bench/tansu.sh                  # RUNS=3 RECORDS=200000
#
# Both upload the same way: unsigned payloads (Silt's default on a loopback or TLS endpoint;
# Tansu's object_store client told so with AWS_UNSIGNED_PAYLOAD), or with SIGNED=1 both SigV4-sign
# every body with its SHA-256 (object_store's default, Silt's --s3-sign-payload).
#
# STORE=memory runs both brokers on their in-memory stores instead (Tansu `memory://`, Silt
# `--metadata memory --object-store memory://`): no Garage on the cores, so the brokers and their
# clients are all that run.
#
# Tansu is installed once under ~/.cache/silt/tools/tansu (`cargo install tansu --features
# dynostore`, ~12 min on 2 cores) and confluent-kafka into a venv under ~/.cache/silt.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
RUNS=${RUNS:-3}
RECORDS=${RECORDS:-200000}
LINGER_MS=${LINGER_MS:-250}
SIGNED=${SIGNED:-0}
STORE=${STORE:-garage}
case "$STORE" in garage|memory) ;; *) echo "STORE must be garage or memory, not '$STORE'" >&2; exit 1 ;; esac
if [ "$SIGNED" = 1 ]; then tansu_unsigned=false; silt_sign=true; else tansu_unsigned=true; silt_sign=false; fi
OUT=${OUT:-/tmp/silt-bench-tansu.jsonl}
LOCAL=${SILT_LOCAL_DIR:-./silt-local}
TANSU_VERSION=0.6.0
cache=$HOME/.cache/silt
tansu=$cache/tools/tansu/bin/tansu
venv=$cache/bench-venv
garage_bin=${SILT_GARAGE_BIN:-$(command -v garage || echo "$cache/tools/bin/garage")}

[ -x "$BIN/silt-broker" ] || { echo "no $BIN/silt-broker: cargo build --release --bins --features silt-broker/etcd" >&2; exit 1; }
# shellcheck source=tests/bench/lib.sh
source tests/bench/lib.sh
[ "$STORE" = garage ] && need_local_store "$LOCAL" garage
if [ ! -x "$tansu" ]; then
    echo "== installing Tansu $TANSU_VERSION into $cache/tools/tansu (once, ~12 min)" >&2
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore \
        --root "$cache/tools/tansu" >&2
fi
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import confluent_kafka' 2>/dev/null; then
    echo "== installing confluent-kafka into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet confluent-kafka >&2
fi
g() { "$garage_bin" -c "$LOCAL/garage.toml" "$@"; }

bench_init tansu
: > "$OUT"

# cpu_ticks PID: the process's user + system clock ticks so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
record() {
    python3 - "$@" <<'PY' | tee -a "$OUT"
import json, os, sys
kind, run, records, seconds, ticks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
mib = records * 1024 / 2**20
cpu = ticks / os.sysconf("SC_CLK_TCK")
print(json.dumps({"broker": kind, "run": run, "mib": round(mib, 1), "seconds": round(seconds, 3),
                  "mib_per_s": round(mib / seconds, 1), "broker_cpu_s": round(cpu, 2),
                  "mib_per_cpu_s": round(mib / cpu, 1) if cpu else None}))
PY
}

tansu_run() {
    local run=$1 port bucket log=$work/tansu-$1.log
    port=$(free_port)
    bucket="tansu-bench-$run-$$"
    local engine="memory://tansu/"
    if [ "$STORE" = garage ]; then
        g bucket create "$bucket" >/dev/null
        g bucket allow --read --write --owner "$bucket" --key silt-key >/dev/null
        engine="s3://$bucket/"
    fi
    AWS_ENDPOINT=http://127.0.0.1:3900 AWS_ALLOW_HTTP=true AWS_DEFAULT_REGION=garage AWS_REGION=garage \
        AWS_UNSIGNED_PAYLOAD=$tansu_unsigned \
        RUST_LOG=warn "$tansu" broker --cluster-id "bench-$run" \
        --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "$engine" > "$log" 2>&1 &
    pid=$!
    "$venv/bin/python" - "127.0.0.1:$port" "$RECORDS" "$LINGER_MS" "$pid" > "$work/tansu-$run.json" <<'PY'
import json, socket, sys, time
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, records, linger, broker_pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
host, port = bootstrap.split(":")
deadline = time.monotonic() + 60
while True:
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("Tansu did not listen within 60 s")
        time.sleep(0.1)
admin = AdminClient({"bootstrap.servers": bootstrap})
for f in admin.create_topics([NewTopic("b", num_partitions=8, replication_factor=1)]).values():
    f.result(timeout=60)

def ticks():
    with open(f"/proc/{broker_pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])

producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": linger,
                     "batch.size": 1 << 20, "queue.buffering.max.kbytes": 1 << 20,
                     "enable.idempotence": False, "partitioner": "consistent_random"})
value = b"x" * 1024
errors = []
def delivered(err, _msg):
    if err is not None:
        errors.append(str(err))
# Warm-up: metadata and connections, not counted.
producer.produce("b", value, partition=0, on_delivery=delivered)
producer.flush(60)
t0, c0 = time.monotonic(), ticks()
for i in range(records):
    while True:
        try:
            producer.produce("b", value, partition=i % 8, on_delivery=delivered)
            break
        except BufferError:
            producer.poll(0.01)
    if i % 1000 == 0:
        producer.poll(0)
left = producer.flush(600)
elapsed, cpu = time.monotonic() - t0, ticks() - c0
if errors or left:
    sys.exit(f"Tansu refused records: {left} undelivered, errors {errors[:3]}")
print(json.dumps({"seconds": elapsed, "ticks": cpu}))
PY
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    python3 -c "import json,sys; r = json.load(open(sys.argv[1])); print(r['seconds'], r['ticks'])" \
        "$work/tansu-$run.json"
}

silt_run() {
    local run=$1 dir cluster addr c0 c1 out
    dir=$(mktemp -d "$work/silt-$run.XXXX")
    cluster="bench-tansu-$run-$$"
    local store=(--metadata etcd://127.0.0.1:2379 --cluster "$cluster" --object-store "s3://silt/$cluster"
        --s3-endpoint http://127.0.0.1:3900 --s3-region garage --s3-allow-http true --s3-sign-payload "$silt_sign")
    [ "$STORE" = memory ] && store=(--metadata memory --object-store memory://)
    "$BIN/silt-broker" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir "$dir" \
        --linger-ms "$LINGER_MS" "${store[@]}" 2> "$dir/broker.log" &
    pid=$!
    addr=$(broker_addr "$dir/broker.log")
    "$BIN/silt" --broker "http://$addr" topic create b --partitions 8 >/dev/null
    # Warm-up, not counted: one record through the whole path.
    "$BIN/silt" --broker "http://$addr" bench produce --topic b --records 1 --record-size 1KiB >/dev/null
    c0=$(cpu_ticks "$pid")
    out=$("$BIN/silt" --broker "http://$addr" bench produce --topic b --records "$RECORDS" \
        --record-size 1KiB --concurrency 8 --json)
    c1=$(cpu_ticks "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    python3 -c "import json,sys; r = json.loads(sys.argv[1]); print(r['elapsed_s'], $c1 - $c0)" "$out"
}

echo "== machine: $(machine_line), tansu $TANSU_VERSION; $RECORDS x 1 KiB, linger $LINGER_MS ms, store $STORE, signed payloads: $SIGNED"
for run in $(seq 1 "$RUNS"); do
    # shellcheck disable=SC2046
    record tansu "$run" "$RECORDS" $(tansu_run "$run")
    # shellcheck disable=SC2046
    record silt "$run" "$RECORDS" $(silt_run "$run")
done

python3 - "$OUT" <<'PY'
import collections, json, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs[r["broker"]].append(r)
med = {b: {k: statistics.median(r[k] for r in rs) for k in ("mib_per_s", "mib_per_cpu_s")} for b, rs in runs.items()}
for b, m in med.items():
    print(f"{b}: median {m['mib_per_s']:.1f} MiB/s, {m['mib_per_cpu_s']:.1f} MiB per broker CPU-second ({len(runs[b])} runs)")
if "silt" in med and "tansu" in med:
    print(f"silt / tansu: throughput {med['silt']['mib_per_s'] / med['tansu']['mib_per_s']:.2f}x, "
          f"MiB per CPU-second {med['silt']['mib_per_cpu_s'] / med['tansu']['mib_per_cpu_s']:.2f}x")
PY
