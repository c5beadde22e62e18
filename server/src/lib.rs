//! Kernex server: the fleet control plane.
//!
//! An axum HTTP API (`/api/v1`, SPEC §1) over an embedded sled store. `main.rs` is a thin
//! CLI; everything else is here so tests can run a server in-process:
//!
//! ```no_run
//! # async fn run() -> Result<(), kernex_server::StartError> {
//! let settings = kernex_server::ServerSettings::for_data_dir("/tmp/kernex-data");
//! let state = kernex_server::open(&settings)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! kernex_server::serve(state, listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod auth; // bearer tokens, the Caller extractor
pub mod backup; // backup format, restore, check
pub mod blobs; // where bundle archives live: a dir or an S3 bucket
pub mod cluster; // replicas on one database: the feed, the timer lease
pub mod error; // ApiError and rejection mapping
pub mod events; // live event broadcast
pub mod listen; // accept loop: connection cap, header and stall timeouts
pub mod metrics; // Prometheus registry
mod open_pg; // start-up on PostgreSQL (SPEC §8)
pub mod openapi; // the OpenAPI document, generated from the handlers (utoipa)
pub mod router; // every route
pub mod routes; // handlers
pub mod service; // rules above the store; the heartbeat path
pub mod settings; // CLI flags and env
pub mod state; // AppState
pub mod store; // storage behind one interface

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;

pub use router::router;
pub use settings::ServerSettings;
pub use state::AppState;

use crate::auth::{hash_token, mint_token};
use crate::state::Limits;
use crate::store::{SledOptions, SledStore, StoreError};

/// Name of the bootstrap operator token file in the data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the data dir {0} is in use by another process (a running kernex-server?); stop it or use the HTTP API"
    )]
    Locked(PathBuf),
    /// The store would not open or read back: nothing is served (SPEC §2).
    #[error(
        "the store in {0} cannot be read ({1}); refusing to serve a damaged store. \
         See what is wrong: `kernex-server check --data-dir {0}`. To recover, restore your \
         newest backup into a new data dir: `kernex-server restore --from BACKUP_FILE \
         --data-dir {0}.restored`, then start with `--data-dir {0}.restored`"
    )]
    Unreadable(PathBuf, String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Settings(String),
}

/// Open the store in the data dir, clean up what a crash may have left, and make sure an
/// operator token exists.
///
/// Needs a tokio runtime: it starts the heartbeat writer.
pub fn open(settings: &ServerSettings) -> Result<AppState, StartError> {
    let enrollment_token = settings.enrollment_token.clone().filter(|t| !t.is_empty());
    if settings.require_enrollment && enrollment_token.is_none() {
        return Err(StartError::Settings(
            "--require-enrollment needs an enrollment token (KERNEX_ENROLLMENT_TOKEN)".into(),
        ));
    }
    // Settings first: a refused flag must not leave the store opened (and locked).
    let signatures = signature_policy(settings)?;
    let blobs = settings.blobs().map_err(StartError::Settings)?;
    let bundle_dir = settings.bundle_dir();
    let (store, work, pool) = match settings.database_url.as_deref() {
        Some(url) => {
            let (store, work) = open_pg::open(url, settings, &blobs)?;
            let pool = store.pool().clone();
            (store as Arc<dyn store::Store>, work, Some(pool))
        }
        None => {
            let (store, work) = open_sled(settings, &bundle_dir)?;
            (store, work, None)
        }
    };
    let limits = Limits {
        enrollment_token,
        max_bundle_size: settings.max_bundle_size,
        require_enrollment: settings.require_enrollment,
        max_pending: settings.max_pending,
        metrics_token: settings.metrics_token.clone().filter(|t| !t.is_empty()),
        connections: settings.connections,
        signatures,
    };
    let Some(pool) = pool else {
        return Ok(AppState::new(store, work, limits, blobs));
    };
    // One replica of possibly several: timers wait for the lease.
    let state = AppState::with_cluster(store, work, limits, blobs, cluster::Cluster::new(false));
    cluster::pg::start(&state, pool);
    Ok(state)
}

/// The embedded store in the data dir, cleaned up and bootstrapped, with what the work
/// index is built from.
fn open_sled(
    settings: &ServerSettings,
    bundle_dir: &Path,
) -> Result<(Arc<dyn store::Store>, store::WorkSnapshot), StartError> {
    let options = SledOptions {
        heartbeat_retention: settings.heartbeat_retention.max(1),
    };
    let store = open_store(&settings.data_dir, options)?;
    create_private_dir(bundle_dir)?;
    clean_bundle_dir(&store, bundle_dir)?;
    bootstrap_admin(&store, settings)?;
    let work = store
        .work_snapshot_blocking()
        .map_err(|e| unreadable(&settings.data_dir, e))?;
    Ok((Arc::new(store), work))
}

/// `--trust-key` files read and `--require-signatures` checked against them.
fn signature_policy(
    settings: &ServerSettings,
) -> Result<service::signing::SignaturePolicy, StartError> {
    let mut keys = Vec::new();
    for path in &settings.trust_keys {
        let text = std::fs::read_to_string(path)
            .map_err(|e| StartError::Settings(format!("--trust-key {}: {e}", path.display())))?;
        let key = kernex_common::update_signing::PublicKey::parse(&text)
            .map_err(|e| StartError::Settings(format!("--trust-key {}: {e}", path.display())))?;
        keys.push(key);
    }
    service::signing::SignaturePolicy::new(keys, settings.require_signatures)
        .map_err(StartError::Settings)
}

/// Open the sled store, telling a held lock apart from a store that cannot be read
/// (whose message names `check` and `restore`).
pub fn open_store(data_dir: &Path, options: SledOptions) -> Result<SledStore, StartError> {
    create_private_dir(data_dir)?;
    // sled 0.34 can panic on some damaged logs instead of returning an error: that is
    // a store that cannot be read too, and gets the same message.
    let opened = std::panic::catch_unwind(|| SledStore::open(&data_dir.join("db"), options))
        .unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("sled panicked while opening");
            Err(StoreError::Backend(format!(
                "sled panicked while opening: {why}"
            )))
        });
    opened.map_err(|e| {
        if e.is_locked() {
            StartError::Locked(data_dir.to_path_buf())
        } else {
            unreadable(data_dir, e)
        }
    })
}

fn unreadable(data_dir: &Path, e: StoreError) -> StartError {
    StartError::Unreadable(data_dir.to_path_buf(), e.to_string())
}

/// Create a directory (and missing parents) only its owner may enter (0700, SPEC §1.9).
/// An existing one keeps its mode; a group- or world-readable one is worth a warning.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if let Ok(meta) = std::fs::metadata(dir) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %dir.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "directory is readable by other users; chmod 700 it");
            }
            return Ok(());
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// Remove half-uploaded files and archives whose record never got written (a crash
/// between the two).
fn clean_bundle_dir(store: &SledStore, bundle_dir: &Path) -> Result<(), StartError> {
    let found = bundle_leftovers(bundle_dir, std::time::Duration::ZERO)?;
    found.remove_tmp()?;
    for (id, path) in &found.archives {
        if matches!(store.bundle_blocking(id), Err(StoreError::NotFound(_))) {
            remove_orphan_archive(path)?;
        }
    }
    Ok(())
}

/// What a start may clean up in a bundle dir, each file older than `min_age` (zero on a
/// dir of one's own; more when replicas sharing it may be uploading right now).
pub(crate) struct Leftovers {
    /// Upload files and backup spools in `tmp/`.
    pub tmp: Vec<PathBuf>,
    /// Archives, with the bundle id their name gives (kept when a record has that id).
    pub archives: Vec<(String, PathBuf)>,
}

pub(crate) fn bundle_leftovers(
    bundle_dir: &Path,
    min_age: std::time::Duration,
) -> std::io::Result<Leftovers> {
    let old = |path: &Path| {
        min_age.is_zero()
            || std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > min_age)
    };
    let mut found = Leftovers {
        tmp: Vec::new(),
        archives: Vec::new(),
    };
    let tmp = bundle_dir.join("tmp");
    if tmp.is_dir() {
        for entry in std::fs::read_dir(&tmp)? {
            let path = entry?.path();
            if old(&path) {
                found.tmp.push(path);
            }
        }
    }
    for entry in std::fs::read_dir(bundle_dir)? {
        let path = entry?.path();
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".tar.gz"))
            .map(str::to_owned);
        if let Some(id) = id
            && old(&path)
        {
            found.archives.push((id, path));
        }
    }
    Ok(found)
}

impl Leftovers {
    /// Remove what is in `tmp/` (files and spool directories alike).
    pub fn remove_tmp(&self) -> std::io::Result<()> {
        for path in &self.tmp {
            if path.is_dir() {
                std::fs::remove_dir_all(path)?;
            } else {
                std::fs::remove_file(path)?;
            }
        }
        Ok(())
    }
}

pub(crate) fn remove_orphan_archive(path: &Path) -> std::io::Result<()> {
    tracing::warn!(path = %path.display(), "removing bundle file with no record");
    std::fs::remove_file(path)
}

fn bootstrap_admin(store: &SledStore, settings: &ServerSettings) -> Result<(), StartError> {
    let now = Utc::now();
    if let Some(token) = settings.admin_token.as_deref().filter(|t| !t.is_empty()) {
        store.put_operator_token_blocking("admin", &hash_token(token), now)?;
        return Ok(());
    }
    if store.has_operator_tokens_blocking() {
        return Ok(());
    }
    let token = mint_token("kxo_");
    let path = settings.data_dir.join(ADMIN_TOKEN_FILE);
    write_secret(&path, &format!("{token}\n"))?;
    store.create_operator_token_blocking("admin", &hash_token(&token), now)?;
    tracing::info!(path = %path.display(), "generated the first operator token");
    Ok(())
}

/// Write a file only its owner can read (mode 0600 from creation, never wider).
pub fn write_secret(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// Serve plain HTTP on `listener` until `shutdown` resolves, then drain in-flight
/// requests and flush the store. Connections get the limits of SPEC §1.9 (see
/// [`listen`]).
pub async fn serve(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stopping = state.shutdown.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.cancel();
    };
    let limits = state.limits.connections;
    listen::run(listener, None, router(state.clone()), limits, shutdown).await?;
    close(&state).await
}

/// Serve HTTPS (rustls) with the PEM certificate chain and key given, with the same
/// connection limits as [`serve`] (the TLS handshake counts against the header timeout).
pub async fn serve_tls(
    state: AppState,
    listener: std::net::TcpListener,
    cert: &Path,
    key: &Path,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key).await?;
    // HTTP/1.1 only: hyper's HTTP/2 server has no header timer.
    let mut tls = (*config.get_inner()).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let stopping = state.shutdown.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.cancel();
    };
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let limits = state.limits.connections;
    listen::run(
        listener,
        Some(acceptor),
        router(state.clone()),
        limits,
        shutdown,
    )
    .await?;
    close(&state).await
}

/// After the last request: store the heartbeats still queued and make everything durable.
async fn close(state: &AppState) -> std::io::Result<()> {
    state
        .heartbeats
        .close()
        .await
        .map_err(std::io::Error::other)?;
    state.store.sync().await.map_err(std::io::Error::other)
}
