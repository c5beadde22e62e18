//! Racing writes to deployments (SPEC §1.5, §8): two requests for one target, a reject
//! racing a creation, a cancel racing results. On PostgreSQL each is a transaction that
//! takes row locks in one order; these tests check that nothing is applied twice,
//! nothing is left open that nobody will report, counts and the /metrics counters add
//! up, and no race ends in a 5xx (a deadlock would).
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;

fn s(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

async fn deployment(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/api/v1/deployments/{id}"))
        .await
        .expect(StatusCode::OK)
}

fn targets(dep: &Value) -> Vec<Value> {
    dep["devices"].as_array().unwrap().clone()
}

fn count(dep: &Value, status: &str) -> u64 {
    dep["counts"][status].as_u64().unwrap()
}

/// `kernex_deployments{status="…"}` from /metrics, by status.
async fn deployment_metrics(app: &TestApp) -> Vec<(String, f64)> {
    let text = app.call(Method::GET, "/metrics", None, None).await.text();
    text.lines()
        .filter_map(|l| l.strip_prefix("kernex_deployments{status=\""))
        .filter_map(|l| {
            let (status, rest) = l.split_once('"')?;
            let value = rest.rsplit(' ').next()?.parse().ok()?;
            Some((status.to_owned(), value))
        })
        .collect()
}

async fn metric(app: &TestApp, status: &str) -> f64 {
    deployment_metrics(app)
        .await
        .into_iter()
        .find(|(s, _)| s == status)
        .map_or(0.0, |(_, v)| v)
}

/// A device's id and token, owned (what a spawned request needs).
fn creds(dev: &Device) -> (String, String) {
    (dev.id.clone(), dev.token.clone())
}

async fn post_result(app: &TestApp, token: &str, dep_id: &str, body: Value) -> (u16, Value) {
    let r = app
        .call(
            Method::POST,
            &format!("/api/v1/deployments/{dep_id}/result"),
            Some(token),
            Some(body),
        )
        .await;
    (r.status.as_u16(), r.json())
}

/// Two different results for one target at once (a success and a failure with their own
/// report ids, as two replicas would receive them): exactly one is applied, the other
/// answers 200 with the stored one, and the counts, history and metrics count it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_results_with_different_report_ids_apply_once() {
    const N: usize = 12;
    let app = Arc::new(TestApp::new());
    let mut devs = Vec::new();
    for _ in 0..N {
        devs.push(app.device().await);
    }
    app.bundle("1.0.0").await;
    let refs: Vec<&Device> = devs.iter().collect();
    let dep = app.deploy("1.0.0", &refs).await;
    let dep_id = s(&dep["id"]).to_owned();

    let mut tasks = Vec::new();
    for (i, d) in devs.iter().enumerate() {
        for status in ["success", "failed"] {
            let (app, (id, token), dep_id) = (Arc::clone(&app), creds(d), dep_id.clone());
            tasks.push(tokio::spawn(async move {
                let body = json!({"device_id": id, "status": status,
                                  "report_id": format!("{status}-{i}"),
                                  "error_message": (status == "failed").then_some("boom")});
                post_result(&app, &token, &dep_id, body).await
            }));
        }
    }
    let mut answers = Vec::new();
    for t in tasks {
        let (code, v) = t.await.unwrap();
        assert_eq!(code, 200, "{v}");
        answers.push(v);
    }

    let d = deployment(&app, &dep_id).await;
    let (ok, failed) = (count(&d, "success"), count(&d, "failed"));
    assert_eq!(ok + failed, N as u64, "{}", d["counts"]);
    assert_eq!(count(&d, "pending") + count(&d, "in_progress"), 0);
    for (i, dev) in devs.iter().enumerate() {
        let t = targets(&d)
            .into_iter()
            .find(|t| t["device_id"] == dev.id.as_str())
            .unwrap();
        // Both answers for this device carry the one stored result.
        assert_eq!(answers[2 * i]["status"], t["status"]);
        assert_eq!(answers[2 * i + 1]["status"], t["status"]);
        let h = app
            .get(&format!("/api/v1/devices/{}/bundle-history", dev.id))
            .await
            .expect(StatusCode::OK);
        let h = h.as_array().unwrap();
        assert_eq!(h.len(), 1, "one record per device: {h:?}");
        assert_eq!(h[0]["status"], t["status"]);
    }
    let status = s(&d["status"]).to_owned();
    assert_eq!(metric(&app, &status).await, 1.0);
    let total: f64 = deployment_metrics(&app).await.iter().map(|m| m.1).sum();
    assert_eq!(total, 1.0, "{:?}", deployment_metrics(&app).await);
}

/// Rejecting devices while a deployment to them is created: whichever commits first,
/// no rejected device is left with a target that is still pending (nobody would
/// report it), and the deployment's counts cover every target once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rejects_racing_a_creation_leave_no_target_open() {
    removals_racing_a_creation(Removal::Reject).await;
}

/// The same with deletions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletions_racing_a_creation_leave_no_target_open() {
    removals_racing_a_creation(Removal::Delete).await;
}

#[derive(Clone, Copy)]
enum Removal {
    Reject,
    Delete,
}

async fn remove(app: &TestApp, id: &str, how: Removal) {
    match how {
        Removal::Reject => {
            app.post(&format!("/api/v1/devices/{id}/reject"), json!({}))
                .await
                .expect(StatusCode::OK);
        }
        Removal::Delete => {
            let r = app.delete(&format!("/api/v1/devices/{id}")).await;
            assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
        }
    }
}

/// Rounds of one creation racing removals of a third of its devices, each round's
/// removals a little later than the last, so both outcomes come up.
async fn removals_racing_a_creation(how: Removal) {
    const N: usize = 9;
    const ROUNDS: u64 = 4;
    let app = Arc::new(TestApp::new());
    app.bundle("1.0.0").await;
    let mut created_count = 0;
    for round in 0..ROUNDS {
        let mut devs = Vec::new();
        for _ in 0..N {
            devs.push(app.device().await);
        }
        let ids: Vec<String> = devs.iter().map(|d| d.id.clone()).collect();
        let create = {
            let app = Arc::clone(&app);
            tokio::spawn(async move {
                app.post(
                    "/api/v1/deployments",
                    json!({"bundle_version": "1.0.0", "target_device_ids": ids}),
                )
                .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(round * 2)).await;
        let removals: Vec<_> = devs
            .iter()
            .step_by(3)
            .map(|d| {
                let (app, id) = (Arc::clone(&app), d.id.clone());
                tokio::spawn(async move { remove(&app, &id, how).await })
            })
            .collect();
        for r in removals {
            r.await.unwrap();
        }
        let created = create.await.unwrap();
        if created.status == StatusCode::BAD_REQUEST {
            // A removal committed first: the creation named it and created nothing.
            let message = created.json()["message"].as_str().unwrap().to_owned();
            assert!(
                message.contains("not accepted") || message.contains("no device"),
                "{message}"
            );
        } else {
            created_count += 1;
            let dep_id = s(&created.expect(StatusCode::CREATED)["id"]).to_owned();
            check_removed_targets_cancelled(&app, &dep_id, &devs).await;
        }
        let all = app.get("/api/v1/deployments").await.expect(StatusCode::OK);
        assert_eq!(all.as_array().unwrap().len(), created_count);
        assert_eq!(metric(&app, "pending").await, created_count as f64);
    }
}

/// Every third device of `devs` was removed: its target is cancelled, the others' are
/// pending, and the counts say so.
async fn check_removed_targets_cancelled(app: &TestApp, dep_id: &str, devs: &[Device]) {
    let d = deployment(app, dep_id).await;
    let ts = targets(&d);
    assert_eq!(ts.len(), devs.len());
    let removed: Vec<&str> = devs.iter().step_by(3).map(|d| d.id.as_str()).collect();
    for t in &ts {
        if removed.contains(&s(&t["device_id"])) {
            assert_eq!(t["status"], "cancelled", "{t}");
        } else {
            assert_eq!(t["status"], "pending", "{t}");
        }
    }
    assert_eq!(count(&d, "cancelled"), removed.len() as u64);
    assert_eq!(count(&d, "pending"), (devs.len() - removed.len()) as u64);
}

/// A cancel racing the targets' results: each target ends either with its result or
/// cancelled, never both; a result for a cancelled target changes nothing; the counts
/// cover every target once and the deployment ends final, counted once by /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_racing_results_counts_each_target_once() {
    const N: usize = 16;
    let app = Arc::new(TestApp::new());
    let mut devs = Vec::new();
    for _ in 0..N {
        devs.push(app.device().await);
    }
    app.bundle("1.0.0").await;
    let refs: Vec<&Device> = devs.iter().collect();
    let dep = app.deploy("1.0.0", &refs).await;
    let dep_id = s(&dep["id"]).to_owned();

    let mut tasks = Vec::new();
    for (i, d) in devs.iter().enumerate() {
        let (app, (id, token), dep_id) = (Arc::clone(&app), creds(d), dep_id.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({"device_id": id, "status": "success",
                              "report_id": format!("r-{i}")});
            post_result(&app, &token, &dep_id, body).await
        }));
    }
    let cancel = {
        let (app, dep_id) = (Arc::clone(&app), dep_id.clone());
        tokio::spawn(async move {
            app.post(&format!("/api/v1/deployments/{dep_id}/cancel"), json!({}))
                .await
        })
    };
    for t in tasks {
        let (code, v) = t.await.unwrap();
        assert_eq!(code, 200, "{v}");
    }
    let c = cancel.await.unwrap();
    assert!(c.status.is_success(), "{}", c.text());

    let d = deployment(&app, &dep_id).await;
    let (ok, cancelled) = (count(&d, "success"), count(&d, "cancelled"));
    assert_eq!(ok + cancelled, N as u64, "{}", d["counts"]);
    for t in targets(&d) {
        assert!(
            t["status"] == "success" || t["status"] == "cancelled",
            "{t}"
        );
    }
    let status = s(&d["status"]).to_owned();
    assert!(["success", "cancelled", "failed"].contains(&status.as_str()));
    assert_eq!(metric(&app, &status).await, 1.0);
    let total: f64 = deployment_metrics(&app).await.iter().map(|m| m.1).sum();
    assert_eq!(total, 1.0);
    // Final: the bundle can go.
    app.delete(&format!("/api/v1/bundles/{}", s(&dep["bundle_id"])))
        .await
        .expect(StatusCode::NO_CONTENT);
}
