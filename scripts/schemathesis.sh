#!/usr/bin/env bash
# Third-party API fuzzing: schemathesis (from PyPI, in ./.venv) against the OpenAPI
# document a real kernex-server serves, with an operator token. Fails on any 5xx and on
# any response that does not match the document (status, content type, headers, body).
#
#   scripts/schemathesis.sh                  # bounded pass (SCHEMATHESIS_MAX_TIME, 150 s)
#   SCHEMATHESIS_MAX_TIME=900 scripts/schemathesis.sh --phases=examples,coverage,fuzzing,stateful
#
# Extra arguments go to `schemathesis run`. KERNEX_PROFILE=release uses a release build.
# The server's log is left in target/schemathesis-server.log.
set -euo pipefail
cd "$(dirname "$0")/.."

version="4.32.5"
max_time="${SCHEMATHESIS_MAX_TIME:-150}"
profile="${KERNEX_PROFILE:-debug}"
venv=".venv"

if [ ! -x "$venv/bin/schemathesis" ] || ! "$venv/bin/schemathesis" --version | grep -q "$version"; then
    echo "== installing schemathesis $version into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi

echo "== building kernex-server ($profile)"
if [ "$profile" = release ]; then
    cargo build --quiet --release -p kernex-server
else
    cargo build --quiet -p kernex-server
fi
server="target/$profile/kernex-server"

work="$(mktemp -d)"
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    mkdir -p target && cp "$work/server.log" target/schemathesis-server.log 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# A fresh data dir and a random operator token (set at start-up, never printed).
token="kxo_st_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
KERNEX_ADMIN_TOKEN="$token" KERNEX_ENROLLMENT_TOKEN="st-enroll-$RANDOM" \
    "$server" --listen 127.0.0.1:0 --data-dir "$work/data" --log-level info \
    2> "$work/server.log" &
pid=$!
addr=""
for _ in $(seq 1 600); do
    addr="$(sed -n 's/.*listening.*addr=\([0-9.:]*\).*/\1/p' "$work/server.log" | head -1)"
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/server.log" >&2; echo "server did not start" >&2; exit 1; }
    sleep 0.1
done
[ -n "$addr" ] || { cat "$work/server.log" >&2; echo "server did not say where it listens" >&2; exit 1; }
echo "== kernex-server on $addr; schemathesis for at most ${max_time}s"

status=0
"$venv/bin/schemathesis" run "http://$addr/api/v1/openapi.json" \
    --url "http://$addr" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
    --max-time "$max_time" \
    --workers 1 \
    --request-timeout 10 \
    --suppress-health-check all \
    --no-color \
    "$@" || status=$?

if grep -q ' ERROR ' "$work/server.log"; then
    echo "== the server logged errors:" >&2
    grep ' ERROR ' "$work/server.log" | tail -20 >&2
    status=1
fi
exit "$status"
