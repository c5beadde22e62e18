//! The agent's HTTP client against stand-in servers that answer in ways the real one
//! never does: a redirect (captive portal, HTTP→HTTPS proxy), a 2xx that is not the
//! API's answer, and a command from a newer server.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use kernex_agent::client::Client;
use kernex_common::api::{Command, HeartbeatRequest, ResultReport, ResultStatus};
use serde_json::json;

async fn serve(app: Router) -> Client {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Client::new(&format!("http://{addr}"), None).unwrap()
}

fn report() -> ResultReport {
    ResultReport {
        device_id: "dev1".into(),
        status: ResultStatus::Success,
        report_id: "r1".into(),
        error_message: None,
        duration_seconds: Some(1.0),
        log_tail: None,
        rolled_back_to: None,
    }
}

#[tokio::test]
async fn a_redirected_result_is_not_delivered_and_is_retried_later() {
    let client = serve(
        Router::new()
            .route(
                "/api/v1/deployments/{id}/result",
                post(|| async { (StatusCode::FOUND, [(header::LOCATION, "/portal")]) }),
            )
            .route(
                "/portal",
                get(|| async { "<html>log in to the hotel wifi</html>" }),
            ),
    )
    .await;
    let err = client.result("t", "dep1", &report()).await.unwrap_err();
    assert!(
        err.is_transient(),
        "a redirect must keep the report queued: {err}"
    );
}

#[tokio::test]
async fn a_2xx_that_is_not_the_servers_answer_is_not_delivery() {
    let client = serve(Router::new().route(
        "/api/v1/deployments/{id}/result",
        post(|| async { "<html>welcome</html>" }),
    ))
    .await;
    let err = client.result("t", "dep1", &report()).await.unwrap_err();
    assert!(err.is_transient(), "{err}");

    let client = serve(Router::new().route(
        "/api/v1/deployments/{id}/result",
        post(|| async {
            axum::Json(
                json!({"device_id": "dev1", "status": "success", "phase": null,
                "progress_pct": null, "error_message": null, "log_tail": null,
                "updated_at": "2026-11-25T00:00:00Z"}),
            )
        }),
    ))
    .await;
    client.result("t", "dep1", &report()).await.unwrap();
}

#[tokio::test]
async fn a_command_from_a_newer_server_is_skipped_not_fatal() {
    let client = serve(Router::new().route(
        "/api/v1/devices/{id}/heartbeat",
        post(|| async {
            axum::Json(json!({
                "commands": [
                    {"type": "reboot", "at": "now"},
                    {"type": "configure", "config_version": 2, "polling_interval": 30,
                     "heartbeat_timeout": 10, "deploy_timeout": 60, "log_level": "debug",
                     "metadata": {}}
                ],
                "admission": "accepted",
                "server_time": "2026-11-25T00:00:00Z"
            }))
            .into_response()
        }),
    ))
    .await;
    let body = HeartbeatRequest {
        agent_version: "test".into(),
        cpu_pct: 1.0,
        memory_mb: 1.0,
        status: "idle".into(),
        current_bundle_version: None,
        config_version: None,
        queued_reports: 0,
    };
    let reply = client
        .heartbeat("dev1", "t", &body, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(reply.commands.len(), 1);
    assert!(matches!(&reply.commands[0], Command::Configure(c) if c.polling_interval == 30));
}
