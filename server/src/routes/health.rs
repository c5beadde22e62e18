//! Probes and self-description: `/healthz`, `/metrics`, `/api/v1/openapi.json`.

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use kernex_common::api::Health;

use crate::error::ApiError;
use crate::state::AppState;

/// The OpenAPI document, kept next to the router and checked against it by tests.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// `GET /healthz` — no auth; also proves the store answers.
pub async fn healthz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state.store.device_exists("healthz-probe")?;
    Ok(Json(Health {
        status: "ok".into(),
    }))
}

/// `GET /metrics` — Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    // Reads the whole store: off the async workers.
    let text = tokio::task::spawn_blocking(move || state.metrics.render(&state.store))
        .await
        .map_err(ApiError::internal)??;
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    ))
}

/// `GET /api/v1/openapi.json`.
pub async fn openapi() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], OPENAPI)
}
