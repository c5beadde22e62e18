//! PostgreSQL: bundle records (the archives themselves are in the blob store, managed by
//! the bundle routes). Deletion is in `removal.rs`.

use sqlx::types::Json;

use super::devices::storable;
use super::*;

impl PgStore {
    /// Record a new bundle; `Conflict` when its version exists.
    pub(super) async fn insert_bundle(&self, b: &BundleRecord) -> Result<()> {
        let inserted = sqlx::query(
            "INSERT INTO bundles (bundle_id, version, doc) VALUES ($1, $2, $3) \
             ON CONFLICT (version) DO NOTHING",
        )
        .bind(&b.id)
        .bind(&b.version)
        .bind(Json(b))
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "bundle version {} already exists",
                b.version
            )));
        }
        Ok(())
    }

    pub(super) async fn bundle(&self, id: &str) -> Result<BundleRecord> {
        if !storable(id) {
            return Err(StoreError::NotFound(format!("no bundle {id:?}")));
        }
        let found: Option<Json<BundleRecord>> =
            sqlx::query_scalar("SELECT doc FROM bundles WHERE bundle_id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        found
            .map(|j| j.0)
            .ok_or_else(|| StoreError::NotFound(format!("no bundle {id:?}")))
    }

    pub(super) async fn bundle_version_exists(&self, version: &str) -> Result<bool> {
        if !storable(version) {
            return Ok(false);
        }
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM bundles WHERE version = $1)")
                .bind(version)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub(super) async fn bundle_by_version(&self, version: &str) -> Result<Option<BundleRecord>> {
        if !storable(version) {
            return Ok(None);
        }
        let found: Option<Json<BundleRecord>> =
            sqlx::query_scalar("SELECT doc FROM bundles WHERE version = $1")
                .bind(version)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.map(|j| j.0))
    }

    /// Newest first (ids are time-ordered).
    pub(super) async fn list_bundles(&self) -> Result<Vec<BundleRecord>> {
        let rows: Vec<Json<BundleRecord>> =
            sqlx::query_scalar("SELECT doc FROM bundles ORDER BY bundle_id DESC")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|j| j.0).collect())
    }
}
