//! Restoring a backup into an empty data dir.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{BUNDLES_DIR, BackupError, FORMAT, FORMAT_VERSION, HEADER_PATH, Header, RECORDS_PATH};
use crate::store::{BackupRecord, RecordCounts, StoreError};

/// What a restore put in place.
#[derive(Debug)]
pub struct Restored {
    pub header: Header,
    pub records: RecordCounts,
    pub bundle_files: usize,
}

/// `kernex-server restore --from FILE`: fill `data_dir`, which must be missing or empty.
/// On failure what was written is removed again, so a retry starts clean.
pub fn restore_data_dir(from: &Path, data_dir: &Path) -> Result<Restored, BackupError> {
    let existed = data_dir.exists();
    if existed && fs::read_dir(data_dir)?.next().is_some() {
        return Err(BackupError::NotEmpty(format!(
            "{} is not empty: restore only fills an empty data dir; pick a new --data-dir \
             (or move this one aside)",
            data_dir.display()
        )));
    }
    let file = File::open(from)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", from.display())))?;
    let result = restore_into(file, data_dir);
    if result.is_err() {
        let _ = fs::remove_dir_all(data_dir.join("db"));
        let _ = fs::remove_dir_all(data_dir.join("bundles"));
        if !existed {
            let _ = fs::remove_dir(data_dir);
        }
    }
    result
}

/// Where a restore puts what it reads: a backend's import.
pub(super) trait Importer {
    /// Import `records.ndjson`, read whole from `records`.
    fn import(&mut self, records: &mut dyn BufRead) -> Result<RecordCounts, BackupError>;
    /// A restored bundle record (to check its archive against).
    fn bundle(&mut self, id: &str) -> Result<crate::store::BundleRecord, StoreError>;
    /// Everything restored is durable.
    fn finish(&mut self) -> Result<(), BackupError>;
}

/// `records.ndjson` as records, each line's number in its error.
pub(super) fn parse_lines(
    records: impl BufRead,
) -> impl Iterator<Item = Result<BackupRecord, StoreError>> {
    records.lines().enumerate().map(|(i, line)| {
        let line = line.map_err(StoreError::backend)?;
        serde_json::from_str::<BackupRecord>(&line)
            .map_err(|e| StoreError::Invalid(format!("records.ndjson line {}: {e}", i + 1)))
    })
}

struct SledImporter(crate::store::SledStore);

impl Importer for SledImporter {
    fn import(&mut self, records: &mut dyn BufRead) -> Result<RecordCounts, BackupError> {
        Ok(self.0.import_blocking(parse_lines(records))?)
    }

    fn bundle(&mut self, id: &str) -> Result<crate::store::BundleRecord, StoreError> {
        self.0.bundle_blocking(id)
    }

    fn finish(&mut self) -> Result<(), BackupError> {
        Ok(self.0.flush_blocking()?)
    }
}

fn restore_into(file: File, data_dir: &Path) -> Result<Restored, BackupError> {
    let mut into = SledImporter(crate::open_store(data_dir, Default::default())?);
    let bundle_dir = data_dir.join("bundles");
    crate::create_private_dir(&bundle_dir)?;
    restore_archive(file, &mut into, &bundle_dir)
}

/// Read a backup archive into `into`, its bundle files into `bundle_dir`.
pub(super) fn restore_archive(
    file: File,
    into: &mut dyn Importer,
    bundle_dir: &Path,
) -> Result<Restored, BackupError> {
    let mut archive = tar::Archive::new(BufReader::with_capacity(64 * 1024, file));
    let mut entries = archive.entries()?;
    let mut next = |want: &str| -> Result<_, BackupError> {
        let entry = entries
            .next()
            .ok_or_else(|| BackupError::Format(format!("it ends before {want}")))??;
        let path = entry.path()?.to_string_lossy().into_owned();
        if path != want {
            return Err(BackupError::Format(format!(
                "expected {want}, found {path:?} (not a kernex backup?)"
            )));
        }
        Ok(entry)
    };
    let header = read_header(next(HEADER_PATH)?)?;
    let records = into.import(&mut BufReader::new(next(RECORDS_PATH)?))?;
    let mut bundle_files = 0;
    for entry in entries {
        let entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let id = path
            .strip_prefix(BUNDLES_DIR)
            .and_then(|p| p.strip_suffix(".tar.gz"))
            .filter(|id| super::safe_bundle_id(id))
            .ok_or_else(|| BackupError::Format(format!("unexpected entry {path:?}")))?;
        restore_bundle(|id| into.bundle(id), bundle_dir, id, entry)?;
        bundle_files += 1;
    }
    // A stream cut at an entry boundary reads as a shorter archive: the header's
    // counts tell.
    let listed: u64 = header.records.values().sum();
    if records.total() != listed || bundle_files != header.bundle_files.len() {
        return Err(BackupError::Format(format!(
            "the backup ends early: {} of {listed} records and {bundle_files} of {} bundle \
             files (a download that broke off?)",
            records.total(),
            header.bundle_files.len()
        )));
    }
    File::open(bundle_dir)?.sync_all()?;
    into.finish()?;
    Ok(Restored {
        header,
        records,
        bundle_files,
    })
}

pub(super) fn read_header(entry: impl Read) -> Result<Header, BackupError> {
    let mut bytes = Vec::new();
    entry.take(1024 * 1024).read_to_end(&mut bytes)?;
    let header: Header = serde_json::from_slice(&bytes)
        .map_err(|e| BackupError::Format(format!("header.json: {e}")))?;
    if header.format != FORMAT {
        return Err(BackupError::Format(format!(
            "header.json names format {:?}, not {FORMAT:?}",
            header.format
        )));
    }
    if header.format_version > FORMAT_VERSION {
        return Err(BackupError::Format(format!(
            "format version {} was written by kernex-server {}; this build reads up to \
             version {FORMAT_VERSION}: restore it with that version or newer",
            header.format_version, header.server_version
        )));
    }
    Ok(header)
}

/// Copy one bundle archive into place, checking its size and SHA-256 against its record
/// (`lookup` reads the restored store).
pub(super) fn restore_bundle(
    lookup: impl FnOnce(&str) -> Result<crate::store::BundleRecord, StoreError>,
    bundle_dir: &Path,
    id: &str,
    mut data: impl Read,
) -> Result<(), BackupError> {
    let record = match lookup(id) {
        Ok(r) => r,
        Err(StoreError::NotFound(_)) => {
            return Err(BackupError::Format(format!(
                "bundle file {id} has no bundle record"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(bundle_dir)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = data.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n])?;
        size += n as u64;
    }
    let sum = hex::encode(hasher.finalize());
    if size != record.size_bytes || sum != record.checksum_sha256 {
        return Err(BackupError::Format(format!(
            "bundle {} ({id}) is damaged in the backup: {size} bytes, sha256 {sum}; \
             its record says {} bytes, sha256 {}",
            record.version, record.size_bytes, record.checksum_sha256
        )));
    }
    tmp.as_file().sync_all()?;
    // NamedTempFile is created 0600 already (SPEC §1.9: bundle files are 0600).
    tmp.persist(bundle_dir.join(format!("{id}.tar.gz")))
        .map_err(|e| e.error)?;
    Ok(())
}
