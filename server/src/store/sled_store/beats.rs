//! Heartbeats on sled: each device's small live record and its history, both in a
//! compact binary encoding (postcard: varints and length-prefixed strings).
//!
//! Only the beat writer calls [`SledStore::write_beats_blocking`], one batch at a time,
//! so the read-modify-write of a live record needs no transaction: per beat it is one
//! read and three single-key writes (live record, new history entry, pruned entry),
//! which take sled's shared lock only and never wait behind other requests.

use chrono::{DateTime, Utc};
use kernex_common::api::HeartbeatRecord;
use serde::{Deserialize, Serialize};

use super::*;

/// Most old heartbeats one heartbeat deletes (bounds its cost after a retention cut).
const PRUNE_PER_BEAT: u64 = 16;

/// The stored form of [`LiveRecord`], plus the history sequence numbers.
#[derive(Debug, Serialize, Deserialize)]
struct StoredLive {
    at_ns: i64,
    agent_version: String,
    agent_status: String,
    cpu_pct: f64,
    memory_mb: f64,
    config_version: Option<u64>,
    queued_reports: u64,
    reported_version: Option<(String, i64)>,
    /// Sequence number of the newest stored heartbeat (keys `device_id ‖ seq`).
    seq: u64,
    /// Oldest seq possibly still stored (pruning walks up from here).
    oldest: u64,
    /// The polling interval when it beat (its online window is 3 × this).
    interval: u64,
}

/// The stored form of one history entry.
#[derive(Debug, Serialize, Deserialize)]
struct StoredBeat {
    at_ns: i64,
    agent_version: String,
    cpu_pct: f64,
    memory_mb: f64,
    status: String,
    current_bundle_version: Option<String>,
}

fn to_ns(t: Ts) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

fn from_ns(ns: i64) -> Ts {
    DateTime::<Utc>::from_timestamp_nanos(ns)
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(v).map_err(StoreError::codec)
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(StoreError::codec)
}

impl StoredLive {
    fn to_record(&self) -> LiveRecord {
        LiveRecord {
            last_heartbeat: from_ns(self.at_ns),
            agent_version: self.agent_version.clone(),
            agent_status: self.agent_status.clone(),
            cpu_pct: self.cpu_pct,
            memory_mb: self.memory_mb,
            config_version: self.config_version,
            queued_reports: self.queued_reports,
            reported_version: self
                .reported_version
                .as_ref()
                .map(|(v, at)| (v.clone(), from_ns(*at))),
        }
    }
}

impl SledStore {
    /// A device's last heartbeat report, if it ever sent one.
    pub(super) fn live_record(&self, device_id: &str) -> Result<Option<LiveRecord>> {
        match self.live.get(device_id)? {
            Some(bytes) => Ok(Some(decode::<StoredLive>(&bytes)?.to_record())),
            None => Ok(None),
        }
    }

    /// Apply a batch of heartbeats in arrival order. A beat for a device deleted since
    /// it was accepted is dropped.
    pub(super) fn write_beats_blocking(&self, beats: &[Beat]) -> Result<()> {
        let retention = self.options.heartbeat_retention.max(1);
        for beat in beats {
            let id = beat.device_id.as_str();
            if !self.devices.contains_key(id)? {
                continue;
            }
            let old = match self.live.get(id)? {
                Some(bytes) => Some(decode::<StoredLive>(&bytes)?),
                None => None,
            };
            let (mut seq, mut oldest) = old.as_ref().map_or((0, 1), |o| (o.seq, o.oldest));
            let old_expiry = old.as_ref().map(|o| online::expiry(o.at_ns, o.interval));
            let r = &beat.report;
            let at_ns = to_ns(beat.at);
            seq += 1;
            let reported_version = match &r.current_bundle_version {
                Some(v) => Some((v.clone(), at_ns)),
                None => old.and_then(|o| o.reported_version),
            };
            let entry = StoredBeat {
                at_ns,
                agent_version: r.agent_version.clone(),
                cpu_pct: r.cpu_pct,
                memory_mb: r.memory_mb,
                status: r.status.clone(),
                current_bundle_version: r.current_bundle_version.clone(),
            };
            self.heartbeats
                .insert(heartbeat_key(id, seq), encode(&entry)?)?;
            // Keep seqs (seq - retention, seq]. Normally that deletes exactly one entry;
            // after the retention was lowered it catches up a few per beat.
            let keep_from = seq.saturating_sub(retention) + 1;
            let mut pruned = 0;
            while oldest < keep_from && pruned < PRUNE_PER_BEAT {
                self.heartbeats.remove(heartbeat_key(id, oldest))?;
                oldest += 1;
                pruned += 1;
            }
            let live = StoredLive {
                at_ns,
                agent_version: r.agent_version.clone(),
                agent_status: r.status.clone(),
                cpu_pct: r.cpu_pct,
                memory_mb: r.memory_mb,
                config_version: r.config_version,
                queued_reports: r.queued_reports,
                reported_version,
                seq,
                oldest,
                interval: beat.polling_interval,
            };
            self.live.insert(id, encode(&live)?)?;
            self.online
                .moved(old_expiry, online::expiry(at_ns, beat.polling_interval));
        }
        Ok(())
    }

    /// Newest first, at most `limit`.
    pub(super) fn heartbeats(&self, device_id: &str, limit: usize) -> Result<Vec<HeartbeatRecord>> {
        self.heartbeats
            .scan_prefix(prefix(device_id))
            .values()
            .rev()
            .take(limit)
            .map(|v| {
                let b: StoredBeat = decode(&v?)?;
                Ok(HeartbeatRecord {
                    timestamp: from_ns(b.at_ns),
                    agent_version: b.agent_version,
                    cpu_pct: b.cpu_pct,
                    memory_mb: b.memory_mb,
                    status: b.status,
                    current_bundle_version: b.current_bundle_version,
                })
            })
            .collect()
    }

    /// Remove a deleted device's live record and history.
    pub(super) fn forget_beats(&self, device_id: &str) -> Result<()> {
        if let Some(old) = self.live.remove(device_id)? {
            let old: StoredLive = decode(&old)?;
            self.online.forget(online::expiry(old.at_ns, old.interval));
        }
        for key in self.heartbeats.scan_prefix(prefix(device_id)).keys() {
            self.heartbeats.remove(key?)?;
        }
        Ok(())
    }
}

impl SledStore {
    /// Fill the online tracker from the live records (at open).
    pub(super) fn rebuild_online(&self) -> Result<()> {
        for v in self.live.iter().values() {
            let l: StoredLive = decode(&v?)?;
            self.online.moved(None, online::expiry(l.at_ns, l.interval));
        }
        Ok(())
    }
}

fn heartbeat_key(device_id: &str, seq: u64) -> Vec<u8> {
    let mut k = prefix(device_id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}
