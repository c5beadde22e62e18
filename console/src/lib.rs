//! `kernex-console`: the operator's terminal.
//!
//! With no subcommand it opens a ratatui TUI on the live fleet (fed by the server's
//! `/events` stream); with one it runs a scripted operation and exits with SPEC §4's
//! codes (0 ok, 1 refused or failed, 2 usage or unreachable).
//!
//! ```no_run
//! # async fn f() -> Result<(), kernex_console::api::ApiError> {
//! let api = kernex_console::api::Api::new("http://127.0.0.1:8000", "token", None)?;
//! let devices = api.devices(&Default::default()).await?;
//! # Ok(()) }
//! ```

pub mod action; // what a key asks for
pub mod api; // typed operator client
pub mod app; // state, update(Action), the event loop
pub mod cli; // clap definitions
pub mod context; // the saved server + token of `login`
pub mod demo; // throw-away server + agents + TUI
pub mod fmt; // byte sizes and ages, shared by the TUI and ops
pub mod keymap; // keys → actions, per view; drives footer and help
pub mod live; // the /events SSE stream with reconnect
pub mod logging; // file logging (never the screen)
pub mod ops; // scripted subcommands
pub mod tui; // terminal set-up, restore, panic hook
pub mod views; // one widget per screen
