//! PostgreSQL: operator and device tokens, stored only as SHA-256 hashes in `tokens`
//! (one row per token; `UNIQUE (kind, name)`: one live token per operator name and per
//! device).
//!
//! A lookup is one primary-key read, served from the [`TokenCache`] while this replica
//! hears every token change: each transaction here that removes or replaces a token
//! notifies the replicas ([`tokens_changed`]) and, once committed, clears this
//! replica's cache before it answers.

use sqlx::PgConnection;

use super::devices::storable;
use super::token_cache::{CHANNEL, TokenCache};
use super::*;

const OPERATOR: &str = "operator";
const DEVICE: &str = "device";

impl PgStore {
    pub(super) async fn principal(&self, token_hash: &str) -> Result<Option<Principal>> {
        if let Some(cached) = self.tokens.get(token_hash) {
            return Ok(Some(cached));
        }
        let generation = self.tokens.generation();
        let found = self.principal_stored(token_hash).await?;
        if let Some(p) = &found {
            self.tokens.put(generation, token_hash, p);
        }
        Ok(found)
    }

    /// This replica now hears every token change (`true`), or may have missed some
    /// (`false`): the cache serves, or stops serving; either way it starts over.
    pub(super) fn token_notices(&self, live: bool) {
        self.tokens.set_live(live);
    }

    /// A token changed (a notice from a replica, this one included).
    pub(super) fn token_changed(&self) {
        self.tokens.clear();
    }

    /// The cache, for the writers here and in `removal` (cleared after their commit).
    pub(super) fn token_cache(&self) -> &TokenCache {
        &self.tokens
    }

    async fn principal_stored(&self, token_hash: &str) -> Result<Option<Principal>> {
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
            tokens_changed(&mut tx).await?;
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
        self.tokens.clear();
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
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM tokens WHERE kind = 'operator' AND name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("no token named {name:?}")));
        }
        tokens_changed(&mut tx).await?;
        tx.commit().await?;
        self.tokens.clear();
        Ok(())
    }
}

/// Tell every replica, when the caller's transaction commits, that a token was removed
/// or replaced (their caches start over; see [`TokenCache`]). The caller clears its own
/// replica's cache after the commit.
pub(super) async fn tokens_changed(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

/// Make `hash` the device's one token, revoking the one it had (inside the caller's
/// transaction; the device's row should be locked; the caller clears the token cache
/// after the commit).
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

/// Revoke the device's token, if it has one (inside the caller's transaction, which
/// clears the token cache after its commit). For rejection and deletion: the device's
/// next request is refused on every replica.
pub(super) async fn revoke_device_token(conn: &mut PgConnection, device_id: &str) -> Result<()> {
    let deleted = sqlx::query("DELETE FROM tokens WHERE kind = 'device' AND name = $1")
        .bind(device_id)
        .execute(&mut *conn)
        .await?;
    if deleted.rows_affected() > 0 {
        tokens_changed(conn).await?;
    }
    Ok(())
}
