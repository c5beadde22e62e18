//! Reads and writes that must stay cheap at fleet scale: deployments listed without their
//! targets, targets read in pages, a cancel of thousands of targets in chunks, `/metrics`
//! from counters, and the heartbeat path's work index staying in step with every write.

#![allow(clippy::unwrap_used)]

mod support;

use axum::http::StatusCode;
use chrono::Utc;
use kernex_common::api::{Admission, DeploymentKind};
use kernex_server::store::NewRegistration;
use serde_json::{Value, json};
use support::*;

/// `n` accepted devices registered straight through the store (no RSA work), ids sorted.
async fn seeded_devices(app: &TestApp, n: usize) -> Vec<String> {
    let now = Utc::now();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let reg = NewRegistration {
            public_key_pem: String::new(),
            fingerprint: format!("fp-{i}"),
            device_type: "seeded".into(),
            hardware_metadata: json!({}),
            signature_hash: format!("sig-{i}"),
            replay_until: now,
            admission: Admission::Accepted,
            refusal: None,
            max_pending: None,
            token_hash: format!("tok-{i}"),
            now,
        };
        let out = app.state.store.register(&reg).await.unwrap();
        app.state
            .heartbeats
            .admission_changed(out.device.id(), out.device.admission());
        ids.push(out.device.id().to_owned());
    }
    ids.sort();
    ids
}

fn ids_of(page: &Value) -> Vec<String> {
    page.as_array()
        .unwrap()
        .iter()
        .map(|t| t["device_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn deployments_list_without_targets_and_targets_in_pages() {
    let app = TestApp::new();
    let ids = seeded_devices(&app, 250).await;
    app.bundle("1.0.0").await;
    let dep = app
        .post(
            "/api/v1/deployments",
            json!({"bundle_version": "1.0.0", "target_device_ids": ids}),
        )
        .await
        .expect(StatusCode::CREATED);
    let id = dep["id"].as_str().unwrap();
    assert_eq!(dep["devices"].as_array().unwrap().len(), 250);

    let list = app
        .get("/api/v1/deployments?devices=false")
        .await
        .expect(StatusCode::OK);
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["devices"], json!([]));
    assert_eq!(list[0]["counts"]["pending"], 250);
    let one = app
        .get(&format!("/api/v1/deployments/{id}?devices=false"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(one["devices"], json!([]));
    assert_eq!(one["status"], "pending");
    // Without the flag nothing changes.
    let full = app.get("/api/v1/deployments").await.expect(StatusCode::OK);
    assert_eq!(full[0]["devices"].as_array().unwrap().len(), 250);

    // Pages of 100 in device-id order, the cursor being the last id seen.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page = app
            .get(&format!(
                "/api/v1/deployments/{id}/targets?limit=100{after}"
            ))
            .await
            .expect(StatusCode::OK);
        let page = ids_of(&page);
        if page.is_empty() {
            break;
        }
        after = format!("&after={}", page.last().unwrap());
        seen.extend(page);
    }
    assert_eq!(seen, ids);
    // Default limit 100; a status filter; bad values are 400; unknown deployment 404.
    let page = app
        .get(&format!("/api/v1/deployments/{id}/targets"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(ids_of(&page).len(), 100);
    let none = app
        .get(&format!("/api/v1/deployments/{id}/targets?status=success"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(none, json!([]));
    app.get(&format!("/api/v1/deployments/{id}/targets?limit=0"))
        .await
        .expect(StatusCode::BAD_REQUEST);
    app.get(&format!("/api/v1/deployments/{id}/targets?status=nope"))
        .await
        .expect(StatusCode::BAD_REQUEST);
    app.get("/api/v1/deployments/nope/targets")
        .await
        .expect(StatusCode::NOT_FOUND);
    // Devices may not read it.
    let dev = app.device().await;
    let r = app
        .call(
            axum::http::Method::GET,
            &format!("/api/v1/deployments/{id}/targets"),
            Some(&dev.token),
            None,
        )
        .await;
    r.expect(StatusCode::FORBIDDEN);
}

/// A cancel of more targets than one chunk cancels every pending one, leaves delivered
/// ones alone, and keeps the counts exact.
#[tokio::test]
async fn cancel_of_thousands_of_targets_works_in_chunks() {
    let app = TestApp::new();
    let mut ids = seeded_devices(&app, 2_500).await;
    let dev = app.device().await;
    ids.push(dev.id.clone());
    app.bundle("1.0.0").await;
    let dep = app
        .post(
            "/api/v1/deployments",
            json!({"bundle_version": "1.0.0", "target_device_ids": ids}),
        )
        .await
        .expect(StatusCode::CREATED);
    let id = dep["id"].as_str().unwrap();
    // The real device takes its command: its target is in progress and stays so.
    let beat = app.heartbeat(&dev, None, None).await.expect(StatusCode::OK);
    assert_eq!(beat["commands"][0]["deployment_id"], id);

    let cancelled = app
        .post(&format!("/api/v1/deployments/{id}/cancel"), json!({}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(cancelled["counts"]["cancelled"], 2_500);
    assert_eq!(cancelled["counts"]["in_progress"], 1);
    assert_eq!(cancelled["counts"]["pending"], 0);
    assert_eq!(cancelled["status"], "in_progress");
    let pending = app
        .get(&format!("/api/v1/deployments/{id}/targets?status=pending"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(pending, json!([]));
    // The delivered target is still re-sent until its result.
    let beat = app.heartbeat(&dev, None, None).await.expect(StatusCode::OK);
    assert_eq!(beat["commands"][0]["deployment_id"], id);
}

/// `/metrics` reads counters kept on writes: devices by admission and by online status,
/// deployments by status, all exact after registrations, heartbeats, admission changes,
/// deletions and results.
#[tokio::test]
async fn metrics_counts_follow_every_write() {
    let app = TestApp::new();
    let a = app.device().await;
    let b = app.device().await;
    let p = app.pending_device().await;
    let gauge = |text: &str, line: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line))
            .unwrap_or_else(|| panic!("no {line} in:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    };
    let scrape = || async { app.get("/metrics").await.text() };

    let m = scrape().await;
    assert_eq!(gauge(&m, "kernex_devices{admission=\"accepted\"}"), 2.0);
    assert_eq!(gauge(&m, "kernex_devices{admission=\"pending\"}"), 1.0);
    assert_eq!(gauge(&m, "kernex_devices_by_status{status=\"never\"}"), 3.0);

    app.heartbeat(&a, None, None).await.expect(StatusCode::OK);
    app.heartbeat(&p, None, None).await.expect(StatusCode::OK);
    app.get(&format!("/api/v1/devices/{}", a.id))
        .await
        .expect(StatusCode::OK);
    let m = scrape().await;
    assert_eq!(
        gauge(&m, "kernex_devices_by_status{status=\"online\"}"),
        2.0
    );
    assert_eq!(gauge(&m, "kernex_devices_by_status{status=\"never\"}"), 1.0);

    app.post(&format!("/api/v1/devices/{}/accept", p.id), json!({}))
        .await
        .expect(StatusCode::OK);
    app.bundle("1.0.0").await;
    let dep = app.deploy("1.0.0", &[&a, &b]).await;
    let m = scrape().await;
    assert_eq!(gauge(&m, "kernex_devices{admission=\"accepted\"}"), 3.0);
    assert_eq!(gauge(&m, "kernex_devices{admission=\"pending\"}"), 0.0);
    assert_eq!(gauge(&m, "kernex_deployments{status=\"pending\"}"), 1.0);

    let id = dep["id"].as_str().unwrap();
    app.heartbeat(&a, None, None).await.expect(StatusCode::OK);
    app.result(
        &a,
        id,
        json!({"device_id": a.id, "status": "success", "report_id": "r-a"}),
    )
    .await
    .expect(StatusCode::OK);
    let m = scrape().await;
    assert_eq!(gauge(&m, "kernex_deployments{status=\"pending\"}"), 0.0);
    assert_eq!(gauge(&m, "kernex_deployments{status=\"in_progress\"}"), 1.0);

    app.delete(&format!("/api/v1/devices/{}", b.id))
        .await
        .expect(StatusCode::NO_CONTENT);
    app.post(&format!("/api/v1/devices/{}/reject", p.id), json!({}))
        .await
        .expect(StatusCode::OK);
    let m = scrape().await;
    assert_eq!(gauge(&m, "kernex_devices{admission=\"accepted\"}"), 1.0);
    assert_eq!(gauge(&m, "kernex_devices{admission=\"rejected\"}"), 1.0);
    // b's target was cancelled with it: success + cancelled → cancelled (SPEC §1.5).
    assert_eq!(gauge(&m, "kernex_deployments{status=\"cancelled\"}"), 1.0);
    assert_eq!(gauge(&m, "kernex_deployments{status=\"in_progress\"}"), 0.0);
    // a and p beat; b never did and is gone.
    assert_eq!(
        gauge(&m, "kernex_devices_by_status{status=\"online\"}"),
        2.0
    );
    assert_eq!(gauge(&m, "kernex_devices_by_status{status=\"never\"}"), 0.0);
}

/// The work index follows the store across a restart: a device with an open target, a
/// pending device and a configured device are known again from the store alone.
#[tokio::test]
async fn work_index_is_rebuilt_from_the_store_at_start() {
    let app = TestApp::new();
    let a = app.device().await;
    let p = app.pending_device().await;
    app.bundle("1.0.0").await;
    let dep = app.deploy("1.0.0", &[&a]).await;
    app.put(
        &format!("/api/v1/devices/{}/config", a.id),
        json!({"polling_interval": 30}),
    )
    .await
    .expect(StatusCode::OK);
    // A rebuilt index, as at start (the store is what it is built from).
    let snapshot = app.state.store.work_snapshot().await.unwrap();
    assert_eq!(snapshot.open, vec![a.id.clone()]);
    assert_eq!(snapshot.pending, vec![p.id.clone()]);
    assert_eq!(snapshot.configs.len(), 1);
    assert_eq!(snapshot.configs[0].version, 2);
    let service = kernex_server::service::heartbeat::HeartbeatService::start(
        app.state.store.clone(),
        snapshot,
    );
    let out = service
        .beat(&a.id, beat_report(Some(1)), Utc::now())
        .await
        .unwrap();
    let types: Vec<String> = out
        .commands
        .iter()
        .map(|c| {
            serde_json::to_value(c).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(types, ["deploy", "configure"]);
    assert_eq!(out.delivered.unwrap().id, dep["id"].as_str().unwrap());
    let out = service
        .beat(&p.id, beat_report(None), Utc::now())
        .await
        .unwrap();
    assert_eq!(out.admission, Admission::Pending);
    assert!(out.commands.is_empty());
    // Creating a deployment through the store alone (no index hook) is found by the
    // next rebuild too.
    let bundle = app
        .state
        .store
        .bundle_by_version("1.0.0")
        .await
        .unwrap()
        .unwrap();
    app.state
        .store
        .create_deployment(
            DeploymentKind::Deploy,
            &bundle,
            std::slice::from_ref(&a.id),
            None,
            Utc::now(),
        )
        .await
        .unwrap();
    let snapshot = app.state.store.work_snapshot().await.unwrap();
    assert_eq!(snapshot.open, vec![a.id.clone()]);
}

fn beat_report(config_version: Option<u64>) -> kernex_common::api::HeartbeatRequest {
    kernex_common::api::HeartbeatRequest {
        agent_version: "1".into(),
        cpu_pct: 1.0,
        memory_mb: 1.0,
        status: "idle".into(),
        current_bundle_version: None,
        config_version,
        queued_reports: 0,
        trust_version: None,
    }
}

/// A device behind its config gets the command re-sent from memory; a newer config
/// replaces it at once, and acknowledging ends it.
#[tokio::test]
async fn a_kept_configure_command_follows_every_config_change() {
    let app = TestApp::new();
    let dev = app.device().await;
    let config = format!("/api/v1/devices/{}/config", dev.id);
    let sent = |hb: &Value| -> Option<Value> {
        hb["commands"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "configure")
            .cloned()
    };
    app.put(&config, json!({"polling_interval": 30}))
        .await
        .expect(StatusCode::OK);
    for _ in 0..3 {
        let hb = app
            .heartbeat(&dev, None, Some(1))
            .await
            .expect(StatusCode::OK);
        assert_eq!(sent(&hb).unwrap()["polling_interval"], 30);
    }
    app.put(
        &config,
        json!({"polling_interval": 45, "log_level": "warn"}),
    )
    .await
    .expect(StatusCode::OK);
    let hb = app
        .heartbeat(&dev, None, Some(2))
        .await
        .expect(StatusCode::OK);
    let cmd = sent(&hb).unwrap();
    assert_eq!(cmd["config_version"], 3);
    assert_eq!(cmd["polling_interval"], 45);
    assert_eq!(cmd["log_level"], "warn");
    let hb = app
        .heartbeat(&dev, None, Some(3))
        .await
        .expect(StatusCode::OK);
    assert_eq!(sent(&hb), None);
    // Deleted and gone from the index: nothing kept for it.
    app.delete(&format!("/api/v1/devices/{}", dev.id))
        .await
        .expect(StatusCode::NO_CONTENT);
}
