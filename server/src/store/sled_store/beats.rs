//! Heartbeats on sled: each device's small live record and its history, both in a
//! compact binary encoding (postcard: varints and length-prefixed strings).
//!
//! Only the beat writer calls [`SledStore::write_beats_blocking`], one batch at a time,
//! so the read-modify-write of a live record needs no transaction: per beat it is at
//! most one read and plain single-key writes, which take sled's shared lock only.
//!
//! **History is a ring of chunks per device.** Beats are grouped in chunks of
//! [`CHUNK`]: chunk `k` holds beats `k·CHUNK + 1 ..= (k+1)·CHUNK`. The beats of the
//! chunk being filled ride in the device's live record; when it is full it is sealed
//! into slot `k % slots` (key `device_id ‖ slot`), overwriting the chunk that fell out
//! of retention, so storage is bounded without a delete, a beat costs one live-record
//! write plus a sealed chunk every [`CHUNK`] beats, and a device holds about
//! `retention / CHUNK` keys instead of `retention`. Each sealed chunk carries its number,
//! so a slot still holding an older chunk is told apart. Reads return at most
//! `retention` beats. When the retention changes between runs, a device's chunks are
//! re-slotted at its next beat (once).
//!
//! **Live records are group-committed too**: the writer keeps the live records it
//! changed in memory ([`DirtyLive`]) and writes each once per
//! [`SledOptions::live_write_every`] (default [`LIVE_WRITE_EVERY`]), so
//! a device that beats several times in that window costs one live write. Reads look
//! in memory first. A crash loses at most that window plus sled's own flush interval,
//! inside the one second SPEC §1.8 allows (the beats of the chunk being filled are in
//! the live record, so they are covered by the same window).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kernex_common::api::HeartbeatRecord;
use serde::{Deserialize, Serialize};

use super::*;

/// Beats per sealed history chunk.
pub const CHUNK: u64 = 16;

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
    /// Number of the newest heartbeat (the first is 1).
    seq: u64,
    /// The retention its history was slotted for.
    ring: u64,
    /// The polling interval when it beat (its online window is 3 × this).
    interval: u64,
    /// The beats of the chunk being filled, oldest first (`seq % CHUNK` of them).
    open: Vec<StoredBeat>,
}

/// A full chunk of history: beats `number·CHUNK + 1 ..= (number+1)·CHUNK`, oldest first.
#[derive(Debug, Serialize, Deserialize)]
struct StoredChunk {
    number: u64,
    beats: Vec<StoredBeat>,
}

/// The stored form of one history entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredBeat {
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
                self.reslot(id, o, ring)?;
            }
            let old_expiry = old.as_ref().map(|o| online::expiry(o.at_ns, o.interval));
            let r = &beat.report;
            let at_ns = to_ns(beat.at);
            let (seq, mut open, reported) = match old {
                Some(o) => (o.seq + 1, o.open, o.reported_version),
                None => (1, Vec::new(), None),
            };
            let reported_version = match &r.current_bundle_version {
                Some(v) => Some((v.clone(), at_ns)),
                None => reported,
            };
            open.push(StoredBeat {
                at_ns,
                agent_version: r.agent_version.clone(),
                cpu_pct: r.cpu_pct,
                memory_mb: r.memory_mb,
                status: r.status.clone(),
                current_bundle_version: r.current_bundle_version.clone(),
            });
            if seq % CHUNK == 0 {
                let number = seq / CHUNK - 1;
                let chunk = StoredChunk {
                    number,
                    beats: std::mem::take(&mut open),
                };
                self.heartbeats
                    .insert(chunk_key(id, number % slots(ring)), encode(&chunk)?)?;
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
                ring,
                interval: beat.polling_interval,
                open,
            };
            self.dirty.lock().1.insert(id.to_owned(), live);
            self.online
                .moved(old_expiry, online::expiry(at_ns, beat.polling_interval));
        }
        self.write_dirty(beats.is_empty())
    }

    /// Move a device's sealed chunks from the slots of one retention to those of
    /// another, keeping the ones the new retention still needs.
    fn reslot(&self, device_id: &str, live: &StoredLive, ring: u64) -> Result<()> {
        let wanted = ring.saturating_sub(live.open.len() as u64);
        let kept = self.sealed_chunks(device_id, live, wanted.div_ceil(CHUNK))?;
        for key in self.heartbeats.scan_prefix(prefix(device_id)).keys() {
            self.heartbeats.remove(key?)?;
        }
        for chunk in kept {
            self.heartbeats.insert(
                chunk_key(device_id, chunk.number % slots(ring)),
                encode(&chunk)?,
            )?;
        }
        Ok(())
    }

    /// Up to `count` of the device's newest sealed chunks, newest first.
    fn sealed_chunks(
        &self,
        device_id: &str,
        live: &StoredLive,
        count: u64,
    ) -> Result<Vec<StoredChunk>> {
        let mut out = Vec::new();
        // Saturating: a damaged record must not underflow (it reads as no chunks).
        let mut number = live.seq.saturating_sub(live.open.len() as u64) / CHUNK;
        while number > 0 && (out.len() as u64) < count {
            number -= 1;
            let Some(bytes) = self
                .heartbeats
                .get(chunk_key(device_id, number % slots(live.ring)))?
            else {
                break;
            };
            let chunk: StoredChunk = decode(&bytes)?;
            if chunk.number != number {
                break;
            }
            out.push(chunk);
        }
        Ok(out)
    }

    /// Newest first, at most `limit` and at most the retention.
    pub(super) fn heartbeats(&self, device_id: &str, limit: usize) -> Result<Vec<HeartbeatRecord>> {
        let Some(live) = self.stored_live(device_id)? else {
            return Ok(Vec::new());
        };
        let cap = limit.min(usize::try_from(live.ring).unwrap_or(usize::MAX));
        let sealed_needed = cap.saturating_sub(live.open.len()) as u64;
        let chunks = self.sealed_chunks(device_id, &live, sealed_needed.div_ceil(CHUNK))?;
        let newest_first = live
            .open
            .iter()
            .rev()
            .chain(chunks.iter().flat_map(|c| c.beats.iter().rev()));
        Ok(newest_first
            .take(cap)
            .map(|b| HeartbeatRecord {
                timestamp: from_ns(b.at_ns),
                agent_version: b.agent_version.clone(),
                cpu_pct: b.cpu_pct,
                memory_mb: b.memory_mb,
                status: b.status.clone(),
                current_bundle_version: b.current_bundle_version.clone(),
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
    /// Set a device's live record from a backup, after its heartbeats were replayed
    /// (they rebuilt the history; this restores what only the last report said).
    pub(super) fn import_live(&self, device_id: &str, s: &LiveSnapshot) -> Result<()> {
        let interval = get::<DeviceRecord>(&self.devices, device_id)?.map_or(
            kernex_common::api::DeviceConfig::DEFAULT_POLLING_INTERVAL,
            |d| d.polling_interval,
        );
        let old = self.stored_live(device_id)?;
        let old_expiry = old.as_ref().map(|o| online::expiry(o.at_ns, o.interval));
        let ring = self
            .options
            .heartbeat_retention
            .clamp(1, u64::from(u32::MAX));
        let (seq, ring, open) = match old {
            Some(o) => (o.seq, o.ring, o.open),
            None => (0, ring, Vec::new()),
        };
        let at_ns = to_ns(s.last_heartbeat);
        let live = StoredLive {
            at_ns,
            agent_version: s.agent_version.clone(),
            agent_status: s.agent_status.clone(),
            cpu_pct: s.cpu_pct,
            memory_mb: s.memory_mb,
            config_version: s.config_version,
            queued_reports: s.queued_reports,
            reported_version: match (&s.reported_version, s.reported_at) {
                (Some(v), Some(at)) => Some((v.clone(), to_ns(at))),
                _ => None,
            },
            seq,
            ring,
            interval,
            open,
        };
        self.dirty.lock().1.insert(device_id.to_owned(), live);
        self.online
            .moved(old_expiry, online::expiry(at_ns, interval));
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

/// Chunk slots per device for a retention: enough for `retention` beats besides the
/// chunk being filled.
fn slots(retention: u64) -> u64 {
    retention.div_ceil(CHUNK) + 1
}

/// `device_id ‖ slot (u32 BE)`.
fn chunk_key(device_id: &str, slot: u64) -> Vec<u8> {
    let mut k = prefix(device_id);
    k.extend_from_slice(&u32::try_from(slot).unwrap_or(u32::MAX).to_be_bytes());
    k
}
