//! Registration, heartbeat batches and online status under concurrency and at their
//! edges, on whichever backend the suite runs (SPEC §8: the PostgreSQL backend must
//! keep sled's answers when several requests race, and its batches must survive odd
//! input).
#![allow(clippy::unwrap_used)]

mod support;

use axum::http::StatusCode;
use chrono::{Duration, Utc};
use kernex_common::api::HeartbeatRequest;
use kernex_server::store::Beat;
use serde_json::json;
use support::*;

fn beat(device_id: &str, status: &str, secs_ago: i64, interval: u64) -> Beat {
    Beat {
        device_id: device_id.to_owned(),
        at: Utc::now() - Duration::seconds(secs_ago),
        report: HeartbeatRequest {
            agent_version: "1".into(),
            cpu_pct: 1.0,
            memory_mb: 1.0,
            status: status.to_owned(),
            current_bundle_version: None,
            config_version: None,
            queued_reports: 0,
            trust_version: None,
        },
        polling_interval: interval,
    }
}

/// Status and body of each answer, for assertion messages.
fn summary(answers: &[Resp]) -> Vec<String> {
    answers
        .iter()
        .map(|r| format!("{} {}", r.status, r.text()))
        .collect()
}

fn ids(v: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

/// Eight registrations of one key at once, each correctly signed (distinct bodies):
/// one device, one 201, and exactly one of the eight tokens still works.
#[tokio::test]
async fn concurrent_registrations_of_one_key_make_one_device() {
    let app = TestApp::new();
    let key = new_key();
    let now = Utc::now();
    let bodies: Vec<(Vec<u8>, String)> = (0..8)
        .map(|i| {
            let body = registration_body(&key, now + Duration::milliseconds(i));
            let sig = key.sign(&body);
            (body, sig)
        })
        .collect();
    let answers = futures_util::future::join_all(
        bodies
            .iter()
            .map(|(body, sig)| app.register_raw(body, Some(sig), Some(ENROLL))),
    )
    .await;
    let created = answers
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    let again = answers
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    assert_eq!((created, again), (1, 7), "{:?}", summary(&answers));
    let device_ids: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|r| r.json()["device_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(device_ids.len(), 1);
    let id = device_ids.into_iter().next().unwrap();
    let listed = app.get("/api/v1/devices").await.expect(StatusCode::OK);
    assert_eq!(ids(&listed), vec![id.clone()]);

    let mut live = 0;
    for r in &answers {
        let dev = Device {
            id: id.clone(),
            token: r.json()["device_token"].as_str().unwrap().to_owned(),
            key: key.clone(),
        };
        match app.heartbeat(&dev, None, None).await.status {
            StatusCode::OK => live += 1,
            StatusCode::UNAUTHORIZED => {}
            other => panic!("heartbeat: {other}"),
        }
    }
    assert_eq!(live, 1, "one live token per device");
    let metrics = app.get("/metrics").await;
    assert!(
        metrics
            .text()
            .contains("kernex_devices{admission=\"accepted\"} 1"),
        "{}",
        metrics.text()
    );
}

/// The same signed body sent eight times at once: one registration, seven replays.
#[tokio::test]
async fn a_signed_body_raced_against_itself_registers_once() {
    let app = TestApp::new();
    let key = new_key();
    let body = registration_body(&key, Utc::now());
    let sig = key.sign(&body);
    let answers = futures_util::future::join_all(
        (0..8).map(|_| app.register_raw(&body, Some(&sig), Some(ENROLL))),
    )
    .await;
    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status.as_u16()).collect();
    statuses.sort();
    assert_eq!(
        statuses,
        [201, 401, 401, 401, 401, 401, 401, 401],
        "{:?}",
        summary(&answers)
    );
}

/// Ten new keys at once against `--max-pending 3`: exactly three wait for an accept.
#[tokio::test]
async fn the_pending_cap_holds_under_concurrent_registrations() {
    let app = TestApp::with(|s| s.max_pending = 3);
    let keys: Vec<_> = (0..10).map(|_| new_key()).collect();
    let answers =
        futures_util::future::join_all(keys.iter().map(|k| app.register_key(k, None))).await;
    let created = answers
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    let refused = answers
        .iter()
        .filter(|r| r.status == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!((created, refused), (3, 7), "{:?}", summary(&answers));
    let pending = app
        .get("/api/v1/devices?admission=pending")
        .await
        .expect(StatusCode::OK);
    assert_eq!(pending.as_array().unwrap().len(), 3);
}

/// One batch holding two beats of one device, a beat of a device that does not exist
/// and a status with U+0000: the batch is applied, in order, and nothing else fails.
#[tokio::test]
async fn a_batch_with_repeats_strangers_and_nul_is_applied() {
    let app = TestApp::new();
    let a = app.device().await;
    let b = app.device().await;
    app.state
        .store
        .write_beats(vec![
            beat(&a.id, "first", 2, 60),
            beat("no-such-device", "x", 1, 60),
            beat(&b.id, "nul\u{0}in", 1, 60),
            beat(&a.id, "second", 0, 60),
        ])
        .await
        .unwrap();
    let hs = app
        .get(&format!("/api/v1/devices/{}/heartbeats", a.id))
        .await
        .expect(StatusCode::OK);
    let statuses: Vec<&str> = hs
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["second", "first"]);
    let d = app
        .get(&format!("/api/v1/devices/{}", a.id))
        .await
        .expect(StatusCode::OK);
    assert_eq!(d["agent_status"], "second");
    let hs = app
        .get(&format!("/api/v1/devices/{}/heartbeats", b.id))
        .await
        .expect(StatusCode::OK);
    assert_eq!(hs.as_array().unwrap().len(), 1);
    assert!(
        !app.state
            .store
            .device_exists("no-such-device")
            .await
            .unwrap()
    );
}

/// A reported version stays until a later beat reports another; a beat that reports
/// none keeps it.
#[tokio::test]
async fn a_beat_without_a_version_keeps_the_reported_one() {
    let app = TestApp::new();
    let dev = app.device().await;
    let mut first = beat(&dev.id, "idle", 5, 60);
    first.report.current_bundle_version = Some("2.0.0".into());
    app.state.store.write_beats(vec![first]).await.unwrap();
    app.state
        .store
        .write_beats(vec![beat(&dev.id, "idle", 0, 60)])
        .await
        .unwrap();
    let d = app
        .get(&format!("/api/v1/devices/{}", dev.id))
        .await
        .expect(StatusCode::OK);
    assert_eq!(d["current_bundle_version"], "2.0.0");
}

/// Online, offline and never agree between the list filter, each summary and
/// `/metrics`, and a longer polling interval brings a quiet device back online.
#[tokio::test]
async fn online_status_agrees_everywhere_and_follows_the_interval() {
    let app = TestApp::new();
    let fresh = app.device().await;
    let quiet = app.device().await;
    let never = app.device().await;
    app.state
        .store
        .write_beats(vec![
            beat(&fresh.id, "idle", 1, 60),
            beat(&quiet.id, "idle", 200, 60),
        ])
        .await
        .unwrap();
    let by_status = |status: &'static str| {
        let app = &app;
        async move {
            let v = app
                .get(&format!("/api/v1/devices?status={status}"))
                .await
                .expect(StatusCode::OK);
            for d in v.as_array().unwrap() {
                assert_eq!(d["status"], status, "{d}");
            }
            ids(&v)
        }
    };
    assert_eq!(by_status("online").await, vec![fresh.id.clone()]);
    assert_eq!(by_status("offline").await, vec![quiet.id.clone()]);
    assert_eq!(by_status("never").await, vec![never.id.clone()]);
    let metrics = app.get("/metrics").await.text();
    for line in [
        "kernex_devices_by_status{status=\"online\"} 1",
        "kernex_devices_by_status{status=\"offline\"} 1",
        "kernex_devices_by_status{status=\"never\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }

    // 3 × 100 s covers the quiet device's last beat, 200 s ago.
    app.put(
        &format!("/api/v1/devices/{}/config", quiet.id),
        json!({"polling_interval": 100}),
    )
    .await
    .expect(StatusCode::OK);
    let mut online = vec![fresh.id.clone(), quiet.id.clone()];
    online.sort();
    assert_eq!(by_status("online").await, online);
    assert!(by_status("offline").await.is_empty());
    // PostgreSQL moves the device's online window with its interval at once; sled's
    // metrics move it at the device's next beat (sled_store/online.rs).
    if postgres() {
        let metrics = app.get("/metrics").await.text();
        assert!(
            metrics.contains("kernex_devices_by_status{status=\"online\"} 2"),
            "{metrics}"
        );
    }
}

/// Ids and names holding U+0000 (PostgreSQL text cannot) name nothing: 404 on both
/// backends, never a 5xx.
#[tokio::test]
async fn keys_with_nul_name_nothing() {
    let app = TestApp::new();
    for path in [
        "/api/v1/devices/%00",
        "/api/v1/devices/a%00b/heartbeats",
        "/api/v1/devices/%00/config",
        "/api/v1/bundles/%00",
        "/api/v1/bundles/%00/info",
        "/api/v1/bundles/%00/signatures",
    ] {
        let r = app.get(path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "GET {path}: {}", r.text());
    }
    let r = app.delete("/api/v1/tokens/%00").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
}
