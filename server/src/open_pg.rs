//! Start-up on PostgreSQL (SPEC §8): migrate, clean the blob dir, store `--admin-token`,
//! read what the work index is built from.
//!
//! [`crate::open`] is called from async code and returns synchronously, so the start-up
//! work runs on a runtime of its own, on a thread of its own, with a pool of its own
//! that closes with it; the serving pool connects lazily, in the caller's runtime.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::auth::hash_token;
use crate::blobs::Blobs;
use crate::store::{PgOptions, PgStore, Store, StoreError, WorkSnapshot};
use crate::{ServerSettings, StartError, create_private_dir};

/// A file in a shared blob dir younger than this may belong to an upload another replica
/// is still finishing: start-up leaves it alone.
const IN_FLIGHT: Duration = Duration::from_secs(3600);

pub(crate) fn open(
    url: &str,
    settings: &ServerSettings,
    blobs: &Blobs,
) -> Result<(Arc<PgStore>, WorkSnapshot), StartError> {
    // The data dir holds only the bundles (or their staging), and only without a blob dir.
    create_private_dir(blobs.local_dir())?;
    let options = PgOptions {
        heartbeat_retention: settings.heartbeat_retention.max(1),
        max_connections: settings.database_connections,
    };
    let work = std::thread::scope(|scope| {
        scope
            .spawn(|| prepare(url, settings, blobs))
            .join()
            .unwrap_or_else(|_| Err(StartError::Settings("start-up thread panicked".into())))
    })?;
    let store = PgStore::connect_lazy(url, options).map_err(|e| database(url, e))?;
    Ok((Arc::new(store), work))
}

fn prepare(
    url: &str,
    settings: &ServerSettings,
    blobs: &Blobs,
) -> Result<WorkSnapshot, StartError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let options = PgOptions {
            heartbeat_retention: settings.heartbeat_retention.max(1),
            max_connections: 2,
        };
        let store = PgStore::connect(url, options)
            .await
            .map_err(|e| database(url, e))?;
        let prepared = async {
            clean_blobs(&store, blobs).await?;
            bootstrap_admin(&store, settings).await?;
            Ok(store.work_snapshot().await?)
        }
        .await;
        store.close().await;
        prepared
    })
}

fn database(url: &str, e: StoreError) -> StartError {
    StartError::Settings(format!(
        "database {}: {e}",
        crate::settings::redact_url(url)
    ))
}

/// Remove abandoned upload files and archives with no record, older than an hour (the
/// dir or bucket may be shared with replicas that are uploading right now).
async fn clean_blobs(store: &PgStore, blobs: &Blobs) -> Result<(), StartError> {
    let found = crate::bundle_leftovers(blobs.local_dir(), IN_FLIGHT)?;
    found.remove_tmp()?;
    if !blobs.is_bucket() {
        for (id, path) in &found.archives {
            if matches!(store.bundle(id).await, Err(StoreError::NotFound(_))) {
                crate::remove_orphan_archive(path)?;
            }
        }
        return Ok(());
    }
    let candidates = blobs
        .bucket_archives_older_than(IN_FLIGHT)
        .await
        .map_err(|e| {
            StartError::Settings(format!("listing the bucket {}: {e}", blobs.location()))
        })?;
    for id in candidates {
        if matches!(store.bundle(&id).await, Err(StoreError::NotFound(_))) {
            tracing::warn!(bundle.id = %id, bucket = %blobs.location(), "removing bundle archive with no record");
            blobs.remove(&id).await?;
        }
    }
    Ok(())
}

/// The `--admin-token` stored as the token named "admin". Without one, no file is
/// written (SPEC §8: replicas share no disk): a database with no operator token says how
/// to make one.
async fn bootstrap_admin(store: &PgStore, settings: &ServerSettings) -> Result<(), StartError> {
    if let Some(token) = settings.admin_token.as_deref().filter(|t| !t.is_empty()) {
        store
            .put_operator_token("admin", &hash_token(token), Utc::now())
            .await?;
        return Ok(());
    }
    if !store.has_operator_tokens().await? {
        tracing::warn!(
            "the database has no operator token yet: make one with `kernex-server token create \
             --database-url URL --name admin` (works while replicas run), or start with \
             --admin-token / KERNEX_ADMIN_TOKEN"
        );
    }
    Ok(())
}
