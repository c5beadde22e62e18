//! The PostgreSQL backend (SPEC §8): the same [`Store`] contract as sled, on a database
//! several stateless server replicas share.
//!
//! Tables are in `server/migrations/` (embedded, run at start and by `kernex-server
//! migrate`). Each record keeps its whole form in a `doc` jsonb column; the columns
//! beside it are what queries filter, join and order by.
//!
//! Conventions every file here keeps:
//! - **A returned write is committed** (PostgreSQL's commit is durable with the default
//!   `synchronous_commit = on`), so [`Store::sync`] has nothing to wait for.
//! - **Multi-row changes run in one transaction**, and a transaction that changes a
//!   deployment locks its `deployments` row first (`SELECT … FOR UPDATE`), then the
//!   target rows in device-id order: one lock order, so two replicas never deadlock.
//! - **The rules stay in `service/`**: a transaction reads the rows, calls the same pure
//!   functions the sled backend calls, and writes what they return.
//! - **Heartbeats go in batches**: one statement over `UNNEST` arrays per batch.
//! - Plain SQL only (no extensions, triggers or stored procedures), so the schema stays
//!   portable to PostgreSQL-compatible distributed engines.

mod backup; // export and import as domain records
mod beats; // live records and the history ring
mod bundles; // bundle records
mod config; // versioned device config
mod counts; // fleet counts for /metrics
mod deployments; // deployments, targets, cancels
mod devices; // registration, device records, listing, tags
mod removal; // admission changes and deletions that cancel targets
mod results; // progress, results, history
mod rollouts; // rollout waves, releases, timeouts, soak verdicts
mod signing; // bundle signatures and the trust document
mod token_cache; // live tokens cached while every change is heard
pub use token_cache::CHANNEL as TOKEN_CHANNEL;
mod tokens; // operator and device tokens
mod work; // open targets, delivery, downloads

use std::time::Duration;

use async_trait::async_trait;
use kernex_common::api::{
    Admission, ConfigUpdate, DeploymentKind, DeploymentStatus, DeviceConfig, HeartbeatRecord,
    HistoryRecord, ProgressReport, ResultReport, TargetStatus,
};
use kernex_common::update_signing::{SignedDocument, TrustSet};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use super::*;

/// The schema, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How a [`PgStore`] is opened.
#[derive(Debug, Clone, Copy)]
pub struct PgOptions {
    /// Heartbeats kept per device (the history ring's size).
    pub heartbeat_retention: u64,
    /// Connections this process keeps open at most.
    pub max_connections: u32,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            heartbeat_retention: 1000,
            max_connections: 16,
        }
    }
}

/// The PostgreSQL store: a connection pool. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    options: PgOptions,
    /// Shared by the clones: one cache per process.
    tokens: std::sync::Arc<token_cache::TokenCache>,
}

impl PgStore {
    /// Connect, and bring the schema up to date (migrations take an advisory lock, so
    /// replicas starting together apply each one once).
    pub async fn connect(url: &str, options: PgOptions) -> Result<PgStore> {
        let store = PgStore {
            tokens: Default::default(),
            pool: pool_options(options)
                .connect_with(connect_options(url)?)
                .await?,
            options,
        };
        MIGRATOR.run(&store.pool).await.map_err(migrate_error)?;
        Ok(store)
    }

    /// A pool that connects on first use, in the runtime that uses it (the schema must
    /// be up to date already: [`PgStore::connect`] or `kernex-server migrate`).
    pub fn connect_lazy(url: &str, options: PgOptions) -> Result<PgStore> {
        Ok(PgStore {
            tokens: Default::default(),
            pool: pool_options(options).connect_lazy_with(connect_options(url)?),
            options,
        })
    }

    /// Apply the embedded migrations and say how many there are.
    pub async fn migrate(url: &str) -> Result<usize> {
        let store = PgStore::connect(url, PgOptions::default()).await?;
        store.pool.close().await;
        Ok(MIGRATOR.iter().count())
    }

    /// The pool, for what sits beside the store on the same database (the event feed,
    /// the timer lease).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Empty every table: a restore that failed after its records were committed undoes
    /// itself (import only ever fills an empty database).
    pub async fn clear_after_failed_restore(&self) -> Result<()> {
        sqlx::query(
            "TRUNCATE devices, device_tags, device_live, heartbeats, configs, tokens, \
             registrations, bundles, bundle_signatures, trust, deployments, targets, reports, \
             history, device_success, counters",
        )
        .execute(&self.pool)
        .await?;
        tokens::tokens_changed(&mut *self.pool.acquire().await?).await?;
        self.tokens.clear();
        Ok(())
    }

    /// Close every connection (waits for the ones in use).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn pool_options(options: PgOptions) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(options.max_connections.max(2))
        .acquire_timeout(Duration::from_secs(10))
}

fn connect_options(url: &str) -> Result<PgConnectOptions> {
    let options: PgConnectOptions = url
        .parse()
        .map_err(|e| StoreError::Invalid(format!("database URL: {e}")))?;
    // Statement logging at debug: a busy server runs thousands a second.
    Ok(options.log_statements(tracing::log::LevelFilter::Trace))
}

fn migrate_error(e: sqlx::migrate::MigrateError) -> StoreError {
    StoreError::Backend(format!("migrating the database schema: {e}"))
}

/// Create an empty database beside the one `url` names and return its URL (tests and
/// `just serve-pg` start from a fresh one).
pub async fn scratch_database(url: &str, name: &str) -> Result<String> {
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(StoreError::Invalid(format!("database name {name:?}")));
    }
    let options = connect_options(url)?;
    let mut conn = options.connect().await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(with_database(url, name))
}

/// Drop a database [`scratch_database`] made, ending its connections first.
pub async fn drop_scratch_database(url: &str, name: &str) -> Result<()> {
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(StoreError::Invalid(format!("database name {name:?}")));
    }
    let mut conn = connect_options(url)?.connect().await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e
            && db.is_unique_violation()
        {
            return StoreError::Conflict(format!("already exists ({})", db.message()));
        }
        // PostgreSQL text and jsonb cannot hold U+0000 (sled can): such input is refused
        // as a client error, and its transaction changes nothing.
        if let sqlx::Error::Database(db) = &e
            && matches!(db.code().as_deref(), Some("22021" | "22P05"))
        {
            return StoreError::Invalid(
                "text with a NUL character (U+0000) cannot be stored".into(),
            );
        }
        StoreError::backend(e)
    }
}

/// An enum's wire name (`"accepted"`, `"in_progress"`…), as its serde form gives it:
/// what the text columns beside `doc` hold.
pub(super) fn wire_name<T: serde::Serialize>(value: &T) -> Result<String> {
    match serde_json::to_value(value)? {
        serde_json::Value::String(s) => Ok(s),
        other => Err(StoreError::codec(format!("not a unit enum: {other}"))),
    }
}

#[async_trait]
impl Store for PgStore {
    fn beat_queue(&self) -> usize {
        // PostgreSQL stores some 10,000 beats a second on the 2-core machine the README
        // measures: a queue of 64k (sled's) would hold six seconds of them.
        4 * 1024
    }

    async fn sync(&self) -> Result<()> {
        // Every write committed before it returned.
        Ok(())
    }

    async fn register(&self, reg: &NewRegistration) -> Result<RegisterOutcome> {
        PgStore::register(self, reg).await
    }

    async fn device(&self, device_id: &str) -> Result<Device> {
        PgStore::device(self, device_id).await
    }

    async fn admissions(
        &self,
        device_ids: &[String],
    ) -> Result<std::collections::HashMap<String, Admission>> {
        PgStore::admissions(self, device_ids).await
    }

    async fn device_exists(&self, device_id: &str) -> Result<bool> {
        PgStore::device_exists(self, device_id).await
    }

    async fn list_devices(&self, filter: &DeviceFilter, now: Ts) -> Result<Vec<Device>> {
        PgStore::list_devices(self, filter, now).await
    }

    async fn accepted_devices_with_tags(&self, tags: &[String]) -> Result<Vec<String>> {
        PgStore::accepted_devices_with_tags(self, tags).await
    }

    async fn set_tags(&self, device_id: &str, tags: &[String]) -> Result<Device> {
        PgStore::set_tags(self, device_id, tags).await
    }

    async fn write_beats(&self, beats: Vec<Beat>) -> Result<()> {
        PgStore::write_beats(self, beats).await
    }

    async fn heartbeats(&self, device_id: &str, limit: usize) -> Result<Vec<HeartbeatRecord>> {
        PgStore::heartbeats(self, device_id, limit).await
    }

    async fn config(&self, device_id: &str) -> Result<DeviceConfig> {
        PgStore::config(self, device_id).await
    }

    async fn update_config(
        &self,
        device_id: &str,
        update: &ConfigUpdate,
        now: Ts,
    ) -> Result<DeviceConfig> {
        PgStore::update_config(self, device_id, update, now).await
    }

    fn token_notices(&self, live: bool) {
        PgStore::token_notices(self, live);
    }

    fn token_changed(&self) {
        PgStore::token_changed(self);
    }

    async fn principal(&self, token_hash: &str) -> Result<Option<Principal>> {
        PgStore::principal(self, token_hash).await
    }

    async fn create_operator_token(&self, name: &str, hash: &str, now: Ts) -> Result<()> {
        PgStore::create_operator_token(self, name, hash, now).await
    }

    async fn put_operator_token(&self, name: &str, hash: &str, now: Ts) -> Result<()> {
        PgStore::put_operator_token(self, name, hash, now).await
    }

    async fn list_operator_tokens(&self) -> Result<Vec<OperatorTokenRecord>> {
        PgStore::list_operator_tokens(self).await
    }

    async fn operator_token_exists(&self, name: &str) -> Result<bool> {
        PgStore::operator_token_exists(self, name).await
    }

    async fn has_operator_tokens(&self) -> Result<bool> {
        PgStore::has_operator_tokens(self).await
    }

    async fn delete_operator_token(&self, name: &str) -> Result<()> {
        PgStore::delete_operator_token(self, name).await
    }

    async fn insert_bundle(&self, bundle: &BundleRecord) -> Result<()> {
        PgStore::insert_bundle(self, bundle).await
    }

    async fn bundle(&self, id: &str) -> Result<BundleRecord> {
        PgStore::bundle(self, id).await
    }

    async fn bundle_version_exists(&self, version: &str) -> Result<bool> {
        PgStore::bundle_version_exists(self, version).await
    }

    async fn bundle_by_version(&self, version: &str) -> Result<Option<BundleRecord>> {
        PgStore::bundle_by_version(self, version).await
    }

    async fn list_bundles(&self) -> Result<Vec<BundleRecord>> {
        PgStore::list_bundles(self).await
    }

    async fn bundle_signatures(&self, bundle_id: &str) -> Result<Option<SignedDocument>> {
        PgStore::bundle_signatures(self, bundle_id).await
    }

    async fn add_bundle_signatures(
        &self,
        bundle_id: &str,
        doc: &SignedDocument,
    ) -> Result<SignedDocument> {
        PgStore::add_bundle_signatures(self, bundle_id, doc).await
    }

    async fn trust_document(&self) -> Result<Option<SignedDocument>> {
        PgStore::trust_document(self).await
    }

    async fn put_trust_document(
        &self,
        doc: &SignedDocument,
        anchor: Option<&TrustSet>,
    ) -> Result<u64> {
        PgStore::put_trust_document(self, doc, anchor).await
    }

    async fn fleet_counts(&self, now: Ts) -> Result<FleetCounts> {
        PgStore::fleet_counts(self, now).await
    }

    async fn work_snapshot(&self) -> Result<WorkSnapshot> {
        PgStore::work_snapshot(self).await
    }

    async fn open_targets(&self, device_id: &str) -> Result<Vec<(DeploymentRecord, TargetStatus)>> {
        PgStore::open_targets(self, device_id).await
    }

    async fn deliver(
        &self,
        deployment_id: &str,
        device_id: &str,
        now: Ts,
    ) -> Result<Option<DeploymentRecord>> {
        PgStore::deliver(self, deployment_id, device_id, now).await
    }

    async fn device_may_download(&self, device_id: &str, bundle_id: &str) -> Result<bool> {
        PgStore::device_may_download(self, device_id, bundle_id).await
    }

    async fn set_admission(
        &self,
        device_id: &str,
        admission: Admission,
        now: Ts,
    ) -> Result<(Device, Vec<DeploymentRecord>)> {
        PgStore::set_admission(self, device_id, admission, now).await
    }

    async fn delete_device(&self, device_id: &str, now: Ts) -> Result<Vec<DeploymentRecord>> {
        PgStore::delete_device(self, device_id, now).await
    }

    async fn delete_bundle(&self, id: &str) -> Result<BundleRecord> {
        PgStore::delete_bundle(self, id).await
    }

    async fn create_deployment(
        &self,
        kind: DeploymentKind,
        bundle: &BundleRecord,
        target_ids: &[String],
        rollout: Option<RolloutState>,
        now: Ts,
    ) -> Result<DeploymentRecord> {
        PgStore::create_deployment(self, kind, bundle, target_ids, rollout, now).await
    }

    async fn deployment(&self, id: &str) -> Result<DeploymentRecord> {
        PgStore::deployment(self, id).await
    }

    async fn deployment_targets(
        &self,
        id: &str,
        filter: &TargetFilter,
    ) -> Result<Vec<TargetRecord>> {
        PgStore::deployment_targets(self, id, filter).await
    }

    async fn list_deployments(
        &self,
        status: Option<DeploymentStatus>,
        limit: usize,
    ) -> Result<Vec<DeploymentRecord>> {
        PgStore::list_deployments(self, status, limit).await
    }

    async fn cancel_deployment_step(
        &self,
        id: &str,
        after: Option<&str>,
        chunk: usize,
        reason: &str,
        now: Ts,
    ) -> Result<CancelStep> {
        PgStore::cancel_deployment_step(self, id, after, chunk, reason, now).await
    }

    async fn update_rollout(
        &self,
        id: &str,
        update: &RolloutUpdate,
        now: Ts,
    ) -> Result<RolloutUpdated> {
        PgStore::update_rollout(self, id, update, now).await
    }

    async fn release_step(&self, id: &str, max: usize, now: Ts) -> Result<ReleaseStep> {
        PgStore::release_step(self, id, max, now).await
    }

    async fn time_out_step(
        &self,
        id: &str,
        wave: usize,
        after: Option<u64>,
        chunk: usize,
        now: Ts,
    ) -> Result<TimeoutStep> {
        PgStore::time_out_step(self, id, wave, after, chunk, now).await
    }

    async fn record_soak(
        &self,
        id: &str,
        device_id: &str,
        ok: bool,
        now: Ts,
    ) -> Result<Option<DeploymentRecord>> {
        PgStore::record_soak(self, id, device_id, ok, now).await
    }

    async fn active_rollouts(&self) -> Result<Vec<DeploymentRecord>> {
        PgStore::active_rollouts(self).await
    }

    async fn retire_rollout(&self, id: &str) -> Result<()> {
        PgStore::retire_rollout(self, id).await
    }

    async fn record_progress(
        &self,
        deployment_id: &str,
        report: &ProgressReport,
        now: Ts,
    ) -> Result<TargetRecord> {
        PgStore::record_progress(self, deployment_id, report, now).await
    }

    async fn apply_result(
        &self,
        deployment_id: &str,
        report: &ResultReport,
        now: Ts,
    ) -> Result<ResultOutcome> {
        PgStore::apply_result(self, deployment_id, report, now).await
    }

    async fn is_target(&self, deployment_id: &str, device_id: &str) -> Result<bool> {
        PgStore::is_target(self, deployment_id, device_id).await
    }

    async fn history(&self, device_id: &str, limit: usize) -> Result<Vec<HistoryRecord>> {
        PgStore::history(self, device_id, limit).await
    }

    async fn device_ran_version(&self, device_id: &str, version: &str) -> Result<bool> {
        PgStore::device_ran_version(self, device_id, version).await
    }

    async fn export(&self, sink: Box<dyn RecordSink>) -> Result<()> {
        PgStore::export(self, sink).await
    }

    async fn import(&self, source: RecordSource) -> Result<RecordCounts> {
        PgStore::import(self, source).await
    }
}
