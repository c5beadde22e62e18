//! The store's content as a stream of domain records: what [`super::Store::export`] emits
//! and [`super::Store::import`] takes back. This is the record layer of the backup format
//! (see [`crate::backup`]); it is the same for every backend, so a sled backup restores
//! into PostgreSQL and back.
//!
//! Records are the store's own serde types, so a field added to one (with
//! `#[serde(default)]`, as every later field is) flows through a backup unchanged. Only
//! *primary* facts are exported; indexes (tags, open targets, counters, the report-id
//! index …) are rebuilt by the importing backend from these.
//!
//! Order, which an importer may rely on: each device is followed by its config, its
//! device token, its heartbeats (oldest first) and then its live record; each deployment
//! is followed by its targets and then, for a rollout, the rollout order of the targets
//! not yet released. Bundles (each followed by its signatures) and the trust document
//! come before the deployments that use them.

use kernex_common::api::{DeviceConfig, HeartbeatRecord, HistoryRecord};
use kernex_common::update_signing::SignedDocument;
use serde::{Deserialize, Serialize};

use super::{
    BundleRecord, DeploymentRecord, DeviceRecord, LiveRecord, OperatorTokenRecord, Result,
    TargetRecord, Ts,
};

/// One exported fact. Adjacently tagged (`{"kind": "...", "record": {...}}`) so a
/// record's own fields (a history record has a `kind`) never collide with the tag.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", content = "record", rename_all = "snake_case")]
// Streamed one at a time; boxing the big variants would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum BackupRecord {
    OperatorToken(OperatorTokenRecord),
    /// A device's live token (SHA-256; the token itself is never stored).
    DeviceToken {
        device_id: String,
        hash: String,
    },
    /// A burned registration signature, remembered until its replay window ends.
    Registration {
        signature_hash: String,
        until: Ts,
    },
    Device(DeviceRecord),
    Config(DeviceConfig),
    /// One stored heartbeat of a device, oldest first.
    Heartbeat {
        device_id: String,
        beat: HeartbeatRecord,
    },
    /// A device's last report (after its heartbeats).
    Live {
        device_id: String,
        live: LiveSnapshot,
    },
    Bundle(BundleRecord),
    Deployment(DeploymentRecord),
    /// One device's part in the deployment exported just before.
    Target {
        deployment_id: String,
        target: TargetRecord,
    },
    History(HistoryRecord),
    /// A bundle's signed metadata and every signature (SPEC §7), after the bundle.
    BundleSignatures {
        bundle_id: String,
        document: SignedDocument,
    },
    /// The newest trust document (SPEC §7).
    Trust(SignedDocument),
    /// A rollout target's place in its rollout order (SPEC §6), after the targets of its
    /// deployment. Only targets not yet released still have one.
    WaveTarget {
        deployment_id: String,
        wave: u32,
        position: u64,
        device_id: String,
    },
}

impl BackupRecord {
    /// The tag, for counts and messages.
    pub fn kind(&self) -> &'static str {
        match self {
            BackupRecord::OperatorToken(_) => "operator_token",
            BackupRecord::DeviceToken { .. } => "device_token",
            BackupRecord::Registration { .. } => "registration",
            BackupRecord::Device(_) => "device",
            BackupRecord::Config(_) => "config",
            BackupRecord::Heartbeat { .. } => "heartbeat",
            BackupRecord::Live { .. } => "live",
            BackupRecord::Bundle(_) => "bundle",
            BackupRecord::Deployment(_) => "deployment",
            BackupRecord::Target { .. } => "target",
            BackupRecord::History(_) => "history",
            BackupRecord::BundleSignatures { .. } => "bundle_signatures",
            BackupRecord::Trust(_) => "trust",
            BackupRecord::WaveTarget { .. } => "wave_target",
        }
    }
}

/// [`LiveRecord`] in its exported form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveSnapshot {
    pub last_heartbeat: Ts,
    pub agent_version: String,
    pub agent_status: String,
    pub cpu_pct: f64,
    pub memory_mb: f64,
    pub config_version: Option<u64>,
    pub queued_reports: u64,
    pub reported_version: Option<String>,
    pub reported_at: Option<Ts>,
}

impl From<&LiveRecord> for LiveSnapshot {
    fn from(l: &LiveRecord) -> Self {
        LiveSnapshot {
            last_heartbeat: l.last_heartbeat,
            agent_version: l.agent_version.clone(),
            agent_status: l.agent_status.clone(),
            cpu_pct: l.cpu_pct,
            memory_mb: l.memory_mb,
            config_version: l.config_version,
            queued_reports: l.queued_reports,
            reported_version: l.reported_version.as_ref().map(|(v, _)| v.clone()),
            reported_at: l.reported_version.as_ref().map(|(_, at)| *at),
        }
    }
}

/// Where an export goes, one record at a time (blocking I/O is fine: backends call it
/// off the async workers).
pub trait RecordSink: Send {
    fn record(&mut self, record: &BackupRecord) -> Result<()>;
}

/// Where an import comes from: records in export order, each read as it is needed.
pub type RecordSource = Box<dyn Iterator<Item = Result<BackupRecord>> + Send>;

/// How many records of each kind went through, in first-seen order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordCounts(pub Vec<(&'static str, u64)>);

impl RecordCounts {
    pub fn add(&mut self, kind: &'static str) {
        match self.0.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => self.0.push((kind, 1)),
        }
    }

    pub fn get(&self, kind: &str) -> u64 {
        self.0
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }
}

impl std::fmt::Display for RecordCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, n)| format!("{n} {k}")).collect();
        f.write_str(&parts.join(", "))
    }
}
