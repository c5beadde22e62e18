#!/usr/bin/env bash
# `just serve-pg`: a local PostgreSQL cluster and two kernex-server replicas on it
# (SPEC §8), each on its own port, sharing one blob dir. Ctrl-C stops the replicas (the
# cluster keeps running; `scripts/pg-cluster.sh stop target/pg-serve` stops it).
#
#   scripts/serve-pg.sh [PORT_A] [PORT_B]     (default 8000 8001)
set -euo pipefail
cd "$(dirname "$0")/.."

port_a=${1:-8000}
port_b=${2:-8001}
dir=target/pg-serve
cluster=$(bash scripts/pg-cluster.sh start "$dir/cluster" 55434)
url=${cluster%/postgres}/kernex
if ! psql "$cluster" -tAc "SELECT 1 FROM pg_database WHERE datname = 'kernex'" | grep -q 1; then
    psql "$cluster" -q -c "CREATE DATABASE kernex"
fi
cargo build --release -q -p kernex-server
server=target/release/kernex-server
"$server" migrate --database-url "$url"
mkdir -p "$dir/blobs"
# Replicas write no admin.token (SPEC §8): the first operator token is minted here, once.
token_file="$dir/admin.token"
if [ ! -s "$token_file" ]; then
    (umask 077 && "$server" token create --database-url "$url" --name "admin-$(date +%s)" >"$token_file")
fi

pids=()
stop() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait
}
trap stop EXIT INT TERM

start_replica() {
    local name=$1 port=$2
    "$server" --listen "127.0.0.1:$port" \
        --database-url "$url" --blob-dir "$dir/blobs" 2> >(sed "s/^/[$name] /" >&2) &
    pids+=($!)
    for _ in $(seq 1 100); do
        curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "replica $name did not come up on port $port" >&2
    return 1
}

start_replica a "$port_a"
start_replica b "$port_b"
cat >&2 <<MSG

Two replicas on $url:
  A  http://127.0.0.1:$port_a
  B  http://127.0.0.1:$port_b
Operator token: $token_file
  KERNEX_SERVER=http://127.0.0.1:$port_b KERNEX_TOKEN=\$(cat $token_file) just console
Ctrl-C stops both replicas.
MSG
wait
