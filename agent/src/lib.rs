//! `kernex-agent`: the device daemon (SPEC §3).
//!
//! It registers the device with a signed request, heartbeats with real CPU and memory
//! figures, runs the deploy / rollback / configure commands the server hands back, and
//! keeps every result in a durable on-disk queue until the server has acknowledged it.
//! Everything it knows lives in one state directory ([`paths::Paths`]), so a technician's
//! `kernex-agent status` can read it with no network and while the daemon runs.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use kernex_agent::{cli::Cli, run_cli};
//! use clap::Parser;
//! let code = run_cli(Cli::parse_from(["kernex-agent", "status", "--offline"])).await;
//! # let _ = code; Ok(()) }
//! ```

pub mod cli; // clap flags and subcommand dispatch
pub mod client; // typed HTTP calls to the server
pub mod context; // what the daemon's parts share
pub mod crashpoint; // named abort points for crash-safety tests
pub mod download; // streamed, resumable, checksummed bundle download
pub mod executed; // executed.log: every deployment id ever executed
pub mod executor; // the deploy / rollback pipeline and crash recovery
pub mod fsutil; // durable file writes (write, fsync, rename, fsync dir)
pub mod health; // status's verdict: problems, next steps, exit codes
pub mod identity; // device key and registration
pub mod logging; // rolling log files, stderr on a terminal, live level changes
pub mod paths; // the state directory layout
pub mod queue; // durable outbox of result reports
pub mod run_as; // --run-as USER for scripts
pub mod runner; // the heartbeat loop
pub mod script; // running bundle scripts with timeout and output tail
pub mod script_env; // the allow-listed environment of scripts
pub mod state; // state.json
pub mod status; // `status`, `history` and `flush` reports
pub mod sysmetrics; // CPU and memory figures for heartbeats
pub mod trust; // trusted signing keys, verification, key rotation

pub use cli::run_cli;

/// Version the agent reports in heartbeats and `status`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
