//! PostgreSQL: operator and device tokens, stored only as SHA-256 hashes in `tokens`
//! (one row per token; `UNIQUE (kind, name)`: one live token per operator name and per
//! device).
//!
//! No read cache, unlike sled: several replicas share the database, and a token one of
//! them revokes must stop working on all of them at once. A lookup is one primary-key
//! read.

use sqlx::PgConnection;

use super::devices::storable;
use super::*;

const OPERATOR: &str = "operator";
const DEVICE: &str = "device";

impl PgStore {
    pub(super) async fn principal(&self, token_hash: &str) -> Result<Option<Principal>> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT kind, name FROM tokens WHERE hash = $1")
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(kind, name)| match kind.as_str() {
            OPERATOR => Ok(Principal::Operator { name }),
            DEVICE => Ok(Principal::Device { device_id: name }),
            other => Err(StoreError::codec(format!("token kind {other:?}"))),
        })
        .transpose()
    }

    pub(super) async fn create_operator_token(
        &self,
        name: &str,
        hash: &str,
        now: Ts,
    ) -> Result<()> {
        self.set_operator_token(name, hash, now, false).await
    }

    pub(super) async fn put_operator_token(&self, name: &str, hash: &str, now: Ts) -> Result<()> {
        self.set_operator_token(name, hash, now, true).await
    }

    /// Name `hash` as operator `name`'s token; `replace` lets it take the place of an
    /// earlier one (else `Conflict`). One transaction: the name's row is locked, so two
    /// concurrent mints of one name leave exactly one token.
    async fn set_operator_token(
        &self,
        name: &str,
        hash: &str,
        now: Ts,
        replace: bool,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let old: Option<String> = sqlx::query_scalar(
            "SELECT hash FROM tokens WHERE kind = 'operator' AND name = $1 FOR UPDATE",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(old) = old {
            if !replace {
                return Err(StoreError::Conflict(format!(
                    "a token named {name:?} exists"
                )));
            }
            if old == hash {
                return Ok(());
            }
            sqlx::query("DELETE FROM tokens WHERE hash = $1")
                .bind(&old)
                .execute(&mut *tx)
                .await?;
        }
        let inserted = sqlx::query(
            "INSERT INTO tokens (hash, kind, name, created_at) VALUES ($1, 'operator', $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(hash)
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            // A concurrent mint of the same name committed first (or the hash is taken).
            return Err(StoreError::Conflict(format!(
                "a token named {name:?} exists"
            )));
        }
        tx.commit().await?;
        Ok(())
    }

    /// In name order.
    pub(super) async fn list_operator_tokens(&self) -> Result<Vec<OperatorTokenRecord>> {
        let rows: Vec<(String, String, Ts)> = sqlx::query_as(
            "SELECT name, hash, created_at FROM tokens WHERE kind = 'operator' ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(name, hash, created_at)| OperatorTokenRecord {
                name,
                hash,
                created_at,
            })
            .collect())
    }

    pub(super) async fn operator_token_exists(&self, name: &str) -> Result<bool> {
        if !storable(name) {
            return Ok(false);
        }
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM tokens WHERE kind = 'operator' AND name = $1)",
        )
        .bind(name)
        .fetch_one(&self.pool)
        .await?)
    }

    pub(super) async fn has_operator_tokens(&self) -> Result<bool> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tokens WHERE kind = 'operator')")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub(super) async fn delete_operator_token(&self, name: &str) -> Result<()> {
        if !storable(name) {
            return Err(StoreError::NotFound(format!("no token named {name:?}")));
        }
        let deleted = sqlx::query("DELETE FROM tokens WHERE kind = 'operator' AND name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("no token named {name:?}")));
        }
        Ok(())
    }
}

/// Make `hash` the device's one token, revoking the one it had (inside the caller's
/// transaction; the device's row should be locked).
pub(super) async fn set_device_token(
    conn: &mut PgConnection,
    device_id: &str,
    hash: &str,
    now: Ts,
) -> Result<()> {
    revoke_device_token(conn, device_id).await?;
    sqlx::query("INSERT INTO tokens (hash, kind, name, created_at) VALUES ($1, 'device', $2, $3)")
        .bind(hash)
        .bind(device_id)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// Revoke the device's token, if it has one (inside the caller's transaction). For
/// rejection and deletion: the device's next request is refused on every replica.
pub(super) async fn revoke_device_token(conn: &mut PgConnection, device_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM tokens WHERE kind = 'device' AND name = $1")
        .bind(device_id)
        .execute(conn)
        .await?;
    Ok(())
}
