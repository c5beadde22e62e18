# Kernex recipes. `just` lists them.

set positional-arguments

data_dir := env_var_or_default("KERNEX_DATA_DIR", "")

# List the recipes.
default:
    @just --list

# Run the server on its embedded default store (or $KERNEX_DATA_DIR).
serve *ARGS:
    cargo run --release -p kernex-server -- {{ if data_dir != "" { "--data-dir " + data_dir } else { "" } }} "$@"

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

# Benchmarks (release build): heartbeat cost against fleet size.
bench:
    cargo bench -p kernex-server --bench heartbeat

# Run a device agent against the local server (state in $KERNEX_STATE_DIR or the platform dir).
agent *ARGS:
    cargo run --release -p kernex-agent -- run "$@"
