//! Every route in one place.

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::listen::BodyStall;
use crate::routes::{
    backup, bundles, config, deployments, devices, events, health, signing, tokens,
};
use crate::state::AppState;

/// Largest JSON body accepted (SPEC §1.8). Bundle uploads have their own limit.
pub const JSON_BODY_LIMIT: usize = 1024 * 1024;

/// The whole HTTP surface: `/api/v1/...`, `/healthz`, `/metrics`.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/backup", get(backup::download))
        .route("/devices/register", post(devices::register))
        .route("/devices/rollback", post(devices::rollback))
        .route("/devices", get(devices::list))
        .route(
            "/devices/{device_id}",
            get(devices::get)
                .patch(devices::patch)
                .delete(devices::delete),
        )
        .route("/devices/{device_id}/heartbeat", post(devices::heartbeat))
        .route("/devices/{device_id}/heartbeats", get(devices::heartbeats))
        .route("/devices/{device_id}/accept", post(devices::accept))
        .route("/devices/{device_id}/reject", post(devices::reject))
        .route("/devices/{device_id}/bundle-history", get(devices::history))
        .route(
            "/devices/{device_id}/config",
            get(config::get).put(config::put),
        )
        .route(
            "/bundles",
            get(bundles::list)
                .post(bundles::upload)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/bundles/{bundle_id}",
            get(bundles::download).delete(bundles::delete),
        )
        .route("/bundles/{bundle_id}/info", get(bundles::info))
        .route(
            "/bundles/{bundle_id}/signatures",
            get(signing::get_signatures).post(signing::add_signatures),
        )
        .route("/trust", get(signing::get_trust).put(signing::put_trust))
        .route(
            "/deployments",
            get(deployments::list).post(deployments::create),
        )
        .route("/deployments/{deployment_id}", get(deployments::get))
        .route(
            "/deployments/{deployment_id}/targets",
            get(deployments::targets),
        )
        .route(
            "/deployments/{deployment_id}/cancel",
            post(deployments::cancel),
        )
        .route(
            "/deployments/{deployment_id}/pause",
            post(deployments::pause),
        )
        .route(
            "/deployments/{deployment_id}/resume",
            post(deployments::resume),
        )
        .route(
            "/deployments/{deployment_id}/progress",
            post(deployments::progress),
        )
        .route(
            "/deployments/{deployment_id}/result",
            post(deployments::result),
        )
        .route("/events", get(events::stream))
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens/{name}", axum::routing::delete(tokens::delete))
        .route("/openapi.json", get(health::openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);

    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), budget))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("a handler panicked").into_response()
        }))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", MatchedPath::as_str);
            // Debug level: at the default level the span costs nothing per request (the
            // heartbeat path is hot); handlers' own spans name what failed.
            tracing::debug_span!("http", method = %req.method(), route)
        }))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint",
    )
}

/// Requests long by nature, left out of the per-request budget: the endless event
/// stream, bundle transfers, and the backup (its snapshot is spooled, and archives in a
/// bucket fetched, before the first byte: work that grows with the fleet). The minimum
/// transfer rate ([`crate::listen`]) bounds them instead.
fn is_long_running(method: &Method, route: &str) -> bool {
    matches!(
        (method.as_str(), route),
        ("GET", "/api/v1/events")
            | ("POST", "/api/v1/bundles")
            | ("GET", "/api/v1/bundles/{bundle_id}")
            | ("GET", "/api/v1/backup")
    )
}

/// SPEC §1.9: an ordinary request that outlasts its budget gets 503 (its handler is
/// dropped, never left stuck); one whose body stopped arriving gets 408.
async fn budget(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let stall = req.extensions().get::<BodyStall>().cloned();
    let long = req
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| is_long_running(req.method(), p.as_str()));
    let limit = state.limits.connections.request_timeout;
    let resp = if long {
        next.run(req).await
    } else {
        match tokio::time::timeout(limit, next.run(req)).await {
            Ok(resp) => resp,
            Err(_) => {
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the request took longer than its {limit:?} budget"),
                )
                .into_response();
            }
        }
    };
    if stall.is_some_and(|s| s.stalled()) {
        return ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "the request body stopped arriving (too slow)",
        )
        .into_response();
    }
    resp
}

/// Count requests and time them by matched route (never by raw path: ids would explode
/// the label set).
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = crate::metrics::method_label(req.method());
    let started = Instant::now();
    let resp = next.run(req).await;
    state
        .metrics
        .observe_request(route, method, resp.status().as_u16(), started.elapsed());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_and_backups_are_out_of_the_budget() {
        for (method, route) in [
            (Method::GET, "/api/v1/events"),
            (Method::POST, "/api/v1/bundles"),
            (Method::GET, "/api/v1/bundles/{bundle_id}"),
            (Method::GET, "/api/v1/backup"),
        ] {
            assert!(is_long_running(&method, route), "{method} {route}");
        }
        for (method, route) in [
            (Method::GET, "/api/v1/devices"),
            (Method::DELETE, "/api/v1/bundles/{bundle_id}"),
            (Method::POST, "/api/v1/devices/register"),
        ] {
            assert!(!is_long_running(&method, route), "{method} {route}");
        }
    }
}
