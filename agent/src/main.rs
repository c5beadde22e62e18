//! `kernex-agent` binary: see the library docs.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    kernex_agent::run_cli(kernex_agent::cli::Cli::parse()).await
}
