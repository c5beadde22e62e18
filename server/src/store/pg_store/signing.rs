//! PostgreSQL: bundle signatures and the trust document (SPEC §7). The rules that decide
//! what may be stored are in [`crate::service::signing`]; each write reads, decides and
//! writes in one transaction with the row it depends on locked.

use sqlx::types::Json;

use super::devices::storable;
use super::*;
use crate::service::signing::{merge_signatures, next_trust};

impl PgStore {
    pub(super) async fn bundle_signatures(
        &self,
        bundle_id: &str,
    ) -> Result<Option<SignedDocument>> {
        if !storable(bundle_id) {
            return Ok(None);
        }
        let found: Option<Json<SignedDocument>> =
            sqlx::query_scalar("SELECT doc FROM bundle_signatures WHERE bundle_id = $1")
                .bind(bundle_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.map(|j| j.0))
    }

    /// Merge `doc` into the bundle's stored signatures. The bundle's row is locked, so
    /// two signers at once both keep theirs (and a deletion waits).
    pub(super) async fn add_bundle_signatures(
        &self,
        bundle_id: &str,
        doc: &SignedDocument,
    ) -> Result<SignedDocument> {
        if !storable(bundle_id) {
            return Err(StoreError::NotFound(format!("no bundle {bundle_id:?}")));
        }
        let mut tx = self.pool.begin().await?;
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM bundles WHERE bundle_id = $1 FOR NO KEY UPDATE")
                .bind(bundle_id)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound(format!("no bundle {bundle_id:?}")));
        }
        let stored: Option<Json<SignedDocument>> =
            sqlx::query_scalar("SELECT doc FROM bundle_signatures WHERE bundle_id = $1")
                .bind(bundle_id)
                .fetch_optional(&mut *tx)
                .await?;
        let merged = merge_signatures(stored.map(|j| j.0), doc)?;
        sqlx::query(
            "INSERT INTO bundle_signatures (bundle_id, doc) VALUES ($1, $2) \
             ON CONFLICT (bundle_id) DO UPDATE SET doc = EXCLUDED.doc",
        )
        .bind(bundle_id)
        .bind(Json(&merged))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(merged)
    }

    pub(super) async fn trust_document(&self) -> Result<Option<SignedDocument>> {
        let found: Option<Json<SignedDocument>> =
            sqlx::query_scalar("SELECT doc FROM trust WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.map(|j| j.0))
    }

    /// Store `doc` when [`next_trust`] allows it over the stored one. The stored row is
    /// locked; two first documents at once: the one that loses the insert is judged
    /// again against the winner.
    pub(super) async fn put_trust_document(
        &self,
        doc: &SignedDocument,
        anchor: Option<&TrustSet>,
    ) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        for _ in 0..2 {
            let stored: Option<Json<SignedDocument>> =
                sqlx::query_scalar("SELECT doc FROM trust WHERE id = 1 FOR UPDATE")
                    .fetch_optional(&mut *tx)
                    .await?;
            let version = next_trust(stored.as_ref().map(|j| &j.0), doc, anchor)?;
            let stored_version = i64::try_from(version)
                .map_err(|_| StoreError::Invalid(format!("trust version {version}")))?;
            let written = match stored {
                Some(_) => {
                    sqlx::query("UPDATE trust SET version = $1, doc = $2 WHERE id = 1")
                        .bind(stored_version)
                        .bind(Json(doc))
                        .execute(&mut *tx)
                        .await?
                }
                None => {
                    sqlx::query(
                        "INSERT INTO trust (id, version, doc) VALUES (1, $1, $2) \
                         ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(stored_version)
                    .bind(Json(doc))
                    .execute(&mut *tx)
                    .await?
                }
            };
            if written.rows_affected() == 1 {
                tx.commit().await?;
                return Ok(version);
            }
        }
        Err(StoreError::Conflict(
            "another trust document was stored at the same time; try again".into(),
        ))
    }
}
