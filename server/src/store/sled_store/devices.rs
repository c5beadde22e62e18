//! Devices on sled: registration, listing, tags, admission, deletion, and what the
//! heartbeat service reads (the work snapshot, a device's open targets, delivery).

use std::ops::Bound;

use kernex_common::api::{Admission, TargetStatus};

use super::counters::{tx_admission, tx_admission_count};
use super::deployments::{OpenTrees, tx_cancel_target};
use super::*;
use crate::service::rules;

impl SledStore {
    /// Store a verified registration (SPEC §1.2). The replay check, the admission rule
    /// and the token swap commit together.
    pub(super) fn register(&self, reg: &NewRegistration) -> Result<RegisterOutcome> {
        let outcome = (
            &self.devices,
            &self.device_keys,
            &self.tokens,
            &self.device_tokens,
            &self.registrations,
            &self.registration_expiry,
            &self.device_pending,
            &self.counters,
        )
            .transaction(
                |(
                    devices,
                    keys,
                    tokens,
                    device_tokens,
                    registrations,
                    expiry,
                    pending,
                    counters,
                )| {
                    if registrations.get(reg.signature_hash.as_bytes())?.is_some() {
                        return abort(StoreError::Unauthorized(
                            "this registration request was already used; sign a new one".into(),
                        ));
                    }
                    tx_put(registrations, &reg.signature_hash, &reg.replay_until)?;
                    expiry.insert(expiry_key(reg.replay_until, &reg.signature_hash), &[])?;
                    // From here a refusal commits: the signature stays burned.
                    if let Some(why) = &reg.refusal {
                        return Ok(Err(StoreError::Unauthorized(why.clone())));
                    }

                    let existing = match keys.get(reg.fingerprint.as_bytes())? {
                        Some(id) => tx_get::<DeviceRecord>(devices, &id)?,
                        None => None,
                    };
                    let admission = match rules::admit(existing.as_ref(), reg.admission) {
                        Ok(a) => a,
                        Err(e) => return Ok(Err(e)),
                    };
                    let before = existing.as_ref().map(|d| d.admission);
                    let created = existing.is_none();
                    if let Some(max) = reg.max_pending
                        && created
                        && admission == Admission::Pending
                        && tx_admission_count(counters, Admission::Pending)? >= max
                    {
                        return Ok(Err(StoreError::Unavailable(format!(
                            "{max} devices are already waiting for an operator's accept \
                             (--max-pending); register with the enrollment token or try later"
                        ))));
                    }
                    let mut device = match existing {
                        Some(d) => {
                            if let Some(old) = device_tokens.get(d.device_id.as_bytes())? {
                                tokens.remove(old)?;
                            }
                            d
                        }
                        None => {
                            let d = new_device(reg);
                            keys.insert(reg.fingerprint.as_bytes(), d.device_id.as_bytes())?;
                            d
                        }
                    };
                    device.admission = admission;
                    device.device_type = reg.device_type.clone();
                    device.hardware_metadata = reg.hardware_metadata.clone();
                    tx_put(devices, &device.device_id, &device)?;
                    tx_put(
                        tokens,
                        &reg.token_hash,
                        &Principal::Device {
                            device_id: device.device_id.clone(),
                        },
                    )?;
                    device_tokens.insert(device.device_id.as_bytes(), reg.token_hash.as_bytes())?;
                    tx_pending(pending, &device.device_id, admission)?;
                    tx_admission(counters, before, Some(admission))?;
                    Ok(Ok((device, created)))
                },
            )
            .map_err(tx_err)?;
        self.prune_registrations(reg.now)?;
        let (record, created) = outcome?;
        if !created {
            // The device's earlier token was revoked.
            self.token_cache.invalidate();
        }
        let live = self.live_record(&record.device_id)?;
        Ok(RegisterOutcome {
            device: Device { record, live },
            created,
        })
    }

    /// Forget replay-window entries that have expired: a range read over the expiry
    /// index touches only those, however many registrations are remembered.
    fn prune_registrations(&self, now: Ts) -> Result<()> {
        let end = expiry_key(now, "");
        for key in self.registration_expiry.range(..end).keys() {
            let key = key?;
            self.registrations.remove(&key[8..])?;
            self.registration_expiry.remove(key)?;
        }
        Ok(())
    }

    pub(super) fn device(&self, device_id: &str) -> Result<Device> {
        let record: DeviceRecord = get(&self.devices, device_id)?
            .ok_or_else(|| StoreError::NotFound(format!("no device {device_id:?}")))?;
        let live = self.live_record(device_id)?;
        Ok(Device { record, live })
    }

    fn with_live(&self, record: DeviceRecord) -> Result<Device> {
        let live = self.live_record(&record.device_id)?;
        Ok(Device { record, live })
    }

    /// One page of devices ordered by id, after the cursor, matching the filter.
    pub(super) fn list_devices(&self, f: &DeviceFilter, now: Ts) -> Result<Vec<Device>> {
        let keep = |d: &Device| {
            f.admission.is_none_or(|a| d.admission() == a)
                && f.status.is_none_or(|s| d.online_status(now) == s)
        };
        let mut out = Vec::new();
        if let Some(tag) = &f.tag {
            let start = match &f.after {
                Some(after) => Bound::Excluded(key2(tag, after)),
                None => Bound::Included(prefix(tag)),
            };
            let end = Bound::Excluded(prefix_end(tag));
            for key in self.device_tags.range((start, end)).keys() {
                if out.len() >= f.limit {
                    break;
                }
                if let Some(record) = get::<DeviceRecord>(&self.devices, second(&key?))? {
                    let d = self.with_live(record)?;
                    if keep(&d) {
                        out.push(d);
                    }
                }
            }
        } else {
            let start = match &f.after {
                Some(after) => Bound::Excluded(after.as_bytes().to_vec()),
                None => Bound::Unbounded,
            };
            for value in self
                .devices
                .range::<Vec<u8>, _>((start, Bound::Unbounded))
                .values()
            {
                if out.len() >= f.limit {
                    break;
                }
                let d = self.with_live(dec(&value?)?)?;
                if keep(&d) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Accepted devices carrying any of `tags`, deduplicated, in id order.
    pub(super) fn accepted_devices_with_tags(&self, tags: &[String]) -> Result<Vec<String>> {
        let mut ids = std::collections::BTreeSet::new();
        for tag in tags {
            for key in self.device_tags.scan_prefix(prefix(tag)).keys() {
                ids.insert(second(&key?));
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if get::<DeviceRecord>(&self.devices, &id)?
                .is_some_and(|d| d.admission == Admission::Accepted)
            {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Replace a device's tags (already validated).
    pub(super) fn set_tags(&self, device_id: &str, tags: &[String]) -> Result<Device> {
        let record = (&self.devices, &self.device_tags)
            .transaction(|(devices, index)| {
                let Some(mut d) = tx_get::<DeviceRecord>(devices, device_id)? else {
                    return abort(StoreError::NotFound(format!("no device {device_id:?}")));
                };
                for old in &d.tags {
                    index.remove(key2(old, device_id))?;
                }
                for new in tags {
                    index.insert(key2(new, device_id), &[])?;
                }
                d.tags = tags.to_vec();
                tx_put(devices, device_id, &d)?;
                Ok(d)
            })
            .map_err(tx_err)?;
        self.with_live(record)
    }

    /// Set admission. Rejecting revokes the device's token and cancels its unfinished
    /// deployment targets (it will never report them) in the same transaction.
    pub(super) fn set_admission(
        &self,
        device_id: &str,
        admission: Admission,
        now: Ts,
    ) -> Result<(Device, Vec<DeploymentRecord>)> {
        let reject = admission == Admission::Rejected;
        let open = if reject {
            self.open_deployment_ids(device_id)?
        } else {
            Vec::new()
        };
        let (record, mut changed) = (
            &self.devices,
            &self.tokens,
            &self.device_tokens,
            &self.device_pending,
            &self.counters,
            &self.deployments,
            &self.targets,
            &self.device_open,
            &self.bundle_open,
        )
            .transaction(
                |(
                    devices,
                    tokens,
                    device_tokens,
                    pending,
                    counters,
                    deployments,
                    targets,
                    device_open,
                    bundle_open,
                )| {
                    let Some(mut d) = tx_get::<DeviceRecord>(devices, device_id)? else {
                        return abort(StoreError::NotFound(format!("no device {device_id:?}")));
                    };
                    tx_admission(counters, Some(d.admission), Some(admission))?;
                    d.admission = admission;
                    tx_pending(pending, device_id, admission)?;
                    let mut changed = Vec::new();
                    if reject {
                        if let Some(old) = device_tokens.remove(device_id.as_bytes())? {
                            tokens.remove(old)?;
                        }
                        let trees = OpenTrees {
                            deployments,
                            targets,
                            device_open,
                            bundle_open,
                            counters,
                        };
                        for dep_id in &open {
                            changed.extend(tx_cancel_target(
                                &trees,
                                dep_id,
                                device_id,
                                "device was rejected",
                                now,
                            )?);
                        }
                    }
                    tx_put(devices, device_id, &d)?;
                    Ok((d, changed))
                },
            )
            .map_err(tx_err)?;
        if reject {
            self.token_cache.invalidate();
            // A deployment committed between the scan and the transaction; none can
            // start after it (targets must be accepted, checked transactionally).
            changed.extend(self.cancel_device_targets(device_id, "device was rejected", now)?);
        }
        Ok((self.with_live(record)?, changed))
    }

    /// Delete a device, its tokens, tags, config, heartbeats and indexes, and cancel its
    /// unfinished deployment targets in the same transaction. Its history records go
    /// too; deployments keep its (cancelled) target entries.
    pub(super) fn delete_device(&self, device_id: &str, now: Ts) -> Result<Vec<DeploymentRecord>> {
        let open = self.open_deployment_ids(device_id)?;
        let mut changed = (
            &self.devices,
            &self.device_keys,
            &self.device_tags,
            &self.device_pending,
            &self.tokens,
            &self.device_tokens,
            &self.configs,
            &self.counters,
            &self.deployments,
            &self.targets,
            &self.device_open,
            &self.bundle_open,
        )
            .transaction(
                |(
                    devices,
                    keys,
                    tags,
                    pending,
                    tokens,
                    device_tokens,
                    configs,
                    counters,
                    deployments,
                    targets,
                    device_open,
                    bundle_open,
                )| {
                    let Some(d) = tx_get::<DeviceRecord>(devices, device_id)? else {
                        return abort(StoreError::NotFound(format!("no device {device_id:?}")));
                    };
                    devices.remove(device_id.as_bytes())?;
                    keys.remove(d.fingerprint.as_bytes())?;
                    pending.remove(device_id.as_bytes())?;
                    tx_admission(counters, Some(d.admission), None)?;
                    for tag in &d.tags {
                        tags.remove(key2(tag, device_id))?;
                    }
                    if let Some(old) = device_tokens.remove(device_id.as_bytes())? {
                        tokens.remove(old)?;
                    }
                    configs.remove(device_id.as_bytes())?;
                    let trees = OpenTrees {
                        deployments,
                        targets,
                        device_open,
                        bundle_open,
                        counters,
                    };
                    let mut changed = Vec::new();
                    for dep_id in &open {
                        changed.extend(tx_cancel_target(
                            &trees,
                            dep_id,
                            device_id,
                            "device was deleted",
                            now,
                        )?);
                    }
                    Ok(changed)
                },
            )
            .map_err(tx_err)?;
        self.token_cache.invalidate();
        changed.extend(self.cancel_device_targets(device_id, "device was deleted", now)?);
        self.forget_beats(device_id)?;
        for tree in [&self.history, &self.device_success, &self.device_bundles] {
            for key in tree.scan_prefix(prefix(device_id)).keys() {
                tree.remove(key?)?;
            }
        }
        Ok(changed)
    }

    /// What the work index is rebuilt from: devices with unfinished targets, pending
    /// devices, and every stored config. Reads three indexes, never every device.
    pub(super) fn work_snapshot(&self) -> Result<WorkSnapshot> {
        let mut open: Vec<String> = Vec::new();
        for key in self.device_open.iter().keys() {
            let id = first(&key?);
            if open.last() != Some(&id) {
                open.push(id);
            }
        }
        let pending = self
            .device_pending
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect::<Result<_>>()?;
        let configs = self
            .configs
            .iter()
            .values()
            .map(|v| dec(&v?))
            .collect::<Result<_>>()?;
        Ok(WorkSnapshot {
            open,
            pending,
            configs,
        })
    }

    /// This device's unfinished targets, oldest deployment first (ids are time-ordered).
    pub(super) fn open_targets(
        &self,
        device_id: &str,
    ) -> Result<Vec<(DeploymentRecord, TargetStatus)>> {
        let mut out = Vec::new();
        for dep_id in self.open_deployment_ids(device_id)? {
            let target = get::<TargetRecord>(&self.targets, key2(&dep_id, device_id))?;
            let dep = get::<DeploymentRecord>(&self.deployments, &dep_id)?;
            if let (Some(t), Some(dep)) = (target, dep)
                && !t.status.is_final()
            {
                out.push((dep, t.status));
            }
        }
        Ok(out)
    }

    /// Move a pending target to `in_progress`; the deployment when this call moved it.
    pub(super) fn deliver(
        &self,
        deployment_id: &str,
        device_id: &str,
        now: Ts,
    ) -> Result<Option<DeploymentRecord>> {
        let tkey = key2(deployment_id, device_id);
        (&self.targets, &self.deployments, &self.counters)
            .transaction(|(targets, deployments, counters)| {
                let Some(mut t) = tx_get::<TargetRecord>(targets, &tkey)? else {
                    return Ok(None);
                };
                let Some(mut dep) = tx_get::<DeploymentRecord>(deployments, deployment_id)? else {
                    return Ok(None);
                };
                let before = dep.status;
                if !rules::deliver(&mut dep, &mut t, now) {
                    return Ok(None);
                }
                tx_put(targets, &tkey, &t)?;
                tx_put(deployments, deployment_id, &dep)?;
                super::counters::tx_deployment(counters, Some(before), dep.status)?;
                Ok(Some(dep))
            })
            .map_err(tx_err)
    }
}

fn new_device(reg: &NewRegistration) -> DeviceRecord {
    DeviceRecord {
        device_id: new_id(),
        device_type: reg.device_type.clone(),
        admission: reg.admission,
        tags: Vec::new(),
        public_key_pem: reg.public_key_pem.clone(),
        fingerprint: reg.fingerprint.clone(),
        hardware_metadata: reg.hardware_metadata.clone(),
        registered_at: reg.now,
        polling_interval: kernex_common::api::DeviceConfig::DEFAULT_POLLING_INTERVAL,
        current_bundle_version: None,
        version_set_at: None,
        last_deployment: None,
    }
}

/// Keep the `device_pending` index in step with a device's admission.
fn tx_pending(tree: &TransactionalTree, device_id: &str, admission: Admission) -> TxResult<()> {
    if admission == Admission::Pending {
        tree.insert(device_id.as_bytes(), &[])?;
    } else {
        tree.remove(device_id.as_bytes())?;
    }
    Ok(())
}

/// `expiry (ms since the epoch, u64 BE) ‖ signature hash`: sorts by expiry.
pub(super) fn expiry_key(until: Ts, signature_hash: &str) -> Vec<u8> {
    let ms = u64::try_from(until.timestamp_millis()).unwrap_or(0);
    let mut k = ms.to_be_bytes().to_vec();
    k.extend_from_slice(signature_hash.as_bytes());
    k
}
