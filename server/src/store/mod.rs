//! Storage behind one interface. Handlers call [`Store`] methods that speak in domain
//! records; only this module knows about sled trees and key encodings, so a PostgreSQL
//! backend can replace it without touching a handler.
//!
//! Every multi-key change runs in a sled transaction, so concurrent requests (and, with a
//! shared database, concurrent server processes) never interleave half-applied writes.
//!
//! Trees and key layout (`‖` is a 0x00 byte; ids never contain it):
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `devices` | device_id | [`DeviceRecord`] |
//! | `device_keys` | public-key fingerprint | device_id |
//! | `device_tags` | tag ‖ device_id | — |
//! | `heartbeats` | device_id ‖ seq (u64 BE) | heartbeat record |
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

mod bundles; // bundle records
mod config; // versioned device config
mod deployments; // deployments, targets, results, history
mod devices; // registration, heartbeats, listing, admission
mod records; // stored record types
mod tokens; // operator and device tokens

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

pub use deployments::ResultOutcome;
pub use devices::{DeviceFilter, HeartbeatOutcome, NewRegistration, RegisterOutcome};
pub use records::*;

/// What can go wrong in the store. The domain variants carry a message for the client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record could not be decoded: {0}")]
    Codec(#[from] serde_json::Error),
}

impl StoreError {
    /// True when the data dir is held by another process (sled's exclusive lock).
    pub fn is_locked(&self) -> bool {
        match self {
            StoreError::Sled(sled::Error::Io(e)) => {
                e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock")
            }
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;
type TxResult<T> = std::result::Result<T, ConflictableTransactionError<StoreError>>;

/// The embedded store: one sled database with one tree per index.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    devices: sled::Tree,
    device_keys: sled::Tree,
    device_tags: sled::Tree,
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
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Open (or create) the store in `dir`. Fails if another process holds it.
    pub fn open(dir: &Path) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            // Heartbeats are not flushed one by one; this bounds what a crash can lose.
            .flush_every_ms(Some(500))
            .open()?;
        let t = |name: &str| db.open_tree(name);
        Ok(Store {
            devices: t("devices")?,
            device_keys: t("device_keys")?,
            device_tags: t("device_tags")?,
            heartbeats: t("heartbeats")?,
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
            db,
        })
    }

    /// Make everything written so far durable. Called before acknowledging a write.
    pub async fn flush(&self) -> Result<()> {
        // Not `flush_async`: in sled 0.34 concurrent `flush_async` calls park sled's own IO
        // threads, which the flush itself needs, and the server hangs (spacejam/sled#1308,
        // #1241). A blocking flush on tokio's blocking pool leaves those threads free.
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.flush_blocking())
            .await
            .map_err(|e| StoreError::Sled(sled::Error::Io(std::io::Error::other(e))))?
    }

    /// [`Store::flush`] for callers outside an async runtime (the CLI).
    pub fn flush_blocking(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

/// The newest `limit` records under `owner ‖` (keys sort oldest first).
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
        TransactionError::Storage(e) => StoreError::Sled(e),
    }
}

/// A fresh time-ordered id (UUIDv7, simple form: 32 hex chars, sorts by creation time).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}
