//! The event loop: keys, server messages and a tick in one `select!`, with drawing
//! throttled so a busy fleet cannot make the terminal the bottleneck.

use std::time::Duration;

use chrono::Utc;
use crossterm::event::Event;
use futures_util::{Stream, StreamExt};
use ratatui::Terminal;
use ratatui::backend::Backend;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::App;
use super::request::Msg;
use crate::api::Api;
use crate::live;

/// At most this many frames per second while events pour in; keys draw at once.
const FRAME: Duration = Duration::from_millis(50);
/// Messages handled before drawing again, so a flood cannot starve the screen.
const BATCH: usize = 4096;

impl App {
    /// Run until the operator quits (or the key stream ends). Generic over the backend
    /// and the key source so tests can drive it without a terminal.
    pub async fn run<B, S>(
        &mut self,
        terminal: &mut Terminal<B>,
        api: Api,
        mut keys: S,
    ) -> Result<(), B::Error>
    where
        B: Backend,
        S: Stream<Item = std::io::Result<Event>> + Unpin,
    {
        let (tx, mut rx) = mpsc::channel::<Msg>(BATCH);
        let live = tokio::spawn(live::follow(api.clone(), tx.clone()));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut stop = Signals::new();
        let mut redraw_at: Option<Instant> = Some(Instant::now());
        loop {
            for req in self.take_requests() {
                let (api, tx) = (api.clone(), tx.clone());
                tokio::spawn(async move {
                    let msg = req.execute(&api).await;
                    let _ = tx.send(msg).await;
                });
            }
            if self.quit {
                break;
            }
            if redraw_at.is_some_and(|t| t <= Instant::now()) {
                self.prepare();
                let size = terminal.size()?;
                self.page = crate::views::body_rows(size.height);
                terminal.draw(|f| crate::views::draw(f, self))?;
                redraw_at = None;
            }
            let deadline = redraw_at;
            tokio::select! {
                key = keys.next() => match key {
                    Some(Ok(Event::Key(k))) => {
                        self.on_key(k);
                        redraw_at = Some(Instant::now());
                    }
                    Some(Ok(Event::Resize(..))) => {
                        terminal.autoresize()?;
                        redraw_at = Some(Instant::now());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::error!("terminal input failed: {e}");
                        self.quit = true;
                    }
                    None => self.quit = true,
                },
                Some(msg) = rx.recv() => {
                    self.on_msg(msg);
                    let mut n = 1;
                    while n < BATCH {
                        let Ok(msg) = rx.try_recv() else { break };
                        self.on_msg(msg);
                        n += 1;
                    }
                    redraw_at.get_or_insert_with(|| Instant::now() + FRAME);
                }
                _ = tick.tick() => {
                    self.tick(Utc::now());
                    redraw_at.get_or_insert_with(Instant::now);
                }
                _ = sleep_until(deadline) => {}
                _ = stop.recv() => {
                    tracing::info!("terminated by a signal");
                    self.quit = true;
                }
            }
        }
        live.abort();
        Ok(())
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// SIGTERM and SIGHUP (the SSH session went away) end the console like `q` does, so the
/// terminal is restored and the demo's children are stopped.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        Signals {
            term: signal(SignalKind::terminate()).ok(),
            hup: signal(SignalKind::hangup()).ok(),
        }
    }

    async fn recv(&mut self) {
        async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = one(&mut self.term) => {}
            _ = one(&mut self.hup) => {}
        }
    }
}

/// Open the TUI against the server `conn` names. Returns the exit code.
pub async fn run_tui(conn: &crate::cli::ConnArgs) -> u8 {
    match Api::from_conn(conn) {
        Ok(api) => run_tui_with(api, conn.log_file.as_deref()).await,
        Err(e) => {
            eprintln!("kernex-console: {e}");
            e.exit_code()
        }
    }
}

/// Open the TUI with a ready client (the demo uses this).
pub async fn run_tui_with(api: Api, log_file: Option<&std::path::Path>) -> u8 {
    // A wrong token is the operator's mistake to fix now, not a state to retry in; an
    // unreachable server is shown as reconnecting and waited for.
    if let Err(
        e @ crate::api::ApiError::Refused {
            status: 401 | 403, ..
        },
    ) = api.bundles().await
    {
        eprintln!("kernex-console: {e}");
        return 1;
    }
    let log = crate::logging::init(log_file);
    let mut terminal = match crate::tui::init() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kernex-console: {e}");
            return 2;
        }
    };
    tracing::info!(server = api.server(), "console started");
    let mut app = App::new(api.server());
    let result = app
        .run(&mut terminal, api, crossterm::event::EventStream::new())
        .await;
    crate::tui::restore();
    match result {
        Ok(()) => 0,
        Err(e) => {
            let where_ = log
                .as_ref()
                .map(|(_, p)| format!(" (log: {})", p.display()))
                .unwrap_or_default();
            eprintln!("kernex-console: terminal error: {e}{where_}");
            1
        }
    }
}
