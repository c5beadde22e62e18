//! `kernex-console`: thin entry point; see the library for everything else.

use std::process::ExitCode;

use clap::Parser;
use kernex_console::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kernex-console: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            None => kernex_console::app::run_tui(&cli.conn).await,
            Some(Command::Demo(args)) => kernex_console::demo::run(&cli.conn, &args).await,
            Some(cmd) => kernex_console::ops::run(cmd, &cli.conn, cli.json).await,
        }
    });
    // Don't wait for background tasks (an open event stream) once we are done.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    ExitCode::from(code)
}
