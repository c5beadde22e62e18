//! Heartbeats: each device's small live record and its history, both in a compact
//! binary encoding (postcard: varints and length-prefixed strings).
//!
//! **Live records** sit in the [`LiveTable`] (in memory, made durable by a write-ahead
//! log and snapshots; see `live_table.rs`): a beat reads and replaces its device's record
//! and appends one [`Logged`] entry to the log, at a cost that does not grow with the
//! fleet. Only the beat writer calls [`SledStore::write_beats_blocking`], one batch at a
//! time, so the read-modify-write needs no transaction; device deletion takes the same
//! lock ([`SledStore::beats_lock`]) so a beat in flight cannot bring a record back.
//!
//! **History is a ring of chunks per device**, in the `heartbeats` tree. Beats are
//! grouped in chunks of [`CHUNK`]: chunk `k` holds beats `k·CHUNK + 1 ..= (k+1)·CHUNK`.
//! The beats of the chunk being filled ride in the device's live record; when it is full
//! it is sealed into slot `k % slots` (key `device_id ‖ slot`), overwriting the chunk that
//! fell out of retention, so storage is bounded without a delete, a beat costs one sled
//! write every [`CHUNK`] beats, and a device holds about `retention / CHUNK` keys. Each
//! sealed chunk carries its number, so a slot still holding an older chunk is told
//! apart. Reads return at most `retention` beats. When the retention changes between
//! runs, a device's chunks are re-slotted at its next beat (once).
//!
//! **Crash safety.** Log entries carry the beat's sequence number and apply only on top
//! of an older record, so replaying the log over a snapshot that has them changes
//! nothing. A snapshot is written only after sled has flushed (sealed chunks are durable
//! before the records stop carrying their beats). A killed process loses no beat the
//! writer appended; a power loss loses at most the last [`super::live_table::SYNC_EVERY`] plus
//! the writer's idle tick.

use std::io;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use kernex_common::api::HeartbeatRecord;
use serde::{Deserialize, Serialize};

use super::live_table::{LiveTable, frame};
use super::*;

/// Beats per sealed history chunk.
pub const CHUNK: u64 = 16;

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

/// An entry of the live-record log.
#[derive(Debug, Serialize, Deserialize)]
enum Logged {
    Beat(LoggedBeat),
    Forget { device_id: String },
}

/// One applied heartbeat, as logged: enough to apply it again on replay.
#[derive(Debug, Serialize, Deserialize)]
struct LoggedBeat {
    device_id: String,
    seq: u64,
    ring: u64,
    interval: u64,
    at_ns: i64,
    agent_version: String,
    agent_status: String,
    cpu_pct: f64,
    memory_mb: f64,
    config_version: Option<u64>,
    queued_reports: u64,
    current_bundle_version: Option<String>,
}

impl LoggedBeat {
    fn new(beat: &Beat, seq: u64, ring: u64) -> Self {
        let r = &beat.report;
        LoggedBeat {
            device_id: beat.device_id.clone(),
            seq,
            ring,
            interval: beat.polling_interval,
            at_ns: to_ns(beat.at),
            agent_version: r.agent_version.clone(),
            agent_status: r.status.clone(),
            cpu_pct: r.cpu_pct,
            memory_mb: r.memory_mb,
            config_version: r.config_version,
            queued_reports: r.queued_reports,
            current_bundle_version: r.current_bundle_version.clone(),
        }
    }

    /// The device's record after this beat, and the chunk it sealed, if any. `old` is
    /// the record before it (older sequence number).
    fn apply(&self, old: Option<StoredLive>) -> (StoredLive, Option<StoredChunk>) {
        let (mut open, reported) = match old {
            // Carry the open beats only when they belong to this beat's chunk (after a
            // gap, which only a damaged log leaves, they would be misnumbered).
            Some(o) if o.seq + 1 == self.seq => (o.open, o.reported_version),
            Some(o) => (Vec::new(), o.reported_version),
            None => (Vec::new(), None),
        };
        let reported_version = match &self.current_bundle_version {
            Some(v) => Some((v.clone(), self.at_ns)),
            None => reported,
        };
        open.push(StoredBeat {
            at_ns: self.at_ns,
            agent_version: self.agent_version.clone(),
            cpu_pct: self.cpu_pct,
            memory_mb: self.memory_mb,
            status: self.agent_status.clone(),
            current_bundle_version: self.current_bundle_version.clone(),
        });
        let sealed = self.seq.is_multiple_of(CHUNK).then(|| StoredChunk {
            number: self.seq / CHUNK - 1,
            beats: std::mem::take(&mut open),
        });
        let live = StoredLive {
            at_ns: self.at_ns,
            agent_version: self.agent_version.clone(),
            agent_status: self.agent_status.clone(),
            cpu_pct: self.cpu_pct,
            memory_mb: self.memory_mb,
            config_version: self.config_version,
            queued_reports: self.queued_reports,
            reported_version,
            seq: self.seq,
            ring: self.ring,
            interval: self.interval,
            open,
        };
        (live, sealed)
    }
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

fn io_error(e: StoreError) -> io::Error {
    io::Error::other(e.to_string())
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

/// What the beat logic touches: the history tree and the live table. (At open, before
/// the store exists, the log is replayed through it.)
struct Rings<'a> {
    heartbeats: &'a sled::Tree,
    table: &'a LiveTable,
}

impl Rings<'_> {
    fn stored_live(&self, device_id: &str) -> Result<Option<StoredLive>> {
        self.table.read(device_id, |b| decode(b)).transpose()
    }

    /// Apply a beat on top of `old`: seal a chunk if it filled one, replace the record.
    fn apply(&self, old: Option<StoredLive>, beat: &LoggedBeat) -> Result<StoredLive> {
        let id = beat.device_id.as_str();
        if let Some(o) = &old
            && o.ring != beat.ring
        {
            self.reslot(id, o, beat.ring)?;
        }
        let (live, sealed) = beat.apply(old);
        if let Some(chunk) = sealed {
            self.heartbeats.insert(
                chunk_key(id, chunk.number % slots(beat.ring)),
                encode(&chunk)?,
            )?;
        }
        self.table.put(id, &encode(&live)?);
        Ok(live)
    }

    /// A logged entry, again (at open). Entries the record already has change nothing.
    fn replay(&self, payload: &[u8]) -> Result<()> {
        match decode::<Logged>(payload)? {
            Logged::Beat(beat) => {
                let old = self.stored_live(&beat.device_id)?;
                if old.as_ref().is_none_or(|o| o.seq < beat.seq) {
                    self.apply(old, &beat)?;
                }
            }
            Logged::Forget { device_id } => {
                self.table.remove(&device_id);
            }
        }
        Ok(())
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
}

/// Open the live table in `dir`, replaying its log; a data dir from before the table
/// (live records in the sled tree `live`) is moved into it once.
pub(super) fn open_live_table(
    db: &sled::Db,
    heartbeats: &sled::Tree,
    dir: &Path,
) -> Result<Arc<LiveTable>> {
    let table = LiveTable::open(dir, |table, payload| {
        Rings { heartbeats, table }
            .replay(payload)
            .map_err(io_error)
    })
    .map_err(|e| StoreError::Backend(format!("live records in {}: {e}", dir.display())))?;
    let old_tree = b"live".as_slice();
    if db.tree_names().iter().any(|n| n.as_ref() == old_tree) {
        let tree = db.open_tree(old_tree)?;
        for kv in tree.iter() {
            let (k, v) = kv?;
            let key = std::str::from_utf8(&k).map_err(StoreError::codec)?;
            table.put(key, &v);
        }
        table
            .snapshot(|| Ok(()))
            .map_err(|e| StoreError::Backend(format!("live records in {}: {e}", dir.display())))?;
        db.drop_tree(old_tree)?;
        db.flush()?;
    }
    Ok(Arc::new(table))
}

impl SledStore {
    fn rings(&self) -> Rings<'_> {
        Rings {
            heartbeats: &self.heartbeats,
            table: &self.live_table,
        }
    }

    /// A device's last heartbeat report, if it ever sent one.
    pub(super) fn live_record(&self, device_id: &str) -> Result<Option<LiveRecord>> {
        Ok(self.rings().stored_live(device_id)?.map(|l| l.to_record()))
    }

    /// Apply a batch of heartbeats in arrival order and log them. A beat for a device
    /// deleted since it was accepted is dropped. An empty batch fsyncs the log.
    pub(super) fn write_beats_blocking(&self, beats: &[Beat]) -> Result<()> {
        if beats.is_empty() {
            return self.live_table.sync().map_err(StoreError::backend);
        }
        let ring = self
            .options
            .heartbeat_retention
            .clamp(1, u64::from(u32::MAX));
        let rings = self.rings();
        let mut frames = Vec::with_capacity(beats.len() * 128);
        let _deleting = self.beats_lock.lock().unwrap_or_else(|p| p.into_inner());
        for beat in beats {
            let id = beat.device_id.as_str();
            let old = match rings.stored_live(id)? {
                Some(l) => Some(l),
                // A first beat: is the device still there? (Later beats find its live
                // record, which deletion removes.)
                None if !self.devices.contains_key(id)? => continue,
                None => None,
            };
            let old_expiry = old.as_ref().map(|o| online::expiry(o.at_ns, o.interval));
            let logged = LoggedBeat::new(beat, old.as_ref().map_or(1, |o| o.seq + 1), ring);
            let live = rings.apply(old, &logged)?;
            frame(&mut frames, &encode(&Logged::Beat(logged))?);
            self.online
                .moved(old_expiry, online::expiry(live.at_ns, live.interval));
        }
        if self
            .live_table
            .append(&frames)
            .map_err(StoreError::backend)?
        {
            // Sealed chunks durable before the records stop carrying their beats: sled's
            // flush and an fsync of its log (sled's flush alone is no fsync).
            let store = self.clone();
            self.live_table
                .snapshot_in_background(move || store.flush_blocking().map_err(io_error));
        }
        Ok(())
    }

    /// Newest first, at most `limit` and at most the retention.
    pub(super) fn heartbeats(&self, device_id: &str, limit: usize) -> Result<Vec<HeartbeatRecord>> {
        let rings = self.rings();
        let Some(live) = rings.stored_live(device_id)? else {
            return Ok(Vec::new());
        };
        let cap = limit.min(usize::try_from(live.ring).unwrap_or(usize::MAX));
        let sealed_needed = cap.saturating_sub(live.open.len()) as u64;
        let chunks = rings.sealed_chunks(device_id, &live, sealed_needed.div_ceil(CHUNK))?;
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

    /// Remove a deleted device's live record (logged and fsynced) and history.
    pub(super) fn forget_beats(&self, device_id: &str) -> Result<()> {
        let _writer = self.beats_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bytes) = self.live_table.remove(device_id) {
            let old: StoredLive = decode(&bytes)?;
            self.online.forget(online::expiry(old.at_ns, old.interval));
            let mut frames = Vec::new();
            frame(
                &mut frames,
                &encode(&Logged::Forget {
                    device_id: device_id.to_owned(),
                })?,
            );
            self.live_table
                .append(&frames)
                .and_then(|_| self.live_table.sync())
                .map_err(StoreError::backend)?;
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
        let old = self.rings().stored_live(device_id)?;
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
        // In memory only: the import snapshots the table when it is done.
        self.live_table.put(device_id, &encode(&live)?);
        self.online
            .moved(old_expiry, online::expiry(at_ns, interval));
        Ok(())
    }
}

impl SledStore {
    /// Fill the online tracker from the live records (at open).
    pub(super) fn rebuild_online(&self) -> Result<()> {
        let mut damaged = 0u64;
        self.live_table
            .for_each(|_, v| match decode::<StoredLive>(v) {
                Ok(l) => self.online.moved(None, online::expiry(l.at_ns, l.interval)),
                Err(_) => damaged += 1,
            });
        if damaged > 0 {
            return Err(StoreError::Codec(format!(
                "{damaged} live records do not decode"
            )));
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

#[cfg(test)]
mod tests;
