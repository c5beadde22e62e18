//! Heartbeats on sled: each device's small live record and its history, both in a
//! compact binary encoding (postcard: varints and length-prefixed strings).
//!
//! Only the beat writer calls [`SledStore::write_beats_blocking`], one batch at a time,
//! so the read-modify-write of a live record needs no transaction: per beat it is one
//! read and two single-key writes, which take sled's shared lock only.
//!
//! **History is a ring per device**: beat number `seq` goes to slot `seq % retention`
//! (key `device_id ‖ slot`), overwriting the beat `retention` places older. Storage is
//! bounded without a delete per beat, and the newest `n` are `n` point reads walking
//! down from the live record's `seq` (each entry carries its `seq`, so a slot still
//! holding an older ring's beat is told apart). When the retention changes between
//! runs, a device's ring is rewritten at its next beat (once, at most the old retention
//! entries).
//!
//! **Live records are group-committed too**: the writer keeps the live records it
//! changed in memory ([`DirtyLive`]) and writes each once per
//! [`SledOptions::live_write_every`] (default [`LIVE_WRITE_EVERY`]), so
//! a device that beats several times in that window costs one live write. Reads look
//! in memory first. A crash loses at most that window plus sled's own flush interval,
//! inside the one second SPEC §1.8 allows; the history entries of those beats are
//! then overwritten by the next ones (their numbers are handed out again).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kernex_common::api::HeartbeatRecord;
use serde::{Deserialize, Serialize};

use super::*;

/// How often changed live records are written to the `live` tree.
pub const LIVE_WRITE_EVERY: Duration = Duration::from_millis(250);

/// Live records changed since they were last written to the `live` tree.
#[derive(Debug)]
pub struct DirtyLive {
    inner: Mutex<(Instant, HashMap<String, StoredLive>)>,
}

impl Default for DirtyLive {
    fn default() -> Self {
        DirtyLive {
            inner: Mutex::new((Instant::now(), HashMap::new())),
        }
    }
}

impl DirtyLive {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Instant, HashMap<String, StoredLive>)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The stored form of [`LiveRecord`], plus the history sequence numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredLive {
    at_ns: i64,
    agent_version: String,
    agent_status: String,
    cpu_pct: f64,
    memory_mb: f64,
    config_version: Option<u64>,
    queued_reports: u64,
    reported_version: Option<(String, i64)>,
    /// Number of the newest heartbeat (it sits in slot `seq % ring`).
    seq: u64,
    /// The ring size (retention) its history was written with.
    ring: u64,
    /// The polling interval when it beat (its online window is 3 × this).
    interval: u64,
}

/// The stored form of one history entry.
#[derive(Debug, Serialize, Deserialize)]
struct StoredBeat {
    seq: u64,
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
        Ok(self.stored_live(device_id)?.map(|l| l.to_record()))
    }

    /// The newest live record: the one not yet written, else the stored one.
    fn stored_live(&self, device_id: &str) -> Result<Option<StoredLive>> {
        if let Some(l) = self.dirty.lock().1.get(device_id) {
            return Ok(Some(l.clone()));
        }
        match self.live.get(device_id)? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Write the changed live records to the `live` tree, if `force`d or one interval
    /// has passed since the last write. Entries stay readable in memory until written.
    fn write_dirty(&self, force: bool) -> Result<()> {
        let batch: Vec<(String, u64, Vec<u8>)> = {
            let mut dirty = self.dirty.lock();
            let due = dirty.0.elapsed() >= self.options.live_write_every;
            if dirty.1.is_empty() || !(force || due) {
                return Ok(());
            }
            dirty.0 = Instant::now();
            dirty
                .1
                .iter()
                .map(|(id, l)| Ok((id.clone(), l.seq, encode(l)?)))
                .collect::<Result<_>>()?
        };
        for (id, _, bytes) in &batch {
            self.live.insert(id.as_bytes(), bytes.as_slice())?;
        }
        let mut dirty = self.dirty.lock();
        for (id, seq, _) in batch {
            if dirty.1.get(&id).is_some_and(|l| l.seq == seq) {
                dirty.1.remove(&id);
            }
        }
        Ok(())
    }

    /// Apply a batch of heartbeats in arrival order. A beat for a device deleted since
    /// it was accepted is dropped. An empty batch writes out every changed live record.
    pub(super) fn write_beats_blocking(&self, beats: &[Beat]) -> Result<()> {
        let ring = self
            .options
            .heartbeat_retention
            .clamp(1, u64::from(u32::MAX));
        for beat in beats {
            let id = beat.device_id.as_str();
            let old = match self.stored_live(id)? {
                Some(l) => Some(l),
                // A first beat: is the device still there? (Later beats find its live
                // record, which deletion removes.)
                None if !self.devices.contains_key(id)? => continue,
                None => None,
            };
            if let Some(o) = &old
                && o.ring != ring
            {
                self.resize_ring(id, o.seq, o.ring, ring)?;
            }
            let seq = old.as_ref().map_or(0, |o| o.seq) + 1;
            let old_expiry = old.as_ref().map(|o| online::expiry(o.at_ns, o.interval));
            let r = &beat.report;
            let at_ns = to_ns(beat.at);
            let reported_version = match &r.current_bundle_version {
                Some(v) => Some((v.clone(), at_ns)),
                None => old.and_then(|o| o.reported_version),
            };
            let entry = StoredBeat {
                seq,
                at_ns,
                agent_version: r.agent_version.clone(),
                cpu_pct: r.cpu_pct,
                memory_mb: r.memory_mb,
                status: r.status.clone(),
                current_bundle_version: r.current_bundle_version.clone(),
            };
            self.heartbeats
                .insert(slot_key(id, seq % ring), encode(&entry)?)?;
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
                ring,
                interval: beat.polling_interval,
            };
            self.dirty.lock().1.insert(id.to_owned(), live);
            self.online
                .moved(old_expiry, online::expiry(at_ns, beat.polling_interval));
        }
        self.write_dirty(beats.is_empty())
    }

    /// Rewrite a device's history from a ring of `from` slots into one of `to`, keeping
    /// the newest `to` beats.
    fn resize_ring(&self, device_id: &str, seq: u64, from: u64, to: u64) -> Result<()> {
        let kept = self.ring_entries(device_id, seq, from, to as usize)?;
        for key in self.heartbeats.scan_prefix(prefix(device_id)).keys() {
            self.heartbeats.remove(key?)?;
        }
        for entry in kept {
            self.heartbeats
                .insert(slot_key(device_id, entry.seq % to), encode(&entry)?)?;
        }
        Ok(())
    }

    /// The newest `limit` entries of a ring of `ring` slots whose newest beat is `seq`.
    fn ring_entries(
        &self,
        device_id: &str,
        seq: u64,
        ring: u64,
        limit: usize,
    ) -> Result<Vec<StoredBeat>> {
        let oldest = seq.saturating_sub(ring) + 1;
        let mut out = Vec::new();
        let mut s = seq;
        while s >= oldest.max(1) && out.len() < limit {
            if let Some(bytes) = self.heartbeats.get(slot_key(device_id, s % ring))? {
                let entry: StoredBeat = decode(&bytes)?;
                if entry.seq == s {
                    out.push(entry);
                }
            }
            s -= 1;
        }
        Ok(out)
    }

    /// Newest first, at most `limit`.
    pub(super) fn heartbeats(&self, device_id: &str, limit: usize) -> Result<Vec<HeartbeatRecord>> {
        let Some(live) = self.stored_live(device_id)? else {
            return Ok(Vec::new());
        };
        let entries = self.ring_entries(device_id, live.seq, live.ring, limit)?;
        Ok(entries
            .into_iter()
            .map(|b| HeartbeatRecord {
                timestamp: from_ns(b.at_ns),
                agent_version: b.agent_version,
                cpu_pct: b.cpu_pct,
                memory_mb: b.memory_mb,
                status: b.status,
                current_bundle_version: b.current_bundle_version,
            })
            .collect())
    }

    /// Remove a deleted device's live record and history.
    pub(super) fn forget_beats(&self, device_id: &str) -> Result<()> {
        let dirty = self.dirty.lock().1.remove(device_id);
        let stored = match self.live.remove(device_id)? {
            Some(bytes) => Some(decode::<StoredLive>(&bytes)?),
            None => None,
        };
        if let Some(old) = dirty.or(stored) {
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

/// `device_id ‖ slot (u32 BE)`.
fn slot_key(device_id: &str, slot: u64) -> Vec<u8> {
    let mut k = prefix(device_id);
    k.extend_from_slice(&u32::try_from(slot).unwrap_or(u32::MAX).to_be_bytes());
    k
}
