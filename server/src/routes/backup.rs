//! `GET /backup`: a consistent snapshot of the running server, streamed (format in
//! [`crate::backup`]).

use std::io;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::Caller;
use crate::backup::{SharedSpool, Spool, write_tar};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Pieces of the tar stream in flight between the writer thread and the connection.
const IN_FLIGHT: usize = 4;
const PIECE: usize = 64 * 1024;

/// `GET /backup` (operator). Writes are held out only while the records are spooled
/// (see [`crate::store::Store::export`]); the tar is streamed from the spool afterwards.
#[utoipa::path(
    get,
    path = "/api/v1/backup",
    operation_id = "downloadBackup",
    tag = "backup",
    summary = "Stream a consistent backup of the server",
    description = "Operator token. A plain tar stream (format version 1): `kernex-backup/header.json` (format, format_version, server_version, created_at, record counts), `kernex-backup/records.ndjson` (one domain record per line: `{\"kind\", \"record\"}`), then `kernex-backup/bundles/<bundle_id>.tar.gz` for every bundle. Writes are held out only while the records are spooled, so the snapshot is consistent; heartbeats keep being answered. Restore it with `kernex-server restore --from FILE --data-dir DIR`. A stream that breaks off has no tar end marker and is refused by restore.",
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "The backup, streamed.", body = inline(crate::openapi::Binary), content_type = "application/x-tar", headers(("Content-Disposition" = String, description = "`attachment; filename=\"kernex-backup-<UTC time>.tar\"`."))),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn download(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    caller.require_operator()?;
    let blobs = state.blobs.clone();
    let spool = tokio::task::spawn_blocking(move || Spool::new(&blobs))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let shared = SharedSpool::new(spool);
    state.store.export(Box::new(shared.clone())).await?;
    let mut spool = shared
        .take()
        .ok_or_else(|| ApiError::internal("backup spool missing after export"))?;
    spool
        .fetch_from_bucket(&state.blobs)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(records = %spool.counts(), "backup snapshot taken");

    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let out = io::BufWriter::with_capacity(PIECE, ChannelWriter(tx.clone()));
        if let Err(e) = write_tar(spool, out) {
            // The client sees the stream end early (no valid tar end), never a short
            // backup that looks whole.
            tracing::warn!(error = %e, "backup stream aborted");
            let _ = tx.blocking_send(Err(e));
        }
    });
    let name = format!(
        "attachment; filename=\"kernex-backup-{}.tar\"",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_owned()),
            (header::CONTENT_DISPOSITION, name),
        ],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}

/// Blocking `Write` into the response body's channel (back-pressure: it waits while the
/// client is slow; fails once the client is gone).
struct ChannelWriter(mpsc::Sender<io::Result<Bytes>>);

impl io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "backup client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
