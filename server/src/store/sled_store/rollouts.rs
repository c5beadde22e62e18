//! Rollouts on sled (SPEC §6): the waves' order (`wave_targets`), the set of active
//! rollouts, and the steps that move a rollout — open a wave, release its targets in
//! chunks, time targets out, record soak verdicts. What each step means is decided by
//! [`rollout`]; this file stores it atomically, one short transaction per chunk.

use kernex_common::api::TargetStatus;

use super::counters::tx_deployment;
use super::deployments::{CREATE_CHUNK, tx_store_deployment};
use super::*;
use crate::service::{rollout, rules};

/// `deployment_id ‖ wave (u32 BE) ‖ position (u64 BE) ‖ device_id`: a wave's targets in
/// rollout order.
pub(super) fn wave_key(deployment_id: &str, wave: u32, pos: u64, device_id: &str) -> Vec<u8> {
    let mut k = wave_prefix(deployment_id, wave);
    k.extend_from_slice(&pos.to_be_bytes());
    k.extend_from_slice(device_id.as_bytes());
    k
}

fn wave_prefix(deployment_id: &str, wave: u32) -> Vec<u8> {
    let mut k = prefix(deployment_id);
    k.extend_from_slice(&wave.to_be_bytes());
    k
}

/// (wave, position, device id) of a [`wave_key`] of `deployment_id`.
pub(super) fn split_wave_key(deployment_id: &str, key: &[u8]) -> Option<(u32, u64, String)> {
    let rest = key.get(deployment_id.len() + 1..)?;
    let wave = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let position = u64::from_be_bytes(rest.get(4..12)?.try_into().ok()?);
    let device_id = std::str::from_utf8(rest.get(12..)?).ok()?.to_owned();
    Some((wave, position, device_id))
}

/// The device id of a [`wave_key`].
fn wave_key_device(deployment_id: &str, key: &[u8]) -> String {
    let at = (deployment_id.len() + 1 + 4 + 8).min(key.len());
    String::from_utf8_lossy(&key[at..]).into_owned()
}

fn wave_u32(wave: usize) -> u32 {
    u32::try_from(wave).unwrap_or(u32::MAX)
}

impl SledStore {
    /// `wave`'s targets after rollout position `after`, at most `limit`: (position, id).
    fn wave_page(
        &self,
        id: &str,
        wave: usize,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, String)>> {
        let w = wave_u32(wave);
        let start = match after {
            None => wave_prefix(id, w),
            Some(pos) => {
                let mut k = wave_prefix(id, w);
                k.extend_from_slice(&pos.saturating_add(1).to_be_bytes());
                k
            }
        };
        let end = wave_prefix(id, w.saturating_add(1));
        let at = id.len() + 1 + 4;
        self.wave_targets
            .range(start..end)
            .keys()
            .take(limit)
            .map(|k| {
                let k = k?;
                let pos = k
                    .get(at..at + 8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(0, u64::from_be_bytes);
                Ok((pos, wave_key_device(id, &k)))
            })
            .collect()
    }

    pub(super) fn update_rollout(
        &self,
        id: &str,
        update: &RolloutUpdate,
        now: Ts,
    ) -> Result<RolloutUpdated> {
        (&self.deployments, &self.counters)
            .transaction(|(deployments, counters)| {
                let Some(mut dep) = tx_get::<DeploymentRecord>(deployments, id)? else {
                    return abort(StoreError::NotFound(format!("no deployment {id:?}")));
                };
                let before = dep.status;
                let mut advance = false;
                let changed = match update {
                    RolloutUpdate::OpenWave(k) => rollout::open_wave(&mut dep, *k, now),
                    RolloutUpdate::Pause(reason) => match rollout::pause(&mut dep, reason, now) {
                        Ok(()) => true,
                        Err(e) => return abort(e),
                    },
                    RolloutUpdate::Resume => match rollout::resume(&mut dep, now) {
                        Ok(a) => {
                            advance = a;
                            true
                        }
                        Err(e) => return abort(e),
                    },
                    RolloutUpdate::Abort(reason) => {
                        rollout::abort(&mut dep, reason, now);
                        true
                    }
                };
                if changed {
                    tx_put(deployments, id, &dep)?;
                    tx_deployment(counters, Some(before), dep.status)?;
                }
                Ok(RolloutUpdated {
                    deployment: dep,
                    changed,
                    advance,
                })
            })
            .map_err(tx_err)
    }

    pub(super) fn release_step(&self, id: &str, max: usize, now: Ts) -> Result<ReleaseStep> {
        let dep = self.deployment(id)?;
        let unchanged = |deployment| ReleaseStep {
            deployment,
            released: Vec::new(),
            done: true,
        };
        let Some(r) = &dep.rollout else {
            return Ok(unchanged(dep));
        };
        let Some(k) = r.opened.checked_sub(1) else {
            return Ok(unchanged(dep));
        };
        if r.paused_reason.is_some() || max == 0 {
            return Ok(unchanged(dep));
        }
        let take = max.min(CREATE_CHUNK);
        let cursor = r.waves.get(k).and_then(|w| w.cursor);
        let page = self.wave_page(id, k, cursor, take)?;
        let done = page.len() < take;
        let (deployment, released) = (
            &self.deployments,
            &self.targets,
            &self.device_open,
            &self.devices,
            &self.bundle_open,
            &self.counters,
        )
            .transaction(
                |(deployments, targets, device_open, devices, bundle_open, counters)| {
                    let Some(mut dep) = tx_get::<DeploymentRecord>(deployments, id)? else {
                        return abort(StoreError::NotFound(format!("no deployment {id:?}")));
                    };
                    let before = dep.status;
                    let mut released = Vec::new();
                    for (pos, device_id) in &page {
                        let key = key2(id, device_id);
                        if let Some(w) = dep.rollout.as_mut().and_then(|r| r.waves.get_mut(k)) {
                            w.cursor = Some(*pos);
                        }
                        let Some(mut t) = tx_get::<TargetRecord>(targets, &key)? else {
                            continue;
                        };
                        // A device rejected or deleted while its target waited: cancel it
                        // (nobody would ever report it).
                        let accepted = tx_get::<DeviceRecord>(devices, device_id)?
                            .is_some_and(|d| d.admission == Admission::Accepted);
                        if !accepted {
                            if t.status == TargetStatus::Waiting
                                && rules::cancel_target(
                                    &mut dep,
                                    &mut t,
                                    "device was rejected or deleted",
                                    now,
                                )
                            {
                                tx_put(targets, &key, &t)?;
                            }
                            continue;
                        }
                        if !rollout::release(&mut dep, &mut t, now) {
                            continue;
                        }
                        tx_put(targets, &key, &t)?;
                        device_open.insert(key2(device_id, id), &[])?;
                        released.push(device_id.clone());
                    }
                    tx_store_deployment(deployments, bundle_open, counters, before, &dep)?;
                    Ok((dep, released))
                },
            )
            .map_err(tx_err)?;
        Ok(ReleaseStep {
            deployment,
            released,
            done,
        })
    }

    pub(super) fn time_out_step(
        &self,
        id: &str,
        wave: usize,
        after: Option<u64>,
        chunk: usize,
        now: Ts,
    ) -> Result<TimeoutStep> {
        let chunk = chunk.clamp(1, CREATE_CHUNK);
        let page = self.wave_page(id, wave, after, chunk)?;
        let next = (page.len() == chunk)
            .then(|| page.last().map(|p| p.0))
            .flatten();
        let (deployment, timed_out, next_deadline) = (
            &self.deployments,
            &self.targets,
            &self.device_open,
            &self.bundle_open,
            &self.counters,
        )
            .transaction(
                |(deployments, targets, device_open, bundle_open, counters)| {
                    let Some(mut dep) = tx_get::<DeploymentRecord>(deployments, id)? else {
                        return abort(StoreError::NotFound(format!("no deployment {id:?}")));
                    };
                    let before = dep.status;
                    let mut timed_out = Vec::new();
                    let mut next_deadline: Option<Ts> = None;
                    for (_, device_id) in &page {
                        let key = key2(id, device_id);
                        let Some(mut t) = tx_get::<TargetRecord>(targets, &key)? else {
                            continue;
                        };
                        if rollout::time_out(&mut dep, &mut t, now) {
                            tx_put(targets, &key, &t)?;
                            device_open.remove(key2(device_id, id))?;
                            timed_out.push(device_id.clone());
                        } else if matches!(
                            t.status,
                            TargetStatus::Pending | TargetStatus::InProgress
                        ) && let Some(d) =
                            dep.rollout.as_ref().and_then(|r| rollout::deadline(r, &t))
                        {
                            next_deadline = Some(next_deadline.map_or(d, |n| n.min(d)));
                        }
                    }
                    if !timed_out.is_empty() {
                        tx_store_deployment(deployments, bundle_open, counters, before, &dep)?;
                    }
                    Ok((dep, timed_out, next_deadline))
                },
            )
            .map_err(tx_err)?;
        Ok(TimeoutStep {
            deployment,
            timed_out,
            next,
            next_deadline,
        })
    }

    pub(super) fn record_soak(
        &self,
        id: &str,
        device_id: &str,
        ok: bool,
        now: Ts,
    ) -> Result<Option<DeploymentRecord>> {
        let key = key2(id, device_id);
        (&self.deployments, &self.targets, &self.counters)
            .transaction(|(deployments, targets, counters)| {
                let Some(mut dep) = tx_get::<DeploymentRecord>(deployments, id)? else {
                    return Ok(None);
                };
                let Some(mut t) = tx_get::<TargetRecord>(targets, &key)? else {
                    return Ok(None);
                };
                let before = dep.status;
                if !rollout::record_soak(&mut dep, &mut t, ok, now) {
                    return Ok(None);
                }
                tx_put(targets, &key, &t)?;
                tx_put(deployments, id, &dep)?;
                tx_deployment(counters, Some(before), dep.status)?;
                Ok(Some(dep))
            })
            .map_err(tx_err)
    }

    pub(super) fn active_rollouts(&self) -> Result<Vec<DeploymentRecord>> {
        let mut out = Vec::new();
        for k in self.rollouts_active.iter().keys() {
            let id = String::from_utf8_lossy(&k?).into_owned();
            if let Some(d) = get::<DeploymentRecord>(&self.deployments, &id)? {
                out.push(d);
            }
        }
        Ok(out)
    }

    pub(super) fn retire_rollout(&self, id: &str) -> Result<()> {
        self.rollouts_active.remove(id.as_bytes())?;
        Ok(())
    }
}
