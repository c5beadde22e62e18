//! Whole flows through the API: register, deploy, heartbeat, result.
#![allow(clippy::unwrap_used)]

mod support;

use axum::http::StatusCode;
use serde_json::json;
use support::*;

#[tokio::test]
async fn deploy_round_trip() {
    let app = TestApp::new();
    let dev = app.device().await;
    let b = app.bundle("1.0.0").await;
    let dep = app.deploy("1.0.0", &[&dev]).await;
    let dep_id = dep["id"].as_str().unwrap();
    assert_eq!(dep["status"], "pending");

    let hb = app.heartbeat(&dev, None, None).await.expect(StatusCode::OK);
    let cmds = hb["commands"].as_array().unwrap();
    assert_eq!(cmds[0]["type"], "deploy");
    assert_eq!(cmds[0]["bundle_id"], b["id"]);
    assert_eq!(cmds[1]["type"], "configure");

    let r = app
        .result(
            &dev,
            dep_id,
            json!({"device_id": dev.id, "status": "success", "report_id": "r1"}),
        )
        .await;
    r.expect(StatusCode::OK);
    let d = app
        .get(&format!("/api/v1/deployments/{dep_id}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(d["status"], "success");
    let device = app
        .get(&format!("/api/v1/devices/{}", dev.id))
        .await
        .expect(StatusCode::OK);
    assert_eq!(device["current_bundle_version"], "1.0.0");
}

/// A subscriber that does not read falls behind the bounded buffer: it is told how many
/// events it missed (`event: lagged`) and then keeps receiving, and publishing never
/// waited for it.
#[tokio::test]
async fn slow_event_subscriber_is_told_it_lagged_and_continues() {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let app = TestApp::new();
    let req = Request::builder()
        .uri("/api/v1/events")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let overflow = kernex_server::events::EVENT_BUFFER + 100;
    for i in 0..overflow {
        app.state.events.emit("device", json!({ "n": i }));
    }
    app.state.events.emit("device", json!({ "n": "last" }));

    let mut body = resp.into_body();
    let mut seen = String::new();
    let done = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !seen.contains(r#""n":"last""#) {
            let frame = body.frame().await.expect("stream ended").unwrap();
            if let Ok(data) = frame.into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
            }
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "the last event never arrived; got: {seen:.500}"
    );
    let first = seen.split("\n\n").next().unwrap_or_default();
    assert!(first.contains("event: lagged"), "first event: {first}");
    assert!(first.contains("\"missed\":"), "first event: {first}");
}
