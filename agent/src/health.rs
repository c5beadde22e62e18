//! The verdict of `kernex-agent status`: what is wrong with the device, the next step
//! for each problem, and the exit code (like `systemctl status`, non-zero when a
//! technician has something to do). Judged from a [`StatusReport`]'s facts alone, so
//! it is tested without a device.

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kernex_common::api::ResultStatus;
use serde::Serialize;

use crate::state::{ErrorSource, HEARTBEAT_SAVE_EVERY};
use crate::status::{StatusReport, outcome, stamp};

/// Exit codes of `kernex-agent status` (with or without `--json`), in the spirit of
/// `systemctl status`: zero only when nothing needs a technician.
pub mod exit {
    /// Registered, admitted, daemon running, server answering, nothing stuck or failed.
    pub const OK: u8 = 0;
    /// Registered but unhealthy: see `problems`.
    pub const UNHEALTHY: u8 = 1;
    /// Cannot tell: usage error, the state dir does not exist or cannot be read.
    pub const UNKNOWN: u8 = 2;
    /// Not registered with a server yet, or not admitted (pending, rejected).
    pub const NOT_REGISTERED: u8 = 3;
}

/// A queued report older than this (and than two polling intervals) is stuck: reports
/// are sent at once and again after every good heartbeat.
pub const STUCK_AFTER: Duration = Duration::from_secs(300);

/// Something a technician should act on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    pub message: String,
    pub next_step: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    NoStateDir,
    Unreadable,
    NotRegistered,
    NotAdmitted,
    DaemonNotRunning,
    ServerUnreachable,
    HeartbeatFailing,
    HeartbeatStale,
    ConfigRefused,
    ReportsStuck,
    ReportsRejected,
    DeploymentFailed,
}

impl ProblemKind {
    pub fn exit_code(self) -> u8 {
        match self {
            ProblemKind::NoStateDir | ProblemKind::Unreadable => exit::UNKNOWN,
            ProblemKind::NotRegistered | ProblemKind::NotAdmitted => exit::NOT_REGISTERED,
            _ => exit::UNHEALTHY,
        }
    }
}

/// The exit code for a list of problems: "cannot tell" before "not registered" before
/// "unhealthy".
pub fn exit_code(problems: &[Problem]) -> u8 {
    let codes: Vec<u8> = problems.iter().map(|p| p.kind.exit_code()).collect();
    [exit::UNKNOWN, exit::NOT_REGISTERED, exit::UNHEALTHY]
        .into_iter()
        .find(|c| codes.contains(c))
        .unwrap_or(exit::OK)
}

pub(crate) fn problem(kind: ProblemKind, message: String, next_step: String) -> Problem {
    Problem {
        kind,
        message,
        next_step,
    }
}

/// What is wrong with the device, judged from the report's facts at `now`.
pub fn diagnose(r: &StatusReport, now: DateTime<Utc>) -> Vec<Problem> {
    let mut out = Vec::new();
    let logs = format!("{}/logs/", r.state_dir);
    let age = |t: DateTime<Utc>| (now - t).to_std().unwrap_or_default();
    let interval = Duration::from_secs(r.polling_interval.max(1));
    match (&r.device_id, r.admission.as_deref()) {
        (None, _) => out.push(problem(
            ProblemKind::NotRegistered,
            format!("this device is not registered with {}", r.server),
            "start the daemon (`kernex-agent run`, with KERNEX_ENROLLMENT_TOKEN set to be \
             admitted at once) and check that the server URL is right"
                .into(),
        )),
        (Some(_), Some("pending")) => out.push(problem(
            ProblemKind::NotAdmitted,
            "this device waits for an operator to accept it (pending)".into(),
            format!(
                "ask an operator to accept it: `kernex-console accept {}` or `a` in the console",
                r.device_id.as_deref().unwrap_or_default()
            ),
        )),
        (Some(_), Some("rejected")) => out.push(problem(
            ProblemKind::NotAdmitted,
            "an operator rejected this device: it gets no commands".into(),
            "ask the operators why; they can accept it again in the console".into(),
        )),
        _ => {}
    }
    if !r.daemon_running {
        let mut message = "the daemon (`kernex-agent run`) is not running".to_owned();
        if let Some(p) = &r.in_progress {
            let _ = write!(
                message,
                "; deployment {} was in progress and is reported as interrupted on the next start",
                p.deployment_id
            );
        }
        out.push(problem(
            ProblemKind::DaemonNotRunning,
            message,
            format!(
                "start it (`kernex-agent run` or your service manager); why it stopped is in {logs}"
            ),
        ));
    }
    if r.reachable == Some(false) {
        out.push(problem(
            ProblemKind::ServerUnreachable,
            format!(
                "the server {} does not answer: {}",
                r.server,
                r.probe_error
                    .as_deref()
                    .map(|e| e.trim_start_matches("server unreachable: "))
                    .unwrap_or("no answer")
            ),
            format!(
                "check the network and the URL (--server / KERNEX_SERVER): `curl {}/healthz`",
                r.server.trim_end_matches('/')
            ),
        ));
    }
    if let Some(e) = r
        .last_error
        .as_ref()
        .filter(|e| e.source == ErrorSource::Heartbeat)
    {
        out.push(problem(
            ProblemKind::HeartbeatFailing,
            format!(
                "heartbeats are failing since {}: {}",
                stamp(e.at),
                e.message
            ),
            format!(
                "the daemon retries with backoff (up to 60 s); fix what the error says, see {logs}"
            ),
        ));
    }
    let stale_after = HEARTBEAT_SAVE_EVERY + 3 * interval;
    if r.daemon_running
        && r.admission.as_deref() == Some("accepted")
        && r.last_heartbeat_at.is_none_or(|t| age(t) > stale_after)
    {
        out.push(problem(
            ProblemKind::HeartbeatStale,
            format!(
                "the daemon runs but no heartbeat was answered for over {} s (last: {})",
                stale_after.as_secs(),
                r.last_heartbeat_at
                    .map(stamp)
                    .unwrap_or_else(|| "never".into())
            ),
            format!("see {logs}; restarting the daemon is safe"),
        ));
    }
    if let Some(e) = r
        .last_error
        .as_ref()
        .filter(|e| e.source == ErrorSource::Config)
    {
        out.push(problem(
            ProblemKind::ConfigRefused,
            e.message.clone(),
            "send a valid configuration (`kernex-console config set`)".into(),
        ));
    }
    let stuck_after = STUCK_AFTER.max(2 * interval);
    if let Some(t) = r.oldest_queued_at.filter(|t| age(*t) > stuck_after) {
        out.push(problem(
            ProblemKind::ReportsStuck,
            format!(
                "{} result report(s) not delivered; the oldest since {} (stuck: older than {} s)",
                r.queued_reports,
                stamp(t),
                stuck_after.as_secs()
            ),
            "`kernex-agent flush` sends them now and says why not".into(),
        ));
    }
    if r.rejected_reports > 0 {
        out.push(problem(
            ProblemKind::ReportsRejected,
            format!(
                "{} result report(s) the server refused are in {}/queue/rejected/",
                r.rejected_reports, r.state_dir
            ),
            format!(
                "the reason is in each `.reason` file and in {logs}; remove the files once handled"
            ),
        ));
    }
    if let Some(d) = r
        .last_deployment
        .as_ref()
        .filter(|d| d.status == ResultStatus::Failed)
    {
        out.push(problem(
            ProblemKind::DeploymentFailed,
            format!("the last deployment failed: {}", outcome(d)),
            "read its log tail (`kernex-agent status`, \"last failure\"); deploy a fixed \
             bundle or roll back from the console"
                .into(),
        ));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::state::{LastError, LocalRecord};
    use kernex_common::api::DeploymentKind;

    fn failed_record() -> LocalRecord {
        LocalRecord {
            deployment_id: "dep-1".into(),
            kind: DeploymentKind::Deploy,
            bundle_version: "1.2.0".into(),
            status: ResultStatus::Failed,
            error_message: Some("deploy script exited with 1; rolled back to 1.1.0".into()),
            rolled_back_to: Some("1.1.0".into()),
            started_at: Utc::now(),
            finished_at: Utc::now(),
            duration_seconds: 1.5,
            report_id: "r".into(),
        }
    }

    /// A registered, accepted device with its daemon running and a fresh heartbeat
    /// (status.rs's tests use it too).
    pub(crate) fn healthy() -> StatusReport {
        StatusReport {
            device_id: Some("dev-1".into()),
            admission: Some("accepted".into()),
            server: "http://127.0.0.1:8000".into(),
            reachable: Some(true),
            daemon_running: true,
            last_heartbeat_at: Some(Utc::now()),
            polling_interval: 60,
            state_dir: "/var/lib/kernex".into(),
            ..Default::default()
        }
    }

    fn kinds(r: &StatusReport) -> Vec<ProblemKind> {
        diagnose(r, Utc::now()).iter().map(|p| p.kind).collect()
    }

    fn code(r: &StatusReport) -> u8 {
        exit_code(&diagnose(r, Utc::now()))
    }

    #[test]
    fn a_healthy_device_exits_0() {
        assert_eq!(kinds(&healthy()), vec![]);
        assert_eq!(code(&healthy()), exit::OK);
        // --offline does not count the server as unreachable.
        let offline = StatusReport {
            reachable: None,
            ..healthy()
        };
        assert_eq!(code(&offline), exit::OK);
    }

    #[test]
    fn each_unhealthy_fact_exits_1_with_a_next_step() {
        let ago = |s: i64| Some(Utc::now() - chrono::Duration::seconds(s));
        let cases = [
            (
                StatusReport {
                    daemon_running: false,
                    ..healthy()
                },
                ProblemKind::DaemonNotRunning,
            ),
            (
                StatusReport {
                    reachable: Some(false),
                    probe_error: Some("connection refused".into()),
                    ..healthy()
                },
                ProblemKind::ServerUnreachable,
            ),
            (
                StatusReport {
                    last_error: Some(LastError {
                        at: Utc::now(),
                        message: "server unreachable".into(),
                        source: ErrorSource::Heartbeat,
                    }),
                    ..healthy()
                },
                ProblemKind::HeartbeatFailing,
            ),
            (
                StatusReport {
                    last_heartbeat_at: ago(3600),
                    ..healthy()
                },
                ProblemKind::HeartbeatStale,
            ),
            (
                StatusReport {
                    queued_reports: 2,
                    oldest_queued_at: ago(301),
                    ..healthy()
                },
                ProblemKind::ReportsStuck,
            ),
            (
                StatusReport {
                    rejected_reports: 1,
                    ..healthy()
                },
                ProblemKind::ReportsRejected,
            ),
            (
                StatusReport {
                    last_deployment: Some(failed_record()),
                    ..healthy()
                },
                ProblemKind::DeploymentFailed,
            ),
        ];
        for (report, kind) in cases {
            let problems = diagnose(&report, Utc::now());
            assert_eq!(
                problems.iter().map(|p| p.kind).collect::<Vec<_>>(),
                vec![kind]
            );
            assert!(!problems[0].next_step.is_empty());
            assert_eq!(exit_code(&problems), exit::UNHEALTHY, "{kind:?}");
        }
    }

    #[test]
    fn young_queued_reports_and_a_recent_beat_are_fine() {
        let r = StatusReport {
            queued_reports: 1,
            oldest_queued_at: Some(Utc::now() - chrono::Duration::seconds(30)),
            // Saved every 5 min: a 6 min old time is not stale at a 60 s interval.
            last_heartbeat_at: Some(Utc::now() - chrono::Duration::seconds(360)),
            ..healthy()
        };
        assert_eq!(kinds(&r), vec![]);
    }

    #[test]
    fn not_registered_or_not_admitted_exits_3_before_1() {
        let fresh = StatusReport {
            device_id: None,
            admission: None,
            daemon_running: false,
            last_heartbeat_at: None,
            ..healthy()
        };
        assert_eq!(
            kinds(&fresh),
            vec![ProblemKind::NotRegistered, ProblemKind::DaemonNotRunning]
        );
        assert_eq!(code(&fresh), exit::NOT_REGISTERED);
        let pending = StatusReport {
            admission: Some("pending".into()),
            ..healthy()
        };
        assert_eq!(kinds(&pending), vec![ProblemKind::NotAdmitted]);
        assert_eq!(code(&pending), exit::NOT_REGISTERED);
        assert!(
            diagnose(&pending, Utc::now())[0]
                .next_step
                .contains("accept dev-1")
        );
    }
}
