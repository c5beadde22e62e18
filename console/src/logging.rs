//! The console logs to a file, never to the screen it draws on.

use std::path::{Path, PathBuf};

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Default log file: `~/.local/state/kernex/console.log` (or the platform equivalent).
pub fn default_path() -> PathBuf {
    directories::ProjectDirs::from("", "", "kernex")
        .map(|d| {
            d.state_dir()
                .unwrap_or_else(|| d.data_local_dir())
                .join("console.log")
        })
        .unwrap_or_else(|| std::env::temp_dir().join("kernex-console.log"))
}

/// Send tracing output to `path` (level from `KERNEX_LOG`, default info). Keep the guard
/// alive until exit so the last lines are written. `None` when the file can't be opened:
/// the console then runs without a log rather than not at all.
pub fn init(path: Option<&Path>) -> Option<(WorkerGuard, PathBuf)> {
    let path = path.map(Path::to_path_buf).unwrap_or_else(default_path);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).ok()?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .ok()?;
    let (writer, guard) = tracing_appender::non_blocking(file);
    let filter = EnvFilter::try_from_env("KERNEX_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .try_init()
        .ok()?;
    Some((guard, path))
}
