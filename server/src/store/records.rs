//! The records the store keeps. Wire types from `kernex_common::api` are built from these
//! by the `to_*` methods, so what is stored and what is sent can evolve separately.

use chrono::{DateTime, Utc};
use kernex_common::api::{
    Admission, BundleInfo, Counts, Deployment, DeploymentDevice, DeploymentKind, DeploymentStatus,
    DeviceDetail, DeviceSummary, LastDeployment, OnlineStatus, Phase, Rollout, RolloutPolicy,
    TargetStatus, Wave,
};
use kernex_common::manifest::Manifest;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub type Ts = DateTime<Utc>;

/// A device's identity and what operators set on it. Heartbeats never rewrite this
/// record: what they change lives in the small [`LiveRecord`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub device_id: String,
    pub device_type: String,
    pub admission: Admission,
    pub tags: Vec<String>,
    pub public_key_pem: String,
    pub fingerprint: String,
    pub hardware_metadata: Value,
    pub registered_at: Ts,
    /// Copy of the configured interval, so listing can tell online from offline without
    /// reading every config.
    pub polling_interval: u64,
    /// The version a result set (SPEC §1.5), and when; a later heartbeat that reports a
    /// version wins over it (the device is the authority on what it runs).
    pub current_bundle_version: Option<String>,
    #[serde(default)]
    pub version_set_at: Option<Ts>,
    /// What its newest deployment result said.
    #[serde(default)]
    pub last_deployment: Option<LastDeployment>,
}

/// What a device's heartbeats change: its last report.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveRecord {
    pub last_heartbeat: Ts,
    pub agent_version: String,
    pub agent_status: String,
    pub cpu_pct: f64,
    pub memory_mb: f64,
    /// The config version the device last acknowledged.
    pub config_version: Option<u64>,
    pub queued_reports: u64,
    /// The newest non-null `current_bundle_version` a heartbeat reported, and when.
    pub reported_version: Option<(String, Ts)>,
}

/// A device as the API shows it: identity plus its last heartbeat.
#[derive(Debug, Clone)]
pub struct Device {
    pub record: DeviceRecord,
    pub live: Option<LiveRecord>,
}

impl Device {
    pub fn id(&self) -> &str {
        &self.record.device_id
    }

    pub fn admission(&self) -> Admission {
        self.record.admission
    }

    /// The newer of what a result set and what a heartbeat reported.
    pub fn current_bundle_version(&self) -> Option<&str> {
        let from_result = self
            .record
            .current_bundle_version
            .as_deref()
            .map(|v| (v, self.record.version_set_at));
        let reported = self
            .live
            .as_ref()
            .and_then(|l| l.reported_version.as_ref())
            .map(|(v, at)| (v.as_str(), Some(*at)));
        match (from_result, reported) {
            (Some((r, r_at)), Some((h, h_at))) => Some(if h_at > r_at { h } else { r }),
            (r, h) => r.or(h).map(|(v, _)| v),
        }
    }

    /// `online` within 3 × the polling interval of the last heartbeat.
    pub fn online_status(&self, now: Ts) -> OnlineStatus {
        match &self.live {
            None => OnlineStatus::Never,
            Some(l) => {
                let window = i64::try_from(self.record.polling_interval.saturating_mul(3))
                    .unwrap_or(i64::MAX);
                if (now - l.last_heartbeat).num_seconds() <= window {
                    OnlineStatus::Online
                } else {
                    OnlineStatus::Offline
                }
            }
        }
    }

    pub fn to_summary(&self, now: Ts) -> DeviceSummary {
        let r = &self.record;
        let l = self.live.as_ref();
        DeviceSummary {
            device_id: r.device_id.clone(),
            device_type: r.device_type.clone(),
            admission: r.admission,
            status: self.online_status(now),
            agent_status: l.map(|l| l.agent_status.clone()),
            tags: r.tags.clone(),
            current_bundle_version: self.current_bundle_version().map(str::to_owned),
            agent_version: l.map(|l| l.agent_version.clone()),
            last_heartbeat: l.map(|l| l.last_heartbeat),
            cpu_pct: l.map(|l| l.cpu_pct),
            memory_mb: l.map(|l| l.memory_mb),
            config_version: l.and_then(|l| l.config_version),
            last_deployment: r.last_deployment.clone(),
        }
    }

    pub fn to_detail(&self, now: Ts) -> DeviceDetail {
        DeviceDetail {
            summary: self.to_summary(now),
            hardware_metadata: self.record.hardware_metadata.clone(),
            public_key_fingerprint: self.record.fingerprint.clone(),
            registered_at: self.record.registered_at,
            queued_reports: self.live.as_ref().map_or(0, |l| l.queued_reports),
        }
    }
}

/// Who a bearer token speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Principal {
    Operator { name: String },
    Device { device_id: String },
}

/// A named operator token (the token itself is only ever stored hashed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OperatorTokenRecord {
    pub name: String,
    pub hash: String,
    pub created_at: Ts,
}

/// A stored bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleRecord {
    pub id: String,
    pub name: String,
    pub version: String,
    pub checksum_sha256: String,
    pub size_bytes: u64,
    pub manifest: Manifest,
    pub created_at: Ts,
}

impl BundleRecord {
    pub fn to_info(&self) -> BundleInfo {
        BundleInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            version: self.version.clone(),
            checksum_sha256: self.checksum_sha256.clone(),
            size_bytes: self.size_bytes,
            manifest: self.manifest.clone(),
            created_at: self.created_at,
        }
    }
}

/// A deployment without its targets (those live under `targets`, one key each, so that
/// one device's progress rewrites one small record, not a list of the whole fleet).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub id: String,
    pub kind: DeploymentKind,
    pub bundle_id: String,
    pub bundle_version: String,
    pub checksum_sha256: String,
    pub size_bytes: u64,
    pub status: DeploymentStatus,
    pub created_at: Ts,
    pub updated_at: Ts,
    pub completed_at: Option<Ts>,
    pub counts: Counts,
    /// Set while its targets are still being made deliverable (a big deployment is
    /// indexed in chunks after its record commits); a start-up finishes the job.
    #[serde(default)]
    pub indexing: bool,
    /// Its rollout (SPEC §6), when it was created with a policy.
    #[serde(default)]
    pub rollout: Option<RolloutState>,
}

/// Where a rollout stands, stored with its deployment (the rules that move it are in
/// [`crate::service::rollout`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutState {
    /// The policy with its defaults filled.
    pub policy: RolloutPolicy,
    pub waves: Vec<WaveState>,
    /// Waves opened so far (0 before the first; the current wave is `opened - 1`).
    pub opened: usize,
    /// Set while paused (by an operator or a gate), with why.
    pub paused_reason: Option<String>,
    /// Failures an operator's resume accepted: the gate trips again only above this.
    pub accepted_failures: u64,
}

/// One wave's numbers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WaveState {
    pub pct: u8,
    /// Its own targets.
    pub targets: u64,
    pub success: u64,
    pub healthy: u64,
    pub failed: u64,
    pub opened_at: Option<Ts>,
    /// Targets made deliverable so far (pacing releases them over time).
    pub released: u64,
    /// Rollout position of the last target looked at by a release (the next resumes
    /// after it).
    pub cursor: Option<u64>,
}

impl RolloutState {
    pub fn to_wire(&self) -> Rollout {
        let p = &self.policy;
        Rollout {
            first_tag: p.first_tag.clone(),
            success_threshold_pct: p.success_threshold_pct,
            soak_seconds: p.soak_seconds,
            max_failures: p.max_failures,
            max_failure_pct: p.max_failure_pct,
            on_failure: p.on_failure,
            auto_advance: p.auto_advance,
            target_timeout_seconds: p.target_timeout_seconds,
            max_per_minute: p.max_per_minute,
            start_at: p.start_at,
            current_wave: self.opened.saturating_sub(1),
            waves: self
                .waves
                .iter()
                .map(|w| Wave {
                    pct: w.pct,
                    targets: w.targets,
                    success: w.success,
                    healthy: w.healthy,
                    failed: w.failed,
                    opened_at: w.opened_at,
                })
                .collect(),
            paused_reason: self.paused_reason.clone(),
        }
    }

    /// Failures so far (failed, timed out, failed soaks) over every wave.
    pub fn failures(&self) -> u64 {
        self.waves.iter().map(|w| w.failed).sum()
    }
}

impl DeploymentRecord {
    /// A new deployment of `bundle` to `n` targets: all `pending`, or all `waiting` with
    /// a rollout. `indexing`: its targets are still being made deliverable (sled indexes
    /// a big deployment in chunks after the record commits).
    pub fn new(
        id: String,
        kind: DeploymentKind,
        bundle: &BundleRecord,
        n: u64,
        rollout: Option<RolloutState>,
        indexing: bool,
        now: Ts,
    ) -> Self {
        let waiting = rollout.is_some();
        let mut dep = DeploymentRecord {
            id,
            kind,
            bundle_id: bundle.id.clone(),
            bundle_version: bundle.version.clone(),
            checksum_sha256: bundle.checksum_sha256.clone(),
            size_bytes: bundle.size_bytes,
            status: DeploymentStatus::Pending,
            created_at: now,
            updated_at: now,
            completed_at: None,
            counts: Counts {
                pending: if waiting { 0 } else { n },
                waiting: if waiting { n } else { 0 },
                ..Default::default()
            },
            indexing,
            rollout,
        };
        dep.refresh(now);
        dep
    }

    pub fn to_wire(&self, targets: Vec<TargetRecord>) -> Deployment {
        Deployment {
            id: self.id.clone(),
            kind: self.kind,
            bundle_id: self.bundle_id.clone(),
            bundle_version: self.bundle_version.clone(),
            target_device_ids: targets.iter().map(|t| t.device_id.clone()).collect(),
            status: self.status,
            created_at: self.created_at,
            updated_at: self.updated_at,
            completed_at: self.completed_at,
            counts: self.counts,
            devices: targets.into_iter().map(TargetRecord::into_wire).collect(),
            rollout: self.rollout.as_ref().map(RolloutState::to_wire),
        }
    }

    /// Apply a count change and derive status / completion from the counts.
    pub fn shift(&mut self, from: TargetStatus, to: TargetStatus, now: Ts) {
        self.counts.shift(from, to);
        self.refresh(now);
    }

    /// Derive status and completion from the counts and the rollout (SPEC §6).
    pub fn refresh(&mut self, now: Ts) {
        self.status = crate::service::rollout::status(&self.counts, self.rollout.as_ref());
        self.updated_at = now;
        if self.status.is_final() && self.completed_at.is_none() {
            self.completed_at = Some(now);
        }
    }
}

/// One device's part in a deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetRecord {
    pub device_id: String,
    pub status: TargetStatus,
    pub phase: Option<Phase>,
    pub progress_pct: Option<u8>,
    pub error_message: Option<String>,
    pub log_tail: Option<String>,
    pub updated_at: Ts,
    /// The result's `report_id`, once a result arrived.
    pub report_id: Option<String>,
    /// Its rollout wave (0 without a rollout).
    #[serde(default)]
    pub wave: u32,
    /// When it became deliverable (its wave opened, or pacing released it).
    #[serde(default)]
    pub released_at: Option<Ts>,
    /// When its first final result arrived.
    #[serde(default)]
    pub result_at: Option<Ts>,
    /// The soak's verdict on a success: `None` while soaking (or not a success).
    #[serde(default)]
    pub soak_ok: Option<bool>,
}

impl TargetRecord {
    pub fn into_wire(self) -> DeploymentDevice {
        DeploymentDevice {
            device_id: self.device_id,
            status: self.status,
            phase: self.phase,
            progress_pct: self.progress_pct,
            error_message: self.error_message,
            log_tail: self.log_tail,
            updated_at: self.updated_at,
        }
    }
}
