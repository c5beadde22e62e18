//! `kernex-noop`: the heartbeat route with no work behind it (see `kernex_bench::noop`).
//! Prints its bound address as the first line on stdout.

use std::io::Write as _;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;

/// A no-op axum server with Kernex's heartbeat route, for `kernex-bench-http`.
#[derive(Debug, Parser)]
#[command(name = "kernex-noop", version)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{addr}")?;
    out.flush()?;
    drop(out);
    axum::serve(listener, kernex_bench::noop::router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
