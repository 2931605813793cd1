#!/usr/bin/env bash
# etcd + MinIO on loopback for a local Silt broker, without Docker.
#
#   bash deploy/local/etcd-minio.sh start   # starts both, prints the broker command
#   bash deploy/local/etcd-minio.sh stop
#   bash deploy/local/etcd-minio.sh reset   # stops both and deletes all they stored
#
# Needs /usr/bin/etcd (apt-get install etcd-server) and minio
# (go install github.com/minio/minio@latest, which puts it in ~/go/bin). State lives in
# $SILT_LOCAL_DIR (default ./silt-local). Ports: etcd 2379/2380, MinIO S3 9000, console 9001.
# The broker creates the bucket ("silt") itself with --create-bucket.
set -euo pipefail
dir=${SILT_LOCAL_DIR:-./silt-local}
minio_bin=${SILT_MINIO_BIN:-$(command -v minio || { [ -x "$HOME/go/bin/minio" ] && echo "$HOME/go/bin/minio"; } || echo "$HOME/.cache/silt/tools/bin/minio")}
etcd_bin=${SILT_ETCD_BIN:-$(command -v etcd || echo /usr/bin/etcd)}
user=silt
password=silt-secret-key

stop() {
    for name in minio etcd; do
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
    [ -x "$minio_bin" ] || { echo "minio not found: go install github.com/minio/minio@latest" >&2; exit 1; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    "$etcd_bin" --name=silt-local --data-dir="$dir/etcd" \
        --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
        --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
        --initial-cluster=silt-local=http://127.0.0.1:2380 > "$dir/etcd.log" 2>&1 &
    echo $! > "$dir/etcd.pid"
    MINIO_ROOT_USER=$user MINIO_ROOT_PASSWORD=$password MINIO_BROWSER=off \
        "$minio_bin" server "$dir/minio" --address 127.0.0.1:9000 \
        --console-address 127.0.0.1:9001 --quiet > "$dir/minio.log" 2>&1 &
    echo $! > "$dir/minio.pid"
    for _ in $(seq 1 200); do
        curl -fsS http://127.0.0.1:9000/minio/health/ready >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -fsS http://127.0.0.1:9000/minio/health/ready >/dev/null \
        || { echo "MinIO did not start; see $dir/minio.log" >&2; exit 1; }
    printf 'export AWS_ACCESS_KEY_ID=%s\nexport AWS_SECRET_ACCESS_KEY=%s\n' "$user" "$password" > "$dir/credentials"
    cat <<MSG
etcd on 127.0.0.1:2379, MinIO S3 on http://127.0.0.1:9000. Start a broker with:

  source $dir/credentials
  cargo run --release -p silt-broker --features etcd -- \\
      --metadata etcd://127.0.0.1:2379 --object-store s3://silt/cluster-a \\
      --s3-endpoint http://127.0.0.1:9000 --s3-region us-east-1 --create-bucket

Stop with: bash deploy/local/etcd-minio.sh stop (reset: stop and delete everything stored)
MSG
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    # Every benchmark run leaves its objects in the store (a GiB or more each): reset frees them.
    reset) stop; rm -rf "$dir"; echo "deleted $dir" ;;
    *) echo "usage: $0 start|stop|reset" >&2; exit 2 ;;
esac
