//! Keys holding U+0000 in the deployment, result and removal routes: PostgreSQL text
//! cannot hold one, so such a key names nothing stored there, exactly as on sled (which
//! could store it, but never did): the same 404/403 as an unknown key, never a 5xx,
//! and a page cursor holding one still pages (SPEC §1, §8).
#![allow(clippy::unwrap_used)]

mod support;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;

fn ids(page: &Value) -> Vec<String> {
    page.as_array()
        .unwrap()
        .iter()
        .map(|t| t["device_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn keys_with_nul_name_nothing_in_deployment_routes() {
    let app = TestApp::new();
    let dev = app.device().await;
    app.bundle("1.0.0").await;
    for path in [
        "/api/v1/deployments/%00",
        "/api/v1/deployments/a%00b/targets",
        "/api/v1/devices/%00/bundle-history",
    ] {
        let r = app.get(path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "GET {path}: {}", r.text());
    }
    for path in [
        "/api/v1/deployments/%00/cancel",
        "/api/v1/deployments/%00/pause",
        "/api/v1/deployments/%00/resume",
        "/api/v1/devices/%00/reject",
        "/api/v1/devices/%00/accept",
    ] {
        let r = app.post(path, json!({})).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "POST {path}: {}", r.text());
    }
    for path in ["/api/v1/devices/%00", "/api/v1/bundles/%00"] {
        let r = app.delete(path).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "DELETE {path}: {}",
            r.text()
        );
    }
    // A device reporting on a deployment id that names nothing.
    let r = app
        .call(
            Method::POST,
            "/api/v1/deployments/%00/result",
            Some(&dev.token),
            Some(json!({"device_id": dev.id, "status": "success", "report_id": "r"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    // A target list naming a device id with U+0000 names no device.
    let r = app
        .post(
            "/api/v1/deployments",
            json!({"bundle_version": "1.0.0", "target_device_ids": [dev.id, "x\u{0}"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.json()["message"].as_str().unwrap().contains("no device"));
    let listed = app.get("/api/v1/deployments").await.expect(StatusCode::OK);
    assert_eq!(listed, json!([]));
}

/// A targets page after a cursor holding U+0000 starts where byte order puts it.
#[tokio::test]
async fn a_cursor_with_nul_pages_in_byte_order() {
    let app = TestApp::new();
    let a = app.device().await;
    let b = app.device().await;
    app.bundle("1.0.0").await;
    let dep = app.deploy("1.0.0", &[&a, &b]).await;
    let id = dep["id"].as_str().unwrap();
    let mut sorted = vec![a.id.clone(), b.id.clone()];
    sorted.sort();
    let page = app
        .get(&format!(
            "/api/v1/deployments/{id}/targets?after={}%00",
            sorted[0]
        ))
        .await
        .expect(StatusCode::OK);
    assert_eq!(ids(&page), vec![sorted[1].clone()]);
    let page = app
        .get(&format!("/api/v1/deployments/{id}/targets?after=%00"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(ids(&page), sorted);
}
