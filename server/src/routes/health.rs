//! Probes and self-description: `/healthz`, `/metrics`, `/api/v1/openapi.json`.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use kernex_common::api::Health;

use crate::auth::{bearer, secret_eq};
use crate::error::ApiError;
use crate::state::AppState;

/// `GET /healthz` — no auth; also proves the store answers.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "health",
    summary = "Liveness probe",
    security(()),
    responses(
        (status = 200, description = "The server and its store answer.", body = kernex_common::api::Health),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn healthz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state.store.device_exists("healthz-probe").await?;
    Ok(Json(Health {
        status: Health::OK.into(),
    }))
}

/// `GET /metrics` — Prometheus text format; with `--metrics-token`, only for a caller
/// that presents it as a bearer token.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "health",
    summary = "Prometheus metrics",
    description = "With --metrics-token set, the token is required as `Authorization: Bearer <token>`.",
    security(()),
    responses(
        (status = 200, description = "Prometheus text exposition format; metric names prefixed kernex_.", body = String, content_type = "text/plain"),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(expected) = &state.limits.metrics_token
        && !secret_eq(expected, bearer(&headers)?)
    {
        return Err(ApiError::unauthorized("wrong metrics token"));
    }
    // Counters kept on writes: the same cost at any fleet size (SPEC §1.9).
    let counts = state.store.fleet_counts(chrono::Utc::now()).await?;
    let text = state.metrics.render(&counts);
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    ))
}

/// `GET /api/v1/openapi.json`.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    operation_id = "getOpenApi",
    tag = "health",
    summary = "This OpenAPI document",
    security(()),
    responses(
        (status = 200, description = "The OpenAPI 3 document.", body = inline(crate::openapi::JsonObject)),
    )
)]
pub async fn openapi() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "application/json")],
        crate::openapi::DOCUMENT.as_str(),
    )
}
