//! Export and import of the sled store as domain records ([`BackupRecord`]).
//!
//! Export reads the primary trees only; import writes them back and rebuilds every
//! index from them (tags, pending devices, open targets, bundle use counts, downloadable
//! bundles, the report-id index, successful versions, counters). Heartbeats are replayed
//! through the beat writer's own path, so the history ring is laid out for this store's
//! retention.

use kernex_common::api::{Admission, DeviceConfig, HeartbeatRequest, ResultStatus};

use super::devices::expiry_key;
use super::rollouts::{split_wave_key, wave_key};
use super::*;

/// The trees that hold primary facts: a store with any of them (or a live record)
/// is not empty.
fn primary_trees(s: &SledStore) -> [&sled::Tree; 7] {
    [
        &s.devices,
        &s.operator_tokens,
        &s.device_tokens,
        &s.configs,
        &s.bundles,
        &s.deployments,
        &s.history,
    ]
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(value)?)
}

impl SledStore {
    /// Emit every primary record in export order (see [`crate::store::export`]). The
    /// caller keeps writes out while it runs.
    pub fn export_blocking(&self, sink: &mut dyn RecordSink) -> Result<()> {
        for v in self.operator_tokens.iter().values() {
            sink.record(&BackupRecord::OperatorToken(dec(&v?)?))?;
        }
        for item in self.registrations.iter() {
            let (key, value) = item?;
            sink.record(&BackupRecord::Registration {
                signature_hash: String::from_utf8_lossy(&key).into_owned(),
                until: dec(&value)?,
            })?;
        }
        for v in self.devices.iter().values() {
            let device: DeviceRecord = dec(&v?)?;
            self.export_device(device, sink)?;
        }
        for v in self.bundles.iter().values() {
            let bundle: BundleRecord = dec(&v?)?;
            let bundle_id = bundle.id.clone();
            sink.record(&BackupRecord::Bundle(bundle))?;
            if let Some(document) = self.bundle_signatures(&bundle_id)? {
                sink.record(&BackupRecord::BundleSignatures {
                    bundle_id,
                    document,
                })?;
            }
        }
        if let Some(document) = self.trust_document()? {
            sink.record(&BackupRecord::Trust(document))?;
        }
        for v in self.deployments.iter().values() {
            let dep: DeploymentRecord = dec(&v?)?;
            let id = dep.id.clone();
            sink.record(&BackupRecord::Deployment(dep))?;
            for t in self.targets.scan_prefix(prefix(&id)).values() {
                sink.record(&BackupRecord::Target {
                    deployment_id: id.clone(),
                    target: dec(&t?)?,
                })?;
            }
            self.export_wave_targets(&id, sink)?;
        }
        for v in self.history.iter().values() {
            sink.record(&BackupRecord::History(dec(&v?)?))?;
        }
        Ok(())
    }

    /// A device, then its config, token, heartbeats (oldest first) and live record.
    fn export_device(&self, device: DeviceRecord, sink: &mut dyn RecordSink) -> Result<()> {
        let id = device.device_id.clone();
        sink.record(&BackupRecord::Device(device))?;
        if let Some(config) = get::<DeviceConfig>(&self.configs, &id)? {
            sink.record(&BackupRecord::Config(config))?;
        }
        if let Some(hash) = self.device_tokens.get(&id)? {
            sink.record(&BackupRecord::DeviceToken {
                device_id: id.clone(),
                hash: String::from_utf8_lossy(&hash).into_owned(),
            })?;
        }
        // At most the retention: one device's history, never the fleet's.
        for beat in self.heartbeats(&id, usize::MAX)?.into_iter().rev() {
            sink.record(&BackupRecord::Heartbeat {
                device_id: id.clone(),
                beat,
            })?;
        }
        if let Some(live) = self.live_record(&id)? {
            sink.record(&BackupRecord::Live {
                device_id: id,
                live: LiveSnapshot::from(&live),
            })?;
        }
        Ok(())
    }

    /// Fill an empty store from records in export order, rebuild the indexes and make it
    /// durable. `Conflict` when the store holds anything already.
    pub fn import_blocking(
        &self,
        source: impl IntoIterator<Item = Result<BackupRecord>>,
    ) -> Result<RecordCounts> {
        if primary_trees(self).iter().any(|t| !t.is_empty()) || !self.live_table.is_empty() {
            return Err(StoreError::Conflict(
                "the store is not empty: a restore only fills an empty one".into(),
            ));
        }
        let mut counts = RecordCounts::default();
        // The deployment whose targets follow: (id, bundle id).
        let mut current: Option<(String, String)> = None;
        for record in source {
            let record = record?;
            counts.add(record.kind());
            self.import_one(record, &mut current)?;
        }
        self.recount()?;
        self.flush_blocking()?;
        // The live records (replayed beats are in the log; imported last reports only in
        // memory) into a snapshot, after sled's flush as every snapshot.
        self.live_table
            .snapshot(|| Ok(()))
            .map_err(StoreError::backend)?;
        Ok(counts)
    }

    fn import_one(
        &self,
        record: BackupRecord,
        current: &mut Option<(String, String)>,
    ) -> Result<()> {
        match record {
            BackupRecord::OperatorToken(t) => {
                let principal = Principal::Operator {
                    name: t.name.clone(),
                };
                self.tokens.insert(t.hash.as_bytes(), json(&principal)?)?;
                self.operator_tokens.insert(t.name.as_bytes(), json(&t)?)?;
            }
            BackupRecord::DeviceToken { device_id, hash } => {
                self.device_tokens
                    .insert(device_id.as_bytes(), hash.as_bytes())?;
                self.tokens
                    .insert(hash.as_bytes(), json(&Principal::Device { device_id })?)?;
            }
            BackupRecord::Registration {
                signature_hash,
                until,
            } => {
                self.registrations
                    .insert(signature_hash.as_bytes(), json(&until)?)?;
                self.registration_expiry
                    .insert(expiry_key(until, &signature_hash), &[])?;
            }
            BackupRecord::Device(d) => self.import_device(&d)?,
            BackupRecord::Config(c) => {
                self.configs.insert(c.device_id.as_bytes(), json(&c)?)?;
            }
            BackupRecord::Heartbeat { device_id, beat } => {
                let polling_interval = get::<DeviceRecord>(&self.devices, &device_id)?
                    .map_or(DeviceConfig::DEFAULT_POLLING_INTERVAL, |d| {
                        d.polling_interval
                    });
                let report = HeartbeatRequest {
                    agent_version: beat.agent_version,
                    cpu_pct: beat.cpu_pct,
                    memory_mb: beat.memory_mb,
                    status: beat.status,
                    current_bundle_version: beat.current_bundle_version,
                    config_version: None,
                    queued_reports: 0,
                    trust_version: None,
                };
                self.write_beats_blocking(&[Beat {
                    device_id,
                    at: beat.timestamp,
                    report,
                    polling_interval,
                }])?;
            }
            BackupRecord::Live { device_id, live } => self.import_live(&device_id, &live)?,
            BackupRecord::Bundle(b) => {
                self.bundle_versions
                    .insert(b.version.as_bytes(), b.id.as_bytes())?;
                self.bundles.insert(b.id.as_bytes(), json(&b)?)?;
            }
            BackupRecord::Deployment(dep) => {
                if !dep.status.is_final() {
                    let n: u64 = get(&self.bundle_open, &dep.bundle_id)?.unwrap_or(0);
                    self.bundle_open
                        .insert(dep.bundle_id.as_bytes(), json(&(n + 1))?)?;
                }
                if dep.rollout.is_some() && !dep.status.is_final() {
                    self.rollouts_active.insert(dep.id.as_bytes(), &[])?;
                }
                self.deployments.insert(dep.id.as_bytes(), json(&dep)?)?;
                *current = Some((dep.id, dep.bundle_id));
            }
            BackupRecord::Target {
                deployment_id,
                target,
            } => self.import_target(&deployment_id, &target, current)?,
            BackupRecord::History(h) => {
                if h.status == ResultStatus::Success {
                    self.device_success
                        .insert(key2(&h.device_id, &h.bundle_version), &[])?;
                }
                self.history.insert(key2(&h.device_id, &h.id), json(&h)?)?;
            }
            BackupRecord::BundleSignatures {
                bundle_id,
                document,
            } => {
                self.bundle_signatures
                    .insert(bundle_id.as_bytes(), json(&document)?)?;
            }
            BackupRecord::Trust(document) => self.import_trust_document(&document)?,
            BackupRecord::WaveTarget {
                deployment_id,
                wave,
                position,
                device_id,
            } => {
                self.wave_targets
                    .insert(wave_key(&deployment_id, wave, position, &device_id), &[])?;
            }
        }
        Ok(())
    }

    /// A rollout's order of the targets it has not released yet.
    fn export_wave_targets(&self, deployment_id: &str, sink: &mut dyn RecordSink) -> Result<()> {
        for key in self.wave_targets.scan_prefix(prefix(deployment_id)).keys() {
            let key = key?;
            let (wave, position, device_id) = split_wave_key(deployment_id, &key)
                .ok_or_else(|| StoreError::Codec("a damaged wave_targets key".into()))?;
            sink.record(&BackupRecord::WaveTarget {
                deployment_id: deployment_id.to_owned(),
                wave,
                position,
                device_id,
            })?;
        }
        Ok(())
    }

    fn import_device(&self, d: &DeviceRecord) -> Result<()> {
        let id = d.device_id.as_str();
        self.device_keys
            .insert(d.fingerprint.as_bytes(), id.as_bytes())?;
        for tag in &d.tags {
            self.device_tags.insert(key2(tag, id), &[])?;
        }
        if d.admission == Admission::Pending {
            self.device_pending.insert(id.as_bytes(), &[])?;
        }
        self.devices.insert(id.as_bytes(), json(d)?)?;
        Ok(())
    }

    fn import_target(
        &self,
        deployment_id: &str,
        t: &TargetRecord,
        current: &Option<(String, String)>,
    ) -> Result<()> {
        let bundle_id = match current {
            Some((id, bundle_id)) if id == deployment_id => bundle_id.clone(),
            _ => {
                get::<DeploymentRecord>(&self.deployments, deployment_id)?
                    .ok_or_else(|| {
                        StoreError::Invalid(format!(
                            "target of {deployment_id} comes before its deployment"
                        ))
                    })?
                    .bundle_id
            }
        };
        let device_id = t.device_id.as_str();
        self.device_bundles
            .insert(key2(device_id, &bundle_id), &[])?;
        // A waiting target becomes deliverable when its wave is released, not before.
        if !t.status.is_final() && t.status != TargetStatus::Waiting {
            self.device_open
                .insert(key2(device_id, deployment_id), &[])?;
        }
        if let Some(report_id) = &t.report_id {
            self.reports
                .insert(report_id.as_bytes(), key2(deployment_id, device_id))?;
        }
        self.targets
            .insert(key2(deployment_id, device_id), json(t)?)?;
        Ok(())
    }
}
