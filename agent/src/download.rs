//! Streamed, resumable, checksummed bundle download (SPEC §3 step 1).
//!
//! The archive goes to `downloads/<sha256>.part`, hashed as it arrives. A partial file
//! from an earlier attempt is resumed with `Range`. More bytes than the command's
//! `size_bytes` are never accepted (endless-data guard), and a connection that delivers
//! nothing for the stall timeout is dropped (slow-retrieval guard); the partial file is
//! kept so the next attempt resumes.
//!
//! A server that drips a byte now and then never trips the stall guard, so each attempt
//! also has an overall deadline ([`Pace`]): a grace period plus the bytes still missing
//! at a minimum rate. Missing it fails the deployment (the partial file is removed):
//! a link that slow will not deliver the bundle, and the operator should hear so.

use std::future::Future;
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

/// Default of `--download-min-rate`: 1 KiB/s, slower than any working 2G link.
pub const MIN_RATE: u64 = 1024;
/// Default of `--download-grace`: connection set-up and a slow start.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(60);

/// The overall deadline of one download attempt: `grace` plus the missing bytes at
/// `min_rate` bytes/s. A `min_rate` of 0 turns it off (only the stall guard remains).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    pub min_rate: u64,
    pub grace: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            min_rate: MIN_RATE,
            grace: DEADLINE_GRACE,
        }
    }
}

impl Pace {
    /// How long fetching `missing` more bytes may take; `None` without a minimum rate.
    pub fn limit(&self, missing: u64) -> Option<Duration> {
        (self.min_rate > 0)
            .then(|| self.grace + Duration::from_secs_f64(missing as f64 / self.min_rate as f64))
    }
}

/// Why a wait for the network ended without an answer.
enum Waited {
    Stalled,
    PastDeadline,
}

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
    /// The attempt's overall deadline.
    pub pace: Pace,
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
        let size = cmd.size_bytes;
        let (mut hasher, mut have) = self.resume().await?;
        let started = tokio::time::Instant::now();
        let limit = self.pace.limit(size - have);
        let deadline = limit.map(|l| started + l);

        let mut restarted = false;
        while have < size {
            // The stall guard covers the wait for the response too: a connection that
            // goes silent after the request was sent must not hang the deployment.
            let request = self.client.download(self.token, &cmd.bundle_id, have);
            let resp = match self.wait(deadline, request).await {
                Err(Waited::Stalled) => {
                    return Err(DownloadError::Retry(format!(
                        "download stalled: no answer for {:?} (at {have} of {size} bytes; will resume)",
                        self.stall_timeout
                    )));
                }
                Err(Waited::PastDeadline) => {
                    return Err(self.too_slow(have, started.elapsed(), limit).await);
                }
                Ok(Err(e)) => return Err(classify(e)),
                Ok(Ok(r)) => r,
            };
            let file = match self.open_part(&resp, have, restarted).await? {
                Opened::Append(file) => file,
                Opened::FromZero(file) => {
                    hasher = Sha256::new();
                    have = 0;
                    file
                }
                Opened::StartOver => {
                    restarted = true;
                    hasher = Sha256::new();
                    have = 0;
                    continue;
                }
            };
            if let Some(len) = resp.content_length()
                && have + len > size
            {
                drop(file);
                tokio::fs::remove_file(self.part_path()).await.ok();
                return Err(DownloadError::Fail(format!(
                    "server offers {} bytes but the command says {size}",
                    have + len
                )));
            }
            let body = Body {
                resp,
                file,
                hasher: &mut hasher,
                have: &mut have,
            };
            if let Err(waited) = self.receive(body, deadline, &mut progress).await? {
                return Err(match waited {
                    Waited::Stalled => DownloadError::Retry(format!(
                        "download stalled: no data for {:?} (at {have} of {size} bytes; will resume)",
                        self.stall_timeout
                    )),
                    Waited::PastDeadline => self.too_slow(have, started.elapsed(), limit).await,
                });
            }
            if have < size {
                return Err(DownloadError::Retry(format!(
                    "download ended early at {have} of {size} bytes (will resume)"
                )));
            }
        }

        let actual = hex::encode(hasher.finalize());
        if actual != expected {
            tokio::fs::remove_file(self.part_path()).await.ok();
            return Err(DownloadError::Fail(format!(
                "checksum mismatch: expected {expected}, got {actual}; download discarded"
            )));
        }
        Ok(self.part_path())
    }

    /// Pick up where an earlier attempt stopped: re-hash what is already there (a partial
    /// file longer than the bundle cannot be ours and goes).
    async fn resume(&self) -> Result<(Sha256, u64), DownloadError> {
        let part = self.part_path();
        let mut hasher = Sha256::new();
        let have = match tokio::fs::metadata(&part).await {
            Ok(m) if m.len() <= self.command.size_bytes => {
                hash_existing(&part, &mut hasher).await?
            }
            Ok(_) => {
                tokio::fs::remove_file(&part).await?;
                0
            }
            Err(_) => 0,
        };
        Ok((hasher, have))
    }

    /// Where the body of `resp` goes, given that `have` bytes are already on disk.
    async fn open_part(
        &self,
        resp: &reqwest::Response,
        have: u64,
        restarted: bool,
    ) -> Result<Opened, DownloadError> {
        let part = self.part_path();
        match resp.status() {
            StatusCode::PARTIAL_CONTENT if content_range_start(resp) == Some(have) => {
                let file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&part)
                    .await?;
                Ok(Opened::Append(file))
            }
            // A full body: start from zero whatever we had.
            StatusCode::OK => Ok(Opened::FromZero(tokio::fs::File::create(&part).await?)),
            status if !restarted => {
                // 416, or a 206 for a range we did not ask for: our partial file does
                // not match the server's; start over once.
                tracing::warn!(%status, have, "resume refused; downloading from the start");
                tokio::fs::remove_file(&part).await.ok();
                Ok(Opened::StartOver)
            }
            status => Err(DownloadError::Retry(format!(
                "server answered {status} to a download from byte {have}"
            ))),
        }
    }

    /// Copy one response body to the partial file, hashing it. `Ok(Err(_))` when the
    /// network went quiet or the deadline passed (what arrived is flushed and kept);
    /// `Err` for a body larger than announced or a local I/O error.
    async fn receive(
        &self,
        mut body: Body<'_>,
        deadline: Option<tokio::time::Instant>,
        progress: &mut impl FnMut(u64),
    ) -> Result<Result<(), Waited>, DownloadError> {
        let size = self.command.size_bytes;
        loop {
            let chunk = match self.wait(deadline, body.resp.chunk()).await {
                Err(waited) => {
                    body.file.flush().await?;
                    return Ok(Err(waited));
                }
                Ok(Err(e)) => {
                    body.file.flush().await?;
                    return Err(DownloadError::Retry(format!(
                        "download interrupted at {} of {size} bytes: {e}",
                        body.have
                    )));
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(c))) => c,
            };
            if *body.have + chunk.len() as u64 > size {
                drop(body.file);
                tokio::fs::remove_file(self.part_path()).await.ok();
                return Err(DownloadError::Fail(format!(
                    "server sent more than the {size} bytes the command announced; download discarded"
                )));
            }
            body.file.write_all(&chunk).await?;
            body.hasher.update(&chunk);
            *body.have += chunk.len() as u64;
            progress(*body.have);
        }
        body.file.sync_all().await?;
        Ok(Ok(()))
    }

    /// `fut`, unless the stall timeout or the overall deadline comes first.
    async fn wait<F: Future>(
        &self,
        deadline: Option<tokio::time::Instant>,
        fut: F,
    ) -> Result<F::Output, Waited> {
        let overall = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            out = fut => Ok(out),
            () = overall => Err(Waited::PastDeadline),
            () = tokio::time::sleep(self.stall_timeout) => Err(Waited::Stalled),
        }
    }

    /// The attempt missed its deadline: the deployment fails and the partial file goes.
    async fn too_slow(&self, have: u64, took: Duration, limit: Option<Duration>) -> DownloadError {
        tokio::fs::remove_file(self.part_path()).await.ok();
        DownloadError::Fail(format!(
            "download too slow: {have} of {} bytes after {:.0} s, past its deadline of {:.0} s \
             ({} s grace + the bundle at {} bytes/s; see --download-min-rate); download discarded",
            self.command.size_bytes,
            took.as_secs_f64(),
            limit.unwrap_or_default().as_secs_f64(),
            self.pace.grace.as_secs(),
            self.pace.min_rate,
        ))
    }
}

/// Where a response's body goes.
enum Opened {
    /// After the bytes already held (a 206 for the range asked for).
    Append(tokio::fs::File),
    /// Into an emptied partial file (a 200: the whole body).
    FromZero(tokio::fs::File),
    /// Nowhere: the resume was refused; ask again from byte 0.
    StartOver,
}

/// One response body on its way into the partial file.
struct Body<'a> {
    resp: reqwest::Response,
    file: tokio::fs::File,
    hasher: &'a mut Sha256,
    have: &'a mut u64,
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
