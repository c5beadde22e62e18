//! PostgreSQL: rollout waves, releases, timeouts, soak verdicts (SPEC §6). What each step
//! means is decided by [`rollout`]; this file stores it, one short transaction per
//! chunk. A wave's targets in rollout order are `targets (deployment_id, wave,
//! position)` (the `targets_by_wave` index), as sled's `wave_targets` tree.

use std::collections::HashMap;

use sqlx::PgConnection;
use sqlx::types::Json;

use super::deployments::{
    lock_deployment, lock_targets, no_deployment, share_devices, sql_limit, store_deployment,
    store_targets,
};
use super::*;
use crate::service::{rollout, rules};

/// Targets one release or timeout step looks at, at most (as sled's creation chunk).
const STEP_CHUNK: usize = 256;

/// A release that found the rollout moved under it starts over this many times.
const RELEASE_TRIES: usize = 5;

/// `wave`'s targets after rollout position `after`, at most `limit`: (position, id).
async fn wave_page(
    conn: &mut PgConnection,
    id: &str,
    wave: usize,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<(u64, String)>> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT position, device_id FROM targets \
         WHERE deployment_id = $1 AND wave = $2 AND ($3::bigint IS NULL OR position > $3) \
         ORDER BY position LIMIT $4",
    )
    .bind(id)
    .bind(i32::try_from(wave).unwrap_or(i32::MAX))
    .bind(after.map(|a| i64::try_from(a).unwrap_or(i64::MAX)))
    .bind(sql_limit(limit))
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(pos, device)| (u64::try_from(pos).unwrap_or(0), device))
        .collect())
}

/// Where a release of `dep` would start: (current wave, its cursor), or `None` when
/// nothing is to be released (no rollout, no wave open, paused).
fn release_point(dep: &DeploymentRecord) -> Option<(usize, Option<u64>)> {
    let r = dep.rollout.as_ref()?;
    let k = r.opened.checked_sub(1)?;
    if r.paused_reason.is_some() {
        return None;
    }
    Some((k, r.waves.get(k).and_then(|w| w.cursor)))
}

fn unchanged(deployment: DeploymentRecord) -> ReleaseStep {
    ReleaseStep {
        deployment,
        released: Vec::new(),
        done: true,
    }
}

impl PgStore {
    pub(super) async fn update_rollout(
        &self,
        id: &str,
        update: &RolloutUpdate,
        now: Ts,
    ) -> Result<RolloutUpdated> {
        let mut tx = self.pool.begin().await?;
        let mut dep = lock_deployment(&mut tx, id)
            .await?
            .ok_or_else(|| no_deployment(id))?;
        let before = dep.status;
        let mut advance = false;
        let changed = match update {
            RolloutUpdate::OpenWave(k) => rollout::open_wave(&mut dep, *k, now),
            RolloutUpdate::Pause(reason) => {
                rollout::pause(&mut dep, reason, now)?;
                true
            }
            RolloutUpdate::Resume => {
                advance = rollout::resume(&mut dep, now)?;
                true
            }
            RolloutUpdate::Abort(reason) => {
                rollout::abort(&mut dep, reason, now);
                true
            }
        };
        if changed {
            store_deployment(&mut tx, before, &dep).await?;
            tx.commit().await?;
        }
        Ok(RolloutUpdated {
            deployment: dep,
            changed,
            advance,
        })
    }

    /// Release up to `max` (at most [`STEP_CHUNK`]) waiting targets of the current wave
    /// from its cursor. The chunk's devices are share-locked before the deployment's
    /// row (the lock order), so the chunk is read first and the transaction starts over
    /// if the cursor moved before the lock was taken.
    pub(super) async fn release_step(&self, id: &str, max: usize, now: Ts) -> Result<ReleaseStep> {
        let take = max.min(STEP_CHUNK);
        for _ in 0..RELEASE_TRIES {
            let seen = self.deployment(id).await?;
            let Some(point) = release_point(&seen).filter(|_| take > 0) else {
                return Ok(unchanged(seen));
            };
            let mut tx = self.pool.begin().await?;
            let page = wave_page(&mut tx, id, point.0, point.1, take).await?;
            let ids: Vec<String> = page.iter().map(|p| p.1.clone()).collect();
            let admissions = share_devices(&mut tx, &ids).await?;
            let mut dep = lock_deployment(&mut tx, id)
                .await?
                .ok_or_else(|| no_deployment(id))?;
            match release_point(&dep) {
                None => return Ok(unchanged(dep)),
                Some(p) if p != point => continue,
                Some(_) => {}
            }
            let mut targets = lock_targets(&mut tx, id, &ids).await?;
            let before = dep.status;
            let mut released = Vec::new();
            let mut changed = Vec::new();
            for (pos, device_id) in &page {
                if let Some(w) = dep.rollout.as_mut().and_then(|r| r.waves.get_mut(point.0)) {
                    w.cursor = Some(*pos);
                }
                let Some(t) = targets.get_mut(device_id) else {
                    continue;
                };
                // A device rejected or deleted while its target waited: cancel it
                // (nobody would ever report it).
                if admissions.get(device_id) != Some(&Admission::Accepted) {
                    if t.status == TargetStatus::Waiting
                        && rules::cancel_target(&mut dep, t, "device was rejected or deleted", now)
                    {
                        changed.push(device_id.clone());
                    }
                    continue;
                }
                if rollout::release(&mut dep, t, now) {
                    changed.push(device_id.clone());
                    released.push(device_id.clone());
                }
            }
            let rows: Vec<&TargetRecord> = changed.iter().filter_map(|d| targets.get(d)).collect();
            store_targets(&mut tx, id, &rows).await?;
            store_deployment(&mut tx, before, &dep).await?;
            tx.commit().await?;
            return Ok(ReleaseStep {
                deployment: dep,
                released,
                done: page.len() < take,
            });
        }
        Err(StoreError::Unavailable(format!(
            "deployment {id}'s rollout kept moving during a release; try again"
        )))
    }

    pub(super) async fn time_out_step(
        &self,
        id: &str,
        wave: usize,
        after: Option<u64>,
        chunk: usize,
        now: Ts,
    ) -> Result<TimeoutStep> {
        let chunk = chunk.clamp(1, STEP_CHUNK);
        let mut tx = self.pool.begin().await?;
        let mut dep = lock_deployment(&mut tx, id)
            .await?
            .ok_or_else(|| no_deployment(id))?;
        let page = wave_page(&mut tx, id, wave, after, chunk).await?;
        let next = (page.len() == chunk)
            .then(|| page.last().map(|p| p.0))
            .flatten();
        let ids: Vec<String> = page.iter().map(|p| p.1.clone()).collect();
        let mut targets: HashMap<String, TargetRecord> = lock_targets(&mut tx, id, &ids).await?;
        let before = dep.status;
        let mut timed_out = Vec::new();
        let mut next_deadline: Option<Ts> = None;
        for (_, device_id) in &page {
            let Some(t) = targets.get_mut(device_id) else {
                continue;
            };
            if rollout::time_out(&mut dep, t, now) {
                timed_out.push(device_id.clone());
            } else if matches!(t.status, TargetStatus::Pending | TargetStatus::InProgress)
                && let Some(d) = dep.rollout.as_ref().and_then(|r| rollout::deadline(r, t))
            {
                next_deadline = Some(next_deadline.map_or(d, |n| n.min(d)));
            }
        }
        if !timed_out.is_empty() {
            let rows: Vec<&TargetRecord> =
                timed_out.iter().filter_map(|d| targets.get(d)).collect();
            store_targets(&mut tx, id, &rows).await?;
            store_deployment(&mut tx, before, &dep).await?;
            tx.commit().await?;
        }
        Ok(TimeoutStep {
            deployment: dep,
            timed_out,
            next,
            next_deadline,
        })
    }

    pub(super) async fn record_soak(
        &self,
        id: &str,
        device_id: &str,
        ok: bool,
        now: Ts,
    ) -> Result<Option<DeploymentRecord>> {
        let mut tx = self.pool.begin().await?;
        let Some(mut dep) = lock_deployment(&mut tx, id).await? else {
            return Ok(None);
        };
        let Some(mut t) = super::deployments::lock_target(&mut tx, id, device_id).await? else {
            return Ok(None);
        };
        let before = dep.status;
        if !rollout::record_soak(&mut dep, &mut t, ok, now) {
            return Ok(None);
        }
        store_targets(&mut tx, id, &[&t]).await?;
        store_deployment(&mut tx, before, &dep).await?;
        tx.commit().await?;
        Ok(Some(dep))
    }

    pub(super) async fn active_rollouts(&self) -> Result<Vec<DeploymentRecord>> {
        let docs: Vec<Json<DeploymentRecord>> = sqlx::query_scalar(
            "SELECT doc FROM deployments WHERE rollout_active ORDER BY deployment_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(docs.into_iter().map(|d| d.0).collect())
    }

    pub(super) async fn retire_rollout(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE deployments SET rollout_active = false WHERE deployment_id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
