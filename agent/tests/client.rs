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
        trust_version: None,
    };
    let reply = client
        .heartbeat("dev1", "t", &body, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(reply.commands.len(), 1);
    assert!(matches!(&reply.commands[0], Command::Configure(c) if c.polling_interval == 30));
}

fn beat_body() -> HeartbeatRequest {
    HeartbeatRequest {
        agent_version: "test".into(),
        cpu_pct: 1.0,
        memory_mb: 1.0,
        status: "idle".into(),
        current_bundle_version: None,
        config_version: None,
        queued_reports: 0,
        trust_version: None,
    }
}

/// A reply body that never ends (no Content-Length) is cut at the cap, not buffered
/// until memory runs out; one that announces its size over the cap is not read at all.
#[tokio::test]
async fn reply_bodies_are_bounded() {
    use futures_util::stream;
    let endless = || async {
        let chunk = bytes_of(64 * 1024);
        let body = axum::body::Body::from_stream(stream::repeat_with(move || {
            Ok::<_, std::io::Error>(chunk.clone())
        }));
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    };
    let client = serve(Router::new().route("/api/v1/devices/{id}/heartbeat", post(endless))).await;
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        client.heartbeat("dev1", "t", &beat_body(), Duration::from_secs(30)),
    )
    .await
    .expect("the read stops at the cap")
    .unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");

    let big = kernex_agent::client::MAX_REPLY_BODY + 1;
    let sized = move || async move { (StatusCode::OK, vec![b' '; big]).into_response() };
    let client = serve(Router::new().route("/api/v1/devices/{id}/heartbeat", post(sized))).await;
    let err = client
        .heartbeat("dev1", "t", &beat_body(), Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");

    // An endless *error* body is cut too, and still gives the status.
    let endless_error = || async {
        let chunk = bytes_of(64 * 1024);
        let body = axum::body::Body::from_stream(stream::repeat_with(move || {
            Ok::<_, std::io::Error>(chunk.clone())
        }));
        (StatusCode::BAD_REQUEST, body).into_response()
    };
    let client =
        serve(Router::new().route("/api/v1/deployments/{id}/result", post(endless_error))).await;
    let err = client.result("t", "dep1", &report()).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST), "{err}");
}

fn bytes_of(n: usize) -> axum::body::Bytes {
    axum::body::Bytes::from(vec![b' '; n])
}

mod flush {
    use super::*;
    use std::sync::{Arc, Mutex};

    use chrono::Utc;
    use kernex_agent::queue::{self, Outcome, Queue, QueuedReport};
    use kernex_common::api::DeploymentKind;

    fn queued(deployment: &str, n: i64) -> QueuedReport {
        let at = Utc::now() + chrono::Duration::seconds(n);
        QueuedReport {
            deployment_id: deployment.into(),
            kind: DeploymentKind::Deploy,
            bundle_version: "1.0.0".into(),
            started_at: at,
            queued_at: at,
            report: ResultReport {
                report_id: format!("r-{deployment}"),
                ..report()
            },
            outcome: Outcome {
                current_bundle_version: Some("1.0.0".into()),
                previous_bundle_version: None,
            },
        }
    }

    /// A result endpoint answering each deployment id with the status given for it,
    /// recording the order of the calls.
    async fn server(answers: &'static [(&'static str, u16)]) -> (Client, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let client = serve(Router::new().route(
            "/api/v1/deployments/{id}/result",
            post(
                move |axum::extract::Path(id): axum::extract::Path<String>| {
                    let log = log.clone();
                    async move {
                        log.lock().unwrap().push(id.clone());
                        let code = answers
                            .iter()
                            .find(|(d, _)| *d == id)
                            .map_or(500, |(_, c)| *c);
                        let status = StatusCode::from_u16(code).unwrap();
                        if status.is_success() {
                            axum::Json(json!({"device_id": "dev1", "status": "success",
                            "phase": null, "progress_pct": null, "error_message": null,
                            "log_tail": null, "updated_at": "2026-11-25T00:00:00Z"}))
                            .into_response()
                        } else {
                            (
                                status,
                                axum::Json(json!({"error": "bad_request",
                            "message": format!("refused {id}")})),
                            )
                                .into_response()
                        }
                    }
                },
            ),
        ))
        .await;
        (client, seen)
    }

    #[tokio::test]
    async fn sends_in_order_and_sets_refused_reports_aside() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::new(dir.path().join("queue"));
        for (n, d) in ["d1", "d2", "d3"].iter().enumerate() {
            q.push(&queued(d, n as i64)).unwrap();
        }
        let (client, seen) = server(&[("d1", 200), ("d2", 400), ("d3", 200)]).await;
        let r = queue::flush(&q, &client, "dev1", "t", None).await.unwrap();
        assert_eq!((r.sent, r.rejected, r.remaining), (2, 1, 0));
        assert_eq!(*seen.lock().unwrap(), ["d1", "d2", "d3"]);
        assert!(q.is_empty());
        let rejected = dir.path().join("queue/rejected");
        let reason = std::fs::read_dir(&rejected)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".reason"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .unwrap();
        assert!(reason.contains("refused d2"), "{reason}");
        // Set aside, the report still counts as produced: the agent will not run d2 again.
        assert!(q.find("d2").unwrap().is_some());
    }

    #[tokio::test]
    async fn a_server_error_stops_the_flush_and_keeps_everything_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::new(dir.path().join("queue"));
        for (n, d) in ["d1", "d2", "d3"].iter().enumerate() {
            q.push(&queued(d, n as i64)).unwrap();
        }
        let (client, seen) = server(&[("d1", 200), ("d2", 503), ("d3", 200)]).await;
        let r = queue::flush(&q, &client, "dev1", "t", None).await.unwrap();
        assert_eq!((r.sent, r.rejected, r.remaining), (1, 0, 2));
        assert!(r.stopped.is_some());
        // Nothing newer overtakes the report the server could not take.
        assert_eq!(*seen.lock().unwrap(), ["d1", "d2"]);
        assert_eq!(q.len(), 2);
    }

    #[tokio::test]
    async fn the_report_of_the_deployment_still_being_recorded_is_held_back() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::new(dir.path().join("queue"));
        q.push(&queued("d1", 0)).unwrap();
        let (client, seen) = server(&[("d1", 200)]).await;
        let r = queue::flush(&q, &client, "dev1", "t", Some("d1"))
            .await
            .unwrap();
        assert_eq!((r.sent, r.remaining), (0, 1));
        assert!(seen.lock().unwrap().is_empty());
    }
}
