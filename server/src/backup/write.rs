//! Writing a backup: spool the records and bundle files, then stream the tar.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::Utc;

use super::{BUNDLES_DIR, BackupError, FORMAT, FORMAT_VERSION, HEADER_PATH, Header, RECORDS_PATH};
use crate::blobs::Blobs;
use crate::store::{BackupRecord, RecordCounts, RecordSink, StoreError};

/// Records and bundle links on disk, gathered while the store's writes are held out.
#[derive(Debug)]
pub struct Spool {
    dir: tempfile::TempDir,
    records: BufWriter<File>,
    /// The dir to hard-link archives from; `None` when they are in a bucket, fetched by
    /// [`Spool::fetch_from_bucket`] once the records are spooled.
    bundle_dir: Option<PathBuf>,
    counts: RecordCounts,
    bundles: Vec<String>,
    /// Bundles whose archive is still in the bucket.
    pending: Vec<String>,
    missing: Vec<String>,
}

impl Spool {
    /// A fresh spool in the blob store's staging dir, `<dir>/tmp` (same file system as
    /// the archives of a dir, so they can be hard-linked; emptied at every start).
    pub fn new(blobs: &Blobs) -> io::Result<Spool> {
        let tmp = blobs.tmp_dir();
        crate::create_private_dir(&tmp)?;
        let dir = tempfile::Builder::new()
            .prefix("backup-")
            .tempdir_in(&tmp)?;
        fs::create_dir(dir.path().join("bundles"))?;
        let records = BufWriter::new(File::create(dir.path().join("records.ndjson"))?);
        Ok(Spool {
            dir,
            records,
            bundle_dir: (!blobs.is_bucket()).then(|| blobs.local_dir().to_path_buf()),
            counts: RecordCounts::default(),
            bundles: Vec::new(),
            pending: Vec::new(),
            missing: Vec::new(),
        })
    }

    /// Pin a bundle's file as it is now: a hard link (a copy across file systems). A
    /// file that is missing is noted in the header rather than failing the backup, so
    /// a damaged data dir can still be saved.
    fn link_bundle(&mut self, id: &str) -> io::Result<()> {
        if !super::safe_bundle_id(id) {
            self.missing.push(id.to_owned());
            return Ok(());
        }
        let Some(bundle_dir) = &self.bundle_dir else {
            self.pending.push(id.to_owned());
            return Ok(());
        };
        let name = format!("{id}.tar.gz");
        let src = bundle_dir.join(&name);
        let dst = self.dir.path().join("bundles").join(&name);
        let linked = fs::hard_link(&src, &dst).or_else(|e| match e.kind() {
            io::ErrorKind::NotFound => Err(e),
            _ => fs::copy(&src, &dst).map(|_| ()),
        });
        match linked {
            Ok(()) => self.bundles.push(id.to_owned()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(bundle.id = %id, "bundle file missing; the backup notes it");
                self.missing.push(id.to_owned());
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Copy the archives of the spooled bundles out of the bucket (after the records, so
    /// writers are not held out while they download; an archive never changes once
    /// stored, and one deleted meanwhile is noted as missing).
    pub async fn fetch_from_bucket(&mut self, blobs: &Blobs) -> io::Result<()> {
        for id in std::mem::take(&mut self.pending) {
            let dst = self.dir.path().join("bundles").join(format!("{id}.tar.gz"));
            if blobs.fetch(&id, &dst).await? {
                self.bundles.push(id);
            } else {
                tracing::warn!(bundle.id = %id, "bundle archive missing from the bucket; the backup notes it");
                self.missing.push(id);
            }
        }
        Ok(())
    }

    /// Records spooled so far, by kind.
    pub fn counts(&self) -> &RecordCounts {
        &self.counts
    }
}

impl RecordSink for Spool {
    fn record(&mut self, record: &BackupRecord) -> crate::store::Result<()> {
        serde_json::to_writer(&mut self.records, record)?;
        self.records.write_all(b"\n").map_err(StoreError::backend)?;
        self.counts.add(record.kind());
        if let BackupRecord::Bundle(b) = record {
            self.link_bundle(&b.id).map_err(StoreError::backend)?;
        }
        Ok(())
    }
}

/// A [`Spool`] the store can own for the length of an export while the caller keeps a
/// handle to take it back.
#[derive(Debug, Clone)]
pub struct SharedSpool(Arc<Mutex<Option<Spool>>>);

impl SharedSpool {
    pub fn new(spool: Spool) -> Self {
        SharedSpool(Arc::new(Mutex::new(Some(spool))))
    }

    /// The spool, once the export is over.
    pub fn take(&self) -> Option<Spool> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl RecordSink for SharedSpool {
    fn record(&mut self, record: &BackupRecord) -> crate::store::Result<()> {
        match self.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(spool) => spool.record(record),
            None => Err(StoreError::backend("backup spool already taken")),
        }
    }
}

/// Stream the spooled backup as tar into `out` (64 KiB at a time); the header it wrote.
/// The spool is removed when this returns.
pub fn write_tar(mut spool: Spool, out: impl Write) -> io::Result<Header> {
    spool.records.flush()?;
    let header = Header {
        format: FORMAT.to_owned(),
        format_version: FORMAT_VERSION,
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
        created_at: Utc::now(),
        records: spool
            .counts
            .0
            .iter()
            .map(|(k, n)| ((*k).to_owned(), *n))
            .collect(),
        bundle_files: spool.bundles.clone(),
        missing_bundle_files: spool.missing.clone(),
    };
    let mut tar = tar::Builder::new(out);
    let json = serde_json::to_vec_pretty(&header).map_err(io::Error::other)?;
    append(&mut tar, HEADER_PATH, json.len() as u64, json.as_slice())?;
    let records = File::open(spool.dir.path().join("records.ndjson"))?;
    append(&mut tar, RECORDS_PATH, records.metadata()?.len(), records)?;
    for id in &spool.bundles {
        let file = File::open(
            spool
                .dir
                .path()
                .join("bundles")
                .join(format!("{id}.tar.gz")),
        )?;
        let len = file.metadata()?.len();
        append(&mut tar, &format!("{BUNDLES_DIR}{id}.tar.gz"), len, file)?;
    }
    tar.into_inner()?.flush()?;
    Ok(header)
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    size: u64,
    data: impl io::Read,
) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o600);
    h.set_mtime(u64::try_from(Utc::now().timestamp()).unwrap_or(0));
    h.set_entry_type(tar::EntryType::Regular);
    // Sized reads: a file that grew after we measured it cannot corrupt the stream.
    tar.append_data(&mut h, path, io::Read::take(data, size))
}

/// `kernex-server backup --to FILE`: back up a data dir no server holds. The file
/// appears whole or not at all (written beside it, synced, renamed).
pub fn backup_data_dir(data_dir: &Path, to: &Path) -> Result<Header, BackupError> {
    if !data_dir.join("db").exists() {
        return Err(BackupError::Format(format!(
            "{} holds no kernex store (no db/ in it)",
            data_dir.display()
        )));
    }
    let store = crate::open_store(data_dir, Default::default())?;
    let mut spool = Spool::new(&Blobs::in_dir(data_dir.join("bundles")))?;
    store.export_blocking(&mut spool)?;
    write_file(spool, to)
}

/// Write a spooled backup to `to`: whole or not at all (written beside it, synced,
/// renamed).
pub(super) fn write_file(spool: Spool, to: &Path) -> Result<Header, BackupError> {
    let mut partial = to.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let written = (|| {
        let mut out = BufWriter::with_capacity(64 * 1024, File::create(&partial)?);
        let header = write_tar(spool, &mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&partial, to)?;
        if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
        Ok::<_, io::Error>(header)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&partial);
    }
    Ok(written?)
}
