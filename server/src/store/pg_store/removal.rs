//! PostgreSQL: admission changes and deletions, which cancel what a device will never
//! report. Each is one transaction that locks the device's row first, then the
//! deployments it has open targets in, in id order, then those targets.
//!
//! Deployment creations and releases hold the rows of their devices `FOR KEY SHARE`,
//! so a rejection (`FOR UPDATE`) or a deletion (the `DELETE` of the row) waits for them
//! and then sees, and cancels, the targets they made open; one that starts later finds
//! the device rejected or gone. A deletion takes its row lock as `FOR NO KEY UPDATE`
//! first, which a heartbeat batch's foreign-key checks (`FOR KEY SHARE`) do not wait
//! for: the batch commits, then the `DELETE` goes on, so the two never deadlock.

use sqlx::PgConnection;
use sqlx::types::Json;

use super::counts;
use super::deployments::{lock_deployment, lock_target, store_deployment_row, store_targets};
use super::devices::storable;
use super::tokens::revoke_device_token;
use super::*;
use crate::service::rules;

fn no_device(device_id: &str) -> StoreError {
    StoreError::NotFound(format!("no device {device_id:?}"))
}

/// Lock a device's row and read it: `FOR UPDATE` for a change of admission, `FOR NO
/// KEY UPDATE` before a deletion (see the module doc).
async fn lock_device(
    conn: &mut PgConnection,
    device_id: &str,
    deleting: bool,
) -> Result<DeviceRecord> {
    if !storable(device_id) {
        return Err(no_device(device_id));
    }
    let sql = if deleting {
        "SELECT doc FROM devices WHERE device_id = $1 FOR NO KEY UPDATE"
    } else {
        "SELECT doc FROM devices WHERE device_id = $1 FOR UPDATE"
    };
    let doc: Option<Json<DeviceRecord>> = sqlx::query_scalar(sql)
        .bind(device_id)
        .fetch_optional(conn)
        .await?;
    doc.map(|d| d.0).ok_or_else(|| no_device(device_id))
}

/// Counter changes a transaction collects and applies once, at its end.
type Deltas = Vec<(&'static str, i64)>;

/// Cancel every open target of a device (its row is locked), deployment by deployment
/// in id order; the deployments that changed. Their status counter moves are added to
/// `deltas`.
async fn cancel_open_targets(
    conn: &mut PgConnection,
    device_id: &str,
    reason: &str,
    now: Ts,
    deltas: &mut Deltas,
) -> Result<Vec<DeploymentRecord>> {
    let open: Vec<String> = sqlx::query_scalar(
        "SELECT deployment_id FROM targets WHERE device_id = $1 AND open \
         ORDER BY deployment_id",
    )
    .bind(device_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut changed = Vec::new();
    for dep_id in open {
        let Some(mut dep) = lock_deployment(conn, &dep_id).await? else {
            continue;
        };
        let Some(mut t) = lock_target(conn, &dep_id, device_id).await? else {
            continue;
        };
        let before = dep.status;
        if !rules::cancel_target(&mut dep, &mut t, reason, now) {
            continue;
        }
        store_targets(conn, &dep_id, &[&t]).await?;
        store_deployment_row(conn, &dep).await?;
        if before != dep.status {
            deltas.push((counts::status_key(before), -1));
            deltas.push((counts::status_key(dep.status), 1));
        }
        changed.push(dep);
    }
    Ok(changed)
}

fn admission_deltas(before: Admission, after: Option<Admission>) -> Deltas {
    if Some(before) == after {
        return Vec::new();
    }
    let mut d = vec![(counts::admission_key(before), -1)];
    d.extend(after.map(|a| (counts::admission_key(a), 1)));
    d
}

/// One delta per counter name (the sum of what was collected).
fn merge(deltas: Deltas) -> Deltas {
    let mut sums = std::collections::BTreeMap::new();
    for (name, d) in deltas {
        *sums.entry(name).or_insert(0) += d;
    }
    sums.into_iter().collect()
}

impl PgStore {
    /// Set admission. Rejecting revokes the device's token and cancels its open
    /// targets in the same transaction (a waiting target of a rollout is cancelled when
    /// its wave releases it).
    pub(super) async fn set_admission(
        &self,
        device_id: &str,
        admission: Admission,
        now: Ts,
    ) -> Result<(Device, Vec<DeploymentRecord>)> {
        let mut tx = self.pool.begin().await?;
        let mut d = lock_device(&mut tx, device_id, false).await?;
        let mut deltas = admission_deltas(d.admission, Some(admission));
        d.admission = admission;
        let mut changed = Vec::new();
        if admission == Admission::Rejected {
            revoke_device_token(&mut tx, device_id).await?;
            changed =
                cancel_open_targets(&mut tx, device_id, "device was rejected", now, &mut deltas)
                    .await?;
        }
        sqlx::query("UPDATE devices SET admission = $2, doc = $3 WHERE device_id = $1")
            .bind(device_id)
            .bind(wire_name(&admission)?)
            .bind(Json(&d))
            .execute(&mut *tx)
            .await?;
        counts::bump(&mut tx, &merge(deltas)).await?;
        tx.commit().await?;
        self.token_cache().clear();
        let live = self.live_of(device_id).await?;
        Ok((Device { record: d, live }, changed))
    }

    /// Delete a device with its token, tags, config, live record, heartbeats, history
    /// and success marks, and cancel its open targets, in one transaction. Deployments
    /// keep its (cancelled or finished) target rows.
    pub(super) async fn delete_device(
        &self,
        device_id: &str,
        now: Ts,
    ) -> Result<Vec<DeploymentRecord>> {
        let mut tx = self.pool.begin().await?;
        let d = lock_device(&mut tx, device_id, true).await?;
        // The row first: this waits for creations and releases that hold it, and makes
        // later ones find no device. Tags, config, live record and heartbeats go with
        // it (ON DELETE CASCADE).
        sqlx::query("DELETE FROM devices WHERE device_id = $1")
            .bind(device_id)
            .execute(&mut *tx)
            .await?;
        let mut deltas = admission_deltas(d.admission, None);
        let changed =
            cancel_open_targets(&mut tx, device_id, "device was deleted", now, &mut deltas).await?;
        revoke_device_token(&mut tx, device_id).await?;
        for table in ["history", "device_success"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE device_id = $1"))
                .bind(device_id)
                .execute(&mut *tx)
                .await?;
        }
        counts::bump(&mut tx, &merge(deltas)).await?;
        tx.commit().await?;
        self.token_cache().clear();
        Ok(changed)
    }

    /// Remove a bundle's record (and its signatures); `Conflict` while an unfinished
    /// deployment uses it. The bundle's row is locked first: a creation holds it
    /// `FOR KEY SHARE`, so either it commits first and is seen here, or it waits and
    /// then finds the bundle gone.
    pub(super) async fn delete_bundle(&self, id: &str) -> Result<BundleRecord> {
        if !storable(id) {
            return Err(StoreError::NotFound(format!("no bundle {id:?}")));
        }
        let mut tx = self.pool.begin().await?;
        let doc: Option<Json<BundleRecord>> =
            sqlx::query_scalar("SELECT doc FROM bundles WHERE bundle_id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let b = doc
            .map(|d| d.0)
            .ok_or_else(|| StoreError::NotFound(format!("no bundle {id:?}")))?;
        let in_use: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM deployments WHERE bundle_id = $1 AND NOT final)",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        if in_use {
            return Err(StoreError::Conflict(format!(
                "bundle {} is used by an unfinished deployment",
                b.version
            )));
        }
        // Its signatures go with it (ON DELETE CASCADE).
        sqlx::query("DELETE FROM bundles WHERE bundle_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(b)
    }
}
