//! Every device's live record in memory, made durable by a write-ahead log and
//! snapshots, so a heartbeat costs a hash lookup and an append whatever the fleet size.
//!
//! **Why not a sled tree.** A random `get` + `insert` in a sled 0.34 tree costs about
//! 1 µs with 1,000 keys and about 7 µs with 1,000,000 (page-cache and CPU-cache misses
//! down a deeper tree), so with live records in a tree a beat's cost grew with the fleet.
//! Here the records sit in a sharded hash map (encoded, a few hundred bytes each) and
//! the disk sees only sequential appends.
//!
//! **Files**, in the `live/` folder beside sled's own files:
//! - `wal-<n>`: log segments of frames `len (u32 LE) ‖ crc32 (u32 LE) ‖ payload`. The
//!   payloads are opaque here (`beats.rs` gives them meaning) and must be idempotent
//!   when replayed on top of a snapshot that already contains them.
//! - `snapshot`: `MAGIC ‖ first segment (u64 LE) ‖ (key len u32, key, value len u32,
//!   value)* ‖ u32::MAX ‖ crc32 of everything before (u32 LE)`, written to a temporary
//!   file, fsynced and renamed, so it is whole or absent.
//!
//! **Recovery**: load the snapshot, then replay the segments from its first segment on,
//! in order; a segment ends at its first torn or damaged frame (the tail a crash cut).
//!
//! **Snapshots** run on a thread of their own once the log since the last one outgrows
//! the table: rotate to a new segment, let the caller make what the records point to
//! durable (`before_copy`), write the shards one at a time (each held for a few ms),
//! fsync, rename, drop the older segments. A frame appended before the rotation was
//! applied to the table before it, so the snapshot has it; a frame after it is in a
//! segment that is replayed.
//!
//! **Durability**: [`LiveTable::append`] writes each batch to the file at once (a killed
//! process loses nothing it appended) and fsyncs at most every [`SYNC_EVERY`];
//! [`LiveTable::sync`] fsyncs now. The beat writer's idle tick calls it, so a power loss
//! loses at most about half a second of heartbeats (SPEC §1.8 allows one).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, RandomState};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long appended frames may wait for their fsync.
pub const SYNC_EVERY: Duration = Duration::from_millis(200);

/// Log bytes since the last snapshot that start a new one (or the table's size, if
/// larger: a snapshot then costs at most as much as the log it retires). This bounds
/// what a start replays: 16 MiB is about 150,000 beats, well under a second.
const SNAPSHOT_AFTER: u64 = 16 << 20;

const SHARDS: usize = 64;
const MAGIC: &[u8; 8] = b"KXLIVE01";
const END: u32 = u32::MAX;

type Shard = HashMap<Box<str>, Vec<u8>>;

/// The in-memory table and its log.
#[derive(Debug)]
pub struct LiveTable {
    dir: PathBuf,
    hasher: RandomState,
    shards: Vec<Mutex<Shard>>,
    /// Bytes of keys and values held, for the snapshot trigger.
    bytes: AtomicU64,
    wal: Mutex<Wal>,
    snapshotting: AtomicBool,
}

#[derive(Debug)]
struct Wal {
    file: File,
    segment: u64,
    /// Bytes appended since the last snapshot started.
    since_snapshot: u64,
    unsynced: bool,
    last_sync: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("wal-{n:020}"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn damaged(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Append one frame for `payload` to `out`.
pub fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

impl LiveTable {
    /// Open (or create) the table in `dir`: load the snapshot and hand every logged
    /// payload since it to `replay`, in order, with the table as loaded so far.
    pub fn open(
        dir: &Path,
        mut replay: impl FnMut(&LiveTable, &[u8]) -> io::Result<()>,
    ) -> io::Result<LiveTable> {
        fs::create_dir_all(dir)?;
        let mut table = LiveTable {
            dir: dir.to_owned(),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            bytes: AtomicU64::new(0),
            // A placeholder until the segments are known (never written).
            wal: Mutex::new(Wal {
                file: File::open(dir)?,
                segment: 0,
                since_snapshot: 0,
                unsynced: false,
                last_sync: Instant::now(),
            }),
            snapshotting: AtomicBool::new(false),
        };
        let first = table.load_snapshot()?;
        let mut segments = table.segments()?;
        segments.retain(|n| *n >= first);
        let mut since_snapshot = 0;
        for n in &segments {
            since_snapshot += table.replay_segment(*n, &mut replay)?;
        }
        // Append to a fresh segment: a torn tail stays behind in the old one.
        let next = segments.last().map_or(first, |n| n + 1).max(first);
        let file = table.create_segment(next)?;
        *table.wal.get_mut().unwrap_or_else(|p| p.into_inner()) = Wal {
            file,
            segment: next,
            since_snapshot,
            unsynced: false,
            last_sync: Instant::now(),
        };
        Ok(table)
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        let h = self.hasher.hash_one(key) as usize;
        &self.shards[h % SHARDS]
    }

    /// `f` of the record stored under `key`, read in place.
    pub fn read<R>(&self, key: &str, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        lock(self.shard(key)).get(key).map(|v| f(v))
    }

    /// Store `value` under `key` (in memory; the caller logs what it did). A record
    /// that exists is overwritten in its own allocation (it was just read, so its memory
    /// is in cache; a new allocation and the old one's free would touch cold memory at
    /// 1M devices), shrunk only when it holds more than twice what it needs.
    pub fn put(&self, key: &str, value: &[u8]) {
        let mut shard = lock(self.shard(key));
        let old_len = match shard.get_mut(key) {
            Some(v) => {
                let old = v.len();
                v.clear();
                v.extend_from_slice(value);
                if v.capacity() > 2 * v.len() + 64 {
                    v.shrink_to_fit();
                }
                old
            }
            None => {
                shard.insert(key.into(), value.to_vec());
                0
            }
        };
        drop(shard);
        let added = value.len() as u64 + if old_len == 0 { key.len() as u64 } else { 0 };
        self.bytes.fetch_add(added, Ordering::Relaxed);
        self.bytes.fetch_sub(old_len as u64, Ordering::Relaxed);
    }

    /// Drop `key` (in memory; the caller logs what it did). Returns the old value.
    pub fn remove(&self, key: &str) -> Option<Vec<u8>> {
        let old = lock(self.shard(key)).remove(key)?;
        self.bytes
            .fetch_sub((key.len() + old.len()) as u64, Ordering::Relaxed);
        Some(old)
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| lock(s).is_empty())
    }

    /// Every record, one shard at a time (a shard's lock is held while `f` runs on it).
    pub fn for_each(&self, mut f: impl FnMut(&str, &[u8])) {
        for shard in &self.shards {
            for (k, v) in lock(shard).iter() {
                f(k, v);
            }
        }
    }

    /// Append framed payloads (see [`frame`]) to the log: written at once, fsynced when
    /// the last fsync is [`SYNC_EVERY`] old. Returns whether a snapshot is due.
    pub fn append(&self, frames: &[u8]) -> io::Result<bool> {
        let mut wal = lock(&self.wal);
        if !frames.is_empty() {
            wal.file.write_all(frames)?;
            wal.since_snapshot += frames.len() as u64;
            wal.unsynced = true;
        }
        if wal.unsynced && wal.last_sync.elapsed() >= SYNC_EVERY {
            wal.sync()?;
        }
        let threshold = SNAPSHOT_AFTER.max(self.bytes.load(Ordering::Relaxed));
        Ok(wal.since_snapshot >= threshold)
    }

    /// Bytes of the snapshot and log files.
    pub fn size_on_disk(&self) -> io::Result<u64> {
        let mut total = 0;
        for entry in fs::read_dir(&self.dir)? {
            total += entry?.metadata()?.len();
        }
        Ok(total)
    }

    /// Fsync everything appended so far.
    pub fn sync(&self) -> io::Result<()> {
        let mut wal = lock(&self.wal);
        if wal.unsynced { wal.sync() } else { Ok(()) }
    }

    /// Start a snapshot on a thread of its own unless one runs. `before_copy` runs after
    /// the log has moved to a new segment and before the records are copied: it must make
    /// durable whatever the records no longer carry (sealed history chunks).
    pub fn snapshot_in_background(
        self: &Arc<Self>,
        before_copy: impl FnOnce() -> io::Result<()> + Send + 'static,
    ) {
        if self.snapshotting.swap(true, Ordering::AcqRel) {
            return;
        }
        let table = self.clone();
        let spawned = std::thread::Builder::new()
            .name("kernex-live-snapshot".into())
            .spawn(move || {
                let started = Instant::now();
                match table.snapshot(before_copy) {
                    Ok(()) => tracing::debug!(
                        ms = started.elapsed().as_millis() as u64,
                        "live records snapshotted"
                    ),
                    Err(e) => tracing::error!(error = %e, "snapshot of live records failed"),
                }
                table.snapshotting.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the snapshot thread");
            self.snapshotting.store(false, Ordering::Release);
        }
    }

    /// Write a snapshot now (on the calling thread).
    pub fn snapshot(&self, before_copy: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let first = {
            let mut wal = lock(&self.wal);
            let next = wal.segment + 1;
            let file = self.create_segment(next)?;
            wal.sync()?;
            wal.file = file;
            wal.segment = next;
            wal.since_snapshot = 0;
            next
        };
        before_copy()?;
        let tmp = self.dir.join("snapshot.tmp");
        let file = File::create(&tmp)?;
        let mut out = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
        out.write_all(MAGIC)?;
        out.write_all(&first.to_le_bytes())?;
        // One shard at a time, written from under its lock (a 64th of the table: about
        // 2 MB at 1M devices, a few ms) rather than copied first.
        for shard in &self.shards {
            for (k, v) in lock(shard).iter() {
                write_bytes(&mut out, k.as_bytes())?;
                write_bytes(&mut out, v)?;
            }
        }
        out.write_all(&END.to_le_bytes())?;
        let crc = out.crc.clone().finalize();
        let mut inner = out.inner;
        inner.write_all(&crc.to_le_bytes())?;
        let file = inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, self.dir.join("snapshot"))?;
        sync_dir(&self.dir)?;
        for n in self.segments()? {
            if n < first {
                fs::remove_file(segment_path(&self.dir, n))?;
            }
        }
        Ok(())
    }

    /// Load the snapshot, if any; returns the first segment to replay.
    fn load_snapshot(&mut self) -> io::Result<u64> {
        let path = self.dir.join("snapshot");
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut r = HashingReader::new(BufReader::with_capacity(1 << 20, file));
        let bad = |what: &str| damaged(format!("{}: {what}", path.display()));
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(bad("not a live-record snapshot"));
        }
        let first = u64::from_le_bytes(read_array(&mut r)?);
        while let Some(key) = read_bytes(&mut r)? {
            let key = String::from_utf8(key).map_err(|_| bad("a key is not UTF-8"))?;
            let value = read_bytes(&mut r)?.ok_or_else(|| bad("a key has no value"))?;
            self.put(&key, &value);
        }
        let computed = r.crc.clone().finalize();
        let stored = u32::from_le_bytes(read_array(&mut r.inner)?);
        if computed != stored {
            return Err(bad("checksum mismatch"));
        }
        Ok(first)
    }

    /// Replay one segment; returns its length in bytes up to its first bad frame.
    fn replay_segment(
        &self,
        n: u64,
        replay: &mut impl FnMut(&LiveTable, &[u8]) -> io::Result<()>,
    ) -> io::Result<u64> {
        let path = segment_path(&self.dir, n);
        let mut r = BufReader::with_capacity(1 << 20, File::open(&path)?);
        let mut good = 0u64;
        let mut payload = Vec::new();
        loop {
            let mut head = [0u8; 8];
            match r.read_exact(&mut head) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            payload.resize(len, 0);
            // No frame is empty: a zero header is a hole a power loss left (the file grew
            // but its data never reached the disk), and crc32("") is 0.
            let whole = len > 0
                && match r.read_exact(&mut payload) {
                    Ok(()) => crc32fast::hash(&payload) == crc,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => false,
                    Err(e) => return Err(e),
                };
            if !whole {
                tracing::warn!(
                    segment = %path.display(),
                    at = good,
                    "live-record log ends in a torn frame (a crash cut it); replayed up to it"
                );
                break;
            }
            replay(self, &payload)?;
            good += 8 + len as u64;
        }
        Ok(good)
    }

    fn segments(&self) -> io::Result<Vec<u64>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            if let Some(n) = name
                .to_str()
                .and_then(|s| s.strip_prefix("wal-"))
                .and_then(|s| s.parse::<u64>().ok())
            {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    fn create_segment(&self, n: u64) -> io::Result<File> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&self.dir, n))?;
        sync_dir(&self.dir)?;
        Ok(file)
    }
}

impl Wal {
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }
}

fn write_bytes(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|l| *l != END)
        .ok_or_else(|| damaged("a live record is too large".into()))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(bytes)
}

/// A length-prefixed byte string, or `None` at the end marker.
fn read_bytes(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let len = u32::from_le_bytes(read_array(r)?);
    if len == END {
        return Ok(None);
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    Ok(Some(buf))
}

fn read_array<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

struct HashingWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            crc: crc32fast::Hasher::new(),
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct HashingReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            crc: crc32fast::Hasher::new(),
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn reopen(dir: &Path) -> (LiveTable, Vec<Vec<u8>>) {
        let mut seen = Vec::new();
        let t = LiveTable::open(dir, |_, p| {
            seen.push(p.to_vec());
            Ok(())
        })
        .unwrap();
        (t, seen)
    }

    #[test]
    fn appended_frames_replay_after_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (t, seen) = reopen(dir.path());
        assert!(seen.is_empty());
        let mut buf = Vec::new();
        frame(&mut buf, b"one");
        frame(&mut buf, b"two");
        t.append(&buf).unwrap();
        // A power loss can leave zeros where unsynced frames were; a crash mid-append
        // leaves half a frame. Either ends the log.
        t.append(&[0u8; 24]).unwrap();
        let mut torn = Vec::new();
        frame(&mut torn, b"three");
        t.append(&torn[..torn.len() - 2]).unwrap();
        t.sync().unwrap();
        drop(t);
        let (t, seen) = reopen(dir.path());
        assert_eq!(seen, vec![b"one".to_vec(), b"two".to_vec()]);
        // New frames go to a new segment, after the torn one.
        let mut buf = Vec::new();
        frame(&mut buf, b"four");
        t.append(&buf).unwrap();
        drop(t);
        let (_, seen) = reopen(dir.path());
        assert_eq!(
            seen,
            vec![b"one".to_vec(), b"two".to_vec(), b"four".to_vec()]
        );
    }

    #[test]
    fn a_snapshot_keeps_the_records_and_retires_the_old_log() {
        let dir = tempfile::tempdir().unwrap();
        let (t, _) = reopen(dir.path());
        t.put("a", b"1");
        t.put("b", b"2");
        let mut buf = Vec::new();
        frame(&mut buf, b"before");
        t.append(&buf).unwrap();
        t.snapshot(|| Ok(())).unwrap();
        t.remove("a");
        let mut buf = Vec::new();
        frame(&mut buf, b"after");
        t.append(&buf).unwrap();
        drop(t);
        let (t, seen) = reopen(dir.path());
        // The snapshot holds what the table held; only the later frame is replayed.
        assert_eq!(t.read("a", <[u8]>::to_vec), Some(b"1".to_vec()));
        assert_eq!(t.read("b", <[u8]>::to_vec), Some(b"2".to_vec()));
        assert_eq!(seen, vec![b"after".to_vec()]);
        assert_eq!(
            t.segments().unwrap().len(),
            2,
            "the pre-snapshot segment is gone"
        );
    }

    #[test]
    fn a_damaged_snapshot_is_refused_not_half_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let (t, _) = reopen(dir.path());
        t.put("a", &[7u8; 100]);
        t.snapshot(|| Ok(())).unwrap();
        drop(t);
        let path = dir.path().join("snapshot");
        let mut bytes = fs::read(&path).unwrap();
        bytes[30] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        let err = LiveTable::open(dir.path(), |_, _| Ok(())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }
}
