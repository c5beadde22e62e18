//! What `kernex-agent status` and `history` print: read from the state dir only (plus
//! one short probe of the server), so they work offline and beside the running daemon.

use std::fmt::Write as _;
use std::fs::OpenOptions;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::client::Client;
use crate::health::{Problem, ProblemKind, diagnose, exit, exit_code, problem};
use crate::identity::DeviceFile;
use crate::paths::Paths;
use crate::queue::Queue;
use crate::state::{
    AgentState, FailedDeployment, HEARTBEAT_SAVE_EVERY, InProgress, LastError, LocalRecord,
    StateStore,
};

/// `kernex-agent status --json`.
#[derive(Debug, Default, Serialize)]
pub struct StatusReport {
    pub device_id: Option<String>,
    pub admission: Option<String>,
    pub server: String,
    /// Whether the server answered the probe; null when not probed (`--offline`).
    pub reachable: Option<bool>,
    pub probe_error: Option<String>,
    pub daemon_running: bool,
    /// As saved by the daemon: it lags the daemon's own by up to
    /// [`HEARTBEAT_SAVE_EVERY`] while nothing else changes.
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
    /// The newest failed deployment with its scripts' output (kept after later ones).
    pub last_failure: Option<FailedDeployment>,
    pub in_progress: Option<InProgress>,
    pub last_error: Option<LastError>,
    pub kept_bundles: Vec<String>,
    pub agent_version: String,
    pub state_dir: String,
    /// The process exit code: see [`exit`].
    pub exit_code: u8,
    /// What is wrong, each with the next step; empty when healthy.
    pub problems: Vec<Problem>,
}

/// Gather the report. `client` is `None` with `--offline`.
pub async fn gather(
    paths: &Paths,
    server: &str,
    client: Option<&Client>,
) -> anyhow::Result<StatusReport> {
    let state_dir = paths
        .root
        .canonicalize()
        .unwrap_or_else(|_| paths.root.clone())
        .display()
        .to_string();
    if !paths.root.is_dir() {
        // A typo'd --state-dir must not read as "a device that never ran".
        let problems = vec![problem(
            ProblemKind::NoStateDir,
            format!("the state dir {state_dir} does not exist"),
            "check --state-dir / KERNEX_STATE_DIR (the daemon creates the dir on its first \
             `kernex-agent run`)"
                .into(),
        )];
        return Ok(StatusReport {
            server: server.to_owned(),
            agent_version: crate::AGENT_VERSION.to_owned(),
            state_dir,
            exit_code: exit_code(&problems),
            problems,
            ..Default::default()
        });
    }
    // Whatever cannot be read is said, and the rest is still shown: a technician
    // without read access to one file (or with a damaged one) still learns something.
    let mut problems = Vec::new();
    let unreadable = |path: &std::path::Path, e: std::io::Error| {
        problem(
            ProblemKind::Unreadable,
            format!("cannot read {}: {e}", path.display()),
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                "run status as the agent's user (or with sudo): the state dir is private"
            } else {
                "the daemon moves a damaged file aside on its next start (and registers \
                 again if it was device.json); see its logs/"
            }
            .into(),
        )
    };
    let device = DeviceFile::load(&paths.device()).unwrap_or_else(|e| {
        problems.push(unreadable(&paths.device(), e));
        None
    });
    let state = StateStore::read(&paths.state()).unwrap_or_else(|e| {
        problems.push(unreadable(&paths.state(), e));
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
    let mut report = StatusReport {
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
        last_failure: state.last_failure.clone(),
        in_progress: state.in_progress.clone(),
        last_error: state.last_error.clone(),
        kept_bundles: state.bundles.iter().map(|b| b.version.clone()).collect(),
        agent_version: crate::AGENT_VERSION.to_owned(),
        state_dir,
        exit_code: exit::OK,
        problems: Vec::new(),
    };
    problems.extend(diagnose(&report, Utc::now()));
    report.exit_code = exit_code(&problems);
    report.problems = problems;
    Ok(report)
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

pub(crate) fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn ago(t: DateTime<Utc>) -> String {
    let secs = (Utc::now() - t).num_seconds();
    let when = stamp(t);
    match secs {
        s if s < 0 => when,
        s if s < 120 => format!("{when} ({s} s ago)"),
        s if s < 7200 => format!("{when} ({} min ago)", s / 60),
        s if s < 172_800 => format!("{when} ({} h ago)", s / 3600),
        s => format!("{when} ({} days ago)", s / 86_400),
    }
}

pub(crate) fn outcome(r: &LocalRecord) -> String {
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

/// The first line of the record's error, without the "; rolled back to X" the agent
/// appends (the outcome says that already).
fn error_line(r: &LocalRecord) -> Option<String> {
    let first = r.error_message.as_deref()?.lines().next()?.trim();
    let first = match &r.rolled_back_to {
        Some(v) => first
            .strip_suffix(&format!("; rolled back to {v}"))
            .unwrap_or(first),
        None => first,
    };
    (!first.is_empty()).then(|| first.to_owned())
}

/// Lines of the log tail `status` prints (the whole tail is in `--json`).
const TAIL_LINES: usize = 20;

/// The human-readable status.
pub fn render(r: &StatusReport) -> String {
    if r.problems.iter().any(|p| p.kind == ProblemKind::NoStateDir) {
        return render_problems(r);
    }
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
            (None, _) => "not registered".into(),
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
            .map(|t| {
                format!(
                    "{} (saved at least every {} min)",
                    ago(t),
                    HEARTBEAT_SAVE_EVERY.as_secs() / 60
                )
            })
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
            if let Some(e) = error_line(d) {
                line("", e);
            }
        }
        None => line("last deployment", none.clone()),
    }
    line(
        "last error",
        r.last_error
            .as_ref()
            .map(|e| format!("{} — {}", e.message, ago(e.at)))
            .unwrap_or_else(|| none.clone()),
    );
    line("agent version", r.agent_version.clone());
    line("state dir", r.state_dir.clone());
    if let Some(f) = &r.last_failure {
        let d = &f.record;
        line(
            "last failure",
            format!(
                "{} — {} ({})",
                outcome(d),
                ago(d.finished_at),
                d.deployment_id
            ),
        );
        if let Some(e) = error_line(d) {
            line("", e);
        }
        match f.log_tail.as_deref().filter(|t| !t.trim().is_empty()) {
            Some(tail) => {
                let lines: Vec<&str> = tail.lines().collect();
                let skip = lines.len().saturating_sub(TAIL_LINES);
                line(
                    "",
                    if skip > 0 {
                        format!("log tail (last {TAIL_LINES} lines; all of it in --json):")
                    } else {
                        "log tail:".into()
                    },
                );
                for l in &lines[skip..] {
                    line("", format!("  {l}"));
                }
            }
            None => line("", "no script output".into()),
        }
    }
    out + &render_problems(r)
}

/// The health verdict: each problem with its next step, and the exit code.
fn render_problems(r: &StatusReport) -> String {
    let mut out = String::new();
    if r.problems.is_empty() {
        let _ = writeln!(out, "{:<17}OK", "health");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<17}{} problem{} (exit {})",
        "health",
        r.problems.len(),
        if r.problems.len() == 1 { "" } else { "s" },
        r.exit_code
    );
    for p in &r.problems {
        let _ = writeln!(out, "  ✗ {}", p.message);
        let _ = writeln!(out, "    next: {}", p.next_step);
    }
    out
}

/// The human-readable local history, newest first. Columns are as wide as their widest
/// value, so long versions do not push the rest out of line.
pub fn render_history(records: &[LocalRecord]) -> String {
    if records.is_empty() {
        return "no deployments executed yet\n".into();
    }
    let width = |title: &str, f: &dyn Fn(&LocalRecord) -> usize| {
        records.iter().map(f).max().unwrap_or(0).max(title.len())
    };
    let kind_w = width("KIND", &|r| r.kind.as_str().len());
    let version_w = width("VERSION", &|r| r.bundle_version.chars().count());
    let status_w = width("STATUS", &|r| r.status.as_str().len());
    let mut out = format!(
        "{:<23}  {:<kind_w$}  {:<version_w$}  {:<status_w$}  {:>7}  {}\n",
        "FINISHED", "KIND", "VERSION", "STATUS", "SECONDS", "DEPLOYMENT"
    );
    let indent = 23 + 2;
    for r in records {
        let _ = writeln!(
            out,
            "{:<23}  {:<kind_w$}  {:<version_w$}  {:<status_w$}  {:>7.1}  {}",
            r.finished_at.format("%Y-%m-%d %H:%M:%S UTC"),
            r.kind.as_str(),
            r.bundle_version,
            r.status.as_str(),
            r.duration_seconds,
            r.deployment_id
        );
        if let Some(v) = &r.rolled_back_to {
            let _ = writeln!(out, "{:indent$}rolled back to {v}", "");
        }
        if let Some(e) = error_line(r) {
            let _ = writeln!(out, "{:indent$}{e}", "");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::tests::healthy;
    use kernex_common::api::{DeploymentKind, ResultStatus};

    fn record(version: &str, status: ResultStatus, rolled_back_to: Option<&str>) -> LocalRecord {
        LocalRecord {
            deployment_id: format!("dep-{version}"),
            kind: DeploymentKind::Deploy,
            bundle_version: version.into(),
            status,
            error_message: rolled_back_to
                .map(|v| format!("deploy script deploy.sh exited with 1; rolled back to {v}")),
            rolled_back_to: rolled_back_to.map(str::to_owned),
            started_at: Utc::now(),
            finished_at: Utc::now(),
            duration_seconds: 1.5,
            report_id: "r".into(),
        }
    }

    #[tokio::test]
    async fn a_missing_state_dir_exits_2_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().join("nonexistent/dir"));
        let r = gather(&paths, "http://127.0.0.1:9", None).await.unwrap();
        assert_eq!(r.exit_code, exit::UNKNOWN);
        assert_eq!(r.problems[0].kind, ProblemKind::NoStateDir);
        let text = render(&r);
        assert!(text.contains("does not exist"), "{text}");
        assert!(!text.contains("not registered"), "{text}");
        assert!(!text.contains("not running"), "{text}");
    }

    #[tokio::test]
    async fn a_damaged_state_file_exits_2() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        std::fs::write(paths.state(), "{truncated").unwrap();
        let r = gather(&paths, "http://127.0.0.1:9", None).await.unwrap();
        assert_eq!(r.exit_code, exit::UNKNOWN);
        assert_eq!(r.problems[0].kind, ProblemKind::Unreadable);
        assert!(
            r.problems[0]
                .next_step
                .contains("moves a damaged file aside")
        );
    }

    #[test]
    fn history_aligns_long_versions_and_says_rolled_back_once() {
        let records = [
            record(
                "1.3.0-unhealthy-long-name",
                ResultStatus::Failed,
                Some("1.0.0"),
            ),
            record("1.0.0", ResultStatus::Success, None),
        ];
        let text = render_history(&records);
        let lines: Vec<&str> = text.lines().collect();
        let col = |l: &str| l.find("dep-").unwrap();
        assert_eq!(col(lines[1]), col(lines[4]), "{text}");
        assert_eq!(lines[0].find("DEPLOYMENT"), Some(col(lines[1])), "{text}");
        assert_eq!(text.matches("rolled back to").count(), 1, "{text}");
        assert!(
            text.contains("deploy script deploy.sh exited with 1"),
            "{text}"
        );
    }

    #[test]
    fn status_shows_the_last_failure_with_its_log_tail() {
        let failed = record("1.2.0", ResultStatus::Failed, Some("1.1.0"));
        let tail: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let r = StatusReport {
            last_deployment: Some(failed.clone()),
            last_failure: Some(FailedDeployment {
                record: failed,
                log_tail: Some(tail),
            }),
            ..healthy()
        };
        let r = StatusReport {
            problems: diagnose(&r, Utc::now()),
            exit_code: exit::UNHEALTHY,
            ..r
        };
        let text = render(&r);
        assert!(text.contains("line 30"), "{text}");
        assert!(!text.contains("line 10\n"), "{text}");
        assert!(
            text.contains("health           1 problem (exit 1)"),
            "{text}"
        );
        assert!(text.contains("next: "), "{text}");
        assert_eq!(
            text.matches("rolled back to 1.1.0").count(),
            3,
            "once per outcome line and once in the problem: {text}"
        );
    }
}
