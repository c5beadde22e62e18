//! The records the store keeps. Wire types from `kernex_common::api` are built from these
//! by the `to_*` methods, so what is stored and what is sent can evolve separately.

use chrono::{DateTime, Utc};
use kernex_common::api::{
    Admission, BundleInfo, Counts, Deployment, DeploymentDevice, DeploymentKind, DeviceDetail,
    DeviceSummary, OnlineStatus, Phase, TargetStatus,
};
use kernex_common::manifest::Manifest;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub type Ts = DateTime<Utc>;

/// Everything known about one device.
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
    pub current_bundle_version: Option<String>,
    pub agent_version: Option<String>,
    pub agent_status: Option<String>,
    pub last_heartbeat: Option<Ts>,
    pub cpu_pct: Option<f64>,
    pub memory_mb: Option<f64>,
    /// The config version the device last acknowledged.
    pub config_version: Option<u64>,
    pub queued_reports: u64,
    /// Copy of the configured interval, so listing can tell online from offline without
    /// reading every config.
    pub polling_interval: u64,
    /// Sequence number of the newest stored heartbeat (keys `device_id ‖ seq`).
    pub heartbeat_seq: u64,
    /// Oldest heartbeat seq possibly still stored (pruning walks up from here).
    #[serde(default)]
    pub heartbeat_oldest: u64,
}

impl DeviceRecord {
    /// `online` within 3 × the polling interval of the last heartbeat.
    pub fn online_status(&self, now: Ts) -> OnlineStatus {
        match self.last_heartbeat {
            None => OnlineStatus::Never,
            Some(t) => {
                let window =
                    i64::try_from(self.polling_interval.saturating_mul(3)).unwrap_or(i64::MAX);
                if (now - t).num_seconds() <= window {
                    OnlineStatus::Online
                } else {
                    OnlineStatus::Offline
                }
            }
        }
    }

    pub fn to_summary(&self, now: Ts) -> DeviceSummary {
        DeviceSummary {
            device_id: self.device_id.clone(),
            device_type: self.device_type.clone(),
            admission: self.admission,
            status: self.online_status(now),
            agent_status: self.agent_status.clone(),
            tags: self.tags.clone(),
            current_bundle_version: self.current_bundle_version.clone(),
            agent_version: self.agent_version.clone(),
            last_heartbeat: self.last_heartbeat,
            cpu_pct: self.cpu_pct,
            memory_mb: self.memory_mb,
            config_version: self.config_version,
        }
    }

    pub fn to_detail(&self, now: Ts) -> DeviceDetail {
        DeviceDetail {
            summary: self.to_summary(now),
            hardware_metadata: self.hardware_metadata.clone(),
            public_key_fingerprint: self.fingerprint.clone(),
            registered_at: self.registered_at,
            queued_reports: self.queued_reports,
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
    pub status: TargetStatus,
    pub created_at: Ts,
    pub updated_at: Ts,
    pub completed_at: Option<Ts>,
    pub counts: Counts,
}

impl DeploymentRecord {
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
        }
    }

    /// Apply a count change and derive status / completion from the counts.
    pub fn shift(&mut self, from: TargetStatus, to: TargetStatus, now: Ts) {
        self.counts.shift(from, to);
        self.status = self.counts.overall();
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
