//! Where bundle archives live (SPEC §8): a directory (the data dir's `bundles/`, or a
//! `--blob-dir` mount that replicas share) or an S3-compatible bucket (`--blob-url
//! s3://bucket/prefix`). Either way, uploads in flight and backup spools are staged in a
//! local dir first: an archive reaches the blob store only whole, checked and synced.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

/// The archive store of one server (shared by the replicas of a fleet).
#[derive(Clone, Debug)]
pub struct Blobs {
    /// The archives themselves without a bucket; staging (`tmp/`) always.
    local: PathBuf,
    bucket: Option<Bucket>,
}

#[derive(Clone)]
struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: Key,
    url: String,
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bucket").field("url", &self.url).finish()
    }
}

impl From<PathBuf> for Blobs {
    fn from(dir: PathBuf) -> Self {
        Blobs::in_dir(dir)
    }
}

/// The file name of bundle `id`'s archive, in a dir or under a bucket's prefix.
fn archive_name(id: &str) -> String {
    format!("{id}.tar.gz")
}

/// The bundle id an archive's file name gives.
fn archive_id(name: &str) -> Option<&str> {
    name.strip_suffix(".tar.gz")
}

fn object_error(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e),
        other => io::Error::other(other),
    }
}

impl Blobs {
    /// Archives in `dir` (created at start).
    pub fn in_dir(dir: PathBuf) -> Self {
        Blobs {
            local: dir,
            bucket: None,
        }
    }

    /// Archives in an S3-compatible bucket, `s3://bucket[/prefix]`; uploads are staged in
    /// `staging`. Credentials, region and endpoint come from the usual `AWS_*` variables
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
    /// `AWS_ALLOW_HTTP` for a plain-HTTP endpoint such as a local MinIO).
    pub fn in_bucket(url: &str, staging: PathBuf) -> Result<Self, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("--blob-url {url:?}: expected s3://bucket[/prefix]"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("--blob-url {url:?} names no bucket"));
        }
        let prefix = Key::parse(prefix.trim_matches('/'))
            .map_err(|e| format!("--blob-url {url:?}: bad prefix: {e}"))?;
        // The S3 client's TLS needs a process-wide provider (ring, as the server's own);
        // one installed already is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| format!("--blob-url {url:?}: {e}"))?;
        Ok(Blobs {
            local: staging,
            bucket: Some(Bucket {
                store: Arc::new(store),
                prefix,
                url: url.to_owned(),
            }),
        })
    }

    /// The local dir: the archives without a bucket, and the staging area (`tmp/`).
    pub fn local_dir(&self) -> &Path {
        &self.local
    }

    /// Where uploads in flight and backup spools are staged (emptied at start).
    pub fn tmp_dir(&self) -> PathBuf {
        self.local.join("tmp")
    }

    /// Are the archives in a bucket (not in [`Blobs::local_dir`])?
    pub fn is_bucket(&self) -> bool {
        self.bucket.is_some()
    }

    /// Where the archives are, for logs and messages.
    pub fn location(&self) -> String {
        match &self.bucket {
            Some(b) => b.url.clone(),
            None => self.local.display().to_string(),
        }
    }

    /// Path of bundle `id`'s archive in the local dir (where it is without a bucket).
    pub fn local_file(&self, id: &str) -> PathBuf {
        self.local.join(archive_name(id))
    }

    fn key(bucket: &Bucket, id: &str) -> Key {
        bucket.prefix.clone().join(archive_name(id))
    }

    /// Keep `upload` (a finished, synced file in [`Blobs::tmp_dir`]) as bundle `id`'s
    /// archive, durably: renamed into the dir and the dir synced, or put into the bucket
    /// (which answers only once the object is stored). The staged file is gone after.
    pub async fn keep(&self, id: &str, upload: tempfile::NamedTempFile) -> io::Result<()> {
        match &self.bucket {
            None => {
                let (dir, path) = (self.local.clone(), self.local_file(id));
                tokio::task::spawn_blocking(move || {
                    upload.persist(&path).map_err(|e| e.error)?;
                    std::fs::File::open(dir)?.sync_all()
                })
                .await
                .map_err(io::Error::other)?
            }
            // `upload` lives until the copy is done; dropping it removes the file.
            Some(bucket) => Self::put_file(bucket, id, upload.path()).await,
        }
    }

    /// Copy the file at `path` into the bucket as bundle `id`'s archive (multipart for
    /// large files; an upload that fails is aborted, leaving no part behind).
    async fn put_file(bucket: &Bucket, id: &str, path: &Path) -> io::Result<()> {
        let mut file = tokio::fs::File::open(path).await?;
        let mut writer =
            object_store::buffered::BufWriter::new(bucket.store.clone(), Self::key(bucket, id));
        let copied = async {
            tokio::io::copy(&mut file, &mut writer).await?;
            writer.shutdown().await
        }
        .await;
        if let Err(e) = copied {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(bundle.id = %id, error = %abort, "aborting a failed bucket upload failed");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Store the file at `path` as bundle `id`'s archive (a restore): moved into the
    /// dir, or copied into the bucket.
    pub async fn keep_path(&self, id: &str, path: &Path) -> io::Result<()> {
        match &self.bucket {
            None => {
                let (dir, dst, src) = (self.local.clone(), self.local_file(id), path.to_owned());
                tokio::task::spawn_blocking(move || {
                    std::fs::rename(src, dst)?;
                    std::fs::File::open(dir)?.sync_all()
                })
                .await
                .map_err(io::Error::other)?
            }
            Some(bucket) => Self::put_file(bucket, id, path).await,
        }
    }

    /// Bytes `start .. start + len` of bundle `id`'s archive, streamed 64 KiB at a time
    /// from the dir or as the bucket sends them.
    pub async fn read(
        &self,
        id: &str,
        start: u64,
        len: u64,
    ) -> io::Result<BoxStream<'static, io::Result<Bytes>>> {
        match &self.bucket {
            None => {
                let mut file = tokio::fs::File::open(self.local_file(id)).await?;
                if start > 0 {
                    file.seek(io::SeekFrom::Start(start)).await?;
                }
                Ok(ReaderStream::with_capacity(file.take(len), 64 * 1024).boxed())
            }
            Some(_) if len == 0 => Ok(stream::empty().boxed()),
            Some(bucket) => {
                let options = GetOptions {
                    range: Some(GetRange::Bounded(start..start + len)),
                    ..GetOptions::default()
                };
                let got = bucket
                    .store
                    .get_opts(&Self::key(bucket, id), options)
                    .await
                    .map_err(object_error)?;
                Ok(got.into_stream().map_err(object_error).boxed())
            }
        }
    }

    /// Remove bundle `id`'s archive; one already gone is not an error.
    pub async fn remove(&self, id: &str) -> io::Result<()> {
        let removed = match &self.bucket {
            None => tokio::fs::remove_file(self.local_file(id)).await,
            Some(bucket) => bucket
                .store
                .delete(&Self::key(bucket, id))
                .await
                .map_err(object_error),
        };
        match removed {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Copy bundle `id`'s archive to `dst` (a backup spool): `false` when there is none.
    pub async fn fetch(&self, id: &str, dst: &Path) -> io::Result<bool> {
        let mut body = match self.read_whole(id).await {
            Ok(body) => body,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let mut out = tokio::fs::File::create(dst).await?;
        while let Some(chunk) = body.next().await {
            out.write_all(&chunk?).await?;
        }
        out.sync_all().await?;
        Ok(true)
    }

    /// Bundle `id`'s whole archive, streamed.
    pub async fn read_whole(&self, id: &str) -> io::Result<BoxStream<'static, io::Result<Bytes>>> {
        match &self.bucket {
            None => self.read(id, 0, u64::MAX).await,
            Some(bucket) => {
                let got = bucket
                    .store
                    .get(&Self::key(bucket, id))
                    .await
                    .map_err(object_error)?;
                Ok(got.into_stream().map_err(object_error).boxed())
            }
        }
    }

    /// Ids of the archives in the bucket last written more than `min_age` ago (start-up
    /// looks for ones whose record never got written). Empty without a bucket: the dir's
    /// are found by [`crate::bundle_leftovers`].
    pub async fn bucket_archives_older_than(&self, min_age: Duration) -> io::Result<Vec<String>> {
        let Some(bucket) = &self.bucket else {
            return Ok(Vec::new());
        };
        let Some(cutoff) = chrono::Duration::from_std(min_age)
            .ok()
            .and_then(|age| chrono::Utc::now().checked_sub_signed(age))
        else {
            return Ok(Vec::new());
        };
        let mut listing = bucket.store.list(Some(&bucket.prefix));
        let mut ids = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(object_error)?;
            // Only the prefix's own archives, not those of a deeper prefix.
            let direct = meta
                .location
                .prefix_match(&bucket.prefix)
                .map(Iterator::count)
                == Some(1);
            if let (true, Some(name)) = (direct, meta.location.filename())
                && let Some(id) = archive_id(name)
                && meta.last_modified < cutoff
            {
                ids.push(id.to_owned());
            }
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_urls_are_checked() {
        let dir = PathBuf::from("/nonexistent");
        let bad = |url: &str| Blobs::in_bucket(url, dir.clone()).err().unwrap_or_default();
        assert!(
            bad("gs://bucket").contains("expected s3://"),
            "{}",
            bad("gs://b")
        );
        assert!(bad("s3://").contains("names no bucket"));
        assert!(bad("s3:///prefix").contains("names no bucket"));
        let blobs = Blobs::in_bucket("s3://fleet/kernex/bundles/", dir.clone());
        let blobs = blobs.unwrap_or_else(|e| panic!("{e}"));
        let bucket = blobs.bucket.as_ref().unwrap_or_else(|| panic!("no bucket"));
        assert_eq!(
            Blobs::key(bucket, "b1").as_ref(),
            "kernex/bundles/b1.tar.gz"
        );
        assert!(blobs.is_bucket());
        assert_eq!(blobs.location(), "s3://fleet/kernex/bundles/");
        let bare = Blobs::in_bucket("s3://fleet", dir).unwrap_or_else(|e| panic!("{e}"));
        let bucket = bare.bucket.as_ref().unwrap_or_else(|| panic!("no bucket"));
        assert_eq!(Blobs::key(bucket, "b1").as_ref(), "b1.tar.gz");
    }

    /// The bucket paths on an in-memory object store (the S3 client itself is covered by
    /// `tests/tests/blob_store.rs` against a real endpoint).
    #[tokio::test]
    async fn a_bucket_keeps_reads_ranges_removes_and_lists_leftovers() -> io::Result<()> {
        let staging = tempfile::tempdir()?;
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let blobs = Blobs {
            local: staging.path().to_owned(),
            bucket: Some(Bucket {
                store: store.clone(),
                prefix: Key::from("fleet"),
                url: "s3://test/fleet".into(),
            }),
        };
        std::fs::create_dir_all(blobs.tmp_dir())?;
        let upload = tempfile::NamedTempFile::new_in(blobs.tmp_dir())?;
        std::fs::write(upload.path(), b"0123456789")?;
        blobs.keep("b1", upload).await?;
        assert!(
            std::fs::read_dir(blobs.tmp_dir())?.next().is_none(),
            "staged file gone"
        );
        assert!(!blobs.local_file("b1").exists(), "nothing kept locally");
        let part: Vec<Bytes> = blobs.read("b1", 3, 4).await?.try_collect().await?;
        assert_eq!(part.concat(), b"3456");
        let none: Vec<Bytes> = blobs.read("b1", 10, 0).await?.try_collect().await?;
        assert!(none.concat().is_empty());
        let missing = blobs.read("nope", 0, 1).await.err().map(|e| e.kind());
        assert_eq!(missing, Some(io::ErrorKind::NotFound));

        // Leftover archives: only the prefix's own `<id>.tar.gz`, only when old enough.
        let put = |key: &str| {
            let store = store.clone();
            let key = Key::from(key);
            async move {
                store
                    .put(&key, b"x".to_vec().into())
                    .await
                    .map_err(object_error)
            }
        };
        put("fleet/deeper/b2.tar.gz").await?;
        put("fleet/notes.txt").await?;
        put("other/b3.tar.gz").await?;
        assert!(
            blobs
                .bucket_archives_older_than(Duration::from_secs(3600))
                .await?
                .is_empty()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let old = blobs
            .bucket_archives_older_than(Duration::from_millis(10))
            .await?;
        assert_eq!(old, ["b1"]);

        let copy = staging.path().join("copy");
        assert!(blobs.fetch("b1", &copy).await?);
        assert_eq!(std::fs::read(&copy)?, b"0123456789");
        blobs.remove("b1").await?;
        blobs.remove("b1").await?;
        assert!(!blobs.fetch("b1", &copy).await?);
        Ok(())
    }

    #[tokio::test]
    async fn a_dir_keeps_reads_ranges_and_removes() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let blobs = Blobs::in_dir(dir.path().to_owned());
        std::fs::create_dir_all(blobs.tmp_dir())?;
        let upload = tempfile::NamedTempFile::new_in(blobs.tmp_dir())?;
        std::fs::write(upload.path(), b"0123456789")?;
        blobs.keep("b1", upload).await?;
        assert_eq!(std::fs::read(blobs.local_file("b1"))?, b"0123456789");
        let part: Vec<Bytes> = blobs.read("b1", 3, 4).await?.try_collect().await?;
        assert_eq!(part.concat(), b"3456");
        let copy = dir.path().join("copy");
        assert!(blobs.fetch("b1", &copy).await?);
        assert_eq!(std::fs::read(&copy)?, b"0123456789");
        blobs.remove("b1").await?;
        blobs.remove("b1").await?;
        assert!(!blobs.fetch("b1", &copy).await?);
        assert!(std::fs::read_dir(blobs.tmp_dir())?.next().is_none());
        Ok(())
    }
}
