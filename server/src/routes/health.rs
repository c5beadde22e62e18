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

/// The OpenAPI document, kept next to the router and checked against it by tests.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// `GET /healthz` — no auth; also proves the store answers.
pub async fn healthz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state.store.device_exists("healthz-probe").await?;
    Ok(Json(Health {
        status: "ok".into(),
    }))
}

/// `GET /metrics` — Prometheus text format; with `--metrics-token`, only for a caller
/// that presents it as a bearer token.
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
pub async fn openapi() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], OPENAPI)
}
