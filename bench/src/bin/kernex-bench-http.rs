//! `kernex-bench-http`: heartbeats per second, kernex-server against kernex-noop, under
//! wrk (see `kernex_bench::driver`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = kernex_bench::driver::Args::parse();
    if !kernex_bench::wrk::available() {
        eprintln!("kernex-bench-http: wrk not found: install wrk (apt-get install wrk)");
        return std::process::ExitCode::from(2);
    }
    match kernex_bench::driver::run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kernex-bench-http: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
