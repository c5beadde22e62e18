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
    use kernex_common::api::events::ServerEvent;
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
        app.state
            .events
            .emit(ServerEvent::device_deleted(i.to_string()));
    }
    app.state.events.emit(ServerEvent::device_deleted("last"));

    let mut body = resp.into_body();
    let mut seen = String::new();
    let done = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !seen.contains(r#""device_id":"last""#) {
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

/// Regression: a target deleted or rejected between the handler's checks and the write
/// must not become a target nobody will ever report for (the store re-checks inside the
/// transaction).
#[tokio::test]
async fn deployments_never_target_a_device_rejected_or_deleted_meanwhile() {
    use kernex_common::api::{Admission, DeploymentKind};
    let app = TestApp::new();
    let a = app.device().await;
    let b = app.device().await;
    let info = app.bundle("1.0.0").await;
    let bundle = app
        .state
        .store
        .bundle(info["id"].as_str().unwrap())
        .await
        .unwrap();
    let now = chrono::Utc::now();
    app.state
        .store
        .set_admission(&a.id, Admission::Rejected, now)
        .await
        .unwrap();
    app.state.store.delete_device(&b.id, now).await.unwrap();
    for id in [&a.id, &b.id] {
        let err = app
            .state
            .store
            .create_deployment(
                DeploymentKind::Deploy,
                &bundle,
                std::slice::from_ref(id),
                None,
                now,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, kernex_server::store::StoreError::Invalid(_)),
            "{err}"
        );
    }
    let list = app.get("/api/v1/deployments").await.expect(StatusCode::OK);
    assert_eq!(list, json!([]), "nothing was written");
    // And the bundle is not held by a phantom deployment.
    app.delete(&format!("/api/v1/bundles/{}", info["id"].as_str().unwrap()))
        .await
        .expect(StatusCode::NO_CONTENT);
}

/// Regression: concurrent scrapes each report the whole fleet (a render clears and
/// refills the gauges, so renders must not interleave).
#[tokio::test]
async fn concurrent_metrics_scrapes_agree() {
    let app = std::sync::Arc::new(TestApp::new());
    for _ in 0..5 {
        app.device().await;
    }
    let scrapes = (0..16).map(|_| {
        let app = app.clone();
        tokio::spawn(async move {
            app.call(axum::http::Method::GET, "/metrics", None, None)
                .await
        })
    });
    for scrape in futures_util::future::join_all(scrapes).await {
        let text = scrape.unwrap().text();
        let total: f64 = text
            .lines()
            .filter(|l| l.starts_with("kernex_devices{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(total, 5.0, "{text}");
    }
}

/// Regression: a malformed query string is checked after the path resource and the
/// caller's rights (401 → 404 → 403 → 400).
#[tokio::test]
async fn query_errors_come_after_404_and_403() {
    let app = TestApp::new();
    let dev = app.device().await;
    app.get("/api/v1/devices/nope/heartbeats?limit=abc")
        .await
        .expect(StatusCode::NOT_FOUND);
    let r = app
        .call(
            axum::http::Method::GET,
            "/api/v1/devices?limit=abc",
            Some(&dev.token),
            None,
        )
        .await;
    r.expect(StatusCode::FORBIDDEN);
    let r = app
        .call(
            axum::http::Method::GET,
            "/api/v1/deployments?status=x",
            Some(&dev.token),
            None,
        )
        .await;
    r.expect(StatusCode::FORBIDDEN);
    app.get("/api/v1/devices?limit=abc")
        .await
        .expect(StatusCode::BAD_REQUEST);
}

/// The replay window is exact: 300.9 s in the future is outside it.
#[tokio::test]
async fn registration_window_is_exact() {
    let app = TestApp::new();
    let key = new_key();
    let at = chrono::Utc::now() + chrono::Duration::milliseconds(300_900);
    let body = registration_body(&key, at);
    let sig = key.sign(&body);
    app.register_raw(&body, Some(&sig), Some(ENROLL))
        .await
        .expect(StatusCode::UNAUTHORIZED);
}

/// Rejecting or deleting a device cancels its unfinished targets (delivered or not), so
/// its deployments complete and their bundles can be deleted.
#[tokio::test]
async fn reject_and_delete_cancel_the_devices_unfinished_targets() {
    let app = TestApp::new();
    let (a, b, other) = (app.device().await, app.device().await, app.device().await);
    let v1 = app.bundle("1.0.0").await;
    app.bundle("2.0.0").await;
    let d1 = app.deploy("1.0.0", &[&a, &b, &other]).await;
    let d2 = app.deploy("2.0.0", &[&a, &b]).await;
    // `a` has received d1 (in progress); d2 is still pending for both.
    app.heartbeat(&a, None, None).await.expect(StatusCode::OK);

    app.post(&format!("/api/v1/devices/{}/reject", a.id), json!({}))
        .await
        .expect(StatusCode::OK);
    app.delete(&format!("/api/v1/devices/{}", b.id))
        .await
        .expect(StatusCode::NO_CONTENT);

    let dep = |id: serde_json::Value| {
        let app = &app;
        async move {
            app.get(&format!("/api/v1/deployments/{}", id.as_str().unwrap()))
                .await
                .expect(StatusCode::OK)
        }
    };
    let d2 = dep(d2["id"].clone()).await;
    assert_eq!(d2["status"], "cancelled", "{d2}");
    let reasons: Vec<&str> = d2["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["error_message"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"device was rejected") && reasons.contains(&"device was deleted"));
    let d1 = dep(d1["id"].clone()).await;
    assert_eq!(d1["counts"]["cancelled"], 2, "{d1}");
    assert_eq!(d1["counts"]["pending"], 1, "the third device is untouched");

    // Once `other` finishes d1, nothing holds bundle 1.0.0 any more.
    app.heartbeat(&other, None, None)
        .await
        .expect(StatusCode::OK);
    app.result(
        &other,
        d1["id"].as_str().unwrap(),
        json!({"device_id": other.id, "status": "success", "report_id": "x1"}),
    )
    .await
    .expect(StatusCode::OK);
    app.delete(&format!("/api/v1/bundles/{}", v1["id"].as_str().unwrap()))
        .await
        .expect(StatusCode::NO_CONTENT);
}

/// Lowering `--heartbeat-retention` between restarts prunes the backlog too, a bounded
/// number per heartbeat.
#[tokio::test]
async fn lowered_retention_catches_up() {
    let app = TestApp::new();
    let dev = app.device().await;
    let dir = app.data_dir().join("db");
    let database_url = app.database_url.clone();
    drop(app.router);
    drop(app.state);
    let beat = || store_beat(&dev.id, "idle");
    let store = reopen(&dir, database_url.as_deref(), 20).await;
    for _ in 0..30 {
        store.write_beats(vec![beat()]).await.unwrap();
    }
    assert_eq!(store.heartbeats(&dev.id, 1000).await.unwrap().len(), 20);
    // As the server does at shutdown: write out what is held in memory.
    store.write_beats(Vec::new()).await.unwrap();
    store.sync().await.unwrap();
    drop(store);
    let store = reopen(&dir, database_url.as_deref(), 3).await;
    for _ in 0..2 {
        store.write_beats(vec![beat()]).await.unwrap();
    }
    assert_eq!(store.heartbeats(&dev.id, 1000).await.unwrap().len(), 3);
}

/// The test server's store opened again with another heartbeat retention: its sled data
/// dir (once the server released it), or its PostgreSQL database.
async fn reopen(
    dir: &std::path::Path,
    database_url: Option<&str>,
    retention: u64,
) -> Box<dyn kernex_server::store::Store> {
    use kernex_server::store::{PgOptions, PgStore, SledOptions, SledStore};
    match database_url {
        Some(url) => Box::new(
            PgStore::connect(
                url,
                PgOptions {
                    heartbeat_retention: retention,
                    ..PgOptions::default()
                },
            )
            .await
            .unwrap(),
        ),
        None => Box::new(
            open_when_released(|| {
                SledStore::open(
                    dir,
                    SledOptions {
                        heartbeat_retention: retention,
                    },
                )
            })
            .await,
        ),
    }
}

/// A heartbeat as the beat writer hands it to the store.
fn store_beat(device_id: &str, status: &str) -> kernex_server::store::Beat {
    kernex_server::store::Beat {
        device_id: device_id.to_owned(),
        at: chrono::Utc::now(),
        report: kernex_common::api::HeartbeatRequest {
            agent_version: "1".into(),
            cpu_pct: 1.0,
            memory_mb: 1.0,
            status: status.to_owned(),
            current_bundle_version: None,
            config_version: None,
            queued_reports: 0,
            trust_version: None,
        },
        polling_interval: 60,
    }
}

/// Open a store whose previous holder is shutting down (its threads release the data
/// dir's lock shortly after the last handle is dropped).
async fn open_when_released<T>(
    mut open: impl FnMut() -> Result<T, kernex_server::store::StoreError>,
) -> T {
    for _ in 0..200 {
        match open() {
            Ok(store) => return store,
            Err(e) if e.is_locked() => {
                tokio::time::sleep(std::time::Duration::from_millis(25)).await
            }
            Err(e) => panic!("open: {e}"),
        }
    }
    panic!("the data dir stayed locked");
}

/// A report naming another device is a 403 even when the rest of its body is bad.
#[tokio::test]
async fn report_for_another_device_is_403_before_body_errors() {
    let app = TestApp::new();
    let (a, b) = (app.device().await, app.device().await);
    app.bundle("1.0.0").await;
    let dep = app.deploy("1.0.0", &[&a, &b]).await;
    let id = dep["id"].as_str().unwrap();
    app.result(
        &a,
        id,
        json!({"device_id": b.id, "status": "bogus", "report_id": "r"}),
    )
    .await
    .expect(StatusCode::FORBIDDEN);
    app.result(
        &a,
        id,
        json!({"device_id": a.id, "status": "bogus", "report_id": "r"}),
    )
    .await
    .expect(StatusCode::BAD_REQUEST);
    let path = format!("/api/v1/deployments/{id}/progress");
    let progress = |body: serde_json::Value| {
        app.call(axum::http::Method::POST, &path, Some(&a.token), Some(body))
    };
    progress(json!({"device_id": b.id, "phase": "nope", "progress_pct": 500}))
        .await
        .expect(StatusCode::FORBIDDEN);
    progress(json!({"device_id": a.id, "phase": "nope", "progress_pct": 5}))
        .await
        .expect(StatusCode::BAD_REQUEST);
}

/// Every frame a whole flow puts on `/events` reads back as a typed `ServerEvent` that
/// writes the same JSON again, and the hand-shaped payloads keep their keys (`null`s
/// included) — the console relies on both.
#[tokio::test]
async fn every_event_on_the_wire_is_a_server_event() {
    use std::collections::{BTreeMap, BTreeSet};

    use axum::body::Body;
    use axum::http::{Method, Request};
    use http_body_util::BodyExt;
    use kernex_common::api::events::{DeviceEvent, ServerEvent};
    use serde_json::Value;
    use tower::ServiceExt;

    let app = TestApp::new();
    let req = Request::builder()
        .uri("/api/v1/events")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let dev = app.device().await;
    let info = app.bundle("1.0.0").await;
    let dep = app.deploy("1.0.0", &[&dev]).await;
    let dep_id = dep["id"].as_str().unwrap();
    app.heartbeat(&dev, None, None).await.expect(StatusCode::OK);
    app.call(
        Method::POST,
        &format!("/api/v1/deployments/{dep_id}/progress"),
        Some(&dev.token),
        Some(json!({"device_id": dev.id, "phase": "downloading", "progress_pct": 40})),
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    app.result(
        &dev,
        dep_id,
        json!({"device_id": dev.id, "status": "success", "report_id": "r1"}),
    )
    .await
    .expect(StatusCode::OK);
    app.put(
        &format!("/api/v1/devices/{}/config", dev.id),
        json!({"polling_interval": 30}),
    )
    .await
    .expect(StatusCode::OK);
    app.delete(&format!("/api/v1/bundles/{}", info["id"].as_str().unwrap()))
        .await
        .expect(StatusCode::NO_CONTENT);
    app.delete(&format!("/api/v1/devices/{}", dev.id))
        .await
        .expect(StatusCode::NO_CONTENT);

    // Read until the last thing done (the device's deletion) has arrived.
    let mut body = resp.into_body();
    let mut seen = String::new();
    let mut events: Vec<(String, Value, ServerEvent)> = Vec::new();
    let done = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let frame = body.frame().await.expect("stream ended").unwrap();
            if let Ok(data) = frame.into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
            }
            while let Some(end) = seen.find("\n\n") {
                let frame: String = seen.drain(..end + 2).collect();
                let field = |name: &str| {
                    frame
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim().to_owned())
                };
                let (Some(name), Some(data)) = (field("event:"), field("data:")) else {
                    continue;
                };
                let ev = ServerEvent::parse(&name, &data)
                    .unwrap_or_else(|e| panic!("{name}: {e}\n{data}"));
                let last = matches!(ev, ServerEvent::Device(DeviceEvent::Deleted { .. }));
                events.push((name, serde_json::from_str(&data).unwrap(), ev));
                if last {
                    return;
                }
            }
        }
    })
    .await;
    assert!(done.is_ok(), "no device deletion; events: {events:#?}");

    let mut keys: BTreeMap<String, BTreeSet<BTreeSet<String>>> = BTreeMap::new();
    for (name, data, ev) in &events {
        assert_eq!(ev.name(), name);
        let again: Value = serde_json::from_str(&ev.data_json()).unwrap();
        assert_eq!(&again, data, "{name} reads back as it was written");
        let shape = data.as_object().unwrap().keys().cloned().collect();
        keys.entry(name.clone()).or_default().insert(shape);
    }
    let set = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        keys["heartbeat"],
        BTreeSet::from([set(&[
            "agent_version",
            "config_version",
            "cpu_pct",
            "current_bundle_version",
            "device_id",
            "memory_mb",
            "queued_reports",
            "status",
            "timestamp",
        ])])
    );
    assert_eq!(
        keys["deployment"],
        BTreeSet::from([set(&[
            "bundle_id",
            "bundle_version",
            "change",
            "completed_at",
            "counts",
            "device",
            "id",
            "kind",
            "rollout",
            "status",
            "updated_at",
        ])])
    );
    assert!(keys["device"].contains(&set(&["deleted", "device_id"])));
    assert!(keys["bundle"].contains(&set(&["deleted", "id", "version"])));
    assert!(keys.contains_key("config"), "{keys:?}");
}

/// A device's newest deployment result shows in its summary (the console's LAST DEPLOY
/// column): version, outcome and the version it rolled back to.
#[tokio::test]
async fn device_summary_carries_its_last_deployment() {
    let app = TestApp::new();
    let dev = app.device().await;
    let path = format!("/api/v1/devices/{}", dev.id);
    let d = app.get(&path).await.expect(StatusCode::OK);
    assert!(d["last_deployment"].is_null(), "{d}");
    app.bundle("1.0.0").await;
    let dep = app.deploy("1.0.0", &[&dev]).await;
    let id = dep["id"].as_str().unwrap();
    app.heartbeat(&dev, None, Some(1))
        .await
        .expect(StatusCode::OK);
    app.result(
        &dev,
        id,
        json!({"device_id": dev.id, "status": "failed", "report_id": "r1",
               "error_message": "boom", "rolled_back_to": "0.9.0"}),
    )
    .await
    .expect(StatusCode::OK);
    let d = app.get(&path).await.expect(StatusCode::OK);
    let last = &d["last_deployment"];
    assert_eq!(last["deployment_id"], id);
    assert_eq!(last["kind"], "deploy");
    assert_eq!(last["bundle_version"], "1.0.0");
    assert_eq!(last["status"], "failed");
    assert_eq!(last["rolled_back_to"], "0.9.0");
    let list = app.get("/api/v1/devices").await.expect(StatusCode::OK);
    assert_eq!(list[0]["last_deployment"], *last);
}

/// History is kept in chunks: whatever the count of beats (chunk boundaries, several
/// laps of the ring, a retention that is not a multiple of the chunk), a read returns
/// exactly the newest beats, newest first, at most the retention.
#[tokio::test]
async fn history_reads_the_newest_beats_across_chunks_and_laps() {
    let app = TestApp::new();
    let dev = app.device().await;
    let dir = app.data_dir().join("db");
    let database_url = app.database_url.clone();
    drop(app.router);
    drop(app.state);
    let store = reopen(&dir, database_url.as_deref(), 37).await;
    let statuses = |hs: Vec<kernex_common::api::HeartbeatRecord>| -> Vec<String> {
        hs.into_iter().map(|h| h.status).collect()
    };
    let expected = |newest: u32, n: u32| -> Vec<String> {
        (0..n).map(|i| format!("s{}", newest - i)).collect()
    };
    for i in 1..=200u32 {
        let beat = store_beat(&dev.id, &format!("s{i}"));
        store.write_beats(vec![beat]).await.unwrap();
        if [1, 15, 16, 17, 37, 48, 100, 111, 112, 200].contains(&i) {
            let all = statuses(store.heartbeats(&dev.id, 1000).await.unwrap());
            assert_eq!(all, expected(i, i.min(37)), "after {i} beats");
            let five = statuses(store.heartbeats(&dev.id, 5).await.unwrap());
            assert_eq!(five, expected(i, i.min(5)), "limit 5 after {i} beats");
        }
    }
}
