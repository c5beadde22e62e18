//! Rollouts over HTTP (SPEC §6): the policy and its validation, waves in rollout order,
//! the health gate with its soak, the failure gate (pause, abort, resume), timeouts and
//! late results, `auto_advance`, `start_at`, pacing, pause/resume/cancel, events, and a
//! server restart in the middle of a rollout. Soaks and timeouts are seconds long, so
//! these tests wait on the real clock (polling the API, never a blind sleep).

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use kernex_common::api::RolloutChange;
use kernex_common::api::events::ServerEvent;
use serde_json::{Value, json};
use support::*;

const DEPS: &str = "/api/v1/deployments";

/// Poll `f` until it returns `Some`, for at most `secs` seconds.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < until, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_dep(app: &TestApp, id: &str) -> Value {
    app.get(&format!("{DEPS}/{id}"))
        .await
        .expect(StatusCode::OK)
}

fn target<'a>(dep: &'a Value, device: &Device) -> &'a Value {
    dep["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["device_id"] == device.id.as_str())
        .unwrap()
}

/// The deployment ids the device's heartbeat commands name.
async fn commands(app: &TestApp, dev: &Device) -> Vec<String> {
    let v = app.heartbeat(dev, None, None).await.expect(StatusCode::OK);
    v["commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["deployment_id"].as_str().map(str::to_owned))
        .collect()
}

async fn rollout(app: &TestApp, devices: &[&Device], policy: Value) -> Value {
    let ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
    app.post(
        DEPS,
        json!({"bundle_version": "1.0.0", "target_device_ids": ids, "rollout": policy}),
    )
    .await
    .expect(StatusCode::CREATED)
}

async fn report(app: &TestApp, dev: &Device, dep: &str, status: &str) {
    app.result(
        dev,
        dep,
        json!({"device_id": dev.id, "status": status, "report_id": uuid::Uuid::new_v4().to_string()}),
    )
    .await
    .expect(StatusCode::OK);
}

async fn tag(app: &TestApp, dev: &Device, tags: &[&str]) {
    app.patch(
        &format!("/api/v1/devices/{}", dev.id),
        json!({"tags": tags}),
    )
    .await
    .expect(StatusCode::OK);
}

async fn polling_interval(app: &TestApp, dev: &Device, secs: u64) {
    app.put(
        &format!("/api/v1/devices/{}/config", dev.id),
        json!({"polling_interval": secs}),
    )
    .await
    .expect(StatusCode::OK);
}

async fn devices(app: &TestApp, n: usize) -> Vec<Device> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(app.device().await);
    }
    out
}

/// Every bad policy is a 400 with the error body, and nothing is created.
#[tokio::test]
async fn a_bad_policy_is_refused_and_nothing_is_created() {
    let app = TestApp::new();
    let d = app.device().await;
    app.bundle("1.0.0").await;
    let bad = [
        json!({"waves": [10, 5, 100]}),
        json!({"waves": [10, 50]}),
        json!({"waves": []}),
        json!({"waves": [0, 100]}),
        json!({"waves": [50, 101]}),
        json!({"success_threshold_pct": 101}),
        json!({"max_failures": 1, "max_failure_pct": 5}),
        json!({"max_failure_pct": 120}),
        json!({"on_failure": "explode"}),
        json!({"target_timeout_seconds": 0}),
        json!({"max_per_minute": 0}),
        json!({"first_tag": "not a tag!"}),
        json!({"start_at": "tomorrow"}),
        json!({"waves": "all"}),
    ];
    for policy in bad {
        let r = app
            .post(
                DEPS,
                json!({"bundle_version": "1.0.0", "target_device_ids": [d.id], "rollout": policy}),
            )
            .await;
        r.expect(StatusCode::BAD_REQUEST);
        assert_eq!(r.code(), "bad_request", "{policy}");
        let r = app
            .post(
                "/api/v1/devices/rollback",
                json!({"bundle_version": "1.0.0", "target_device_ids": [d.id], "rollout": policy}),
            )
            .await;
        r.expect(StatusCode::BAD_REQUEST);
    }
    let list = app.get(DEPS).await.expect(StatusCode::OK);
    assert_eq!(list, json!([]));
    assert_eq!(commands(&app, &d).await, Vec::<String>::new());
}

/// An empty policy is one wave of 100 % with every default filled; counts carry all
/// seven target statuses.
#[tokio::test]
async fn defaults_are_filled_and_counts_have_every_status() {
    let app = TestApp::new();
    let ds = devices(&app, 2).await;
    app.bundle("1.0.0").await;
    let dep = rollout(&app, &[&ds[0], &ds[1]], json!({})).await;
    let r = &dep["rollout"];
    assert_eq!(r["success_threshold_pct"], 100);
    assert_eq!(r["soak_seconds"], 0);
    assert_eq!(r["on_failure"], "pause");
    assert_eq!(r["auto_advance"], true);
    for k in [
        "first_tag",
        "max_failures",
        "max_failure_pct",
        "target_timeout_seconds",
        "max_per_minute",
        "start_at",
        "paused_reason",
    ] {
        assert!(r[k].is_null(), "{k}: {r}");
    }
    assert_eq!(r["current_wave"], 0);
    assert_eq!(r["waves"].as_array().unwrap().len(), 1);
    assert_eq!(r["waves"][0]["pct"], 100);
    assert_eq!(r["waves"][0]["targets"], 2);
    assert!(r["waves"][0]["opened_at"].is_string());
    assert_eq!(dep["status"], "pending");
    assert_eq!(
        dep["counts"],
        json!({"waiting": 0, "pending": 2, "in_progress": 0, "success": 0, "failed": 0,
               "timed_out": 0, "cancelled": 0})
    );
    // A deployment without a policy has no rollout block and behaves as before.
    let plain = app.deploy("1.0.0", &[&ds[0]]).await;
    assert!(plain["rollout"].is_null());
    assert_eq!(plain["counts"]["waiting"], 0);
}

/// Waves open in rollout order: the `first_tag` devices first; a waiting target gets no
/// command; the next wave opens when the current one is good.
#[tokio::test]
async fn waves_open_in_order_with_the_first_tag_first() {
    let app = TestApp::new();
    let ds = devices(&app, 4).await;
    tag(&app, &ds[2], &["canary"]).await;
    app.bundle("1.0.0").await;
    let all: Vec<&Device> = ds.iter().collect();
    let dep = rollout(
        &app,
        &all,
        json!({"waves": [25, 100], "first_tag": "canary"}),
    )
    .await;
    let id = dep["id"].as_str().unwrap();
    assert_eq!(target(&dep, &ds[2])["status"], "pending");
    for i in [0, 1, 3] {
        assert_eq!(target(&dep, &ds[i])["status"], "waiting");
        assert!(
            commands(&app, &ds[i]).await.is_empty(),
            "waiting got a command"
        );
    }
    assert_eq!(dep["counts"]["waiting"], 3);
    assert_eq!(dep["rollout"]["waves"][0]["targets"], 1);
    assert_eq!(dep["rollout"]["waves"][1]["targets"], 3);
    assert!(dep["rollout"]["waves"][1]["opened_at"].is_null());
    assert_eq!(commands(&app, &ds[2]).await, [id]);
    report(&app, &ds[2], id, "success").await;
    // No soak: the success counts at once and wave 1 opens in the same reply's wake.
    let dep = get_dep(&app, id).await;
    assert_eq!(dep["rollout"]["current_wave"], 1);
    assert_eq!(dep["rollout"]["waves"][0]["healthy"], 1);
    assert!(dep["rollout"]["waves"][1]["opened_at"].is_string());
    for i in [0, 1, 3] {
        assert_eq!(commands(&app, &ds[i]).await, [id]);
        report(&app, &ds[i], id, "success").await;
    }
    let dep = get_dep(&app, id).await;
    assert_eq!(dep["status"], "success");
    assert_eq!(dep["rollout"]["waves"][1]["success"], 3);
}

/// The health gate counts a success only after its soak: the next wave waits for it.
#[tokio::test]
async fn the_next_wave_waits_for_the_soak() {
    let app = TestApp::new();
    let ds = devices(&app, 3).await;
    tag(&app, &ds[0], &["canary"]).await;
    app.bundle("1.0.0").await;
    let dep = rollout(
        &app,
        &[&ds[0], &ds[1], &ds[2]],
        json!({"waves": [1, 100], "first_tag": "canary", "soak_seconds": 2}),
    )
    .await;
    let id = dep["id"].as_str().unwrap().to_owned();
    assert_eq!(commands(&app, &ds[0]).await, [id.as_str()]);
    report(&app, &ds[0], &id, "success").await;
    let dep = get_dep(&app, &id).await;
    assert_eq!(dep["rollout"]["waves"][0]["success"], 1);
    assert_eq!(dep["rollout"]["waves"][0]["healthy"], 0);
    assert_eq!(dep["rollout"]["current_wave"], 0, "opened before the soak");
    assert!(commands(&app, &ds[1]).await.is_empty());
    // The canary beats through its soak: healthy, and wave 1 opens.
    // (The timer opens the wave, then releases its targets: wait for both.)
    let dep = eventually(6, "wave 1 opens after the soak", || async {
        app.heartbeat(&ds[0], Some("1.0.0"), None).await;
        let dep = get_dep(&app, &id).await;
        (dep["rollout"]["current_wave"] == 1 && dep["counts"]["waiting"] == 0).then_some(dep)
    })
    .await;
    assert_eq!(dep["rollout"]["waves"][0]["healthy"], 1);
    assert_eq!(commands(&app, &ds[1]).await, [id]);
}

/// A device that goes quiet during its soak (longer than the online window, 3 × its
/// polling interval) counts as a failure; one that keeps beating is healthy.
#[tokio::test]
async fn a_device_offline_during_its_soak_counts_as_a_failure() {
    let app = TestApp::new();
    let ds = devices(&app, 2).await;
    for d in &ds {
        // The shortest interval the server takes: online means a beat within 15 s.
        polling_interval(&app, d, 5).await;
    }
    app.bundle("1.0.0").await;
    let dep = rollout(
        &app,
        &[&ds[0], &ds[1]],
        json!({"soak_seconds": 16, "max_failures": 0}),
    )
    .await;
    let id = dep["id"].as_str().unwrap().to_owned();
    for d in &ds {
        assert_eq!(commands(&app, d).await, [id.as_str()]);
        report(&app, d, &id, "success").await;
    }
    let dep = eventually(30, "both soaks are judged", || async {
        app.heartbeat(&ds[0], Some("1.0.0"), Some(2)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let dep = get_dep(&app, &id).await;
        let w = &dep["rollout"]["waves"][0];
        (w["healthy"].as_u64().unwrap() + w["failed"].as_u64().unwrap() == 2).then_some(dep)
    })
    .await;
    let w = &dep["rollout"]["waves"][0];
    assert_eq!(w["success"], 2);
    assert_eq!(w["healthy"], 1);
    assert_eq!(w["failed"], 1);
    // The device's own result stays success: that is its truth. The deployment is final
    // (every target succeeded), so the failure gate has nothing left to hold.
    assert_eq!(target(&dep, &ds[1])["status"], "success");
    assert_eq!(dep["status"], "success");
}

/// The failure gate pauses: no new deliveries (in-flight targets finish); resume
/// accepts the failures so far and it trips again only on a further failure.
#[tokio::test]
async fn the_failure_gate_pauses_and_resume_accepts_the_failures() {
    let app = TestApp::new();
    let ds = devices(&app, 4).await;
    app.bundle("1.0.0").await;
    let all: Vec<&Device> = ds.iter().collect();
    let dep = rollout(&app, &all, json!({"max_failures": 0})).await;
    let id = dep["id"].as_str().unwrap().to_owned();
    for d in &ds[..2] {
        assert_eq!(commands(&app, d).await, [id.as_str()]);
    }
    report(&app, &ds[0], &id, "failed").await;
    let dep = get_dep(&app, &id).await;
    assert_eq!(dep["status"], "paused");
    assert_eq!(
        dep["rollout"]["paused_reason"],
        "1 failures exceed max_failures 0"
    );
    // Paused: undelivered targets get nothing; the in-flight one still gets its command
    // and its result is taken.
    assert!(commands(&app, &ds[2]).await.is_empty());
    assert_eq!(commands(&app, &ds[1]).await, [id.as_str()]);
    report(&app, &ds[1], &id, "success").await;
    assert_eq!(get_dep(&app, &id).await["status"], "paused");
    let r = app.post(&format!("{DEPS}/{id}/pause"), json!({})).await;
    r.expect(StatusCode::CONFLICT);
    let dep = app
        .post(&format!("{DEPS}/{id}/resume"), json!({}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(dep["status"], "in_progress");
    assert!(dep["rollout"]["paused_reason"].is_null());
    assert_eq!(commands(&app, &ds[2]).await, [id.as_str()]);
    report(&app, &ds[2], &id, "success").await;
    assert_eq!(get_dep(&app, &id).await["status"], "in_progress");
    assert_eq!(commands(&app, &ds[3]).await, [id.as_str()]);
    report(&app, &ds[3], &id, "failed").await;
    // The last target failed: the deployment is final (failed), nothing to pause.
    let dep = get_dep(&app, &id).await;
    assert_eq!(dep["status"], "failed");
    app.post(&format!("{DEPS}/{id}/resume"), json!({}))
        .await
        .expect(StatusCode::CONFLICT);
    app.post(&format!("{DEPS}/{id}/pause"), json!({}))
        .await
        .expect(StatusCode::CONFLICT);
}

/// A further failure after a resume trips the gate again; `max_failure_pct` is of the
/// targets delivered so far.
#[tokio::test]
async fn a_further_failure_trips_again_and_pct_counts_delivered_targets() {
    let app = TestApp::new();
    let ds = devices(&app, 5).await;
    app.bundle("1.0.0").await;
    let all: Vec<&Device> = ds.iter().collect();
    let dep = rollout(&app, &all, json!({"max_failure_pct": 40})).await;
    let id = dep["id"].as_str().unwrap().to_owned();
    for d in &ds[..3] {
        assert_eq!(commands(&app, d).await, [id.as_str()]);
    }
    // 1 failure of 3 delivered = 33 % ≤ 40 %: no trip.
    report(&app, &ds[0], &id, "failed").await;
    assert_eq!(get_dep(&app, &id).await["status"], "in_progress");
    // 2 of 3 = 67 %: trips.
    report(&app, &ds[1], &id, "failed").await;
    let dep = get_dep(&app, &id).await;
    assert_eq!(dep["status"], "paused");
    assert!(
        dep["rollout"]["paused_reason"]
            .as_str()
            .unwrap()
            .contains("max_failure_pct 40")
    );
    app.post(&format!("{DEPS}/{id}/resume"), json!({}))
        .await
        .expect(StatusCode::OK);
    report(&app, &ds[2], &id, "failed").await;
    let dep = get_dep(&app, &id).await;
    assert_eq!(dep["status"], "paused", "a further failure trips again");
}

/// With `on_failure: abort` the gate cancels every target not yet delivered and the
/// deployment ends failed.
#[tokio::test]
async fn abort_cancels_what_was_not_delivered() {
    let app = TestApp::new();
    let ds = devices(&app, 3).await;
    tag(&app, &ds[1], &["canary"]).await;
    app.bundle("1.0.0").await;
    let all: Vec<&Device> = ds.iter().collect();
    let dep = rollout(
        &app,
        &all,
        json!({"waves": [1, 100], "first_tag": "canary", "max_failures": 0, "on_failure": "abort"}),
    )
    .await;
    let id = dep["id"].as_str().unwrap().to_owned();
    assert_eq!(commands(&app, &ds[1]).await, [id.as_str()]);
    report(&app, &ds[1], &id, "failed").await;
    let dep = get_dep(&app, &id).await;
    assert_eq!(dep["status"], "failed");
    assert_eq!(dep["counts"]["cancelled"], 2);
    assert_eq!(dep["counts"]["waiting"], 0);
    assert!(
        dep["rollout"]["paused_reason"]
            .as_str()
            .unwrap()
            .starts_with("aborted")
    );
    for i in [0, 2] {
        assert_eq!(target(&dep, &ds[i])["status"], "cancelled");
        assert!(commands(&app, &ds[i]).await.is_empty());
    }
}

/// A target not final in time is `timed_out` (a failure for the gate); a result that
/// arrives later still records the device's truth.
#[tokio::test]
async fn a_target_times_out_and_a_late_result_records_the_truth() {
    let app = TestApp::new();
    let ds = devices(&app, 2).await;
    app.bundle("1.0.0").await;
    let dep = rollout(
        &app,
        &[&ds[0], &ds[1]],
        json!({"target_timeout_seconds": 1}),
    )
    .await;
    let id = dep["id"].as_str().unwrap().to_owned();
    let mut events = app.state.events.subscribe();
    // ds[0] is delivered and hangs; ds[1] never comes online.
    assert_eq!(commands(&app, &ds[0]).await, [id.as_str()]);
    let dep = eventually(5, "both targets time out", || async {
        let dep = get_dep(&app, &id).await;
        (dep["counts"]["timed_out"] == 2).then_some(dep)
    })
    .await;
    assert_eq!(dep["status"], "failed");
    assert_eq!(dep["rollout"]["waves"][0]["failed"], 2);
    assert!(
        target(&dep, &ds[0])["error_message"]
            .as_str()
            .unwrap()
            .contains("target_timeout_seconds")
    );
    // The events follow the stored change (after its fsync): wait for them.
    let mut timed_out = Vec::new();
    while timed_out.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("the timeout events")
            .unwrap();
        if let ServerEvent::Deployment(d) = ev
            && let Some(RolloutChange::TargetTimedOut { device_id }) = d.change
        {
            timed_out.push(device_id);
        }
    }
    timed_out.sort();
    let mut want = vec![ds[0].id.clone(), ds[1].id.clone()];
    want.sort();
    assert_eq!(timed_out, want);
    // (The heartbeat index learns of it before the events are sent.)
    assert!(commands(&app, &ds[0]).await.is_empty(), "no more re-sends");
    // The hung device finishes after all: its truth is recorded.
    report(&app, &ds[0], &id, "success").await;
    let dep = get_dep(&app, &id).await;
    assert_eq!(target(&dep, &ds[0])["status"], "success");
    assert_eq!(dep["counts"]["timed_out"], 1);
    assert_eq!(
        dep["rollout"]["waves"][0]["failed"], 2,
        "the decision stands"
    );
    let hist = app
        .get(&format!("/api/v1/devices/{}/bundle-history", ds[0].id))
        .await
        .expect(StatusCode::OK);
    assert_eq!(hist[0]["status"], "success");
    let dev = app
        .get(&format!("/api/v1/devices/{}", ds[0].id))
        .await
        .expect(StatusCode::OK);
    assert_eq!(dev["current_bundle_version"], "1.0.0");
}

/// `auto_advance: false`: a good wave holds the rollout until the operator resumes,
/// which opens the next wave.
#[tokio::test]
async fn without_auto_advance_resume_opens_the_next_wave() {
    let app = TestApp::new();
    let ds = devices(&app, 2).await;
    tag(&app, &ds[0], &["canary"]).await;
    app.bundle("1.0.0").await;
    let dep = rollout(
        &app,
        &[&ds[0], &ds[1]],
        json!({"waves": [50, 100], "first_tag": "canary", "auto_advance": false}),
    )
    .await;
    let id = dep["id"].as_str().unwrap().to_owned();
    assert_eq!(commands(&app, &ds[0]).await, [id.as_str()]);
    report(&app, &ds[0], &id, "success").await;
    let dep = get_dep(&app, &id).await;
    assert_eq!(dep["status"], "paused");
    assert!(
        dep["rollout"]["paused_reason"]
            .as_str()
            .unwrap()
            .contains("resume to open wave 1")
    );
    assert!(commands(&app, &ds[1]).await.is_empty());
    let dep = app
        .post(&format!("{DEPS}/{id}/resume"), json!({}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(dep["rollout"]["current_wave"], 1);
    assert_eq!(commands(&app, &ds[1]).await, [id.as_str()]);
}

/// `start_at` in the future: `scheduled`, nothing delivered until then.
#[tokio::test]
async fn start_at_schedules_the_first_wave() {
    let app = TestApp::new();
    let d = app.device().await;
    app.bundle("1.0.0").await;
    let at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let dep = rollout(&app, &[&d], json!({"start_at": at})).await;
    let id = dep["id"].as_str().unwrap().to_owned();
    assert_eq!(dep["status"], "scheduled");
    assert_eq!(dep["counts"]["waiting"], 1);
    assert!(dep["rollout"]["waves"][0]["opened_at"].is_null());
    assert!(commands(&app, &d).await.is_empty());
    let list = app
        .get(&format!("{DEPS}?status=scheduled"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    eventually(5, "the first wave opens at start_at", || async {
        let dep = get_dep(&app, &id).await;
        (dep["status"] == "pending" && dep["counts"]["pending"] == 1).then_some(())
    })
    .await;
    assert_eq!(commands(&app, &d).await, [id]);
}

/// `max_per_minute` releases the wave's targets gradually (the first at once).
#[tokio::test]
async fn pacing_releases_targets_gradually() {
    let app = TestApp::new();
    let ds = devices(&app, 3).await;
    app.bundle("1.0.0").await;
    let all: Vec<&Device> = ds.iter().collect();
    let dep = rollout(&app, &all, json!({"max_per_minute": 1})).await;
    let id = dep["id"].as_str().unwrap().to_owned();
    assert_eq!(dep["counts"]["pending"], 1);
    assert_eq!(dep["counts"]["waiting"], 2);
    // A few timer ticks later the budget has not grown (one a minute).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let dep = get_dep(&app, &id).await;
    assert_eq!(dep["counts"]["waiting"], 2);
    let mut got = 0;
    for d in &ds {
        got += commands(&app, d).await.len();
    }
    assert_eq!(got, 1);
}

/// An operator's pause holds deliveries; cancel covers waiting targets too.
#[tokio::test]
async fn pause_holds_deliveries_and_cancel_covers_waiting_targets() {
    let app = TestApp::new();
    let ds = devices(&app, 4).await;
    app.bundle("1.0.0").await;
    let all: Vec<&Device> = ds.iter().collect();
    let dep = rollout(&app, &all, json!({"waves": [50, 100]})).await;
    let id = dep["id"].as_str().unwrap().to_owned();
    let open: Vec<&Device> = ds
        .iter()
        .filter(|d| target(&dep, d)["status"] == "pending")
        .collect();
    assert_eq!(open.len(), 2);
    let dep = app
        .post(&format!("{DEPS}/{id}/pause"), json!({}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(dep["status"], "paused");
    assert_eq!(dep["rollout"]["paused_reason"], "paused by operator");
    assert!(commands(&app, open[0]).await.is_empty());
    app.post(&format!("{DEPS}/{id}/resume"), json!({}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(commands(&app, open[0]).await, [id.as_str()]);
    let dep = app
        .post(&format!("{DEPS}/{id}/cancel"), json!({}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(dep["counts"]["cancelled"], 3);
    assert_eq!(dep["counts"]["in_progress"], 1);
    assert_eq!(dep["counts"]["waiting"], 0);
    // A deployment without a rollout has nothing to pause.
    let plain = app.deploy("1.0.0", &[&ds[0]]).await;
    let r = app
        .post(
            &format!("{DEPS}/{}/pause", plain["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    r.expect(StatusCode::CONFLICT);
    app.post(&format!("{DEPS}/nope/pause"), json!({}))
        .await
        .expect(StatusCode::NOT_FOUND);
}

/// `deployment` events say when a wave opens and when a gate trips.
#[tokio::test]
async fn events_carry_waves_and_gates() {
    let app = TestApp::new();
    let ds = devices(&app, 3).await;
    tag(&app, &ds[0], &["canary"]).await;
    app.bundle("1.0.0").await;
    let mut events = app.state.events.subscribe();
    let all: Vec<&Device> = ds.iter().collect();
    let dep = rollout(
        &app,
        &all,
        json!({"waves": [1, 100], "first_tag": "canary", "max_failures": 0}),
    )
    .await;
    let id = dep["id"].as_str().unwrap().to_owned();
    commands(&app, &ds[0]).await;
    report(&app, &ds[0], &id, "success").await;
    commands(&app, &ds[1]).await;
    report(&app, &ds[1], &id, "failed").await;
    let mut changes = Vec::new();
    while let Ok(ev) = events.try_recv() {
        if let ServerEvent::Deployment(d) = ev
            && let Some(c) = d.change
        {
            assert!(d.rollout.is_some());
            changes.push(c);
        }
    }
    assert_eq!(
        changes,
        [
            RolloutChange::WaveOpened { wave: 0 },
            RolloutChange::WaveOpened { wave: 1 },
            RolloutChange::GateTripped {
                reason: "1 failures exceed max_failures 0".into()
            },
        ]
    );
}

/// A restart in the middle of a rollout: a paused rollout stays paused, a delivered
/// target is not delivered anew, the timers resume from the stored times.
#[tokio::test]
async fn a_rollout_survives_a_restart() {
    let app = TestApp::new();
    let ds = devices(&app, 4).await;
    tag(&app, &ds[0], &["canary"]).await;
    app.bundle("1.0.0").await;
    let all: Vec<&Device> = ds.iter().collect();
    let dep = rollout(
        &app,
        &all,
        json!({"waves": [1, 100], "first_tag": "canary", "target_timeout_seconds": 5}),
    )
    .await;
    let id = dep["id"].as_str().unwrap().to_owned();
    assert_eq!(commands(&app, &ds[0]).await, [id.as_str()]);
    report(&app, &ds[0], &id, "success").await;
    // Wave 1 open; ds[1] delivered, then the operator pauses.
    assert_eq!(commands(&app, &ds[1]).await, [id.as_str()]);
    app.post(&format!("{DEPS}/{id}/pause"), json!({}))
        .await
        .expect(StatusCode::OK);
    let before = get_dep(&app, &id).await;

    let app = app.restart().await;
    let dep = get_dep(&app, &id).await;
    assert_eq!(dep["status"], "paused", "a paused rollout stays paused");
    assert_eq!(dep["counts"], before["counts"]);
    assert_eq!(dep["rollout"], before["rollout"]);
    // Still held: the undelivered targets get nothing; the delivered one its command
    // again (at-least-once), still in progress, not delivered a second time.
    assert!(commands(&app, &ds[2]).await.is_empty());
    assert_eq!(commands(&app, &ds[1]).await, [id.as_str()]);
    assert_eq!(get_dep(&app, &id).await["counts"]["in_progress"], 1);
    app.post(&format!("{DEPS}/{id}/resume"), json!({}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(commands(&app, &ds[2]).await, [id.as_str()]);
    let app = app.restart().await;
    // The timeout runs from the stored wave opening, across the restart: ds[3] never
    // came online; ds[1] and ds[2] hang.
    let dep = eventually(12, "the targets time out after the restart", || async {
        let dep = get_dep(&app, &id).await;
        (dep["counts"]["timed_out"] == 3).then_some(dep)
    })
    .await;
    assert_eq!(dep["status"], "failed");
    assert_eq!(dep["counts"]["success"], 1);
}
