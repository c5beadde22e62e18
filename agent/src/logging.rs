//! Logs: daily rolling files under `logs/` (the last 14 kept), plus stderr when stderr
//! is a terminal. The level can change while the daemon runs (a `configure` command).

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

/// Daily files kept.
const LOG_FILES_KEPT: usize = 14;

/// Changes the log level of the running process.
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl LogControl {
    pub fn set_level(&self, level: &str) {
        if let Err(e) = self.handle.reload(filter(level)) {
            tracing::warn!(error = %e, "could not change the log level");
        } else {
            tracing::info!(level, "log level set");
        }
    }
}

/// Our crates at `level`, everything else (HTTP internals) at warn.
fn filter(level: &str) -> EnvFilter {
    EnvFilter::new(format!("warn,kernex_agent={level},kernex_common={level}"))
}

/// Logging for the daemon: files in `dir`, and stderr on a terminal.
pub fn init_daemon(dir: &Path, level: &str) -> anyhow::Result<LogControl> {
    let files = RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .filename_prefix("kernex-agent")
        .filename_suffix("log")
        .max_log_files(LOG_FILES_KEPT)
        .build(dir)
        .with_context(|| format!("cannot open log files in {}", dir.display()))?;
    let (filter, handle) = reload::Layer::new(filter(level));
    let terminal = std::io::stderr().is_terminal();
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_writer(files).with_ansi(false))
        .with(terminal.then(|| fmt::layer().with_writer(std::io::stderr)))
        .try_init()
        .context("logging was already set up")?;
    Ok(LogControl { handle })
}

/// Logging for the short commands (`status`, `flush`, `history`): warnings to stderr on
/// a terminal only, so their output stays clean for scripts.
pub fn init_cli() {
    if std::io::stderr().is_terminal() {
        let _ = tracing_subscriber::registry()
            .with(EnvFilter::new("warn"))
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init();
    }
}
