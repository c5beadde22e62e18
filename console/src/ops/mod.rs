//! Scripted subcommands (SPEC §4). Never prompt; exit 0 ok, 1 refused/failed, 2 usage or
//! unreachable.

use crate::cli::{Command, ConnArgs};

/// Run one scripted subcommand and return the process exit code.
pub async fn run(cmd: Command, conn: &ConnArgs, json: bool) -> u8 {
    let _ = (cmd, conn, json);
    eprintln!("kernex-console: not implemented yet");
    2
}
