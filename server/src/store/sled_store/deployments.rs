//! Deployments on sled: their per-device targets, results and bundle history. What a
//! result or a cancel means is decided by [`rules`]; this file stores it atomically.

use std::ops::Bound;

use kernex_common::api::{
    Admission, DeploymentKind, DeploymentStatus, ProgressReport, ResultReport, ResultStatus,
    TargetStatus,
};

use super::counters::tx_deployment;
use super::rollouts::wave_key;

/// Targets one creation step writes (one short transaction each).
pub(super) const CREATE_CHUNK: usize = 256;
use super::*;
use crate::service::rollout;
use crate::service::rules::{self, ResultDecision};

impl SledStore {
    /// Create a deployment of `bundle` to `target_ids`, in short transactions so that a
    /// deployment to 100,000 devices never holds the store's lock for long:
    /// 1. targets are written in chunks, each checking its devices are still accepted
    ///    (one that is not is left out);
    /// 2. the deployment record commits with the counts of what was written, marked
    ///    `indexing`;
    /// 3. the targets become deliverable (`device_open`) in chunks, each again checking
    ///    the device (one rejected or deleted meanwhile is cancelled, so no target is
    ///    left that nobody will ever report); then the mark is cleared.
    ///
    /// A crash in step 3 is finished at the next start ([`SledStore::finish_indexing`]);
    /// a crash before step 2 leaves target records no deployment names (never read).
    ///
    /// With a rollout, targets are written `waiting` with their wave (and the
    /// `wave_targets` order), and step 3 is left to the rollout driver, which releases
    /// each wave's targets in chunks as the wave opens.
    pub(super) fn create_deployment(
        &self,
        kind: DeploymentKind,
        bundle: &BundleRecord,
        target_ids: &[String],
        mut rollout: Option<RolloutState>,
        now: Ts,
    ) -> Result<DeploymentRecord> {
        if !self.bundles.contains_key(bundle.id.as_bytes())? {
            return Err(StoreError::Invalid(format!(
                "bundle {} no longer exists",
                bundle.version
            )));
        }
        // Every named device must exist and be accepted now (a 400 names the first
        // that is not); concurrent changes are handled chunk by chunk below.
        for device_id in target_ids {
            match get::<DeviceRecord>(&self.devices, device_id)? {
                Some(d) if d.admission == Admission::Accepted => {}
                Some(_) => {
                    return Err(StoreError::Invalid(format!(
                        "device {device_id} is not accepted"
                    )));
                }
                None => return Err(StoreError::Invalid(format!("no device {device_id:?}"))),
            }
        }
        let id = new_id();
        let mut written = Vec::with_capacity(target_ids.len());
        let mut written_waves = Vec::new();
        for (i, chunk) in target_ids.chunks(CREATE_CHUNK).enumerate() {
            let waves: Option<Vec<(u32, u64)>> = rollout.as_ref().map(|r| {
                (0..chunk.len())
                    .map(|j| {
                        let pos = (i * CREATE_CHUNK + j) as u64;
                        (rollout::wave_of(r, pos), pos)
                    })
                    .collect()
            });
            let (ids, ws) = self.write_targets(&id, bundle, chunk, waves.as_deref(), now)?;
            written.extend(ids);
            written_waves.extend(ws);
        }
        if written.is_empty() {
            return Err(StoreError::Invalid(
                "none of the target devices is accepted any more".into(),
            ));
        }
        if let Some(r) = rollout.as_mut() {
            rollout::recount(r, &written_waves);
        }
        let waiting = rollout.is_some();
        let mut dep = DeploymentRecord::new(
            id,
            kind,
            bundle,
            written.len() as u64,
            rollout,
            !waiting,
            now,
        );
        (
            &self.deployments,
            &self.bundle_open,
            &self.bundles,
            &self.counters,
            &self.rollouts_active,
        )
            .transaction(|(deployments, bundle_open, bundles, counters, active)| {
                if bundles.get(bundle.id.as_bytes())?.is_none() {
                    return abort(StoreError::Invalid(format!(
                        "bundle {} no longer exists",
                        bundle.version
                    )));
                }
                tx_put(deployments, &dep.id, &dep)?;
                tx_deployment(counters, None, dep.status)?;
                let n = tx_get::<u64>(bundle_open, &bundle.id)?.unwrap_or(0);
                tx_put(bundle_open, &bundle.id, &(n + 1))?;
                if waiting {
                    active.insert(dep.id.as_bytes(), &[])?;
                }
                Ok(())
            })
            .map_err(tx_err)?;
        if waiting {
            return Ok(dep);
        }
        for chunk in written.chunks(CREATE_CHUNK) {
            if let Some(changed) = self.index_targets(&dep.id, chunk, now)? {
                dep = changed;
            }
        }
        self.finish_indexing_mark(&dep.id)
    }

    /// Step 1 of a creation: the target records of one chunk (`waiting` in their wave
    /// when `waves` gives each device's); the devices written, and their waves.
    fn write_targets(
        &self,
        deployment_id: &str,
        bundle: &BundleRecord,
        device_ids: &[String],
        waves: Option<&[(u32, u64)]>,
        now: Ts,
    ) -> Result<(Vec<String>, Vec<u32>)> {
        (
            &self.targets,
            &self.device_bundles,
            &self.devices,
            &self.wave_targets,
        )
            .transaction(|(targets, device_bundles, devices, wave_targets)| {
                let mut written = Vec::with_capacity(device_ids.len());
                let mut written_waves = Vec::new();
                for (i, device_id) in device_ids.iter().enumerate() {
                    if !tx_get::<DeviceRecord>(devices, device_id)?
                        .is_some_and(|d| d.admission == Admission::Accepted)
                    {
                        continue;
                    }
                    let wave = waves.and_then(|w| w.get(i).copied());
                    let t = TargetRecord {
                        device_id: device_id.clone(),
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
                        wave: wave.map_or(0, |w| w.0),
                        released_at: None,
                        result_at: None,
                        soak_ok: None,
                    };
                    tx_put(targets, key2(deployment_id, device_id), &t)?;
                    device_bundles.insert(key2(device_id, &bundle.id), &[])?;
                    if let Some((w, pos)) = wave {
                        wave_targets.insert(wave_key(deployment_id, w, pos, device_id), &[])?;
                        written_waves.push(w);
                    }
                    written.push(device_id.clone());
                }
                Ok((written, written_waves))
            })
            .map_err(tx_err)
    }

    /// Step 3 of a creation: make one chunk of pending targets deliverable, or cancel
    /// those whose device is no longer accepted. The deployment when it changed.
    fn index_targets(
        &self,
        deployment_id: &str,
        device_ids: &[String],
        now: Ts,
    ) -> Result<Option<DeploymentRecord>> {
        (
            &self.deployments,
            &self.targets,
            &self.device_open,
            &self.bundle_open,
            &self.devices,
            &self.counters,
        )
            .transaction(
                |(deployments, targets, device_open, bundle_open, devices, counters)| {
                    let Some(mut dep) = tx_get::<DeploymentRecord>(deployments, deployment_id)?
                    else {
                        return Ok(None);
                    };
                    let before = dep.status;
                    let mut changed = false;
                    for device_id in device_ids {
                        let key = key2(deployment_id, device_id);
                        let Some(mut t) = tx_get::<TargetRecord>(targets, &key)? else {
                            continue;
                        };
                        if t.status != TargetStatus::Pending {
                            continue;
                        }
                        let accepted = tx_get::<DeviceRecord>(devices, device_id)?
                            .is_some_and(|d| d.admission == Admission::Accepted);
                        if accepted {
                            device_open.insert(key2(device_id, deployment_id), &[])?;
                        } else if rules::cancel_target(
                            &mut dep,
                            &mut t,
                            "device was rejected or deleted",
                            now,
                        ) {
                            tx_put(targets, &key, &t)?;
                            changed = true;
                        }
                    }
                    if !changed {
                        return Ok(None);
                    }
                    tx_store_deployment(deployments, bundle_open, counters, before, &dep)?;
                    Ok(Some(dep))
                },
            )
            .map_err(tx_err)
    }

    /// Clear a deployment's `indexing` mark; the record as stored.
    fn finish_indexing_mark(&self, deployment_id: &str) -> Result<DeploymentRecord> {
        self.deployments
            .transaction(|deployments| {
                let Some(mut dep) = tx_get::<DeploymentRecord>(deployments, deployment_id)? else {
                    return abort(StoreError::NotFound(format!(
                        "no deployment {deployment_id:?}"
                    )));
                };
                dep.indexing = false;
                tx_put(deployments, deployment_id, &dep)?;
                Ok(dep)
            })
            .map_err(tx_err)
    }

    /// At start: finish step 3 for deployments a crash interrupted while indexing.
    pub(super) fn finish_indexing(&self, now: Ts) -> Result<()> {
        let unfinished: Vec<DeploymentRecord> = self
            .deployments
            .iter()
            .values()
            .map(|v| dec::<DeploymentRecord>(&v?))
            .filter(|d| !d.as_ref().is_ok_and(|d| !d.indexing))
            .collect::<Result<_>>()?;
        for dep in unfinished {
            let all = TargetFilter {
                status: Some(TargetStatus::Pending),
                after: None,
                limit: usize::MAX,
            };
            let pending: Vec<String> = self
                .deployment_targets(&dep.id, &all)?
                .into_iter()
                .map(|t| t.device_id)
                .collect();
            for chunk in pending.chunks(CREATE_CHUNK) {
                self.index_targets(&dep.id, chunk, now)?;
            }
            self.finish_indexing_mark(&dep.id)?;
            tracing::warn!(deployment.id = %dep.id, "finished indexing a deployment interrupted by a crash");
        }
        Ok(())
    }

    pub(super) fn deployment(&self, id: &str) -> Result<DeploymentRecord> {
        get(&self.deployments, id)?
            .ok_or_else(|| StoreError::NotFound(format!("no deployment {id:?}")))
    }

    /// One page of the deployment's targets in device-id order.
    pub(super) fn deployment_targets(
        &self,
        id: &str,
        f: &TargetFilter,
    ) -> Result<Vec<TargetRecord>> {
        let start = match &f.after {
            Some(after) => Bound::Excluded(key2(id, after)),
            None => Bound::Included(prefix(id)),
        };
        let mut out = Vec::new();
        for v in self
            .targets
            .range((start, Bound::Excluded(prefix_end(id))))
            .values()
        {
            if out.len() >= f.limit {
                break;
            }
            let t: TargetRecord = dec(&v?)?;
            if f.status.is_none_or(|s| t.status == s) {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Newest first, optionally only those with `status`.
    pub(super) fn list_deployments(
        &self,
        status: Option<DeploymentStatus>,
        limit: usize,
    ) -> Result<Vec<DeploymentRecord>> {
        let mut out = Vec::new();
        for v in self.deployments.iter().values().rev() {
            if out.len() >= limit {
                break;
            }
            let d: DeploymentRecord = dec(&v?)?;
            if status.is_none_or(|s| d.status == s) {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Cancel the pending targets among the next `chunk` targets after `after`, in one
    /// transaction.
    pub(super) fn cancel_deployment_step(
        &self,
        id: &str,
        after: Option<&str>,
        chunk: usize,
        reason: &str,
        now: Ts,
    ) -> Result<CancelStep> {
        self.deployment(id)?;
        // Read the chunk outside the transaction (a scan inside would hold the store's
        // lock for its whole length); the transaction re-checks each target.
        let page = TargetFilter {
            status: None,
            after: after.map(str::to_owned),
            limit: chunk.max(1),
        };
        let page = self.deployment_targets(id, &page)?;
        let next = (page.len() == chunk.max(1))
            .then(|| page.last().map(|t| t.device_id.clone()))
            .flatten();
        let undelivered =
            |s: TargetStatus| matches!(s, TargetStatus::Pending | TargetStatus::Waiting);
        let pending: Vec<String> = page
            .into_iter()
            .filter(|t| undelivered(t.status))
            .map(|t| t.device_id)
            .collect();
        let (deployment, cancelled) = (
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
                    let mut cancelled = Vec::new();
                    for device_id in &pending {
                        let key = key2(id, device_id);
                        let Some(mut t) = tx_get::<TargetRecord>(targets, &key)? else {
                            continue;
                        };
                        if !undelivered(t.status)
                            || !rules::cancel_target(&mut dep, &mut t, reason, now)
                        {
                            continue;
                        }
                        tx_put(targets, &key, &t)?;
                        device_open.remove(key2(device_id, id))?;
                        cancelled.push(device_id.clone());
                    }
                    tx_store_deployment(deployments, bundle_open, counters, before, &dep)?;
                    Ok((dep, cancelled))
                },
            )
            .map_err(tx_err)?;
        Ok(CancelStep {
            deployment,
            cancelled,
            next,
        })
    }

    /// This device's unfinished deployments (its own `device_open` prefix).
    pub(super) fn open_deployment_ids(&self, device_id: &str) -> Result<Vec<String>> {
        self.device_open
            .scan_prefix(prefix(device_id))
            .keys()
            .map(|k| Ok(second(&k?)))
            .collect()
    }

    /// Cancel this device's unfinished targets (it was rejected or deleted).
    pub(super) fn cancel_device_targets(
        &self,
        device_id: &str,
        reason: &str,
        now: Ts,
    ) -> Result<Vec<DeploymentRecord>> {
        let mut changed = Vec::new();
        for dep_id in self.open_deployment_ids(device_id)? {
            let dep = (
                &self.deployments,
                &self.targets,
                &self.device_open,
                &self.bundle_open,
                &self.counters,
            )
                .transaction(
                    |(deployments, targets, device_open, bundle_open, counters)| {
                        let trees = OpenTrees {
                            deployments,
                            targets,
                            device_open,
                            bundle_open,
                            counters,
                        };
                        tx_cancel_target(&trees, &dep_id, device_id, reason, now)
                    },
                )
                .map_err(tx_err)?;
            changed.extend(dep);
        }
        Ok(changed)
    }

    /// Record a device's progress on its target. `Forbidden` when it is not a target.
    pub(super) fn record_progress(
        &self,
        deployment_id: &str,
        p: &ProgressReport,
        now: Ts,
    ) -> Result<TargetRecord> {
        let key = key2(deployment_id, &p.device_id);
        self.targets
            .transaction(|targets| {
                let Some(mut t) = tx_get::<TargetRecord>(targets, &key)? else {
                    return abort(StoreError::Forbidden(
                        "this device is not a target of the deployment".into(),
                    ));
                };
                if !t.status.is_final() {
                    t.phase = Some(p.phase);
                    t.progress_pct = Some(p.progress_pct);
                    t.updated_at = now;
                    tx_put(targets, &key, &t)?;
                }
                Ok(t)
            })
            .map_err(tx_err)
    }

    /// Apply a device's final result: the target, deployment, history, device and
    /// report index change together, as [`rules::apply_result`] says.
    pub(super) fn apply_result(
        &self,
        deployment_id: &str,
        r: &ResultReport,
        now: Ts,
    ) -> Result<ResultOutcome> {
        let device_id = r.device_id.as_str();
        let tkey = key2(deployment_id, device_id);
        let outcome = (
            &self.reports,
            &self.targets,
            &self.deployments,
            &self.device_open,
            &self.bundle_open,
            &self.history,
            &self.device_success,
            &self.devices,
            &self.counters,
        )
            .transaction(
                |(
                    reports,
                    targets,
                    deployments,
                    device_open,
                    bundle_open,
                    history,
                    device_success,
                    devices,
                    counters,
                )| {
                    let Some(mut t) = tx_get::<TargetRecord>(targets, &tkey)? else {
                        return abort(StoreError::Forbidden(
                            "this device is not a target of the deployment".into(),
                        ));
                    };
                    let seen = reports
                        .get(r.report_id.as_bytes())?
                        .map(|v| (first(&v), second(&v)));
                    let seen = seen.as_ref().map(|(d, v)| (d.as_str(), v.as_str()));
                    match rules::decide_result(&t, seen, deployment_id) {
                        Err(e) => return abort(e),
                        Ok(ResultDecision::Repeat) => return Ok(Err(t)),
                        Ok(ResultDecision::Apply) => {}
                    }
                    let Some(mut dep) = tx_get::<DeploymentRecord>(deployments, deployment_id)?
                    else {
                        return abort(StoreError::NotFound(format!(
                            "no deployment {deployment_id:?}"
                        )));
                    };
                    let Some(mut device) = tx_get::<DeviceRecord>(devices, device_id)? else {
                        return abort(StoreError::NotFound(format!("no device {device_id:?}")));
                    };
                    let before = dep.status;
                    let record = rules::apply_result(&mut dep, &mut t, &mut device, r, now);
                    if r.status == ResultStatus::Success {
                        device_success.insert(key2(device_id, &dep.bundle_version), &[])?;
                    }
                    reports.insert(r.report_id.as_bytes(), tkey.as_slice())?;
                    tx_put(targets, &tkey, &t)?;
                    device_open.remove(key2(device_id, deployment_id))?;
                    tx_put(history, key2(device_id, &record.id), &record)?;
                    tx_put(devices, device_id, &device)?;
                    // A late result after a timeout may find the deployment final already.
                    tx_store_deployment(deployments, bundle_open, counters, before, &dep)?;
                    Ok(Ok((dep, t, record, device)))
                },
            )
            .map_err(tx_err)?;
        Ok(match outcome {
            Ok((deployment, target, history, record)) => ResultOutcome::Applied {
                deployment,
                target,
                history,
                device: self.with_live_record(record)?,
            },
            Err(target) => ResultOutcome::Repeat { target },
        })
    }

    fn with_live_record(&self, record: DeviceRecord) -> Result<Device> {
        let live = self.live_record(&record.device_id)?;
        Ok(Device { record, live })
    }
}

/// The trees a target cancellation writes, inside a transaction.
pub(super) struct OpenTrees<'a> {
    pub deployments: &'a TransactionalTree,
    pub targets: &'a TransactionalTree,
    pub device_open: &'a TransactionalTree,
    pub bundle_open: &'a TransactionalTree,
    pub counters: &'a TransactionalTree,
}

/// Cancel one device's target in one deployment if it is unfinished; returns the
/// deployment when it changed.
pub(super) fn tx_cancel_target(
    t: &OpenTrees<'_>,
    dep_id: &str,
    device_id: &str,
    reason: &str,
    now: Ts,
) -> TxResult<Option<DeploymentRecord>> {
    t.device_open.remove(key2(device_id, dep_id))?;
    let key = key2(dep_id, device_id);
    let Some(mut target) = tx_get::<TargetRecord>(t.targets, &key)? else {
        return Ok(None);
    };
    let Some(mut dep) = tx_get::<DeploymentRecord>(t.deployments, dep_id)? else {
        return Ok(None);
    };
    let before = dep.status;
    if !rules::cancel_target(&mut dep, &mut target, reason, now) {
        return Ok(None);
    }
    tx_put(t.targets, &key, &target)?;
    tx_store_deployment(t.deployments, t.bundle_open, t.counters, before, &dep)?;
    Ok(Some(dep))
}

/// Store a deployment changed inside a transaction: its record, the per-status
/// counters, and one user fewer for its bundle once it became final.
pub(super) fn tx_store_deployment(
    deployments: &TransactionalTree,
    bundle_open: &TransactionalTree,
    counters: &TransactionalTree,
    before: DeploymentStatus,
    dep: &DeploymentRecord,
) -> TxResult<()> {
    if !before.is_final() && dep.status.is_final() {
        tx_release_bundle(bundle_open, &dep.bundle_id)?;
    }
    tx_put(deployments, &dep.id, dep)?;
    tx_deployment(counters, Some(before), dep.status)
}

/// One unfinished deployment of this bundle fewer.
fn tx_release_bundle(open: &TransactionalTree, bundle_id: &str) -> TxResult<()> {
    match tx_get::<u64>(open, bundle_id)?.unwrap_or(0) {
        0 | 1 => {
            open.remove(bundle_id.as_bytes())?;
        }
        n => tx_put(open, bundle_id, &(n - 1))?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use kernex_common::manifest::{Manifest, ScriptSpec};

    use super::*;

    use super::super::test_support::{device, reopen};

    fn bundle(now: Ts) -> BundleRecord {
        BundleRecord {
            id: new_id(),
            name: "app".into(),
            version: "1.0.0".into(),
            checksum_sha256: "0".repeat(64),
            size_bytes: 1,
            manifest: Manifest {
                name: "app".into(),
                version: "1.0.0".into(),
                description: None,
                deploy: ScriptSpec {
                    script: "deploy.sh".into(),
                    timeout_s: None,
                },
                rollback: None,
                health: None,
            },
            created_at: now,
        }
    }

    /// A crash after a deployment's record committed but before all its targets were
    /// made deliverable is finished at the next start: every target is delivered, the
    /// deployment can complete.
    #[test]
    fn a_start_finishes_indexing_a_deployment_a_crash_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let now = chrono::Utc::now();
        let (ids, dep_id) = {
            let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
            let ids: Vec<String> = (0..600).map(|i| device(&store, i, now)).collect();
            let b = bundle(now);
            store.insert_bundle(&b).unwrap();
            // Steps 1 and 2 of a creation, then the "crash": one chunk indexed only.
            let dep_id = new_id();
            let written = store.write_targets(&dep_id, &b, &ids, None, now).unwrap().0;
            assert_eq!(written.len(), 600);
            let dep = DeploymentRecord {
                id: dep_id.clone(),
                kind: DeploymentKind::Deploy,
                bundle_id: b.id.clone(),
                bundle_version: b.version.clone(),
                checksum_sha256: b.checksum_sha256.clone(),
                size_bytes: 1,
                status: DeploymentStatus::Pending,
                created_at: now,
                updated_at: now,
                completed_at: None,
                counts: kernex_common::api::Counts {
                    pending: 600,
                    ..Default::default()
                },
                indexing: true,
                rollout: None,
            };
            store
                .deployments
                .insert(dep_id.as_bytes(), serde_json::to_vec(&dep).unwrap())
                .unwrap();
            store.index_targets(&dep_id, &ids[..100], now).unwrap();
            assert!(store.open_targets(&ids[599]).unwrap().is_empty());
            store.flush_blocking().unwrap();
            (ids, dep_id)
        };
        let store = reopen(dir.path());
        for id in [&ids[0], &ids[100], &ids[599]] {
            let open = store.open_targets(id).unwrap();
            assert_eq!(open.len(), 1, "{id}");
            assert_eq!(open[0].0.id, dep_id);
        }
        assert!(!store.deployment(&dep_id).unwrap().indexing);
    }

    /// A creation leaves out a device rejected before its chunk was written, and a
    /// creation whose every device went away is refused.
    #[test]
    fn creation_checks_devices_chunk_by_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
        let now = chrono::Utc::now();
        let ids: Vec<String> = (0..3).map(|i| device(&store, i, now)).collect();
        let b = bundle(now);
        store.insert_bundle(&b).unwrap();
        store
            .set_admission(&ids[1], Admission::Rejected, now)
            .unwrap();
        // The up-front check names the rejected device.
        let err = store
            .create_deployment(DeploymentKind::Deploy, &b, &ids, None, now)
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err}");
        // Past that check (as if it was rejected meanwhile), its chunk leaves it out.
        let written = store.write_targets("d", &b, &ids, None, now).unwrap().0;
        assert_eq!(written, [ids[0].clone(), ids[2].clone()]);
        let dep = store
            .create_deployment(DeploymentKind::Deploy, &b, &[ids[0].clone()], None, now)
            .unwrap();
        assert_eq!(dep.counts.pending, 1);
        assert!(!dep.indexing);
    }
}
