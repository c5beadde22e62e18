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
