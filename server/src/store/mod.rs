//! Storage behind one interface: [`Store`], an async trait that speaks in domain records.
//!
//! Handlers and services hold an `Arc<dyn Store>` and never see the engine. The embedded
//! default is [`SledStore`]; a PostgreSQL backend (SPEC §8) is a second implementation of
//! the same trait, run against the same HTTP test suite.
//!
//! The contract every backend keeps:
//! - **A returned write is durable.** Every method that changes state has it on disk
//!   before it returns `Ok`, so a handler answers 2xx only for what survives a crash.
//!   The one exception is [`Store::write_beats`]: heartbeats are group-committed and may
//!   lose the last second before a crash (SPEC §1.8).
//! - **Multi-record changes are atomic** (one transaction), so concurrent requests, or
//!   several server processes on one database, never see half a change.
//! - **The rules are not the backend's.** What a result does to a deployment, how a
//!   config update merges, who is admitted: those are pure functions in
//!   [`crate::service::rules`]; a backend calls them inside its transaction and stores
//!   what they return. What a heartbeat returns is decided above the store, in
//!   [`crate::service::heartbeat`].
//! - Errors are [`StoreError`]: domain variants carry a message for the client; engine
//!   failures are `Backend`, with no engine type in the signature.

mod error; // StoreError
mod export; // the store as a stream of domain records (backups)
pub mod pg_store; // the PostgreSQL backend (SPEC §8)
mod records; // stored record types
pub mod sled_store; // the embedded sled backend

use async_trait::async_trait;
use kernex_common::api::{
    Admission, ConfigUpdate, DeploymentKind, DeploymentStatus, DeviceConfig, HeartbeatRecord,
    HeartbeatRequest, HistoryRecord, OnlineStatus, ProgressReport, ResultReport, TargetStatus,
};
use kernex_common::update_signing::{SignedDocument, TrustSet};
use serde_json::Value;

pub use error::{Result, StoreError};
pub use export::{BackupRecord, LiveSnapshot, RecordCounts, RecordSink, RecordSource};
pub use pg_store::{PgOptions, PgStore, TOKEN_CHANNEL};
pub use records::*;
pub use sled_store::{SledOptions, SledStore};

/// A verified registration, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewRegistration {
    pub public_key_pem: String,
    pub fingerprint: String,
    pub device_type: String,
    pub hardware_metadata: Value,
    /// SHA-256 of the signature, remembered for the replay window.
    pub signature_hash: String,
    pub replay_until: Ts,
    /// Admission the registration presented: `Accepted` with the enrollment token,
    /// else `Pending` ([`crate::service::rules::admit`] decides what is stored).
    pub admission: Admission,
    /// Refuse it (401 with this message, e.g. a wrong enrollment token) *after* the
    /// signature is burned, in the same transaction: one signed body, one answer.
    pub refusal: Option<String>,
    /// Refuse a new pending device (`Unavailable`) when this many are pending already.
    pub max_pending: Option<u64>,
    pub token_hash: String,
    pub now: Ts,
}

#[derive(Debug, Clone)]
pub struct RegisterOutcome {
    pub device: Device,
    pub created: bool,
}

/// `GET /devices` query.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    pub after: Option<String>,
    pub limit: usize,
    pub tag: Option<String>,
    pub status: Option<OnlineStatus>,
    pub admission: Option<Admission>,
}

/// `GET /deployments/{id}/targets` query: one page in device-id order.
#[derive(Debug, Clone, Default)]
pub struct TargetFilter {
    pub status: Option<TargetStatus>,
    pub after: Option<String>,
    pub limit: usize,
}

/// One heartbeat as the beat writer hands it to the store.
#[derive(Debug, Clone)]
pub struct Beat {
    pub device_id: String,
    pub at: Ts,
    pub report: HeartbeatRequest,
    /// The device's configured interval (online means a beat within 3 × this).
    pub polling_interval: u64,
}

/// What the in-memory work index is rebuilt from at start (SPEC §1.2: a heartbeat costs
/// O(this device)).
#[derive(Debug, Clone, Default)]
pub struct WorkSnapshot {
    /// Devices with at least one unfinished deployment target.
    pub open: Vec<String>,
    /// Devices waiting for an operator's accept.
    pub pending: Vec<String>,
    /// Every config ever set (devices without one run the defaults at version 1).
    pub configs: Vec<DeviceConfig>,
}

/// Fleet-wide numbers for `/metrics`, kept up to date on writes (never counted by a
/// scan at scrape time).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetCounts {
    pub devices_pending: u64,
    pub devices_accepted: u64,
    pub devices_rejected: u64,
    /// Deployments by status, in [`DeploymentStatus::ALL`] order.
    pub deployments: [u64; 7],
    /// Devices by online status (SPEC §1.2), whatever their admission.
    pub online: u64,
    pub offline: u64,
    pub never: u64,
}

/// What a result report did.
#[derive(Debug, Clone)]
// Built once per result request and consumed at once; boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum ResultOutcome {
    /// The first final result for this target: everything was updated.
    Applied {
        deployment: DeploymentRecord,
        target: TargetRecord,
        history: HistoryRecord,
        device: Device,
    },
    /// A repeat (same `report_id`) or a late result after the first: nothing changed.
    Repeat { target: TargetRecord },
}

/// One step of a chunked cancel: what changed, and whether targets remain.
#[derive(Debug, Clone)]
pub struct CancelStep {
    pub deployment: DeploymentRecord,
    /// Devices whose target this step cancelled.
    pub cancelled: Vec<String>,
    /// Where the next step starts; `None` when every target was looked at.
    pub next: Option<String>,
}

/// A change to a rollout that touches only its deployment record (the rules are in
/// [`crate::service::rollout`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutUpdate {
    /// Open wave `k` (its targets are released after, by [`Store::release_step`]).
    OpenWave(usize),
    /// Pause with this reason (an operator, or a gate); `Conflict` when not allowed.
    Pause(String),
    /// Resume; `Conflict` when not paused.
    Resume,
    /// The failure gate aborts (the caller then cancels what was not delivered).
    Abort(String),
}

/// What a [`RolloutUpdate`] did.
#[derive(Debug, Clone)]
pub struct RolloutUpdated {
    pub deployment: DeploymentRecord,
    /// The update changed something.
    pub changed: bool,
    /// A resume found the current wave good: the next wave should open.
    pub advance: bool,
}

/// One step of releasing the current wave's targets.
#[derive(Debug, Clone)]
pub struct ReleaseStep {
    pub deployment: DeploymentRecord,
    /// Devices whose target became deliverable.
    pub released: Vec<String>,
    /// The wave has no more targets after this step's.
    pub done: bool,
}

/// One step of timing out a wave's targets.
#[derive(Debug, Clone)]
pub struct TimeoutStep {
    pub deployment: DeploymentRecord,
    pub timed_out: Vec<String>,
    /// The rollout position the next step starts after; `None` when the wave was
    /// looked at whole.
    pub next: Option<u64>,
    /// The earliest deadline among this step's targets still unfinished.
    pub next_deadline: Option<Ts>,
}

/// The storage interface. Every write is durable when it returns (see the module doc).
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Wait until everything written before this call is durable (group commit; the
    /// write methods call it themselves, shutdown calls it once more).
    async fn sync(&self) -> Result<()>;

    // ------------------------------------------------------------------ devices

    /// Store a verified registration: a new device for a new key, or a fresh token for the
    /// device that owns it. Refuses a replayed signature; otherwise the signature is
    /// remembered (durably) whatever the outcome, so refusals after it (the
    /// registration's own `refusal`, a rejected key, the pending cap) burn the body too.
    async fn register(&self, reg: &NewRegistration) -> Result<RegisterOutcome>;
    async fn device(&self, device_id: &str) -> Result<Device>;
    async fn device_exists(&self, device_id: &str) -> Result<bool>;
    /// The admission of each of `device_ids` that exists; unknown ids are left out. One
    /// round trip where the backend has them (a deployment may name 10,000 devices).
    async fn admissions(
        &self,
        device_ids: &[String],
    ) -> Result<std::collections::HashMap<String, Admission>> {
        let mut found = std::collections::HashMap::with_capacity(device_ids.len());
        for id in device_ids {
            match self.device(id).await {
                Ok(d) => {
                    found.insert(id.clone(), d.admission());
                }
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }
    /// One page of devices ordered by id, after the cursor, matching the filter.
    async fn list_devices(&self, filter: &DeviceFilter, now: Ts) -> Result<Vec<Device>>;
    /// Accepted devices carrying any of `tags`, deduplicated, in id order.
    async fn accepted_devices_with_tags(&self, tags: &[String]) -> Result<Vec<String>>;
    /// Replace a device's tags (already validated).
    async fn set_tags(&self, device_id: &str, tags: &[String]) -> Result<Device>;
    /// Set admission. Rejecting revokes the device's token and cancels its unfinished
    /// targets; returns the deployments that changed.
    async fn set_admission(
        &self,
        device_id: &str,
        admission: Admission,
        now: Ts,
    ) -> Result<(Device, Vec<DeploymentRecord>)>;
    /// Delete a device and everything that is only its own; cancel its unfinished targets.
    async fn delete_device(&self, device_id: &str, now: Ts) -> Result<Vec<DeploymentRecord>>;

    // ------------------------------------------------------------- heartbeats

    /// Apply a batch of heartbeats (the beat writer's group commit): each updates its
    /// device's live record and appends to its history, pruned to the retention. Not
    /// durable on return: the backend makes it durable within a second. An empty batch
    /// asks the backend to write out whatever it still holds in memory (the writer
    /// sends one on a timer and at shutdown, before [`Store::sync`]).
    async fn write_beats(&self, beats: Vec<Beat>) -> Result<()>;
    /// Beats the heartbeat writer may hold in memory before devices wait for it: well
    /// under a second of what this backend stores, so a crash loses at most the last
    /// second of heartbeats (SPEC §1.8) even when the writer falls behind.
    fn beat_queue(&self) -> usize {
        64 * 1024
    }
    /// Newest first, at most `limit`.
    async fn heartbeats(&self, device_id: &str, limit: usize) -> Result<Vec<HeartbeatRecord>>;
    /// What the work index is rebuilt from at start.
    async fn work_snapshot(&self) -> Result<WorkSnapshot>;
    /// This device's unfinished targets, oldest deployment first.
    async fn open_targets(&self, device_id: &str) -> Result<Vec<(DeploymentRecord, TargetStatus)>>;
    /// Move a pending target to `in_progress` (its command is being delivered). Returns
    /// the deployment when this call moved it; `None` when it was not pending any more.
    async fn deliver(
        &self,
        deployment_id: &str,
        device_id: &str,
        now: Ts,
    ) -> Result<Option<DeploymentRecord>>;

    // ----------------------------------------------------------------- config

    /// The device's config, or the defaults at version 1 if none was ever set.
    async fn config(&self, device_id: &str) -> Result<DeviceConfig>;
    /// Apply an already validated update (merged by the rules).
    async fn update_config(
        &self,
        device_id: &str,
        update: &ConfigUpdate,
        now: Ts,
    ) -> Result<DeviceConfig>;

    // ----------------------------------------------------------------- tokens

    /// Who the token with this hash speaks for, if it is live.
    async fn principal(&self, token_hash: &str) -> Result<Option<Principal>>;
    /// A shared store's replica hears every token change from now on (`true`), or may
    /// have missed some (`false`, its notice connection was lost): a token cache may
    /// serve only in between. Nothing to do for a store of one process.
    fn token_notices(&self, _live: bool) {}
    /// Another replica (or this one) removed or replaced a token.
    fn token_changed(&self) {}
    /// Mint a named operator token; `Conflict` when the name is taken.
    async fn create_operator_token(&self, name: &str, hash: &str, now: Ts) -> Result<()>;
    /// Make `hash` the token named `name`, replacing an earlier one of that name.
    async fn put_operator_token(&self, name: &str, hash: &str, now: Ts) -> Result<()>;
    async fn list_operator_tokens(&self) -> Result<Vec<OperatorTokenRecord>>;
    async fn operator_token_exists(&self, name: &str) -> Result<bool>;
    async fn has_operator_tokens(&self) -> Result<bool>;
    async fn delete_operator_token(&self, name: &str) -> Result<()>;

    // ---------------------------------------------------------------- bundles

    /// Record a new bundle; `Conflict` when its version exists.
    async fn insert_bundle(&self, bundle: &BundleRecord) -> Result<()>;
    async fn bundle(&self, id: &str) -> Result<BundleRecord>;
    async fn bundle_version_exists(&self, version: &str) -> Result<bool>;
    async fn bundle_by_version(&self, version: &str) -> Result<Option<BundleRecord>>;
    /// Newest first.
    async fn list_bundles(&self) -> Result<Vec<BundleRecord>>;
    /// May this device download this bundle (is it targeted by a deployment of it)?
    async fn device_may_download(&self, device_id: &str, bundle_id: &str) -> Result<bool>;
    /// Remove a bundle's record; `Conflict` while an unfinished deployment uses it.
    async fn delete_bundle(&self, id: &str) -> Result<BundleRecord>;

    // -------------------------------------------------------- signed updates

    /// The bundle's signed metadata and every signature stored for it (SPEC §7).
    async fn bundle_signatures(&self, bundle_id: &str) -> Result<Option<SignedDocument>>;
    /// Add signatures to a bundle ([`crate::service::signing::merge_signatures`]);
    /// `NotFound` for an unknown bundle. Returns what is stored now.
    async fn add_bundle_signatures(
        &self,
        bundle_id: &str,
        doc: &SignedDocument,
    ) -> Result<SignedDocument>;
    /// The newest trust document, if any.
    async fn trust_document(&self) -> Result<Option<SignedDocument>>;
    /// Store a trust document if [`crate::service::signing::next_trust`] allows it
    /// (`anchor`: the keys a first document must be signed by); returns its version.
    async fn put_trust_document(
        &self,
        doc: &SignedDocument,
        anchor: Option<&TrustSet>,
    ) -> Result<u64>;

    // ------------------------------------------------------------ deployments

    /// Create a deployment of `bundle` to `target_ids`; every target must exist and be
    /// accepted at commit time.
    /// With a `rollout` (SPEC §6) `target_ids` are in rollout order and every target
    /// starts `waiting`: none is deliverable until its wave opens.
    async fn create_deployment(
        &self,
        kind: DeploymentKind,
        bundle: &BundleRecord,
        target_ids: &[String],
        rollout: Option<RolloutState>,
        now: Ts,
    ) -> Result<DeploymentRecord>;
    async fn deployment(&self, id: &str) -> Result<DeploymentRecord>;
    /// One page of a deployment's targets in device-id order.
    async fn deployment_targets(
        &self,
        id: &str,
        filter: &TargetFilter,
    ) -> Result<Vec<TargetRecord>>;
    /// Newest first, optionally only those with `status`.
    async fn list_deployments(
        &self,
        status: Option<DeploymentStatus>,
        limit: usize,
    ) -> Result<Vec<DeploymentRecord>>;
    /// Cancel, among the next `chunk` targets after `after` (device-id order), those that
    /// have not received the deployment yet (`waiting` or `pending`), saying `reason`. Each step is its own short transaction, so
    /// a 100,000-target cancel never holds the store for long; call again with
    /// [`CancelStep::next`] until it is `None`; the last step makes the whole cancel
    /// durable.
    async fn cancel_deployment_step(
        &self,
        id: &str,
        after: Option<&str>,
        chunk: usize,
        reason: &str,
        now: Ts,
    ) -> Result<CancelStep>;

    // --------------------------------------------------------------- rollouts

    /// Apply a change to a rollout's state, durably.
    async fn update_rollout(
        &self,
        id: &str,
        update: &RolloutUpdate,
        now: Ts,
    ) -> Result<RolloutUpdated>;
    /// Release up to `max` (at most one short transaction's worth) waiting targets of the
    /// current wave, in rollout order from where the last release stopped.
    async fn release_step(&self, id: &str, max: usize, now: Ts) -> Result<ReleaseStep>;
    /// Time out, among the next `chunk` targets of `wave` after rollout position `after`,
    /// those past their deadline.
    async fn time_out_step(
        &self,
        id: &str,
        wave: usize,
        after: Option<u64>,
        chunk: usize,
        now: Ts,
    ) -> Result<TimeoutStep>;
    /// Record a soak's verdict on a success; the deployment when it changed.
    async fn record_soak(
        &self,
        id: &str,
        device_id: &str,
        ok: bool,
        now: Ts,
    ) -> Result<Option<DeploymentRecord>>;
    /// Deployments with a rollout that were not final when last looked at (what the
    /// rollout driver rebuilds its set from at start).
    async fn active_rollouts(&self) -> Result<Vec<DeploymentRecord>>;
    /// A rollout is final: drop it from [`Store::active_rollouts`].
    async fn retire_rollout(&self, id: &str) -> Result<()>;
    /// Record a device's progress on its target; `Forbidden` when it is not a target.
    async fn record_progress(
        &self,
        deployment_id: &str,
        report: &ProgressReport,
        now: Ts,
    ) -> Result<TargetRecord>;
    /// Apply a device's final result: idempotent by `report_id`, first result wins.
    async fn apply_result(
        &self,
        deployment_id: &str,
        report: &ResultReport,
        now: Ts,
    ) -> Result<ResultOutcome>;
    async fn is_target(&self, deployment_id: &str, device_id: &str) -> Result<bool>;
    /// Newest first, at most `limit`.
    async fn history(&self, device_id: &str, limit: usize) -> Result<Vec<HistoryRecord>>;
    /// Did this device ever report `success` for this version?
    async fn device_ran_version(&self, device_id: &str, version: &str) -> Result<bool>;

    // ---------------------------------------------------------------- metrics

    /// Fleet-wide counts, kept on writes; `now` splits online from offline.
    async fn fleet_counts(&self, now: Ts) -> Result<FleetCounts>;

    // ---------------------------------------------------------------- backups

    /// Emit every primary record to `sink`, in export order ([`export`]), as one
    /// consistent snapshot: writes wait until it returns (heartbeats queue in the beat
    /// writer's memory), reads go on.
    async fn export(&self, sink: Box<dyn RecordSink>) -> Result<()>;
    /// Fill an empty store from records in export order and rebuild its indexes,
    /// durable on return; `Conflict` when the store holds anything already.
    async fn import(&self, source: RecordSource) -> Result<RecordCounts>;
}

/// A fresh time-ordered id (UUIDv7, simple form: 32 hex chars, sorts by creation time).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}
