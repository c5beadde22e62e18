//! `kernex-console`: the operators' TUI and scripted commands (SPEC §4). Not built yet —
//! this crate only reserves its place in the workspace; it says so instead of pretending.

fn main() -> std::process::ExitCode {
    eprintln!("kernex-console: not implemented yet (SPEC §4 follows the agent)");
    std::process::ExitCode::from(2)
}
