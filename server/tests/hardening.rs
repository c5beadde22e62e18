//! SPEC §1.9 hardening, through the router: the bearer scheme, the metrics token,
//! `--require-enrollment`, `--max-pending`, burned registration signatures, the
//! per-request budget, hostile archives and file modes. The connection-level rules
//! (header timeout, stalled bodies, the connection cap, peak memory) need a real socket
//! and are in `tests/tests/hardening.rs`.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use kernex_common::bundle::testing::{EntryType, extension_header_bundle};
use serde_json::json;
use support::*;

async fn get_with_auth(app: &TestApp, path: &str, auth: Option<&str>) -> Resp {
    let mut b = Request::builder().uri(path);
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    app.send(b.body(Body::empty()).unwrap()).await
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = TestApp::new();
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        get_with_auth(&app, "/api/v1/devices", Some(&format!("{scheme} {ADMIN}")))
            .await
            .expect(StatusCode::OK);
    }
    let dev = app.device().await;
    let r = app
        .send(
            Request::post(format!("/api/v1/devices/{}/heartbeat", dev.id))
                .header("authorization", format!("bearer {}", dev.token))
                .header("content-type", "application/json")
                .body(Body::from(
                    json!({"agent_version": "1", "cpu_pct": 1.0, "memory_mb": 1.0,
                           "status": "idle", "current_bundle_version": null,
                           "config_version": null, "queued_reports": 0})
                    .to_string(),
                ))
                .unwrap(),
        )
        .await;
    r.expect(StatusCode::OK);
    for bad in [
        format!("Basic {ADMIN}"),
        format!("Bearer{ADMIN}"),
        "bearer ".into(),
    ] {
        let r = get_with_auth(&app, "/api/v1/devices", Some(&bad)).await;
        r.expect(StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn metrics_are_open_without_a_metrics_token() {
    let app = TestApp::new();
    let r = get_with_auth(&app, "/metrics", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("kernex_"));
}

#[tokio::test]
async fn metrics_token_protects_metrics() {
    let app = TestApp::with(|s| s.metrics_token = Some("scrape-secret".into()));
    let r = get_with_auth(&app, "/metrics", None).await;
    r.expect(StatusCode::UNAUTHORIZED);
    let r = get_with_auth(&app, "/metrics", Some("Bearer wrong")).await;
    r.expect(StatusCode::UNAUTHORIZED);
    // An operator token is not the metrics token.
    let r = get_with_auth(&app, "/metrics", Some(&format!("Bearer {ADMIN}"))).await;
    r.expect(StatusCode::UNAUTHORIZED);
    let r = get_with_auth(&app, "/metrics", Some("bearer scrape-secret")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("kernex_"));
}

#[tokio::test]
async fn require_enrollment_refuses_registrations_without_the_token() {
    let app = TestApp::with(|s| s.require_enrollment = true);
    let key = new_key();
    let r = app.register_key(&key, None).await;
    r.expect(StatusCode::UNAUTHORIZED);
    assert!(r.text().contains("enrollment token"), "{}", r.text());
    let pending = app.get("/api/v1/devices?admission=pending").await;
    assert_eq!(pending.expect(StatusCode::OK), json!([]));
    let all = app.get("/api/v1/devices").await;
    assert_eq!(all.expect(StatusCode::OK), json!([]), "no device at all");
    // With the token: accepted, as always.
    let v = app
        .register_key(&key, Some(ENROLL))
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(v["admission"], "accepted");
}

#[tokio::test]
async fn require_enrollment_without_a_token_configured_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = kernex_server::ServerSettings::for_data_dir(dir.path());
    settings.require_enrollment = true;
    let err = kernex_server::open(&settings).unwrap_err();
    assert!(err.to_string().contains("enrollment token"), "{err}");
}

#[tokio::test]
async fn max_pending_caps_pending_devices() {
    let app = TestApp::with(|s| s.max_pending = 2);
    let first = app.pending_device().await;
    app.pending_device().await;
    let r = app.register_key(&new_key(), None).await;
    r.expect(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.code(), "unavailable");
    assert!(r.text().contains("max-pending"), "{}", r.text());
    let pending = app.get("/api/v1/devices?admission=pending").await;
    assert_eq!(pending.expect(StatusCode::OK).as_array().unwrap().len(), 2);

    // Still open: the enrollment token, and a pending device registering again.
    app.device().await;
    let again = app
        .register_key(&first.key, None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(again["device_id"], first.id.as_str());
    // Accepting one frees a place.
    app.post(&format!("/api/v1/devices/{}/accept", first.id), json!({}))
        .await
        .expect(StatusCode::OK);
    app.pending_device().await;
}

/// The regression from the security review: three wrong guesses then the right token
/// on one signed body gave a 201. Now the body is burned by the first guess.
#[tokio::test]
async fn one_signed_body_gives_one_enrollment_guess() {
    let app = TestApp::new();
    let key = new_key();
    let body = registration_body(&key, chrono::Utc::now());
    let sig = key.sign(&body);

    let r = app.register_raw(&body, Some(&sig), Some("guess-1")).await;
    r.expect(StatusCode::UNAUTHORIZED);
    assert!(r.text().contains("wrong enrollment token"), "{}", r.text());
    for guess in ["guess-2", "guess-3", ENROLL] {
        let r = app.register_raw(&body, Some(&sig), Some(guess)).await;
        r.expect(StatusCode::UNAUTHORIZED);
        // The answer says nothing about the guess.
        assert!(r.text().contains("already used"), "{}", r.text());
    }
    let all = app.get("/api/v1/devices").await;
    assert_eq!(all.expect(StatusCode::OK), json!([]));

    // Concurrent guesses on one fresh body: at most one of them is judged.
    let body = registration_body(&key, chrono::Utc::now());
    let sig = key.sign(&body);
    let guesses: Vec<String> = (0..8).map(|i| format!("wrong-{i}")).collect();
    let answers = futures_util::future::join_all(
        guesses
            .iter()
            .map(|g| app.register_raw(&body, Some(&sig), Some(g))),
    )
    .await;
    let judged = answers
        .iter()
        .filter(|r| r.text().contains("wrong enrollment token"))
        .count();
    assert_eq!(judged, 1, "{answers:?}");

    // A fresh body still works.
    app.register_key(&key, Some(ENROLL))
        .await
        .expect(StatusCode::CREATED);
}

#[tokio::test]
async fn every_refusal_after_the_signature_burns_the_body() {
    // Refused for want of the token (--require-enrollment).
    let app = TestApp::with(|s| s.require_enrollment = true);
    let key = new_key();
    let body = registration_body(&key, chrono::Utc::now());
    let sig = key.sign(&body);
    app.register_raw(&body, Some(&sig), None)
        .await
        .expect(StatusCode::UNAUTHORIZED);
    let r = app.register_raw(&body, Some(&sig), Some(ENROLL)).await;
    r.expect(StatusCode::UNAUTHORIZED);
    assert!(r.text().contains("already used"), "{}", r.text());

    // Refused by the pending cap.
    let app = TestApp::with(|s| s.max_pending = 0);
    let body = registration_body(&key, chrono::Utc::now());
    let sig = key.sign(&body);
    app.register_raw(&body, Some(&sig), None)
        .await
        .expect(StatusCode::SERVICE_UNAVAILABLE);
    let r = app.register_raw(&body, Some(&sig), Some(ENROLL)).await;
    r.expect(StatusCode::UNAUTHORIZED);

    // Refused because the key was rejected.
    let dev = app.device().await;
    app.post(&format!("/api/v1/devices/{}/reject", dev.id), json!({}))
        .await
        .expect(StatusCode::OK);
    let body = registration_body(&dev.key, chrono::Utc::now());
    let sig = dev.key.sign(&body);
    app.register_raw(&body, Some(&sig), Some(ENROLL))
        .await
        .expect(StatusCode::FORBIDDEN);
    let r = app.register_raw(&body, Some(&sig), Some(ENROLL)).await;
    r.expect(StatusCode::UNAUTHORIZED);
    assert!(r.text().contains("already used"), "{}", r.text());
}

/// A body that never arrives: the request is answered 503 at its budget, not left
/// hanging. Bundle uploads are exempt (the minimum transfer rate bounds them).
#[tokio::test]
async fn an_ordinary_request_past_its_budget_gets_503() {
    let app = TestApp::with(|s| s.connections.request_timeout = Duration::from_millis(300));
    let never = || {
        Body::from_stream(futures_util::stream::pending::<
            Result<axum::body::Bytes, std::io::Error>,
        >())
    };
    let req = Request::post("/api/v1/devices/register")
        .header("content-type", "application/json")
        .body(never())
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), app.send(req))
        .await
        .expect("answered at the budget");
    r.expect(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.code(), "unavailable");
    assert!(r.text().contains("budget"), "{}", r.text());

    let req = Request::post("/api/v1/bundles")
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "multipart/form-data; boundary=x")
        .body(never())
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), app.send(req))
            .await
            .is_err(),
        "an upload is not cut off by the request budget"
    );
}

#[tokio::test]
async fn archives_with_oversized_extension_headers_are_refused() {
    let app = TestApp::new();
    for kind in [
        EntryType::XHeader,
        EntryType::XGlobalHeader,
        EntryType::GNULongName,
        EntryType::GNULongLink,
    ] {
        let archive = extension_header_bundle(kind, 100 * 1024).unwrap();
        let r = app.upload(&archive, None).await;
        r.expect(StatusCode::BAD_REQUEST);
        assert!(
            r.text().contains("extension header"),
            "{kind:?}: {}",
            r.text()
        );
    }
    // Under the cap it is an ordinary bundle.
    let archive = extension_header_bundle(EntryType::XHeader, 1024).unwrap();
    app.upload(&archive, None).await.expect(StatusCode::CREATED);
}

#[cfg(unix)]
#[tokio::test]
async fn data_dir_is_0700_and_bundle_files_0600() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("fresh/data");
    let mut settings = kernex_server::ServerSettings::for_data_dir(&data);
    settings.admin_token = Some(ADMIN.into());
    let state = kernex_server::open(&settings).unwrap();
    assert_eq!(mode(&data), 0o700, "data dir");
    assert_eq!(mode(&data.join("bundles")), 0o700, "bundle dir");

    let router = kernex_server::router(state);
    let (content_type, body) = multipart(&bundle_bytes("app", "1.0.0"), None);
    let resp = tower::ServiceExt::oneshot(
        router,
        Request::builder()
            .method(Method::POST)
            .uri("/api/v1/bundles")
            .header("authorization", format!("Bearer {ADMIN}"))
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let files: Vec<_> = std::fs::read_dir(data.join("bundles"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(files.len(), 1);
    assert_eq!(mode(&files[0]), 0o600, "bundle file");
}
