//! `kernex-server check`: is a data dir sound? Opens the store, reads every record the
//! way a backup does (so every record must decode), and cross-checks what must agree:
//! each deployment's counts against its targets, the `/metrics` counters against the
//! records, that every device-owned record belongs to a device, and that every bundle
//! file is present with its recorded size and SHA-256.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;

use kernex_common::api::{Admission, Counts, DeploymentStatus};
use sha2::{Digest, Sha256};

use super::BackupError;
use crate::StartError;
use crate::blobs::Blobs;
use crate::store::{
    BackupRecord, BundleRecord, FleetCounts, PgOptions, PgStore, RecordCounts, RecordSink, Store,
};

/// Most problems listed one by one (then "… and N more").
const MAX_LISTED: usize = 50;

/// What `check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub problems: Vec<String>,
    /// Problems beyond [`MAX_LISTED`], counted only.
    pub unlisted: usize,
    pub records: RecordCounts,
    pub bundle_files: usize,
}

impl CheckReport {
    pub fn sound(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, p: String) {
        if self.problems.len() < MAX_LISTED {
            self.problems.push(p);
        } else {
            self.unlisted += 1;
        }
    }
}

/// Check the data dir no server holds. `Err` only when it cannot be checked at all
/// (held by a running server); a store that will not open is a problem in the report.
pub fn check_data_dir(data_dir: &Path) -> Result<CheckReport, BackupError> {
    let mut report = CheckReport::default();
    if !data_dir.join("db").exists() {
        report.problem(format!(
            "{} holds no store (no db/ in it)",
            data_dir.display()
        ));
        return Ok(report);
    }
    let store = match crate::open_store(data_dir, Default::default()) {
        Ok(s) => s,
        Err(e @ StartError::Locked(_)) => return Err(e.into()),
        Err(StartError::Unreadable(_, reason)) => {
            report.problem(format!("the store cannot be opened: {reason}"));
            return Ok(report);
        }
        Err(e) => {
            report.problem(format!("the store cannot be opened: {e}"));
            return Ok(report);
        }
    };
    let mut checker = Checker::default();
    if let Err(e) = store.export_blocking(&mut checker) {
        checker
            .report
            .problem(format!("reading the records failed: {e}"));
    }
    checker.end_deployment();
    checker.compare_counters(store.fleet_counts_blocking());
    let mut report = checker.report;
    for b in &checker.bundles {
        match verify_bundle_file(&data_dir.join("bundles"), b) {
            Ok(()) => report.bundle_files += 1,
            Err(p) => report.problem(p),
        }
    }
    Ok(report)
}

/// `kernex-server check --database-url URL`: the same checks on a PostgreSQL store (its
/// schema is not touched; the records are one snapshot), each archive read back from
/// `blobs`, a dir or a bucket. Replicas may keep serving meanwhile: the counters are
/// compared only when no write moved them while the records were read.
pub fn check_database(url: &str, blobs: &Blobs) -> Result<CheckReport, BackupError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = match PgStore::connect_lazy(url, PgOptions::default()) {
            Ok(store) => store,
            Err(e) => {
                let mut report = CheckReport::default();
                report.problem(format!("the database cannot be opened: {e}"));
                return Ok(report);
            }
        };
        let now = chrono::Utc::now();
        let before = store.fleet_counts(now).await;
        let shared = Arc::new(Mutex::new(Checker::default()));
        let exported = store.export(Box::new(SharedChecker(shared.clone()))).await;
        let after = store.fleet_counts(now).await;
        store.close().await;
        let mut checker = std::mem::take(&mut *shared.lock().unwrap_or_else(|p| p.into_inner()));
        if let Err(e) = exported {
            checker
                .report
                .problem(format!("reading the records failed: {e}"));
        }
        checker.end_deployment();
        match (before, after) {
            (Ok(b), Ok(a)) if b != a => {
                tracing::info!("writes moved the counters during the check; not comparing them");
            }
            (before, _) => checker.compare_counters(before),
        }
        let mut report = checker.report;
        for b in &checker.bundles {
            match verify_blob(blobs, b).await {
                Ok(()) => report.bundle_files += 1,
                Err(p) => report.problem(p),
            }
        }
        Ok(report)
    })
}

/// A [`Checker`] the store can own during an export while the caller keeps a handle.
struct SharedChecker(Arc<Mutex<Checker>>);

impl RecordSink for SharedChecker {
    fn record(&mut self, record: &BackupRecord) -> crate::store::Result<()> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(record)
    }
}

/// Read bundle `b`'s archive back from the blob store and hash it.
async fn verify_blob(blobs: &Blobs, b: &BundleRecord) -> Result<(), String> {
    let what = format!("bundle {} ({} in {})", b.version, b.id, blobs.location());
    let mut body = blobs
        .read_whole(&b.id)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("{what}: {e}"))?;
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    compare_archive(&what, size, &hex::encode(hasher.finalize()), b)
}

fn compare_archive(what: &str, size: u64, sum: &str, b: &BundleRecord) -> Result<(), String> {
    if size != b.size_bytes || sum != b.checksum_sha256 {
        return Err(format!(
            "{what} is damaged: {size} bytes, sha256 {sum}; its record says {} bytes, sha256 {}",
            b.size_bytes, b.checksum_sha256
        ));
    }
    Ok(())
}

/// Collects what the records say while they stream by.
#[derive(Default)]
struct Checker {
    report: CheckReport,
    devices: HashSet<String>,
    /// The deployment whose targets follow, its stored counts, and the counts its
    /// targets add up to so far.
    deployment: Option<(String, Counts, Counts, bool)>,
    bundles: Vec<BundleRecord>,
    admissions: [u64; 3],
    statuses: [u64; 7],
}

impl Checker {
    /// The `/metrics` counters must agree with the records counted.
    fn compare_counters(&mut self, counts: crate::store::Result<FleetCounts>) {
        match counts {
            Ok(c) => {
                let kept = [c.devices_pending, c.devices_accepted, c.devices_rejected];
                if kept != self.admissions || c.deployments != self.statuses {
                    self.report.problem(format!(
                        "the /metrics counters disagree with the records: devices \
                         pending/accepted/rejected {kept:?} vs {:?}, deployments by status \
                         {:?} vs {:?}",
                        self.admissions, c.deployments, self.statuses
                    ));
                }
            }
            Err(e) => self
                .report
                .problem(format!("the counters cannot be read: {e}")),
        }
    }

    fn owned_by_device(&mut self, kind: &str, device_id: &str) {
        if !self.devices.contains(device_id) {
            self.report
                .problem(format!("a {kind} record of unknown device {device_id}"));
        }
    }

    fn end_deployment(&mut self) {
        if let Some((id, stored, counted, indexing)) = self.deployment.take()
            && !indexing
            && stored != counted
        {
            self.report.problem(format!(
                "deployment {id}: its counts {stored:?} disagree with its targets {counted:?}"
            ));
        }
    }
}

impl RecordSink for Checker {
    fn record(&mut self, record: &BackupRecord) -> crate::store::Result<()> {
        self.report.records.add(record.kind());
        match record {
            BackupRecord::Device(d) => {
                self.devices.insert(d.device_id.clone());
                let slot = match d.admission {
                    Admission::Pending => 0,
                    Admission::Accepted => 1,
                    Admission::Rejected => 2,
                };
                self.admissions[slot] += 1;
            }
            BackupRecord::Config(c) => self.owned_by_device("config", &c.device_id),
            BackupRecord::DeviceToken { device_id, .. } => {
                self.owned_by_device("device token", device_id);
            }
            BackupRecord::Heartbeat { device_id, .. } | BackupRecord::Live { device_id, .. } => {
                self.owned_by_device("heartbeat", device_id);
            }
            BackupRecord::History(h) => self.owned_by_device("history", &h.device_id),
            BackupRecord::Bundle(b) => self.bundles.push(b.clone()),
            BackupRecord::Deployment(d) => {
                self.end_deployment();
                if let Some(i) = DeploymentStatus::ALL.iter().position(|s| *s == d.status) {
                    self.statuses[i] += 1;
                }
                self.deployment = Some((d.id.clone(), d.counts, Counts::default(), d.indexing));
            }
            BackupRecord::Target {
                deployment_id,
                target,
            } => match &mut self.deployment {
                Some((id, _, counted, _)) if id == deployment_id => {
                    *counted.slot(target.status) += 1;
                }
                _ => self.report.problem(format!(
                    "a target of deployment {deployment_id} with no deployment record"
                )),
            },
            // A waiting target's device may be gone: its wave cancels it when released.
            BackupRecord::WaveTarget { deployment_id, .. } => match &self.deployment {
                Some((id, ..)) if id == deployment_id => {}
                _ => self.report.problem(format!(
                    "a rollout position in deployment {deployment_id} with no deployment record"
                )),
            },
            BackupRecord::OperatorToken(_)
            | BackupRecord::Registration { .. }
            | BackupRecord::BundleSignatures { .. }
            | BackupRecord::Trust(_) => {}
        }
        Ok(())
    }
}

fn verify_bundle_file(bundle_dir: &Path, b: &BundleRecord) -> Result<(), String> {
    let path = bundle_dir.join(format!("{}.tar.gz", b.id));
    let what = format!("bundle {} ({})", b.version, path.display());
    let mut file = File::open(&path).map_err(|e| format!("{what}: {e}"))?;
    let mut hasher = Sha256::new();
    let size =
        io::copy(&mut file, &mut HashWriter(&mut hasher)).map_err(|e| format!("{what}: {e}"))?;
    compare_archive(&what, size, &hex::encode(hasher.finalize()), b)
}

/// `io::Write` into a hasher, so `io::copy` streams a file through it.
struct HashWriter<'a>(&'a mut Sha256);

impl io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
