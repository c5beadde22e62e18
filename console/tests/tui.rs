//! The console's screens and keyboard flows, drawn on a `TestBackend` and compared with
//! reviewed snapshots (`tests/snapshots/`). Server replies are fed in as messages, and the
//! requests the app makes are checked, so no server is needed and nothing is timed.

#![allow(clippy::unwrap_used)]

mod support; // fixtures, an app loaded with them, keys, drawing

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use kernex_common::api::events::ServerEvent;
use kernex_common::api::{ConfigUpdate, CreateDeployment, DeviceSummary, RollbackRequest};
use kernex_console::action::View;
use kernex_console::app::request::{Done, Msg, Request};
use kernex_console::app::{App, Link};
use kernex_console::live::LiveEvent;
use serde_json::{Value, json};
use support::*;

#[test]
fn fleet_view() {
    let mut app = loaded();
    key(&mut app, KeyCode::Char(' '));
    key(&mut app, KeyCode::Char(' '));
    insta::assert_snapshot!(snap(&mut app));
}

#[test]
fn fleet_view_wide_shows_every_column() {
    let mut app = loaded();
    insta::assert_snapshot!(screen(&mut app, 140, 30));
}

#[test]
fn fleet_filter_narrows_the_table_and_esc_clears_it() {
    let mut app = loaded();
    key(&mut app, KeyCode::Char('/'));
    keys(&mut app, "berlin");
    insta::assert_snapshot!(snap(&mut app));
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.fleet.visible_len(), 2);
    key(&mut app, KeyCode::Esc);
    app.prepare();
    assert_eq!(app.fleet.visible_len(), 5);
}

#[test]
fn sorting_cycles_and_keeps_the_selection() {
    let mut app = loaded();
    key(&mut app, KeyCode::Down); // D2, 47.5% cpu
    // status, last deploy, version, cpu
    for _ in 0..4 {
        key(&mut app, KeyCode::Char('s'));
    }
    app.prepare();
    assert_eq!(app.fleet.sort.name(), "cpu");
    assert_eq!(app.fleet.selected().unwrap().device_id, D2);
    assert_eq!(
        app.fleet.scroll.selected, 0,
        "the busiest device sorts first"
    );
}

#[test]
fn device_view_with_sparklines_history_and_config() {
    let mut app = loaded();
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.view, View::Device);
    assert_eq!(app.take_requests(), vec![Request::DeviceView(D1.into())]);
    app.on_msg(Msg::DeviceView(Box::new(device_data())));
    insta::assert_snapshot!(snap(&mut app));
    // Esc goes back where we came from.
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.view, View::Fleet);
}

#[test]
fn deployments_view_with_gauge_and_targets() {
    let mut app = loaded();
    key(&mut app, KeyCode::Tab);
    assert_eq!(app.view, View::Deployments);
    insta::assert_snapshot!(snap(&mut app));
}

#[test]
fn bundles_view() {
    let mut app = loaded();
    app.on_key(KeyEvent::new(KeyCode::Char(':'), KeyModifiers::NONE));
    keys(&mut app, "bundles");
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.view, View::Bundles);
    insta::assert_snapshot!(snap(&mut app));
}

#[test]
fn help_lists_the_keymap() {
    let mut app = loaded();
    key(&mut app, KeyCode::Char('?'));
    let s = screen(&mut app, 80, 40);
    insta::assert_snapshot!(s);
    key(&mut app, KeyCode::Esc);
    assert!(!snap(&mut app).contains("help: keys"));
}

#[test]
fn deploy_to_marked_devices() {
    let mut app = loaded();
    key(&mut app, KeyCode::Char(' ')); // mark D1, move to D2
    key(&mut app, KeyCode::Char(' ')); // mark D2
    key(&mut app, KeyCode::Char('d'));
    insta::assert_snapshot!("deploy_1_bundle", snap(&mut app));
    key(&mut app, KeyCode::Down); // 1.2.0
    key(&mut app, KeyCode::Down); // 1.1.0
    key(&mut app, KeyCode::Enter);
    insta::assert_snapshot!("deploy_2_targets", snap(&mut app));
    key(&mut app, KeyCode::Enter);
    insta::assert_snapshot!("deploy_3_confirm", snap(&mut app));
    assert!(
        app.take_requests().is_empty(),
        "nothing is sent before confirming"
    );
    keys(&mut app, "y");
    let want = CreateDeployment {
        bundle_version: Some("1.1.0".into()),
        target_device_ids: vec![D1.into(), D2.into()],
        ..Default::default()
    };
    assert_eq!(app.take_requests(), vec![Request::Deploy(want)]);
    // The server's reply opens the deployment.
    let mut d = deployment();
    d.id = "019ab7f2000000000000000000000001".into();
    d.created_at = now();
    app.on_msg(Msg::Done(Ok(Done::Created(Box::new(d)))));
    assert_eq!(app.view, View::Deployments);
    assert!(app.fleet.marked.is_empty());
    insta::assert_snapshot!("deploy_4_created", snap(&mut app));
}

#[test]
fn deploy_to_a_tag() {
    let mut app = loaded();
    key(&mut app, KeyCode::Char('d'));
    key(&mut app, KeyCode::Enter); // 1.3.0
    // Options: the selected device, then a tag.
    key(&mut app, KeyCode::Down);
    keys(&mut app, "canary");
    insta::assert_snapshot!(snap(&mut app));
    key(&mut app, KeyCode::Enter);
    keys(&mut app, "y");
    let want = CreateDeployment {
        bundle_version: Some("1.3.0".into()),
        target_tags: vec!["canary".into()],
        ..Default::default()
    };
    assert_eq!(app.take_requests(), vec![Request::Deploy(want)]);
}

#[test]
fn a_bad_tag_is_refused_in_the_dialog() {
    let mut app = loaded();
    key(&mut app, KeyCode::Char('d'));
    key(&mut app, KeyCode::Enter);
    key(&mut app, KeyCode::Down);
    keys(&mut app, "no spaces");
    key(&mut app, KeyCode::Enter);
    assert!(snap(&mut app).contains("a tag is 1-64 chars"));
    assert!(app.take_requests().is_empty());
}

#[test]
fn declining_a_confirmation_sends_nothing() {
    let mut app = loaded();
    key(&mut app, KeyCode::Char('d'));
    key(&mut app, KeyCode::Enter);
    key(&mut app, KeyCode::Enter);
    keys(&mut app, "n");
    assert!(app.take_requests().is_empty());
    assert!(!snap(&mut app).contains("are you sure"));
}

#[test]
fn rollback_from_the_device_view() {
    let mut app = device_open();
    key(&mut app, KeyCode::Char('r'));
    insta::assert_snapshot!("rollback_1_version", snap(&mut app));
    key(&mut app, KeyCode::Enter);
    insta::assert_snapshot!("rollback_2_confirm", snap(&mut app));
    keys(&mut app, "y");
    let want = RollbackRequest {
        bundle_version: "1.0.0".into(),
        target_device_ids: vec![D1.into()],
        rollout: None,
    };
    assert_eq!(app.take_requests(), vec![Request::Rollback(want)]);
}

#[test]
fn rollback_from_the_fleet_reads_history_first() {
    let mut app = loaded();
    key(&mut app, KeyCode::Char('r'));
    assert_eq!(app.take_requests(), vec![Request::History(D1.into())]);
    assert!(snap(&mut app).contains("reading its history"));
    app.on_msg(Msg::History(D1.into(), history()));
    // D1 runs 1.0.0 in the fleet list, so 1.1.0 is offered and 1.0.0 is not.
    let s = snap(&mut app);
    assert!(s.contains("1.1.0") && !s.contains("▶ 1.0.0"), "{s}");
}

#[test]
fn rollback_without_history_says_so() {
    let mut app = loaded();
    key(&mut app, KeyCode::Char('r'));
    app.on_msg(Msg::History(D1.into(), Vec::new()));
    assert!(snap(&mut app).contains("no earlier successful version"));
}

#[test]
fn config_form_validates_then_puts_only_what_changed() {
    let mut app = device_open();
    key(&mut app, KeyCode::Char('c'));
    insta::assert_snapshot!("config_1_form", snap(&mut app));
    // polling_interval: 5 → 3 (too small).
    key(&mut app, KeyCode::Backspace);
    keys(&mut app, "3");
    key(&mut app, KeyCode::Enter);
    insta::assert_snapshot!("config_2_invalid", snap(&mut app));
    assert!(app.take_requests().is_empty());
    key(&mut app, KeyCode::Backspace);
    keys(&mut app, "30");
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Down); // log level
    key(&mut app, KeyCode::Left); // info → debug
    key(&mut app, KeyCode::Enter);
    let want = ConfigUpdate {
        polling_interval: Some(30),
        log_level: Some("debug".into()),
        ..Default::default()
    };
    assert_eq!(
        app.take_requests(),
        vec![Request::PutConfig(D1.into(), want)]
    );
    let mut c = config(3);
    c.polling_interval = 30;
    c.log_level = "debug".into();
    app.on_msg(Msg::Done(Ok(Done::Config(c))));
    insta::assert_snapshot!("config_3_saved", snap(&mut app));
}

#[test]
fn config_from_the_fleet_loads_the_current_values() {
    let mut app = loaded();
    key(&mut app, KeyCode::Char('c'));
    assert_eq!(app.take_requests(), vec![Request::Config(D1.into())]);
    assert!(snap(&mut app).contains("reading the current config"));
    app.on_msg(Msg::Config(config(2)));
    key(&mut app, KeyCode::Enter);
    assert!(snap(&mut app).contains("nothing changed"));
    assert!(app.take_requests().is_empty());
}

#[test]
fn accept_is_direct_reject_asks_first() {
    let mut app = loaded();
    keys(&mut app, "G"); // the last row: the pending D5
    assert_eq!(app.fleet.selected().unwrap().device_id, D5);
    keys(&mut app, "a");
    assert_eq!(app.take_requests(), vec![Request::Accept(D5.into())]);
    keys(&mut app, "x");
    assert!(app.take_requests().is_empty());
    insta::assert_snapshot!(snap(&mut app));
    keys(&mut app, "y");
    assert_eq!(app.take_requests(), vec![Request::Reject(D5.into())]);
}

#[test]
fn cancel_a_deployment_asks_first() {
    let mut app = loaded();
    key(&mut app, KeyCode::Tab);
    keys(&mut app, "C");
    assert!(app.take_requests().is_empty());
    assert!(snap(&mut app).contains("Cancel deployment: are you sure?"));
    keys(&mut app, "y");
    assert_eq!(app.take_requests(), vec![Request::Cancel(DEP.into())]);
}

#[test]
fn losing_the_server_shows_reconnecting_and_recovering_rereads() {
    let mut app = loaded();
    app.on_msg(Msg::Live(LiveEvent::Disconnected {
        error: "cannot reach http://127.0.0.1:8000: connection refused".into(),
        attempt: 3,
        retry_in: std::time::Duration::from_secs(2),
    }));
    insta::assert_snapshot!(snap(&mut app));
    app.on_msg(Msg::Live(LiveEvent::Connected));
    assert_eq!(app.link, Link::Live);
    let reqs = app.take_requests();
    assert!(
        reqs.contains(&Request::DevicePage {
            generation: 2,
            after: None
        }),
        "{reqs:?}"
    );
    // A device deleted while we were away disappears after the re-read.
    let mut page = fleet();
    page.retain(|d| d.device_id != D4);
    app.on_msg(Msg::DevicePage {
        generation: 2,
        page,
        last: true,
    });
    app.prepare();
    assert!(app.fleet.get(D4).is_none());
    assert_eq!(app.fleet.len(), 4);
}

#[test]
fn live_events_update_rows_without_a_refresh() {
    let mut app = loaded();
    let ev = |kind: &str, data: Value| {
        Msg::Live(LiveEvent::Event(Box::new(
            ServerEvent::parse(kind, &data.to_string()).unwrap(),
        )))
    };
    app.on_msg(ev("heartbeat", json!({
        "device_id": D3, "timestamp": at(0), "cpu_pct": 88.0, "memory_mb": 900.0,
        "status": "deploying 1.1.0", "current_bundle_version": "1.0.0", "agent_version": "0.1.0",
        "config_version": 2, "queued_reports": 0,
    })));
    app.on_msg(ev("deployment", json!({
        "id": DEP, "kind": "deploy", "bundle_id": "b-1.1.0", "bundle_version": "1.1.0",
        "status": "failed", "updated_at": at(0), "completed_at": at(0),
        "counts": {"pending": 0, "in_progress": 0, "success": 2, "failed": 1, "cancelled": 0},
        "device": {"device_id": D3, "status": "failed", "phase": null, "progress_pct": null,
                   "error_message": "health check failed", "log_tail": null, "updated_at": at(0)},
    })));
    app.on_msg(ev(
        "bundle",
        serde_json::to_value(bundle("2.0.0", 0)).unwrap(),
    ));
    let d3 = app.fleet.get(D3).unwrap();
    assert_eq!(d3.cpu_pct, Some(88.0));
    assert_eq!(d3.status.as_str(), "online");
    assert_eq!(app.bundles.items[0].version, "2.0.0");
    insta::assert_snapshot!(snap(&mut app));
    // A deployment we have not seen is read whole.
    app.on_msg(ev("deployment", json!({"id": "019ab7f3000000000000000000000009", "kind": "rollback", "bundle_version": "1.0.0", "status": "pending"})));
    assert_eq!(
        app.take_requests(),
        vec![Request::Deployment(
            "019ab7f3000000000000000000000009".into()
        )]
    );
}

#[test]
fn silent_devices_go_offline() {
    let mut app = loaded();
    // D1 was seen 3 s ago at an unknown cadence (60 s assumed): still online. (The
    // server's keep-alives say the stream is fine: silence is the device's.)
    let later = |app: &mut App, secs| {
        let t = now() + chrono::Duration::seconds(secs);
        app.fixed_now = Some(t);
        app.on_msg(Msg::Live(LiveEvent::Alive));
        app.tick(t);
    };
    later(&mut app, 100);
    app.prepare();
    assert_eq!(app.fleet.get(D1).unwrap().status.as_str(), "online");
    later(&mut app, 200);
    app.prepare();
    assert_eq!(app.fleet.get(D1).unwrap().status.as_str(), "offline");
}

#[test]
fn the_device_list_is_read_in_pages() {
    let mut app = App::new("http://x");
    app.on_msg(Msg::Live(LiveEvent::Connected));
    app.take_requests();
    let page: Vec<DeviceSummary> = (0..1000)
        .map(|i| {
            device(
                &format!("dev{i:06}"),
                "rpi4",
                "accepted",
                "online",
                None,
                1.0,
                Some(1),
                &[],
            )
        })
        .collect();
    app.on_msg(Msg::DevicePage {
        generation: 1,
        page,
        last: false,
    });
    assert_eq!(
        app.take_requests(),
        vec![Request::DevicePage {
            generation: 1,
            after: Some("dev000999".into())
        }]
    );
    assert!(app.loading_devices);
    // A page from an older re-read is ignored.
    app.on_msg(Msg::DevicePage {
        generation: 0,
        page: vec![device(
            "zzz",
            "x",
            "accepted",
            "never",
            None,
            0.0,
            None,
            &[],
        )],
        last: true,
    });
    assert!(app.fleet.get("zzz").is_none());
}

#[test]
fn a_hundred_thousand_devices_scroll_and_draw_only_what_shows() {
    let mut app = App::new("http://x");
    app.fixed_now = Some(now());
    app.on_msg(Msg::Live(LiveEvent::Connected));
    app.take_requests();
    for p in 0..100 {
        let page: Vec<DeviceSummary> = (0..1000)
            .map(|i| {
                device(
                    &format!("dev{:06}", p * 1000 + i),
                    "rpi4",
                    "accepted",
                    "online",
                    Some("1.0.0"),
                    (i % 100) as f64,
                    Some(5),
                    &["fleet"],
                )
            })
            .collect();
        app.on_msg(Msg::DevicePage {
            generation: 1,
            page,
            last: p == 99,
        });
    }
    assert_eq!(app.fleet.len(), 100_000);
    keys(&mut app, "G");
    let s = snap(&mut app);
    assert!(s.contains("100000 devices"), "{s}");
    assert!(s.contains(" dev099999 "), "the last device is drawn: {s}");
    assert!(
        !s.contains(" dev099984 "),
        "only one screenful is drawn: {s}"
    );
    // A page is the body's height (15 rows at 80×24).
    key(&mut app, KeyCode::PageUp);
    let s = snap(&mut app);
    assert!(
        s.contains(" dev099984 ") && !s.contains(" dev099999 "),
        "{s}"
    );
}

#[test]
fn every_view_draws_in_tiny_and_odd_sizes() {
    let mut app = device_open();
    for view in View::ALL {
        app.view = view;
        for (w, h) in [(80, 24), (20, 6), (1, 1), (200, 60), (79, 23)] {
            screen(&mut app, w, h);
        }
    }
    key(&mut app, KeyCode::Char('?'));
    screen(&mut app, 10, 4);
}

#[test]
fn ctrl_c_quits_even_inside_a_dialog() {
    let mut app = loaded();
    key(&mut app, KeyCode::Char('d'));
    app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert!(app.quit);
}

#[test]
fn command_line_opens_a_device_by_suffix_and_rejects_nonsense() {
    let mut app = loaded();
    keys(&mut app, ":");
    keys(&mut app, "device 8f9a03");
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.view, View::Device);
    assert_eq!(app.device.as_ref().unwrap().id, D3);
    keys(&mut app, ":");
    keys(&mut app, "frobnicate");
    key(&mut app, KeyCode::Enter);
    assert!(snap(&mut app).contains("unknown command"));
}

// ------------------------------------------------------------- regressions (review)

#[test]
fn deleting_a_device_below_the_selection_does_not_panic() {
    let mut app = loaded();
    keys(&mut app, "G"); // D5, the last row
    app.on_msg(ev("device", json!({"device_id": D2, "deleted": true})));
    let s = snap(&mut app);
    assert!(s.contains("4 devices"), "{s}");
    assert_eq!(
        app.fleet.selected().unwrap().device_id,
        D5,
        "the selection stays on D5"
    );
}

#[test]
fn a_device_that_registers_during_a_reread_is_kept() {
    let mut app = loaded();
    app.on_msg(Msg::Live(LiveEvent::Lagged));
    let reqs = app.take_requests();
    assert!(
        reqs.contains(&Request::DevicePage {
            generation: 2,
            after: None
        }),
        "{reqs:?}"
    );
    let newcomer = device(
        "019ab7e0c4a17d3e9b2f5c6d7e8f9a00",
        "rpi4",
        "accepted",
        "never",
        None,
        0.0,
        None,
        &[],
    );
    app.on_msg(ev("device", serde_json::to_value(&newcomer).unwrap()));
    // The re-read's page was read before it registered.
    app.on_msg(Msg::DevicePage {
        generation: 2,
        page: fleet(),
        last: true,
    });
    app.prepare();
    assert!(app.fleet.get(&newcomer.device_id).is_some());
    assert_eq!(app.fleet.len(), 6);
}

#[test]
fn lags_during_a_reread_queue_one_more_instead_of_restarting() {
    let mut app = loaded();
    app.on_msg(Msg::Live(LiveEvent::Lagged));
    app.take_requests();
    app.on_msg(Msg::Live(LiveEvent::Lagged));
    app.on_msg(Msg::Live(LiveEvent::Lagged));
    assert!(app.take_requests().is_empty(), "the running read goes on");
    app.on_msg(Msg::DevicePage {
        generation: 2,
        page: fleet(),
        last: true,
    });
    let reqs = app.take_requests();
    assert!(
        reqs.contains(&Request::DevicePage {
            generation: 3,
            after: None
        }),
        "{reqs:?}"
    );
}

#[test]
fn heartbeats_from_an_unknown_device_read_it_once() {
    let mut app = loaded();
    let beat = json!({"device_id": "019ab7e0c4a17d3e9b2f5c6d7e8f9aff", "timestamp": at(0), "cpu_pct": 1.0});
    app.on_msg(ev("heartbeat", beat.clone()));
    app.on_msg(ev("heartbeat", beat.clone()));
    assert_eq!(
        app.take_requests(),
        vec![Request::Device("019ab7e0c4a17d3e9b2f5c6d7e8f9aff".into())]
    );
    let row = device(
        "019ab7e0c4a17d3e9b2f5c6d7e8f9aff",
        "rpi4",
        "accepted",
        "online",
        None,
        1.0,
        Some(0),
        &[],
    );
    app.on_msg(Msg::Device(
        "019ab7e0c4a17d3e9b2f5c6d7e8f9aff".into(),
        Some(Box::new(row)),
    ));
    app.prepare();
    assert_eq!(app.fleet.len(), 6);
    // While a re-read runs, it will bring unknown devices itself.
    app.on_msg(Msg::Live(LiveEvent::Lagged));
    app.take_requests();
    app.on_msg(ev(
        "heartbeat",
        json!({"device_id": "someone-else", "cpu_pct": 1.0}),
    ));
    assert!(
        !app.take_requests()
            .iter()
            .any(|r| matches!(r, Request::Device(_)))
    );
}

#[test]
fn a_cancel_seen_live_re_reads_the_shown_deployment() {
    let mut app = loaded();
    key(&mut app, KeyCode::Tab);
    app.take_requests();
    // Cancel events carry counts but not which devices changed.
    app.on_msg(ev(
        "deployment",
        json!({
            "id": DEP, "status": "in_progress", "updated_at": at(0),
            "counts": {"pending": 0, "in_progress": 1, "success": 1, "failed": 0, "cancelled": 1},
        }),
    ));
    assert_eq!(app.take_requests(), vec![Request::Deployment(DEP.into())]);
    app.on_msg(ev("deployment", json!({
        "id": DEP, "counts": {"pending": 0, "in_progress": 0, "success": 2, "failed": 0, "cancelled": 1},
    })));
    assert!(app.take_requests().is_empty(), "one read at a time");
}

#[test]
fn a_finished_cancel_leaves_marks_and_view_alone() {
    let mut app = loaded();
    keys(&mut app, " ");
    let mut d = deployment();
    d.status = kernex_common::api::DeploymentStatus::Cancelled;
    app.on_msg(Msg::Done(Ok(Done::Cancelled(Box::new(d)))));
    assert_eq!(app.view, View::Fleet);
    assert_eq!(app.fleet.marked.len(), 1);
}

#[test]
fn a_failed_history_read_closes_the_rollback_picker() {
    let mut app = loaded();
    keys(&mut app, "r");
    let req = app.take_requests().remove(0);
    app.on_msg(Msg::Failed {
        request: req,
        error: "timed out".into(),
    });
    let s = snap(&mut app);
    assert!(
        !s.contains("reading its history") && s.contains("timed out"),
        "{s}"
    );
}

#[test]
fn a_refused_token_is_shown_as_such() {
    let mut app = loaded();
    app.on_msg(Msg::Live(LiveEvent::Refused {
        error: "server refused (401): invalid token (check --token / KERNEX_TOKEN)".into(),
    }));
    let s = snap(&mut app);
    assert!(
        s.contains("✗ token refused") && s.contains("invalid token"),
        "{s}"
    );
}

#[test]
fn a_new_bundle_does_not_move_the_bundle_selection() {
    let mut app = loaded();
    keys(&mut app, ":bundles");
    key(&mut app, KeyCode::Enter);
    key(&mut app, KeyCode::Down); // 1.2.0
    app.on_msg(ev(
        "bundle",
        serde_json::to_value(bundle("2.0.0", 0)).unwrap(),
    ));
    keys(&mut app, "d");
    assert!(snap(&mut app).contains("Deploy 1.2.0 to"));
}

#[test]
fn the_open_devices_history_is_re_read_when_its_own_target_finishes() {
    let mut app = device_open();
    app.on_msg(ev(
        "deployment",
        json!({
            "id": DEP, "status": "in_progress",
            "counts": {"pending": 1, "in_progress": 0, "success": 2, "failed": 0, "cancelled": 0},
            "device": {"device_id": D1, "status": "success", "phase": null, "progress_pct": null,
                       "error_message": null, "log_tail": null, "updated_at": at(0)},
        }),
    ));
    assert_eq!(app.take_requests(), vec![Request::History(D1.into())]);
}

#[test]
fn a_page_read_before_an_accept_does_not_undo_it() {
    let mut app = loaded();
    app.on_msg(Msg::Live(LiveEvent::Lagged));
    app.take_requests();
    // The operator accepts D5 while the re-read's page (still saying pending) is in flight.
    let accepted = device(
        D5,
        "jetson-nano",
        "accepted",
        "online",
        None,
        5.0,
        Some(2),
        &[],
    );
    app.on_msg(ev("device", serde_json::to_value(&accepted).unwrap()));
    app.on_msg(Msg::DevicePage {
        generation: 2,
        page: fleet(),
        last: true,
    });
    app.prepare();
    assert_eq!(app.fleet.get(D5).unwrap().admission.as_str(), "accepted");
    // The next re-read takes the server's word again.
    app.on_msg(Msg::Live(LiveEvent::Lagged));
    app.on_msg(Msg::DevicePage {
        generation: 3,
        page: fleet(),
        last: true,
    });
    assert_eq!(app.fleet.get(D5).unwrap().admission.as_str(), "pending");
}

#[test]
fn colon_device_takes_the_same_ids_as_the_scripted_commands() {
    let mut app = loaded();
    // Too short, or a prefix: refused with the scripted commands' reasons.
    app.command("device f9a02");
    let why = app.flash.take().unwrap().text;
    assert!(why.contains("too short"), "{why}");
    app.command("device 019ab7e0c4");
    let why = app.flash.take().unwrap().text;
    assert!(why.contains("no device id ends with"), "{why}");
    assert!(app.device.is_none());
    // A unique suffix of 6+ characters opens the device.
    app.command("device 8f9a02");
    assert_eq!(app.view, View::Device);
    assert_eq!(app.device.as_ref().unwrap().id, D2);
}
