# Kernex recipes. `just` lists them.

set positional-arguments

data_dir := env_var_or_default("KERNEX_DATA_DIR", "")

# List the recipes.
default:
    @just --list

# Run the server on its embedded default store (or $KERNEX_DATA_DIR).
serve *ARGS:
    cargo run --release -p kernex-server -- {{ if data_dir != "" { "--data-dir " + data_dir } else { "" } }} "$@"

# A local PostgreSQL cluster and two server replicas on it, ports 8000 and 8001 (SPEC §8).
serve-pg *ARGS:
    bash scripts/serve-pg.sh "$@"

# Mint an operator token on a stopped server's data dir.
token NAME:
    cargo run --release -p kernex-server -- token create --name {{NAME}}

# The whole test suite.
test:
    cargo test --workspace

# Formatting and lints, as CI runs them.
check:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# cargo-fuzz (libFuzzer, RUSTC_BOOTSTRAP on stable): each target (default: all) for SECS s.
fuzz SECS="60" *TARGETS:
    #!/usr/bin/env bash
    set -euo pipefail
    secs="$1"; shift
    targets=("$@")
    [ ${#targets[@]} -gt 0 ] || targets=(manifest archive range registration)
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    cd fuzz
    for t in "${targets[@]}"; do
        mkdir -p "target/corpus/$t"
        echo "== fuzz $t for ${secs}s"
        RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$t" "target/corpus/$t" "corpus/$t" -- \
            -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1
    done

# Fold what `just fuzz` found into the kept corpus (fuzz/corpus), minimised.
fuzz-merge *TARGETS:
    #!/usr/bin/env bash
    set -euo pipefail
    targets=("$@")
    [ ${#targets[@]} -gt 0 ] || targets=(manifest archive range registration)
    cd fuzz
    for t in "${targets[@]}"; do
        RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$t" "corpus/$t" "target/corpus/$t" -- -set_cover_merge=1
    done

# Benchmarks (release build): server heartbeats vs fleet size; the console at 100k devices.
bench:
    cargo bench -p kernex-server --bench heartbeat
    cargo bench -p kernex-console --bench fleet

# HTTP heartbeats/s under wrk, kernex-server vs a no-op axum server (flags: `--help`).
bench-http *ARGS:
    cargo build --release -p kernex-server -p kernex-bench
    cargo run --release -q -p kernex-bench --bin kernex-bench-http -- "$@"

# bench-http with kernex-server on PostgreSQL too (1 and 2 replicas), beside sled; it
# starts a local cluster (target/pg-bench) for it.
bench-http-pg *ARGS:
    cargo build --release -p kernex-server -p kernex-bench
    cargo run --release -q -p kernex-bench --bin kernex-bench-http -- --database-url "$(bash scripts/pg-cluster.sh start target/pg-bench 55435)" "$@"

# Run a device agent against the local server (state in $KERNEX_STATE_DIR or the platform dir).
agent *ARGS:
    cargo run --release -p kernex-agent -- run "$@"

# The console recipes run in the directory `just` was called from ([no-cd]), so paths
# (bundle folders, archives, -o) mean what they say there. They reach $KERNEX_SERVER
# (default http://127.0.0.1:8000) with $KERNEX_TOKEN, else the local server's admin.token
# ($KERNEX_DATA_DIR/admin.token, or the platform data dir `just serve` uses by default).
kx_console := "cargo run --release --manifest-path '" + justfile_directory() + "/Cargo.toml' -p kernex-console --"

# Open the operator console (TUI), or run a subcommand: `just console deployments --json`.
[no-cd]
console *ARGS:
    {{kx_console}} "$@"

# A throw-away live fleet (server, agents, fixture bundles) with the console open on it.
[no-cd]
demo *ARGS:
    {{kx_console}} demo "$@"

# The fleet as a table (`just devices --tag canary`, `just devices --json`).
[no-cd]
devices *ARGS:
    {{kx_console}} devices "$@"

# Pack a bundle folder into ./<name>-<version>.tar.gz (or `-o FILE`); prints the path.
[no-cd]
pack DIR *ARGS:
    {{kx_console}} bundle pack "$@"

# Upload a bundle archive.
[no-cd]
push FILE:
    {{kx_console}} bundle push "$@"

# TARGETS of deploy: comma-separated device ids (`a1b2,c3d4`), or `tag=` and
# comma-separated tags (`tag=canary`, `tag=site:berlin,site:paris`: every accepted device
# carrying any of them). Ids never contain `=`, so the two cannot be confused. Flags
# follow: `just deploy 1.1.0 tag=canary --wait --timeout 600`.

# Deploy VERSION to TARGETS (device ids a,b or tag=NAME); add --wait to follow it.
[no-cd]
deploy VERSION TARGETS *FLAGS:
    #!/usr/bin/env bash
    set -euo pipefail
    version="$1" targets="$2"
    shift 2
    if [[ "$targets" == tag=* ]]; then
        args=()
        IFS=',' read -ra tags <<< "${targets#tag=}"
        for t in "${tags[@]}"; do args+=(--tag "$t"); done
    else
        args=(--devices "$targets")
    fi
    exec {{kx_console}} deploy "$version" "${args[@]}" "$@"

# Roll TARGETS (device ids a,b) back to a VERSION they ran; add --wait to follow it.
[no-cd]
rollback VERSION TARGETS *FLAGS:
    #!/usr/bin/env bash
    set -euo pipefail
    version="$1" targets="$2"
    shift 2
    if [[ "$targets" == tag=* ]]; then
        echo "just rollback: name the devices (comma-separated ids); tags are for deploy" >&2
        exit 2
    fi
    exec {{kx_console}} rollback "$version" --devices "$targets" "$@"

# Set a device's config: `just config ID polling_interval=30 log_level=debug metadata='{}'`.
[no-cd]
config DEVICE +PAIRS:
    {{kx_console}} config set "$@"
