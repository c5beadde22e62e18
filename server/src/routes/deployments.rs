//! Deployments: creation by ids and tags, listing, cancel, and the device side
//! (progress and idempotent results).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use kernex_common::api::events::{DeploymentEvent, ServerEvent};
use kernex_common::api::{
    Admission, CreateDeployment, Deployment, DeploymentDevice, DeploymentKind, DeploymentStatus,
    ProgressReport, ResultReport, TargetStatus,
};
use kernex_common::validate::{MAX_MESSAGE_LEN, is_valid_tag};
use serde::Deserialize;
use tracing::instrument;

use super::limit;
use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::service::rollouts;
use crate::state::AppState;
use crate::store::{DeploymentRecord, ResultOutcome, TargetFilter, TargetRecord};

/// Targets one cancel step looks at: one transaction of a few ms (sled's transactions
/// hold a process-wide lock that heartbeats' reads wait behind).
pub const CANCEL_CHUNK: usize = 64;

/// The wire form of a deployment, with all its targets.
pub async fn deployment_json(state: &AppState, dep: &DeploymentRecord) -> ApiResult<Deployment> {
    let all = TargetFilter {
        limit: usize::MAX,
        ..Default::default()
    };
    Ok(dep.to_wire(state.store.deployment_targets(&dep.id, &all).await?))
}

/// Publish a deployment's new state (without the target list, which can be long).
pub fn emit_deployment(state: &AppState, dep: &DeploymentRecord) {
    emit_deployment_with(state, dep, None);
}

fn emit_deployment_with(state: &AppState, dep: &DeploymentRecord, device: Option<&TargetRecord>) {
    if device.is_none() {
        return rollouts::emit(state, dep, None);
    }
    state.events.emit(ServerEvent::Deployment(DeploymentEvent {
        id: dep.id.clone(),
        kind: Some(dep.kind),
        bundle_id: Some(dep.bundle_id.clone()),
        bundle_version: Some(dep.bundle_version.clone()),
        status: Some(dep.status),
        counts: Some(dep.counts),
        updated_at: Some(dep.updated_at),
        completed_at: dep.completed_at,
        device: device.cloned().map(TargetRecord::into_wire),
        rollout: dep.rollout.as_ref().map(|r| Box::new(r.to_wire())),
        change: None,
    }));
}

/// Create a deployment of `bundle` to `targets` (deduplicated, checked) under an optional
/// rollout policy, and start its rollout; answers 201 with it. Shared by `POST
/// /deployments` and `POST /devices/rollback`.
pub async fn create_with_rollout(
    state: &AppState,
    kind: DeploymentKind,
    bundle: &crate::store::BundleRecord,
    targets: Vec<String>,
    policy: Option<&kernex_common::api::RolloutPolicy>,
) -> ApiResult<(StatusCode, Json<Deployment>)> {
    let n = targets.len();
    let (ordered, plan) = rollouts::plan(state, policy, targets).await?;
    let with_rollout = plan.is_some();
    let mut dep = state
        .store
        .create_deployment(kind, bundle, &ordered, plan, Utc::now())
        .await?;
    tracing::info!(deployment.id = %dep.id, kind = kind.as_str(), version = %dep.bundle_version, targets = n, "deployment created");
    if with_rollout {
        emit_deployment(state, &dep);
        // Opens the first wave (unless `start_at` is ahead) before the reply.
        dep = state.rollouts.evaluate(state, &dep.id).await?;
    } else {
        state.heartbeats.touch(ordered.iter().map(String::as_str));
        emit_deployment(state, &dep);
    }
    Ok((
        StatusCode::CREATED,
        Json(deployment_json(state, &dep).await?),
    ))
}

/// `POST /deployments`.
#[utoipa::path(
    post,
    path = "/api/v1/deployments",
    operation_id = "createDeployment",
    tag = "deployments",
    summary = "Create a deployment",
    description = "400 for an unknown bundle, an unknown or non-accepted device id, an invalid tag, an empty target set, or an invalid rollout policy (nothing is created). JSON bodies are limited to 1 MiB (413 above). 400 also when the server requires signatures (--require-signatures) and the bundle has too few valid ones from its --trust-key keys.",
    security(("bearerAuth" = [])),
    request_body = kernex_common::api::CreateDeployment,
    responses(
        (status = 201, description = "The new deployment (kind deploy).", body = kernex_common::api::Deployment),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 500, response = crate::openapi::Internal),
    )
)]
#[instrument(skip_all, err(level = "warn"))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<ApiJson<CreateDeployment>, ApiError>,
) -> ApiResult<(StatusCode, Json<Deployment>)> {
    caller.require_operator()?;
    let ApiJson(req) = body?;
    let bundle = match (&req.bundle_version, &req.bundle_id) {
        (Some(v), _) => state
            .store
            .bundle_by_version(v)
            .await?
            .ok_or_else(|| ApiError::bad_request(format!("no bundle version {v:?}")))?,
        (None, Some(id)) => state
            .store
            .bundle(id)
            .await
            .map_err(|_| ApiError::bad_request(format!("no bundle {id:?}")))?,
        (None, None) => {
            return Err(ApiError::bad_request(
                "bundle_version or bundle_id is required",
            ));
        }
    };
    let signed = state.store.bundle_signatures(&bundle.id).await?;
    state
        .limits
        .signatures
        .check(&bundle.version, signed.as_ref())?;
    let admissions = state.store.admissions(&req.target_device_ids).await?;
    let mut targets = std::collections::BTreeSet::new();
    for id in &req.target_device_ids {
        match admissions.get(id) {
            None => return Err(ApiError::bad_request(format!("no device {id:?}"))),
            Some(Admission::Accepted) => {}
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "device {id} is {}, not accepted",
                    other.as_str()
                )));
            }
        }
        targets.insert(id.clone());
    }
    if let Some(bad) = req.target_tags.iter().find(|t| !is_valid_tag(t)) {
        return Err(ApiError::bad_request(format!("invalid tag {bad:?}")));
    }
    targets.extend(
        state
            .store
            .accepted_devices_with_tags(&req.target_tags)
            .await?,
    );
    if targets.is_empty() {
        return Err(ApiError::bad_request(
            "no target devices: give target_device_ids or target_tags that match accepted devices",
        ));
    }
    let targets: Vec<String> = targets.into_iter().collect();
    create_with_rollout(
        &state,
        DeploymentKind::Deploy,
        &bundle,
        targets,
        req.rollout.as_ref(),
    )
    .await
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<DeploymentStatus>,
    limit: Option<usize>,
    /// `false` leaves each deployment's targets out (SPEC §1.5).
    devices: Option<bool>,
}

/// `GET /deployments`. An unknown `status` is a 400 naming the valid ones.
#[utoipa::path(
    get,
    path = "/api/v1/deployments",
    operation_id = "listDeployments",
    tag = "deployments",
    summary = "List deployments",
    security(("bearerAuth" = [])),
    params(
        ("status" = Option<kernex_common::api::DeploymentStatus>, Query, description = "Only deployments with this status."),
        ("limit" = Option<u32>, Query, description = "Most items to return (1-1000; default 50).", minimum = 1, maximum = 1000, example = json!(50)),
        ("devices" = Option<bool>, Query, description = "false leaves each deployment's targets (devices, target_device_ids) out; read them in pages from /deployments/{deployment_id}/targets.", example = json!(true)),
    ),
    responses(
        (status = 200, description = "Newest first.", body = Vec<kernex_common::api::Deployment>),
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
) -> ApiResult<Json<Vec<Deployment>>> {
    caller.require_operator()?;
    let ApiQuery(q) = query?;
    let n = limit(q.limit, 50, 1000)?;
    let deps = state.store.list_deployments(q.status, n).await?;
    let mut out = Vec::with_capacity(deps.len());
    for d in &deps {
        out.push(if q.devices == Some(false) {
            d.to_wire(Vec::new())
        } else {
            deployment_json(&state, d).await?
        });
    }
    Ok(Json(out))
}

#[derive(Debug, Deserialize)]
pub struct TargetsQuery {
    status: Option<TargetStatus>,
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /deployments/{id}/targets` — one page of targets in device-id order.
#[utoipa::path(
    get,
    path = "/api/v1/deployments/{deployment_id}/targets",
    operation_id = "listDeploymentTargets",
    tag = "deployments",
    summary = "One page of a deployment's targets, ordered by device id",
    security(("bearerAuth" = [])),
    params(
        crate::openapi::DeploymentIdParam,
        ("status" = Option<kernex_common::api::TargetStatus>, Query, description = "Only targets with this status."),
        ("after" = Option<String>, Query, description = "Cursor: the last device_id of the previous page."),
        ("limit" = Option<u32>, Query, description = "Most items to return (1-1000; default 100).", minimum = 1, maximum = 1000, example = json!(100)),
    ),
    responses(
        (status = 200, description = "Targets after the cursor, in device-id order.", body = Vec<kernex_common::api::DeploymentDevice>),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn targets(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    query: Result<ApiQuery<TargetsQuery>, ApiError>,
) -> ApiResult<Json<Vec<DeploymentDevice>>> {
    state.store.deployment(&id).await?;
    caller.require_operator()?;
    let ApiQuery(q) = query?;
    let filter = TargetFilter {
        status: q.status,
        after: q.after,
        limit: limit(q.limit, 100, 1000)?,
    };
    let page = state.store.deployment_targets(&id, &filter).await?;
    Ok(Json(
        page.into_iter().map(TargetRecord::into_wire).collect(),
    ))
}

#[derive(Debug, Deserialize)]
pub struct GetQuery {
    /// `false` leaves the targets out (read them from `/targets` in pages).
    devices: Option<bool>,
}

/// `GET /deployments/{id}`.
#[utoipa::path(
    get,
    path = "/api/v1/deployments/{deployment_id}",
    operation_id = "getDeployment",
    tag = "deployments",
    summary = "Get a deployment",
    security(("bearerAuth" = [])),
    params(
        crate::openapi::DeploymentIdParam,
        ("devices" = Option<bool>, Query, description = "false leaves each deployment's targets (devices, target_device_ids) out; read them in pages from /deployments/{deployment_id}/targets.", example = json!(true)),
    ),
    responses(
        (status = 200, description = "The deployment with its targets.", body = kernex_common::api::Deployment),
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
    ApiPath(id): ApiPath<String>,
    query: Result<ApiQuery<GetQuery>, ApiError>,
) -> ApiResult<Json<Deployment>> {
    let dep = state.store.deployment(&id).await?;
    caller.require_operator()?;
    let ApiQuery(q) = query?;
    if q.devices == Some(false) {
        return Ok(Json(dep.to_wire(Vec::new())));
    }
    Ok(Json(deployment_json(&state, &dep).await?))
}

/// `POST /deployments/{id}/cancel`.
#[utoipa::path(
    post,
    path = "/api/v1/deployments/{deployment_id}/cancel",
    operation_id = "cancelDeployment",
    tag = "deployments",
    summary = "Cancel a deployment",
    security(("bearerAuth" = [])),
    params(
        crate::openapi::DeploymentIdParam,
    ),
    responses(
        (status = 200, description = "Targets not yet delivered (waiting or pending) are now cancelled; targets in progress finish and report.", body = kernex_common::api::Deployment),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Deployment>> {
    state.store.deployment(&id).await?;
    caller.require_operator()?;
    // In chunks, each its own short transaction, so heartbeats never wait long behind
    // a 100,000-target cancel.
    let mut after: Option<String> = None;
    let dep = loop {
        let step = state
            .store
            .cancel_deployment_step(
                &id,
                after.as_deref(),
                CANCEL_CHUNK,
                "cancelled by an operator",
                Utc::now(),
            )
            .await?;
        state
            .heartbeats
            .touch(step.cancelled.iter().map(String::as_str));
        match step.next {
            Some(next) => after = Some(next),
            None => break step.deployment,
        }
    };
    tracing::info!(deployment.id = %id, status = dep.status.as_str(), "deployment cancelled");
    emit_deployment(&state, &dep);
    if dep.rollout.is_some() {
        state.rollouts.evaluate(&state, &id).await?;
    }
    Ok(Json(deployment_json(&state, &dep).await?))
}

/// `POST /deployments/{id}/pause` (SPEC §6): no new deliveries; in-flight targets
/// finish. 409 for a finished, already paused, or rollout-less deployment.
#[utoipa::path(
    post,
    path = "/api/v1/deployments/{deployment_id}/pause",
    operation_id = "pauseDeployment",
    tag = "deployments",
    summary = "Pause a rollout",
    description = "No new deliveries; in-flight targets finish (SPEC §6). 409 when the deployment is final, already paused, or has no rollout.",
    security(("bearerAuth" = [])),
    params(
        crate::openapi::DeploymentIdParam,
    ),
    responses(
        (status = 200, description = "The deployment, paused (reason \"paused by operator\").", body = kernex_common::api::Deployment),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Deployment>> {
    state.store.deployment(&id).await?;
    caller.require_operator()?;
    let dep = state.rollouts.pause(&state, &id).await?;
    tracing::info!(deployment.id = %id, "rollout paused by operator");
    Ok(Json(deployment_json(&state, &dep).await?))
}

/// `POST /deployments/{id}/resume` (SPEC §6): continue, accepting the failures so far;
/// opens the next wave if the current one is good. 409 when it is not paused.
#[utoipa::path(
    post,
    path = "/api/v1/deployments/{deployment_id}/resume",
    operation_id = "resumeDeployment",
    tag = "deployments",
    summary = "Resume a rollout",
    description = "Continue, accepting the failures so far; opens the next wave if the current one is good (SPEC §6). 409 when it is not paused or is final.",
    security(("bearerAuth" = [])),
    params(
        crate::openapi::DeploymentIdParam,
    ),
    responses(
        (status = 200, description = "The deployment, continuing.", body = kernex_common::api::Deployment),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Deployment>> {
    state.store.deployment(&id).await?;
    caller.require_operator()?;
    let dep = state.rollouts.resume(&state, &id).await?;
    tracing::info!(deployment.id = %id, "rollout resumed by operator");
    Ok(Json(deployment_json(&state, &dep).await?))
}

/// The device a device-side deployment call speaks for: 404 for an unknown deployment,
/// 403 for operators and for devices that are not its targets.
async fn target_caller(
    state: &AppState,
    caller: &Caller,
    deployment_id: &str,
) -> ApiResult<String> {
    state.store.deployment(deployment_id).await?;
    let Caller::Device { device_id } = caller else {
        return Err(ApiError::forbidden(
            "only a target device reports on a deployment",
        ));
    };
    if !state.store.is_target(deployment_id, device_id).await? {
        return Err(ApiError::forbidden(
            "this device is not a target of the deployment",
        ));
    }
    Ok(device_id.clone())
}

/// Read a device report: a `device_id` that is not the caller's is a 403 even when the
/// rest of the body is malformed (403 comes before 400), then the body must parse.
fn device_report<T: serde::de::DeserializeOwned>(
    body: Result<ApiJson<serde_json::Value>, ApiError>,
    caller_device: &str,
) -> ApiResult<T> {
    let ApiJson(value) = body?;
    if value
        .get("device_id")
        .and_then(|d| d.as_str())
        .is_some_and(|d| d != caller_device)
    {
        return Err(ApiError::forbidden(
            "device_id does not match the device token",
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// `POST /deployments/{id}/progress`.
#[utoipa::path(
    post,
    path = "/api/v1/deployments/{deployment_id}/progress",
    operation_id = "reportProgress",
    tag = "deployments",
    summary = "Report progress (device)",
    description = "Token of a target device; device_id must be that device (otherwise 403; operators 403). JSON bodies are limited to 1 MiB (413 above).",
    security(("bearerAuth" = [])),
    params(
        crate::openapi::DeploymentIdParam,
    ),
    request_body = kernex_common::api::ProgressReport,
    responses(
        (status = 204, description = "Recorded (ignored once the target is final)."),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn progress(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    body: Result<ApiJson<serde_json::Value>, ApiError>,
) -> ApiResult<StatusCode> {
    let device_id = target_caller(&state, &caller, &id).await?;
    let p: ProgressReport = device_report(body, &device_id)?;
    if p.progress_pct > 100 {
        return Err(ApiError::bad_request(
            "progress_pct must be between 0 and 100",
        ));
    }
    let target = state.store.record_progress(&id, &p, Utc::now()).await?;
    let dep = state.store.deployment(&id).await?;
    emit_deployment_with(&state, &dep, Some(&target));
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /deployments/{id}/result`.
#[utoipa::path(
    post,
    path = "/api/v1/deployments/{deployment_id}/result",
    operation_id = "reportResult",
    tag = "deployments",
    summary = "Report a final result (device)",
    description = "Token of a target device; device_id must be that device (otherwise 403; operators 403). 400 when status is not success/failed or a field is invalid, or report_id was already used for a different device/deployment. JSON bodies are limited to 1 MiB (413 above).",
    security(("bearerAuth" = [])),
    params(
        crate::openapi::DeploymentIdParam,
    ),
    request_body = kernex_common::api::ResultReport,
    responses(
        (status = 200, description = "The device's target state in this deployment. Idempotent: a repeated report_id, or any result after the first final one, changes nothing and returns the stored state.", body = kernex_common::api::DeploymentDevice),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 500, response = crate::openapi::Internal),
    )
)]
#[instrument(skip_all, err(level = "warn"), fields(deployment.id = %id))]
pub async fn result(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    body: Result<ApiJson<serde_json::Value>, ApiError>,
) -> ApiResult<Json<DeploymentDevice>> {
    let device_id = target_caller(&state, &caller, &id).await?;
    let mut r: ResultReport = device_report(body, &device_id)?;
    if r.report_id.is_empty() || r.report_id.len() > 64 {
        return Err(ApiError::bad_request("report_id must be 1-64 characters"));
    }
    if let Some(m) = &r.error_message
        && m.len() > MAX_MESSAGE_LEN
    {
        return Err(ApiError::bad_request("error_message is longer than 8 KiB"));
    }
    if r.duration_seconds
        .is_some_and(|d| !d.is_finite() || d < 0.0)
    {
        return Err(ApiError::bad_request(
            "duration_seconds must be a finite number >= 0",
        ));
    }
    if let Some(v) = &r.rolled_back_to
        && !kernex_common::validate::is_valid_version(v)
    {
        return Err(ApiError::bad_request(
            "rolled_back_to is not a valid version",
        ));
    }
    // Agents send at most 8 KiB; keep the end of anything longer rather than refuse a
    // result that is otherwise good.
    r.log_tail = r
        .log_tail
        .map(|t| kernex_common::validate::tail_utf8(&t, MAX_MESSAGE_LEN).to_owned());
    match state.store.apply_result(&id, &r, Utc::now()).await? {
        ResultOutcome::Applied {
            deployment,
            target,
            history,
            device,
        } => {
            state.heartbeats.touch([device_id.as_str()]);
            tracing::info!(device.id = %device_id, status = history.status.as_str(), "result recorded");
            emit_deployment_with(&state, &deployment, Some(&target));
            state
                .events
                .emit(ServerEvent::device(device.to_summary(Utc::now())));
            if deployment.rollout.is_some() {
                // The result is stored; a failing gate step is logged, not the device's
                // problem (the timer retries it).
                if let Err(e) = state
                    .rollouts
                    .on_result(&state, &id, &device_id, target.status)
                    .await
                {
                    tracing::warn!(error = %e, "rollout step after a result failed");
                }
            }
            Ok(Json(target.into_wire()))
        }
        // Durable too: the store syncs a repeat, whose first copy may still be flushing.
        ResultOutcome::Repeat { target } => Ok(Json(target.into_wire())),
    }
}
