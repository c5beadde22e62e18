//! `kernex-agent` binary: see the library docs.

use std::time::Duration;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = kernex_agent::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kernex-agent: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let code = runtime.block_on(kernex_agent::run_cli(cli));
    // Do not wait on work nobody needs any more: a DNS lookup abandoned by a timed-out
    // probe keeps a blocking thread busy for as long as the resolver likes, and
    // `status` promises an answer within 3 s.
    runtime.shutdown_timeout(Duration::from_millis(200));
    code
}
