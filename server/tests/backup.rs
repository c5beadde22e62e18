//! Backups over HTTP (SPEC §2 "Backups"): `GET /backup` streams a consistent snapshot,
//! a restore of it into an empty data dir gives a server that answers exactly as the
//! original did, and a restore refuses what it cannot use and leaves nothing behind.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Read;
use std::path::Path;

use axum::http::{Method, StatusCode};
use kernex_server::backup::{check_data_dir, restore_data_dir};
use serde_json::{Value, json};
use support::*;

/// A fleet with something of every kind: devices of each admission, tags, configs,
/// heartbeats past one history chunk, bundles, a finished and an open deployment,
/// history, a second operator token.
struct Fleet {
    a: Device,
    b: Device,
    pending: Device,
    done_dep: String,
    open_dep: String,
    bundle_id: String,
    bundle2_id: String,
    ops_token: String,
}

async fn populate(app: &TestApp) -> Fleet {
    let a = app.device().await;
    let b = app.device().await;
    let pending = app.pending_device().await;
    let rejected = app.device().await;
    app.post(
        &format!("/api/v1/devices/{}/reject", rejected.id),
        json!({}),
    )
    .await
    .expect(StatusCode::OK);
    app.patch(
        &format!("/api/v1/devices/{}", a.id),
        json!({"tags": ["edge", "lab"]}),
    )
    .await
    .expect(StatusCode::OK);
    app.put(
        &format!("/api/v1/devices/{}/config", a.id),
        json!({"polling_interval": 15, "log_level": "debug", "metadata": {"site": "north"}}),
    )
    .await
    .expect(StatusCode::OK);
    for i in 0..21 {
        let version = if i < 20 { None } else { Some("0.9.0") };
        app.heartbeat(&b, version, None)
            .await
            .expect(StatusCode::OK);
    }
    let bundle = app.bundle("1.0.0").await;
    let bundle2 = app.bundle("2.0.0").await;
    let done = app.deploy("1.0.0", &[&a, &b]).await;
    let done_dep = done["id"].as_str().unwrap().to_owned();
    for dev in [&a, &b] {
        let beat = app
            .heartbeat(dev, None, Some(2))
            .await
            .expect(StatusCode::OK);
        assert!(beat["commands"].to_string().contains(&done_dep), "{beat}");
        let status = if dev.id == a.id { "success" } else { "failed" };
        app.result(
            dev,
            &done_dep,
            json!({"device_id": dev.id, "status": status, "report_id": format!("r-{}", dev.id)}),
        )
        .await
        .expect(StatusCode::OK);
    }
    let open = app.deploy("2.0.0", &[&a]).await;
    let ops_token = app.post("/api/v1/tokens", json!({"name": "ops"})).await;
    let ops_token = ops_token.expect(StatusCode::CREATED)["token"]
        .as_str()
        .unwrap()
        .to_owned();
    app.state.heartbeats.settle().await;
    Fleet {
        a,
        b,
        pending,
        done_dep,
        open_dep: open["id"].as_str().unwrap().to_owned(),
        bundle_id: bundle["id"].as_str().unwrap().to_owned(),
        bundle2_id: bundle2["id"].as_str().unwrap().to_owned(),
        ops_token,
    }
}

/// `GET /backup` into a file.
async fn http_backup(app: &TestApp, to: &Path) -> Vec<u8> {
    let r = app.get("/api/v1/backup").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.headers["content-type"], "application/x-tar");
    std::fs::write(to, &r.body).unwrap();
    r.body
}

/// Everything an operator can read about the fleet, as the API answers it.
async fn answers(app: &TestApp, f: &Fleet) -> Vec<(String, Value)> {
    let mut paths = vec![
        "/api/v1/devices".to_owned(),
        "/api/v1/devices?status=online".to_owned(),
        "/api/v1/devices?tag=edge".to_owned(),
        "/api/v1/bundles".to_owned(),
        "/api/v1/deployments".to_owned(),
        "/api/v1/tokens".to_owned(),
    ];
    for dev in [&f.a, &f.b, &f.pending] {
        for tail in ["", "/heartbeats?limit=1000", "/config", "/bundle-history"] {
            paths.push(format!("/api/v1/devices/{}{tail}", dev.id));
        }
    }
    for dep in [&f.done_dep, &f.open_dep] {
        paths.push(format!("/api/v1/deployments/{dep}"));
        paths.push(format!("/api/v1/deployments/{dep}/targets"));
    }
    paths.push(format!("/api/v1/bundles/{}/info", f.bundle_id));
    let mut out = Vec::new();
    for p in paths {
        let v = app.get(&p).await.expect(StatusCode::OK);
        out.push((p, v));
    }
    out
}

/// The `/metrics` gauges that come from the store.
async fn fleet_gauges(app: &TestApp) -> Vec<String> {
    let r = app.call(Method::GET, "/metrics", None, None).await;
    r.text()
        .lines()
        .filter(|l| l.starts_with("kernex_devices") || l.starts_with("kernex_deployments"))
        .map(str::to_owned)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[tokio::test]
async fn a_restored_backup_answers_as_the_original_did() {
    let app = TestApp::new();
    let f = populate(&app).await;
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("fleet.tar");
    http_backup(&app, &file).await;

    let restored_dir = tempfile::tempdir().unwrap();
    let done = restore_data_dir(&file, restored_dir.path()).unwrap();
    assert_eq!(done.records.get("device"), 4);
    assert_eq!(done.records.get("deployment"), 2);
    assert_eq!(done.bundle_files, 2);
    let report = check_data_dir(restored_dir.path()).unwrap();
    assert!(report.sound(), "{:?}", report.problems);

    let before = answers(&app, &f).await;
    let gauges_before = fleet_gauges(&app).await;
    let copy = TestApp::on_dir(restored_dir);
    let after = answers(&copy, &f).await;
    for ((path, old), (_, new)) in before.iter().zip(&after) {
        assert_eq!(old, new, "{path} differs after the restore");
    }
    assert_eq!(fleet_gauges(&copy).await, gauges_before);
    let hb = &after
        .iter()
        .find(|(p, _)| p.contains(&f.b.id) && p.contains("heartbeats"))
        .unwrap()
        .1;
    assert_eq!(hb.as_array().unwrap().len(), 22, "every heartbeat kept");

    // The bundle bytes are the same.
    let path = format!("/api/v1/bundles/{}", f.bundle_id);
    assert_eq!(copy.get(&path).await.body, app.get(&path).await.body);

    // Tokens are the same hashes: the device's and the new operator's still work.
    let r = copy
        .call(Method::GET, "/api/v1/devices", Some(&f.ops_token), None)
        .await;
    r.expect(StatusCode::OK);
    // The open deployment is still deliverable (the work index rebuilt) ...
    let beat = copy
        .heartbeat(&f.a, None, Some(2))
        .await
        .expect(StatusCode::OK);
    assert!(beat["commands"].to_string().contains(&f.open_dep), "{beat}");
    // ... and a repeated result is recognised by its report id, not applied twice.
    let r = copy
        .result(
            &f.a,
            &f.done_dep,
            json!({"device_id": f.a.id, "status": "failed", "report_id": format!("r-{}", f.a.id)}),
        )
        .await;
    r.expect(StatusCode::OK);
    let dep = copy
        .get(&format!("/api/v1/deployments/{}", f.done_dep))
        .await
        .expect(StatusCode::OK);
    assert_eq!(dep["counts"]["success"], 1);
    assert_eq!(dep["counts"]["failed"], 1);
}

#[tokio::test]
async fn the_backup_stream_is_a_versioned_tar_of_records_then_bundles() {
    let app = TestApp::new();
    let f = populate(&app).await;
    let scratch = tempfile::tempdir().unwrap();
    let body = http_backup(&app, &scratch.path().join("b.tar")).await;
    let mut archive = tar::Archive::new(body.as_slice());
    let mut names = Vec::new();
    let mut header = Value::Null;
    let mut kinds = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut text = String::new();
        if name.ends_with(".json") || name.ends_with(".ndjson") {
            entry.read_to_string(&mut text).unwrap();
        }
        if name == "kernex-backup/header.json" {
            header = serde_json::from_str(&text).unwrap();
        }
        if name == "kernex-backup/records.ndjson" {
            for line in text.lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                kinds.push(v["kind"].as_str().unwrap().to_owned());
                assert!(v["record"].is_object(), "{line}");
                // Token hashes only, never a token.
                assert!(!line.contains(&f.ops_token) && !line.contains(&f.a.token));
            }
        }
        names.push(name);
    }
    assert_eq!(names[0], "kernex-backup/header.json");
    assert_eq!(names[1], "kernex-backup/records.ndjson");
    assert!(
        names[2..]
            .iter()
            .all(|n| n.starts_with("kernex-backup/bundles/"))
    );
    assert_eq!(names.len(), 4);
    assert_eq!(header["format"], "kernex-backup");
    assert_eq!(header["format_version"], 1);
    assert_eq!(header["server_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(header["records"]["device"], 4);
    assert_eq!(header["records"]["heartbeat"], 23);
    for kind in [
        "operator_token",
        "device_token",
        "registration",
        "config",
        "live",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} record");
    }
    // Each deployment is followed by its targets.
    let first_target = kinds.iter().position(|k| k == "target").unwrap();
    assert_eq!(kinds[first_target - 1], "deployment");
}

#[tokio::test]
async fn restore_refuses_a_non_empty_dir_and_changes_nothing() {
    let app = TestApp::new();
    populate(&app).await;
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("b.tar");
    http_backup(&app, &file).await;
    let busy = tempfile::tempdir().unwrap();
    std::fs::write(busy.path().join("notes.txt"), "keep me").unwrap();
    let e = restore_data_dir(&file, busy.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not empty"), "{e}");
    let left: Vec<_> = std::fs::read_dir(busy.path()).unwrap().collect();
    assert_eq!(left.len(), 1);
    assert_eq!(
        std::fs::read_to_string(busy.path().join("notes.txt")).unwrap(),
        "keep me"
    );
}

#[tokio::test]
async fn restore_refuses_a_damaged_or_foreign_file_and_leaves_the_dir_empty() {
    let app = TestApp::new();
    let f = populate(&app).await;
    let scratch = tempfile::tempdir().unwrap();
    let good = http_backup(&app, &scratch.path().join("good.tar")).await;

    // One byte of a bundle archive flipped: caught by its recorded SHA-256.
    let mut flipped = good.clone();
    let needle = format!("kernex-backup/bundles/{}.tar.gz", f.bundle_id);
    let at = flipped
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap();
    flipped[at + 512 + 100] ^= 0xff; // inside its data, past the 512-byte tar header
    // Cut off in the middle (a download that broke off), and cut exactly where the
    // last bundle's entry begins (what is left is a well-formed, shorter tar).
    let truncated = good[..good.len() / 2].to_vec();
    let last = format!("kernex-backup/bundles/{}.tar.gz", f.bundle2_id);
    let at_entry = good
        .windows(last.len())
        .position(|w| w == last.as_bytes())
        .unwrap();
    let mut at_boundary = good[..at_entry].to_vec();
    at_boundary.extend_from_slice(&[0; 1024]);
    // Not a backup at all.
    let mut foreign = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_cksum();
    foreign
        .append_data(&mut h, "hello.txt", &b"hi"[..])
        .unwrap();
    let foreign = foreign.into_inner().unwrap();

    for (name, bytes, says) in [
        ("flipped", flipped, "damaged in the backup"),
        ("truncated", truncated, ""),
        ("at_boundary", at_boundary, "the backup ends early"),
        ("foreign", foreign, "not a kernex backup"),
    ] {
        let file = scratch.path().join(format!("{name}.tar"));
        std::fs::write(&file, bytes).unwrap();
        let target = scratch.path().join(format!("restored-{name}"));
        let e = restore_data_dir(&file, &target).unwrap_err().to_string();
        assert!(e.contains(says), "{name}: {e}");
        assert!(
            !target.exists(),
            "{name}: a failed restore left {target:?} behind"
        );
    }
}

#[tokio::test]
async fn every_snapshot_taken_under_concurrent_writes_is_consistent() {
    let app = std::sync::Arc::new(TestApp::new());
    let devices = [app.device().await, app.device().await, app.device().await];
    app.bundle("1.0.0").await;
    let writer = {
        let app = app.clone();
        tokio::spawn(async move {
            for round in 0..12 {
                let refs: Vec<&Device> = devices.iter().collect();
                let dep = app.deploy("1.0.0", &refs).await;
                let id = dep["id"].as_str().unwrap().to_owned();
                for (i, dev) in devices.iter().enumerate() {
                    app.heartbeat(dev, None, None).await.expect(StatusCode::OK);
                    let status = if (i + round) % 2 == 0 {
                        "success"
                    } else {
                        "failed"
                    };
                    app.result(
                        dev,
                        &id,
                        json!({"device_id": dev.id, "status": status, "report_id": format!("{id}-{i}")}),
                    )
                    .await
                    .expect(StatusCode::OK);
                }
            }
        })
    };
    let scratch = tempfile::tempdir().unwrap();
    let mut snapshots = 0;
    while !writer.is_finished() || snapshots < 2 {
        let file = scratch.path().join(format!("s{snapshots}.tar"));
        http_backup(&app, &file).await;
        let dir = scratch.path().join(format!("d{snapshots}"));
        restore_data_dir(&file, &dir).unwrap();
        // Deployment counts agree with their targets, counters with the records.
        let report = check_data_dir(&dir).unwrap();
        assert!(
            report.sound(),
            "snapshot {snapshots}: {:?}",
            report.problems
        );
        snapshots += 1;
    }
    writer.await.unwrap();
}
