//! JSON wire types of the `/api/v1` HTTP API (SPEC §1).
//!
//! Requests tolerate unknown fields (serde's default); responses always carry every
//! field, with `null` where there is no value, so clients can rely on the shape.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::manifest::Manifest;
use crate::update_signing::{SignedDocument, TrustCommand};

pub mod events; // the live events of `GET /events` (SSE)
#[cfg(feature = "openapi")]
pub mod openapi; // schemas of fields whose rules are in code, not in their type
mod rollout; // the rollout policy and its state on a deployment (SPEC §6)

pub use rollout::{OnFailure, Rollout, RolloutChange, RolloutPolicy, Wave};

/// Timestamps on the wire: RFC 3339, UTC.
pub type Timestamp = DateTime<Utc>;

/// The uniform error body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(description = "The uniform error body of every 4xx/5xx response.")
)]
pub struct ErrorBody {
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
}

// ---------------------------------------------------------------------------- devices

/// Admission of a device (SPEC §1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(
        description = "Admission of a device: pending devices heartbeat but receive no commands."
    )
)]
#[serde(rename_all = "snake_case")]
pub enum Admission {
    Pending,
    Accepted,
    Rejected,
}

impl Admission {
    pub fn as_str(self) -> &'static str {
        match self {
            Admission::Pending => "pending",
            Admission::Accepted => "accepted",
            Admission::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Admission::Pending),
            "accepted" => Some(Admission::Accepted),
            "rejected" => Some(Admission::Rejected),
            _ => None,
        }
    }
}

/// Whether a device is heard from (SPEC §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(
        description = "`online` when the last heartbeat is within 3 x the device's polling_interval, `offline` when older, `never` when none arrived."
    )
)]
#[serde(rename_all = "snake_case")]
pub enum OnlineStatus {
    Online,
    Offline,
    Never,
}

impl OnlineStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OnlineStatus::Online => "online",
            OnlineStatus::Offline => "offline",
            OnlineStatus::Never => "never",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "online" => Some(OnlineStatus::Online),
            "offline" => Some(OnlineStatus::Offline),
            "never" => Some(OnlineStatus::Never),
            _ => None,
        }
    }
}

/// `POST /devices/register` body. Signed byte for byte.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(description = "Registration body. It is signed byte for byte (X-Kernex-Signature).")
)]
pub struct RegisterRequest {
    /// PEM SubjectPublicKeyInfo of an RSA key of 2048 bits or more.
    pub public_key: String,
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 64, example = "jetson-nano")
    )]
    pub device_type: String,
    /// Free-form object (at most 16 KiB serialised); null or absent means {}.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::object_or_null))]
    pub hardware_metadata: Value,
    /// The device's clock; must be within 300 s of the server's.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub timestamp: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterResponse {
    /// Opaque, URL-safe.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub device_id: String,
    /// Bearer token for the device endpoints.
    pub device_token: String,
    pub admission: Admission,
}

/// `POST /devices/{id}/heartbeat` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatRequest {
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub agent_version: String,
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub cpu_pct: f64,
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub memory_mb: f64,
    /// Free text describing what the agent is doing.
    #[cfg_attr(feature = "openapi", schema(max_length = 32))]
    pub status: String,
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Za-z0-9._+-]{1,64}$", min_length = 1, max_length = 64)
    )]
    pub current_bundle_version: Option<String>,
    /// Config version the agent has applied; null counts as 0.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub config_version: Option<u64>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub queued_reports: u64,
    /// Version of the trust set the device holds (SPEC §7); absent = 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub trust_version: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatResponse {
    /// At most one deploy/rollback command, plus a configure command while the device's
    /// config is behind. Empty for pending devices.
    pub commands: Vec<Command>,
    pub admission: Admission,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub server_time: Timestamp,
}

/// A command in a heartbeat reply (SPEC §1.6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    Deploy(BundleCommand),
    Rollback(BundleCommand),
    Configure(ConfigureCommand),
    /// A newer trust set for the device to verify and adopt (SPEC §7).
    Trust(TrustCommand),
}

/// The payload of a deploy or rollback command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(
        description = "Download and install a bundle (`deploy`), or return to a bundle version the device ran before (`rollback`)."
    )
)]
pub struct BundleCommand {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub deployment_id: String,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub bundle_id: String,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Za-z0-9._+-]{1,64}$", min_length = 1, max_length = 64)
    )]
    pub bundle_version: String,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[0-9a-f]{64}$", min_length = 64, max_length = 64)
    )]
    pub checksum_sha256: String,
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub size_bytes: u64,
    /// The bundle's signed metadata with every stored signature, when it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<SignedDocument>,
}

/// The payload of a configure command: the whole config at `config_version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(description = "The whole device configuration at config_version.")
)]
pub struct ConfigureCommand {
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub config_version: u64,
    #[cfg_attr(feature = "openapi", schema(minimum = 5, maximum = 86400))]
    pub polling_interval: u64,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 300))]
    pub heartbeat_timeout: u64,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86400))]
    pub deploy_timeout: u64,
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::log_level))]
    pub log_level: String,
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::object))]
    pub metadata: Value,
}

/// One row of `GET /devices`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceSummary {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub device_id: String,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub device_type: String,
    pub admission: Admission,
    pub status: OnlineStatus,
    /// Free-text status of the last heartbeat.
    #[cfg_attr(feature = "openapi", schema(required = true, max_length = 32))]
    pub agent_status: Option<String>,
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::device_tags))]
    pub tags: Vec<String>,
    #[cfg_attr(
        feature = "openapi",
        schema(
            required = true,
            pattern = "^[A-Za-z0-9._+-]{1,64}$",
            min_length = 1,
            max_length = 64
        )
    )]
    pub current_bundle_version: Option<String>,
    #[cfg_attr(feature = "openapi", schema(required = true, max_length = 64))]
    pub agent_version: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime, required = true))]
    pub last_heartbeat: Option<Timestamp>,
    #[cfg_attr(feature = "openapi", schema(required = true, minimum = 0))]
    pub cpu_pct: Option<f64>,
    #[cfg_attr(feature = "openapi", schema(required = true, minimum = 0))]
    pub memory_mb: Option<f64>,
    /// Config version the device last acknowledged.
    #[cfg_attr(feature = "openapi", schema(required = true, minimum = 0))]
    pub config_version: Option<u64>,
    /// The outcome of the device's newest deployment result (SPEC §4: LAST DEPLOY).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub last_deployment: Option<LastDeployment>,
}

/// What a device's newest deployment result said: `1.1.0 ✓`, `1.2.0 ✗`, `1.2.0 ✗→1.1.0`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LastDeployment {
    pub deployment_id: String,
    pub kind: DeploymentKind,
    pub bundle_version: String,
    pub status: ResultStatus,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub rolled_back_to: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: Timestamp,
}

/// `GET /devices/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(description = "A device summary plus its registration details.")
)]
pub struct DeviceDetail {
    #[serde(flatten)]
    pub summary: DeviceSummary,
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::object))]
    pub hardware_metadata: Value,
    /// Lowercase hex SHA-256 of the SubjectPublicKeyInfo DER.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[0-9a-f]{64}$", min_length = 64, max_length = 64)
    )]
    pub public_key_fingerprint: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub registered_at: Timestamp,
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub queued_reports: u64,
}

/// `PATCH /devices/{id}` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DevicePatch {
    /// Replaces the device's tags (stored sorted, duplicates removed).
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::device_tags))]
    pub tags: Vec<String>,
}

/// One row of `GET /devices/{id}/heartbeats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatRecord {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub timestamp: Timestamp,
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub agent_version: String,
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub cpu_pct: f64,
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub memory_mb: f64,
    #[cfg_attr(feature = "openapi", schema(max_length = 32))]
    pub status: String,
    #[cfg_attr(
        feature = "openapi",
        schema(
            required = true,
            pattern = "^[A-Za-z0-9._+-]{1,64}$",
            min_length = 1,
            max_length = 64
        )
    )]
    pub current_bundle_version: Option<String>,
}

// ----------------------------------------------------------------------------- config

/// `GET /devices/{id}/config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceConfig {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub device_id: String,
    /// Starts at 1; +1 per successful PUT.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub version: u64,
    /// Seconds.
    #[cfg_attr(feature = "openapi", schema(minimum = 5, maximum = 86400))]
    pub polling_interval: u64,
    /// Seconds.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 300))]
    pub heartbeat_timeout: u64,
    /// Seconds.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86400))]
    pub deploy_timeout: u64,
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::log_level))]
    pub log_level: String,
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::object))]
    pub metadata: Value,
    /// Null while the device still has the defaults.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime, required = true))]
    pub updated_at: Option<Timestamp>,
}

impl DeviceConfig {
    pub const DEFAULT_POLLING_INTERVAL: u64 = 60;
    pub const DEFAULT_HEARTBEAT_TIMEOUT: u64 = 30;
    pub const DEFAULT_DEPLOY_TIMEOUT: u64 = 300;
    pub const LOG_LEVELS: [&'static str; 5] = ["trace", "debug", "info", "warn", "error"];
    /// The fields a `PUT /devices/{id}/config` may set, in display order.
    pub const FIELDS: [&'static str; 5] = [
        "polling_interval",
        "heartbeat_timeout",
        "deploy_timeout",
        "log_level",
        "metadata",
    ];

    /// The defaults every device starts with, at version 1.
    pub fn defaults(device_id: &str) -> Self {
        DeviceConfig {
            device_id: device_id.to_owned(),
            version: 1,
            polling_interval: Self::DEFAULT_POLLING_INTERVAL,
            heartbeat_timeout: Self::DEFAULT_HEARTBEAT_TIMEOUT,
            deploy_timeout: Self::DEFAULT_DEPLOY_TIMEOUT,
            log_level: "info".to_owned(),
            metadata: Value::Object(Default::default()),
            updated_at: None,
        }
    }

    /// The configure command carrying this config.
    pub fn to_command(&self) -> ConfigureCommand {
        ConfigureCommand {
            config_version: self.version,
            polling_interval: self.polling_interval,
            heartbeat_timeout: self.heartbeat_timeout,
            deploy_timeout: self.deploy_timeout,
            log_level: self.log_level.clone(),
            metadata: self.metadata.clone(),
        }
    }
}

/// `PUT /devices/{id}/config` body: any subset of the five fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(description = "Any subset of the five fields; absent or null fields keep their value.")
)]
pub struct ConfigUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 5, maximum = 86400))]
    pub polling_interval: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 300))]
    pub heartbeat_timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86400))]
    pub deploy_timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::log_level_or_null))]
    pub log_level: Option<String>,
    /// At most 16 KiB serialised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::object_or_null))]
    pub metadata: Option<Value>,
}

// ---------------------------------------------------------------------------- bundles

/// A stored bundle (`POST /bundles` reply, `GET /bundles`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BundleInfo {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub id: String,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub name: String,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Za-z0-9._+-]{1,64}$", min_length = 1, max_length = 64)
    )]
    pub version: String,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[0-9a-f]{64}$", min_length = 64, max_length = 64)
    )]
    pub checksum_sha256: String,
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub size_bytes: u64,
    pub manifest: Manifest,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
}

// ------------------------------------------------------------------------ deployments

/// Deploy or rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeploymentKind {
    Deploy,
    Rollback,
}

impl DeploymentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentKind::Deploy => "deploy",
            DeploymentKind::Rollback => "rollback",
        }
    }
}

/// Status of one target device within a deployment (SPEC §1.5, §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TargetStatus {
    /// Its rollout wave has not opened yet: it receives no command.
    Waiting,
    Pending,
    InProgress,
    Success,
    Failed,
    /// Not final within the rollout's `target_timeout_seconds`; a later result replaces it.
    TimedOut,
    Cancelled,
}

impl TargetStatus {
    pub const ALL: [TargetStatus; 7] = [
        TargetStatus::Waiting,
        TargetStatus::Pending,
        TargetStatus::InProgress,
        TargetStatus::Success,
        TargetStatus::Failed,
        TargetStatus::TimedOut,
        TargetStatus::Cancelled,
    ];

    /// Final for the deployment's progress. `timed_out` is final too, but a later
    /// result still replaces it (SPEC §6).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TargetStatus::Success
                | TargetStatus::Failed
                | TargetStatus::TimedOut
                | TargetStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TargetStatus::Waiting => "waiting",
            TargetStatus::Pending => "pending",
            TargetStatus::InProgress => "in_progress",
            TargetStatus::Success => "success",
            TargetStatus::Failed => "failed",
            TargetStatus::TimedOut => "timed_out",
            TargetStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Status of a deployment as a whole (SPEC §1.5, §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(
        description = "Status of a deployment (SPEC §6): scheduled before its rollout's start_at, paused while a gate or an operator holds it."
    )
)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    /// Its rollout's `start_at` is still ahead: nothing is delivered.
    Scheduled,
    Pending,
    InProgress,
    /// A gate (or an operator) holds the rollout: no new deliveries.
    Paused,
    Success,
    Failed,
    Cancelled,
}

impl DeploymentStatus {
    pub const ALL: [DeploymentStatus; 7] = [
        DeploymentStatus::Scheduled,
        DeploymentStatus::Pending,
        DeploymentStatus::InProgress,
        DeploymentStatus::Paused,
        DeploymentStatus::Success,
        DeploymentStatus::Failed,
        DeploymentStatus::Cancelled,
    ];

    pub fn is_final(self) -> bool {
        matches!(
            self,
            DeploymentStatus::Success | DeploymentStatus::Failed | DeploymentStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Scheduled => "scheduled",
            DeploymentStatus::Pending => "pending",
            DeploymentStatus::InProgress => "in_progress",
            DeploymentStatus::Paused => "paused",
            DeploymentStatus::Success => "success",
            DeploymentStatus::Failed => "failed",
            DeploymentStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Per-status target counts of a deployment: every target status has its key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Counts {
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true, minimum = 0))]
    pub waiting: u64,
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub pending: u64,
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub in_progress: u64,
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub success: u64,
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub failed: u64,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true, minimum = 0))]
    pub timed_out: u64,
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub cancelled: u64,
}

impl Counts {
    pub fn slot(&mut self, s: TargetStatus) -> &mut u64 {
        match s {
            TargetStatus::Waiting => &mut self.waiting,
            TargetStatus::Pending => &mut self.pending,
            TargetStatus::InProgress => &mut self.in_progress,
            TargetStatus::Success => &mut self.success,
            TargetStatus::Failed => &mut self.failed,
            TargetStatus::TimedOut => &mut self.timed_out,
            TargetStatus::Cancelled => &mut self.cancelled,
        }
    }

    /// Move one target from `from` to `to`.
    pub fn shift(&mut self, from: TargetStatus, to: TargetStatus) {
        let f = self.slot(from);
        *f = f.saturating_sub(1);
        *self.slot(to) += 1;
    }

    /// Targets with a final status (success, failed, timed out or cancelled).
    pub fn finished(&self) -> u64 {
        self.success + self.failed + self.timed_out + self.cancelled
    }

    pub fn total(&self) -> u64 {
        self.waiting + self.pending + self.in_progress + self.finished()
    }

    /// Targets that received the deployment (delivered, whatever came of it since).
    pub fn delivered(&self) -> u64 {
        self.in_progress + self.success + self.failed + self.timed_out
    }

    /// The deployment status these counts imply (SPEC §1.5, §6), before a rollout's
    /// pause or schedule is taken into account.
    pub fn overall(&self) -> DeploymentStatus {
        if self.waiting + self.pending + self.in_progress > 0 {
            if self.delivered() > 0 {
                DeploymentStatus::InProgress
            } else {
                DeploymentStatus::Pending
            }
        } else if self.failed + self.timed_out > 0 {
            DeploymentStatus::Failed
        } else if self.cancelled > 0 {
            DeploymentStatus::Cancelled
        } else {
            DeploymentStatus::Success
        }
    }
}

/// Phase a device reports while it works on a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Downloading,
    Verifying,
    Installing,
    HealthCheck,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Downloading => "downloading",
            Phase::Verifying => "verifying",
            Phase::Installing => "installing",
            Phase::HealthCheck => "health_check",
        }
    }
}

/// One target of a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentDevice {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub device_id: String,
    pub status: TargetStatus,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub phase: Option<Phase>,
    #[cfg_attr(
        feature = "openapi",
        schema(required = true, minimum = 0, maximum = 100)
    )]
    pub progress_pct: Option<u8>,
    #[cfg_attr(feature = "openapi", schema(required = true, max_length = 8192))]
    pub error_message: Option<String>,
    #[cfg_attr(feature = "openapi", schema(required = true, max_length = 8192))]
    pub log_tail: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub updated_at: Timestamp,
}

/// A deployment (SPEC §1.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deployment {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub id: String,
    pub kind: DeploymentKind,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub bundle_id: String,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Za-z0-9._+-]{1,64}$", min_length = 1, max_length = 64)
    )]
    pub bundle_version: String,
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::ids))]
    pub target_device_ids: Vec<String>,
    pub status: DeploymentStatus,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub updated_at: Timestamp,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime, required = true))]
    pub completed_at: Option<Timestamp>,
    pub counts: Counts,
    pub devices: Vec<DeploymentDevice>,
    /// The rollout (SPEC §6); `null` for a deployment created without a policy.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub rollout: Option<Rollout>,
}

/// `POST /deployments` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(
        description = "One of bundle_version or bundle_id is required (non-null); the union of target_device_ids and the accepted devices carrying any of target_tags must not be empty."
    )
)]
pub struct CreateDeployment {
    /// The bundle to deploy, by version (takes precedence over bundle_id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Za-z0-9._+-]{1,64}$", min_length = 1, max_length = 64)
    )]
    pub bundle_version: Option<String>,
    /// The bundle to deploy, by id; used when bundle_version is absent or null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub bundle_id: Option<String>,
    /// Devices that exist and are accepted.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::ids))]
    pub target_device_ids: Vec<String>,
    /// Adds every accepted device carrying any of these tags.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::tags))]
    pub target_tags: Vec<String>,
    /// Waves, gates and timeouts (SPEC §6); absent: one wave of 100 %.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutPolicy>,
}

/// `POST /devices/rollback` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RollbackRequest {
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Za-z0-9._+-]{1,64}$", min_length = 1, max_length = 64)
    )]
    pub bundle_version: String,
    /// Accepted devices that each have a success history record for bundle_version.
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::some_ids))]
    pub target_device_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutPolicy>,
}

/// `POST /deployments/{id}/progress` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProgressReport {
    /// Must be the calling device.
    pub device_id: String,
    pub phase: Phase,
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100))]
    pub progress_pct: u8,
}

/// Final outcome a device reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ResultStatus {
    Success,
    Failed,
}

impl ResultStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultStatus::Success => "success",
            ResultStatus::Failed => "failed",
        }
    }
}

/// `POST /deployments/{id}/result` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResultReport {
    /// Must be the calling device.
    pub device_id: String,
    pub status: ResultStatus,
    /// Idempotency key (a UUID by convention): 1-64 bytes of UTF-8.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub report_id: String,
    /// At most 8 KiB (8192 bytes) of UTF-8.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 8192))]
    pub error_message: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub duration_seconds: Option<f64>,
    /// Longer text is cut to its last 8 KiB.
    #[serde(default)]
    pub log_tail: Option<String>,
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Za-z0-9._+-]{1,64}$", min_length = 1, max_length = 64)
    )]
    pub rolled_back_to: Option<String>,
}

/// One row of `GET /devices/{id}/bundle-history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryRecord {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub id: String,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub device_id: String,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub deployment_id: String,
    pub kind: DeploymentKind,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub bundle_id: String,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Za-z0-9._+-]{1,64}$", min_length = 1, max_length = 64)
    )]
    pub bundle_version: String,
    pub status: ResultStatus,
    #[cfg_attr(feature = "openapi", schema(required = true, max_length = 8192))]
    pub error_message: Option<String>,
    #[cfg_attr(feature = "openapi", schema(required = true, max_length = 8192))]
    pub log_tail: Option<String>,
    #[cfg_attr(
        feature = "openapi",
        schema(
            required = true,
            pattern = "^[A-Za-z0-9._+-]{1,64}$",
            min_length = 1,
            max_length = 64
        )
    )]
    pub rolled_back_to: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub deployed_at: Timestamp,
    #[cfg_attr(feature = "openapi", schema(required = true, minimum = 0))]
    pub duration_seconds: Option<f64>,
}

// ----------------------------------------------------------------------------- tokens

/// `POST /tokens` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateToken {
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Za-z0-9._-]{1,64}$", min_length = 1, max_length = 64)
    )]
    pub name: String,
}

/// `POST /tokens` reply: the only time the token itself is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedToken {
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Za-z0-9._-]{1,64}$", min_length = 1, max_length = 64)
    )]
    pub name: String,
    /// The operator token; shown only here.
    pub token: String,
}

/// One row of `GET /tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenInfo {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// Always [`Health::OK`].
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::health_status))]
    pub status: String,
}

impl Health {
    /// The only status `GET /healthz` answers with (a failing store is a 500).
    pub const OK: &'static str = "ok";
}

/// Name → value map used for free-form metadata when a typed map is wanted.
pub type Metadata = BTreeMap<String, Value>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_tagged_by_type() {
        let c = Command::Deploy(BundleCommand {
            deployment_id: "d".into(),
            bundle_id: "b".into(),
            bundle_version: "1.0.0".into(),
            checksum_sha256: "00".into(),
            size_bytes: 3,
            signed: None,
        });
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["type"], "deploy");
        assert_eq!(v["bundle_version"], "1.0.0");
        let back: Command = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn overall_status_follows_spec() {
        let mut c = Counts {
            pending: 2,
            ..Counts::default()
        };
        assert_eq!(c.overall(), DeploymentStatus::Pending);
        c.shift(TargetStatus::Pending, TargetStatus::InProgress);
        assert_eq!(c.overall(), DeploymentStatus::InProgress);
        c.shift(TargetStatus::InProgress, TargetStatus::Success);
        c.shift(TargetStatus::Pending, TargetStatus::Cancelled);
        assert_eq!(c.overall(), DeploymentStatus::Cancelled);
        c.shift(TargetStatus::Success, TargetStatus::Failed);
        assert_eq!(c.overall(), DeploymentStatus::Failed);
    }
}
