//! Rollouts in the TUI (SPEC §6): the Deployments view shows the waves, the gate that
//! holds the rollout and the reason of a pause; `p` pauses or resumes with a
//! confirmation that says what changes; `C` cancels waiting targets too.

#![allow(clippy::unwrap_used)]

mod support; // fixtures, an app loaded with them, keys, drawing

use crossterm::event::KeyCode;
use kernex_common::api::Deployment;
use kernex_console::app::request::{Done, Msg, Request};
use serde_json::json;
use support::*;

/// A canary rollout over D1 (wave 1, failed) and D2, D3 (wave 2, waiting), paused by
/// its failure gate — or, with `paused` false, still running its first wave.
fn rollout(paused: bool) -> Deployment {
    let reason = paused.then_some("1 failures exceed max_failures 0");
    serde_json::from_value(json!({
        "id": DEP, "kind": "deploy", "bundle_id": "b-1.2.0", "bundle_version": "1.2.0",
        "target_device_ids": [D1, D2, D3],
        "status": if paused { "paused" } else { "in_progress" },
        "created_at": at(60), "updated_at": at(5), "completed_at": null,
        "counts": {"waiting": 2, "pending": 0, "in_progress": if paused { 0 } else { 1 },
                   "success": 0, "failed": if paused { 1 } else { 0 }, "timed_out": 0,
                   "cancelled": 0},
        "devices": [
            {"device_id": D1, "status": if paused { "failed" } else { "in_progress" },
             "phase": null, "progress_pct": null,
             "error_message": if paused { Some("deploy.sh exited with 3") } else { None },
             "log_tail": null, "updated_at": at(5)},
            {"device_id": D2, "status": "waiting", "phase": null, "progress_pct": null, "error_message": null, "log_tail": null, "updated_at": at(60)},
            {"device_id": D3, "status": "waiting", "phase": null, "progress_pct": null, "error_message": null, "log_tail": null, "updated_at": at(60)},
        ],
        "rollout": {
            "first_tag": "canary", "success_threshold_pct": 100, "soak_seconds": 60,
            "max_failures": 0, "max_failure_pct": null, "on_failure": "pause",
            "auto_advance": true, "target_timeout_seconds": 3600, "max_per_minute": null,
            "start_at": null, "current_wave": 0, "paused_reason": reason,
            "waves": [
                {"pct": 34, "targets": 1, "success": 0, "healthy": 0,
                 "failed": if paused { 1 } else { 0 }, "opened_at": at(60)},
                {"pct": 100, "targets": 2, "success": 0, "healthy": 0, "failed": 0,
                 "opened_at": null},
            ],
        },
    }))
    .unwrap()
}

fn with(dep: Deployment) -> kernex_console::app::App {
    let mut app = loaded();
    app.on_msg(Msg::Deployments(vec![dep]));
    app.take_requests();
    key(&mut app, KeyCode::Tab);
    app
}

#[test]
fn a_paused_rollout_shows_its_waves_and_reason_and_resumes_on_confirm() {
    let mut app = with(rollout(true));
    let s = snap(&mut app);
    assert!(
        s.contains("paused: 1 failures exceed max_failures 0"),
        "{s}"
    );
    assert!(s.contains("▸1 34% 0/1 ok 1 failed"), "{s}");
    assert!(s.contains("2 100% waiting"), "{s}");
    insta::assert_snapshot!("rollout_1_paused", s);
    key(&mut app, KeyCode::Char('p'));
    let s = snap(&mut app);
    assert!(s.contains("Resume rollout"), "{s}");
    assert!(s.contains("accepts the 1 failure(s) so far"), "{s}");
    insta::assert_snapshot!("rollout_2_resume_confirm", s);
    keys(&mut app, "y");
    assert_eq!(app.take_requests(), vec![Request::Resume(DEP.into())]);
    // The reply shows it running again.
    app.on_msg(Msg::Done(Ok(Done::PausedOrResumed(Box::new(rollout(
        false,
    ))))));
    let s = snap(&mut app);
    assert!(s.contains("wave 1/2 gate: 0/1 healthy, needs 1"), "{s}");
}

#[test]
fn pausing_a_running_rollout_says_what_is_held() {
    let mut app = with(rollout(false));
    key(&mut app, KeyCode::Char('p'));
    let s = snap(&mut app);
    assert!(s.contains("Pause rollout"), "{s}");
    assert!(s.contains("2 pending or waiting target(s) are held"), "{s}");
    assert!(s.contains("1 in progress finish"), "{s}");
    keys(&mut app, "y");
    assert_eq!(app.take_requests(), vec![Request::Pause(DEP.into())]);
    // Cancel counts the waiting targets among those it cancels.
    key(&mut app, KeyCode::Char('C'));
    let s = snap(&mut app);
    assert!(
        s.contains("2 pending or waiting target(s) are cancelled"),
        "{s}"
    );
}

#[test]
fn a_deployment_without_a_rollout_cannot_be_paused() {
    let mut app = loaded();
    key(&mut app, KeyCode::Tab);
    key(&mut app, KeyCode::Char('p'));
    assert!(app.take_requests().is_empty());
    let s = snap(&mut app);
    assert!(!s.contains("Pause rollout"), "{s}");
}

/// The deploy confirmation offers rollout presets: `w` cycles all at once → canary →
/// 10 % → 100 % → custom waves (typed, checked before anything is sent).
#[test]
fn the_deploy_dialog_offers_rollout_presets() {
    let mut app = loaded();
    key(&mut app, KeyCode::Char('d'));
    key(&mut app, KeyCode::Down); // 1.2.0
    key(&mut app, KeyCode::Down); // 1.1.0
    key(&mut app, KeyCode::Enter);
    key(&mut app, KeyCode::Enter);
    let s = snap(&mut app);
    assert!(s.contains("w rollout preset"), "{s}");
    assert!(!s.contains("rollout:"), "all at once is the default: {s}");
    keys(&mut app, "w");
    let s = snap(&mut app);
    assert!(s.contains("rollout: canary → 10 % → 100 %"), "{s}");
    insta::assert_snapshot!("rollout_3_deploy_canary_preset", s);
    // Custom: a bad list is refused in the dialog, a good one is sent.
    keys(&mut app, "w");
    keys(&mut app, "50,10");
    keys(&mut app, "y");
    assert!(
        app.take_requests().is_empty(),
        "an invalid custom rollout was sent"
    );
    let s = snap(&mut app);
    assert!(s.contains("strictly ascending"), "{s}");
    for _ in 0..5 {
        key(&mut app, KeyCode::Backspace);
    }
    keys(&mut app, "25,100");
    keys(&mut app, "y");
    let reqs = app.take_requests();
    let [Request::Deploy(req)] = reqs.as_slice() else {
        panic!("{reqs:?}");
    };
    let r = req.rollout.as_ref().unwrap();
    assert_eq!(r.waves, [25, 100]);
    assert_eq!(r.max_failures, Some(0));
}

#[test]
fn the_canary_preset_sends_waves_and_the_first_tag() {
    let mut app = loaded();
    key(&mut app, KeyCode::Char('d'));
    key(&mut app, KeyCode::Enter);
    key(&mut app, KeyCode::Enter);
    keys(&mut app, "wy");
    let reqs = app.take_requests();
    let [Request::Deploy(req)] = reqs.as_slice() else {
        panic!("{reqs:?}");
    };
    let r = req.rollout.as_ref().unwrap();
    assert_eq!(r.waves, [1, 10, 100]);
    assert_eq!(r.first_tag.as_deref(), Some("canary"));
}

/// A live `deployment` event carries the rollout block and what moved it: the waves
/// update without a re-read and the event log says what happened.
#[test]
fn live_events_move_the_waves_and_log_the_change() {
    let mut app = with(rollout(false));
    let mut r = serde_json::to_value(rollout(false)).unwrap()["rollout"].clone();
    r["waves"][0]["healthy"] = json!(1);
    r["waves"][0]["success"] = json!(1);
    r["waves"][1]["opened_at"] = json!(at(1));
    r["current_wave"] = json!(1);
    app.on_msg(ev(
        "deployment",
        json!({"id": DEP, "status": "in_progress", "rollout": r,
               "change": {"type": "wave_opened", "wave": 1}}),
    ));
    let s = snap(&mut app);
    assert!(s.contains("▸2 100% 0/2 ok"), "{s}");
    assert!(s.contains("1 34% 1/1 ok"), "{s}");
    assert!(s.contains("deploy 1.2.0 rollout: wave 2 opened"), "{s}");
}
