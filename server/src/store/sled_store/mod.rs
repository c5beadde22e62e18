//! The embedded backend: one sled database, one tree per index.
//!
//! Trees and key layout (`‖` is a 0x00 byte; ids never contain it):
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `devices` | device_id | [`DeviceRecord`] (JSON; identity, never rewritten by a heartbeat) |
//! | `device_keys` | public-key fingerprint | device_id |
//! | `device_tags` | tag ‖ device_id | — |
//! | `device_pending` | device_id | — (devices waiting for an accept) |
//! | `heartbeats` | device_id ‖ slot (u32 BE) | a sealed chunk of 16 heartbeats (postcard, ~45 bytes a beat; a ring per device, see `beats.rs`) |
//! | `configs` | device_id | config |
//! | `tokens` | SHA-256(token) | [`Principal`] |
//! | `operator_tokens` | name | name, hash, created_at |
//! | `device_tokens` | device_id | SHA-256 of its live token |
//! | `registrations` | SHA-256(signature) | expiry (replay window) |
//! | `registration_expiry` | expiry ms (u64 BE) ‖ SHA-256(signature) | — (pruning in expiry order) |
//! | `bundles` | bundle_id (UUIDv7: time-ordered) | bundle record |
//! | `bundle_versions` | version | bundle_id |
//! | `deployments` | deployment_id (UUIDv7) | deployment record (counts, no targets) |
//! | `targets` | deployment_id ‖ device_id | per-device status |
//! | `device_open` | device_id ‖ deployment_id | — (this device's unfinished targets) |
//! | `bundle_open` | bundle_id | number of unfinished deployments using it |
//! | `device_bundles` | device_id ‖ bundle_id | — (bundles it may download) |
//! | `history` | device_id ‖ history_id (UUIDv7) | history record |
//! | `device_success` | device_id ‖ version | — (versions it ran successfully) |
//! | `reports` | report_id | deployment_id ‖ device_id |
//! | `counters` | name | i64 BE (fleet counts for `/metrics`, kept in the same transactions) |
//! | `bundle_signatures` | bundle_id | signed metadata and every signature (JSON, SPEC §7) |
//! | `trust` | `current` | the newest trust document (JSON, SPEC §7) |
//! | `wave_targets` | deployment_id ‖ wave (u32 BE) ‖ position (u64 BE) device_id | — (a rollout's waves in rollout order) |
//! | `rollouts_active` | deployment_id | — (rollouts not yet final: what the rollout driver watches) |
//!
//! Beside the trees, `live/` holds each device's live record (last report and the
//! history chunk being filled): in memory, made durable by a write-ahead log and
//! snapshots (`live_table.rs`), because a random read-modify-write in a sled tree costs
//! several times more at 1M keys than at 1k.
//!
//! Multi-record changes run in sled transactions. sled 0.34 serialises transactions
//! behind one process-wide lock, so the heartbeat path uses none: the one beat writer
//! (`beats.rs`) replaces in-memory records, appends to the log and writes a sealed
//! history chunk to sled every 16 beats. Durability: writes call [`Flusher::sync`]
//! (group commit: one fsync for every write waiting on it) before they return; the
//! beat log is fsynced every 200 ms and sealed chunks ride sled's own flush every 500 ms
//! (a snapshot of the live records flushes sled first).

mod backup; // export and import as domain records
mod beats; // heartbeat live records and history
mod bundles; // bundle records
mod config; // versioned device config
mod counters; // fleet counts for /metrics
mod deployments; // deployments, targets, results, history
mod devices; // registration, listing, admission
mod flusher; // group commit of fsyncs
mod live_table; // live records in memory, a write-ahead log and snapshots
mod online; // online/offline counts by expiry second
mod rollouts; // rollout waves, releases, timeouts, soak verdicts
mod signing; // bundle signatures and the trust document
#[cfg(test)]
mod test_support; // builders for the unit tests
mod tokens; // operator and device tokens

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use kernex_common::api::{
    Admission, ConfigUpdate, DeploymentKind, DeploymentStatus, DeviceConfig, HeartbeatRecord,
    HistoryRecord, ProgressReport, ResultReport, TargetStatus,
};
use kernex_common::update_signing::{SignedDocument, TrustSet};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::*;
use flusher::Flusher;
use online::OnlineTracker;

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<StoreError>>;

/// How a [`SledStore`] is opened.
#[derive(Debug, Clone, Copy)]
pub struct SledOptions {
    /// Heartbeats kept per device (older ones are pruned as new ones arrive).
    pub heartbeat_retention: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions {
            heartbeat_retention: 1000,
        }
    }
}

/// The embedded store.
#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    flusher: Arc<Flusher>,
    online: Arc<OnlineTracker>,
    token_cache: Arc<tokens::TokenCache>,
    live_table: Arc<live_table::LiveTable>,
    /// Held by the beat writer per batch and by device deletion (see `beats.rs`).
    beats_lock: Arc<std::sync::Mutex<()>>,
    /// Every write holds it shared; an export holds it exclusively, so its snapshot is
    /// consistent across trees (sled has no multi-tree snapshot).
    gate: Arc<tokio::sync::RwLock<()>>,
    /// sled's directory (the log file `db` is in it).
    dir: std::path::PathBuf,
    options: SledOptions,
    devices: sled::Tree,
    device_keys: sled::Tree,
    device_tags: sled::Tree,
    device_pending: sled::Tree,
    heartbeats: sled::Tree,
    configs: sled::Tree,
    tokens: sled::Tree,
    operator_tokens: sled::Tree,
    device_tokens: sled::Tree,
    registrations: sled::Tree,
    registration_expiry: sled::Tree,
    bundles: sled::Tree,
    bundle_versions: sled::Tree,
    deployments: sled::Tree,
    targets: sled::Tree,
    device_open: sled::Tree,
    bundle_open: sled::Tree,
    device_bundles: sled::Tree,
    history: sled::Tree,
    device_success: sled::Tree,
    reports: sled::Tree,
    counters: sled::Tree,
    bundle_signatures: sled::Tree,
    trust: sled::Tree,
    wave_targets: sled::Tree,
    rollouts_active: sled::Tree,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

impl SledStore {
    /// Open (or create) the store in `dir`. `Locked` if another process holds it.
    pub fn open(dir: &Path, options: SledOptions) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            // Heartbeats are not flushed one by one; this bounds what a crash can lose.
            .flush_every_ms(Some(500))
            .open()
            .map_err(open_error)?;
        let t = |name: &str| db.open_tree(name).map_err(StoreError::backend);
        let heartbeats = t("heartbeats")?;
        let live_table = beats::open_live_table(&db, &heartbeats, &dir.join("live"))?;
        let store = SledStore {
            devices: t("devices")?,
            device_keys: t("device_keys")?,
            device_tags: t("device_tags")?,
            device_pending: t("device_pending")?,
            heartbeats,
            configs: t("configs")?,
            tokens: t("tokens")?,
            operator_tokens: t("operator_tokens")?,
            device_tokens: t("device_tokens")?,
            registrations: t("registrations")?,
            registration_expiry: t("registration_expiry")?,
            bundles: t("bundles")?,
            bundle_versions: t("bundle_versions")?,
            deployments: t("deployments")?,
            targets: t("targets")?,
            device_open: t("device_open")?,
            bundle_open: t("bundle_open")?,
            device_bundles: t("device_bundles")?,
            history: t("history")?,
            device_success: t("device_success")?,
            reports: t("reports")?,
            counters: t("counters")?,
            bundle_signatures: t("bundle_signatures")?,
            trust: t("trust")?,
            wave_targets: t("wave_targets")?,
            rollouts_active: t("rollouts_active")?,
            flusher: Arc::new(Flusher::start(db.clone(), dir)),
            online: Arc::new(OnlineTracker::default()),
            token_cache: Arc::default(),
            live_table,
            beats_lock: Arc::default(),
            gate: Arc::default(),
            dir: dir.to_path_buf(),
            options,
            db,
        };
        store.rebuild_counters_if_missing()?;
        store.rebuild_online()?;
        store.finish_indexing(chrono::Utc::now())?;
        Ok(store)
    }

    /// Make everything written so far durable (blocking; for the CLI and shutdown):
    /// sled's flush, then an fsync of its log (see `flusher.rs` for why both).
    pub fn flush_blocking(&self) -> Result<()> {
        self.db.flush().map_err(StoreError::backend)?;
        std::fs::File::open(self.dir.join("db"))
            .and_then(|log| log.sync_all())
            .map_err(StoreError::backend)
    }

    /// [`Store::work_snapshot`] without a runtime (start-up).
    pub fn work_snapshot_blocking(&self) -> Result<WorkSnapshot> {
        self.work_snapshot()
    }

    /// [`Store::bundle`] without a runtime (start-up clean-up).
    pub fn bundle_blocking(&self, id: &str) -> Result<BundleRecord> {
        self.bundle(id)
    }

    /// [`Store::create_operator_token`] without a runtime (the CLI), durable on return.
    pub fn create_operator_token_blocking(&self, name: &str, hash: &str, now: Ts) -> Result<()> {
        self.set_operator_token(name, hash, now, false)?;
        self.flush_blocking()
    }

    /// [`Store::put_operator_token`] without a runtime (start-up), durable on return.
    pub fn put_operator_token_blocking(&self, name: &str, hash: &str, now: Ts) -> Result<()> {
        self.set_operator_token(name, hash, now, true)?;
        self.flush_blocking()
    }

    pub fn has_operator_tokens_blocking(&self) -> bool {
        !self.operator_tokens.is_empty()
    }

    /// [`Store::fleet_counts`] without a runtime (`kernex-server check`).
    pub fn fleet_counts_blocking(&self) -> Result<FleetCounts> {
        self.fleet_counts(chrono::Utc::now())
    }

    /// Bytes the store uses on disk: sled and the live-record files (benchmarks report
    /// growth per heartbeat).
    pub fn size_on_disk(&self) -> Result<u64> {
        let live = self
            .live_table
            .size_on_disk()
            .map_err(StoreError::backend)?;
        Ok(self.db.size_on_disk().map_err(StoreError::backend)? + live)
    }
}

fn open_error(e: sled::Error) -> StoreError {
    match &e {
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") =>
        {
            StoreError::Locked
        }
        _ => StoreError::backend(e),
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::backend(e)
    }
}

/// Run a sync body (behind the export gate), then make it durable before returning.
macro_rules! durable {
    ($self:ident, $body:expr) => {{
        let out = {
            let _writing = $self.gate.read().await;
            $body
        };
        $self.sync().await?;
        out
    }};
}

#[async_trait]
impl Store for SledStore {
    async fn sync(&self) -> Result<()> {
        self.flusher.sync().await
    }

    async fn register(&self, reg: &NewRegistration) -> Result<RegisterOutcome> {
        durable!(self, SledStore::register(self, reg))
    }
    async fn device(&self, device_id: &str) -> Result<Device> {
        SledStore::device(self, device_id)
    }
    async fn device_exists(&self, device_id: &str) -> Result<bool> {
        Ok(self.devices.contains_key(device_id)?)
    }
    async fn list_devices(&self, filter: &DeviceFilter, now: Ts) -> Result<Vec<Device>> {
        SledStore::list_devices(self, filter, now)
    }
    async fn accepted_devices_with_tags(&self, tags: &[String]) -> Result<Vec<String>> {
        SledStore::accepted_devices_with_tags(self, tags)
    }
    async fn set_tags(&self, device_id: &str, tags: &[String]) -> Result<Device> {
        durable!(self, SledStore::set_tags(self, device_id, tags))
    }
    async fn set_admission(
        &self,
        device_id: &str,
        admission: Admission,
        now: Ts,
    ) -> Result<(Device, Vec<DeploymentRecord>)> {
        durable!(
            self,
            SledStore::set_admission(self, device_id, admission, now)
        )
    }
    async fn delete_device(&self, device_id: &str, now: Ts) -> Result<Vec<DeploymentRecord>> {
        durable!(self, SledStore::delete_device(self, device_id, now))
    }

    async fn write_beats(&self, beats: Vec<Beat>) -> Result<()> {
        // A batch is a few hundred µs of sled work: off the async workers. During an
        // export the batch waits here; the beat writer keeps queueing in memory.
        let writing = self.gate.clone().read_owned().await;
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let _writing = writing;
            store.write_beats_blocking(&beats)
        })
        .await
        .map_err(StoreError::backend)?
    }
    async fn heartbeats(&self, device_id: &str, limit: usize) -> Result<Vec<HeartbeatRecord>> {
        SledStore::heartbeats(self, device_id, limit)
    }
    async fn work_snapshot(&self) -> Result<WorkSnapshot> {
        SledStore::work_snapshot(self)
    }
    async fn open_targets(&self, device_id: &str) -> Result<Vec<(DeploymentRecord, TargetStatus)>> {
        SledStore::open_targets(self, device_id)
    }
    async fn deliver(
        &self,
        deployment_id: &str,
        device_id: &str,
        now: Ts,
    ) -> Result<Option<DeploymentRecord>> {
        // Not synced: a delivery lost in a crash is delivered again (the agent
        // de-duplicates by deployment id).
        let _writing = self.gate.read().await;
        SledStore::deliver(self, deployment_id, device_id, now)
    }

    async fn config(&self, device_id: &str) -> Result<DeviceConfig> {
        SledStore::config(self, device_id)
    }
    async fn update_config(
        &self,
        device_id: &str,
        update: &ConfigUpdate,
        now: Ts,
    ) -> Result<DeviceConfig> {
        durable!(self, SledStore::update_config(self, device_id, update, now))
    }

    async fn principal(&self, token_hash: &str) -> Result<Option<Principal>> {
        SledStore::principal(self, token_hash)
    }
    async fn create_operator_token(&self, name: &str, hash: &str, now: Ts) -> Result<()> {
        durable!(self, self.set_operator_token(name, hash, now, false))
    }
    async fn put_operator_token(&self, name: &str, hash: &str, now: Ts) -> Result<()> {
        durable!(self, self.set_operator_token(name, hash, now, true))
    }
    async fn list_operator_tokens(&self) -> Result<Vec<OperatorTokenRecord>> {
        SledStore::list_operator_tokens(self)
    }
    async fn operator_token_exists(&self, name: &str) -> Result<bool> {
        Ok(self.operator_tokens.contains_key(name)?)
    }
    async fn has_operator_tokens(&self) -> Result<bool> {
        Ok(!self.operator_tokens.is_empty())
    }
    async fn delete_operator_token(&self, name: &str) -> Result<()> {
        durable!(self, SledStore::delete_operator_token(self, name))
    }

    async fn insert_bundle(&self, bundle: &BundleRecord) -> Result<()> {
        durable!(self, SledStore::insert_bundle(self, bundle))
    }
    async fn bundle(&self, id: &str) -> Result<BundleRecord> {
        SledStore::bundle(self, id)
    }
    async fn bundle_version_exists(&self, version: &str) -> Result<bool> {
        Ok(self.bundle_versions.contains_key(version)?)
    }
    async fn bundle_by_version(&self, version: &str) -> Result<Option<BundleRecord>> {
        SledStore::bundle_by_version(self, version)
    }
    async fn list_bundles(&self) -> Result<Vec<BundleRecord>> {
        SledStore::list_bundles(self)
    }
    async fn device_may_download(&self, device_id: &str, bundle_id: &str) -> Result<bool> {
        Ok(self
            .device_bundles
            .contains_key(key2(device_id, bundle_id))?)
    }
    async fn delete_bundle(&self, id: &str) -> Result<BundleRecord> {
        durable!(self, SledStore::delete_bundle(self, id))
    }

    async fn bundle_signatures(&self, bundle_id: &str) -> Result<Option<SignedDocument>> {
        SledStore::bundle_signatures(self, bundle_id)
    }
    async fn add_bundle_signatures(
        &self,
        bundle_id: &str,
        doc: &SignedDocument,
    ) -> Result<SignedDocument> {
        durable!(self, SledStore::add_bundle_signatures(self, bundle_id, doc))
    }
    async fn trust_document(&self) -> Result<Option<SignedDocument>> {
        SledStore::trust_document(self)
    }
    async fn put_trust_document(
        &self,
        doc: &SignedDocument,
        anchor: Option<&TrustSet>,
    ) -> Result<u64> {
        durable!(self, SledStore::put_trust_document(self, doc, anchor))
    }

    async fn create_deployment(
        &self,
        kind: DeploymentKind,
        bundle: &BundleRecord,
        target_ids: &[String],
        rollout: Option<RolloutState>,
        now: Ts,
    ) -> Result<DeploymentRecord> {
        durable!(
            self,
            SledStore::create_deployment(self, kind, bundle, target_ids, rollout, now)
        )
    }
    async fn deployment(&self, id: &str) -> Result<DeploymentRecord> {
        SledStore::deployment(self, id)
    }
    async fn deployment_targets(
        &self,
        id: &str,
        filter: &TargetFilter,
    ) -> Result<Vec<TargetRecord>> {
        SledStore::deployment_targets(self, id, filter)
    }
    async fn list_deployments(
        &self,
        status: Option<DeploymentStatus>,
        limit: usize,
    ) -> Result<Vec<DeploymentRecord>> {
        SledStore::list_deployments(self, status, limit)
    }
    async fn cancel_deployment_step(
        &self,
        id: &str,
        after: Option<&str>,
        chunk: usize,
        reason: &str,
        now: Ts,
    ) -> Result<CancelStep> {
        let step = {
            let _writing = self.gate.read().await;
            SledStore::cancel_deployment_step(self, id, after, chunk, reason, now)?
        };
        // Durable when the whole cancel is done (the caller answers only then).
        if step.next.is_none() {
            self.sync().await?;
        }
        Ok(step)
    }
    async fn update_rollout(
        &self,
        id: &str,
        update: &RolloutUpdate,
        now: Ts,
    ) -> Result<RolloutUpdated> {
        durable!(self, SledStore::update_rollout(self, id, update, now))
    }
    async fn release_step(&self, id: &str, max: usize, now: Ts) -> Result<ReleaseStep> {
        durable!(self, SledStore::release_step(self, id, max, now))
    }
    async fn time_out_step(
        &self,
        id: &str,
        wave: usize,
        after: Option<u64>,
        chunk: usize,
        now: Ts,
    ) -> Result<TimeoutStep> {
        durable!(
            self,
            SledStore::time_out_step(self, id, wave, after, chunk, now)
        )
    }
    async fn record_soak(
        &self,
        id: &str,
        device_id: &str,
        ok: bool,
        now: Ts,
    ) -> Result<Option<DeploymentRecord>> {
        durable!(self, SledStore::record_soak(self, id, device_id, ok, now))
    }
    async fn active_rollouts(&self) -> Result<Vec<DeploymentRecord>> {
        SledStore::active_rollouts(self)
    }
    async fn retire_rollout(&self, id: &str) -> Result<()> {
        durable!(self, SledStore::retire_rollout(self, id))
    }
    async fn record_progress(
        &self,
        deployment_id: &str,
        report: &ProgressReport,
        now: Ts,
    ) -> Result<TargetRecord> {
        // Progress is advisory: not synced (the result that follows is).
        let _writing = self.gate.read().await;
        SledStore::record_progress(self, deployment_id, report, now)
    }
    async fn apply_result(
        &self,
        deployment_id: &str,
        report: &ResultReport,
        now: Ts,
    ) -> Result<ResultOutcome> {
        // A repeat is synced too: the first request may still be flushing, and the
        // device drops its copy on our 2xx.
        durable!(
            self,
            SledStore::apply_result(self, deployment_id, report, now)
        )
    }
    async fn is_target(&self, deployment_id: &str, device_id: &str) -> Result<bool> {
        Ok(self.targets.contains_key(key2(deployment_id, device_id))?)
    }
    async fn history(&self, device_id: &str, limit: usize) -> Result<Vec<HistoryRecord>> {
        newest_first(&self.history, device_id, limit)
    }
    async fn device_ran_version(&self, device_id: &str, version: &str) -> Result<bool> {
        Ok(self.device_success.contains_key(key2(device_id, version))?)
    }

    async fn fleet_counts(&self, now: Ts) -> Result<FleetCounts> {
        SledStore::fleet_counts(self, now)
    }

    async fn export(&self, mut sink: Box<dyn RecordSink>) -> Result<()> {
        // Writes wait while the records are read; reads go on.
        let exclusive = self.gate.clone().write_owned().await;
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let _exclusive = exclusive;
            store.export_blocking(sink.as_mut())
        })
        .await
        .map_err(StoreError::backend)?
    }
    async fn import(&self, source: RecordSource) -> Result<RecordCounts> {
        let exclusive = self.gate.clone().write_owned().await;
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let _exclusive = exclusive;
            store.import_blocking(source)
        })
        .await
        .map_err(StoreError::backend)?
    }
}

/// The newest `limit` JSON records under `owner ‖` (keys sort oldest first).
fn newest_first<T: DeserializeOwned>(
    tree: &sled::Tree,
    owner: &str,
    limit: usize,
) -> Result<Vec<T>> {
    tree.scan_prefix(prefix(owner))
        .values()
        .rev()
        .take(limit)
        .map(|v| dec(&v?))
        .collect()
}

// ------------------------------------------------------------------ key and value codec

/// `a ‖ b`.
fn key2(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

/// `a ‖` — the prefix of every `key2(a, _)`.
fn prefix(a: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k
}

/// The end (exclusive) of the `prefix(a)` range.
fn prefix_end(a: &str) -> Vec<u8> {
    let mut k = prefix(a);
    if let Some(last) = k.last_mut() {
        *last = 1;
    }
    k
}

/// The part of a `key2` before the separator.
fn first(key: &[u8]) -> String {
    let at = key.iter().position(|b| *b == 0).unwrap_or(key.len());
    String::from_utf8_lossy(&key[..at]).into_owned()
}

/// The part of a `key2` after the separator.
fn second(key: &[u8]) -> String {
    let at = key
        .iter()
        .position(|b| *b == 0)
        .map_or(key.len(), |i| i + 1);
    String::from_utf8_lossy(&key[at..]).into_owned()
}

fn dec<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    Ok(serde_json::from_slice(bytes)?)
}

fn get<T: DeserializeOwned>(tree: &sled::Tree, key: impl AsRef<[u8]>) -> Result<Option<T>> {
    tree.get(key)?.map(|v| dec(&v)).transpose()
}

// ------------------------------------------------------------- transaction helpers

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn tx_get<T: DeserializeOwned>(
    tree: &TransactionalTree,
    key: impl AsRef<[u8]>,
) -> TxResult<Option<T>> {
    match tree.get(key.as_ref())? {
        Some(v) => match serde_json::from_slice(&v) {
            Ok(t) => Ok(Some(t)),
            Err(e) => abort(e.into()),
        },
        None => Ok(None),
    }
}

fn tx_put<T: Serialize>(
    tree: &TransactionalTree,
    key: impl AsRef<[u8]>,
    value: &T,
) -> TxResult<()> {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            tree.insert(key.as_ref(), bytes)?;
            Ok(())
        }
        Err(e) => abort(e.into()),
    }
}

fn tx_err(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::backend(e),
    }
}
