//! PostgreSQL: deployments, their targets, and cancels. What a cancel or a release means
//! is decided by [`rules`] and [`rollout`]; this file stores it, one transaction per
//! change, and holds the row helpers the result, rollout and removal files share.
//!
//! Lock order (every transaction here keeps it, so replicas never deadlock): a creation's
//! `bundles` row, then `devices` rows (in device-id order), then `deployments` rows (in
//! id order), then `targets` rows (in device-id order), and the `counters` rows last,
//! once, in name order (they are shared by every deployment's transactions, so they are
//! held for the shortest time). The device row modes say who waits for whom:
//! - `FOR KEY SHARE`: a creation or a release (it must not make a target open for a
//!   device being rejected or deleted), and a heartbeat batch's key check;
//! - `FOR NO KEY UPDATE`: a result (it rewrites the device record), and a deletion
//!   before its `DELETE`;
//! - `FOR UPDATE`: a change of admission (it waits for creations and releases).
//!
//! A `targets.open` row is what sled's `device_open` index holds: a released, unfinished
//! target (`pending`/`in_progress`); a rollout's `waiting` target is not open.

use std::collections::{HashMap, HashSet};

use sqlx::PgConnection;
use sqlx::types::Json;

use super::counts;
use super::devices::storable;
use super::*;
use crate::service::{rollout, rules};

/// Target rows one statement writes or locks (a statement's parameters stay small).
pub(super) const ROW_CHUNK: usize = 5000;

/// Is a target in this status deliverable and unfinished (`targets.open`)?
pub(super) fn is_open(status: TargetStatus) -> bool {
    matches!(status, TargetStatus::Pending | TargetStatus::InProgress)
}

/// `usize` limits (often `usize::MAX`) as a SQL `LIMIT`.
pub(super) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

pub(super) fn no_deployment(id: &str) -> StoreError {
    StoreError::NotFound(format!("no deployment {id:?}"))
}

/// Lock a deployment's row and read it.
pub(super) async fn lock_deployment(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<DeploymentRecord>> {
    if !storable(id) {
        return Ok(None);
    }
    let doc: Option<Json<DeploymentRecord>> =
        sqlx::query_scalar("SELECT doc FROM deployments WHERE deployment_id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(conn)
            .await?;
    Ok(doc.map(|d| d.0))
}

/// Lock one target's row and read it.
pub(super) async fn lock_target(
    conn: &mut PgConnection,
    deployment_id: &str,
    device_id: &str,
) -> Result<Option<TargetRecord>> {
    if !storable(deployment_id) || !storable(device_id) {
        return Ok(None);
    }
    let doc: Option<Json<TargetRecord>> = sqlx::query_scalar(
        "SELECT doc FROM targets WHERE deployment_id = $1 AND device_id = $2 FOR UPDATE",
    )
    .bind(deployment_id)
    .bind(device_id)
    .fetch_optional(conn)
    .await?;
    Ok(doc.map(|d| d.0))
}

/// Lock these targets of one deployment (in device-id order) and read them, by device.
pub(super) async fn lock_targets(
    conn: &mut PgConnection,
    deployment_id: &str,
    device_ids: &[String],
) -> Result<HashMap<String, TargetRecord>> {
    let docs: Vec<Json<TargetRecord>> = sqlx::query_scalar(
        "SELECT doc FROM targets WHERE deployment_id = $1 AND device_id = ANY($2) \
         ORDER BY device_id FOR UPDATE",
    )
    .bind(deployment_id)
    .bind(device_ids)
    .fetch_all(conn)
    .await?;
    Ok(docs
        .into_iter()
        .map(|d| (d.0.device_id.clone(), d.0))
        .collect())
}

/// Store a deployment changed inside a transaction: its record, whether it is final
/// (what bundle deletion and the unfinished-by-bundle index read), and the status
/// counters.
pub(super) async fn store_deployment(
    conn: &mut PgConnection,
    before: DeploymentStatus,
    dep: &DeploymentRecord,
) -> Result<()> {
    store_deployment_row(conn, dep).await?;
    counts::status_moved(conn, Some(before), dep.status).await
}

/// Store a deployment's row only; the caller moves its status counters (a transaction
/// that changes several deployments bumps every counter once, in name order, at its
/// end, so two of them never lock counter rows in opposite orders).
pub(super) async fn store_deployment_row(
    conn: &mut PgConnection,
    dep: &DeploymentRecord,
) -> Result<()> {
    sqlx::query(
        "UPDATE deployments SET status = $2, final = $3, doc = $4 WHERE deployment_id = $1",
    )
    .bind(&dep.id)
    .bind(wire_name(&dep.status)?)
    .bind(dep.status.is_final())
    .bind(Json(dep))
    .execute(conn)
    .await?;
    Ok(())
}

/// Store changed targets of one deployment (status, `open`, record), one statement.
pub(super) async fn store_targets(
    conn: &mut PgConnection,
    deployment_id: &str,
    targets: &[&TargetRecord],
) -> Result<()> {
    if targets.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(targets.len());
    let mut statuses = Vec::with_capacity(targets.len());
    let mut open = Vec::with_capacity(targets.len());
    let mut docs = Vec::with_capacity(targets.len());
    for t in targets {
        ids.push(t.device_id.as_str());
        statuses.push(wire_name(&t.status)?);
        open.push(is_open(t.status));
        docs.push(serde_json::to_value(t)?);
    }
    sqlx::query(
        "UPDATE targets AS t SET status = u.status, open = u.open, doc = u.doc \
         FROM UNNEST($2::text[], $3::text[], $4::bool[], $5::jsonb[]) \
              AS u(device_id, status, open, doc) \
         WHERE t.deployment_id = $1 AND t.device_id = u.device_id",
    )
    .bind(deployment_id)
    .bind(&ids)
    .bind(&statuses)
    .bind(&open)
    .bind(&docs)
    .execute(conn)
    .await?;
    Ok(())
}

/// Lock these devices' rows against admission changes and deletion (`FOR KEY SHARE`:
/// a result's update of the device record still goes on) and read their admissions.
pub(super) async fn share_devices(
    conn: &mut PgConnection,
    device_ids: &[String],
) -> Result<HashMap<String, Admission>> {
    // An id PostgreSQL cannot hold names no device.
    let mut sorted: Vec<&str> = device_ids
        .iter()
        .map(String::as_str)
        .filter(|id| storable(id))
        .collect();
    sorted.sort_unstable();
    let mut out = HashMap::with_capacity(sorted.len());
    for chunk in sorted.chunks(ROW_CHUNK) {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT device_id, admission FROM devices WHERE device_id = ANY($1) \
             ORDER BY device_id FOR KEY SHARE",
        )
        .bind(chunk)
        .fetch_all(&mut *conn)
        .await?;
        for (id, a) in rows {
            let a: Admission = serde_json::from_value(serde_json::Value::String(a))
                .map_err(|e| StoreError::codec(format!("device {id}'s admission: {e}")))?;
            out.insert(id, a);
        }
    }
    Ok(out)
}

/// A target as a creation writes it: `waiting` in its wave with a rollout, else `pending`.
fn new_target(device_id: &str, wave: Option<u32>, now: Ts) -> TargetRecord {
    TargetRecord {
        device_id: device_id.to_owned(),
        status: if wave.is_some() {
            TargetStatus::Waiting
        } else {
            TargetStatus::Pending
        },
        phase: None,
        progress_pct: None,
        error_message: None,
        log_tail: None,
        updated_at: now,
        report_id: None,
        wave: wave.unwrap_or(0),
        released_at: None,
        result_at: None,
        soak_ok: None,
    }
}

/// A creation's checks, under the locks that keep them true until it commits: the
/// bundle still exists, and every named device exists and is accepted (a 400 names the
/// first that is not, in the caller's order).
async fn check_creation(
    conn: &mut PgConnection,
    bundle: &BundleRecord,
    ids: &[String],
) -> Result<()> {
    let bundle_row: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM bundles WHERE bundle_id = $1 FOR KEY SHARE")
            .bind(&bundle.id)
            .fetch_optional(&mut *conn)
            .await?;
    if bundle_row.is_none() {
        return Err(StoreError::Invalid(format!(
            "bundle {} no longer exists",
            bundle.version
        )));
    }
    let admissions = share_devices(conn, ids).await?;
    for device_id in ids {
        match admissions.get(device_id) {
            Some(Admission::Accepted) => {}
            Some(_) => {
                return Err(StoreError::Invalid(format!(
                    "device {device_id} is not accepted"
                )));
            }
            None => return Err(StoreError::Invalid(format!("no device {device_id:?}"))),
        }
    }
    if ids.is_empty() {
        return Err(StoreError::Invalid(
            "none of the target devices is accepted any more".into(),
        ));
    }
    Ok(())
}

impl PgStore {
    /// Create a deployment of `bundle` to `target_ids` in one transaction: the bundle's
    /// row and every target device's row are share-locked first, so a concurrent bundle
    /// deletion, rejection or device deletion either waits for this commit (and then
    /// sees, and cancels, the new targets) or commits first (and this creation sees
    /// it). PostgreSQL holds no store-wide lock, so a 100,000-target creation is one
    /// transaction of a few statements ([`ROW_CHUNK`] rows each), not many short ones.
    ///
    /// With a rollout, targets are written `waiting` with their wave and rollout
    /// position, and none is `open` until the rollout driver releases it.
    pub(super) async fn create_deployment(
        &self,
        kind: DeploymentKind,
        bundle: &BundleRecord,
        target_ids: &[String],
        mut rollout: Option<RolloutState>,
        now: Ts,
    ) -> Result<DeploymentRecord> {
        let mut seen = HashSet::with_capacity(target_ids.len());
        let ids: Vec<String> = target_ids
            .iter()
            .filter(|id| seen.insert(id.as_str()))
            .cloned()
            .collect();
        let mut tx = self.pool.begin().await?;
        check_creation(&mut tx, bundle, &ids).await?;
        let waves: Option<Vec<u32>> = rollout.as_ref().map(|r| {
            (0..ids.len() as u64)
                .map(|pos| rollout::wave_of(r, pos))
                .collect()
        });
        if let (Some(r), Some(w)) = (rollout.as_mut(), &waves) {
            rollout::recount(r, w);
        }
        let waiting = rollout.is_some();
        let dep = DeploymentRecord::new(
            new_id(),
            kind,
            bundle,
            ids.len() as u64,
            rollout,
            false,
            now,
        );
        sqlx::query(
            "INSERT INTO deployments (deployment_id, bundle_id, status, final, rollout_active, doc) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&dep.id)
        .bind(&dep.bundle_id)
        .bind(wire_name(&dep.status)?)
        .bind(dep.status.is_final())
        .bind(waiting)
        .bind(Json(&dep))
        .execute(&mut *tx)
        .await?;
        for (c, chunk) in ids.chunks(ROW_CHUNK).enumerate() {
            let base = c * ROW_CHUNK;
            let wave_of = |j: usize| waves.as_ref().and_then(|w| w.get(base + j).copied());
            let targets: Vec<TargetRecord> = chunk
                .iter()
                .enumerate()
                .map(|(j, id)| new_target(id, wave_of(j), now))
                .collect();
            insert_targets(&mut tx, &dep.id, base, &targets).await?;
        }
        // Counters last: their rows are shared by every deployment's transactions.
        counts::status_moved(&mut tx, None, dep.status).await?;
        tx.commit().await?;
        Ok(dep)
    }

    pub(super) async fn deployment(&self, id: &str) -> Result<DeploymentRecord> {
        if !storable(id) {
            return Err(no_deployment(id));
        }
        let doc: Option<Json<DeploymentRecord>> =
            sqlx::query_scalar("SELECT doc FROM deployments WHERE deployment_id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        doc.map(|d| d.0).ok_or_else(|| no_deployment(id))
    }

    /// One page of the deployment's targets in device-id order (the limit counts the
    /// targets that match the status filter).
    pub(super) async fn deployment_targets(
        &self,
        id: &str,
        filter: &TargetFilter,
    ) -> Result<Vec<TargetRecord>> {
        if !storable(id) {
            return Ok(Vec::new());
        }
        // Stored ids hold no U+0000, so the ids after a cursor holding one are the ids
        // after its text before the first U+0000 (in byte order, as sled compares).
        let after = filter.after.as_deref().map(before_nul);
        let status = filter.status.as_ref().map(wire_name).transpose()?;
        let docs: Vec<Json<TargetRecord>> = sqlx::query_scalar(
            "SELECT doc FROM targets WHERE deployment_id = $1 \
               AND ($2::text IS NULL OR device_id > $2) \
               AND ($3::text IS NULL OR status = $3) \
             ORDER BY device_id LIMIT $4",
        )
        .bind(id)
        .bind(after)
        .bind(status)
        .bind(sql_limit(filter.limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(docs.into_iter().map(|d| d.0).collect())
    }

    /// Newest first, optionally only those with `status`.
    pub(super) async fn list_deployments(
        &self,
        status: Option<DeploymentStatus>,
        limit: usize,
    ) -> Result<Vec<DeploymentRecord>> {
        let status = status.as_ref().map(wire_name).transpose()?;
        let docs: Vec<Json<DeploymentRecord>> = sqlx::query_scalar(
            "SELECT doc FROM deployments WHERE ($1::text IS NULL OR status = $1) \
             ORDER BY deployment_id DESC LIMIT $2",
        )
        .bind(status)
        .bind(sql_limit(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(docs.into_iter().map(|d| d.0).collect())
    }

    /// Cancel the undelivered (`waiting`/`pending`) targets among the next `chunk`
    /// targets after `after`, in one short transaction.
    pub(super) async fn cancel_deployment_step(
        &self,
        id: &str,
        after: Option<&str>,
        chunk: usize,
        reason: &str,
        now: Ts,
    ) -> Result<CancelStep> {
        let chunk = chunk.max(1);
        let after = after.map(before_nul);
        let mut tx = self.pool.begin().await?;
        let mut dep = lock_deployment(&mut tx, id)
            .await?
            .ok_or_else(|| no_deployment(id))?;
        let page: Vec<(String, String)> = sqlx::query_as(
            "SELECT device_id, status FROM targets WHERE deployment_id = $1 \
               AND ($2::text IS NULL OR device_id > $2) \
             ORDER BY device_id LIMIT $3",
        )
        .bind(id)
        .bind(after)
        .bind(sql_limit(chunk))
        .fetch_all(&mut *tx)
        .await?;
        let next = (page.len() == chunk)
            .then(|| page.last().map(|p| p.0.clone()))
            .flatten();
        let undelivered = [
            wire_name(&TargetStatus::Waiting)?,
            wire_name(&TargetStatus::Pending)?,
        ];
        let candidates: Vec<String> = page
            .into_iter()
            .filter(|(_, status)| undelivered.contains(status))
            .map(|(device_id, _)| device_id)
            .collect();
        let mut targets = lock_targets(&mut tx, id, &candidates).await?;
        let before = dep.status;
        let mut cancelled = Vec::new();
        for device_id in &candidates {
            let Some(t) = targets.get_mut(device_id) else {
                continue;
            };
            if matches!(t.status, TargetStatus::Pending | TargetStatus::Waiting)
                && rules::cancel_target(&mut dep, t, reason, now)
            {
                cancelled.push(device_id.clone());
            }
        }
        if !cancelled.is_empty() {
            let changed: Vec<&TargetRecord> =
                cancelled.iter().filter_map(|d| targets.get(d)).collect();
            store_targets(&mut tx, id, &changed).await?;
            store_deployment(&mut tx, before, &dep).await?;
        }
        tx.commit().await?;
        Ok(CancelStep {
            deployment: dep,
            cancelled,
            next,
        })
    }
}

/// The text before the first U+0000 (all of it when there is none).
fn before_nul(s: &str) -> &str {
    s.split('\0').next().unwrap_or(s)
}

/// Insert one chunk of new targets; `base` is the rollout position of the first.
async fn insert_targets(
    conn: &mut PgConnection,
    deployment_id: &str,
    base: usize,
    targets: &[TargetRecord],
) -> Result<()> {
    let mut ids = Vec::with_capacity(targets.len());
    let mut statuses = Vec::with_capacity(targets.len());
    let mut open = Vec::with_capacity(targets.len());
    let mut waves = Vec::with_capacity(targets.len());
    let mut positions = Vec::with_capacity(targets.len());
    let mut docs = Vec::with_capacity(targets.len());
    for (j, t) in targets.iter().enumerate() {
        ids.push(t.device_id.as_str());
        statuses.push(wire_name(&t.status)?);
        open.push(is_open(t.status));
        waves.push(i32::try_from(t.wave).unwrap_or(i32::MAX));
        positions.push(i64::try_from(base + j).unwrap_or(i64::MAX));
        docs.push(serde_json::to_value(t)?);
    }
    sqlx::query(
        "INSERT INTO targets (deployment_id, device_id, status, open, wave, position, doc) \
         SELECT $1, u.device_id, u.status, u.open, u.wave, u.position, u.doc \
         FROM UNNEST($2::text[], $3::text[], $4::bool[], $5::int[], $6::bigint[], $7::jsonb[]) \
              AS u(device_id, status, open, wave, position, doc)",
    )
    .bind(deployment_id)
    .bind(&ids)
    .bind(&statuses)
    .bind(&open)
    .bind(&waves)
    .bind(&positions)
    .bind(&docs)
    .execute(conn)
    .await?;
    Ok(())
}
