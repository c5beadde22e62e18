//! What an operator needs at 2 a.m. (SPEC §4), on reviewed 80×24 snapshots: why a
//! deploy failed (the drill-down from a target or a history row), failures standing out
//! in the Fleet (LAST DEPLOY, a marker, the filter), an honest state while the server is
//! lost, help that scrolls, and a deploy picker that knows which bundles failed.

#![allow(clippy::unwrap_used)]

mod support; // fixtures, an app loaded with them, keys, drawing

use crossterm::event::KeyCode;
use kernex_common::api::{CreateDeployment, Deployment, DeviceSummary};
use kernex_console::action::View;
use kernex_console::app::request::{Done, Msg, Request};
use kernex_console::app::{App, Mode};
use kernex_console::live::LiveEvent;
use serde_json::json;
use support::*;

const FAILED_DEP: &str = "019ab7f1aa0b7c3d8e9f0a1b2c3d4e60";

/// What the broken fixture's deploy script says, and more: long enough to be cut at 80
/// columns, with a colour code and a progress line redrawn with `\r`.
const ERROR: &str = "deploy script deploy.sh exited with status 3: error: migration 0042 \
                     failed (table devices is locked by another process)";

fn log_tail() -> String {
    let mut log = String::from("deploying 1.3.0\ncopying files 10%\rcopying files 100%\n");
    for i in 1..=12 {
        log.push_str(&format!("applying migration {:04}\n", 30 + i));
    }
    log.push_str("\u{1b}[31merror: migration 0042 failed\u{1b}[0m\n");
    log.push_str("rolling back to 1.1.0\n");
    log
}

/// A finished rollout of 1.3.0: D1 failed (and went back to 1.1.0), D2 succeeded, D3
/// failed while installing.
fn failed_deployment() -> Deployment {
    serde_json::from_value(json!({
        "id": FAILED_DEP, "kind": "deploy", "bundle_id": "b-1.3.0", "bundle_version": "1.3.0",
        "target_device_ids": [D1, D2, D3], "status": "failed",
        "created_at": at(30), "updated_at": at(10), "completed_at": at(10),
        "counts": {"pending": 0, "in_progress": 0, "success": 1, "failed": 2, "cancelled": 0},
        "devices": [
            {"device_id": D1, "status": "failed", "phase": "installing", "progress_pct": 0,
             "error_message": ERROR, "log_tail": log_tail(), "updated_at": at(12)},
            {"device_id": D2, "status": "success", "phase": "health_check", "progress_pct": 100,
             "error_message": null, "log_tail": "installed 1.3.0\n", "updated_at": at(11)},
            {"device_id": D3, "status": "failed", "phase": "installing", "progress_pct": 0,
             "error_message": "deploy.sh exited with 3", "log_tail": null, "updated_at": at(10)},
        ],
    }))
    .unwrap()
}

/// The fleet as the server reports it after that rollout.
fn fleet_after_rollout() -> Vec<DeviceSummary> {
    let last = |status: &str, back: Option<&str>| {
        json!({"deployment_id": FAILED_DEP, "kind": "deploy", "bundle_version": "1.3.0",
               "status": status, "rolled_back_to": back, "at": at(10)})
    };
    let mut devices = fleet();
    for (d, l) in devices.iter_mut().zip([
        Some(last("failed", Some("1.1.0"))),
        Some(last("success", None)),
        Some(last("failed", None)),
    ]) {
        d.last_deployment = l.map(|l| serde_json::from_value(l).unwrap());
    }
    devices[0].current_bundle_version = Some("1.1.0".into());
    devices[1].current_bundle_version = Some("1.3.0".into());
    devices
}

/// `loaded()` after the failed rollout of 1.3.0.
fn after_failure() -> App {
    let mut app = loaded();
    app.on_msg(Msg::DevicePage {
        generation: 1,
        page: fleet_after_rollout(),
        last: true,
    });
    app.on_msg(Msg::Deployments(vec![failed_deployment(), deployment()]));
    app.take_requests();
    app
}

/// The Deployments view, on the newest (the failed rollout).
fn deployments_view(app: &mut App) {
    key(app, KeyCode::Tab);
    keys(app, "g");
}

// ------------------------------------------------------------------- why it failed

#[test]
fn a_failed_target_opens_its_whole_error_and_log() {
    let mut app = after_failure();
    deployments_view(&mut app);
    assert_eq!(app.view, View::Deployments);
    // Enter opens the targets with the cursor on the first failed one; its error is cut
    // between words, with "…".
    key(&mut app, KeyCode::Enter);
    insta::assert_snapshot!("drill_1_targets", snap(&mut app));
    // Enter again drills in (it no longer closes the list).
    key(&mut app, KeyCode::Enter);
    assert!(matches!(app.mode, Mode::Details(_)));
    insta::assert_snapshot!("drill_2_details", snap(&mut app));
    // It scrolls to the end of the log.
    key(&mut app, KeyCode::End);
    insta::assert_snapshot!("drill_3_scrolled", snap(&mut app));
    // Esc closes it, back on the same target in the open list.
    key(&mut app, KeyCode::Esc);
    assert!(matches!(app.mode, Mode::Normal));
    assert!(app.deployments.expanded);
    assert_eq!(app.deployments.target_scroll.selected, 0);
}

#[test]
fn l_on_a_deployment_opens_its_first_failure() {
    let mut app = after_failure();
    deployments_view(&mut app);
    keys(&mut app, "l");
    let s = snap(&mut app);
    assert!(
        s.contains("deploy 1.3.0 on 019ab7e0c4a17d3e9b2f5c6d7e8f9a01"),
        "{s}"
    );
    assert!(
        s.contains("locked by another process"),
        "the whole error: {s}"
    );
    // `l` again closes it.
    keys(&mut app, "l");
    assert!(matches!(app.mode, Mode::Normal));
}

#[test]
fn a_history_row_opens_its_report() {
    let mut app = device_open();
    let mut data = device_data();
    data.history[0].error_message = Some(ERROR.into());
    data.history[0].log_tail = Some(log_tail());
    app.on_msg(Msg::DeviceView(Box::new(data)));
    // The failed 1.2.0 row is the newest, selected; `l` opens it.
    keys(&mut app, "l");
    insta::assert_snapshot!("drill_history", snap(&mut app));
    key(&mut app, KeyCode::Esc);
    // Rows are selectable: Enter on the next one opens that one.
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Enter);
    let s = snap(&mut app);
    assert!(s.contains("deploy 1.1.0 on"), "{s}");
    assert!(s.contains("no error and no log"), "{s}");
}

#[test]
fn a_failed_target_never_reads_installing_0_percent() {
    let mut app = after_failure();
    deployments_view(&mut app);
    key(&mut app, KeyCode::Enter);
    let s = snap(&mut app);
    assert!(!s.contains("0%"), "{s}");
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Down); // D3, failed while installing
    key(&mut app, KeyCode::Enter);
    let s = snap(&mut app);
    assert!(
        s.contains("failed during installing") && !s.contains("0%"),
        "{s}"
    );
}

// --------------------------------------------------------- failures stand out

#[test]
fn the_fleet_shows_each_devices_last_deploy() {
    let mut app = after_failure();
    insta::assert_snapshot!("fleet_last_deploy", snap(&mut app));
}

#[test]
fn the_filter_matches_result_words() {
    let mut app = after_failure();
    keys(&mut app, "/failed");
    app.prepare();
    let ids: Vec<_> = app
        .fleet
        .window(0, 10)
        .map(|d| d.device_id.clone())
        .collect();
    assert_eq!(ids, [D1, D3]);
    key(&mut app, KeyCode::Enter);
    // A second `/` starts afresh: the old text shows selected and typing replaces it.
    keys(&mut app, "/success");
    app.prepare();
    assert_eq!(app.fleet.filter, "success");
    assert_eq!(app.fleet.selected().unwrap().device_id, D2);
    key(&mut app, KeyCode::Enter);
    // Enter right after `/` keeps the old filter.
    keys(&mut app, "/");
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.fleet.filter, "success");
}

#[test]
fn sorting_by_last_deploy_puts_failures_first() {
    let mut app = after_failure();
    keys(&mut app, "ss");
    app.prepare();
    assert_eq!(app.fleet.sort.name(), "last deploy");
    let ids: Vec<_> = app
        .fleet
        .window(0, 10)
        .map(|d| d.device_id.clone())
        .collect();
    assert_eq!(ids, [D1, D3, D4, D5, D2]);
}

// ------------------------------------------------------------------ honest state

#[test]
fn a_lost_server_leaves_devices_stale_never_offline() {
    let mut app = after_failure();
    app.on_msg(Msg::Live(LiveEvent::Disconnected {
        error: "cannot reach http://127.0.0.1:8000: connection refused".into(),
        attempt: 3,
        retry_in: std::time::Duration::from_secs(2),
    }));
    // Long after every device would have missed three beats.
    app.tick(now() + chrono::Duration::minutes(10));
    app.fixed_now = Some(now() + chrono::Duration::minutes(10));
    insta::assert_snapshot!("stale_fleet", snap(&mut app));
    assert_eq!(app.fleet.online(), 3);
    assert_eq!(app.fleet.get(D1).unwrap().status.as_str(), "online");

    // Back: stale until the re-read has the server's word, then ageing works again.
    app.on_msg(Msg::Live(LiveEvent::Connected));
    assert!(app.fleet.stale_since.is_some());
    let reqs = app.take_requests();
    assert!(reqs.contains(&Request::DevicePage {
        generation: 2,
        after: None
    }));
    app.on_msg(Msg::DevicePage {
        generation: 2,
        page: fleet_after_rollout(),
        last: true,
    });
    assert!(app.fleet.stale_since.is_none());
    let s = snap(&mut app);
    assert!(!s.contains("stale") && s.contains("● live"), "{s}");
    app.tick(now() + chrono::Duration::minutes(10));
    assert_eq!(app.fleet.get(D1).unwrap().status.as_str(), "offline");
}

/// A hung server keeps the connection open and says nothing, not even its keep-alive:
/// that silence is the server's, not the devices'.
#[test]
fn a_silent_stream_makes_the_fleet_stale_not_offline() {
    let mut app = after_failure();
    let later = now() + chrono::Duration::minutes(5);
    app.fixed_now = Some(later);
    app.tick(later);
    let s = snap(&mut app);
    assert!(s.contains("◌ server silent — stale since 12:00:00"), "{s}");
    assert!(s.contains("stale") && !s.contains("offline  1.1.0"), "{s}");
    assert_eq!(app.fleet.get(D1).unwrap().status.as_str(), "online");
    // It speaks again (the stream never broke): current again, and silent devices are
    // now told apart from a silent server.
    app.on_msg(Msg::Live(LiveEvent::Alive));
    assert!(app.fleet.stale_since.is_none());
    app.tick(later);
    assert_eq!(app.fleet.get(D1).unwrap().status.as_str(), "offline");
}

#[test]
fn the_device_view_says_stale_too() {
    let mut app = device_open();
    app.on_msg(Msg::Live(LiveEvent::Disconnected {
        error: "connection refused".into(),
        attempt: 1,
        retry_in: std::time::Duration::from_secs(1),
    }));
    let s = snap(&mut app);
    assert!(s.contains("status stale"), "{s}");
    // With the Device tab the header is narrower: the short form still says since when.
    assert!(s.contains("stale since 12:00:00"), "{s}");
}

// -------------------------------------------------------------------------- help

#[test]
fn help_scrolls_to_every_key_at_80x24() {
    let mut app = loaded();
    keys(&mut app, "?");
    let top = snap(&mut app);
    for k in [" ?  ", " Esc ", " q ^C "] {
        assert!(top.contains(k), "{k:?} is on the first page: {top}");
    }
    key(&mut app, KeyCode::PageDown);
    key(&mut app, KeyCode::PageDown);
    key(&mut app, KeyCode::PageDown);
    insta::assert_snapshot!("help_scrolled", snap(&mut app));
    key(&mut app, KeyCode::Home);
    assert!(snap(&mut app).contains(" q ^C "));
    keys(&mut app, "q");
    assert!(matches!(app.mode, Mode::Normal) && !app.quit);
}

// ------------------------------------------------------------------- the picker

#[test]
fn the_picker_marks_failed_bundles_and_starts_on_a_good_one() {
    let mut app = after_failure();
    assert_eq!(app.failed_by_version().get("1.3.0"), Some(&2));
    keys(&mut app, "d");
    insta::assert_snapshot!("picker_failed_bundles", snap(&mut app));
    // Enter, Enter, y deploys 1.2.0 (the newest without a failure), not 1.3.0.
    key(&mut app, KeyCode::Enter);
    key(&mut app, KeyCode::Enter);
    keys(&mut app, "y");
    let want = CreateDeployment {
        bundle_version: Some("1.2.0".into()),
        target_device_ids: vec![D1.into()],
        ..Default::default()
    };
    assert_eq!(app.take_requests(), vec![Request::Deploy(want)]);
}

#[test]
fn the_tag_confirmation_repeats_how_many_devices_and_the_failures() {
    let mut app = after_failure();
    keys(&mut app, "d");
    key(&mut app, KeyCode::Up); // 1.3.0, failed on two devices
    key(&mut app, KeyCode::Enter);
    key(&mut app, KeyCode::Down); // a tag
    keys(&mut app, "demo");
    key(&mut app, KeyCode::Enter);
    insta::assert_snapshot!("picker_tag_confirm", snap(&mut app));
}

// ------------------------------------------------------------------ smaller ones

#[test]
fn the_deploy_toast_does_not_freeze_a_status() {
    let mut app = loaded();
    let mut d = deployment();
    d.status = kernex_common::api::DeploymentStatus::Pending;
    app.on_msg(Msg::Done(Ok(Done::Created(Box::new(d)))));
    let s = snap(&mut app);
    assert!(s.contains("created deploy of 1.1.0 to 3 devices"), "{s}");
    assert!(!s.contains(": pending"), "{s}");
}

#[test]
fn fix_the_marked_field_goes_once_the_field_is_edited() {
    let mut app = device_open();
    keys(&mut app, "c");
    key(&mut app, KeyCode::Backspace);
    keys(&mut app, "3"); // 3 s: too short
    key(&mut app, KeyCode::Enter);
    assert!(snap(&mut app).contains("fix the marked field"));
    key(&mut app, KeyCode::Backspace);
    keys(&mut app, "30");
    assert!(!snap(&mut app).contains("fix the marked field"));
}

#[test]
fn tags_are_not_squeezed_while_other_columns_have_room() {
    let mut app = after_failure();
    for width in [100, 120, 140] {
        let s = screen(&mut app, width, 30);
        assert!(s.contains("demo,site:berlin,canary"), "at {width}: {s}");
    }
}

#[test]
fn l_in_the_fleet_opens_the_devices_last_deploy() {
    let mut app = loaded();
    app.on_msg(Msg::DevicePage {
        generation: 1,
        page: fleet_after_rollout(),
        last: true,
    });
    // A list read leaves targets out: `l` reads the deployment, the panel fills in.
    let mut listed = failed_deployment();
    listed.devices.clear();
    app.on_msg(Msg::Deployments(vec![listed, deployment()]));
    app.take_requests();
    keys(&mut app, "l");
    assert_eq!(
        app.take_requests(),
        vec![Request::Deployment(FAILED_DEP.into())]
    );
    assert!(snap(&mut app).contains("reading it from the server…"));
    app.on_msg(Msg::Deployment(Box::new(failed_deployment())));
    let s = snap(&mut app);
    assert!(
        s.contains("rolled back to 1.1.0") && s.contains("error: migration 0042 failed"),
        "{s}"
    );
}
