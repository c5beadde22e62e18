//! Streamed, resumable, checksummed bundle download (SPEC §3 step 1).
//!
//! The archive goes to `downloads/<sha256>.part`, hashed as it arrives. A partial file
//! from an earlier attempt is resumed with `Range`. More bytes than the command's
//! `size_bytes` are never accepted (endless-data guard), and a connection that delivers
//! nothing for the stall timeout is dropped (slow-retrieval guard); the partial file is
//! kept so the next attempt resumes.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kernex_common::api::BundleCommand;
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{Client, ClientError};

/// A stall with no bytes for this long aborts the attempt (SPEC §3).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a download did not produce a verified archive.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// Try again later; the partial file (if any) is kept for resuming.
    #[error("{0}")]
    Retry(String),
    /// The deployment fails: the bundle is not what the command promised, or the server
    /// will not give it to us.
    #[error("{0}")]
    Fail(String),
}

impl From<io::Error> for DownloadError {
    fn from(e: io::Error) -> Self {
        DownloadError::Retry(format!("local I/O error: {e}"))
    }
}

/// Download parameters.
pub struct Download<'a> {
    pub client: &'a Client,
    pub token: &'a str,
    pub command: &'a BundleCommand,
    pub dir: &'a Path,
    pub stall_timeout: Duration,
}

impl Download<'_> {
    /// Where the partial / finished file lives.
    pub fn part_path(&self) -> PathBuf {
        self.dir
            .join(format!("{}.part", self.command.checksum_sha256))
    }

    /// Fetch (or finish fetching) the archive and verify it. `progress` gets the bytes
    /// held so far. On success the verified archive's path is returned.
    pub async fn run(&self, mut progress: impl FnMut(u64)) -> Result<PathBuf, DownloadError> {
        let cmd = self.command;
        let expected = cmd.checksum_sha256.to_ascii_lowercase();
        if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DownloadError::Fail(format!(
                "command carries an invalid checksum {:?}",
                cmd.checksum_sha256
            )));
        }
        let part = self.part_path();
        let size = cmd.size_bytes;

        // Pick up where an earlier attempt stopped: re-hash what is already there.
        let mut hasher = Sha256::new();
        let mut have = match tokio::fs::metadata(&part).await {
            Ok(m) if m.len() <= size => hash_existing(&part, &mut hasher).await?,
            Ok(_) => {
                tokio::fs::remove_file(&part).await?;
                0
            }
            Err(_) => 0,
        };

        let mut restarted = false;
        while have < size {
            // The stall guard covers the wait for the response too: a connection that
            // goes silent after the request was sent must not hang the deployment.
            let request = self.client.download(self.token, &cmd.bundle_id, have);
            let resp = match tokio::time::timeout(self.stall_timeout, request).await {
                Err(_) => {
                    return Err(DownloadError::Retry(format!(
                        "download stalled: no answer for {:?} (at {have} of {size} bytes; will resume)",
                        self.stall_timeout
                    )));
                }
                Ok(Err(e)) => return Err(classify(e)),
                Ok(Ok(r)) => r,
            };
            let mut file = match resp.status() {
                StatusCode::PARTIAL_CONTENT if content_range_start(&resp) == Some(have) => {
                    tokio::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&part)
                        .await?
                }
                StatusCode::OK => {
                    // A full body: start from zero whatever we had.
                    hasher = Sha256::new();
                    have = 0;
                    tokio::fs::File::create(&part).await?
                }
                status if !restarted => {
                    // 416, or a 206 for a range we did not ask for: our partial file
                    // does not match the server's; start over once.
                    tracing::warn!(%status, have, "resume refused; downloading from the start");
                    restarted = true;
                    tokio::fs::remove_file(&part).await.ok();
                    hasher = Sha256::new();
                    have = 0;
                    continue;
                }
                status => {
                    return Err(DownloadError::Retry(format!(
                        "server answered {status} to a download from byte {have}"
                    )));
                }
            };
            if let Some(len) = resp.content_length()
                && have + len > size
            {
                drop(file);
                tokio::fs::remove_file(&part).await.ok();
                return Err(DownloadError::Fail(format!(
                    "server offers {} bytes but the command says {size}",
                    have + len
                )));
            }
            let mut resp = resp;
            loop {
                let chunk = match tokio::time::timeout(self.stall_timeout, resp.chunk()).await {
                    Err(_) => {
                        file.flush().await?;
                        return Err(DownloadError::Retry(format!(
                            "download stalled: no data for {:?} (at {have} of {size} bytes; will resume)",
                            self.stall_timeout
                        )));
                    }
                    Ok(Err(e)) => {
                        file.flush().await?;
                        return Err(DownloadError::Retry(format!(
                            "download interrupted at {have} of {size} bytes: {e}"
                        )));
                    }
                    Ok(Ok(None)) => break,
                    Ok(Ok(Some(c))) => c,
                };
                if have + chunk.len() as u64 > size {
                    drop(file);
                    tokio::fs::remove_file(&part).await.ok();
                    return Err(DownloadError::Fail(format!(
                        "server sent more than the {size} bytes the command announced; download discarded"
                    )));
                }
                file.write_all(&chunk).await?;
                hasher.update(&chunk);
                have += chunk.len() as u64;
                progress(have);
            }
            file.sync_all().await?;
            if have < size {
                return Err(DownloadError::Retry(format!(
                    "download ended early at {have} of {size} bytes (will resume)"
                )));
            }
        }

        let actual = hex::encode(hasher.finalize());
        if actual != expected {
            tokio::fs::remove_file(&part).await.ok();
            return Err(DownloadError::Fail(format!(
                "checksum mismatch: expected {expected}, got {actual}; download discarded"
            )));
        }
        Ok(part)
    }
}

fn classify(e: ClientError) -> DownloadError {
    if e.is_transient() || e.status() == Some(StatusCode::UNAUTHORIZED) {
        DownloadError::Retry(format!("download failed: {e}"))
    } else {
        DownloadError::Fail(format!("bundle download refused: {e}"))
    }
}

fn content_range_start(resp: &reqwest::Response) -> Option<u64> {
    // "bytes 100-999/1000"
    let v = resp
        .headers()
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    v.strip_prefix("bytes ")?.split('-').next()?.parse().ok()
}

async fn hash_existing(path: &Path, hasher: &mut Sha256) -> io::Result<u64> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}
