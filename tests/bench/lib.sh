# Helpers shared by the benchmark scripts under tests/bench (sourced, not run).
#
# The scripts leave what each run stored in the local object store (about a GiB per run at
# 1 000 000 records): `bash deploy/local/etcd-minio.sh reset` (or etcd-garage.sh) deletes it.

# bench_init NAME: a scratch directory in $work, removed on exit with the broker in $pid or
# $broker_pid (a script that starts one stores its pid there) stopped first.
bench_init() {
    work=$(mktemp -d "${TMPDIR:-/tmp}/silt-bench-$1.XXXX")
    pid=""
    broker_pid=""
    trap bench_cleanup EXIT
}

bench_cleanup() {
    [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true
    [ -n "${broker_pid:-}" ] && kill "$broker_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}

# need_local_store DIR KIND: the credentials deploy/local/etcd-KIND.sh left in DIR, loaded.
need_local_store() {
    [ -f "$1/credentials" ] || { echo "no $2 credentials in $1: bash deploy/local/etcd-$2.sh start" >&2; exit 1; }
    # shellcheck disable=SC1091
    source "$1/credentials"
}

# broker_addr LOG: waits (30 s at most) for the broker logging to LOG to serve gRPC and prints
# its address; on failure prints the log and exits.
broker_addr() {
    local addr=""
    for _ in $(seq 1 600); do
        addr=$(grep -o "serving gRPC on [0-9.:]*" "$1" 2>/dev/null | awk '{print $4}') || true
        [ -n "$addr" ] && break
        sleep 0.05
    done
    [ -n "$addr" ] || { echo "the broker did not start:" >&2; cat "$1" >&2; exit 1; }
    echo "$addr"
}

# machine_line: the box and the commit, for the first line of a benchmark's output.
machine_line() {
    echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
}
