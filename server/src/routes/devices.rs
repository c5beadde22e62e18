//! Devices: signed registration, heartbeats, operator views and admission.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use kernex_common::api::events::{HeartbeatEvent, ServerEvent};
use kernex_common::api::{
    Admission, DeploymentKind, DeviceDetail, DevicePatch, DeviceSummary, HeartbeatRecord,
    HeartbeatRequest, HeartbeatResponse, HistoryRecord, OnlineStatus, RegisterRequest,
    RegisterResponse, RollbackRequest,
};
use kernex_common::signing::{DevicePublicKey, ENROLLMENT_HEADER, SIGNATURE_HEADER};
use kernex_common::validate::{MAX_ID_LEN, MAX_TAGS, is_valid_tag, is_valid_version};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::instrument;

use super::{Access, check_len, device_access, limit};
use crate::auth::{Caller, hash_token, mint_token, secret_eq};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::routes::deployments::emit_deployment;
use crate::state::AppState;
use crate::store::NewRegistration;

/// How far a registration's `timestamp` may be from the server clock, and how long its
/// signature is remembered against replay.
pub const REPLAY_WINDOW_SECS: i64 = 300;
/// Largest `hardware_metadata` accepted, serialised.
const MAX_METADATA_BYTES: usize = 16 * 1024;

/// `POST /devices/register`.
#[utoipa::path(
    post,
    path = "/api/v1/devices/register",
    operation_id = "registerDevice",
    tag = "devices",
    summary = "Register a device (signed)",
    description = "No bearer token. The body is signed with the device's private key (RSASSA-PSS, SHA-256, MGF1-SHA-256, salt length 32) over the exact body bytes. 401 when the signature does not verify, the timestamp is more than 300 s off, the same signed body is replayed, or a wrong enrollment token is presented; 400 for a malformed key or body; 403 when the key belongs to a rejected device. JSON bodies are limited to 1 MiB (413 above).",
    security(()),
    params(
        ("X-Kernex-Signature" = String, Header, description = "Base64 (standard alphabet) RSASSA-PSS signature over the exact request body bytes."),
        ("X-Kernex-Enrollment-Token" = Option<String>, Header, nullable = false, description = "The server's enrollment token: admits the device as accepted (a wrong one is 401). Without it the device is pending."),
    ),
    request_body = kernex_common::api::RegisterRequest,
    responses(
        (status = 200, description = "A key already registered: the same device_id and a fresh token (earlier tokens are revoked).", body = kernex_common::api::RegisterResponse),
        (status = 201, description = "A new key: a new device.", body = kernex_common::api::RegisterResponse),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 408, response = crate::openapi::RequestTimeout),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 500, response = crate::openapi::Internal),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
#[instrument(skip_all, err(level = "warn"))]
pub async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<RegisterResponse>)> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large("request body is larger than 1 MiB")
        } else {
            ApiError::bad_request(r.body_text())
        }
    })?;
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !is_json {
        return Err(ApiError::bad_request(
            "expected a JSON body with Content-Type: application/json",
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid registration body: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the registration body must be a JSON object",
        ));
    }
    let req: RegisterRequest = serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("invalid registration body: {e}")))?;
    if req.device_type.is_empty() {
        return Err(ApiError::bad_request("device_type must not be empty"));
    }
    check_len("device_type", &req.device_type, MAX_ID_LEN)?;
    let hardware_metadata = match req.hardware_metadata {
        serde_json::Value::Null => json!({}),
        v @ serde_json::Value::Object(_) => v,
        _ => return Err(ApiError::bad_request("hardware_metadata must be an object")),
    };
    if hardware_metadata.to_string().len() > MAX_METADATA_BYTES {
        return Err(ApiError::bad_request(
            "hardware_metadata is larger than 16 KiB",
        ));
    }
    let key = DevicePublicKey::from_pem(&req.public_key)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;

    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::unauthorized(format!("missing {SIGNATURE_HEADER} header")))?;
    key.verify(&body, signature)
        .map_err(|e| ApiError::unauthorized(format!("registration signature refused: {e}")))?;
    let now = Utc::now();
    let window = chrono::Duration::seconds(REPLAY_WINDOW_SECS);
    if (now - req.timestamp).abs() > window {
        return Err(ApiError::unauthorized(format!(
            "registration timestamp is more than {REPLAY_WINDOW_SECS} s from the server clock ({now})"
        )));
    }

    // The enrollment token is judged only now, after the signature and the window, and
    // the store burns the signature before it acts on the verdict: one captured body
    // gives one guess (SPEC §1.9).
    let presented = headers.get(ENROLLMENT_HEADER).and_then(|v| v.to_str().ok());
    let (admission, refusal) = match (&state.limits.enrollment_token, presented) {
        (Some(expected), Some(given)) if secret_eq(expected, given) => (Admission::Accepted, None),
        (Some(_), Some(_)) => (Admission::Pending, Some("wrong enrollment token")),
        (_, None) if state.limits.require_enrollment => (
            Admission::Pending,
            Some("this server admits only registrations that present the enrollment token"),
        ),
        _ => (Admission::Pending, None),
    };

    let token = mint_token("kxd_");
    let reg = NewRegistration {
        public_key_pem: key.to_pem(),
        fingerprint: key.fingerprint(),
        device_type: req.device_type,
        hardware_metadata,
        signature_hash: hex::encode(Sha256::digest(signature.trim().as_bytes())),
        // Remembered for as long as the timestamp would still be accepted, plus margin.
        replay_until: now.max(req.timestamp) + window + chrono::Duration::seconds(60),
        admission,
        refusal: refusal.map(str::to_owned),
        max_pending: Some(state.limits.max_pending),
        token_hash: hash_token(&token),
        now,
    };
    let outcome = state.store.register(&reg).await?;
    let d = &outcome.device;
    state.heartbeats.admission_changed(d.id(), d.admission());
    tracing::info!(device.id = %d.id(), created = outcome.created, admission = d.admission().as_str(), "device registered");
    state.events.emit(ServerEvent::device(d.to_summary(now)));
    let status = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(RegisterResponse {
            device_id: d.id().to_owned(),
            device_token: token,
            admission: d.admission(),
        }),
    ))
}

fn validate_heartbeat(hb: &HeartbeatRequest) -> ApiResult<()> {
    check_len("status", &hb.status, 32)?;
    check_len("agent_version", &hb.agent_version, MAX_ID_LEN)?;
    for (field, v) in [("cpu_pct", hb.cpu_pct), ("memory_mb", hb.memory_mb)] {
        if !v.is_finite() || v < 0.0 {
            return Err(ApiError::bad_request(format!(
                "{field} must be a finite number >= 0"
            )));
        }
    }
    if let Some(v) = &hb.current_bundle_version
        && !is_valid_version(v)
    {
        return Err(ApiError::bad_request(
            "current_bundle_version is not a valid version",
        ));
    }
    Ok(())
}

/// `POST /devices/{id}/heartbeat`. Its span is at debug level: at the default log level
/// the hot path formats no span fields.
#[utoipa::path(
    post,
    path = "/api/v1/devices/{device_id}/heartbeat",
    operation_id = "heartbeat",
    tag = "devices",
    summary = "Device heartbeat",
    description = "Device token of this device only (an operator token is 403). JSON bodies are limited to 1 MiB (413 above).",
    security(("bearerAuth" = [])),
    params(
        crate::openapi::DeviceIdParam,
    ),
    request_body = kernex_common::api::HeartbeatRequest,
    responses(
        (status = 200, description = "Recorded; commands for the device.", body = kernex_common::api::HeartbeatResponse),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 500, response = crate::openapi::Internal),
    )
)]
#[instrument(level = "debug", skip_all, err(level = "warn"), fields(device.id = %device_id))]
pub async fn heartbeat(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(device_id): ApiPath<String>,
    body: Result<ApiJson<HeartbeatRequest>, ApiError>,
) -> ApiResult<Json<HeartbeatResponse>> {
    device_access(&state, &caller, &device_id, Access::DeviceOnly).await?;
    let ApiJson(hb) = body?;
    validate_heartbeat(&hb)?;
    let now = Utc::now();
    // What this beat reported (the device is the authority on what it runs; a null
    // version leaves the console's last known one).
    let event = state
        .events
        .has_subscribers()
        .then(|| HeartbeatEvent::new(&device_id, now, &hb, hb.current_bundle_version.clone()));
    let out = state.heartbeats.beat(&device_id, hb, now).await?;
    state.metrics.heartbeat();
    if let Some(event) = event {
        state.events.emit(ServerEvent::Heartbeat(event));
    }
    if let Some(dep) = &out.delivered {
        emit_deployment(&state, dep);
    }
    Ok(Json(HeartbeatResponse {
        commands: out.commands,
        admission: out.admission,
        server_time: now,
    }))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
    tag: Option<String>,
    status: Option<OnlineStatus>,
    admission: Option<Admission>,
}

/// `GET /devices`. Unknown `status`/`admission` values are a 400 naming the valid ones.
#[utoipa::path(
    get,
    path = "/api/v1/devices",
    operation_id = "listDevices",
    tag = "devices",
    summary = "List devices",
    security(("bearerAuth" = [])),
    params(
        ("limit" = Option<u32>, Query, description = "Most items to return (1-1000; default 100).", minimum = 1, maximum = 1000, example = json!(100)),
        ("after" = Option<String>, Query, description = "Cursor: the last device_id seen."),
        ("tag" = Option<String>, Query, description = "Only devices carrying this tag."),
        ("status" = Option<kernex_common::api::OnlineStatus>, Query, description = "Only devices with this online status."),
        ("admission" = Option<kernex_common::api::Admission>, Query, description = "Only devices with this admission."),
    ),
    responses(
        (status = 200, description = "Device summaries ordered by device_id.", body = Vec<kernex_common::api::DeviceSummary>),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<ApiQuery<ListQuery>, ApiError>,
) -> ApiResult<Json<Vec<DeviceSummary>>> {
    caller.require_operator()?;
    let ApiQuery(q) = query?;
    let filter = crate::store::DeviceFilter {
        after: q.after,
        limit: limit(q.limit, 100, 1000)?,
        tag: q.tag,
        status: q.status,
        admission: q.admission,
    };
    state.heartbeats.settle().await;
    let now = Utc::now();
    let page = state.store.list_devices(&filter, now).await?;
    Ok(Json(page.iter().map(|d| d.to_summary(now)).collect()))
}

/// `GET /devices/{id}`.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{device_id}",
    operation_id = "getDevice",
    tag = "devices",
    summary = "Get a device",
    security(("bearerAuth" = [])),
    params(
        crate::openapi::DeviceIdParam,
    ),
    responses(
        (status = 200, description = "The device.", body = kernex_common::api::DeviceDetail),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(device_id): ApiPath<String>,
) -> ApiResult<Json<DeviceDetail>> {
    device_access(&state, &caller, &device_id, Access::OperatorOnly).await?;
    state.heartbeats.settle().await;
    Ok(Json(
        state.store.device(&device_id).await?.to_detail(Utc::now()),
    ))
}

/// `PATCH /devices/{id}` — tags.
#[utoipa::path(
    patch,
    path = "/api/v1/devices/{device_id}",
    operation_id = "patchDevice",
    tag = "devices",
    summary = "Set a device's tags",
    description = "At most 32 tags, each 1-64 characters of [A-Za-z0-9._:-]. JSON bodies are limited to 1 MiB (413 above).",
    security(("bearerAuth" = [])),
    params(
        crate::openapi::DeviceIdParam,
    ),
    request_body = kernex_common::api::DevicePatch,
    responses(
        (status = 200, description = "The updated device.", body = kernex_common::api::DeviceDetail),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(device_id): ApiPath<String>,
    body: Result<ApiJson<DevicePatch>, ApiError>,
) -> ApiResult<Json<DeviceDetail>> {
    device_access(&state, &caller, &device_id, Access::OperatorOnly).await?;
    let ApiJson(patch) = body?;
    if patch.tags.len() > MAX_TAGS {
        return Err(ApiError::bad_request(format!("at most {MAX_TAGS} tags")));
    }
    if let Some(bad) = patch.tags.iter().find(|t| !is_valid_tag(t)) {
        return Err(ApiError::bad_request(format!(
            "tag {bad:?} must be 1-64 characters of [A-Za-z0-9._:-]"
        )));
    }
    let mut tags = patch.tags;
    tags.sort();
    tags.dedup();
    let d = state.store.set_tags(&device_id, &tags).await?;
    let now = Utc::now();
    state.events.emit(ServerEvent::device(d.to_summary(now)));
    Ok(Json(d.to_detail(now)))
}

async fn set_admission(
    state: &AppState,
    caller: &Caller,
    device_id: &str,
    admission: Admission,
) -> ApiResult<Json<DeviceDetail>> {
    device_access(state, caller, device_id, Access::OperatorOnly).await?;
    let now = Utc::now();
    let (d, cancelled) = state.store.set_admission(device_id, admission, now).await?;
    state.heartbeats.admission_changed(device_id, admission);
    if !cancelled.is_empty() {
        state.heartbeats.touch([device_id]);
    }
    tracing::info!(device.id = %device_id, admission = admission.as_str(), "admission changed");
    state.events.emit(ServerEvent::device(d.to_summary(now)));
    for dep in &cancelled {
        emit_deployment(state, dep);
    }
    Ok(Json(d.to_detail(now)))
}

/// `POST /devices/{id}/accept`.
#[utoipa::path(
    post,
    path = "/api/v1/devices/{device_id}/accept",
    operation_id = "acceptDevice",
    tag = "devices",
    summary = "Accept a device",
    security(("bearerAuth" = [])),
    params(
        crate::openapi::DeviceIdParam,
    ),
    responses(
        (status = 200, description = "The device, now accepted.", body = kernex_common::api::DeviceDetail),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn accept(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(device_id): ApiPath<String>,
) -> ApiResult<Json<DeviceDetail>> {
    set_admission(&state, &caller, &device_id, Admission::Accepted).await
}

/// `POST /devices/{id}/reject` — also revokes its token.
#[utoipa::path(
    post,
    path = "/api/v1/devices/{device_id}/reject",
    operation_id = "rejectDevice",
    tag = "devices",
    summary = "Reject a device",
    security(("bearerAuth" = [])),
    params(
        crate::openapi::DeviceIdParam,
    ),
    responses(
        (status = 200, description = "The device, now rejected; its tokens are revoked.", body = kernex_common::api::DeviceDetail),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(device_id): ApiPath<String>,
) -> ApiResult<Json<DeviceDetail>> {
    set_admission(&state, &caller, &device_id, Admission::Rejected).await
}

/// `DELETE /devices/{id}`.
#[utoipa::path(
    delete,
    path = "/api/v1/devices/{device_id}",
    operation_id = "deleteDevice",
    tag = "devices",
    summary = "Delete a device",
    security(("bearerAuth" = [])),
    params(
        crate::openapi::DeviceIdParam,
    ),
    responses(
        (status = 204, description = "Deleted; its tokens are revoked and its pending deployment targets cancelled."),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(device_id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    device_access(&state, &caller, &device_id, Access::OperatorOnly).await?;
    let cancelled = state.store.delete_device(&device_id, Utc::now()).await?;
    state.heartbeats.forget(&device_id);
    tracing::info!(device.id = %device_id, "device deleted");
    state.events.emit(ServerEvent::device_deleted(&device_id));
    for dep in &cancelled {
        emit_deployment(&state, dep);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct LimitQuery {
    limit: Option<usize>,
}

/// `GET /devices/{id}/heartbeats`.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{device_id}/heartbeats",
    operation_id = "listHeartbeats",
    tag = "devices",
    summary = "Recent heartbeats of a device",
    security(("bearerAuth" = [])),
    params(
        crate::openapi::DeviceIdParam,
        ("limit" = Option<u32>, Query, description = "Most items to return (1-1000; default 50).", minimum = 1, maximum = 1000, example = json!(50)),
    ),
    responses(
        (status = 200, description = "Newest first.", body = Vec<kernex_common::api::HeartbeatRecord>),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn heartbeats(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(device_id): ApiPath<String>,
    query: Result<ApiQuery<LimitQuery>, ApiError>,
) -> ApiResult<Json<Vec<HeartbeatRecord>>> {
    device_access(&state, &caller, &device_id, Access::OperatorOnly).await?;
    let ApiQuery(q) = query?;
    let n = limit(q.limit, 50, 1000)?;
    state.heartbeats.settle().await;
    Ok(Json(state.store.heartbeats(&device_id, n).await?))
}

/// `GET /devices/{id}/bundle-history`.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{device_id}/bundle-history",
    operation_id = "deviceBundleHistory",
    tag = "deployments",
    summary = "Bundle history of a device",
    description = "Operator token, or the device's own token.",
    security(("bearerAuth" = [])),
    params(
        crate::openapi::DeviceIdParam,
        ("limit" = Option<u32>, Query, description = "Most items to return (1-100; default 20).", minimum = 1, maximum = 100, example = json!(20)),
    ),
    responses(
        (status = 200, description = "Final results, newest first.", body = Vec<kernex_common::api::HistoryRecord>),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(device_id): ApiPath<String>,
    query: Result<ApiQuery<LimitQuery>, ApiError>,
) -> ApiResult<Json<Vec<HistoryRecord>>> {
    device_access(&state, &caller, &device_id, Access::OperatorOrDevice).await?;
    let ApiQuery(q) = query?;
    let n = limit(q.limit, 20, 100)?;
    Ok(Json(state.store.history(&device_id, n).await?))
}

/// `POST /devices/rollback`.
#[utoipa::path(
    post,
    path = "/api/v1/devices/rollback",
    operation_id = "createRollback",
    tag = "deployments",
    summary = "Roll devices back to a version they ran",
    description = "400 when the version does not exist, a device does not exist or is not accepted, or a device has no success history record for that version. JSON bodies are limited to 1 MiB (413 above).",
    security(("bearerAuth" = [])),
    request_body = kernex_common::api::RollbackRequest,
    responses(
        (status = 201, description = "The rollback deployment (kind rollback).", body = kernex_common::api::Deployment),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<ApiJson<RollbackRequest>, ApiError>,
) -> ApiResult<(StatusCode, Json<kernex_common::api::Deployment>)> {
    caller.require_operator()?;
    let ApiJson(req) = body?;
    let bundle = state
        .store
        .bundle_by_version(&req.bundle_version)
        .await?
        .ok_or_else(|| {
            ApiError::bad_request(format!("no bundle version {:?}", req.bundle_version))
        })?;
    if req.target_device_ids.is_empty() {
        return Err(ApiError::bad_request("target_device_ids must not be empty"));
    }
    let signed = state.store.bundle_signatures(&bundle.id).await?;
    state
        .limits
        .signatures
        .check(&bundle.version, signed.as_ref())?;
    let mut ids = req.target_device_ids.clone();
    ids.sort();
    ids.dedup();
    for id in &ids {
        let d = state
            .store
            .device(id)
            .await
            .map_err(|_| ApiError::bad_request(format!("no device {id:?}")))?;
        if d.admission() != Admission::Accepted {
            return Err(ApiError::bad_request(format!(
                "device {id} is not accepted"
            )));
        }
        if !state
            .store
            .device_ran_version(id, &req.bundle_version)
            .await?
        {
            return Err(ApiError::bad_request(format!(
                "device {id} never ran version {} successfully; roll back only to a version it ran",
                req.bundle_version
            )));
        }
    }
    super::deployments::create_with_rollout(
        &state,
        DeploymentKind::Rollback,
        &bundle,
        ids,
        req.rollout.as_ref(),
    )
    .await
}
