//! What `kernex-agent status` and `history` print: read from the state dir only (plus
//! one short probe of the server), so they work offline and beside the running daemon.

use std::fmt::Write as _;
use std::fs::OpenOptions;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::client::Client;
use crate::identity::DeviceFile;
use crate::paths::Paths;
use crate::queue::Queue;
use crate::state::{AgentState, InProgress, LastError, LocalRecord, StateStore};

/// `kernex-agent status --json`.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub device_id: Option<String>,
    pub admission: Option<String>,
    pub server: String,
    /// Whether the server answered the probe; null when not probed (`--offline`).
    pub reachable: Option<bool>,
    pub probe_error: Option<String>,
    pub daemon_running: bool,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub current_bundle_version: Option<String>,
    pub previous_bundle_version: Option<String>,
    /// Null until the server's configuration was first applied.
    pub config_version: Option<u64>,
    pub polling_interval: u64,
    pub log_level: String,
    pub queued_reports: usize,
    pub oldest_queued_at: Option<DateTime<Utc>>,
    pub rejected_reports: usize,
    pub last_deployment: Option<LocalRecord>,
    pub in_progress: Option<InProgress>,
    pub last_error: Option<LastError>,
    pub kept_bundles: Vec<String>,
    pub agent_version: String,
    pub state_dir: String,
    /// Files that could not be read (their fields above fall back to defaults).
    pub problems: Vec<String>,
}

/// Gather the report. `client` is `None` with `--offline`.
pub async fn gather(
    paths: &Paths,
    server: &str,
    client: Option<&Client>,
) -> anyhow::Result<StatusReport> {
    // Whatever cannot be read is said, and the rest is still shown: a technician
    // without read access to one file (or with a damaged one) still learns something.
    let mut problems = Vec::new();
    let device = DeviceFile::load(&paths.device()).unwrap_or_else(|e| {
        problems.push(format!("{}: {e}", paths.device().display()));
        None
    });
    let state = StateStore::read(&paths.state()).unwrap_or_else(|e| {
        problems.push(format!("{}: {e}", paths.state().display()));
        AgentState::default()
    });
    let queue = Queue::new(paths.queue());
    let (reachable, probe_error) = match client {
        None => (None, None),
        Some(c) => match c.probe().await {
            Ok(()) => (Some(true), None),
            Err(e) => (Some(false), Some(e.to_string())),
        },
    };
    let rejected = queue.rejected_len();
    Ok(StatusReport {
        device_id: device.as_ref().map(|d| d.device_id.clone()),
        admission: state
            .admission
            .or(device.as_ref().map(|d| d.admission))
            .map(|a| a.as_str().to_owned()),
        server: server.to_owned(),
        reachable,
        probe_error,
        daemon_running: daemon_running(paths),
        last_heartbeat_at: state.last_heartbeat_at,
        current_bundle_version: state.current_bundle_version.clone(),
        previous_bundle_version: state.previous_bundle_version.clone(),
        config_version: (state.config.version > 0).then_some(state.config.version),
        polling_interval: state.config.polling_interval,
        log_level: state.config.log_level.clone(),
        queued_reports: queue.len(),
        oldest_queued_at: queue.oldest(),
        rejected_reports: rejected,
        last_deployment: state.history.front().cloned(),
        in_progress: state.in_progress.clone(),
        last_error: state.last_error.clone(),
        kept_bundles: state.bundles.iter().map(|b| b.version.clone()).collect(),
        agent_version: crate::AGENT_VERSION.to_owned(),
        state_dir: paths
            .root
            .canonicalize()
            .unwrap_or_else(|_| paths.root.clone())
            .display()
            .to_string(),
        problems,
    })
}

/// Is a daemon holding `agent.lock`? (A shared probe lock, released at once.)
fn daemon_running(paths: &Paths) -> bool {
    let Ok(file) = OpenOptions::new().read(true).open(paths.lock()) else {
        return false;
    };
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(_) => true,
    }
}

fn ago(t: DateTime<Utc>) -> String {
    let secs = (Utc::now() - t).num_seconds();
    let when = t.format("%Y-%m-%d %H:%M:%S UTC");
    match secs {
        s if s < 0 => format!("{when}"),
        s if s < 120 => format!("{when} ({s} s ago)"),
        s if s < 7200 => format!("{when} ({} min ago)", s / 60),
        s if s < 172_800 => format!("{when} ({} h ago)", s / 3600),
        s => format!("{when} ({} days ago)", s / 86_400),
    }
}

fn outcome(r: &LocalRecord) -> String {
    let mut s = format!(
        "{} {} {}",
        r.kind.as_str(),
        r.bundle_version,
        r.status.as_str()
    );
    if let Some(v) = &r.rolled_back_to {
        let _ = write!(s, ", rolled back to {v}");
    }
    s
}

/// The human-readable status.
pub fn render(r: &StatusReport) -> String {
    let mut out = String::new();
    let none = "—".to_owned();
    let mut line = |k: &str, v: String| {
        let _ = writeln!(out, "{k:<17}{v}");
    };
    line(
        "device",
        match (&r.device_id, &r.admission) {
            (Some(id), Some(a)) => format!("{id} ({a})"),
            (Some(id), None) => id.clone(),
            (None, _) => "not registered yet".into(),
        },
    );
    line(
        "server",
        match (r.reachable, &r.probe_error) {
            (None, _) => format!("{} (not probed: --offline)", r.server),
            (Some(true), _) => format!("{} — reachable", r.server),
            (Some(false), e) => format!(
                "{} — NOT reachable ({})",
                r.server,
                e.as_deref().unwrap_or("no answer")
            ),
        },
    );
    line(
        "daemon",
        if r.daemon_running {
            "running"
        } else {
            "not running"
        }
        .into(),
    );
    line(
        "last heartbeat",
        r.last_heartbeat_at
            .map(ago)
            .unwrap_or_else(|| "never".into()),
    );
    line(
        "bundle",
        match (&r.current_bundle_version, &r.previous_bundle_version) {
            (Some(c), Some(p)) => format!("{c} (previous {p})"),
            (Some(c), None) => c.clone(),
            (None, _) => "none installed".into(),
        },
    );
    line(
        "kept bundles",
        if r.kept_bundles.is_empty() {
            none.clone()
        } else {
            r.kept_bundles.join(", ")
        },
    );
    line(
        "config",
        format!(
            "{}, heartbeat every {} s, log level {}",
            r.config_version
                .map(|v| format!("version {v}"))
                .unwrap_or_else(|| "defaults (no server config yet)".into()),
            r.polling_interval,
            r.log_level
        ),
    );
    line(
        "queued reports",
        match (r.queued_reports, r.oldest_queued_at) {
            (0, _) => "0".into(),
            (n, Some(t)) => format!("{n} (oldest queued {})", ago(t)),
            (n, None) => n.to_string(),
        } + &if r.rejected_reports > 0 {
            format!("; {} rejected in queue/rejected", r.rejected_reports)
        } else {
            String::new()
        },
    );
    line(
        "in progress",
        r.in_progress
            .as_ref()
            .map(|p| {
                format!(
                    "{} {} ({}), since {}",
                    p.kind.as_str(),
                    p.bundle_version,
                    p.deployment_id,
                    ago(p.started_at)
                )
            })
            .unwrap_or_else(|| none.clone()),
    );
    match &r.last_deployment {
        Some(d) => {
            line(
                "last deployment",
                format!(
                    "{} — {} ({})",
                    outcome(d),
                    ago(d.finished_at),
                    d.deployment_id
                ),
            );
            if let Some(e) = &d.error_message {
                line("", e.clone());
            }
        }
        None => line("last deployment", none.clone()),
    }
    line(
        "last error",
        r.last_error
            .as_ref()
            .map(|e| format!("{} — {}", e.message, ago(e.at)))
            .unwrap_or(none),
    );
    line("agent version", r.agent_version.clone());
    line("state dir", r.state_dir.clone());
    for p in &r.problems {
        line("CANNOT READ", p.clone());
    }
    out
}

/// The human-readable local history, newest first.
pub fn render_history(records: &[LocalRecord]) -> String {
    if records.is_empty() {
        return "no deployments executed yet\n".into();
    }
    let mut out = format!(
        "{:<24} {:<9} {:<14} {:<8} {:>8}  {}\n",
        "FINISHED", "KIND", "VERSION", "STATUS", "SECONDS", "DEPLOYMENT / NOTE"
    );
    for r in records {
        let _ = writeln!(
            out,
            "{:<24} {:<9} {:<14} {:<8} {:>8.1}  {}",
            r.finished_at.format("%Y-%m-%d %H:%M:%S UTC"),
            r.kind.as_str(),
            r.bundle_version,
            r.status.as_str(),
            r.duration_seconds,
            r.deployment_id
        );
        if let Some(v) = &r.rolled_back_to {
            let _ = writeln!(out, "{:>24} rolled back to {v}", "");
        }
        if let Some(e) = &r.error_message {
            let first = e.lines().next().unwrap_or_default();
            let _ = writeln!(out, "{:>24} {first}", "");
        }
    }
    out
}
