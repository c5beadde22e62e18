//! Backups of a PostgreSQL store (SPEC §8), in the same format as sled's: restore a
//! backup (from either backend) into an empty database, and back a database up without
//! a server. This is the migration path from sled: `backup` on the sled data dir, then
//! `restore --database-url`.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek};
use std::path::Path;

use super::read::{Importer, Restored, parse_lines, restore_archive};
use super::write::{SharedSpool, Spool, write_file};
use super::{BackupError, Header};
use crate::blobs::Blobs;
use crate::store::{
    BundleRecord, PgOptions, PgStore, RecordCounts, RecordSource, Store, StoreError,
};

/// `kernex-server restore --from FILE --database-url URL`: fill an empty database (its
/// schema brought up to date first), the bundle archives into `blobs`. A restore that
/// fails after its records were committed empties the database again, so a retry
/// starts clean.
pub fn restore_database(from: &Path, url: &str, blobs: &Blobs) -> Result<Restored, BackupError> {
    let file = File::open(from)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", from.display())))?;
    crate::create_private_dir(blobs.local_dir())?;
    crate::create_private_dir(&blobs.tmp_dir())?;
    let runtime = runtime()?;
    let store = runtime.block_on(PgStore::connect(url, PgOptions::default()))?;
    let mut into = PgImporter {
        store: &store,
        runtime: &runtime,
        imported: false,
    };
    // Archives bound for a bucket are checked in a staging dir first, then uploaded.
    let staging = tempfile::Builder::new()
        .prefix("restore-")
        .tempdir_in(blobs.tmp_dir())?;
    let archive_dir = if blobs.is_bucket() {
        staging.path()
    } else {
        blobs.local_dir()
    };
    let result = restore_archive(file, &mut into, archive_dir).and_then(|restored| {
        if blobs.is_bucket() {
            runtime.block_on(upload_restored(blobs, staging.path(), &restored))?;
        }
        Ok(restored)
    });
    if result.is_err()
        && into.imported
        && let Err(e) = runtime.block_on(store.clear_after_failed_restore())
    {
        tracing::error!(error = %e, "emptying the database after a failed restore failed");
    }
    runtime.block_on(store.close());
    result
}

/// Put the archives a restore checked into `staging` into the bucket.
async fn upload_restored(
    blobs: &Blobs,
    staging: &Path,
    restored: &Restored,
) -> Result<(), BackupError> {
    for id in &restored.header.bundle_files {
        let path = staging.join(format!("{id}.tar.gz"));
        if path.exists() {
            blobs.keep_path(id, &path).await?;
        }
    }
    Ok(())
}

/// `kernex-server backup --to FILE --database-url URL`: one consistent snapshot of the
/// database (writers go on), with the bundle archives from `blobs`.
pub fn backup_database(url: &str, blobs: &Blobs, to: &Path) -> Result<Header, BackupError> {
    let runtime = runtime()?;
    let store = runtime.block_on(PgStore::connect(url, PgOptions::default()))?;
    let spool = SharedSpool::new(Spool::new(blobs)?);
    let exported = runtime.block_on(store.export(Box::new(spool.clone())));
    runtime.block_on(store.close());
    exported?;
    let mut spool = spool
        .take()
        .ok_or_else(|| StoreError::backend("backup spool already taken"))?;
    runtime.block_on(spool.fetch_from_bucket(blobs))?;
    write_file(spool, to)
}

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

struct PgImporter<'a> {
    store: &'a PgStore,
    runtime: &'a tokio::runtime::Runtime,
    /// The records are committed (a later failure must empty the database).
    imported: bool,
}

impl Importer for PgImporter<'_> {
    fn import(&mut self, records: &mut dyn BufRead) -> Result<RecordCounts, BackupError> {
        // The store reads its source on a blocking thread of its own, so it takes an
        // owned one: the records go through a temp file first.
        let mut spooled = tempfile::tempfile()?;
        io::copy(records, &mut spooled)?;
        spooled.rewind()?;
        let source: RecordSource = Box::new(parse_lines(BufReader::new(spooled)));
        let counts = self.runtime.block_on(self.store.import(source))?;
        self.imported = true;
        Ok(counts)
    }

    fn bundle(&mut self, id: &str) -> Result<BundleRecord, StoreError> {
        self.runtime.block_on(self.store.bundle(id))
    }

    fn finish(&mut self) -> Result<(), BackupError> {
        // The import committed: durable already.
        Ok(())
    }
}
