//! Bundles, deployments, results, bundle history and rollback through the HTTP API
//! (SPEC §1.4–§1.6): the prototype's scenarios, the upload safety rules, byte-exact and
//! ranged downloads, deployment status aggregation, the heartbeat command rules, progress
//! reports and idempotent results (also under concurrency).
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use kernex_common::bundle::testing::EntryType;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::*;

// ------------------------------------------------------------------------ helpers

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn s(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

/// Every regular file under `dir`, as sorted paths relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                walk(root, &e.path(), out);
            } else {
                let rel = e.path().strip_prefix(root).unwrap().to_owned();
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Every file under `<data_dir>/bundles/` (an empty `tmp/` dir is not listed).
fn bundle_files(app: &TestApp) -> Vec<String> {
    files_under(&app.data_dir().join("bundles"))
}

fn archive_file(app: &TestApp, bundle_id: &str) -> std::path::PathBuf {
    app.data_dir()
        .join("bundles")
        .join(format!("{bundle_id}.tar.gz"))
}

async fn list_bundles(app: &TestApp) -> Value {
    app.get("/api/v1/bundles").await.expect(StatusCode::OK)
}

async fn deployment(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/api/v1/deployments/{id}"))
        .await
        .expect(StatusCode::OK)
}

async fn device_json(app: &TestApp, dev: &Device) -> Value {
    app.get(&format!("/api/v1/devices/{}", dev.id))
        .await
        .expect(StatusCode::OK)
}

async fn history(app: &TestApp, dev: &Device, query: &str) -> Vec<Value> {
    app.get(&format!("/api/v1/devices/{}/bundle-history{query}", dev.id))
        .await
        .expect(StatusCode::OK)
        .as_array()
        .unwrap()
        .clone()
}

/// The per-device entry of a deployment.
fn target<'v>(dep: &'v Value, device_id: &str) -> &'v Value {
    dep["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["device_id"] == device_id)
        .unwrap_or_else(|| panic!("{device_id} is not a target of {dep}"))
}

/// The counts of a deployment without a rollout: SPEC §6's `waiting` and `timed_out`
/// are there, and zero.
fn counts(pending: u64, in_progress: u64, success: u64, failed: u64, cancelled: u64) -> Value {
    json!({"pending": pending, "in_progress": in_progress, "success": success,
           "failed": failed, "cancelled": cancelled, "waiting": 0, "timed_out": 0})
}

fn sorted_ids(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| s(x).to_owned())
        .collect();
    ids.sort();
    ids
}

fn report(dev: &Device, status: &str, report_id: &str) -> Value {
    json!({"device_id": dev.id, "status": status, "report_id": report_id})
}

/// Heartbeat having acknowledged config version 1 (so no `configure` command is due):
/// the commands are exactly the deploy/rollback ones.
async fn bundle_commands(app: &TestApp, dev: &Device) -> Vec<Value> {
    let hb = app
        .heartbeat(dev, None, Some(1))
        .await
        .expect(StatusCode::OK);
    hb["commands"].as_array().unwrap().clone()
}

/// Deliver the deployment in a heartbeat and report success.
async fn deliver_and_succeed(app: &TestApp, dev: &Device, dep_id: &str, report_id: &str) {
    let cmds = bundle_commands(app, dev).await;
    assert_eq!(cmds.len(), 1, "{cmds:?}");
    assert_eq!(cmds[0]["deployment_id"], dep_id);
    app.result(dev, dep_id, report(dev, "success", report_id))
        .await
        .expect(StatusCode::OK);
}

/// Deploy `version` to `dev` and complete it successfully; returns the deployment id.
async fn deploy_ok(app: &TestApp, dev: &Device, version: &str) -> String {
    let dep = app.deploy(version, &[dev]).await;
    let id = s(&dep["id"]).to_owned();
    deliver_and_succeed(app, dev, &id, &format!("ok-{id}")).await;
    id
}

async fn set_tags(app: &TestApp, dev: &Device, tags: &[&str]) {
    app.patch(
        &format!("/api/v1/devices/{}", dev.id),
        json!({ "tags": tags }),
    )
    .await
    .expect(StatusCode::OK);
}

async fn download(app: &TestApp, id: &str, token: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = Request::builder()
        .method(Method::GET)
        .uri(format!("/api/v1/bundles/{id}"))
        .header("authorization", format!("Bearer {token}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    app.send(b.body(Body::empty()).unwrap()).await
}

#[track_caller]
fn header<'r>(r: &'r Resp, name: &str) -> &'r str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {:?}", r.headers))
        .to_str()
        .unwrap()
}

async fn progress(app: &TestApp, token: &str, dep_id: &str, body: Value) -> Resp {
    app.call(
        Method::POST,
        &format!("/api/v1/deployments/{dep_id}/progress"),
        Some(token),
        Some(body),
    )
    .await
}

/// POST /bundles with a raw body and content type, as `token`.
async fn upload_raw(app: &TestApp, token: &str, content_type: &str, body: Vec<u8>) -> Resp {
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/bundles")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", content_type)
        .body(Body::from(body))
        .unwrap();
    app.send(req).await
}

// ----------------------------------------------------------- hand-built archives

use kernex_common::bundle::testing::{RawEntry as Raw, raw_archive as build_raw};

fn raw_file<'a>(name: &'a str, data: &'a [u8]) -> Raw<'a> {
    Raw::file(name, data)
}

fn raw_entry<'a>(kind: EntryType, name: &'a str, link: Option<&'a str>) -> Raw<'a> {
    Raw::of(kind, name, link)
}

const RAW_MANIFEST: &[u8] = br#"{"name":"raw","version":"7.0.0","deploy":{"script":"deploy.sh"},"health":{"script":"health.sh"}}"#;

fn raw_archive(entries: &[Raw<'_>]) -> Vec<u8> {
    build_raw(entries).unwrap()
}

fn good_raw<'a>() -> Vec<Raw<'a>> {
    vec![
        raw_file("./manifest.json", RAW_MANIFEST),
        raw_file("./deploy.sh", b"#!/bin/sh\necho deployed\n"),
        raw_file("./health.sh", b"#!/bin/sh\nexit 0\n"),
    ]
}

fn with_extra(extra: Raw<'_>) -> Vec<u8> {
    let mut e = good_raw();
    e.push(extra);
    raw_archive(&e)
}

/// Upload `archive`; expect 400 with a message containing every one of `needles`
/// (case-insensitive), and no trace of it: the bundle list and the files under
/// `<data_dir>/bundles/` are what they were.
async fn refused(app: &TestApp, archive: &[u8], manifest: Option<&str>, needles: &[&str]) {
    let before_list = list_bundles(app).await;
    let before_files = bundle_files(app);
    let r = app.upload(archive, manifest).await;
    let v = r.expect(StatusCode::BAD_REQUEST);
    assert_eq!(v["error"], "bad_request");
    let msg = s(&v["message"]).to_lowercase();
    for n in needles {
        assert!(
            msg.contains(&n.to_lowercase()),
            "message {msg:?} should name the problem ({n:?})"
        );
    }
    assert_eq!(list_bundles(app).await, before_list, "a record was stored");
    assert_eq!(bundle_files(app), before_files, "a file was left behind");
}

/// A server holding one good bundle (so "unchanged" is checked against a non-empty list).
async fn app_with_one_bundle() -> TestApp {
    let app = TestApp::new();
    app.bundle("1.0.0").await;
    assert_eq!(bundle_files(&app).len(), 1);
    app
}

// ------------------------------------------------------------- prototype scenarios

#[tokio::test]
async fn test_upload_and_list_bundle() {
    let app = TestApp::new();
    let bytes = bundle_bytes("app", "1.0.0");
    let b1 = app.upload(&bytes, None).await.expect(StatusCode::CREATED);
    assert_eq!(b1["name"], "app");
    assert_eq!(b1["version"], "1.0.0");
    assert_eq!(b1["checksum_sha256"], sha256_hex(&bytes));
    assert_eq!(b1["size_bytes"], bytes.len() as u64);
    assert_eq!(b1["manifest"]["version"], "1.0.0");
    assert_eq!(b1["manifest"]["deploy"]["script"], "deploy.sh");
    assert_eq!(b1["manifest"]["rollback"]["script"], "rollback.sh");
    assert!(b1["created_at"].is_string());
    let id1 = s(&b1["id"]).to_owned();
    assert!(archive_file(&app, &id1).is_file());

    let b2 = app.bundle("2.0.0").await;
    let list = list_bundles(&app).await;
    let versions: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| s(&b["version"]))
        .collect();
    assert_eq!(versions, ["2.0.0", "1.0.0"], "newest first");
    assert_eq!(list[1], b1);
    assert_eq!(list[0], b2);

    let info = app
        .get(&format!("/api/v1/bundles/{id1}/info"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(info, b1);
    let r = app.get("/api/v1/bundles/nope/info").await;
    r.expect(StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "not_found");
}

#[tokio::test]
async fn test_download_bundle_endpoint_returns_file() {
    let app = TestApp::new();
    let bytes = bundle_bytes("app", "1.0.0");
    let info = app.upload(&bytes, None).await.expect(StatusCode::CREATED);
    let sha = sha256_hex(&bytes);
    assert_eq!(info["checksum_sha256"], sha);

    // Accept-Encoding must not make the server re-compress anything.
    let r = download(
        &app,
        s(&info["id"]),
        ADMIN,
        &[("accept-encoding", "gzip, br")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body == bytes, "downloaded bytes differ from the upload");
    assert_eq!(header(&r, "content-type"), "application/gzip");
    assert_eq!(header(&r, "content-length"), bytes.len().to_string());
    assert_eq!(header(&r, "etag"), format!("\"{sha}\""));
    assert_eq!(header(&r, "accept-ranges"), "bytes");
    assert!(r.headers.get("content-encoding").is_none());
    assert_eq!(sha256_hex(&r.body), sha);
}

#[tokio::test]
async fn test_deployment_with_bundle_includes_bundle_id_in_command() {
    let app = TestApp::new();
    let dev = app.device().await;
    let bytes = bundle_bytes("app", "1.2.0");
    let b = app.upload(&bytes, None).await.expect(StatusCode::CREATED);
    let dep = app.deploy("1.2.0", &[&dev]).await;
    assert_eq!(dep["kind"], "deploy");
    assert_eq!(dep["bundle_id"], b["id"]);
    assert_eq!(dep["bundle_version"], "1.2.0");

    let cmds = bundle_commands(&app, &dev).await;
    assert_eq!(
        cmds,
        [json!({
            "type": "deploy",
            "deployment_id": dep["id"],
            "bundle_id": b["id"],
            "bundle_version": "1.2.0",
            "checksum_sha256": sha256_hex(&bytes),
            "size_bytes": bytes.len() as u64,
        })]
    );
}

#[tokio::test]
async fn test_heartbeat_with_pending_deployment() {
    let app = TestApp::new();
    let dev = app.device().await;
    app.bundle("1.0.0").await;
    let dep = app.deploy("1.0.0", &[&dev]).await;
    let dep_id = s(&dep["id"]);
    assert_eq!(dep["status"], "pending");
    assert_eq!(dep["counts"], counts(1, 0, 0, 0, 0));
    assert_eq!(target(&dep, &dev.id)["status"], "pending");

    // A device that has not acknowledged any config gets configure too, after the deploy.
    let hb = app.heartbeat(&dev, None, None).await.expect(StatusCode::OK);
    assert_eq!(hb["admission"], "accepted");
    assert!(hb["server_time"].is_string());
    let cmds = hb["commands"].as_array().unwrap();
    assert_eq!(cmds.len(), 2, "{cmds:?}");
    assert_eq!(cmds[0]["type"], "deploy");
    assert_eq!(cmds[0]["deployment_id"], dep_id);
    assert_eq!(cmds[1]["type"], "configure");
    assert_eq!(cmds[1]["config_version"], 1);

    let d = deployment(&app, dep_id).await;
    assert_eq!(d["status"], "in_progress");
    assert_eq!(d["counts"], counts(0, 1, 0, 0, 0));
    assert_eq!(target(&d, &dev.id)["status"], "in_progress");
    assert!(d["completed_at"].is_null());
}

#[tokio::test]
async fn test_deployment_result_success_updates_status() {
    let app = TestApp::new();
    let dev = app.device().await;
    app.bundle("1.0.0").await;
    let dep = app.deploy("1.0.0", &[&dev]).await;
    let dep_id = s(&dep["id"]);
    bundle_commands(&app, &dev).await;

    let r = app
        .result(
            &dev,
            dep_id,
            json!({"device_id": dev.id, "status": "success", "report_id": "r-1",
                   "duration_seconds": 4.2, "log_tail": "deployed ok\n"}),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(r["device_id"], dev.id.as_str());
    assert_eq!(r["status"], "success");
    assert_eq!(r["log_tail"], "deployed ok\n");

    let d = deployment(&app, dep_id).await;
    assert_eq!(d["status"], "success");
    assert_eq!(d["counts"], counts(0, 0, 1, 0, 0));
    assert!(d["completed_at"].is_string());
    let t = target(&d, &dev.id);
    assert_eq!(t["status"], "success");
    assert_eq!(t["log_tail"], "deployed ok\n");
    assert!(t["error_message"].is_null());
    assert_eq!(
        device_json(&app, &dev).await["current_bundle_version"],
        "1.0.0"
    );

    // Delivered and finished: no more commands for it.
    assert!(bundle_commands(&app, &dev).await.is_empty());
}

#[tokio::test]
async fn test_deployment_result_failure_with_error_message() {
    let app = TestApp::new();
    let dev = app.device().await;
    app.bundle("1.0.0").await;
    let dep = app.deploy("1.0.0", &[&dev]).await;
    let dep_id = s(&dep["id"]);
    bundle_commands(&app, &dev).await;

    let r = app
        .result(
            &dev,
            dep_id,
            json!({"device_id": dev.id, "status": "failed", "report_id": "r-1",
                   "error_message": "deploy.sh exited with status 3",
                   "log_tail": "step 1\nboom\n", "duration_seconds": 1.5}),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(r["status"], "failed");
    assert_eq!(r["error_message"], "deploy.sh exited with status 3");

    let d = deployment(&app, dep_id).await;
    assert_eq!(d["status"], "failed");
    assert_eq!(d["counts"], counts(0, 0, 0, 1, 0));
    assert!(d["completed_at"].is_string());
    let t = target(&d, &dev.id);
    assert_eq!(t["status"], "failed");
    assert_eq!(t["error_message"], "deploy.sh exited with status 3");
    assert_eq!(t["log_tail"], "step 1\nboom\n");
    // Failed without rolled_back_to: the device's version is unchanged (none yet).
    assert!(device_json(&app, &dev).await["current_bundle_version"].is_null());

    let h = history(&app, &dev, "").await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["status"], "failed");
    assert_eq!(h[0]["error_message"], "deploy.sh exited with status 3");
    assert_eq!(h[0]["log_tail"], "step 1\nboom\n");
    assert!(h[0]["rolled_back_to"].is_null());
}

#[tokio::test]
async fn test_deployment_result_rejects_non_target_device() {
    let app = TestApp::new();
    let dev = app.device().await;
    let other = app.device().await;
    app.bundle("1.0.0").await;
    let dep = app.deploy("1.0.0", &[&dev]).await;
    let dep_id = s(&dep["id"]);

    let r = app
        .result(&other, dep_id, report(&other, "success", "r-x"))
        .await;
    r.expect(StatusCode::FORBIDDEN);
    assert_eq!(r.code(), "forbidden");
    // The non-target naming the real target in the body is refused just the same.
    let r = app
        .result(&other, dep_id, report(&dev, "success", "r-y"))
        .await;
    r.expect(StatusCode::FORBIDDEN);
    // So is an operator token.
    let r = app
        .call(
            Method::POST,
            &format!("/api/v1/deployments/{dep_id}/result"),
            Some(ADMIN),
            Some(report(&dev, "success", "r-z")),
        )
        .await;
    r.expect(StatusCode::FORBIDDEN);

    let d = deployment(&app, dep_id).await;
    assert_eq!(d["status"], "pending");
    assert_eq!(d["counts"], counts(1, 0, 0, 0, 0));
    assert!(history(&app, &dev, "").await.is_empty());
    assert!(history(&app, &other, "").await.is_empty());
    assert!(device_json(&app, &other).await["current_bundle_version"].is_null());
}

#[tokio::test]
async fn test_deployment_result_invalid_status() {
    let app = TestApp::new();
    let dev = app.device().await;
    app.bundle("1.0.0").await;
    let dep = app.deploy("1.0.0", &[&dev]).await;
    let dep_id = s(&dep["id"]);
    bundle_commands(&app, &dev).await;

    for bad in [
        report(&dev, "done", "r-1"),
        report(&dev, "SUCCESS", "r-2"),
        report(&dev, "in_progress", "r-3"),
        json!({"device_id": dev.id, "report_id": "r-4"}),
        json!({"device_id": dev.id, "status": 1, "report_id": "r-5"}),
    ] {
        let r = app.result(&dev, dep_id, bad.clone()).await;
        r.expect(StatusCode::BAD_REQUEST);
        assert_eq!(r.code(), "bad_request", "{bad}");
    }
    let d = deployment(&app, dep_id).await;
    assert_eq!(d["status"], "in_progress");
    assert_eq!(d["counts"], counts(0, 1, 0, 0, 0));
    assert!(history(&app, &dev, "").await.is_empty());

    // A valid report is still taken afterwards (none of the report ids was consumed).
    app.result(&dev, dep_id, report(&dev, "success", "r-1"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(deployment(&app, dep_id).await["status"], "success");
}

#[tokio::test]
async fn test_bundle_history_tracking() {
    let app = TestApp::new();
    let dev = app.device().await;
    let other = app.device().await;
    let b1 = app.bundle("1.0.0").await;
    let b2 = app.bundle("2.0.0").await;

    let dep1 = app.deploy("1.0.0", &[&dev]).await;
    let dep1_id = s(&dep1["id"]);
    bundle_commands(&app, &dev).await;
    app.result(
        &dev,
        dep1_id,
        json!({"device_id": dev.id, "status": "success", "report_id": "h-1",
               "duration_seconds": 4.2, "log_tail": "v1 up"}),
    )
    .await
    .expect(StatusCode::OK);

    let dep2 = app.deploy("2.0.0", &[&dev]).await;
    let dep2_id = s(&dep2["id"]);
    bundle_commands(&app, &dev).await;
    app.result(
        &dev,
        dep2_id,
        json!({"device_id": dev.id, "status": "failed", "report_id": "h-2",
               "error_message": "health check failed", "log_tail": "v2 down",
               "duration_seconds": 9.0, "rolled_back_to": "1.0.0"}),
    )
    .await
    .expect(StatusCode::OK);

    let h = history(&app, &dev, "").await;
    assert_eq!(h.len(), 2);
    let (newest, oldest) = (&h[0], &h[1]);
    assert_eq!(newest["device_id"], dev.id.as_str());
    assert_eq!(newest["deployment_id"], dep2_id);
    assert_eq!(newest["kind"], "deploy");
    assert_eq!(newest["bundle_id"], b2["id"]);
    assert_eq!(newest["bundle_version"], "2.0.0");
    assert_eq!(newest["status"], "failed");
    assert_eq!(newest["error_message"], "health check failed");
    assert_eq!(newest["log_tail"], "v2 down");
    assert_eq!(newest["rolled_back_to"], "1.0.0");
    assert_eq!(newest["duration_seconds"], 9.0);
    assert!(newest["deployed_at"].is_string());
    assert!(newest["id"].is_string());

    assert_eq!(oldest["deployment_id"], dep1_id);
    assert_eq!(oldest["bundle_id"], b1["id"]);
    assert_eq!(oldest["bundle_version"], "1.0.0");
    assert_eq!(oldest["status"], "success");
    assert!(oldest["error_message"].is_null());
    assert_eq!(oldest["log_tail"], "v1 up");
    assert!(oldest["rolled_back_to"].is_null());
    assert_eq!(oldest["duration_seconds"], 4.2);
    assert_ne!(oldest["id"], newest["id"]);

    // The device itself may read its history; another device may not.
    let own = app
        .call(
            Method::GET,
            &format!("/api/v1/devices/{}/bundle-history", dev.id),
            Some(&dev.token),
            None,
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(own.as_array().unwrap().len(), 2);
    let r = app
        .call(
            Method::GET,
            &format!("/api/v1/devices/{}/bundle-history", dev.id),
            Some(&other.token),
            None,
        )
        .await;
    r.expect(StatusCode::FORBIDDEN);
    app.get("/api/v1/devices/nope/bundle-history")
        .await
        .expect(StatusCode::NOT_FOUND);
    assert!(history(&app, &other, "").await.is_empty());
}

#[tokio::test]
async fn test_bundle_history_order() {
    let app = TestApp::new();
    let dev = app.device().await;
    let versions = ["1.0.0", "1.1.0", "1.2.0", "2.0.0", "2.1.0"];
    let mut dep_ids = Vec::new();
    for v in versions {
        app.bundle(v).await;
        dep_ids.push(deploy_ok(&app, &dev, v).await);
    }

    let h = history(&app, &dev, "").await;
    let got: Vec<&str> = h.iter().map(|r| s(&r["bundle_version"])).collect();
    assert_eq!(got, ["2.1.0", "2.0.0", "1.2.0", "1.1.0", "1.0.0"]);
    let got_deps: Vec<&str> = h.iter().map(|r| s(&r["deployment_id"])).collect();
    let mut want: Vec<&str> = dep_ids.iter().map(String::as_str).collect();
    want.reverse();
    assert_eq!(got_deps, want);

    let h = history(&app, &dev, "?limit=2").await;
    let got: Vec<&str> = h.iter().map(|r| s(&r["bundle_version"])).collect();
    assert_eq!(got, ["2.1.0", "2.0.0"]);
    let h = history(&app, &dev, "?limit=100").await;
    assert_eq!(h.len(), 5);

    for bad in ["?limit=0", "?limit=101", "?limit=abc"] {
        app.get(&format!("/api/v1/devices/{}/bundle-history{bad}", dev.id))
            .await
            .expect(StatusCode::BAD_REQUEST);
    }

    // The default page is 20 records, newest first.
    let mut more = Vec::new();
    for _ in 0..17 {
        more.push(deploy_ok(&app, &dev, "1.0.0").await);
    }
    let h = history(&app, &dev, "").await;
    assert_eq!(h.len(), 20);
    assert_eq!(h[0]["deployment_id"], more[16].as_str());
    assert_eq!(h[16]["deployment_id"], more[0].as_str());
    assert_eq!(h[17]["bundle_version"], "2.1.0");
    assert_eq!(h[19]["bundle_version"], "1.2.0");
    assert_eq!(history(&app, &dev, "?limit=100").await.len(), 22);
}

#[tokio::test]
async fn test_rollback_to_previous_version() {
    let app = TestApp::new();
    let dev = app.device().await;
    let v1_bytes = bundle_bytes("app", "1.0.0");
    let b1 = app
        .upload(&v1_bytes, None)
        .await
        .expect(StatusCode::CREATED);
    app.bundle("2.0.0").await;
    deploy_ok(&app, &dev, "1.0.0").await;
    deploy_ok(&app, &dev, "2.0.0").await;
    assert_eq!(
        device_json(&app, &dev).await["current_bundle_version"],
        "2.0.0"
    );

    let rb = app
        .post(
            "/api/v1/devices/rollback",
            json!({"bundle_version": "1.0.0", "target_device_ids": [dev.id]}),
        )
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(rb["kind"], "rollback");
    assert_eq!(rb["bundle_version"], "1.0.0");
    assert_eq!(rb["bundle_id"], b1["id"]);
    assert_eq!(rb["status"], "pending");
    assert_eq!(rb["target_device_ids"], json!([dev.id]));
    assert_eq!(rb["counts"], counts(1, 0, 0, 0, 0));
    let rb_id = s(&rb["id"]);

    let cmds = bundle_commands(&app, &dev).await;
    assert_eq!(
        cmds,
        [json!({
            "type": "rollback",
            "deployment_id": rb_id,
            "bundle_id": b1["id"],
            "bundle_version": "1.0.0",
            "checksum_sha256": sha256_hex(&v1_bytes),
            "size_bytes": v1_bytes.len() as u64,
        })]
    );
    assert_eq!(deployment(&app, rb_id).await["status"], "in_progress");
    // The device may fetch the rollback's bundle.
    let r = download(&app, s(&b1["id"]), &dev.token, &[]).await;
    assert_eq!(r.status, StatusCode::OK);

    app.result(&dev, rb_id, report(&dev, "success", "rb-1"))
        .await
        .expect(StatusCode::OK);
    let d = deployment(&app, rb_id).await;
    assert_eq!(d["status"], "success");
    assert_eq!(d["kind"], "rollback");
    assert_eq!(
        device_json(&app, &dev).await["current_bundle_version"],
        "1.0.0"
    );

    let h = history(&app, &dev, "").await;
    assert_eq!(h.len(), 3);
    assert_eq!(h[0]["kind"], "rollback");
    assert_eq!(h[0]["bundle_version"], "1.0.0");
    assert_eq!(h[0]["status"], "success");
    assert_eq!(h[0]["deployment_id"], rb_id);
    assert_eq!(h[1]["kind"], "deploy");
    assert_eq!(h[1]["bundle_version"], "2.0.0");

    let listed = app.get("/api/v1/deployments").await.expect(StatusCode::OK);
    assert_eq!(listed[0]["id"], rb_id);
    assert_eq!(listed[0]["kind"], "rollback");
}

#[tokio::test]
async fn test_rollback_requires_successful_history() {
    let app = TestApp::new();
    let dev = app.device().await;
    let fresh = app.device().await;
    app.bundle("1.0.0").await;
    app.bundle("2.0.0").await;
    // 1.0.0 failed on `dev`, 2.0.0 succeeded.
    let dep = app.deploy("1.0.0", &[&dev]).await;
    bundle_commands(&app, &dev).await;
    app.result(&dev, s(&dep["id"]), report(&dev, "failed", "f-1"))
        .await
        .expect(StatusCode::OK);
    deploy_ok(&app, &dev, "2.0.0").await;
    let before = app.get("/api/v1/deployments").await.expect(StatusCode::OK);

    for ids in [
        vec![dev.id.as_str()],
        vec![fresh.id.as_str()],
        vec![fresh.id.as_str(), dev.id.as_str()],
    ] {
        let r = app
            .post(
                "/api/v1/devices/rollback",
                json!({"bundle_version": "1.0.0", "target_device_ids": ids}),
            )
            .await;
        let v = r.expect(StatusCode::BAD_REQUEST);
        assert_eq!(v["error"], "bad_request");
    }
    // One device that ran 2.0.0 and one that never did: refused as a whole.
    let r = app
        .post(
            "/api/v1/devices/rollback",
            json!({"bundle_version": "2.0.0", "target_device_ids": [dev.id, fresh.id]}),
        )
        .await;
    r.expect(StatusCode::BAD_REQUEST);
    assert_eq!(
        app.get("/api/v1/deployments").await.expect(StatusCode::OK),
        before,
        "no rollback deployment may be created"
    );
    assert!(bundle_commands(&app, &dev).await.is_empty());

    // Rolling back to the version it did run is fine.
    let rb = app
        .post(
            "/api/v1/devices/rollback",
            json!({"bundle_version": "2.0.0", "target_device_ids": [dev.id]}),
        )
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(rb["kind"], "rollback");
}

#[tokio::test]
async fn test_rollback_nonexistent_bundle() {
    let app = TestApp::new();
    let dev = app.device().await;
    app.bundle("1.0.0").await;
    deploy_ok(&app, &dev, "1.0.0").await;
    let before = app.get("/api/v1/deployments").await.expect(StatusCode::OK);

    for body in [
        json!({"bundle_version": "9.9.9", "target_device_ids": [dev.id]}),
        json!({"bundle_version": "1.0.0", "target_device_ids": ["no-such-device"]}),
        json!({"bundle_version": "1.0.0", "target_device_ids": []}),
        json!({"target_device_ids": [dev.id]}),
    ] {
        let r = app.post("/api/v1/devices/rollback", body.clone()).await;
        r.expect(StatusCode::BAD_REQUEST);
        assert_eq!(r.code(), "bad_request", "{body}");
    }
    let r = app
        .call(
            Method::POST,
            "/api/v1/devices/rollback",
            Some(&dev.token),
            Some(json!({"bundle_version": "1.0.0", "target_device_ids": [dev.id]})),
        )
        .await;
    r.expect(StatusCode::FORBIDDEN);
    assert_eq!(
        app.get("/api/v1/deployments").await.expect(StatusCode::OK),
        before
    );
}

/// Every named target is checked (in one store round trip): an unknown id, an id no
/// store can hold, or a device not accepted refuses the whole deployment, naming it.
#[tokio::test]
async fn deployment_targets_must_all_be_accepted_devices() {
    let app = TestApp::new();
    let dev = app.device().await;
    let pending = app.pending_device().await;
    app.bundle("1.0.0").await;
    for (bad, said) in [
        ("no-such-device", "no device \"no-such-device\""),
        ("nul\u{0}id", "no device"),
        (pending.id.as_str(), "is pending, not accepted"),
    ] {
        let body = json!({"bundle_version": "1.0.0", "target_device_ids": [dev.id, bad]});
        let r = app.post("/api/v1/deployments", body).await;
        r.expect(StatusCode::BAD_REQUEST);
        let message = r.json()["message"].as_str().unwrap_or_default().to_owned();
        assert!(message.contains(said), "{bad:?}: {message}");
    }
    let listed = app.get("/api/v1/deployments").await.expect(StatusCode::OK);
    assert_eq!(listed, json!([]), "a refused deployment leaves nothing");
    deploy_ok(&app, &dev, "1.0.0").await;
}

#[tokio::test]
async fn test_device_status_from_deployment_result() {
    let app = TestApp::new();
    let dev = app.device().await;
    app.bundle("1.0.0").await;
    app.bundle("2.0.0").await;
    assert!(device_json(&app, &dev).await["current_bundle_version"].is_null());

    deploy_ok(&app, &dev, "1.0.0").await;
    let d = device_json(&app, &dev).await;
    assert_eq!(d["current_bundle_version"], "1.0.0");
    let list = app.get("/api/v1/devices").await.expect(StatusCode::OK);
    let summary = list
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["device_id"] == dev.id.as_str())
        .unwrap();
    assert_eq!(summary["current_bundle_version"], "1.0.0");

    // A failed 2.0.0 without rollback information leaves the device on 1.0.0.
    let dep = app.deploy("2.0.0", &[&dev]).await;
    bundle_commands(&app, &dev).await;
    app.result(&dev, s(&dep["id"]), report(&dev, "failed", "f-2"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        device_json(&app, &dev).await["current_bundle_version"],
        "1.0.0"
    );
}

// ------------------------------------------------------------------- upload rules

#[tokio::test]
async fn upload_duplicate_version_is_409() {
    let app = app_with_one_bundle().await;
    let before_list = list_bundles(&app).await;
    let before_files = bundle_files(&app);
    // Same version, different content (another name): still a duplicate.
    for bytes in [bundle_bytes("app", "1.0.0"), bundle_bytes("other", "1.0.0")] {
        let r = app.upload(&bytes, None).await;
        r.expect(StatusCode::CONFLICT);
        assert_eq!(r.code(), "conflict");
        assert!(r.json()["message"].as_str().unwrap().contains("1.0.0"));
    }
    assert_eq!(list_bundles(&app).await, before_list);
    assert_eq!(bundle_files(&app), before_files);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_of_one_version_store_one_bundle() {
    let app = Arc::new(TestApp::new());
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let app = Arc::clone(&app);
            tokio::spawn(async move {
                let bytes = bundle_bytes(&format!("app{i}"), "1.0.0");
                app.upload(&bytes, None).await
            })
        })
        .collect();
    let mut created = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        if r.status == StatusCode::CREATED {
            created.push(r.json());
        } else {
            r.expect(StatusCode::CONFLICT);
        }
    }
    assert_eq!(created.len(), 1, "exactly one upload of 1.0.0 wins");
    assert_eq!(list_bundles(&app).await, json!([created[0]]));
    assert_eq!(
        bundle_files(&app),
        [format!("{}.tar.gz", s(&created[0]["id"]))]
    );
}

#[tokio::test]
async fn upload_over_limit_is_413_and_leaves_nothing() {
    let app = TestApp::with(|s| s.max_bundle_size = 64 * 1024);
    let payload = noise(200 * 1024, 42);
    let mut entries = good_raw();
    entries.push(raw_file("payload.bin", &payload));
    let big = raw_archive(&entries);
    assert!(big.len() > 150 * 1024, "noise must not compress away");

    let r = app.upload(&big, None).await;
    let v = r.expect(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["error"], "payload_too_large");
    assert_eq!(list_bundles(&app).await, json!([]));
    assert_eq!(
        bundle_files(&app),
        Vec::<String>::new(),
        "a partial upload was left on disk"
    );
    let entries: Vec<String> = std::fs::read_dir(app.data_dir().join("bundles"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        entries.iter().all(|n| n == "tmp"),
        "unexpected entries {entries:?}"
    );

    // A bundle under the limit still goes through.
    let small = raw_archive(&good_raw());
    app.upload(&small, None).await.expect(StatusCode::CREATED);
    assert_eq!(bundle_files(&app).len(), 1);
}

#[tokio::test]
async fn upload_of_a_hand_built_good_archive_is_accepted() {
    // Control for the hostile cases below: the raw builder itself makes valid bundles.
    let app = TestApp::new();
    let v = app
        .upload(&raw_archive(&good_raw()), None)
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(v["version"], "7.0.0");
    // A link that stays inside the bundle is fine too.
    let app = TestApp::new();
    app.upload(
        &with_extra(raw_entry(
            EntryType::Symlink,
            "current",
            Some("./deploy.sh"),
        )),
        None,
    )
    .await
    .expect(StatusCode::CREATED);
}

#[tokio::test]
async fn upload_refuses_absolute_path() {
    let app = app_with_one_bundle().await;
    refused(
        &app,
        &with_extra(raw_file("/etc/evil", b"x")),
        None,
        &["absolute path", "/etc/evil"],
    )
    .await;
}

#[tokio::test]
async fn upload_refuses_dotdot_component() {
    let app = app_with_one_bundle().await;
    refused(
        &app,
        &with_extra(raw_file("sub/../../evil", b"x")),
        None,
        &["'..'", "sub/../../evil"],
    )
    .await;
    refused(
        &app,
        &with_extra(raw_file("../evil", b"x")),
        None,
        &["'..'"],
    )
    .await;
}

#[tokio::test]
async fn upload_refuses_symlink_escaping() {
    let app = app_with_one_bundle().await;
    refused(
        &app,
        &with_extra(raw_entry(
            EntryType::Symlink,
            "lib/escape",
            Some("../../etc/passwd"),
        )),
        None,
        &["outside the bundle"],
    )
    .await;
    refused(
        &app,
        &with_extra(raw_entry(EntryType::Symlink, "abs", Some("/etc/passwd"))),
        None,
        &["absolute"],
    )
    .await;
    refused(
        &app,
        &with_extra(raw_entry(EntryType::Link, "hard", Some("../../etc/passwd"))),
        None,
        &["outside the bundle"],
    )
    .await;
}

#[tokio::test]
async fn upload_refuses_device_nodes_and_fifos() {
    let app = app_with_one_bundle().await;
    refused(
        &app,
        &with_extra(raw_entry(EntryType::Char, "dev/null", None)),
        None,
        &["device node"],
    )
    .await;
    refused(
        &app,
        &with_extra(raw_entry(EntryType::Block, "dev/sda", None)),
        None,
        &["device node"],
    )
    .await;
    refused(
        &app,
        &with_extra(raw_entry(EntryType::Fifo, "pipe", None)),
        None,
        &["fifo"],
    )
    .await;
}

#[tokio::test]
async fn upload_refuses_missing_manifest() {
    let app = app_with_one_bundle().await;
    let archive = raw_archive(&[
        raw_file("./deploy.sh", b"#!/bin/sh\n"),
        raw_file("./health.sh", b"#!/bin/sh\n"),
    ]);
    refused(&app, &archive, None, &["manifest.json"]).await;
    // Not at the root does not count.
    let archive = raw_archive(&[
        raw_file("sub/manifest.json", RAW_MANIFEST),
        raw_file("./deploy.sh", b"#!/bin/sh\n"),
        raw_file("./health.sh", b"#!/bin/sh\n"),
    ]);
    refused(&app, &archive, None, &["manifest.json"]).await;
}

#[tokio::test]
async fn upload_refuses_manifest_naming_a_missing_script() {
    let app = app_with_one_bundle().await;
    let archive = raw_archive(&[
        raw_file("./manifest.json", RAW_MANIFEST),
        raw_file("./deploy.sh", b"#!/bin/sh\n"),
    ]);
    refused(&app, &archive, None, &["script", "health.sh"]).await;
    // A script that is a link, not a regular file, counts as missing.
    let archive = raw_archive(&[
        raw_file("./manifest.json", RAW_MANIFEST),
        raw_file("./real.sh", b"#!/bin/sh\n"),
        raw_entry(EntryType::Symlink, "./deploy.sh", Some("real.sh")),
        raw_file("./health.sh", b"#!/bin/sh\n"),
    ]);
    refused(&app, &archive, None, &["script", "deploy.sh"]).await;
}

#[tokio::test]
async fn upload_refuses_what_is_not_gzip() {
    let app = app_with_one_bundle().await;
    let mut zip = b"PK\x03\x04\x14\x00\x00\x00\x08\x00".to_vec();
    zip.extend_from_slice(&noise(300, 3));
    refused(&app, &zip, None, &["gzip"]).await;
    refused(
        &app,
        b"just some plain text, not an archive\n",
        None,
        &["gzip"],
    )
    .await;
    refused(&app, b"", None, &["gzip"]).await;
    // gzip magic followed by garbage: not a valid tar.gz either.
    let mut bad = vec![0x1f, 0x8b];
    bad.extend_from_slice(&noise(600, 9));
    refused(&app, &bad, None, &["tar.gz"]).await;
}

#[tokio::test]
async fn upload_refuses_invalid_manifest() {
    let app = app_with_one_bundle().await;
    let archive = raw_archive(&[
        raw_file("./manifest.json", b"{\"name\": \"app\", \"version\": "),
        raw_file("./deploy.sh", b"#!/bin/sh\n"),
    ]);
    refused(&app, &archive, None, &["manifest"]).await;
    // Valid JSON, but no deploy section.
    let archive = raw_archive(&[
        raw_file("./manifest.json", br#"{"name": "app", "version": "3.0.0"}"#),
        raw_file("./deploy.sh", b"#!/bin/sh\n"),
    ]);
    refused(&app, &archive, None, &["manifest"]).await;
    // A version with characters outside [A-Za-z0-9._+-].
    let archive = raw_archive(&[
        raw_file(
            "./manifest.json",
            br#"{"name": "app", "version": "3.0/0", "deploy": {"script": "deploy.sh"}}"#,
        ),
        raw_file("./deploy.sh", b"#!/bin/sh\n"),
    ]);
    refused(&app, &archive, None, &["version"]).await;
}

#[tokio::test]
async fn upload_manifest_part_must_match_the_archive() {
    let app = app_with_one_bundle().await;
    let bytes = bundle_bytes("app", "2.0.0");
    // What `bundle_bytes` writes, but different: another version.
    let differing = json!({
        "name": "app", "version": "2.0.1",
        "deploy": {"script": "deploy.sh", "timeout_s": 60},
        "rollback": {"script": "rollback.sh"},
        "health": {"script": "health.sh"},
    });
    refused(
        &app,
        &bytes,
        Some(&differing.to_string()),
        &["manifest", "match"],
    )
    .await;
    refused(&app, &bytes, Some("{not json"), &["manifest"]).await;

    // The same manifest, formatted differently and with keys in another order: accepted.
    let matching = json!({
        "version": "2.0.0", "name": "app",
        "health": {"script": "health.sh"},
        "rollback": {"script": "rollback.sh"},
        "deploy": {"timeout_s": 60, "script": "deploy.sh"},
    });
    let v = app
        .upload(
            &bytes,
            Some(&serde_json::to_string_pretty(&matching).unwrap()),
        )
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(v["version"], "2.0.0");
    assert_eq!(list_bundles(&app).await.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn upload_without_file_part_or_not_multipart_is_400() {
    let app = app_with_one_bundle().await;
    let before = list_bundles(&app).await;
    let before_files = bundle_files(&app);
    let boundary = "b0undary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\r\n{{}}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"notes\"\r\n\r\nhello\r\n\
         --{boundary}--\r\n"
    );
    let r = upload_raw(
        &app,
        ADMIN,
        &format!("multipart/form-data; boundary={boundary}"),
        body.into_bytes(),
    )
    .await;
    let v = r.expect(StatusCode::BAD_REQUEST);
    assert!(s(&v["message"]).contains("file"), "{v}");

    let r = upload_raw(&app, ADMIN, "application/json", b"{}".to_vec()).await;
    r.expect(StatusCode::BAD_REQUEST);
    let r = upload_raw(
        &app,
        ADMIN,
        "application/gzip",
        bundle_bytes("app", "3.0.0"),
    )
    .await;
    r.expect(StatusCode::BAD_REQUEST);

    assert_eq!(list_bundles(&app).await, before);
    assert_eq!(bundle_files(&app), before_files);
}

#[tokio::test]
async fn upload_with_device_token_is_403() {
    let app = TestApp::new();
    let dev = app.device().await;
    let (ct, body) = multipart(&bundle_bytes("app", "1.0.0"), None);
    let r = upload_raw(&app, &dev.token, &ct, body).await;
    r.expect(StatusCode::FORBIDDEN);
    assert_eq!(r.code(), "forbidden");
    let r = app
        .call(Method::GET, "/api/v1/bundles", Some(&dev.token), None)
        .await;
    r.expect(StatusCode::FORBIDDEN);
    assert_eq!(list_bundles(&app).await, json!([]));
    assert!(bundle_files(&app).is_empty());
    // No token at all: 401.
    let (ct, body) = multipart(&bundle_bytes("app", "1.0.0"), None);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/bundles")
        .header("content-type", ct)
        .body(Body::from(body))
        .unwrap();
    app.send(req).await.expect(StatusCode::UNAUTHORIZED);
}

// ----------------------------------------------------------------------- download

#[tokio::test]
async fn download_ranges() {
    let app = TestApp::new();
    let bytes = bundle_bytes("app", "1.0.0");
    let n = bytes.len();
    assert!(n > 20);
    let info = app.upload(&bytes, None).await.expect(StatusCode::CREATED);
    let id = s(&info["id"]);

    let r = download(&app, id, ADMIN, &[("range", "bytes=10-")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(&r, "content-range"),
        format!("bytes 10-{}/{n}", n - 1)
    );
    assert_eq!(header(&r, "content-length"), (n - 10).to_string());
    assert_eq!(header(&r, "content-type"), "application/gzip");
    assert!(r.body == bytes[10..], "wrong bytes for bytes=10-");

    let r = download(&app, id, ADMIN, &[("range", "bytes=5-9")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&r, "content-range"), format!("bytes 5-9/{n}"));
    assert_eq!(header(&r, "content-length"), "5");
    assert_eq!(r.body, bytes[5..10]);

    let r = download(
        &app,
        id,
        ADMIN,
        &[("range", format!("bytes={n}-").as_str())],
    )
    .await;
    let v = r.expect(StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(v["error"], "range_not_satisfiable");
    assert_eq!(header(&r, "content-range"), format!("bytes */{n}"));

    // Resuming the last byte works.
    let r = download(
        &app,
        id,
        ADMIN,
        &[("range", format!("bytes={}-", n - 1).as_str())],
    )
    .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, bytes[n - 1..]);
}

#[tokio::test]
async fn download_access_and_conditional() {
    let app = TestApp::new();
    let targeted = app.device().await;
    let bystander = app.device().await;
    let bytes = bundle_bytes("app", "1.0.0");
    let info = app.upload(&bytes, None).await.expect(StatusCode::CREATED);
    let id = s(&info["id"]);

    // Before any deployment no device may download it.
    let r = download(&app, id, &targeted.token, &[]).await;
    r.expect(StatusCode::FORBIDDEN);
    app.deploy("1.0.0", &[&targeted]).await;

    let r = download(&app, id, &bystander.token, &[]).await;
    r.expect(StatusCode::FORBIDDEN);
    assert_eq!(r.code(), "forbidden");
    let r = download(&app, id, &targeted.token, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body == bytes);
    // A device token cannot read the operator's bundle info.
    let r = app
        .call(
            Method::GET,
            &format!("/api/v1/bundles/{id}/info"),
            Some(&targeted.token),
            None,
        )
        .await;
    r.expect(StatusCode::FORBIDDEN);

    let r = download(&app, "no-such-bundle", ADMIN, &[]).await;
    r.expect(StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "not_found");
    let r = download(&app, "no-such-bundle", &bystander.token, &[]).await;
    r.expect(StatusCode::NOT_FOUND);
    download(&app, id, "bogus-token", &[])
        .await
        .expect(StatusCode::UNAUTHORIZED);

    let etag = format!("\"{}\"", sha256_hex(&bytes));
    let r = download(&app, id, ADMIN, &[("if-none-match", etag.as_str())]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());
    assert_eq!(header(&r, "etag"), etag);
    let r = download(&app, id, ADMIN, &[("if-none-match", "*")]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let r = download(&app, id, ADMIN, &[("if-none-match", "\"something-else\"")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body == bytes);
}

#[tokio::test]
async fn delete_bundle_waits_for_unfinished_deployments() {
    let app = TestApp::new();
    let dev = app.device().await;
    let b = app.bundle("1.0.0").await;
    let id = s(&b["id"]);
    let file = archive_file(&app, id);
    let dep = app.deploy("1.0.0", &[&dev]).await;

    let r = app.delete(&format!("/api/v1/bundles/{id}")).await;
    r.expect(StatusCode::CONFLICT);
    assert_eq!(r.code(), "conflict");
    assert!(file.is_file());
    assert_eq!(list_bundles(&app).await.as_array().unwrap().len(), 1);

    // Delivered but not finished: still in use.
    bundle_commands(&app, &dev).await;
    app.delete(&format!("/api/v1/bundles/{id}"))
        .await
        .expect(StatusCode::CONFLICT);

    app.result(&dev, s(&dep["id"]), report(&dev, "success", "d-1"))
        .await
        .expect(StatusCode::OK);
    app.delete(&format!("/api/v1/bundles/{id}"))
        .await
        .expect(StatusCode::NO_CONTENT);
    assert!(!file.exists(), "archive file still on disk");
    assert_eq!(list_bundles(&app).await, json!([]));
    app.get(&format!("/api/v1/bundles/{id}/info"))
        .await
        .expect(StatusCode::NOT_FOUND);
    app.delete(&format!("/api/v1/bundles/{id}"))
        .await
        .expect(StatusCode::NOT_FOUND);
    // The version is free again.
    app.bundle("1.0.0").await;
}

#[tokio::test]
async fn delete_bundle_after_cancelled_deployment() {
    let app = TestApp::new();
    let dev = app.device().await;
    let b = app.bundle("1.0.0").await;
    let id = s(&b["id"]);
    let dep = app.deploy("1.0.0", &[&dev]).await;
    app.delete(&format!("/api/v1/bundles/{id}"))
        .await
        .expect(StatusCode::CONFLICT);
    let c = app
        .post(
            &format!("/api/v1/deployments/{}/cancel", s(&dep["id"])),
            json!({}),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(c["status"], "cancelled");
    app.delete(&format!("/api/v1/bundles/{id}"))
        .await
        .expect(StatusCode::NO_CONTENT);
    assert!(!archive_file(&app, id).exists());
}

// -------------------------------------------------------------------- deployments

#[tokio::test]
async fn deployment_by_tags_takes_only_accepted_devices() {
    let app = TestApp::new();
    let berlin = app.device().await;
    let paris = app.device().await;
    let canary = app.device().await;
    let waiting = app.pending_device().await;
    set_tags(&app, &berlin, &["site:berlin", "canary"]).await;
    set_tags(&app, &paris, &["site:paris"]).await;
    set_tags(&app, &canary, &["canary"]).await;
    set_tags(&app, &waiting, &["site:berlin", "canary"]).await;
    app.bundle("1.0.0").await;

    let dep = app
        .post(
            "/api/v1/deployments",
            json!({"bundle_version": "1.0.0", "target_tags": ["site:berlin"]}),
        )
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(dep["target_device_ids"], json!([berlin.id]));
    assert_eq!(dep["devices"].as_array().unwrap().len(), 1);
    assert_eq!(dep["counts"], counts(1, 0, 0, 0, 0));

    // Union of ids and tags, each device once (berlin is named and tagged twice).
    let dep = app
        .post(
            "/api/v1/deployments",
            json!({"bundle_version": "1.0.0",
                   "target_device_ids": [paris.id, berlin.id, paris.id],
                   "target_tags": ["canary", "site:berlin", "nobody-has-this"]}),
        )
        .await
        .expect(StatusCode::CREATED);
    let mut want = vec![berlin.id.clone(), paris.id.clone(), canary.id.clone()];
    want.sort();
    assert_eq!(sorted_ids(&dep["target_device_ids"]), want);
    assert_eq!(dep["devices"].as_array().unwrap().len(), 3);
    assert_eq!(dep["counts"], counts(3, 0, 0, 0, 0));

    // By bundle_id instead of version.
    let b2 = app.bundle("2.0.0").await;
    let dep = app
        .post(
            "/api/v1/deployments",
            json!({"bundle_id": b2["id"], "target_tags": ["site:paris"]}),
        )
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(dep["bundle_version"], "2.0.0");
    assert_eq!(dep["target_device_ids"], json!([paris.id]));

    // The pending device gets nothing, and was never a target.
    let hb = app
        .heartbeat(&waiting, None, None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(hb["admission"], "pending");
    assert_eq!(hb["commands"], json!([]));
}

#[tokio::test]
async fn deployment_creation_errors_create_nothing() {
    let app = TestApp::new();
    let dev = app.device().await;
    let waiting = app.pending_device().await;
    set_tags(&app, &waiting, &["lonely"]).await;
    app.bundle("1.0.0").await;

    for body in [
        json!({"bundle_version": "9.9.9", "target_device_ids": [dev.id]}),
        json!({"bundle_id": "no-such-bundle", "target_device_ids": [dev.id]}),
        json!({"target_device_ids": [dev.id]}),
        json!({"bundle_version": "1.0.0", "target_device_ids": ["no-such-device"]}),
        json!({"bundle_version": "1.0.0", "target_device_ids": [dev.id, "no-such-device"]}),
        json!({"bundle_version": "1.0.0", "target_device_ids": [waiting.id]}),
        json!({"bundle_version": "1.0.0"}),
        json!({"bundle_version": "1.0.0", "target_device_ids": [], "target_tags": []}),
        json!({"bundle_version": "1.0.0", "target_tags": ["nobody-has-this"]}),
        json!({"bundle_version": "1.0.0", "target_tags": ["lonely"]}),
        json!({"bundle_version": "1.0.0", "target_tags": ["bad tag!"]}),
        json!({"bundle_version": "1.0.0", "target_device_ids": "not-a-list"}),
    ] {
        let r = app.post("/api/v1/deployments", body.clone()).await;
        r.expect(StatusCode::BAD_REQUEST);
        assert_eq!(r.code(), "bad_request", "{body}");
    }
    // A device token may not create one.
    let r = app
        .call(
            Method::POST,
            "/api/v1/deployments",
            Some(&dev.token),
            Some(json!({"bundle_version": "1.0.0", "target_device_ids": [dev.id]})),
        )
        .await;
    r.expect(StatusCode::FORBIDDEN);

    assert_eq!(
        app.get("/api/v1/deployments").await.expect(StatusCode::OK),
        json!([])
    );
    assert!(bundle_commands(&app, &dev).await.is_empty());
    app.get("/api/v1/deployments/no-such-deployment")
        .await
        .expect(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn deployment_status_aggregates_targets() {
    let app = TestApp::new();
    let a = app.device().await;
    let b = app.device().await;
    app.bundle("1.0.0").await;
    let dep = app.deploy("1.0.0", &[&a, &b]).await;
    let id = s(&dep["id"]);
    assert_eq!(dep["status"], "pending");
    assert_eq!(dep["counts"], counts(2, 0, 0, 0, 0));
    assert!(dep["completed_at"].is_null());

    bundle_commands(&app, &a).await;
    let d = deployment(&app, id).await;
    assert_eq!(d["status"], "in_progress");
    assert_eq!(d["counts"], counts(1, 1, 0, 0, 0));
    assert_eq!(target(&d, &a.id)["status"], "in_progress");
    assert_eq!(target(&d, &b.id)["status"], "pending");

    app.result(&a, id, report(&a, "success", "a-1"))
        .await
        .expect(StatusCode::OK);
    let d = deployment(&app, id).await;
    assert_eq!(d["status"], "in_progress");
    assert_eq!(d["counts"], counts(1, 0, 1, 0, 0));
    assert!(d["completed_at"].is_null());

    bundle_commands(&app, &b).await;
    assert_eq!(deployment(&app, id).await["counts"], counts(0, 1, 1, 0, 0));
    app.result(&b, id, report(&b, "failed", "b-1"))
        .await
        .expect(StatusCode::OK);
    let d = deployment(&app, id).await;
    assert_eq!(d["status"], "failed");
    assert_eq!(d["counts"], counts(0, 0, 1, 1, 0));
    assert!(d["completed_at"].is_string());
    assert_eq!(target(&d, &a.id)["status"], "success");
    assert_eq!(target(&d, &b.id)["status"], "failed");
}

#[tokio::test]
async fn cancel_stops_pending_targets_and_lets_in_progress_finish() {
    let app = TestApp::new();
    let a = app.device().await;
    let b = app.device().await;
    let c = app.device().await;
    app.bundle("1.0.0").await;
    let dep = app.deploy("1.0.0", &[&a, &b, &c]).await;
    let id = s(&dep["id"]);
    bundle_commands(&app, &a).await;

    let d = app
        .post(&format!("/api/v1/deployments/{id}/cancel"), json!({}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(d["counts"], counts(0, 1, 0, 0, 2));
    assert_eq!(d["status"], "in_progress");
    assert!(d["completed_at"].is_null());
    assert_eq!(target(&d, &a.id)["status"], "in_progress");
    assert_eq!(target(&d, &b.id)["status"], "cancelled");
    assert_eq!(target(&d, &c.id)["status"], "cancelled");
    assert_eq!(deployment(&app, id).await, d);

    // Cancelled targets get no command; the in-progress one still does (at-least-once).
    assert!(bundle_commands(&app, &b).await.is_empty());
    let cmds = bundle_commands(&app, &a).await;
    assert_eq!(cmds.len(), 1);
    assert_eq!(cmds[0]["deployment_id"], id);

    app.result(&a, id, report(&a, "success", "a-1"))
        .await
        .expect(StatusCode::OK);
    let d = deployment(&app, id).await;
    assert_eq!(d["counts"], counts(0, 0, 1, 0, 2));
    assert_eq!(d["status"], "cancelled");
    assert!(d["completed_at"].is_string());
    assert_eq!(target(&d, &a.id)["status"], "success");
    assert_eq!(
        device_json(&app, &a).await["current_bundle_version"],
        "1.0.0"
    );
    assert!(device_json(&app, &b).await["current_bundle_version"].is_null());

    // Cancelling again changes nothing.
    let again = app
        .post(&format!("/api/v1/deployments/{id}/cancel"), json!({}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(again["counts"], counts(0, 0, 1, 0, 2));
    assert_eq!(again["status"], "cancelled");

    app.post("/api/v1/deployments/nope/cancel", json!({}))
        .await
        .expect(StatusCode::NOT_FOUND);
    app.call(
        Method::POST,
        &format!("/api/v1/deployments/{id}/cancel"),
        Some(&a.token),
        None,
    )
    .await
    .expect(StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn cancel_of_an_undelivered_deployment_is_cancelled() {
    let app = TestApp::new();
    let a = app.device().await;
    let b = app.device().await;
    app.bundle("1.0.0").await;
    let dep = app.deploy("1.0.0", &[&a, &b]).await;
    let id = s(&dep["id"]);
    // No body needed.
    let d = app
        .call(
            Method::POST,
            &format!("/api/v1/deployments/{id}/cancel"),
            Some(ADMIN),
            None,
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(d["status"], "cancelled");
    assert_eq!(d["counts"], counts(0, 0, 0, 0, 2));
    assert!(d["completed_at"].is_string());
    assert!(bundle_commands(&app, &a).await.is_empty());
    assert!(bundle_commands(&app, &b).await.is_empty());
    assert_eq!(deployment(&app, id).await["status"], "cancelled");
}

#[tokio::test]
async fn list_deployments_filters_newest_first() {
    let app = TestApp::new();
    let x = app.device().await;
    let y = app.device().await;
    let z = app.device().await;
    app.bundle("1.0.0").await;
    let d1 = s(&app.deploy("1.0.0", &[&x]).await["id"]).to_owned();
    let d2 = s(&app.deploy("1.0.0", &[&y]).await["id"]).to_owned();
    let d3 = s(&app.deploy("1.0.0", &[&z]).await["id"]).to_owned();
    deliver_and_succeed(&app, &x, &d1, "x-1").await;
    bundle_commands(&app, &y).await;

    let ids = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|d| s(&d["id"]).to_owned())
            .collect()
    };
    let all = app.get("/api/v1/deployments").await.expect(StatusCode::OK);
    assert_eq!(ids(all.clone()), [d3.as_str(), d2.as_str(), d1.as_str()]);
    assert_eq!(all[0]["devices"][0]["device_id"], z.id.as_str());
    let two = app
        .get("/api/v1/deployments?limit=2")
        .await
        .expect(StatusCode::OK);
    assert_eq!(ids(two), [d3.as_str(), d2.as_str()]);
    for (status, want) in [
        ("success", vec![d1.as_str()]),
        ("in_progress", vec![d2.as_str()]),
        ("pending", vec![d3.as_str()]),
        ("failed", vec![]),
        ("cancelled", vec![]),
    ] {
        let v = app
            .get(&format!("/api/v1/deployments?status={status}"))
            .await
            .expect(StatusCode::OK);
        assert_eq!(ids(v), want, "status={status}");
    }
    let v = app
        .get("/api/v1/deployments?status=pending&limit=1")
        .await
        .expect(StatusCode::OK);
    assert_eq!(ids(v), [d3.as_str()]);

    for bad in [
        "status=bogus",
        "status=",
        "limit=0",
        "limit=1001",
        "limit=x",
    ] {
        let r = app.get(&format!("/api/v1/deployments?{bad}")).await;
        r.expect(StatusCode::BAD_REQUEST);
        assert_eq!(r.code(), "bad_request", "{bad}");
    }
    app.call(Method::GET, "/api/v1/deployments", Some(&x.token), None)
        .await
        .expect(StatusCode::FORBIDDEN);
    app.call(
        Method::GET,
        &format!("/api/v1/deployments/{d1}"),
        Some(&x.token),
        None,
    )
    .await
    .expect(StatusCode::FORBIDDEN);
}

// ---------------------------------------------------------------- command rules

#[tokio::test]
async fn one_bundle_command_per_heartbeat_oldest_first_until_its_result() {
    let app = TestApp::new();
    let dev = app.device().await;
    let b1 = app.bundle("1.0.0").await;
    let b2 = app.bundle("2.0.0").await;
    let dep1 = s(&app.deploy("1.0.0", &[&dev]).await["id"]).to_owned();
    let dep2 = s(&app.deploy("2.0.0", &[&dev]).await["id"]).to_owned();

    // The older one, again and again, until its result arrives.
    for _ in 0..3 {
        let cmds = bundle_commands(&app, &dev).await;
        assert_eq!(cmds.len(), 1, "{cmds:?}");
        assert_eq!(cmds[0]["type"], "deploy");
        assert_eq!(cmds[0]["deployment_id"], dep1.as_str());
        assert_eq!(cmds[0]["bundle_id"], b1["id"]);
        assert_eq!(cmds[0]["bundle_version"], "1.0.0");
    }
    assert_eq!(deployment(&app, &dep1).await["status"], "in_progress");
    let d2 = deployment(&app, &dep2).await;
    assert_eq!(d2["status"], "pending");
    assert_eq!(target(&d2, &dev.id)["status"], "pending");

    // Progress is not a result: still re-sent.
    progress(
        &app,
        &dev.token,
        &dep1,
        json!({"device_id": dev.id, "phase": "installing", "progress_pct": 50}),
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    assert_eq!(
        bundle_commands(&app, &dev).await[0]["deployment_id"],
        dep1.as_str()
    );

    // A failed result finishes it just as well; then the next one.
    app.result(&dev, &dep1, report(&dev, "failed", "r-1"))
        .await
        .expect(StatusCode::OK);
    for _ in 0..2 {
        let cmds = bundle_commands(&app, &dev).await;
        assert_eq!(cmds.len(), 1, "{cmds:?}");
        assert_eq!(cmds[0]["deployment_id"], dep2.as_str());
        assert_eq!(cmds[0]["bundle_id"], b2["id"]);
    }
    assert_eq!(deployment(&app, &dep2).await["status"], "in_progress");
    app.result(&dev, &dep2, report(&dev, "success", "r-2"))
        .await
        .expect(StatusCode::OK);
    assert!(bundle_commands(&app, &dev).await.is_empty());

    // A configure command still comes while the config is not acknowledged.
    let hb = app.heartbeat(&dev, None, None).await.expect(StatusCode::OK);
    let cmds = hb["commands"].as_array().unwrap();
    assert_eq!(cmds.len(), 1);
    assert_eq!(cmds[0]["type"], "configure");
}

#[tokio::test]
async fn pending_device_receives_no_commands() {
    let app = TestApp::new();
    let waiting = app.pending_device().await;
    app.bundle("1.0.0").await;
    let hb = app
        .heartbeat(&waiting, None, None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(hb["admission"], "pending");
    assert_eq!(hb["commands"], json!([]), "not even configure");

    // Once accepted, commands flow (here: configure, and a deployment to it).
    app.post(&format!("/api/v1/devices/{}/accept", waiting.id), json!({}))
        .await
        .expect(StatusCode::OK);
    let dep = app.deploy("1.0.0", &[&waiting]).await;
    let hb = app
        .heartbeat(&waiting, None, None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(hb["admission"], "accepted");
    let cmds = hb["commands"].as_array().unwrap();
    assert_eq!(cmds.len(), 2, "{cmds:?}");
    assert_eq!(cmds[0]["deployment_id"], dep["id"]);
    assert_eq!(cmds[1]["type"], "configure");
}

// ------------------------------------------------------------------------ progress

#[tokio::test]
async fn progress_is_recorded_and_validated() {
    let app = TestApp::new();
    let dev = app.device().await;
    let other = app.device().await;
    app.bundle("1.0.0").await;
    let dep = app.deploy("1.0.0", &[&dev]).await;
    let id = s(&dep["id"]);
    bundle_commands(&app, &dev).await;
    let t = target(&deployment(&app, id).await, &dev.id).clone();
    assert!(t["phase"].is_null());
    assert!(t["progress_pct"].is_null());

    let r = progress(
        &app,
        &dev.token,
        id,
        json!({"device_id": dev.id, "phase": "downloading", "progress_pct": 40}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.body.is_empty());
    let t = target(&deployment(&app, id).await, &dev.id).clone();
    assert_eq!(t["phase"], "downloading");
    assert_eq!(t["progress_pct"], 40);
    assert_eq!(t["status"], "in_progress");

    progress(
        &app,
        &dev.token,
        id,
        json!({"device_id": dev.id, "phase": "health_check", "progress_pct": 90}),
    )
    .await
    .expect(StatusCode::NO_CONTENT);

    for bad in [
        json!({"device_id": dev.id, "phase": "installing", "progress_pct": 101}),
        json!({"device_id": dev.id, "phase": "installing", "progress_pct": 1000}),
        json!({"device_id": dev.id, "phase": "installing", "progress_pct": -1}),
        json!({"device_id": dev.id, "phase": "exploding", "progress_pct": 10}),
        json!({"device_id": dev.id, "phase": "Installing", "progress_pct": 10}),
        json!({"device_id": dev.id, "progress_pct": 10}),
        json!({"device_id": dev.id, "phase": "installing"}),
    ] {
        let r = progress(&app, &dev.token, id, bad.clone()).await;
        r.expect(StatusCode::BAD_REQUEST);
        assert_eq!(r.code(), "bad_request", "{bad}");
    }
    // Not a target / another device's id / an operator: 403.
    let good = json!({"device_id": other.id, "phase": "installing", "progress_pct": 10});
    progress(&app, &other.token, id, good)
        .await
        .expect(StatusCode::FORBIDDEN);
    let spoof = json!({"device_id": dev.id, "phase": "installing", "progress_pct": 10});
    progress(&app, &other.token, id, spoof.clone())
        .await
        .expect(StatusCode::FORBIDDEN);
    let r = progress(&app, ADMIN, id, spoof.clone()).await;
    r.expect(StatusCode::FORBIDDEN);
    assert_eq!(r.code(), "forbidden");
    progress(&app, &dev.token, "no-such-deployment", spoof)
        .await
        .expect(StatusCode::NOT_FOUND);

    // None of that changed anything.
    let t = target(&deployment(&app, id).await, &dev.id).clone();
    assert_eq!(t["phase"], "health_check");
    assert_eq!(t["progress_pct"], 90);
}

#[tokio::test]
async fn progress_body_naming_another_target_is_403() {
    let app = TestApp::new();
    let a = app.device().await;
    let b = app.device().await;
    app.bundle("1.0.0").await;
    let dep = app.deploy("1.0.0", &[&a, &b]).await;
    let id = s(&dep["id"]);
    progress(
        &app,
        &a.token,
        id,
        json!({"device_id": b.id, "phase": "installing", "progress_pct": 10}),
    )
    .await
    .expect(StatusCode::FORBIDDEN);
    assert!(target(&deployment(&app, id).await, &b.id)["phase"].is_null());
}

// --------------------------------------------------------------------- results

#[tokio::test]
async fn result_is_idempotent_and_first_wins() {
    let app = TestApp::new();
    let dev = app.device().await;
    app.bundle("1.0.0").await;
    let dep = app.deploy("1.0.0", &[&dev]).await;
    let id = s(&dep["id"]);
    bundle_commands(&app, &dev).await;

    let body = json!({"device_id": dev.id, "status": "success", "report_id": "same-report",
                      "log_tail": "all good", "duration_seconds": 2.0});
    let first = app
        .result(&dev, id, body.clone())
        .await
        .expect(StatusCode::OK);
    let after_first = deployment(&app, id).await;
    let second = app.result(&dev, id, body).await.expect(StatusCode::OK);
    assert_eq!(first, second);
    assert_eq!(first["status"], "success");
    assert_eq!(history(&app, &dev, "").await.len(), 1);
    assert_eq!(deployment(&app, id).await, after_first);

    // A different, later result for the same target: 200 with the stored one, no change.
    let late = app
        .result(
            &dev,
            id,
            json!({"device_id": dev.id, "status": "failed", "report_id": "other-report",
                   "error_message": "too late", "rolled_back_to": "0.1.0"}),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(late["status"], "success");
    assert_eq!(late["log_tail"], "all good");
    assert!(late["error_message"].is_null());
    let d = deployment(&app, id).await;
    assert_eq!(d, after_first);
    assert_eq!(d["status"], "success");
    assert_eq!(d["counts"], counts(0, 0, 1, 0, 0));
    let h = history(&app, &dev, "").await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["status"], "success");
    assert_eq!(
        device_json(&app, &dev).await["current_bundle_version"],
        "1.0.0"
    );
}

#[tokio::test]
async fn failed_result_with_and_without_rolled_back_to() {
    let app = TestApp::new();
    let rolled = app.device().await;
    let plain = app.device().await;
    app.bundle("2.0.0").await;
    // Both report running 0.9.0 (the device is the authority on what it runs).
    app.heartbeat(&rolled, Some("0.9.0"), Some(1))
        .await
        .expect(StatusCode::OK);
    app.heartbeat(&plain, Some("0.9.0"), Some(1))
        .await
        .expect(StatusCode::OK);
    let dep = app.deploy("2.0.0", &[&rolled, &plain]).await;
    let id = s(&dep["id"]);
    bundle_commands(&app, &rolled).await;
    bundle_commands(&app, &plain).await;

    app.result(
        &rolled,
        id,
        json!({"device_id": rolled.id, "status": "failed", "report_id": "rb",
               "error_message": "health failed", "rolled_back_to": "0.8.5",
               "log_tail": "rolling back"}),
    )
    .await
    .expect(StatusCode::OK);
    app.result(
        &plain,
        id,
        json!({"device_id": plain.id, "status": "failed", "report_id": "nrb",
               "error_message": "deploy failed", "rolled_back_to": null}),
    )
    .await
    .expect(StatusCode::OK);

    assert_eq!(
        device_json(&app, &rolled).await["current_bundle_version"],
        "0.8.5"
    );
    assert_eq!(
        device_json(&app, &plain).await["current_bundle_version"],
        "0.9.0"
    );
    let h = history(&app, &rolled, "").await;
    assert_eq!(h[0]["rolled_back_to"], "0.8.5");
    assert_eq!(h[0]["log_tail"], "rolling back");
    assert!(history(&app, &plain, "").await[0]["rolled_back_to"].is_null());
    let d = deployment(&app, id).await;
    assert_eq!(d["status"], "failed");
    assert_eq!(target(&d, &rolled.id)["log_tail"], "rolling back");
    assert_eq!(target(&d, &plain.id)["error_message"], "deploy failed");
    // A failed version is not one to roll back to.
    app.post(
        "/api/v1/devices/rollback",
        json!({"bundle_version": "2.0.0", "target_device_ids": [rolled.id]}),
    )
    .await
    .expect(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn result_access_rules() {
    let app = TestApp::new();
    let a = app.device().await;
    let b = app.device().await;
    let outsider = app.device().await;
    app.bundle("1.0.0").await;
    let dep = app.deploy("1.0.0", &[&a, &b]).await;
    let id = s(&dep["id"]);

    let r = app
        .result(&a, "no-such-deployment", report(&a, "success", "x-1"))
        .await;
    r.expect(StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "not_found");
    app.result(&outsider, id, report(&outsider, "success", "x-2"))
        .await
        .expect(StatusCode::FORBIDDEN);
    // a's token, b's id in the body (b is a target): 403, b unaffected.
    let r = app.result(&a, id, report(&b, "success", "x-3")).await;
    r.expect(StatusCode::FORBIDDEN);
    assert_eq!(r.code(), "forbidden");
    app.call(
        Method::POST,
        &format!("/api/v1/deployments/{id}/result"),
        None,
        Some(report(&a, "success", "x-4")),
    )
    .await
    .expect(StatusCode::UNAUTHORIZED);

    let d = deployment(&app, id).await;
    assert_eq!(d["counts"], counts(2, 0, 0, 0, 0));
    assert_eq!(target(&d, &b.id)["status"], "pending");
    assert!(history(&app, &b, "").await.is_empty());
    assert!(device_json(&app, &b).await["current_bundle_version"].is_null());

    // b's own report, with a report id an earlier refused request carried, is applied.
    app.result(&b, id, report(&b, "success", "x-3"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(deployment(&app, id).await["counts"], counts(1, 0, 1, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_results_add_up() {
    const N: usize = 20;
    let app = Arc::new(TestApp::new());
    let mut devs = Vec::new();
    for _ in 0..N {
        devs.push(app.device().await);
    }
    app.bundle("1.0.0").await;
    let refs: Vec<&Device> = devs.iter().collect();
    let dep = app.deploy("1.0.0", &refs).await;
    let dep_id = s(&dep["id"]).to_owned();
    assert_eq!(dep["counts"], counts(N as u64, 0, 0, 0, 0));
    // Half of them received the command; the rest report straight from pending.
    for d in devs.iter().step_by(2) {
        bundle_commands(&app, d).await;
    }

    // Every device reports twice at once with the same report id (a retry racing the
    // original), all devices at the same time.
    let mut tasks = Vec::new();
    for (i, d) in devs.iter().enumerate() {
        for _ in 0..2 {
            let app = Arc::clone(&app);
            let (device_id, token, dep_id) = (d.id.clone(), d.token.clone(), dep_id.clone());
            tasks.push(tokio::spawn(async move {
                app.call(
                    Method::POST,
                    &format!("/api/v1/deployments/{dep_id}/result"),
                    Some(&token),
                    Some(json!({"device_id": device_id, "status": "success",
                                "report_id": format!("concurrent-{i}")})),
                )
                .await
            }));
        }
    }
    for t in tasks {
        let r = t.await.unwrap();
        let v = r.expect(StatusCode::OK);
        assert_eq!(v["status"], "success");
    }

    let d = deployment(&app, &dep_id).await;
    assert_eq!(d["counts"], counts(0, 0, N as u64, 0, 0));
    assert_eq!(d["status"], "success");
    assert!(d["completed_at"].is_string());
    for dev in &devs {
        assert_eq!(target(&d, &dev.id)["status"], "success");
        assert_eq!(
            history(&app, dev, "").await.len(),
            1,
            "one record per device"
        );
        assert_eq!(
            device_json(&app, dev).await["current_bundle_version"],
            "1.0.0"
        );
    }
    let listed = app
        .get("/api/v1/deployments?status=success")
        .await
        .expect(StatusCode::OK);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    // Finished: the bundle can go.
    app.delete(&format!("/api/v1/bundles/{}", s(&dep["bundle_id"])))
        .await
        .expect(StatusCode::NO_CONTENT);
}
