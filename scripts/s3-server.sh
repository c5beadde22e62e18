#!/usr/bin/env bash
# A local S3-compatible endpoint for the blob-store tests (SPEC §8 `--blob-url`):
# moto's server, from PyPI, installed on first use into target/moto-venv.
#
#   scripts/s3-server.sh install           # only install
#   scripts/s3-server.sh serve PORT        # serve on 127.0.0.1:PORT until stdin closes
#
# `serve` runs until its standard input reaches end of file, so a test process that
# holds the other end of a pipe takes the server with it when it exits, however it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

version="5.2.5"
venv="target/moto-venv"

install() {
    mkdir -p target
    # Test binaries may ask at once: one installs, the others wait for it.
    exec 9>target/moto-venv.lock
    flock 9
    if [ ! -x "$venv/bin/moto_server" ] || ! "$venv/bin/pip" show moto 2>/dev/null | grep -q "^Version: $version$"; then
        echo "== installing moto[server] $version into $venv" >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$version" >&2
    fi
    flock -u 9
}

case "${1:-}" in
    install)
        install
        ;;
    serve)
        port="${2:?usage: scripts/s3-server.sh serve PORT}"
        install
        "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"target/moto-$port.log" 2>&1 &
        server=$!
        trap 'kill "$server" 2>/dev/null || true' EXIT
        cat >/dev/null || true
        ;;
    *)
        echo "usage: scripts/s3-server.sh install | serve PORT" >&2
        exit 2
        ;;
esac
