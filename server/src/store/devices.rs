//! Devices: registration, heartbeats, listing, tags, admission.

use std::ops::Bound;

use kernex_common::api::{
    Admission, BundleCommand, Command, DeploymentKind, HeartbeatRecord, HeartbeatRequest,
    OnlineStatus, TargetStatus,
};
use serde_json::Value;
use sled::Transactional;

use super::deployments::{OpenTrees, tx_cancel_target};
use super::*;

/// A verified registration, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewRegistration {
    pub public_key_pem: String,
    pub fingerprint: String,
    pub device_type: String,
    pub hardware_metadata: Value,
    /// SHA-256 of the signature, remembered for the replay window.
    pub signature_hash: String,
    pub replay_until: Ts,
    /// Admission for a new key; an existing pending device is promoted when this is
    /// `Accepted` (it presented the enrollment token).
    pub admission: Admission,
    pub token_hash: String,
    pub now: Ts,
}

#[derive(Debug, Clone)]
pub struct RegisterOutcome {
    pub device: DeviceRecord,
    pub created: bool,
}

/// What a heartbeat changed and what the device must do.
#[derive(Debug, Clone)]
pub struct HeartbeatOutcome {
    pub device: DeviceRecord,
    pub commands: Vec<Command>,
    /// The deployment whose target moved to `in_progress` with this heartbeat.
    pub delivered: Option<DeploymentRecord>,
}

/// `GET /devices` query.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    pub after: Option<String>,
    pub limit: usize,
    pub tag: Option<String>,
    pub status: Option<OnlineStatus>,
    pub admission: Option<Admission>,
}

impl Store {
    /// Store a verified registration: a new device for a new key, or a fresh token for
    /// the device that already owns it. Refuses a replayed signature and rejected keys.
    pub fn register(&self, reg: &NewRegistration) -> Result<RegisterOutcome> {
        let outcome = (
            &self.devices,
            &self.device_keys,
            &self.tokens,
            &self.device_tokens,
            &self.registrations,
            &self.registration_expiry,
        )
            .transaction(
                |(devices, keys, tokens, device_tokens, registrations, expiry)| {
                    if registrations.get(reg.signature_hash.as_bytes())?.is_some() {
                        return abort(StoreError::Unauthorized(
                            "this registration request was already used; sign a new one".into(),
                        ));
                    }
                    tx_put(registrations, &reg.signature_hash, &reg.replay_until)?;
                    expiry.insert(expiry_key(reg.replay_until, &reg.signature_hash), &[])?;

                    let existing = match keys.get(reg.fingerprint.as_bytes())? {
                        Some(id) => tx_get::<DeviceRecord>(devices, &id)?,
                        None => None,
                    };
                    let (mut device, created) = match existing {
                        Some(d) if d.admission == Admission::Rejected => {
                            return abort(StoreError::Forbidden(format!(
                                "device {} was rejected by an operator",
                                d.device_id
                            )));
                        }
                        Some(mut d) => {
                            if d.admission == Admission::Pending
                                && reg.admission == Admission::Accepted
                            {
                                d.admission = Admission::Accepted;
                            }
                            if let Some(old) = device_tokens.get(d.device_id.as_bytes())? {
                                tokens.remove(old)?;
                            }
                            (d, false)
                        }
                        None => {
                            let d = DeviceRecord {
                                device_id: new_id(),
                                device_type: reg.device_type.clone(),
                                admission: reg.admission,
                                tags: Vec::new(),
                                public_key_pem: reg.public_key_pem.clone(),
                                fingerprint: reg.fingerprint.clone(),
                                hardware_metadata: reg.hardware_metadata.clone(),
                                registered_at: reg.now,
                                current_bundle_version: None,
                                agent_version: None,
                                agent_status: None,
                                last_heartbeat: None,
                                cpu_pct: None,
                                memory_mb: None,
                                config_version: None,
                                queued_reports: 0,
                                polling_interval:
                                    kernex_common::api::DeviceConfig::DEFAULT_POLLING_INTERVAL,
                                heartbeat_seq: 0,
                                heartbeat_oldest: 1,
                            };
                            keys.insert(reg.fingerprint.as_bytes(), d.device_id.as_bytes())?;
                            (d, true)
                        }
                    };
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
                    Ok(RegisterOutcome { device, created })
                },
            )
            .map_err(tx_err)?;
        self.prune_registrations(reg.now)?;
        Ok(outcome)
    }

    /// Forget replay-window entries that have expired: a range read over the expiry
    /// index touches only those, however many registrations are remembered.
    fn prune_registrations(&self, now: Ts) -> Result<()> {
        let end = expiry_key(now, "");
        let mut sigs = sled::Batch::default();
        let mut keys = sled::Batch::default();
        for key in self.registration_expiry.range(..end).keys() {
            let key = key?;
            sigs.remove(&key[8..]);
            keys.remove(key);
        }
        self.registrations.apply_batch(sigs)?;
        self.registration_expiry.apply_batch(keys)?;
        Ok(())
    }

    pub fn device(&self, device_id: &str) -> Result<DeviceRecord> {
        get(&self.devices, device_id)?
            .ok_or_else(|| StoreError::NotFound(format!("no device {device_id:?}")))
    }

    pub fn device_exists(&self, device_id: &str) -> Result<bool> {
        Ok(self.devices.contains_key(device_id)?)
    }

    /// Record a heartbeat and build the device's commands (SPEC §1.6). Reads this
    /// device's record, its first unfinished deployment target(s) and its config; writes
    /// the device record, one heartbeat entry, one pruned entry, and at most one target
    /// and its deployment. Never scans other devices or deployments.
    pub fn heartbeat(
        &self,
        device_id: &str,
        hb: &HeartbeatRequest,
        now: Ts,
        retention: u64,
    ) -> Result<HeartbeatOutcome> {
        let device = (&self.devices, &self.heartbeats)
            .transaction(|(devices, heartbeats)| {
                let Some(mut d) = tx_get::<DeviceRecord>(devices, device_id)? else {
                    return abort(StoreError::NotFound(format!("no device {device_id:?}")));
                };
                d.agent_version = Some(hb.agent_version.clone());
                d.agent_status = Some(hb.status.clone());
                d.cpu_pct = Some(hb.cpu_pct);
                d.memory_mb = Some(hb.memory_mb);
                d.config_version = hb.config_version;
                d.queued_reports = hb.queued_reports;
                d.last_heartbeat = Some(now);
                if hb.current_bundle_version.is_some() {
                    d.current_bundle_version = hb.current_bundle_version.clone();
                }
                d.heartbeat_seq += 1;
                let record = HeartbeatRecord {
                    timestamp: now,
                    agent_version: hb.agent_version.clone(),
                    cpu_pct: hb.cpu_pct,
                    memory_mb: hb.memory_mb,
                    status: hb.status.clone(),
                    current_bundle_version: hb.current_bundle_version.clone(),
                };
                tx_put(
                    heartbeats,
                    heartbeat_key(device_id, d.heartbeat_seq),
                    &record,
                )?;
                // Keep seqs (seq - retention, seq]. Normally that deletes exactly one
                // entry; after the retention was lowered it catches up a few per beat.
                let keep_from = d.heartbeat_seq.saturating_sub(retention.max(1)) + 1;
                let mut pruned = 0;
                while d.heartbeat_oldest < keep_from && pruned < PRUNE_PER_BEAT {
                    heartbeats.remove(heartbeat_key(device_id, d.heartbeat_oldest))?;
                    d.heartbeat_oldest += 1;
                    pruned += 1;
                }
                tx_put(devices, device_id, &d)?;
                Ok(d)
            })
            .map_err(tx_err)?;

        let mut commands = Vec::new();
        let mut delivered = None;
        if device.admission == Admission::Accepted {
            if let Some((cmd, dep)) = self.next_bundle_command(device_id, now)? {
                commands.push(cmd);
                delivered = dep;
            }
            let config = self.config(device_id)?;
            if device.config_version.unwrap_or(0) < config.version {
                commands.push(Command::Configure(config.to_command()));
            }
        }
        Ok(HeartbeatOutcome {
            device,
            commands,
            delivered,
        })
    }

    /// The oldest unfinished deployment of this device, as a command; moves its target
    /// from `pending` to `in_progress` (returning the deployment when it did).
    fn next_bundle_command(
        &self,
        device_id: &str,
        now: Ts,
    ) -> Result<Option<(Command, Option<DeploymentRecord>)>> {
        for key in self.device_open.scan_prefix(prefix(device_id)).keys() {
            let deployment_id = second(&key?);
            let tkey = key2(&deployment_id, device_id);
            // Steady state (already delivered, re-sent until the result): plain reads.
            let step = match get::<TargetRecord>(&self.targets, &tkey)? {
                Some(t) if t.status == TargetStatus::InProgress => {
                    get::<DeploymentRecord>(&self.deployments, &deployment_id)?.map(|d| (d, false))
                }
                Some(t) if t.status == TargetStatus::Pending => {
                    self.deliver(&deployment_id, &tkey, now)?
                }
                // Finished meanwhile; the index entry is on its way out.
                _ => None,
            };
            if let Some((dep, moved)) = step {
                let payload = BundleCommand {
                    deployment_id: dep.id.clone(),
                    bundle_id: dep.bundle_id.clone(),
                    bundle_version: dep.bundle_version.clone(),
                    checksum_sha256: dep.checksum_sha256.clone(),
                    size_bytes: dep.size_bytes,
                };
                let cmd = match dep.kind {
                    DeploymentKind::Deploy => Command::Deploy(payload),
                    DeploymentKind::Rollback => Command::Rollback(payload),
                };
                return Ok(Some((cmd, moved.then_some(dep))));
            }
        }
        Ok(None)
    }

    /// Move a pending target to `in_progress` (its command is being delivered). `None`
    /// when it changed meanwhile and is no longer for this heartbeat to send.
    fn deliver(
        &self,
        deployment_id: &str,
        tkey: &[u8],
        now: Ts,
    ) -> Result<Option<(DeploymentRecord, bool)>> {
        (&self.targets, &self.deployments)
            .transaction(|(targets, deployments)| {
                let Some(mut t) = tx_get::<TargetRecord>(targets, tkey)? else {
                    return Ok(None);
                };
                let Some(mut dep) = tx_get::<DeploymentRecord>(deployments, deployment_id)? else {
                    return Ok(None);
                };
                match t.status {
                    TargetStatus::InProgress => Ok(Some((dep, false))),
                    TargetStatus::Pending => {
                        t.status = TargetStatus::InProgress;
                        t.updated_at = now;
                        dep.shift(TargetStatus::Pending, TargetStatus::InProgress, now);
                        tx_put(targets, tkey, &t)?;
                        tx_put(deployments, deployment_id, &dep)?;
                        Ok(Some((dep, true)))
                    }
                    _ => Ok(None),
                }
            })
            .map_err(tx_err)
    }

    /// Newest first, at most `limit`.
    pub fn heartbeats(&self, device_id: &str, limit: usize) -> Result<Vec<HeartbeatRecord>> {
        newest_first(&self.heartbeats, device_id, limit)
    }

    /// One page of devices ordered by id, after the cursor, matching the filter.
    pub fn list_devices(&self, f: &DeviceFilter, now: Ts) -> Result<Vec<DeviceRecord>> {
        let keep = |d: &DeviceRecord| {
            f.admission.is_none_or(|a| d.admission == a)
                && f.status.is_none_or(|s| d.online_status(now) == s)
        };
        let mut out = Vec::new();
        if let Some(tag) = &f.tag {
            let start = match &f.after {
                Some(after) => Bound::Excluded(key2(tag, after)),
                None => Bound::Included(prefix(tag)),
            };
            let mut end = prefix(tag);
            if let Some(last) = end.last_mut() {
                *last = 1;
            }
            for key in self.device_tags.range((start, Bound::Excluded(end))).keys() {
                if out.len() >= f.limit {
                    break;
                }
                if let Some(d) = get::<DeviceRecord>(&self.devices, second(&key?))?
                    && keep(&d)
                {
                    out.push(d);
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
                let d: DeviceRecord = dec(&value?)?;
                if keep(&d) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Every device, for metrics. Operator-side and periodic; never on a device's path.
    pub fn all_devices(&self) -> impl Iterator<Item = Result<DeviceRecord>> + '_ {
        self.devices.iter().values().map(|v| dec(&v?))
    }

    /// Accepted devices carrying any of `tags`, deduplicated, in id order.
    pub fn accepted_devices_with_tags(&self, tags: &[String]) -> Result<Vec<String>> {
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
    pub fn set_tags(&self, device_id: &str, tags: &[String]) -> Result<DeviceRecord> {
        (&self.devices, &self.device_tags)
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
            .map_err(tx_err)
    }

    /// Set admission. Rejecting revokes the device's token and cancels its unfinished
    /// deployment targets (it will never report them) in the same transaction.
    pub fn set_admission(
        &self,
        device_id: &str,
        admission: Admission,
        now: Ts,
    ) -> Result<(DeviceRecord, Vec<DeploymentRecord>)> {
        let reject = admission == Admission::Rejected;
        let open = if reject {
            self.open_deployments(device_id)?
        } else {
            Vec::new()
        };
        let (device, mut changed) = (
            &self.devices,
            &self.tokens,
            &self.device_tokens,
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
                    deployments,
                    targets,
                    device_open,
                    bundle_open,
                )| {
                    let Some(mut d) = tx_get::<DeviceRecord>(devices, device_id)? else {
                        return abort(StoreError::NotFound(format!("no device {device_id:?}")));
                    };
                    d.admission = admission;
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
            // A deployment committed between the scan and the transaction; none can
            // start after it (targets must be accepted, checked transactionally).
            changed.extend(self.cancel_device_targets(device_id, "device was rejected", now)?);
        }
        Ok((device, changed))
    }

    /// Delete a device, its tokens, tags, config, heartbeats and indexes, and cancel its
    /// unfinished deployment targets in the same transaction. Its history records go
    /// too; deployments keep its (cancelled) target entries.
    pub fn delete_device(&self, device_id: &str, now: Ts) -> Result<Vec<DeploymentRecord>> {
        let open = self.open_deployments(device_id)?;
        let mut changed = (
            &self.devices,
            &self.device_keys,
            &self.device_tags,
            &self.tokens,
            &self.device_tokens,
            &self.configs,
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
                    tokens,
                    device_tokens,
                    configs,
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
        changed.extend(self.cancel_device_targets(device_id, "device was deleted", now)?);
        for tree in [
            &self.heartbeats,
            &self.history,
            &self.device_success,
            &self.device_bundles,
        ] {
            let mut batch = sled::Batch::default();
            for key in tree.scan_prefix(prefix(device_id)).keys() {
                batch.remove(key?);
            }
            tree.apply_batch(batch)?;
        }
        Ok(changed)
    }
}

/// Most old heartbeats one heartbeat deletes (bounds its cost after a retention cut).
const PRUNE_PER_BEAT: u32 = 16;

/// `expiry (ms since the epoch, u64 BE) ‖ signature hash`: sorts by expiry.
fn expiry_key(until: Ts, signature_hash: &str) -> Vec<u8> {
    let ms = u64::try_from(until.timestamp_millis()).unwrap_or(0);
    let mut k = ms.to_be_bytes().to_vec();
    k.extend_from_slice(signature_hash.as_bytes());
    k
}

fn heartbeat_key(device_id: &str, seq: u64) -> Vec<u8> {
    let mut k = prefix(device_id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}
