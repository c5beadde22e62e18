//! Deployments, their per-device targets, results and bundle history.

use kernex_common::api::{
    Admission, DeploymentKind, HistoryRecord, ProgressReport, ResultReport, ResultStatus,
    TargetStatus,
};
use sled::Transactional;

use super::*;

/// What a result report did.
#[derive(Debug, Clone)]
// Built once per result request and consumed at once; boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum ResultOutcome {
    /// The first final result for this target: everything was updated.
    Applied {
        deployment: DeploymentRecord,
        target: TargetRecord,
        history: HistoryRecord,
        device: DeviceRecord,
    },
    /// A repeat (same `report_id`) or a late result after the first: nothing changed.
    Repeat { target: TargetRecord },
}

impl Store {
    /// Create a deployment of `bundle` to `target_ids`. Every target must exist and be
    /// accepted *inside* the transaction, so a device deleted or rejected concurrently
    /// can never end up as a target nobody will ever report for.
    pub fn create_deployment(
        &self,
        kind: DeploymentKind,
        bundle: &BundleRecord,
        target_ids: &[String],
        now: Ts,
    ) -> Result<DeploymentRecord> {
        let dep = DeploymentRecord {
            id: new_id(),
            kind,
            bundle_id: bundle.id.clone(),
            bundle_version: bundle.version.clone(),
            checksum_sha256: bundle.checksum_sha256.clone(),
            size_bytes: bundle.size_bytes,
            status: TargetStatus::Pending,
            created_at: now,
            updated_at: now,
            completed_at: None,
            counts: kernex_common::api::Counts {
                pending: target_ids.len() as u64,
                ..Default::default()
            },
        };
        (
            &self.deployments,
            &self.targets,
            &self.device_open,
            &self.bundle_open,
            &self.device_bundles,
            &self.bundles,
            &self.devices,
        )
            .transaction(
                |(
                    deployments,
                    targets,
                    device_open,
                    bundle_open,
                    device_bundles,
                    bundles,
                    devices,
                )| {
                    if bundles.get(bundle.id.as_bytes())?.is_none() {
                        return abort(StoreError::Invalid(format!(
                            "bundle {} no longer exists",
                            bundle.version
                        )));
                    }
                    tx_put(deployments, &dep.id, &dep)?;
                    for device_id in target_ids {
                        match tx_get::<DeviceRecord>(devices, device_id)? {
                            Some(d) if d.admission == Admission::Accepted => {}
                            Some(_) => {
                                return abort(StoreError::Invalid(format!(
                                    "device {device_id} is not accepted"
                                )));
                            }
                            None => {
                                return abort(StoreError::Invalid(format!(
                                    "no device {device_id:?}"
                                )));
                            }
                        }
                        let t = TargetRecord {
                            device_id: device_id.clone(),
                            status: TargetStatus::Pending,
                            phase: None,
                            progress_pct: None,
                            error_message: None,
                            log_tail: None,
                            updated_at: now,
                            report_id: None,
                        };
                        tx_put(targets, key2(&dep.id, device_id), &t)?;
                        device_open.insert(key2(device_id, &dep.id), &[])?;
                        device_bundles.insert(key2(device_id, &bundle.id), &[])?;
                    }
                    let n = tx_get::<u64>(bundle_open, &bundle.id)?.unwrap_or(0);
                    tx_put(bundle_open, &bundle.id, &(n + 1))?;
                    Ok(())
                },
            )
            .map_err(tx_err)?;
        Ok(dep)
    }

    pub fn deployment(&self, id: &str) -> Result<DeploymentRecord> {
        get(&self.deployments, id)?
            .ok_or_else(|| StoreError::NotFound(format!("no deployment {id:?}")))
    }

    /// The deployment's targets in device-id order.
    pub fn deployment_targets(&self, id: &str) -> Result<Vec<TargetRecord>> {
        self.targets
            .scan_prefix(prefix(id))
            .values()
            .map(|v| dec(&v?))
            .collect()
    }

    /// Newest first, optionally only those with `status`.
    pub fn list_deployments(
        &self,
        status: Option<TargetStatus>,
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

    /// Cancel every target that has not received the deployment yet.
    pub fn cancel_deployment(&self, id: &str, now: Ts) -> Result<DeploymentRecord> {
        let pending: Vec<String> = self
            .deployment_targets(id)?
            .into_iter()
            .filter(|t| t.status == TargetStatus::Pending)
            .map(|t| t.device_id)
            .collect();
        (
            &self.deployments,
            &self.targets,
            &self.device_open,
            &self.bundle_open,
        )
            .transaction(|(deployments, targets, device_open, bundle_open)| {
                let Some(mut dep) = tx_get::<DeploymentRecord>(deployments, id)? else {
                    return abort(StoreError::NotFound(format!("no deployment {id:?}")));
                };
                let was_final = dep.status.is_final();
                for device_id in &pending {
                    let key = key2(id, device_id);
                    let Some(mut t) = tx_get::<TargetRecord>(targets, &key)? else {
                        continue;
                    };
                    if t.status != TargetStatus::Pending {
                        continue;
                    }
                    t.status = TargetStatus::Cancelled;
                    t.error_message = Some("cancelled by an operator".into());
                    t.updated_at = now;
                    tx_put(targets, &key, &t)?;
                    device_open.remove(key2(device_id, id))?;
                    dep.shift(TargetStatus::Pending, TargetStatus::Cancelled, now);
                }
                if !was_final && dep.status.is_final() {
                    tx_release_bundle(bundle_open, &dep.bundle_id)?;
                }
                tx_put(deployments, id, &dep)?;
                Ok(dep)
            })
            .map_err(tx_err)
    }

    /// This device's unfinished deployments (its own `device_open` prefix).
    pub(super) fn open_deployments(&self, device_id: &str) -> Result<Vec<String>> {
        self.device_open
            .scan_prefix(prefix(device_id))
            .keys()
            .map(|k| Ok(second(&k?)))
            .collect()
    }

    /// Cancel this device's unfinished targets (it was rejected or deleted).
    pub fn cancel_device_targets(
        &self,
        device_id: &str,
        reason: &str,
        now: Ts,
    ) -> Result<Vec<DeploymentRecord>> {
        let mut changed = Vec::new();
        for dep_id in self.open_deployments(device_id)? {
            let dep = (
                &self.deployments,
                &self.targets,
                &self.device_open,
                &self.bundle_open,
            )
                .transaction(|(deployments, targets, device_open, bundle_open)| {
                    let trees = OpenTrees {
                        deployments,
                        targets,
                        device_open,
                        bundle_open,
                    };
                    tx_cancel_target(&trees, &dep_id, device_id, reason, now)
                })
                .map_err(tx_err)?;
            changed.extend(dep);
        }
        Ok(changed)
    }

    /// Record a device's progress on its target. 403 when it is not a target.
    pub fn record_progress(
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

    /// Apply a device's final result (SPEC §1.5): idempotent by `report_id`, first result
    /// wins, and the target, deployment, history and device change together.
    pub fn apply_result(
        &self,
        deployment_id: &str,
        r: &ResultReport,
        now: Ts,
    ) -> Result<ResultOutcome> {
        let device_id = r.device_id.as_str();
        let tkey = key2(deployment_id, device_id);
        let report_value = tkey.clone();
        (
            &self.reports,
            &self.targets,
            &self.deployments,
            &self.device_open,
            &self.bundle_open,
            &self.history,
            &self.device_success,
            &self.devices,
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
                )| {
                    let Some(mut t) = tx_get::<TargetRecord>(targets, &tkey)? else {
                        return abort(StoreError::Forbidden(
                            "this device is not a target of the deployment".into(),
                        ));
                    };
                    if let Some(seen) = reports.get(r.report_id.as_bytes())? {
                        if seen.as_ref() != report_value.as_slice() {
                            return abort(StoreError::Invalid(
                                "report_id was already used for a different result".into(),
                            ));
                        }
                        return Ok(ResultOutcome::Repeat { target: t });
                    }
                    if t.status.is_final() {
                        return Ok(ResultOutcome::Repeat { target: t });
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
                    let to = match r.status {
                        ResultStatus::Success => TargetStatus::Success,
                        ResultStatus::Failed => TargetStatus::Failed,
                    };
                    dep.shift(t.status, to, now);
                    t.status = to;
                    t.error_message = r.error_message.clone();
                    t.log_tail = r.log_tail.clone();
                    t.report_id = Some(r.report_id.clone());
                    t.updated_at = now;
                    if to == TargetStatus::Success {
                        t.progress_pct = Some(100);
                    }
                    let record = HistoryRecord {
                        id: new_id(),
                        device_id: device_id.to_owned(),
                        deployment_id: deployment_id.to_owned(),
                        kind: dep.kind,
                        bundle_id: dep.bundle_id.clone(),
                        bundle_version: dep.bundle_version.clone(),
                        status: r.status,
                        error_message: r.error_message.clone(),
                        log_tail: r.log_tail.clone(),
                        rolled_back_to: r.rolled_back_to.clone(),
                        deployed_at: now,
                        duration_seconds: r.duration_seconds,
                    };
                    match (r.status, &r.rolled_back_to) {
                        (ResultStatus::Success, _) => {
                            device.current_bundle_version = Some(dep.bundle_version.clone());
                            device_success.insert(key2(device_id, &dep.bundle_version), &[])?;
                        }
                        (ResultStatus::Failed, Some(v)) => {
                            device.current_bundle_version = Some(v.clone())
                        }
                        (ResultStatus::Failed, None) => {}
                    }
                    reports.insert(r.report_id.as_bytes(), report_value.as_slice())?;
                    tx_put(targets, &tkey, &t)?;
                    device_open.remove(key2(device_id, deployment_id))?;
                    tx_put(history, key2(device_id, &record.id), &record)?;
                    tx_put(devices, device_id, &device)?;
                    if dep.status.is_final() {
                        tx_release_bundle(bundle_open, &dep.bundle_id)?;
                    }
                    tx_put(deployments, deployment_id, &dep)?;
                    Ok(ResultOutcome::Applied {
                        deployment: dep,
                        target: t,
                        history: record,
                        device,
                    })
                },
            )
            .map_err(tx_err)
    }

    /// Is this device a target of this deployment?
    pub fn is_target(&self, deployment_id: &str, device_id: &str) -> Result<bool> {
        Ok(self.targets.contains_key(key2(deployment_id, device_id))?)
    }

    /// Newest first, at most `limit`.
    pub fn history(&self, device_id: &str, limit: usize) -> Result<Vec<HistoryRecord>> {
        newest_first(&self.history, device_id, limit)
    }

    /// Did this device ever report `success` for this version?
    pub fn device_ran_version(&self, device_id: &str, version: &str) -> Result<bool> {
        Ok(self.device_success.contains_key(key2(device_id, version))?)
    }
}

/// The trees a target cancellation writes, inside a transaction.
pub(super) struct OpenTrees<'a> {
    pub deployments: &'a TransactionalTree,
    pub targets: &'a TransactionalTree,
    pub device_open: &'a TransactionalTree,
    pub bundle_open: &'a TransactionalTree,
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
    if target.status.is_final() {
        return Ok(None);
    }
    dep.shift(target.status, TargetStatus::Cancelled, now);
    target.status = TargetStatus::Cancelled;
    target.error_message = Some(reason.to_owned());
    target.updated_at = now;
    tx_put(t.targets, &key, &target)?;
    if dep.status.is_final() {
        tx_release_bundle(t.bundle_open, &dep.bundle_id)?;
    }
    tx_put(t.deployments, dep_id, &dep)?;
    Ok(Some(dep))
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
