//! Devices through the HTTP API (SPEC §1.1–§1.3, §1.7, §1.8): signed registration and its
//! refusals, enrollment and admission, heartbeats and their commands, listing and tags,
//! heartbeat history and retention, versioned config, operator tokens, auth order, body
//! limits, live events, probes, and a garbage-input sweep that must never yield a 5xx.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode};
use chrono::{DateTime, Utc};
use http_body_util::BodyExt;
use kernex_common::signing::{DeviceKey, ENROLLMENT_HEADER, SIGNATURE_HEADER};
use serde_json::{Value, json};
use support::*;
use tower::ServiceExt;

// ------------------------------------------------------------------------------ helpers

/// Every error code SPEC §1 allows.
const ERROR_CODES: [&str; 9] = [
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "conflict",
    "payload_too_large",
    "range_not_satisfiable",
    "internal",
];

/// Assert an error status and its `error` code (and the uniform shape).
#[track_caller]
fn expect_err(resp: &Resp, status: StatusCode, code: &str) {
    resp.expect(status);
    assert_eq!(resp.code(), code, "wrong error code; body: {}", resp.text());
}

/// A heartbeat body with the given free-text status.
fn hb_body(status: &str) -> Value {
    json!({
        "agent_version": "0.3.1", "cpu_pct": 12.5, "memory_mb": 812.0, "status": status,
        "current_bundle_version": null, "config_version": null, "queued_reports": 0,
    })
}

fn hb_path(id: &str) -> String {
    format!("/api/v1/devices/{id}/heartbeat")
}

fn dev_path(id: &str) -> String {
    format!("/api/v1/devices/{id}")
}

fn config_path(id: &str) -> String {
    format!("/api/v1/devices/{id}/config")
}

/// Heartbeat as `dev` with an arbitrary JSON body.
async fn beat(app: &TestApp, dev: &Device, body: Value) -> Resp {
    app.call(
        Method::POST,
        &hb_path(&dev.id),
        Some(&dev.token),
        Some(body),
    )
    .await
}

/// A request with raw body bytes and an optional content type and bearer token.
async fn raw(
    app: &TestApp,
    method: Method,
    uri: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Resp {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    app.send(b.body(Body::from(body)).unwrap()).await
}

/// The operator's view of one device.
async fn detail(app: &TestApp, id: &str) -> Value {
    app.get(&dev_path(id)).await.expect(StatusCode::OK)
}

async fn config(app: &TestApp, id: &str) -> Value {
    app.get(&config_path(id)).await.expect(StatusCode::OK)
}

/// Device ids of a `GET /devices...` answer, in answer order.
async fn list_ids(app: &TestApp, query: &str) -> Vec<String> {
    let v = app
        .get(&format!("/api/v1/devices{query}"))
        .await
        .expect(StatusCode::OK);
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The `type`s of a heartbeat answer's commands.
fn command_types(hb: &Value) -> Vec<String> {
    hb["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap().to_owned())
        .collect()
}

/// The configure command of a heartbeat answer, if any.
fn configure_cmd(hb: &Value) -> Option<Value> {
    hb["commands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "configure")
        .cloned()
}

fn ts(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap()
        .with_timezone(&Utc)
}

/// A registration body with its signature, for tests that tamper with one or the other.
fn signed(key: &DeviceKey, at: DateTime<Utc>) -> (Vec<u8>, String) {
    let body = registration_body(key, at);
    let sig = key.sign(&body);
    (body, sig)
}

/// Lowercase hex SHA-256 of the DER inside a PEM `PUBLIC KEY` block.
fn spki_sha256(pem: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    hex::encode(sha2::Sha256::digest(&der))
}

/// Heartbeats stored for a device (newest first).
async fn history(app: &TestApp, id: &str, query: &str) -> Vec<Value> {
    app.get(&format!("/api/v1/devices/{id}/heartbeats{query}"))
        .await
        .expect(StatusCode::OK)
        .as_array()
        .unwrap()
        .clone()
}

// ------------------------------------------------------------------ prototype scenarios

#[tokio::test]
async fn test_device_register() {
    let app = TestApp::new();
    let key = new_key();
    let r = app.register_key(&key, Some(ENROLL)).await;
    let v = r.expect(StatusCode::CREATED);
    let id = v["device_id"].as_str().unwrap();
    assert!(!id.is_empty() && id.len() <= 64, "device_id length: {id:?}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')),
        "device_id is not URL-safe: {id:?}"
    );
    let token = v["device_token"].as_str().unwrap();
    assert!(!token.is_empty());
    assert_eq!(v["admission"], "accepted");

    // The token works for the device, and the operator sees it accepted.
    let dev = Device {
        id: id.to_owned(),
        token: token.to_owned(),
        key,
    };
    app.heartbeat(&dev, None, None).await.expect(StatusCode::OK);
    let d = detail(&app, id).await;
    assert_eq!(d["device_id"], id);
    assert_eq!(d["admission"], "accepted");
    assert_eq!(d["device_type"], "jetson-nano");
}

#[tokio::test]
async fn test_device_register_duplicate_public_key() {
    let app = TestApp::new();
    let dev = app.device().await;
    let again = app
        .register_key(&dev.key, Some(ENROLL))
        .await
        .expect(StatusCode::OK);
    assert_eq!(again["device_id"], dev.id.as_str(), "same key → same id");
    let new_token = again["device_token"].as_str().unwrap();
    assert_ne!(new_token, dev.token, "re-registration mints a fresh token");
    assert_eq!(again["admission"], "accepted");

    // The earlier token is revoked; the new one works.
    let old = app.heartbeat(&dev, None, None).await;
    expect_err(&old, StatusCode::UNAUTHORIZED, "unauthorized");
    let fresh = Device {
        id: dev.id.clone(),
        token: new_token.to_owned(),
        key: dev.key,
    };
    app.heartbeat(&fresh, None, None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(list_ids(&app, "").await, vec![dev.id.clone()]);
}

#[tokio::test]
async fn test_device_heartbeat() {
    let app = TestApp::new();
    let dev = app.device().await;
    let before = detail(&app, &dev.id).await;
    assert_eq!(before["status"], "never");
    assert!(before["last_heartbeat"].is_null());

    let body = json!({
        "agent_version": "0.3.1", "cpu_pct": 42.5, "memory_mb": 1024.0, "status": "deploying",
        "current_bundle_version": "1.0.0", "config_version": 1, "queued_reports": 3,
        "unknown_field": "ignored",
    });
    let hb = beat(&app, &dev, body).await.expect(StatusCode::OK);
    assert_eq!(hb["admission"], "accepted");
    assert!(hb["commands"].is_array());
    let server_time = ts(&hb["server_time"]);
    assert!((Utc::now() - server_time).num_seconds().abs() < 60);

    let d = detail(&app, &dev.id).await;
    assert_eq!(d["status"], "online");
    assert_eq!(d["agent_status"], "deploying");
    assert_eq!(d["agent_version"], "0.3.1");
    assert_eq!(d["cpu_pct"], 42.5);
    assert_eq!(d["memory_mb"], 1024.0);
    assert_eq!(d["current_bundle_version"], "1.0.0");
    assert_eq!(d["config_version"], 1);
    assert_eq!(d["queued_reports"], 3);

    // A later heartbeat reporting null does not erase what the device runs.
    app.heartbeat(&dev, None, Some(1))
        .await
        .expect(StatusCode::OK);
    let d = detail(&app, &dev.id).await;
    assert_eq!(d["current_bundle_version"], "1.0.0");
    assert_eq!(d["agent_status"], "idle");
    assert_eq!(d["queued_reports"], 0);
}

#[tokio::test]
async fn test_list_devices() {
    let app = TestApp::new();
    let a = app.device().await;
    let b = app.device().await;
    let c = app.pending_device().await;
    app.heartbeat(&a, Some("2.0.0"), None)
        .await
        .expect(StatusCode::OK);

    let v = app.get("/api/v1/devices").await.expect(StatusCode::OK);
    let rows = v.as_array().unwrap();
    let ids: Vec<&str> = rows
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    let mut expected = vec![a.id.as_str(), b.id.as_str(), c.id.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected, "ordered by device_id");
    for row in rows {
        for field in [
            "device_id",
            "device_type",
            "admission",
            "status",
            "agent_status",
            "tags",
            "current_bundle_version",
            "agent_version",
            "last_heartbeat",
            "cpu_pct",
            "memory_mb",
            "config_version",
        ] {
            assert!(row.get(field).is_some(), "summary lacks {field}: {row}");
        }
    }
    let row_a = rows
        .iter()
        .find(|d| d["device_id"] == a.id.as_str())
        .unwrap();
    assert_eq!(row_a["status"], "online");
    assert_eq!(row_a["current_bundle_version"], "2.0.0");
    assert_eq!(row_a["agent_status"], "idle");
    let row_c = rows
        .iter()
        .find(|d| d["device_id"] == c.id.as_str())
        .unwrap();
    assert_eq!(row_c["admission"], "pending");
    assert_eq!(row_c["status"], "never");
    assert_eq!(row_c["tags"], json!([]));
}

#[tokio::test]
async fn test_get_device_detail() {
    let app = TestApp::new();
    let dev = app.device().await;
    let d = detail(&app, &dev.id).await;
    assert_eq!(
        d["hardware_metadata"],
        json!({"cpu": "arm64", "ram_mb": 4096})
    );
    assert_eq!(d["queued_reports"], 0);
    let registered = ts(&d["registered_at"]);
    assert!((Utc::now() - registered).num_seconds().abs() < 120);
    let fp = d["public_key_fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(fp.len(), 64, "fingerprint: {fp}");
    assert!(
        fp.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "fingerprint is not lowercase hex: {fp}"
    );
    // It is SHA-256 of *this* device's SubjectPublicKeyInfo DER, computed independently.
    assert_eq!(fp, spki_sha256(&dev.key.public_key_pem().unwrap()));

    // Stable across re-registration; another key gives another one.
    app.register_key(&dev.key, None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(detail(&app, &dev.id).await["public_key_fingerprint"], fp);
    let other = app.device().await;
    assert_ne!(detail(&app, &other.id).await["public_key_fingerprint"], fp);
}

#[tokio::test]
async fn test_device_heartbeat_updates_last_heartbeat() {
    let app = TestApp::new();
    let dev = app.device().await;
    assert!(detail(&app, &dev.id).await["last_heartbeat"].is_null());

    let t0 = Utc::now();
    app.heartbeat(&dev, None, None).await.expect(StatusCode::OK);
    let t1 = Utc::now();
    let first = ts(&detail(&app, &dev.id).await["last_heartbeat"]);
    assert!(t0 <= first && first <= t1, "{t0} <= {first} <= {t1}");

    app.heartbeat(&dev, None, None).await.expect(StatusCode::OK);
    let t2 = Utc::now();
    let second = ts(&detail(&app, &dev.id).await["last_heartbeat"]);
    assert!(
        first <= second && second <= t2,
        "{first} <= {second} <= {t2}"
    );
    assert!(t1 <= second, "the second heartbeat's time was recorded");
    assert_eq!(history(&app, &dev.id, "").await.len(), 2);
}

#[tokio::test]
async fn test_heartbeat_includes_config_command() {
    let app = TestApp::new();
    let dev = app.device().await;

    // No config ever set: the defaults at version 1 are sent to a device reporting null.
    let hb = app.heartbeat(&dev, None, None).await.expect(StatusCode::OK);
    let cmd = configure_cmd(&hb).expect("configure for a null config_version");
    assert_eq!(
        cmd,
        json!({"type": "configure", "config_version": 1, "polling_interval": 60,
               "heartbeat_timeout": 30, "deploy_timeout": 300, "log_level": "info",
               "metadata": {}})
    );
    // Acknowledged: nothing more.
    let hb = app
        .heartbeat(&dev, None, Some(1))
        .await
        .expect(StatusCode::OK);
    assert_eq!(hb["commands"], json!([]));

    // A new version is sent while the device reports an older one.
    app.put(
        &config_path(&dev.id),
        json!({"polling_interval": 120, "log_level": "debug", "metadata": {"site": "b"}}),
    )
    .await
    .expect(StatusCode::OK);
    for _ in 0..2 {
        let hb = app
            .heartbeat(&dev, None, Some(1))
            .await
            .expect(StatusCode::OK);
        let cmd = configure_cmd(&hb).expect("configure while behind");
        assert_eq!(cmd["config_version"], 2);
        assert_eq!(cmd["polling_interval"], 120);
        assert_eq!(cmd["heartbeat_timeout"], 30);
        assert_eq!(cmd["deploy_timeout"], 300);
        assert_eq!(cmd["log_level"], "debug");
        assert_eq!(cmd["metadata"], json!({"site": "b"}));
    }
    // Null counts as 0.
    let hb = app.heartbeat(&dev, None, None).await.expect(StatusCode::OK);
    assert_eq!(configure_cmd(&hb).unwrap()["config_version"], 2);
    // Acknowledged.
    let hb = app
        .heartbeat(&dev, None, Some(2))
        .await
        .expect(StatusCode::OK);
    assert_eq!(command_types(&hb), Vec::<String>::new());
    assert_eq!(detail(&app, &dev.id).await["config_version"], 2);
}

#[tokio::test]
async fn test_device_config_create_and_update() {
    let app = TestApp::new();
    let dev = app.device().await;
    let c = config(&app, &dev.id).await;
    assert_eq!(c["device_id"], dev.id.as_str());
    assert_eq!(c["version"], 1);
    assert_eq!(c["polling_interval"], 60);
    assert_eq!(c["heartbeat_timeout"], 30);
    assert_eq!(c["deploy_timeout"], 300);
    assert_eq!(c["log_level"], "info");
    assert_eq!(c["metadata"], json!({}));
    assert!(c.get("updated_at").is_some());

    let c = app
        .put(
            &config_path(&dev.id),
            json!({"polling_interval": 120, "log_level": "debug"}),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(c["version"], 2);
    assert_eq!(c["polling_interval"], 120);
    assert_eq!(c["log_level"], "debug");
    assert_eq!(c["heartbeat_timeout"], 30);
    assert_eq!(c["deploy_timeout"], 300);
    assert!(c["updated_at"].is_string());

    // Partial update: only metadata; the rest keep their values.
    let c = app
        .put(
            &config_path(&dev.id),
            json!({"metadata": {"model": "yolo"}}),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(c["version"], 3);
    assert_eq!(c["polling_interval"], 120);
    assert_eq!(c["log_level"], "debug");
    assert_eq!(c["metadata"], json!({"model": "yolo"}));
    assert_eq!(
        config(&app, &dev.id).await,
        c,
        "GET returns what PUT stored"
    );

    // Every field at once, at the edges of its range.
    let c = app
        .put(
            &config_path(&dev.id),
            json!({"polling_interval": 5, "heartbeat_timeout": 300, "deploy_timeout": 86400,
                   "log_level": "trace", "metadata": {}}),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(c["version"], 4);
    assert_eq!(c["polling_interval"], 5);
    assert_eq!(c["heartbeat_timeout"], 300);
    assert_eq!(c["deploy_timeout"], 86400);
    assert_eq!(c["log_level"], "trace");
    assert_eq!(c["metadata"], json!({}));
}

#[tokio::test]
async fn test_config_version_increment() {
    let app = TestApp::new();
    let dev = app.device().await;
    let bodies = [
        json!({"polling_interval": 30}),
        json!({"polling_interval": 30}),
        json!({"heartbeat_timeout": 1}),
        json!({"deploy_timeout": 1}),
        json!({"log_level": "warn"}),
        json!({"log_level": "error"}),
        json!({"metadata": {"a": [1, 2, 3]}}),
        json!({"polling_interval": 86400, "unknown": true}),
    ];
    for (i, body) in bodies.into_iter().enumerate() {
        let c = app
            .put(&config_path(&dev.id), body)
            .await
            .expect(StatusCode::OK);
        assert_eq!(c["version"], i as u64 + 2, "exactly +1 per PUT");
    }
    let c = config(&app, &dev.id).await;
    assert_eq!(c["version"], 9);
    assert_eq!(c["polling_interval"], 86400);
    assert_eq!(c["heartbeat_timeout"], 1);
    assert_eq!(c["deploy_timeout"], 1);
    assert_eq!(c["log_level"], "error");
    assert_eq!(c["metadata"], json!({"a": [1, 2, 3]}));
    // The device is told about the newest version only.
    let hb = app
        .heartbeat(&dev, None, Some(3))
        .await
        .expect(StatusCode::OK);
    assert_eq!(configure_cmd(&hb).unwrap()["config_version"], 9);
}

// ---------------------------------------------------------------------------------- auth

#[tokio::test]
async fn auth_missing_garbage_and_revoked_tokens_are_401() {
    let app = TestApp::new();
    let dev = app.device().await;

    for path in ["/api/v1/devices", "/api/v1/tokens", "/api/v1/events"] {
        let r = app.call(Method::GET, path, None, None).await;
        expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");
        let r = app.call(Method::GET, path, Some("garbage"), None).await;
        expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // Not a bearer token at all.
    let req = Request::builder()
        .uri("/api/v1/devices")
        .header("authorization", format!("Basic {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    expect_err(
        &app.send(req).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    // Device endpoint without a token or with a garbage one.
    let r = app
        .call(Method::POST, &hb_path(&dev.id), None, Some(hb_body("idle")))
        .await;
    expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    let r = app
        .call(
            Method::POST,
            &hb_path(&dev.id),
            Some("kxd_not-a-token"),
            Some(hb_body("idle")),
        )
        .await;
    expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");

    // Revoked operator token.
    let t = app
        .post("/api/v1/tokens", json!({"name": "ci"}))
        .await
        .expect(StatusCode::CREATED);
    let token = t["token"].as_str().unwrap();
    app.call(Method::GET, "/api/v1/devices", Some(token), None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        app.delete("/api/v1/tokens/ci").await.status,
        StatusCode::NO_CONTENT
    );
    let r = app
        .call(Method::GET, "/api/v1/devices", Some(token), None)
        .await;
    expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn auth_device_token_on_operator_endpoints_is_403() {
    let app = TestApp::new();
    let dev = app.device().await;
    app.bundle("1.0.0").await;
    let t = Some(dev.token.as_str());
    let cases: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/api/v1/devices".into(), None),
        (Method::GET, "/api/v1/bundles".into(), None),
        (
            Method::POST,
            "/api/v1/deployments".into(),
            Some(json!({"bundle_version": "1.0.0", "target_device_ids": [dev.id]})),
        ),
        (Method::GET, "/api/v1/deployments".into(), None),
        (Method::GET, dev_path(&dev.id), None),
        (
            Method::PATCH,
            dev_path(&dev.id),
            Some(json!({"tags": ["x"]})),
        ),
        (Method::DELETE, dev_path(&dev.id), None),
        (Method::POST, format!("{}/accept", dev_path(&dev.id)), None),
        (
            Method::GET,
            format!("{}/heartbeats", dev_path(&dev.id)),
            None,
        ),
        (
            Method::PUT,
            config_path(&dev.id),
            Some(json!({"polling_interval": 10})),
        ),
        (Method::GET, "/api/v1/tokens".into(), None),
        (
            Method::POST,
            "/api/v1/tokens".into(),
            Some(json!({"name": "mine"})),
        ),
        (Method::DELETE, "/api/v1/tokens/admin".into(), None),
        (Method::GET, "/api/v1/events".into(), None),
    ];
    for (method, path, body) in cases {
        let r = app.call(method.clone(), &path, t, body).await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {}",
            r.text()
        );
        expect_err(&r, StatusCode::FORBIDDEN, "forbidden");
    }
    // None of it happened.
    let d = detail(&app, &dev.id).await;
    assert_eq!(d["tags"], json!([]));
    assert_eq!(config(&app, &dev.id).await["version"], 1);
    let deps = app.get("/api/v1/deployments").await.expect(StatusCode::OK);
    assert_eq!(deps, json!([]));
    app.call(Method::GET, "/api/v1/devices", Some(ADMIN), None)
        .await
        .expect(StatusCode::OK);
}

#[tokio::test]
async fn auth_device_token_on_another_device_is_403() {
    let app = TestApp::new();
    let a = app.device().await;
    let b = app.device().await;
    let r = app
        .call(
            Method::POST,
            &hb_path(&b.id),
            Some(&a.token),
            Some(hb_body("idle")),
        )
        .await;
    expect_err(&r, StatusCode::FORBIDDEN, "forbidden");
    // b was not touched.
    assert!(detail(&app, &b.id).await["last_heartbeat"].is_null());
    let r = app
        .call(Method::GET, &config_path(&b.id), Some(&a.token), None)
        .await;
    expect_err(&r, StatusCode::FORBIDDEN, "forbidden");
    // An operator token on a device-only endpoint is 403 too.
    let r = app.post(&hb_path(&b.id), hb_body("idle")).await;
    expect_err(&r, StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn auth_unknown_device_is_404_for_operators() {
    let app = TestApp::new();
    let missing = "0000000000000000000000000000dead";
    for r in [
        app.get(&dev_path(missing)).await,
        app.get(&config_path(missing)).await,
        app.put(&config_path(missing), json!({"polling_interval": 10}))
            .await,
        app.patch(&dev_path(missing), json!({"tags": ["a"]})).await,
        app.delete(&dev_path(missing)).await,
        app.get(&format!("{}/heartbeats", dev_path(missing))).await,
        app.post(&format!("{}/accept", dev_path(missing)), json!({}))
            .await,
        app.post(&format!("{}/reject", dev_path(missing)), json!({}))
            .await,
        app.delete("/api/v1/tokens/nobody").await,
    ] {
        expect_err(&r, StatusCode::NOT_FOUND, "not_found");
    }
}

#[tokio::test]
async fn auth_order_is_401_then_404_then_403_then_400() {
    let app = TestApp::new();
    let a = app.device().await;
    let b = app.device().await;
    let missing = "0000000000000000000000000000dead";
    let garbage = || Some(json!({"nonsense": true}));

    // 401 beats 404 and 400.
    let r = app
        .call(Method::POST, &hb_path(missing), None, garbage())
        .await;
    expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    let r = app
        .call(Method::GET, &dev_path(missing), Some("nope"), None)
        .await;
    expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    // 404 beats 403 and 400.
    let r = app
        .call(Method::POST, &hb_path(missing), Some(&a.token), garbage())
        .await;
    expect_err(&r, StatusCode::NOT_FOUND, "not_found");
    let r = app
        .call(Method::GET, &dev_path(missing), Some(&a.token), None)
        .await;
    expect_err(&r, StatusCode::NOT_FOUND, "not_found");
    let r = app
        .call(
            Method::DELETE,
            "/api/v1/tokens/nobody",
            Some(&a.token),
            None,
        )
        .await;
    expect_err(&r, StatusCode::NOT_FOUND, "not_found");
    // 403 beats 400.
    let r = app
        .call(Method::POST, &hb_path(&b.id), Some(&a.token), garbage())
        .await;
    expect_err(&r, StatusCode::FORBIDDEN, "forbidden");
    let r = app
        .call(Method::PUT, &config_path(&b.id), Some(&a.token), garbage())
        .await;
    expect_err(&r, StatusCode::FORBIDDEN, "forbidden");
    // And with the right credentials, the body is judged.
    let r = app
        .call(Method::POST, &hb_path(&a.id), Some(&a.token), garbage())
        .await;
    expect_err(&r, StatusCode::BAD_REQUEST, "bad_request");
}

// -------------------------------------------------------------------------- registration

#[tokio::test]
async fn register_forged_signature_is_401() {
    let app = TestApp::new();
    let key = new_key();
    let thief = new_key();
    let body = registration_body(&key, Utc::now());
    let sig = thief.sign(&body);
    let r = app.register_raw(&body, Some(&sig), Some(ENROLL)).await;
    expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    // Not base64 at all.
    let r = app
        .register_raw(&body, Some("%%%not-base64%%%"), Some(ENROLL))
        .await;
    expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    // Valid base64 of the wrong length.
    let r = app.register_raw(&body, Some("AAAA"), Some(ENROLL)).await;
    expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(list_ids(&app, "").await, Vec::<String>::new());
}

#[tokio::test]
async fn register_body_altered_after_signing_is_401() {
    let app = TestApp::new();
    let key = new_key();
    let (body, sig) = signed(&key, Utc::now());

    // A field changed.
    let mut v: Value = serde_json::from_slice(&body).unwrap();
    v["device_type"] = json!("evil-box");
    let changed = serde_json::to_vec(&v).unwrap();
    let r = app.register_raw(&changed, Some(&sig), Some(ENROLL)).await;
    expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");

    // Same JSON meaning, different bytes: the signature covers the exact bytes.
    let mut spaced = body.clone();
    spaced.push(b' ');
    let r = app.register_raw(&spaced, Some(&sig), Some(ENROLL)).await;
    expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");

    assert_eq!(list_ids(&app, "").await, Vec::<String>::new());
    // The untampered request still works (the refusals did not burn it).
    app.register_raw(&body, Some(&sig), Some(ENROLL))
        .await
        .expect(StatusCode::CREATED);
}

#[tokio::test]
async fn register_missing_signature_is_401() {
    let app = TestApp::new();
    let key = new_key();
    let body = registration_body(&key, Utc::now());
    let r = app.register_raw(&body, None, Some(ENROLL)).await;
    expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    let r = app.register_raw(&body, Some(""), Some(ENROLL)).await;
    expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(list_ids(&app, "").await, Vec::<String>::new());
}

#[tokio::test]
async fn register_replayed_request_is_401() {
    let app = TestApp::new();
    let key = new_key();
    let (body, sig) = signed(&key, Utc::now());
    let first = app
        .register_raw(&body, Some(&sig), Some(ENROLL))
        .await
        .expect(StatusCode::CREATED);
    let r = app.register_raw(&body, Some(&sig), Some(ENROLL)).await;
    expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    let r = app.register_raw(&body, Some(&sig), None).await;
    expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");

    // The replay minted nothing: the first token is still the live one.
    let dev = Device {
        id: first["device_id"].as_str().unwrap().to_owned(),
        token: first["device_token"].as_str().unwrap().to_owned(),
        key,
    };
    app.heartbeat(&dev, None, None).await.expect(StatusCode::OK);
    // A freshly signed request from the same key is fine.
    app.register_key(&dev.key, Some(ENROLL))
        .await
        .expect(StatusCode::OK);
}

#[tokio::test]
async fn register_stale_or_future_timestamp_is_401() {
    let app = TestApp::new();
    let key = new_key();
    for offset in [-301_i64, -3600, 400, 86_400] {
        let (body, sig) = signed(&key, Utc::now() + chrono::Duration::seconds(offset));
        let r = app.register_raw(&body, Some(&sig), Some(ENROLL)).await;
        expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    assert_eq!(list_ids(&app, "").await, Vec::<String>::new());
    // Within the window (with margin for a slow machine) is fine.
    let (body, sig) = signed(&key, Utc::now() - chrono::Duration::seconds(240));
    app.register_raw(&body, Some(&sig), Some(ENROLL))
        .await
        .expect(StatusCode::CREATED);
}

#[tokio::test]
async fn register_malformed_or_small_key_is_400() {
    let app = TestApp::new();
    let signer = new_key();

    // Not a key.
    let body = serde_json::to_vec(&json!({
        "public_key": "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n",
        "device_type": "x", "hardware_metadata": {}, "timestamp": Utc::now(),
    }))
    .unwrap();
    let r = app
        .register_raw(&body, Some(&signer.sign(&body)), Some(ENROLL))
        .await;
    expect_err(&r, StatusCode::BAD_REQUEST, "bad_request");

    // A private key where the public one belongs.
    let body = serde_json::to_vec(&json!({
        "public_key": signer.to_pem().unwrap(),
        "device_type": "x", "hardware_metadata": {}, "timestamp": Utc::now(),
    }))
    .unwrap();
    let r = app
        .register_raw(&body, Some(&signer.sign(&body)), Some(ENROLL))
        .await;
    expect_err(&r, StatusCode::BAD_REQUEST, "bad_request");

    // 1024-bit key, correctly signed by itself.
    let small = DeviceKey::generate(1024).unwrap();
    let (body, sig) = signed(&small, Utc::now());
    let r = app.register_raw(&body, Some(&sig), Some(ENROLL)).await;
    expect_err(&r, StatusCode::BAD_REQUEST, "bad_request");

    // Missing fields, wrong types, not JSON, not declared JSON.
    for body in [
        json!({"device_type": "x", "timestamp": Utc::now()}),
        json!({"public_key": signer.public_key_pem().unwrap(), "timestamp": Utc::now()}),
        json!({"public_key": signer.public_key_pem().unwrap(), "device_type": "x"}),
        json!({"public_key": 5, "device_type": "x", "timestamp": Utc::now()}),
        json!({"public_key": signer.public_key_pem().unwrap(), "device_type": "x",
               "timestamp": "yesterday"}),
        json!({"public_key": signer.public_key_pem().unwrap(), "device_type": "x",
               "hardware_metadata": [1, 2], "timestamp": Utc::now()}),
    ] {
        let bytes = serde_json::to_vec(&body).unwrap();
        let r = app
            .register_raw(&bytes, Some(&signer.sign(&bytes)), Some(ENROLL))
            .await;
        expect_err(&r, StatusCode::BAD_REQUEST, "bad_request");
    }
    // Correctly signed, complete, but positional: the body must be an object.
    let positional = serde_json::to_vec(&json!([
        signer.public_key_pem().unwrap(),
        "jetson-nano",
        {},
        Utc::now(),
    ]))
    .unwrap();
    let r = app
        .register_raw(&positional, Some(&signer.sign(&positional)), Some(ENROLL))
        .await;
    expect_err(&r, StatusCode::BAD_REQUEST, "bad_request");
    let r = app
        .register_raw(b"{not json", Some("AAAA"), Some(ENROLL))
        .await;
    expect_err(&r, StatusCode::BAD_REQUEST, "bad_request");
    // Correctly signed, but not declared as JSON.
    let (body, sig) = signed(&signer, Utc::now());
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/devices/register")
        .header("content-type", "text/plain")
        .header(SIGNATURE_HEADER, sig)
        .header(ENROLLMENT_HEADER, ENROLL)
        .body(Body::from(body))
        .unwrap();
    let r = app.send(req).await;
    expect_err(&r, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(list_ids(&app, "").await, Vec::<String>::new());
}

#[tokio::test]
async fn register_enrollment_token_decides_admission() {
    let app = TestApp::new();
    // Wrong token → 401 and nothing stored.
    let key = new_key();
    let r = app.register_key(&key, Some("not-the-secret")).await;
    expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(list_ids(&app, "").await, Vec::<String>::new());
    // No token → pending.
    let p = app
        .register_key(&key, None)
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(p["admission"], "pending");
    assert!(p["device_token"].as_str().is_some_and(|t| !t.is_empty()));
    let id = p["device_id"].as_str().unwrap();
    assert_eq!(detail(&app, id).await["admission"], "pending");
    // A wrong token is refused for a known key too.
    let r = app.register_key(&key, Some("not-the-secret")).await;
    expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    // Presenting the right token later admits the pending device.
    let a = app
        .register_key(&key, Some(ENROLL))
        .await
        .expect(StatusCode::OK);
    assert_eq!(a["device_id"], id);
    assert_eq!(a["admission"], "accepted");
    // An accepted device re-registering without the token stays accepted.
    let again = app.register_key(&key, None).await.expect(StatusCode::OK);
    assert_eq!(again["admission"], "accepted");
    assert_eq!(detail(&app, id).await["admission"], "accepted");
}

#[tokio::test]
async fn register_without_configured_enrollment_is_always_pending() {
    let app = TestApp::with(|s| s.enrollment_token = None);
    for presented in [Some(ENROLL), Some("anything"), None] {
        let key = new_key();
        let v = app
            .register_key(&key, presented)
            .await
            .expect(StatusCode::CREATED);
        assert_eq!(v["admission"], "pending", "presented {presented:?}");
    }
    let pending = list_ids(&app, "?admission=pending").await;
    assert_eq!(pending.len(), 3);
    assert_eq!(list_ids(&app, "?admission=accepted").await.len(), 0);
}

#[tokio::test]
async fn register_rejected_device_is_403() {
    let app = TestApp::new();
    let dev = app.pending_device().await;
    let d = app
        .post(&format!("{}/reject", dev_path(&dev.id)), json!({}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(d["admission"], "rejected");
    for enrollment in [None, Some(ENROLL)] {
        let r = app.register_key(&dev.key, enrollment).await;
        expect_err(&r, StatusCode::FORBIDDEN, "forbidden");
    }
    // Still rejected, still no live token.
    assert_eq!(detail(&app, &dev.id).await["admission"], "rejected");
    let r = app.heartbeat(&dev, None, None).await;
    expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn register_lost_token_returns_same_id() {
    let app = TestApp::new();
    let dev = app.device().await;
    app.put(&config_path(&dev.id), json!({"log_level": "debug"}))
        .await
        .expect(StatusCode::OK);
    app.patch(&dev_path(&dev.id), json!({"tags": ["keep"]}))
        .await
        .expect(StatusCode::OK);
    // The device lost its token: it registers again with the same key (no enrollment).
    let v = app
        .register_key(&dev.key, None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(v["device_id"], dev.id.as_str());
    assert_eq!(v["admission"], "accepted");
    let d = detail(&app, &dev.id).await;
    assert_eq!(d["tags"], json!(["keep"]), "state survives re-registration");
    assert_eq!(config(&app, &dev.id).await["version"], 2);
    assert_eq!(list_ids(&app, "").await, vec![dev.id.clone()]);
}

// ------------------------------------------------------------------------------ pending

#[tokio::test]
async fn pending_device_heartbeats_without_commands_until_accepted() {
    let app = TestApp::new();
    let dev = app.pending_device().await;
    app.bundle("1.0.0").await;
    app.put(&config_path(&dev.id), json!({"polling_interval": 30}))
        .await
        .expect(StatusCode::OK);

    let hb = app.heartbeat(&dev, None, None).await.expect(StatusCode::OK);
    assert_eq!(hb["admission"], "pending");
    assert_eq!(hb["commands"], json!([]));
    assert_eq!(detail(&app, &dev.id).await["status"], "online");

    // A pending device cannot be a deployment target.
    let r = app
        .post(
            "/api/v1/deployments",
            json!({"bundle_version": "1.0.0", "target_device_ids": [dev.id]}),
        )
        .await;
    expect_err(&r, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(
        app.get("/api/v1/deployments").await.expect(StatusCode::OK),
        json!([])
    );

    // Accept: commands flow.
    let d = app
        .post(&format!("{}/accept", dev_path(&dev.id)), json!({}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(d["admission"], "accepted");
    let hb = app.heartbeat(&dev, None, None).await.expect(StatusCode::OK);
    assert_eq!(hb["admission"], "accepted");
    let cmd = configure_cmd(&hb).expect("configure after accept");
    assert_eq!(cmd["config_version"], 2);
    assert_eq!(cmd["polling_interval"], 30);
    let dep = app.deploy("1.0.0", &[&dev]).await;
    let hb = app
        .heartbeat(&dev, None, Some(2))
        .await
        .expect(StatusCode::OK);
    assert_eq!(command_types(&hb), vec!["deploy"]);
    assert_eq!(hb["commands"][0]["deployment_id"], dep["id"]);
}

#[tokio::test]
async fn reject_revokes_the_token() {
    let app = TestApp::new();
    let dev = app.pending_device().await;
    app.heartbeat(&dev, None, None).await.expect(StatusCode::OK);
    app.post(&format!("{}/reject", dev_path(&dev.id)), json!({}))
        .await
        .expect(StatusCode::OK);
    let r = app.heartbeat(&dev, None, None).await;
    expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(
        list_ids(&app, "?admission=rejected").await,
        vec![dev.id.clone()]
    );
    // An accepted device can be rejected too.
    let acc = app.device().await;
    app.post(&format!("{}/reject", dev_path(&acc.id)), json!({}))
        .await
        .expect(StatusCode::OK);
    let r = app.heartbeat(&acc, None, None).await;
    expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn delete_device_revokes_token_and_forgets_it() {
    let app = TestApp::new();
    let dev = app.device().await;
    let keep = app.device().await;
    app.heartbeat(&dev, None, None).await.expect(StatusCode::OK);
    let r = app.delete(&dev_path(&dev.id)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    expect_err(
        &app.get(&dev_path(&dev.id)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let r = app.heartbeat(&dev, None, None).await;
    expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(list_ids(&app, "").await, vec![keep.id.clone()]);
    expect_err(
        &app.delete(&dev_path(&dev.id)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

// --------------------------------------------------------------------------------- tags

#[tokio::test]
async fn tags_are_validated_stored_and_filterable() {
    let app = TestApp::new();
    let a = app.device().await;
    let b = app.device().await;
    let c = app.device().await;

    let d = app
        .patch(
            &dev_path(&a.id),
            json!({"tags": ["site:berlin", "canary", "canary", "v-1.2_x"]}),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(d["device_id"], a.id.as_str());
    assert_eq!(d["tags"], json!(["canary", "site:berlin", "v-1.2_x"]));
    assert_eq!(
        detail(&app, &a.id).await["tags"],
        json!(["canary", "site:berlin", "v-1.2_x"])
    );
    app.patch(&dev_path(&b.id), json!({"tags": ["canary"]}))
        .await
        .expect(StatusCode::OK);

    // Edge cases that are fine: exactly 32 tags, a 64-char tag.
    let many: Vec<String> = (0..32).map(|i| format!("t{i:02}")).collect();
    let d = app
        .patch(&dev_path(&c.id), json!({"tags": many}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(d["tags"].as_array().unwrap().len(), 32);
    let long = "x".repeat(64);
    app.patch(&dev_path(&c.id), json!({"tags": [long]}))
        .await
        .expect(StatusCode::OK);
    app.patch(&dev_path(&c.id), json!({"tags": []}))
        .await
        .expect(StatusCode::OK);

    // Bad ones change nothing.
    let too_many: Vec<String> = (0..33).map(|i| format!("t{i:02}")).collect();
    for body in [
        json!({"tags": ["has space"]}),
        json!({"tags": ["slash/tag"]}),
        json!({"tags": ["ümlaut"]}),
        json!({"tags": [""]}),
        json!({"tags": ["ok", "x".repeat(65)]}),
        json!({"tags": too_many}),
        json!({"tags": "canary"}),
        json!([["canary"]]),
        json!({"tags": [1]}),
        json!({"labels": ["x"]}),
    ] {
        let r = app.patch(&dev_path(&a.id), body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        expect_err(&r, StatusCode::BAD_REQUEST, "bad_request");
        assert_eq!(
            detail(&app, &a.id).await["tags"],
            json!(["canary", "site:berlin", "v-1.2_x"])
        );
    }

    // Filtering.
    let mut both = vec![a.id.clone(), b.id.clone()];
    both.sort();
    assert_eq!(list_ids(&app, "?tag=canary").await, both);
    assert_eq!(list_ids(&app, "?tag=site:berlin").await, vec![a.id.clone()]);
    assert_eq!(list_ids(&app, "?tag=nowhere").await, Vec::<String>::new());
    // Tag plus cursor pagination.
    assert_eq!(
        list_ids(&app, &format!("?tag=canary&limit=1&after={}", both[0])).await,
        vec![both[1].clone()]
    );
    // Replacing tags updates the filter.
    app.patch(&dev_path(&a.id), json!({"tags": ["moved"]}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(list_ids(&app, "?tag=canary").await, vec![b.id.clone()]);
    assert_eq!(list_ids(&app, "?tag=moved").await, vec![a.id.clone()]);
    assert_eq!(
        list_ids(&app, "?tag=site:berlin").await,
        Vec::<String>::new()
    );
}

// ------------------------------------------------------------------------------ listing

#[tokio::test]
async fn list_pagination_walks_every_device_once() {
    let app = TestApp::new();
    let mut all = Vec::new();
    for _ in 0..7 {
        all.push(app.device().await.id);
    }
    all.sort();

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &after {
            Some(a) => format!("?limit=3&after={a}"),
            None => "?limit=3".to_owned(),
        };
        let page = list_ids(&app, &q).await;
        assert!(page.len() <= 3, "page larger than limit: {page:?}");
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        seen.extend(page);
        pages += 1;
        assert!(pages <= 4, "pagination does not end");
    }
    assert_eq!(seen, all, "every device exactly once, in device_id order");
    assert_eq!(pages, 3);
    assert_eq!(list_ids(&app, "").await, all, "default limit covers all");
    assert_eq!(list_ids(&app, "?limit=1000").await, all);
    assert_eq!(list_ids(&app, "?limit=1").await, vec![all[0].clone()]);

    for q in ["?limit=0", "?limit=1001", "?limit=-1", "?limit=abc"] {
        let r = app.get(&format!("/api/v1/devices{q}")).await;
        expect_err(&r, StatusCode::BAD_REQUEST, "bad_request");
    }
}

#[tokio::test]
async fn list_filters_by_status_and_admission() {
    let app = TestApp::new();
    let on = app.device().await;
    let never = app.device().await;
    let pend = app.pending_device().await;
    app.heartbeat(&on, None, None).await.expect(StatusCode::OK);

    assert_eq!(list_ids(&app, "?status=online").await, vec![on.id.clone()]);
    let mut nev = vec![never.id.clone(), pend.id.clone()];
    nev.sort();
    assert_eq!(list_ids(&app, "?status=never").await, nev);
    assert_eq!(
        list_ids(&app, "?status=offline").await,
        Vec::<String>::new()
    );
    assert_eq!(
        list_ids(&app, "?admission=pending").await,
        vec![pend.id.clone()]
    );
    let mut acc = vec![on.id.clone(), never.id.clone()];
    acc.sort();
    assert_eq!(list_ids(&app, "?admission=accepted").await, acc);
    assert_eq!(
        list_ids(&app, "?admission=accepted&status=never").await,
        vec![never.id.clone()]
    );
    assert_eq!(
        list_ids(&app, "?admission=rejected").await,
        Vec::<String>::new()
    );

    for q in [
        "?status=asleep",
        "?status=",
        "?admission=maybe",
        "?status=ONLINE",
    ] {
        let r = app.get(&format!("/api/v1/devices{q}")).await;
        expect_err(&r, StatusCode::BAD_REQUEST, "bad_request");
    }
}

// -------------------------------------------------------------------- heartbeat validation

#[tokio::test]
async fn heartbeat_bad_bodies_are_400_and_change_nothing() {
    let app = TestApp::new();
    let dev = app.device().await;
    app.heartbeat(&dev, Some("1.0.0"), Some(1))
        .await
        .expect(StatusCode::OK);
    let before = detail(&app, &dev.id).await;
    let count = history(&app, &dev.id, "").await.len();

    let bad_json = vec![
        hb_body(&"s".repeat(33)),
        json!({"agent_version": "1", "cpu_pct": -1.0, "memory_mb": 1.0, "status": "x"}),
        json!({"agent_version": "1", "cpu_pct": 1.0, "memory_mb": -0.5, "status": "x"}),
        json!({"cpu_pct": 1.0, "memory_mb": 1.0, "status": "x"}),
        json!({"agent_version": "1", "memory_mb": 1.0, "status": "x"}),
        json!({"agent_version": "1", "cpu_pct": 1.0, "status": "x"}),
        json!({"agent_version": "1", "cpu_pct": 1.0, "memory_mb": 1.0}),
        json!({"agent_version": "1", "cpu_pct": "12", "memory_mb": 1.0, "status": "x"}),
        json!({"agent_version": "1", "cpu_pct": 1.0, "memory_mb": 1.0, "status": 5}),
        json!({"agent_version": "1", "cpu_pct": 1.0, "memory_mb": 1.0, "status": "x",
               "config_version": -1}),
        json!({"agent_version": "1", "cpu_pct": 1.0, "memory_mb": 1.0, "status": "x",
               "queued_reports": -3}),
        json!({"agent_version": "1", "cpu_pct": 1.0, "memory_mb": 1.0, "status": "x",
               "current_bundle_version": "../../etc"}),
        json!({"agent_version": "a".repeat(65), "cpu_pct": 1.0, "memory_mb": 1.0,
               "status": "x"}),
        json!([]),
        // A complete heartbeat, but positional: the body must be an object.
        json!(["0.3.1", 12.5, 812.0, "idle", null, null, 0]),
        json!(null),
        json!("heartbeat"),
    ];
    let mut cases: Vec<(Option<&str>, Vec<u8>)> = bad_json
        .into_iter()
        .map(|v| (Some("application/json"), serde_json::to_vec(&v).unwrap()))
        .collect();
    let good = serde_json::to_vec(&hb_body("idle")).unwrap();
    cases.extend([
        (Some("text/plain"), good.clone()),
        (None, good.clone()),
        (Some("application/x-www-form-urlencoded"), good.clone()),
        (Some("application/json"), b"{not json".to_vec()),
        (Some("application/json"), Vec::new()),
        (Some("application/json"), b"\xff\xfe\x00garbage".to_vec()),
        (
            Some("application/json"),
            br#"{"agent_version":"1","cpu_pct":1e999,"memory_mb":1,"status":"x"}"#.to_vec(),
        ),
    ]);
    for (ct, body) in cases {
        let r = raw(
            &app,
            Method::POST,
            &hb_path(&dev.id),
            Some(&dev.token),
            ct,
            body.clone(),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{ct:?} {}: {}",
            String::from_utf8_lossy(&body),
            r.text()
        );
        expect_err(&r, StatusCode::BAD_REQUEST, "bad_request");
    }
    assert_eq!(
        detail(&app, &dev.id).await,
        before,
        "device state unchanged"
    );
    assert_eq!(history(&app, &dev.id, "").await.len(), count);

    // The edges that are allowed: 32 characters (not bytes) of status, zeros.
    let r = beat(
        &app,
        &dev,
        json!({"agent_version": "1", "cpu_pct": 0.0, "memory_mb": 0, "status": "é".repeat(32)}),
    )
    .await;
    r.expect(StatusCode::OK);
    assert_eq!(detail(&app, &dev.id).await["agent_status"], "é".repeat(32));
}

// --------------------------------------------------------------------- heartbeat history

#[tokio::test]
async fn heartbeat_history_newest_first_with_limit() {
    let app = TestApp::new();
    let dev = app.device().await;
    assert_eq!(history(&app, &dev.id, "").await, Vec::<Value>::new());
    for i in 0..4 {
        let mut body = hb_body(&format!("s{i}"));
        body["cpu_pct"] = json!(f64::from(i));
        body["current_bundle_version"] = json!(format!("1.0.{i}"));
        beat(&app, &dev, body).await.expect(StatusCode::OK);
    }
    let all = history(&app, &dev.id, "").await;
    let statuses: Vec<&str> = all.iter().map(|h| h["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["s3", "s2", "s1", "s0"]);
    let newest = &all[0];
    assert_eq!(newest["agent_version"], "0.3.1");
    assert_eq!(newest["cpu_pct"], 3.0);
    assert_eq!(newest["memory_mb"], 812.0);
    assert_eq!(newest["current_bundle_version"], "1.0.3");
    let times: Vec<DateTime<Utc>> = all.iter().map(|h| ts(&h["timestamp"])).collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );

    let two = history(&app, &dev.id, "?limit=2").await;
    let statuses: Vec<&str> = two.iter().map(|h| h["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["s3", "s2"]);
    for q in ["?limit=0", "?limit=1001", "?limit=x"] {
        let r = app
            .get(&format!("/api/v1/devices/{}/heartbeats{q}", dev.id))
            .await;
        expect_err(&r, StatusCode::BAD_REQUEST, "bad_request");
    }
}

#[tokio::test]
async fn heartbeat_retention_prunes_oldest() {
    let app = TestApp::with(|s| s.heartbeat_retention = 5);
    let dev = app.device().await;
    let other = app.device().await;
    for i in 0..12 {
        beat(&app, &dev, hb_body(&format!("s{i}")))
            .await
            .expect(StatusCode::OK);
    }
    beat(&app, &other, hb_body("other"))
        .await
        .expect(StatusCode::OK);
    let kept = history(&app, &dev.id, "?limit=1000").await;
    let statuses: Vec<&str> = kept.iter().map(|h| h["status"].as_str().unwrap()).collect();
    assert!(statuses.len() <= 5, "kept {statuses:?}");
    assert_eq!(
        statuses,
        ["s11", "s10", "s9", "s8", "s7"],
        "the newest are kept"
    );
    // Pruning one device never touches another's.
    assert_eq!(history(&app, &other.id, "").await.len(), 1);
    // Storage is bounded too, not just the view.
    assert_eq!(
        app.state
            .store
            .heartbeats(&dev.id, usize::MAX)
            .await
            .unwrap()
            .len(),
        5
    );
}

// ------------------------------------------------------------------- config validation

#[tokio::test]
async fn config_out_of_range_is_400_and_changes_nothing() {
    let app = TestApp::new();
    let dev = app.device().await;
    app.put(&config_path(&dev.id), json!({"polling_interval": 90}))
        .await
        .expect(StatusCode::OK);
    let before = config(&app, &dev.id).await;
    assert_eq!(before["version"], 2);

    let big = "x".repeat(17 * 1024);
    for body in [
        json!({"polling_interval": 4}),
        json!({"polling_interval": 86401}),
        json!({"polling_interval": 0}),
        json!({"polling_interval": -5}),
        json!({"polling_interval": 60.5}),
        json!({"polling_interval": "60"}),
        json!({"heartbeat_timeout": 0}),
        json!({"heartbeat_timeout": 301}),
        json!({"deploy_timeout": 0}),
        json!({"deploy_timeout": 86401}),
        json!({"log_level": "loud"}),
        json!({"log_level": ""}),
        json!({"log_level": 3}),
        json!({"metadata": []}),
        json!({"metadata": "text"}),
        json!({"metadata": 5}),
        json!({"metadata": {"blob": big}}),
        // One bad field spoils the whole update.
        json!({"polling_interval": 120, "log_level": "loud"}),
        json!({"log_level": "debug", "heartbeat_timeout": 1000}),
        // Not an object (serde would read an array as a positional struct).
        json!([]),
        json!([120]),
    ] {
        let r = app.put(&config_path(&dev.id), body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        expect_err(&r, StatusCode::BAD_REQUEST, "bad_request");
        assert_eq!(config(&app, &dev.id).await, before, "after {body}");
    }
    for (ct, body) in [
        (Some("text/plain"), br#"{"polling_interval": 10}"#.to_vec()),
        (None, br#"{"polling_interval": 10}"#.to_vec()),
        (Some("application/json"), b"{".to_vec()),
    ] {
        let r = raw(
            &app,
            Method::PUT,
            &config_path(&dev.id),
            Some(ADMIN),
            ct,
            body,
        )
        .await;
        expect_err(&r, StatusCode::BAD_REQUEST, "bad_request");
    }
    assert_eq!(config(&app, &dev.id).await, before);
    // A heartbeat is not told about a version that never happened.
    let hb = app
        .heartbeat(&dev, None, Some(2))
        .await
        .expect(StatusCode::OK);
    assert_eq!(hb["commands"], json!([]));

    // Metadata just under the cap is fine.
    let c = app
        .put(
            &config_path(&dev.id),
            json!({"metadata": {"blob": "x".repeat(15 * 1024)}}),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(c["version"], 3);
}

#[tokio::test]
async fn config_read_by_device_itself_only() {
    let app = TestApp::new();
    let a = app.device().await;
    let b = app.device().await;
    app.put(&config_path(&a.id), json!({"deploy_timeout": 600}))
        .await
        .expect(StatusCode::OK);
    let own = app
        .call(Method::GET, &config_path(&a.id), Some(&a.token), None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(own["deploy_timeout"], 600);
    assert_eq!(own["version"], 2);
    let r = app
        .call(Method::GET, &config_path(&a.id), Some(&b.token), None)
        .await;
    expect_err(&r, StatusCode::FORBIDDEN, "forbidden");
    let r = app
        .call(
            Method::PUT,
            &config_path(&a.id),
            Some(&a.token),
            Some(json!({"deploy_timeout": 1})),
        )
        .await;
    expect_err(&r, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(config(&app, &a.id).await["deploy_timeout"], 600);
}

// -------------------------------------------------------------------------------- tokens

#[tokio::test]
async fn operator_tokens_lifecycle() {
    let app = TestApp::new();
    let t = app
        .post("/api/v1/tokens", json!({"name": "ci-bot"}))
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(t["name"], "ci-bot");
    let token = t["token"].as_str().unwrap().to_owned();
    assert!(!token.is_empty());
    app.call(Method::GET, "/api/v1/devices", Some(&token), None)
        .await
        .expect(StatusCode::OK);
    // The new token may mint more.
    let t2 = app
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(&token),
            Some(json!({"name": "second"})),
        )
        .await
        .expect(StatusCode::CREATED);
    let token2 = t2["token"].as_str().unwrap().to_owned();
    assert_ne!(token, token2);

    let r = app.get("/api/v1/tokens").await;
    let list = r.expect(StatusCode::OK);
    let mut names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["admin", "ci-bot", "second"]);
    for t in list.as_array().unwrap() {
        ts(&t["created_at"]);
        assert!(t.get("token").is_none(), "token leaked: {t}");
    }
    let text = r.text();
    for secret in [token.as_str(), token2.as_str(), ADMIN] {
        assert!(!text.contains(secret), "GET /tokens shows a token: {text}");
    }

    // Duplicates and bad names.
    let r = app.post("/api/v1/tokens", json!({"name": "ci-bot"})).await;
    expect_err(&r, StatusCode::CONFLICT, "conflict");
    let r = app.post("/api/v1/tokens", json!({"name": "admin"})).await;
    expect_err(&r, StatusCode::CONFLICT, "conflict");
    for body in [
        json!({"name": ""}),
        json!({"name": "has space"}),
        json!({"name": "x".repeat(65)}),
        json!({"name": 7}),
        json!({}),
        json!(["positional"]),
    ] {
        let r = app.post("/api/v1/tokens", body).await;
        expect_err(&r, StatusCode::BAD_REQUEST, "bad_request");
    }
    // The conflicting attempt did not replace the original token.
    app.call(Method::GET, "/api/v1/devices", Some(&token), None)
        .await
        .expect(StatusCode::OK);

    // Delete.
    let r = app.delete("/api/v1/tokens/ci-bot").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert!(r.body.is_empty());
    let r = app
        .call(Method::GET, "/api/v1/devices", Some(&token), None)
        .await;
    expect_err(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    let r = app.delete("/api/v1/tokens/ci-bot").await;
    expect_err(&r, StatusCode::NOT_FOUND, "not_found");
    // The other token is unaffected; the name can be reused.
    app.call(Method::GET, "/api/v1/devices", Some(&token2), None)
        .await
        .expect(StatusCode::OK);
    app.post("/api/v1/tokens", json!({"name": "ci-bot"}))
        .await
        .expect(StatusCode::CREATED);
}

// -------------------------------------------------------------------------------- limits

#[tokio::test]
async fn json_body_over_1mib_is_413() {
    let app = TestApp::new();
    let dev = app.device().await;
    let pad = "x".repeat(1024 * 1024 + 100);

    let mut body = hb_body("idle");
    body["pad"] = json!(pad);
    let r = beat(&app, &dev, body).await;
    expect_err(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    let r = app
        .put(&config_path(&dev.id), json!({"metadata": {"pad": pad}}))
        .await;
    expect_err(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    let r = app.patch(&dev_path(&dev.id), json!({"tags": [pad]})).await;
    expect_err(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    let key = new_key();
    let mut reg: Value = serde_json::from_slice(&registration_body(&key, Utc::now())).unwrap();
    reg["pad"] = json!(pad);
    let bytes = serde_json::to_vec(&reg).unwrap();
    let r = app
        .register_raw(&bytes, Some(&key.sign(&bytes)), Some(ENROLL))
        .await;
    expect_err(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    // Nothing changed.
    assert!(detail(&app, &dev.id).await["last_heartbeat"].is_null());
    assert_eq!(config(&app, &dev.id).await["version"], 1);
    assert_eq!(list_ids(&app, "").await, vec![dev.id.clone()]);
}

#[tokio::test]
async fn unknown_route_is_404_json_and_wrong_method_is_405() {
    let app = TestApp::new();
    for path in [
        "/api/v1/nope",
        "/nope",
        "/api/v2/devices",
        "/api/v1/devices/x/y/z",
    ] {
        let r = app.get(path).await;
        expect_err(&r, StatusCode::NOT_FOUND, "not_found");
        assert!(
            r.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
    }
    let cases = [
        (Method::DELETE, "/api/v1/devices"),
        (Method::PUT, "/api/v1/tokens"),
        (Method::POST, "/healthz"),
        (Method::DELETE, "/metrics"),
        (Method::GET, "/api/v1/devices/abc/heartbeat"),
        (Method::POST, "/api/v1/devices/abc/config"),
    ];
    for (method, path) in cases {
        let r = app.call(method.clone(), path, Some(ADMIN), None).await;
        assert_eq!(
            r.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {}",
            r.text()
        );
        expect_err(&r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    }
}

// ---------------------------------------------------------------------------------- SSE

#[tokio::test]
async fn events_stream_heartbeats_to_operators() {
    let app = TestApp::new();
    let dev = app.device().await;

    let r = app
        .call(Method::GET, "/api/v1/events", Some(&dev.token), None)
        .await;
    expect_err(&r, StatusCode::FORBIDDEN, "forbidden");

    let req = Request::builder()
        .uri("/api/v1/events")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/event-stream"), "content-type {ct}");

    // Subscribed once the response exists; now make something happen.
    app.heartbeat(&dev, None, None).await.expect(StatusCode::OK);

    let mut body = resp.into_body();
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let Some(frame) = body.frame().await else {
                return false;
            };
            if let Ok(data) = frame.unwrap().into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
            }
            // Events are separated by a blank line; look at whole ones.
            for event in seen.split("\n\n") {
                if event.lines().any(|l| l == "event: heartbeat")
                    && event
                        .lines()
                        .any(|l| l.starts_with("data:") && l.contains(&dev.id))
                {
                    return true;
                }
            }
        }
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "no heartbeat event for {}; stream so far: {seen}",
        dev.id
    );
    // The data line is JSON naming the device.
    let event = seen
        .split("\n\n")
        .find(|e| e.lines().any(|l| l == "event: heartbeat"))
        .unwrap();
    let data = event
        .lines()
        .find_map(|l| l.strip_prefix("data:"))
        .unwrap()
        .trim();
    let v: Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["device_id"], dev.id.as_str());
    assert_eq!(v["status"], "idle");
}

// --------------------------------------------------------------------------- robustness

#[tokio::test]
async fn garbage_never_yields_5xx() {
    let app = TestApp::new();
    let dev = app.device().await;
    let id = dev.id.clone();

    let deep_array = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(3000), "}".repeat(3000));
    let mut bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"null".to_vec(),
        b"true".to_vec(),
        b"[]".to_vec(),
        b"{}".to_vec(),
        b"\"str\"".to_vec(),
        b"1e99999".to_vec(),
        b"-0".to_vec(),
        b"99999999999999999999999999999999".to_vec(),
        deep_array.into_bytes(),
        deep_object.into_bytes(),
        "{\"\u{0}\": \"\u{1F600}\u{202E}\"}".as_bytes().to_vec(),
        b"{\"a\":\"\\ud800\"}".to_vec(),
        b"\xef\xbb\xbf{}".to_vec(),
        br#"{"tags": null, "name": null, "polling_interval": null}"#.to_vec(),
        br#"{"tags": [null], "name": [], "polling_interval": 18446744073709551616}"#.to_vec(),
        br#"{"polling_interval": 1e300, "metadata": {"a": NaN}}"#.to_vec(),
        br#"{"agent_version": "1", "cpu_pct": 1e308, "memory_mb": 1.7976931348623157e308, "status": "x", "config_version": 18446744073709551615, "queued_reports": 18446744073709551615}"#.to_vec(),
        br#"{"agent_version": "1", "cpu_pct": 1, "memory_mb": 1, "status": "x", "config_version": 18446744073709551616}"#.to_vec(),
        br#"{"public_key": "", "device_type": "", "timestamp": "+275760-09-13T00:00:00Z"}"#.to_vec(),
        br#"{"public_key": "x", "device_type": "y", "timestamp": "9999-12-31T23:59:59Z", "hardware_metadata": "z"}"#.to_vec(),
        br#"{"name": "\u0000"}"#.to_vec(),
        br#"{"tags": ["\u0000", "a\u0000b"]}"#.to_vec(),
        "{\"tags\": [\"日本\"], \"name\": \"ünïcödé\"}".as_bytes().to_vec(),
        b"{\"a\":1,\"a\":2}".to_vec(),
        b"{\"a\":1,}".to_vec(),
        b"\x00\x00\x00".to_vec(),
    ];
    for (i, len) in [1_usize, 7, 64, 513, 4096, 70_000].into_iter().enumerate() {
        bodies.push(noise(len, i as u64 + 1));
    }

    let targets: Vec<(Method, String, Option<&str>)> = vec![
        (Method::POST, "/api/v1/devices/register".into(), None),
        (Method::POST, hb_path(&id), Some(dev.token.as_str())),
        (Method::PUT, config_path(&id), Some(ADMIN)),
        (Method::PATCH, dev_path(&id), Some(ADMIN)),
        (Method::POST, "/api/v1/tokens".into(), Some(ADMIN)),
        (Method::POST, "/api/v1/deployments".into(), Some(ADMIN)),
    ];
    let mut checked = 0;
    for (method, path, token) in &targets {
        for (j, body) in bodies.iter().enumerate() {
            let ct = match j % 3 {
                0 | 1 => Some("application/json"),
                _ => Some("text/plain"),
            };
            let r = raw(&app, method.clone(), path, *token, ct, body.clone()).await;
            assert_sane(&r, &format!("{method} {path} body #{j}"));
            checked += 1;
        }
    }

    // Odd paths and queries.
    let long = "a".repeat(5000);
    let paths = [
        "/api/v1/devices/%FF/heartbeat".to_owned(),
        "/api/v1/devices/%00".to_owned(),
        "/api/v1/devices/..%2F..%2Fetc".to_owned(),
        format!("/api/v1/devices/{long}"),
        format!("/api/v1/devices/{long}/config"),
        "/api/v1/devices/%E2%80%AE".to_owned(),
        "/api/v1/devices?limit=-1".to_owned(),
        "/api/v1/devices?limit=99999999999999999999999".to_owned(),
        "/api/v1/devices?after=%FF&tag=%00".to_owned(),
        "/api/v1/devices?after=&tag=".to_owned(),
        "/api/v1/devices?status=online&status=never".to_owned(),
        "/api/v1/devices?limit=1&limit=2".to_owned(),
        format!("/api/v1/devices/{id}/heartbeats?limit=1e3"),
        format!("/api/v1/devices?tag={long}"),
        "/api/v1/tokens/%2F".to_owned(),
        "/api/v1/tokens/".to_owned(),
        "/api/v1//devices".to_owned(),
        "/api/v1/devices/register/extra".to_owned(),
        "/%2e%2e/%2e%2e/".to_owned(),
    ];
    for path in &paths {
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ] {
            for token in [Some(ADMIN), Some(dev.token.as_str())] {
                let r = raw(
                    &app,
                    method.clone(),
                    path,
                    token,
                    Some("application/json"),
                    b"{}".to_vec(),
                )
                .await;
                assert_sane(&r, &format!("{method} {path}"));
                checked += 1;
            }
        }
    }
    assert!(checked >= 200, "only {checked} requests");

    // Odd headers on registration.
    let key = new_key();
    let odd: [&[u8]; 5] = [b"", b"   ", b"====", b"\xf0\x9f\x98\x80", b"\xff\xfe"];
    for sig in odd {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/devices/register")
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, HeaderValue::from_bytes(sig).unwrap())
            .header(
                ENROLLMENT_HEADER,
                HeaderValue::from_bytes(b"\xffx").unwrap(),
            )
            .body(Body::from(registration_body(&key, Utc::now())))
            .unwrap();
        assert_sane(&app.send(req).await, &format!("signature {sig:?}"));
    }

    // The server is unharmed.
    let h = app
        .call(Method::GET, "/healthz", None, None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(h, json!({"status": "ok"}));
    app.heartbeat(&dev, None, None).await.expect(StatusCode::OK);
    let d = detail(&app, &dev.id).await;
    assert_eq!(d["admission"], "accepted");
}

/// No 5xx, and every error has the uniform body with a known code.
#[track_caller]
fn assert_sane(r: &Resp, what: &str) {
    assert!(
        !r.status.is_server_error(),
        "{what}: {} {}",
        r.status,
        r.text()
    );
    if r.status.is_client_error() {
        let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
            panic!(
                "{what}: {} error body is not JSON ({e}): {}",
                r.status,
                r.text()
            )
        });
        let code = v["error"].as_str().unwrap_or_default();
        assert!(
            ERROR_CODES.contains(&code) && v["message"].is_string(),
            "{what}: not the error shape: {v}"
        );
        assert_eq!(
            code,
            expected_code(r.status),
            "{what}: code does not match status {}",
            r.status
        );
    }
}

fn expected_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        409 => "conflict",
        413 => "payload_too_large",
        416 => "range_not_satisfiable",
        _ => "bad_request",
    }
}

// ----------------------------------------------------------------------- health/metrics

#[tokio::test]
async fn healthz_and_metrics() {
    let app = TestApp::new();
    let r = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(r.expect(StatusCode::OK), json!({"status": "ok"}));

    let dev = app.device().await;
    app.heartbeat(&dev, None, None).await.expect(StatusCode::OK);
    app.heartbeat(&dev, None, None).await.expect(StatusCode::OK);
    let m = app.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(m.status, StatusCode::OK, "{}", m.text());
    let ct = m.headers["content-type"].to_str().unwrap();
    assert!(ct.starts_with("text/plain"), "content-type {ct}");
    let text = m.text();
    let heartbeats: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("kernex_heartbeats_total "))
        .unwrap_or_else(|| panic!("no kernex_heartbeats_total in:\n{text}"))
        .trim()
        .parse()
        .unwrap();
    assert!(heartbeats >= 2.0, "heartbeats_total = {heartbeats}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("kernex_http_requests_total{") && l.contains("heartbeat")),
        "no per-route request counter for the heartbeat route:\n{text}"
    );
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("kernex_"), "unprefixed metric: {line}");
    }
}
