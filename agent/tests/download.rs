#![allow(clippy::unwrap_used)]
//! SPEC §3 step 1: the agent's bundle download, against small axum servers that behave
//! (Range honoured) or misbehave (Range ignored or refused, endless data, stalls, short
//! bodies, wrong bytes, error statuses, a slow drip past the overall deadline).

use std::convert::Infallible;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use futures_util::stream::{self, StreamExt};
use kernex_agent::client::Client;
use kernex_agent::download::{
    DEADLINE_GRACE, Download, DownloadError, MIN_RATE, Pace, STALL_TIMEOUT,
};
use kernex_common::api::BundleCommand;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

const BUNDLE_ID: &str = "bundle-42";
const TOKEN: &str = "t";
/// Bundle size: several chunks, and not a multiple of any usual buffer size.
const LEN: usize = 200_003;
/// The deliberate stall timeout of the slow-retrieval tests.
const SHORT_STALL: Duration = Duration::from_millis(300);
/// Outer bound on any download: only a missing guard makes a test wait this long.
const LIMIT: Duration = Duration::from_secs(30);

/// How the fake bundle server answers `GET /api/v1/bundles/{id}`.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// A correct server: 200 without `Range`, 206 + `Content-Range` with it, 416 past
    /// the end.
    Honour,
    /// Always 200 with the whole body, `Range` or not.
    IgnoreRange,
    /// 416 for any `Range`, 200 with the whole body without.
    RefuseRange,
    /// A `Range` gets a 206 for a range that starts at 0 (not the one asked for); no
    /// `Range` gets a 200.
    RangeFromZero,
    /// Always 206 for bytes 1.. — never the range the agent asked for.
    AlwaysWrongRange,
    /// This status with a small JSON error body.
    Status(StatusCode),
    /// 200, chunked (no `Content-Length`), bytes without end (capped at 64 MiB so that
    /// a missing guard shows up as a failure, not a full disk).
    Endless,
    /// 200 declaring a `Content-Length` larger than the body, then this many bytes and
    /// nothing more, ever.
    OverLength(usize),
    /// 200 chunked: the first this many bytes of the body, then nothing, ever.
    Stall(usize),
    /// 200 chunked: the first this many bytes of the body, then a clean end.
    Short(usize),
    /// 200 declaring the full `Content-Length`: the first this many bytes, then (once
    /// the test opens [`Srv::gate`]) the connection is cut.
    Cut(usize),
    /// Accepts the request and never answers, not even the status line.
    Silent,
    /// 200 with the full `Content-Length`, the body in pieces of this many bytes, one
    /// every [`DRIP_EVERY`]: never silent long enough to trip the stall guard.
    Drip(usize),
}

/// The pause between two pieces of [`Mode::Drip`].
const DRIP_EVERY: Duration = Duration::from_millis(50);

/// One request the fake server saw.
#[derive(Clone, Debug)]
struct Hit {
    bundle_id: String,
    auth: Option<String>,
    range: Option<String>,
    status: StatusCode,
    /// Body bytes the server put (or meant to put) in the answer.
    served: usize,
}

struct Srv {
    body: Vec<u8>,
    mode: Mode,
    hits: Mutex<Vec<Hit>>,
    /// Holds [`Mode::Cut`]'s body until the agent has the first bytes.
    gate: Notify,
}

impl Srv {
    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

fn bundle_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn command_for(body: &[u8]) -> BundleCommand {
    BundleCommand {
        deployment_id: "dep-1".into(),
        bundle_id: BUNDLE_ID.into(),
        bundle_version: "1.2.3".into(),
        checksum_sha256: sha(body),
        size_bytes: body.len() as u64,
        signed: None,
    }
}

fn part_file(dir: &Path, cmd: &BundleCommand) -> PathBuf {
    dir.join(format!("{}.part", cmd.checksum_sha256))
}

/// `bytes=N-` → N.
fn range_start(range: &str) -> u64 {
    range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the agent sent an unexpected Range {range:?}"))
}

fn full(status: StatusCode, bytes: &[u8]) -> Response {
    let mut resp = Response::new(Body::from(bytes.to_vec()));
    *resp.status_mut() = status;
    resp
}

fn partial(body: &[u8], start: usize) -> Response {
    let mut resp = full(StatusCode::PARTIAL_CONTENT, &body[start..]);
    let value = format!("bytes {start}-{}/{}", body.len() - 1, body.len());
    resp.headers_mut().insert(
        header::CONTENT_RANGE,
        HeaderValue::from_str(&value).unwrap(),
    );
    resp
}

fn streamed(bytes: Vec<u8>, then_stall: bool) -> Body {
    let head = stream::iter([Ok::<_, Infallible>(Bytes::from(bytes))]);
    if then_stall {
        Body::from_stream(head.chain(stream::pending()))
    } else {
        Body::from_stream(head)
    }
}

async fn bundle(
    State(srv): State<Arc<Srv>>,
    UrlPath(bundle_id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let text = |name| {
        headers
            .get(name)
            .map(|v: &HeaderValue| v.to_str().unwrap().to_owned())
    };
    let auth = text(header::AUTHORIZATION);
    let range = text(header::RANGE);
    let offset = range.as_deref().map(|r| range_start(r) as usize);
    let body = &srv.body;
    let len = body.len();

    let (resp, served) = match srv.mode {
        Mode::Honour => match offset {
            None => (full(StatusCode::OK, body), len),
            Some(start) if start < len => (partial(body, start), len - start),
            Some(_) => {
                let mut resp = full(StatusCode::RANGE_NOT_SATISFIABLE, b"{}");
                let value = HeaderValue::from_str(&format!("bytes */{len}")).unwrap();
                resp.headers_mut().insert(header::CONTENT_RANGE, value);
                (resp, 0)
            }
        },
        Mode::IgnoreRange => (full(StatusCode::OK, body), len),
        Mode::RefuseRange => match offset {
            None => (full(StatusCode::OK, body), len),
            Some(_) => (full(StatusCode::RANGE_NOT_SATISFIABLE, b"{}"), 0),
        },
        Mode::RangeFromZero => match offset {
            None => (full(StatusCode::OK, body), len),
            Some(_) => (partial(body, 0), len),
        },
        Mode::AlwaysWrongRange => (partial(body, 1), len - 1),
        Mode::Status(status) => {
            let msg = br#"{"error":"nope","message":"not for you"}"#;
            let mut resp = full(status, msg);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            (resp, 0)
        }
        Mode::Endless => {
            let chunk = Bytes::from(vec![0x5a_u8; 4096]);
            let endless = stream::repeat(Ok::<_, Infallible>(chunk)).take(16 * 1024);
            (Response::new(Body::from_stream(endless)), usize::MAX)
        }
        Mode::OverLength(n) => {
            let mut resp = Response::new(streamed(body[..n].to_vec(), true));
            let declared = HeaderValue::from(len as u64 + 1000);
            resp.headers_mut().insert(header::CONTENT_LENGTH, declared);
            (resp, n)
        }
        Mode::Stall(n) => (Response::new(streamed(body[..n].to_vec(), true)), n),
        Mode::Short(n) => (Response::new(streamed(body[..n].to_vec(), false)), n),
        Mode::Cut(n) => {
            let head = stream::iter([Ok(Bytes::from(body[..n].to_vec()))]);
            let gate = srv.clone();
            let cut = stream::once(async move {
                gate.gate.notified().await;
                Err(io::Error::other("connection cut"))
            });
            let mut resp = Response::new(Body::from_stream(head.chain(cut)));
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len as u64));
            (resp, n)
        }
        Mode::Silent => (Response::new(Body::empty()), 0),
        Mode::Drip(piece) => {
            let start = offset.unwrap_or(0).min(len);
            let pieces: Vec<Bytes> = body[start..]
                .chunks(piece)
                .map(Bytes::copy_from_slice)
                .collect();
            let drip = stream::iter(pieces).then(|b| async move {
                tokio::time::sleep(DRIP_EVERY).await;
                Ok::<_, Infallible>(b)
            });
            let mut resp = Response::new(Body::from_stream(drip));
            resp.headers_mut().insert(
                header::CONTENT_LENGTH,
                HeaderValue::from((len - start) as u64),
            );
            (resp, len - start)
        }
    };
    srv.hits.lock().unwrap().push(Hit {
        bundle_id,
        auth,
        range,
        status: resp.status(),
        served,
    });
    if matches!(srv.mode, Mode::Silent) {
        std::future::pending::<()>().await;
    }
    resp
}

/// A fake bundle server on a free local port; returns its base URL.
async fn serve(body: &[u8], mode: Mode) -> (String, Arc<Srv>) {
    let srv = Arc::new(Srv {
        body: body.to_vec(),
        mode,
        hits: Mutex::new(Vec::new()),
        gate: Notify::new(),
    });
    let app = Router::new()
        .route("/api/v1/bundles/{id}", get(bundle))
        .with_state(srv.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), srv)
}

struct Outcome {
    result: Result<PathBuf, DownloadError>,
    /// Every value the progress callback got.
    progress: Vec<u64>,
}

async fn fetch(url: &str, cmd: &BundleCommand, dir: &Path, stall_timeout: Duration) -> Outcome {
    fetch_hooked(url, cmd, dir, stall_timeout, |_| {}).await
}

/// [`fetch`] with an overall deadline other than the default.
async fn fetch_paced(url: &str, cmd: &BundleCommand, dir: &Path, pace: Pace) -> Outcome {
    fetch_with(url, cmd, dir, STALL_TIMEOUT, pace, |_| {}).await
}

/// [`fetch`], calling `hook` with each progress value as well.
async fn fetch_hooked(
    url: &str,
    cmd: &BundleCommand,
    dir: &Path,
    stall_timeout: Duration,
    hook: impl FnMut(u64),
) -> Outcome {
    fetch_with(url, cmd, dir, stall_timeout, Pace::default(), hook).await
}

async fn fetch_with(
    url: &str,
    cmd: &BundleCommand,
    dir: &Path,
    stall_timeout: Duration,
    pace: Pace,
    mut hook: impl FnMut(u64),
) -> Outcome {
    let client = Client::new(url, None).unwrap();
    let mut progress = Vec::new();
    let download = Download {
        client: &client,
        token: TOKEN,
        command: cmd,
        dir,
        stall_timeout,
        pace,
    };
    let result = tokio::time::timeout(
        LIMIT,
        download.run(|have| {
            progress.push(have);
            hook(have);
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("the download did not finish within {LIMIT:?}"));
    Outcome { result, progress }
}

fn expect_fail(result: Result<PathBuf, DownloadError>) -> String {
    match result {
        Err(DownloadError::Fail(msg)) => msg,
        other => panic!("expected DownloadError::Fail, got {other:?}"),
    }
}

fn expect_retry(result: Result<PathBuf, DownloadError>) -> String {
    match result {
        Err(DownloadError::Retry(msg)) => msg,
        other => panic!("expected DownloadError::Retry, got {other:?}"),
    }
}

/// The download succeeded and the file it names holds exactly `body`.
fn assert_verified(outcome: &Outcome, dir: &Path, cmd: &BundleCommand, body: &[u8]) {
    let path = match &outcome.result {
        Ok(path) => path.clone(),
        Err(e) => panic!("expected a verified download, got {e:?}"),
    };
    assert_eq!(path, part_file(dir, cmd));
    let got = std::fs::read(&path).unwrap();
    assert_eq!(got.len(), body.len(), "downloaded file has the wrong size");
    assert!(got == body, "downloaded file differs from the bundle");
    assert_eq!(sha(&got), cmd.checksum_sha256);
    assert_eq!(outcome.progress.last(), Some(&(body.len() as u64)));
    assert!(
        outcome.progress.windows(2).all(|w| w[0] < w[1]),
        "progress must grow: {:?}",
        outcome.progress
    );
}

#[test]
fn stall_timeout_is_sixty_seconds() {
    assert_eq!(STALL_TIMEOUT, Duration::from_secs(60));
}

#[tokio::test]
async fn full_download_is_verified() {
    let body = bundle_body(LEN);
    let cmd = command_for(&body);
    let tmp = tempfile::tempdir().unwrap();
    let (url, srv) = serve(&body, Mode::Honour).await;

    let outcome = fetch(&url, &cmd, tmp.path(), STALL_TIMEOUT).await;

    assert_verified(&outcome, tmp.path(), &cmd, &body);
    let hits = srv.hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].bundle_id, BUNDLE_ID);
    assert_eq!(hits[0].auth.as_deref(), Some("Bearer t"));
    assert_eq!(hits[0].range, None, "nothing to resume, so no Range");
    assert_eq!(hits[0].status, StatusCode::OK);
}

#[tokio::test]
async fn resumes_a_partial_file_with_range() {
    let body = bundle_body(LEN);
    let cmd = command_for(&body);
    let tmp = tempfile::tempdir().unwrap();
    let have = 70_001;
    std::fs::write(part_file(tmp.path(), &cmd), &body[..have]).unwrap();
    let (url, srv) = serve(&body, Mode::Honour).await;

    let outcome = fetch(&url, &cmd, tmp.path(), STALL_TIMEOUT).await;

    assert_verified(&outcome, tmp.path(), &cmd, &body);
    let hits = srv.hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].range.as_deref(), Some("bytes=70001-"));
    assert_eq!(hits[0].auth.as_deref(), Some("Bearer t"));
    assert_eq!(hits[0].status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(hits[0].served, LEN - have, "only the rest is fetched");
    assert!(
        outcome.progress[0] > have as u64,
        "progress counts the bytes already held: {:?}",
        &outcome.progress[..1]
    );
}

#[tokio::test]
async fn complete_partial_file_needs_no_request() {
    let body = bundle_body(LEN);
    let cmd = command_for(&body);
    let tmp = tempfile::tempdir().unwrap();
    let part = part_file(tmp.path(), &cmd);
    std::fs::write(&part, &body).unwrap();
    let (url, srv) = serve(&body, Mode::Honour).await;

    let outcome = fetch(&url, &cmd, tmp.path(), STALL_TIMEOUT).await;

    assert_eq!(outcome.result.unwrap(), part);
    assert_eq!(std::fs::read(&part).unwrap(), body);
    assert!(srv.hits().is_empty(), "{:?}", srv.hits());
}

#[tokio::test]
async fn oversized_partial_file_is_discarded() {
    let body = bundle_body(LEN);
    let cmd = command_for(&body);
    let tmp = tempfile::tempdir().unwrap();
    let mut junk = body.clone();
    junk.extend_from_slice(b"trailing junk");
    std::fs::write(part_file(tmp.path(), &cmd), &junk).unwrap();
    let (url, srv) = serve(&body, Mode::Honour).await;

    let outcome = fetch(&url, &cmd, tmp.path(), STALL_TIMEOUT).await;

    assert_verified(&outcome, tmp.path(), &cmd, &body);
    let hits = srv.hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(
        hits[0].range, None,
        "a too-long partial file is not resumed"
    );
}

#[tokio::test]
async fn server_ignoring_range_gives_no_duplicated_bytes() {
    let body = bundle_body(LEN);
    let cmd = command_for(&body);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(part_file(tmp.path(), &cmd), &body[..50_000]).unwrap();
    let (url, srv) = serve(&body, Mode::IgnoreRange).await;

    let outcome = fetch(&url, &cmd, tmp.path(), STALL_TIMEOUT).await;

    assert_verified(&outcome, tmp.path(), &cmd, &body);
    let hits = srv.hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].range.as_deref(), Some("bytes=50000-"));
    assert_eq!(hits[0].status, StatusCode::OK);
}

#[tokio::test]
async fn range_not_satisfiable_restarts_from_zero_once() {
    let body = bundle_body(LEN);
    let cmd = command_for(&body);
    let tmp = tempfile::tempdir().unwrap();
    // A bogus partial file: the right length for a prefix, the wrong bytes.
    std::fs::write(part_file(tmp.path(), &cmd), vec![0xff_u8; 1234]).unwrap();
    let (url, srv) = serve(&body, Mode::RefuseRange).await;

    let outcome = fetch(&url, &cmd, tmp.path(), STALL_TIMEOUT).await;

    assert_verified(&outcome, tmp.path(), &cmd, &body);
    let hits = srv.hits();
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(hits[0].range.as_deref(), Some("bytes=1234-"));
    assert_eq!(hits[0].status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(hits[1].range, None, "the restart asks for the whole bundle");
    assert_eq!(hits[1].status, StatusCode::OK);
}

#[tokio::test]
async fn partial_content_for_another_range_restarts_from_zero() {
    let body = bundle_body(LEN);
    let cmd = command_for(&body);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(part_file(tmp.path(), &cmd), &body[..4321]).unwrap();
    let (url, srv) = serve(&body, Mode::RangeFromZero).await;

    let outcome = fetch(&url, &cmd, tmp.path(), STALL_TIMEOUT).await;

    // Appending the 206 (which starts at 0) to the 4321 bytes held would duplicate them.
    assert_verified(&outcome, tmp.path(), &cmd, &body);
    let hits = srv.hits();
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(hits[0].range.as_deref(), Some("bytes=4321-"));
    assert_eq!(hits[0].status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(hits[1].range, None);
    assert_eq!(hits[1].status, StatusCode::OK);
}

#[tokio::test]
async fn restart_happens_only_once() {
    let body = bundle_body(LEN);
    let cmd = command_for(&body);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(part_file(tmp.path(), &cmd), &body[..999]).unwrap();
    let (url, srv) = serve(&body, Mode::AlwaysWrongRange).await;

    let outcome = fetch(&url, &cmd, tmp.path(), STALL_TIMEOUT).await;

    expect_retry(outcome.result);
    let hits = srv.hits();
    assert_eq!(
        hits.len(),
        2,
        "one resume, one restart, then give up: {hits:?}"
    );
    assert_eq!(hits[0].range.as_deref(), Some("bytes=999-"));
    assert_eq!(hits[1].range, None);
}

#[tokio::test]
async fn endless_data_is_cut_at_size_bytes() {
    let body = bundle_body(LEN);
    let cmd = command_for(&body);
    let tmp = tempfile::tempdir().unwrap();
    let (url, srv) = serve(&body, Mode::Endless).await;

    let outcome = fetch(&url, &cmd, tmp.path(), STALL_TIMEOUT).await;

    let max_held = outcome.progress.iter().copied().max().unwrap_or(0);
    let msg = expect_fail(outcome.result);
    assert!(msg.contains("more than"), "{msg}");
    assert!(
        max_held <= cmd.size_bytes,
        "held {max_held} bytes of a {LEN}-byte bundle"
    );
    assert!(
        !part_file(tmp.path(), &cmd).exists(),
        "the .part file must go"
    );
    assert_eq!(srv.hits().len(), 1);
}

#[tokio::test]
async fn endless_data_on_resume_is_cut_too() {
    let body = bundle_body(LEN);
    let cmd = command_for(&body);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(part_file(tmp.path(), &cmd), &body[..100_000]).unwrap();
    let (url, _srv) = serve(&body, Mode::Endless).await;

    let outcome = fetch(&url, &cmd, tmp.path(), STALL_TIMEOUT).await;

    let max_held = outcome.progress.iter().copied().max().unwrap_or(0);
    let msg = expect_fail(outcome.result);
    assert!(msg.contains("more than"), "{msg}");
    assert!(max_held <= cmd.size_bytes, "held {max_held} bytes");
    assert!(
        !part_file(tmp.path(), &cmd).exists(),
        "the .part file must go"
    );
}

#[tokio::test]
async fn content_length_above_size_fails_before_reading() {
    let body = bundle_body(LEN);
    let cmd = command_for(&body);
    let tmp = tempfile::tempdir().unwrap();
    // Declares LEN + 1000 bytes, sends 10 000 and stalls: reading would end in a
    // stall Retry, so only the up-front Content-Length check gives a Fail here.
    let (url, srv) = serve(&body, Mode::OverLength(10_000)).await;

    let outcome = fetch(&url, &cmd, tmp.path(), SHORT_STALL).await;

    let msg = expect_fail(outcome.result);
    assert!(msg.contains(&(LEN + 1000).to_string()), "{msg}");
    assert!(outcome.progress.is_empty(), "read {:?}", outcome.progress);
    assert!(
        !part_file(tmp.path(), &cmd).exists(),
        "the .part file must go"
    );
    assert_eq!(srv.hits().len(), 1);
}

#[tokio::test]
async fn stall_keeps_the_partial_file_and_the_next_attempt_resumes() {
    let body = bundle_body(LEN);
    let cmd = command_for(&body);
    let tmp = tempfile::tempdir().unwrap();
    let sent = 60_000;
    let (url, stalling) = serve(&body, Mode::Stall(sent)).await;

    let outcome = fetch(&url, &cmd, tmp.path(), SHORT_STALL).await;

    let msg = expect_retry(outcome.result);
    assert!(msg.contains("stalled"), "{msg}");
    assert_eq!(stalling.hits().len(), 1);
    let part = part_file(tmp.path(), &cmd);
    let kept = std::fs::read(&part).expect("the .part file is kept for resuming");
    assert_eq!(
        kept.len(),
        sent,
        "everything received before the stall is kept"
    );
    assert!(
        kept == body[..sent],
        "the kept bytes are the bundle's first bytes"
    );
    assert_eq!(outcome.progress.last(), Some(&(sent as u64)));

    // The next attempt, against a server that behaves, picks up where the stall hit.
    let (url, good) = serve(&body, Mode::Honour).await;
    let outcome = fetch(&url, &cmd, tmp.path(), SHORT_STALL).await;

    assert_verified(&outcome, tmp.path(), &cmd, &body);
    let hits = good.hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].range.as_deref(), Some("bytes=60000-"));
    assert_eq!(hits[0].served, LEN - sent);
}

#[tokio::test]
async fn server_that_never_answers_counts_as_a_stall() {
    let body = bundle_body(LEN);
    let cmd = command_for(&body);
    let tmp = tempfile::tempdir().unwrap();
    let (url, srv) = serve(&body, Mode::Silent).await;

    // With no bytes at all for the stall timeout the attempt must end (SPEC §3 step 1:
    // slow-retrieval guard), not hang until the outer LIMIT.
    let outcome = fetch(&url, &cmd, tmp.path(), SHORT_STALL).await;

    let msg = expect_retry(outcome.result);
    assert!(msg.contains("stalled"), "{msg}");
    assert_eq!(srv.hits().len(), 1);
}

#[tokio::test]
async fn checksum_mismatch_fails_and_discards() {
    let body = bundle_body(LEN);
    let mut cmd = command_for(&body);
    let mut other = body.clone();
    other[LEN / 2] ^= 1;
    cmd.checksum_sha256 = sha(&other);
    let tmp = tempfile::tempdir().unwrap();
    let (url, _srv) = serve(&body, Mode::Honour).await;

    let outcome = fetch(&url, &cmd, tmp.path(), STALL_TIMEOUT).await;

    let msg = expect_fail(outcome.result);
    assert!(msg.contains("checksum mismatch"), "{msg}");
    assert!(
        !part_file(tmp.path(), &cmd).exists(),
        "the .part file must go"
    );
}

#[tokio::test]
async fn uppercase_checksum_is_accepted() {
    let body = bundle_body(LEN);
    let mut cmd = command_for(&body);
    cmd.checksum_sha256 = cmd.checksum_sha256.to_ascii_uppercase();
    let tmp = tempfile::tempdir().unwrap();
    let (url, _srv) = serve(&body, Mode::Honour).await;

    let outcome = fetch(&url, &cmd, tmp.path(), STALL_TIMEOUT).await;

    let path = outcome.result.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
}

#[tokio::test]
async fn body_ending_early_is_retried_and_kept() {
    let body = bundle_body(LEN);
    let cmd = command_for(&body);
    let tmp = tempfile::tempdir().unwrap();
    let sent = 12_345;
    let (url, _srv) = serve(&body, Mode::Short(sent)).await;

    let outcome = fetch(&url, &cmd, tmp.path(), STALL_TIMEOUT).await;

    let msg = expect_retry(outcome.result);
    assert!(msg.contains("early"), "{msg}");
    let kept = std::fs::read(part_file(tmp.path(), &cmd)).expect("the .part file is kept");
    assert!(kept == body[..sent], "kept {} bytes", kept.len());
}

#[tokio::test]
async fn connection_cut_mid_body_is_retried_and_kept() {
    let body = bundle_body(LEN);
    let cmd = command_for(&body);
    let tmp = tempfile::tempdir().unwrap();
    let sent = 30_000;
    let (url, srv) = serve(&body, Mode::Cut(sent)).await;

    // The server hangs up once the agent holds some bytes.
    let outcome = fetch_hooked(&url, &cmd, tmp.path(), STALL_TIMEOUT, |_| {
        srv.gate.notify_one()
    })
    .await;

    let msg = expect_retry(outcome.result);
    assert!(msg.contains("interrupted"), "{msg}");
    let kept = std::fs::read(part_file(tmp.path(), &cmd)).expect("the .part file is kept");
    assert!(
        !kept.is_empty() && kept.len() <= sent,
        "kept {} bytes",
        kept.len()
    );
    assert!(kept == body[..kept.len()], "the kept bytes are a prefix");
    assert_eq!(outcome.progress.last(), Some(&(kept.len() as u64)));
}

#[tokio::test]
async fn refusals_fail() {
    let body = bundle_body(1000);
    let cmd = command_for(&body);
    for status in [StatusCode::FORBIDDEN, StatusCode::NOT_FOUND] {
        let tmp = tempfile::tempdir().unwrap();
        let (url, srv) = serve(&body, Mode::Status(status)).await;
        let outcome = fetch(&url, &cmd, tmp.path(), STALL_TIMEOUT).await;
        let msg = expect_fail(outcome.result);
        assert!(msg.contains(status.as_str()), "{status}: {msg}");
        assert_eq!(srv.hits().len(), 1, "{status}: asked once");
        assert!(!part_file(tmp.path(), &cmd).exists());
    }
}

#[tokio::test]
async fn transient_errors_are_retried() {
    let body = bundle_body(1000);
    let cmd = command_for(&body);
    for status in [StatusCode::SERVICE_UNAVAILABLE, StatusCode::UNAUTHORIZED] {
        let tmp = tempfile::tempdir().unwrap();
        let (url, srv) = serve(&body, Mode::Status(status)).await;
        let outcome = fetch(&url, &cmd, tmp.path(), STALL_TIMEOUT).await;
        let msg = expect_retry(outcome.result);
        assert!(msg.contains(status.as_str()), "{status}: {msg}");
        assert_eq!(srv.hits().len(), 1, "{status}: asked once");
    }
}

#[tokio::test]
async fn connection_refused_is_retried() {
    let body = bundle_body(1000);
    let cmd = command_for(&body);
    let tmp = tempfile::tempdir().unwrap();
    // A port that was free a moment ago and has nobody listening now.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);

    let outcome = fetch(&format!("http://{addr}"), &cmd, tmp.path(), STALL_TIMEOUT).await;

    let msg = expect_retry(outcome.result);
    assert!(msg.contains("unreachable"), "{msg}");
}

#[tokio::test]
async fn invalid_checksum_fails_without_a_request() {
    let body = bundle_body(1000);
    let good = command_for(&body);
    let (url, srv) = serve(&body, Mode::Honour).await;
    let bad = [
        String::new(),
        "not-a-checksum".to_owned(),
        good.checksum_sha256[..63].to_owned(),
        format!("{}0", good.checksum_sha256),
        format!("{}g", &good.checksum_sha256[..63]),
        format!("../../{}", &good.checksum_sha256[..58]),
    ];
    for checksum in bad {
        let cmd = BundleCommand {
            checksum_sha256: checksum.clone(),
            ..good.clone()
        };
        let tmp = tempfile::tempdir().unwrap();
        let outcome = fetch(&url, &cmd, tmp.path(), STALL_TIMEOUT).await;
        let msg = expect_fail(outcome.result);
        assert!(msg.contains("invalid checksum"), "{checksum:?}: {msg}");
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "{checksum:?}: nothing written"
        );
    }
    assert!(srv.hits().is_empty(), "{:?}", srv.hits());
}

/// The overall deadline (issue 12): a server that drips bytes just often enough never
/// trips the stall guard, so the attempt has a deadline of grace + size / min rate.
mod deadline {
    use super::*;

    #[test]
    fn defaults_are_one_kib_per_second_after_a_minute_of_grace() {
        assert_eq!(MIN_RATE, 1024);
        assert_eq!(DEADLINE_GRACE, Duration::from_secs(60));
        let pace = Pace::default();
        assert_eq!(pace.limit(0), Some(Duration::from_secs(60)));
        assert_eq!(pace.limit(10 * 1024), Some(Duration::from_secs(70)));
        let off = Pace {
            min_rate: 0,
            ..Pace::default()
        };
        assert_eq!(
            off.limit(1 << 40),
            None,
            "a min rate of 0 turns the deadline off"
        );
    }

    #[tokio::test]
    async fn a_dripping_server_fails_the_download_by_its_deadline() {
        let body = bundle_body(LEN);
        let cmd = command_for(&body);
        let tmp = tempfile::tempdir().unwrap();
        // 1 KiB per 50 ms (20 KiB/s): 200 KB would take ~10 s.
        let (url, _srv) = serve(&body, Mode::Drip(1024)).await;
        // Deadline: 0.5 s + 200 KB at 400 KB/s = 1 s.
        let pace = Pace {
            min_rate: 400_000,
            grace: Duration::from_millis(500),
        };
        let started = std::time::Instant::now();
        let outcome = fetch_paced(&url, &cmd, tmp.path(), pace).await;
        let took = started.elapsed();
        let msg = expect_fail(outcome.result);
        assert!(msg.contains("too slow"), "{msg}");
        assert!(msg.contains("--download-min-rate"), "{msg}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "gave up after {took:?}"
        );
        let got = outcome.progress.last().copied().unwrap_or(0);
        assert!(
            got > 0 && got < LEN as u64,
            "had {got} bytes at the deadline"
        );
        assert!(
            !part_file(tmp.path(), &cmd).exists(),
            "a failed download leaves no partial file"
        );
    }

    #[tokio::test]
    async fn a_drip_within_the_deadline_completes() {
        let body = bundle_body(LEN);
        let cmd = command_for(&body);
        let tmp = tempfile::tempdir().unwrap();
        // 64 KiB per 50 ms: four pieces, about 0.2 s, well inside 2 s + 200 KB at 1 KiB/s.
        let (url, _srv) = serve(&body, Mode::Drip(64 * 1024)).await;
        let pace = Pace {
            min_rate: 1024,
            grace: Duration::from_secs(2),
        };
        let outcome = fetch_paced(&url, &cmd, tmp.path(), pace).await;
        assert_verified(&outcome, tmp.path(), &cmd, &body);
    }
}
