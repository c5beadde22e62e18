//! Group commit of fsyncs: every write that must be durable before its 2xx asks for a
//! flush; one thread flushes for everyone who asked while the previous flush ran, and
//! wakes them together. Under load, N concurrent writes cost one fsync, not N.
//!
//! Not sled's `flush_async`: in sled 0.34 concurrent `flush_async` calls park sled's own
//! IO threads, which the flush itself needs, and the server hangs (spacejam/sled#1308,
//! #1241). A blocking flush on a thread of our own leaves those threads free.
//!
//! **`Db::flush` alone is not durable.** In sled 0.34 it writes the log buffers and
//! calls `sync_file_range`, which neither flushes the disk's write cache nor the file's
//! metadata; only sled's own timer thread calls `fsync`, every 500 ms. A SIGKILL does
//! not show the gap (the page cache survives it); the power-loss test
//! (`tests/tests/crash.rs`, with `tests/shim/durable_image.c`) lost acknowledged tag
//! writes through it. So after each flush this thread fsyncs the store's files itself:
//! new large-value blob files first (a log record must never point at a blob a power
//! cut could lose), then the log. `fsync` on our own descriptor syncs the file, whoever
//! wrote it.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use tokio::sync::watch;

use crate::store::{Result, StoreError};

/// What the flush thread has made durable: every request up to `done`; `failed` names
/// the newest request a failed flush covered, with the error.
#[derive(Debug, Clone, Default)]
struct Flushed {
    done: u64,
    failed: Option<(u64, String)>,
}

#[derive(Debug)]
pub struct Flusher {
    requested: AtomicU64,
    wake: mpsc::Sender<u64>,
    flushed: watch::Receiver<Flushed>,
    /// Joined on drop, so the thread's handle on the database is gone (and the data
    /// dir's lock released) when the last store handle is: a restore or check can
    /// hand the dir to a server in the same process.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        // Closing the channel ends the loop after the flush in progress, if any.
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.wake, closed));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Flusher {
    /// Start the flush thread for `db`, whose files are in `dir`. It ends when the
    /// `Flusher` is dropped.
    pub fn start(db: sled::Db, dir: &Path) -> Self {
        let files = StoreFiles::new(dir);
        let (wake, requests) = mpsc::channel::<u64>();
        let (tx, flushed) = watch::channel(Flushed::default());
        let spawned = std::thread::Builder::new()
            .name("kernex-flush".into())
            .spawn(move || flush_loop(&db, files, &requests, &tx));
        let thread = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                // Without the thread every sync would wait forever; say so loudly.
                // `sync` then fails at once (the channel's receiver is gone).
                tracing::error!(error = %e, "could not start the flush thread");
                None
            }
        };
        Flusher {
            requested: AtomicU64::new(0),
            wake,
            flushed,
            thread,
        }
    }

    /// Wait until everything written before this call is on disk.
    pub async fn sync(&self) -> Result<()> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake
            .send(ticket)
            .map_err(|_| StoreError::Backend("the flush thread is gone".into()))?;
        let mut rx = self.flushed.clone();
        let state = rx
            .wait_for(|f| f.done >= ticket || f.failed.as_ref().is_some_and(|(t, _)| *t >= ticket))
            .await
            .map_err(|_| StoreError::Backend("the flush thread is gone".into()))?;
        match &state.failed {
            Some((t, e)) if *t >= ticket && state.done < ticket => {
                Err(StoreError::Backend(format!("flush failed: {e}")))
            }
            _ => Ok(()),
        }
    }
}

/// Take every ticket that is waiting, flush once, and publish the newest as done.
fn flush_loop(
    db: &sled::Db,
    mut files: StoreFiles,
    requests: &mpsc::Receiver<u64>,
    flushed: &watch::Sender<Flushed>,
) {
    while let Ok(first) = requests.recv() {
        let newest = requests.try_iter().fold(first, u64::max);
        let durable = db
            .flush()
            .map_err(|e| e.to_string())
            .and_then(|_| files.sync().map_err(|e| e.to_string()));
        match durable {
            Ok(()) => flushed.send_modify(|f| f.done = f.done.max(newest)),
            Err(e) => {
                tracing::error!(error = %e, "store flush failed");
                flushed.send_modify(|f| f.failed = Some((newest, e.to_string())));
            }
        }
    }
}

/// The files of a sled 0.34 store that a flush must fsync: the log (`db`), and blob
/// files (`blobs/`, values too big for the log) not synced yet.
struct StoreFiles {
    dir: PathBuf,
    log: Option<File>,
    synced_blobs: HashSet<std::ffi::OsString>,
}

impl StoreFiles {
    fn new(dir: &Path) -> Self {
        StoreFiles {
            dir: dir.to_path_buf(),
            log: None,
            synced_blobs: HashSet::new(),
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        let blobs = self.dir.join("blobs");
        if let Ok(entries) = std::fs::read_dir(&blobs) {
            let mut new = false;
            for entry in entries {
                let entry = entry?;
                if !self.synced_blobs.contains(&entry.file_name()) {
                    File::open(entry.path())?.sync_all()?;
                    self.synced_blobs.insert(entry.file_name());
                    new = true;
                }
            }
            if new {
                File::open(&blobs)?.sync_all()?;
            }
        }
        if self.log.is_none() {
            // First flush: the log's directory entry and sled's `conf` too (sled writes
            // `conf` without an fsync).
            let conf = self.dir.join("conf");
            if conf.exists() {
                File::open(conf)?.sync_all()?;
            }
            File::open(&self.dir)?.sync_all()?;
            self.log = Some(File::open(self.dir.join("db"))?);
        }
        match &self.log {
            Some(log) => log.sync_all(),
            None => Ok(()),
        }
    }
}
