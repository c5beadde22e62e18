//! The durable outbox of result reports (SPEC §3 step 8).
//!
//! A report is written to `queue/` (write, fsync, rename, fsync dir) before anything
//! tries to send it, and removed only once the server answered 2xx. File names start
//! with the time of queueing, so listing them in name order is the order they were
//! produced in. A report the server refuses for good (400/403/404 …) is moved to
//! `queue/rejected/` with a `.reason` file beside it, never retried forever.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use kernex_common::api::{DeploymentKind, ResultReport};
use serde::{Deserialize, Serialize};

use crate::client::{Client, ClientError};
use crate::fsutil;

/// What the device's bundle versions become once this result stands. Kept with the
/// report so a restart between queueing and updating `state.json` can finish the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub current_bundle_version: Option<String>,
    pub previous_bundle_version: Option<String>,
}

/// One queued report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedReport {
    pub deployment_id: String,
    pub kind: DeploymentKind,
    pub bundle_version: String,
    pub started_at: DateTime<Utc>,
    pub queued_at: DateTime<Utc>,
    pub report: ResultReport,
    pub outcome: Outcome,
}

/// A report file and what is in it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: PathBuf,
    pub report: QueuedReport,
}

/// The `queue/` directory.
#[derive(Debug, Clone)]
pub struct Queue {
    dir: PathBuf,
}

impl Queue {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Queue { dir: dir.into() }
    }

    fn rejected_dir(&self) -> PathBuf {
        self.dir.join("rejected")
    }

    /// Durably add a report. Returns once it is on disk.
    pub fn push(&self, report: &QueuedReport) -> io::Result<PathBuf> {
        fs::create_dir_all(&self.dir)?;
        // Names order the queue: the time of queueing, but never below the newest name
        // already there, so a clock that steps back (no RTC, NTP correction) cannot put
        // a newer report before an older one.
        let now = report
            .queued_at
            .timestamp_nanos_opt()
            .unwrap_or_default()
            .max(0);
        let newest = fs::read_dir(&self.dir)?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                name.to_str()?.split('-').next()?.parse::<i64>().ok()
            })
            .max()
            .unwrap_or(0);
        let seq = now.max(newest.saturating_add(1));
        let path = self
            .dir
            .join(format!("{seq:020}-{}.json", report.deployment_id));
        fsutil::write_json(&path, report, 0o600)?;
        Ok(path)
    }

    /// Queued reports, oldest first. A file that cannot be read is moved to `rejected/`
    /// (it would block the queue forever otherwise).
    pub fn list(&self) -> io::Result<Vec<Entry>> {
        let names = report_names(&self.dir)?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let path = self.dir.join(&name);
            match fsutil::read_json::<QueuedReport>(&path) {
                Ok(Some(report)) => out.push(Entry { path, report }),
                Ok(None) => {} // sent and removed meanwhile (by `flush`)
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "unreadable queued report; moving it aside");
                    self.reject(&path, &format!("unreadable: {e}"))?;
                }
            }
        }
        Ok(out)
    }

    /// Number of queued reports (cheap: no parsing).
    pub fn len(&self) -> usize {
        report_names(&self.dir).map_or(0, |n| n.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of reports set aside in `rejected/`.
    pub fn rejected_len(&self) -> usize {
        report_names(&self.rejected_dir()).map_or(0, |n| n.len())
    }

    /// The queued or rejected report for a deployment, if any.
    pub fn find(&self, deployment_id: &str) -> io::Result<Option<QueuedReport>> {
        let suffix = format!("-{deployment_id}.json");
        for dir in [self.dir.clone(), self.rejected_dir()] {
            for name in report_names(&dir)? {
                if name.ends_with(&suffix)
                    && let Some(r) = fsutil::read_json::<QueuedReport>(&dir.join(&name))
                        .ok()
                        .flatten()
                {
                    return Ok(Some(r));
                }
            }
        }
        Ok(None)
    }

    /// Delivered: remove it.
    pub fn remove(&self, path: &Path) -> io::Result<()> {
        fsutil::remove_durable(path)
    }

    /// Refused for good: move it to `rejected/` and write why beside it.
    pub fn reject(&self, path: &Path, reason: &str) -> io::Result<()> {
        let dir = self.rejected_dir();
        fs::create_dir_all(&dir)?;
        let Some(name) = path.file_name() else {
            return Ok(());
        };
        let target = dir.join(name);
        fsutil::write_atomic(
            &target.with_extension("reason"),
            format!("{}: {reason}\n", Utc::now().to_rfc3339()).as_bytes(),
            0o600,
        )?;
        match fs::rename(path, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        fsutil::sync_dir(&dir)?;
        fsutil::sync_dir(&self.dir)
    }

    /// When the oldest queued report was produced. Only reads (for `status`).
    pub fn oldest(&self) -> Option<DateTime<Utc>> {
        report_names(&self.dir)
            .ok()?
            .iter()
            .find_map(|n| {
                fsutil::read_json::<QueuedReport>(&self.dir.join(n))
                    .ok()
                    .flatten()
            })
            .map(|r| r.queued_at)
    }
}

/// Names of the report files in `dir`, in queue order: temp files (leading dot) and
/// `.reason` files left out; a missing dir has none.
fn report_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = match fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.') && n.ends_with(".json"))
            .collect::<Vec<_>>(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    names.sort();
    Ok(names)
}

/// What a flush did.
#[derive(Debug, Default)]
pub struct FlushReport {
    pub sent: usize,
    pub rejected: usize,
    pub remaining: usize,
    /// Why sending stopped early (the server is unreachable, the token was refused …).
    pub stopped: Option<ClientError>,
}

/// Send queued reports in order. Stops at the first transient failure (the order is
/// kept: nothing newer overtakes an older report) or on 401. `skip` names a deployment
/// whose report must not be sent yet (its state update is still being written).
pub async fn flush(
    queue: &Queue,
    client: &Client,
    device_id: &str,
    token: &str,
    skip: Option<&str>,
) -> io::Result<FlushReport> {
    let mut out = FlushReport::default();
    let entries = queue.list()?;
    let total = entries.len();
    for (i, entry) in entries.into_iter().enumerate() {
        let r = &entry.report;
        if Some(r.deployment_id.as_str()) == skip {
            out.remaining += 1;
            continue;
        }
        if r.report.device_id != device_id {
            // Produced under an identity this device no longer has (it was deleted on
            // the server and registered anew): the server would refuse it anyway.
            tracing::warn!(deployment.id = %r.deployment_id, "report belongs to an earlier device id; moving it aside");
            queue.reject(&entry.path, "belongs to an earlier device id")?;
            out.rejected += 1;
            continue;
        }
        match client.result(token, &r.deployment_id, &r.report).await {
            Ok(()) => {
                crate::crashpoint::hit("after-send");
                queue.remove(&entry.path)?;
                out.sent += 1;
                tracing::info!(deployment.id = %r.deployment_id, status = r.report.status.as_str(), "result delivered");
            }
            Err(e) if e.is_transient() || e.status() == Some(reqwest::StatusCode::UNAUTHORIZED) => {
                out.remaining += total - i;
                out.stopped = Some(e);
                return Ok(out);
            }
            Err(e) => {
                tracing::error!(deployment.id = %r.deployment_id, error = %e, "server refused the result; moved to queue/rejected");
                queue.reject(&entry.path, &e.to_string())?;
                out.rejected += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernex_common::api::ResultStatus;

    fn report(id: &str, at: DateTime<Utc>) -> QueuedReport {
        QueuedReport {
            deployment_id: id.into(),
            kind: DeploymentKind::Deploy,
            bundle_version: "1.0.0".into(),
            started_at: at,
            queued_at: at,
            report: ResultReport {
                device_id: "dev".into(),
                status: ResultStatus::Success,
                report_id: uuid::Uuid::new_v4().to_string(),
                error_message: None,
                duration_seconds: Some(1.0),
                log_tail: None,
                rolled_back_to: None,
            },
            outcome: Outcome {
                current_bundle_version: Some("1.0.0".into()),
                previous_bundle_version: None,
            },
        }
    }

    #[test]
    fn lists_in_production_order_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::new(dir.path().join("queue"));
        let t0 = Utc::now();
        // "a" is produced second, though the clock stepped back an hour in between.
        q.push(&report("b", t0)).unwrap();
        q.push(&report("a", t0 - chrono::Duration::hours(1)))
            .unwrap();
        let q2 = Queue::new(dir.path().join("queue"));
        let ids: Vec<_> = q2
            .list()
            .unwrap()
            .into_iter()
            .map(|e| e.report.deployment_id)
            .collect();
        assert_eq!(ids, ["b", "a"], "queue order is the order of production");
        assert_eq!(q2.len(), 2);
        assert_eq!(q2.oldest(), Some(t0));
        q2.push(&report("c", t0 + chrono::Duration::seconds(1)))
            .unwrap();
        assert_eq!(q2.list().unwrap()[2].report.deployment_id, "c");
    }

    #[test]
    fn rejected_and_corrupt_reports_leave_the_queue_but_stay_findable() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::new(dir.path().join("queue"));
        let path = q.push(&report("a", Utc::now())).unwrap();
        q.reject(&path, "400 bad").unwrap();
        assert!(q.is_empty());
        assert!(q.find("a").unwrap().is_some());
        let reason = fs::read_to_string(
            dir.path()
                .join("queue/rejected")
                .join(path.file_name().unwrap())
                .with_extension("reason"),
        )
        .unwrap();
        assert!(reason.contains("400 bad"));

        let corrupt = dir.path().join("queue/00000000000000000001-x.json");
        fs::write(&corrupt, "{").unwrap();
        // Reading for `status` changes nothing; only a flush's listing sets it aside.
        assert_eq!(q.oldest(), None);
        assert!(corrupt.exists());
        assert_eq!(q.rejected_len(), 1);
        assert!(q.list().unwrap().is_empty());
        assert!(q.is_empty(), "a corrupt report must not block the queue");
    }
}
