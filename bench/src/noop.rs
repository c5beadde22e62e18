//! The no-op heartbeat server: Kernex's route, request and reply shapes, and nothing
//! else — no store, no auth lookup, no commands. What is left is axum, hyper, serde and
//! the socket, which is the floor any Kernex heartbeat stands on.

use axum::Json;
use axum::Router;
use axum::extract::Path;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Utc;
use kernex_common::api::{Admission, ErrorBody, HeartbeatRequest, HeartbeatResponse};

/// `POST /api/v1/devices/{id}/heartbeat`, the only route.
pub fn router() -> Router {
    Router::new().route("/api/v1/devices/{id}/heartbeat", post(heartbeat))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = ErrorBody {
        error: code.to_owned(),
        message: message.to_owned(),
    };
    (status, Json(body)).into_response()
}

async fn heartbeat(
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<HeartbeatRequest>, JsonRejection>,
) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| !t.is_empty());
    if !bearer {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "bearer token required",
        );
    }
    if id.is_empty() || id.len() > 64 {
        return error(StatusCode::NOT_FOUND, "not_found", "no such device");
    }
    let Json(_beat) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.body_text()),
    };
    Json(HeartbeatResponse {
        commands: Vec::new(),
        admission: Admission::Accepted,
        server_time: Utc::now(),
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn beat(auth: Option<&str>, body: &str) -> Request<Body> {
        let mut req = Request::post("/api/v1/devices/d1/heartbeat")
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        req.body(Body::from(body.to_owned())).unwrap()
    }

    #[tokio::test]
    async fn answers_like_kernex() {
        let body = serde_json::to_string(&crate::fleet::heartbeat_body()).unwrap();
        let resp = router()
            .oneshot(beat(Some("Bearer t"), &body))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let reply: HeartbeatResponse = serde_json::from_slice(&bytes).unwrap();
        assert!(reply.commands.is_empty());
        assert_eq!(reply.admission, Admission::Accepted);

        let resp = router().oneshot(beat(None, &body)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let resp = router()
            .oneshot(beat(Some("Bearer t"), "{}"))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    }
}
