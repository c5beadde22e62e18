//! Registration against a stand-in server whose clock is two hours ahead of the device's
//! (a device without a real-time clock): the agent notices the skew from the server's
//! `Date` header and signs again with the server's time.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{Duration, Utc};
use kernex_agent::client::Client;
use kernex_agent::identity::{Identity, RegisterError};
use kernex_common::api::RegisterRequest;
use kernex_common::signing::{DevicePublicKey, SIGNATURE_HEADER};
use serde_json::json;

#[derive(Clone, Default)]
struct Seen {
    timestamps: Arc<Mutex<Vec<chrono::DateTime<Utc>>>>,
}

fn server_now() -> chrono::DateTime<Utc> {
    Utc::now() + Duration::hours(2)
}

async fn healthz() -> Response {
    let date = server_now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    ([(header::DATE, date)], "{\"status\":\"ok\"}").into_response()
}

async fn register(
    axum::extract::State(seen): axum::extract::State<Seen>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: RegisterRequest = serde_json::from_slice(&body).unwrap();
    let sig = headers.get(SIGNATURE_HEADER).unwrap().to_str().unwrap();
    DevicePublicKey::from_pem(&req.public_key)
        .unwrap()
        .verify(&body, sig)
        .unwrap();
    seen.timestamps.lock().unwrap().push(req.timestamp);
    if (req.timestamp - server_now()).num_seconds().abs() > 300 {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(
                json!({"error": "unauthorized", "message": "timestamp outside the 300 s window"}),
            ),
        )
            .into_response();
    }
    (
        StatusCode::CREATED,
        axum::Json(json!({"device_id": "dev1", "device_token": "kxd_x", "admission": "accepted"})),
    )
        .into_response()
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_device_with_a_wrong_clock_registers_with_the_servers_time() {
    let seen = Seen::default();
    let url = serve(
        Router::new()
            .route("/healthz", get(healthz))
            .route("/api/v1/devices/register", post(register))
            .with_state(seen.clone()),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::load_or_create(&dir.path().join("device_key.pem"), 2048)
        .await
        .unwrap();
    let client = Client::new(&url, None).unwrap();
    let device = identity.register(&client, "test", None).await.unwrap();
    assert_eq!(device.device_id, "dev1");

    let stamps = seen.timestamps.lock().unwrap().clone();
    assert_eq!(
        stamps.len(),
        2,
        "one refused attempt, one with the server's time"
    );
    assert!((stamps[0] - Utc::now()).num_seconds().abs() < 60);
    assert!((stamps[1] - server_now()).num_seconds().abs() < 60);
}

#[tokio::test]
async fn a_refusal_that_is_not_about_the_clock_is_not_retried() {
    // Same clocks, and the server refuses anyway (a wrong enrollment token): one attempt.
    let attempts = Arc::new(Mutex::new(0));
    let counter = attempts.clone();
    let url = serve(
        Router::new()
            .route("/healthz", get(|| async { "{\"status\":\"ok\"}" }))
            .route(
                "/api/v1/devices/register",
                post(move || {
                    let counter = counter.clone();
                    async move {
                        *counter.lock().unwrap() += 1;
                        (
                            StatusCode::UNAUTHORIZED,
                            axum::Json(
                                json!({"error": "unauthorized", "message": "bad enrollment token"}),
                            ),
                        )
                    }
                }),
            ),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::load_or_create(&dir.path().join("device_key.pem"), 2048)
        .await
        .unwrap();
    let client = Client::new(&url, None).unwrap();
    let err = identity
        .register(&client, "test", Some("wrong"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegisterError::Refused(ref m) if m.contains("bad enrollment token")),
        "{err}"
    );
    assert_eq!(*attempts.lock().unwrap(), 1);
}
