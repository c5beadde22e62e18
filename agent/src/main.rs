//! `kernex-agent`: the device daemon (SPEC §3). Not built yet — this crate only reserves
//! its place in the workspace; it says so instead of pretending to run.

fn main() -> std::process::ExitCode {
    eprintln!("kernex-agent: not implemented yet (SPEC §3 is the next piece of work)");
    std::process::ExitCode::from(2)
}
