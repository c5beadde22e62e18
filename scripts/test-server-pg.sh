#!/usr/bin/env bash
# The server's HTTP suite again, on PostgreSQL (the backend matrix, SPEC §8).
#
#   scripts/test-server-pg.sh URL [TEST-ARGS...]
#
# Runs the kernex-server test binaries that `cargo test --workspace` built, each with
# KERNEX_TEST_DATABASE_URL=URL (every test gets a fresh database there, dropped after).
# It does not call `cargo test -p kernex-server`: selecting one package resolves features
# differently from the workspace, so cargo rebuilds the whole dependency tree a second
# time, which doubles the build time and the disk the target dir takes.
# Extra arguments go to every test binary (a name filter, `--nocapture`, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

url="${1:?usage: scripts/test-server-pg.sh POSTGRES-URL [TEST-ARGS...]}"
shift

# The same selection as `cargo test --workspace`, so nothing is rebuilt; the JSON lines
# name each test executable and the package it belongs to.
mapfile -t executables < <(
    cargo test --workspace --no-run --message-format=json-render-diagnostics |
        python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    if msg["profile"]["test"] and "#kernex-server@" in msg["package_id"]:
        print(msg["executable"])
'
)
if [ "${#executables[@]}" -eq 0 ]; then
    echo "no kernex-server test binaries found" >&2
    exit 1
fi

failed=0
for exe in "${executables[@]}"; do
    echo "-- $(basename "$exe") on PostgreSQL"
    # cargo runs a package's tests from the package dir; so does this.
    if ! (cd server && KERNEX_TEST_DATABASE_URL="$url" "$exe" "$@"); then
        failed=$((failed + 1))
    fi
done
if [ "$failed" -ne 0 ]; then
    echo "$failed of ${#executables[@]} kernex-server test binaries failed on PostgreSQL" >&2
    exit 1
fi
echo "all ${#executables[@]} kernex-server test binaries passed on PostgreSQL"
