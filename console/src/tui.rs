//! The real terminal: raw mode and the alternate screen on the way in, restored on the
//! way out, on `q`, on Ctrl-C and on panic (ratatui's hook restores before the message
//! prints, so a panic is readable and the shell is usable).

use std::io::IsTerminal;

use ratatui::DefaultTerminal;

/// Enter the TUI. Fails cleanly when stdout is not a terminal.
pub fn init() -> std::io::Result<DefaultTerminal> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(std::io::Error::other(
            "the console needs a terminal (for scripts, use a subcommand: kernex-console --help)",
        ));
    }
    ratatui::try_init()
}

/// Leave the TUI. Safe to call more than once.
pub fn restore() {
    ratatui::restore();
}
