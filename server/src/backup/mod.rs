//! Backups: one streamed, versioned format for every backend (SPEC §2 "Backups"), also
//! the sled → PostgreSQL migration path.
//!
//! # Format (version 1)
//!
//! A backup is a plain POSIX tar stream (any `tar tf` lists it), entries in this order:
//!
//! 1. `kernex-backup/header.json` — [`Header`]: `format` (`"kernex-backup"`),
//!    `format_version` (1), the `server_version` that wrote it, `created_at`, the record
//!    counts by kind and the bundle files that follow.
//! 2. `kernex-backup/records.ndjson` — one [`BackupRecord`] per line,
//!    `{"kind": "...", "record": {...}}`, in export order (see [`crate::store::export`]).
//!    These are the store's domain records, not engine trees, so any backend can
//!    import them, and a field added to a record later flows through unchanged.
//! 3. `kernex-backup/bundles/<bundle_id>.tar.gz` — each bundle archive byte for byte.
//!
//! A reader refuses a header with another `format` or a newer `format_version`, and
//! verifies every bundle file's size and SHA-256 against its record.
//!
//! # Memory and consistency
//!
//! Nothing is held whole in memory: records are written to a spool file as the store
//! emits them and bundle files are hard-linked (copied across file systems) into the
//! spool directory; the tar stream is then written from the spool in 64 KiB pieces.
//! The spool exists because tar needs each entry's size up front, and it keeps the
//! write pause short: on a running server, [`crate::store::Store::export`] holds writes
//! out only while records are spooled and bundle files linked (heartbeats queue in
//! memory meanwhile); streaming the tar to the client happens after writes resume, from
//! the spool, which no later write touches. The spool lives in `<data-dir>/bundles/tmp`,
//! which a start-up empties, so a crash mid-backup leaves nothing behind.

mod check; // `kernex-server check`
mod database; // backup and restore of a PostgreSQL store
mod read; // restore
mod write; // spool and tar stream

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use check::{CheckReport, check_data_dir, check_database};
pub use database::{backup_database, restore_database};
pub use read::Restored;
pub use read::restore_data_dir;
pub use write::{SharedSpool, Spool, backup_data_dir, write_tar};

/// The `format` a header must carry.
pub const FORMAT: &str = "kernex-backup";
/// The format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

const HEADER_PATH: &str = "kernex-backup/header.json";
const RECORDS_PATH: &str = "kernex-backup/records.ndjson";
const BUNDLES_DIR: &str = "kernex-backup/bundles/";

/// `header.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub format_version: u32,
    pub server_version: String,
    pub created_at: DateTime<Utc>,
    /// Records by kind, e.g. `{"device": 3, "heartbeat": 120}`.
    pub records: std::collections::BTreeMap<String, u64>,
    /// Ids of the bundle files that follow the records.
    pub bundle_files: Vec<String>,
    /// Bundles whose record exists but whose file was missing when the backup was made.
    #[serde(default)]
    pub missing_bundle_files: Vec<String>,
}

/// Why a backup, restore or check failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Start(#[from] crate::StartError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The backup file is not one this build can read.
    #[error("not a usable backup: {0}")]
    Format(String),
    /// The target data dir holds something already.
    #[error("{0}")]
    NotEmpty(String),
}

/// The command an operator runs to restore (printed by `check` and at a failed start).
pub fn restore_hint(data_dir: &std::path::Path) -> String {
    format!(
        "restore your newest backup into a new, empty data dir and start the server on it:\n  \
         kernex-server restore --from BACKUP_FILE --data-dir {0}.restored\n  \
         kernex-server --data-dir {0}.restored\n\
         (a backup is made by GET /api/v1/backup or `kernex-server backup --to FILE`)",
        data_dir.display()
    )
}

/// Is this a bundle id we may use as a file name (UUIDv7 simple form, or any short
/// run of `[0-9a-z]`)?
fn safe_bundle_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}
