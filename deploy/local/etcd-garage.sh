#!/usr/bin/env bash
# etcd + Garage on loopback for a local Silt broker, without Docker (what the tests use).
#
#   bash deploy/local/etcd-garage.sh start   # starts both, creates bucket "silt", prints the broker command
#   bash deploy/local/etcd-garage.sh stop
#   bash deploy/local/etcd-garage.sh reset   # stops both and deletes all they stored
#
# Needs /usr/bin/etcd (apt-get install etcd-server) and garage (cargo install garage --locked).
# State lives in $SILT_LOCAL_DIR (default ./silt-local). Ports: etcd 2379/2380, Garage S3 3900,
# RPC 3901.
set -euo pipefail
dir=${SILT_LOCAL_DIR:-./silt-local}
garage_bin=${SILT_GARAGE_BIN:-$(command -v garage || echo "$HOME/.cache/silt/tools/bin/garage")}
etcd_bin=${SILT_ETCD_BIN:-$(command -v etcd || echo /usr/bin/etcd)}

stop() {
    for name in garage etcd; do
        if [ -f "$dir/$name.pid" ]; then
            pid=$(cat "$dir/$name.pid")
            kill "$pid" 2>/dev/null || true
            # Gone before this returns (10 s at most), so a reset deletes nothing in use.
            for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            rm -f "$dir/$name.pid"
        fi
    done
    echo "stopped"
}

start() {
    [ -x "$etcd_bin" ] || { echo "etcd not found: apt-get install etcd-server" >&2; exit 1; }
    [ -x "$garage_bin" ] || { echo "garage not found: cargo install garage --locked" >&2; exit 1; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    "$etcd_bin" --name=silt-local --data-dir="$dir/etcd" \
        --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
        --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
        --initial-cluster=silt-local=http://127.0.0.1:2380 > "$dir/etcd.log" 2>&1 &
    echo $! > "$dir/etcd.pid"

    if [ ! -f "$dir/garage.toml" ]; then
        cat > "$dir/garage.toml" <<TOML
metadata_dir = "$dir/garage/meta"
data_dir = "$dir/garage/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:3901"
rpc_public_addr = "127.0.0.1:3901"
rpc_secret = "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:3900"
TOML
    fi
    g() { "$garage_bin" -c "$dir/garage.toml" "$@"; }
    RUST_LOG=warn "$garage_bin" -c "$dir/garage.toml" server > "$dir/garage.log" 2>&1 &
    echo $! > "$dir/garage.pid"
    for _ in $(seq 1 100); do g node id -q >/dev/null 2>&1 && break; sleep 0.2; done
    if [ ! -f "$dir/credentials" ]; then
        node=$(g node id -q | cut -d@ -f1)
        g layout assign -z dc1 -c 1G "$node" >/dev/null
        g layout apply --version 1 >/dev/null
        for _ in $(seq 1 50); do g bucket create silt >/dev/null 2>&1 && break; sleep 0.2; done
        key=$(g key create silt-key)
        id=$(echo "$key" | awk -F': *' '/Key ID/ {print $2; exit}')
        secret=$(echo "$key" | awk -F': *' '/Secret key/ {print $2; exit}')
        g bucket allow --read --write --owner silt --key silt-key >/dev/null
        printf 'export AWS_ACCESS_KEY_ID=%s\nexport AWS_SECRET_ACCESS_KEY=%s\n' "$id" "$secret" > "$dir/credentials"
    fi
    cat <<MSG
etcd on 127.0.0.1:2379, Garage S3 on http://127.0.0.1:3900 (bucket "silt"). Start a broker with:

  source $dir/credentials
  cargo run --release -p silt-broker --features etcd -- \\
      --metadata etcd://127.0.0.1:2379 --object-store s3://silt/cluster-a \\
      --s3-endpoint http://127.0.0.1:3900 --s3-region garage

Stop with: bash deploy/local/etcd-garage.sh stop (reset: stop and delete everything stored)
MSG
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    # Every benchmark run leaves its objects in the store (a GiB or more each): reset frees them.
    reset) stop; rm -rf "$dir"; echo "deleted $dir" ;;
    *) echo "usage: $0 start|stop|reset" >&2; exit 2 ;;
esac
