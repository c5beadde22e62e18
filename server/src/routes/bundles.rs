//! Bundles: streamed multipart upload (hashed while it arrives, checked entry by entry),
//! listing, byte-exact download with `ETag` and `Range`, and deletion.

use axum::Json;
use axum::body::Body;
use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::{Multipart, State};
use axum::http::header::{
    ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_NONE_MATCH, RANGE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures_util::StreamExt;
use kernex_common::api::BundleInfo;
use kernex_common::api::events::ServerEvent;
use kernex_common::bundle::{self, Limits};
use kernex_common::update_signing::SignedDocument;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::instrument;

use crate::auth::Caller;
use crate::error::{ApiError, ApiPath, ApiResult};
use crate::service::signing::check_against_bundle;
use crate::state::AppState;
use crate::store::{BundleRecord, new_id};

// The `Range` parser is pure and shared (and fuzzed) from `common`.
pub use kernex_common::range::{RangeRequest, parse_range};

/// Largest `manifest` form part accepted.
const MAX_MANIFEST_PART: usize = 1024 * 1024;

fn multipart_error(e: MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(e.body_text())
    } else {
        ApiError::bad_request(format!("malformed multipart body: {}", e.body_text()))
    }
}

fn too_large(max: u64) -> ApiError {
    ApiError::too_large(format!(
        "bundle is larger than the server's limit of {max} bytes"
    ))
}

/// A small form part read whole, at most [`MAX_MANIFEST_PART`] bytes.
async fn read_small_part(
    field: &mut axum::extract::multipart::Field<'_>,
    total: &mut u64,
    name: &str,
) -> ApiResult<Vec<u8>> {
    let mut text = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        *total += chunk.len() as u64;
        text.extend_from_slice(&chunk);
        if text.len() > MAX_MANIFEST_PART {
            return Err(ApiError::bad_request(format!(
                "{name} part is larger than 1 MiB"
            )));
        }
    }
    Ok(text)
}

/// `POST /bundles` — multipart with part `file` and optional part `manifest`.
#[utoipa::path(
    post,
    path = "/api/v1/bundles",
    operation_id = "uploadBundle",
    tag = "bundles",
    summary = "Upload a bundle",
    description = "Streamed to disk and hashed as it arrives. 400 when the body is not multipart or lacks `file`, the archive is not gzip/tar, has no root manifest.json, has an invalid manifest, misses a named script, has an unsafe entry, or the `manifest` part differs from the archive's manifest, or the `signatures` part is malformed or does not describe the archive (version, sha256, size); 409 when the version exists; 413 above the server's --max-bundle-size.",
    security(("bearerAuth" = [])),
    request_body(content = crate::openapi::BundleUpload, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Stored.", body = kernex_common::api::BundleInfo),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 500, response = crate::openapi::Internal),
    )
)]
#[instrument(skip_all, err(level = "warn"))]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<(StatusCode, Json<BundleInfo>)> {
    caller.require_operator()?;
    let max = state.limits.max_bundle_size;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Multipart framing adds a little; anything far beyond the limit is refused unread.
    if declared.is_some_and(|n| n > max.saturating_add(1024 * 1024)) {
        return Err(too_large(max));
    }
    let mut multipart = multipart.map_err(|r| ApiError::bad_request(r.body_text()))?;

    let tmp_dir = state.blobs.tmp_dir();
    tokio::fs::create_dir_all(&tmp_dir)
        .await
        .map_err(ApiError::internal)?;
    // Removed on drop: any early return leaves no file behind.
    let tmp = tempfile::Builder::new()
        .suffix(".part")
        .tempfile_in(&tmp_dir)
        .map_err(ApiError::internal)?;
    let mut received: Option<(String, u64)> = None;
    // Every part counts, not only `file`: a chunked body has no Content-Length to check.
    let mut total = 0u64;
    let body_cap = max.saturating_add(2 * MAX_MANIFEST_PART as u64);
    let mut manifest_part: Option<serde_json::Value> = None;
    let mut signatures_part: Option<SignedDocument> = None;

    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("file") => {
                if received.is_some() {
                    return Err(ApiError::bad_request("more than one 'file' part"));
                }
                let std_file = tmp.reopen().map_err(ApiError::internal)?;
                let mut out = tokio::fs::File::from_std(std_file);
                let mut hasher = Sha256::new();
                let mut size = 0u64;
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    size += chunk.len() as u64;
                    total += chunk.len() as u64;
                    if size > max || total > body_cap {
                        return Err(too_large(max));
                    }
                    hasher.update(&chunk);
                    out.write_all(&chunk).await.map_err(ApiError::internal)?;
                }
                out.flush().await.map_err(ApiError::internal)?;
                out.sync_all().await.map_err(ApiError::internal)?;
                received = Some((hex::encode(hasher.finalize()), size));
            }
            Some("manifest") => {
                let mut text = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    total += chunk.len() as u64;
                    text.extend_from_slice(&chunk);
                    if text.len() > MAX_MANIFEST_PART {
                        return Err(ApiError::bad_request("manifest part is larger than 1 MiB"));
                    }
                }
                let value = serde_json::from_slice(&text).map_err(|e| {
                    ApiError::bad_request(format!("manifest part is not valid JSON: {e}"))
                })?;
                manifest_part = Some(value);
            }
            Some("signatures") => {
                let text = read_small_part(&mut field, &mut total, "signatures").await?;
                let doc = serde_json::from_slice(&text).map_err(|e| {
                    ApiError::bad_request(format!(
                        "signatures part is not a signed metadata document: {e}"
                    ))
                })?;
                signatures_part = Some(doc);
            }
            _ => {
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    total += chunk.len() as u64;
                    if total > body_cap {
                        return Err(too_large(max));
                    }
                }
            }
        }
    }
    let (checksum, size) =
        received.ok_or_else(|| ApiError::bad_request("missing multipart part 'file'"))?;

    let path = tmp.path().to_path_buf();
    let inspection = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)?;
        bundle::inspect(std::io::BufReader::new(file), &Limits::default())
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| match e {
        bundle::BundleError::Io(io) => ApiError::internal(io),
        other => ApiError::bad_request(format!("bundle refused: {other}")),
    })?;
    if let Some(given) = &manifest_part
        && *given != inspection.manifest_json
    {
        return Err(ApiError::bad_request(
            "the manifest part does not match the archive's manifest.json",
        ));
    }
    let manifest = inspection.manifest;
    if state.store.bundle_version_exists(&manifest.version).await? {
        return Err(ApiError::conflict(format!(
            "bundle version {} already exists",
            manifest.version
        )));
    }

    let record = BundleRecord {
        id: new_id(),
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        checksum_sha256: checksum,
        size_bytes: size,
        manifest,
        created_at: Utc::now(),
    };
    // Signed metadata must describe this very archive (SPEC §7), checked before
    // anything is stored.
    if let Some(doc) = &signatures_part {
        check_against_bundle(doc, &record)?;
    }
    // The archive is durable in the blob store before the record that points at it is.
    state
        .blobs
        .keep(&record.id, tmp)
        .await
        .map_err(ApiError::internal)?;
    if let Err(e) = state.store.insert_bundle(&record).await {
        if let Err(gone) = state.blobs.remove(&record.id).await {
            tracing::warn!(bundle.id = %record.id, error = %gone, "removing an archive whose record failed");
        }
        return Err(e.into());
    }
    if let Some(doc) = &signatures_part {
        state.store.add_bundle_signatures(&record.id, doc).await?;
    }
    tracing::info!(bundle.id = %record.id, version = %record.version, size, signed = signatures_part.is_some(), "bundle stored");
    let info = record.to_info();
    state.events.emit(ServerEvent::bundle(info.clone()));
    Ok((StatusCode::CREATED, Json(info)))
}

/// `GET /bundles` — newest first.
#[utoipa::path(
    get,
    path = "/api/v1/bundles",
    operation_id = "listBundles",
    tag = "bundles",
    summary = "List bundles",
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "Newest first.", body = Vec<kernex_common::api::BundleInfo>),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<BundleInfo>>> {
    caller.require_operator()?;
    Ok(Json(
        state
            .store
            .list_bundles()
            .await?
            .iter()
            .map(BundleRecord::to_info)
            .collect(),
    ))
}

/// `GET /bundles/{id}/info`.
#[utoipa::path(
    get,
    path = "/api/v1/bundles/{bundle_id}/info",
    operation_id = "getBundleInfo",
    tag = "bundles",
    summary = "Get a bundle's metadata",
    security(("bearerAuth" = [])),
    params(
        crate::openapi::BundleIdParam,
    ),
    responses(
        (status = 200, description = "The bundle.", body = kernex_common::api::BundleInfo),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn info(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<BundleInfo>> {
    let b = state.store.bundle(&id).await?;
    caller.require_operator()?;
    Ok(Json(b.to_info()))
}

/// `GET /bundles/{id}` — the archive, byte for byte, streamed from disk.
#[utoipa::path(
    get,
    path = "/api/v1/bundles/{bundle_id}",
    operation_id = "downloadBundle",
    tag = "bundles",
    summary = "Download a bundle archive",
    description = "Operator token, or the token of a device targeted by a deployment of this bundle (other devices: 403). A single `Range: bytes=N-`, `N-M` or `-N` gives 206; malformed or multiple ranges are ignored (200).",
    security(("bearerAuth" = [])),
    params(
        crate::openapi::BundleIdParam,
        ("Range" = Option<String>, Header, nullable = false, description = "`bytes=N-`, `bytes=N-M` or `bytes=-N`."),
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "ETag(s) already held, or `*`."),
    ),
    responses(
        (status = 200, description = "The whole archive, byte for byte.", body = inline(crate::openapi::Binary), content_type = "application/gzip", headers(("Content-Length" = u64, description = "Bytes in this response."), ("ETag" = String, description = "The quoted SHA-256 of the archive."), ("Accept-Ranges" = inline(crate::openapi::AcceptRanges), description = "Always `bytes`."))),
        (status = 206, description = "The requested byte range.", body = inline(crate::openapi::Binary), content_type = "application/gzip", headers(("Content-Length" = u64, description = "Bytes in this response."), ("ETag" = String, description = "The quoted SHA-256 of the archive."), ("Accept-Ranges" = inline(crate::openapi::AcceptRanges), description = "Always `bytes`."), ("Content-Range" = String, description = "`bytes START-END/SIZE`."))),
        (status = 304, description = "If-None-Match matched the ETag.", headers(("ETag" = String, description = "The quoted SHA-256 of the archive."))),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 416, description = "The range starts beyond the archive.", body = kernex_common::api::ErrorBody, headers(("Content-Range" = String, description = "`bytes */SIZE`."))),
        (status = 500, response = crate::openapi::Internal),
    )
)]
#[instrument(skip_all, err(level = "warn"), fields(bundle.id = %id))]
pub async fn download(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let b = state.store.bundle(&id).await?;
    if let Caller::Device { device_id } = &caller
        && !state.store.device_may_download(device_id, &id).await?
    {
        return Err(ApiError::forbidden(
            "this device is not targeted by a deployment of this bundle",
        ));
    }
    let etag = format!("\"{}\"", b.checksum_sha256);
    let etag_value = HeaderValue::from_str(&etag).map_err(ApiError::internal)?;
    if headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        return Ok((StatusCode::NOT_MODIFIED, [(ETAG, etag_value)]).into_response());
    }

    let size = b.size_bytes;
    let range = parse_range(headers.get(RANGE).and_then(|v| v.to_str().ok()), size);
    let (status, start, len) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, size),
        RangeRequest::Partial { start, end } => {
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => {
            let mut resp = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("range is outside the {size}-byte bundle"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
    };
    let body = state
        .blobs
        .read(&id, start, len)
        .await
        .map_err(ApiError::internal)?;
    let metrics_state = state.clone();
    let body = body.inspect(move |chunk| {
        if let Ok(bytes) = chunk {
            metrics_state
                .metrics
                .bundle_bytes_served(bytes.len() as u64);
        }
    });
    let mut resp = Response::new(Body::from_stream(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/gzip"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(ETAG, etag_value);
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {start}-{}/{size}", start + len - 1);
        h.insert(
            CONTENT_RANGE,
            HeaderValue::from_str(&value).map_err(ApiError::internal)?,
        );
    }
    Ok(resp)
}

/// `DELETE /bundles/{id}` — 409 while an unfinished deployment uses it.
#[utoipa::path(
    delete,
    path = "/api/v1/bundles/{bundle_id}",
    operation_id = "deleteBundle",
    tag = "bundles",
    summary = "Delete a bundle",
    description = "409 while an unfinished deployment uses it.",
    security(("bearerAuth" = [])),
    params(
        crate::openapi::BundleIdParam,
    ),
    responses(
        (status = 204, description = "Deleted."),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    state.store.bundle(&id).await?;
    caller.require_operator()?;
    let b = state.store.delete_bundle(&id).await?;
    if let Err(e) = state.blobs.remove(&id).await {
        tracing::warn!(bundle.id = %id, error = %e, "bundle record removed but its file could not be");
    }
    tracing::info!(bundle.id = %id, version = %b.version, "bundle deleted");
    state
        .events
        .emit(ServerEvent::bundle_deleted(&id, &b.version));
    Ok(StatusCode::NO_CONTENT)
}
