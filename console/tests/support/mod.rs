//! Shared by the screen tests: a small fleet with bundles, a deployment and a device's
//! data at a fixed clock, an app loaded with them as after connecting, key presses, and
//! drawing on a `TestBackend`.

// Each test binary uses its own subset.
#![allow(dead_code, clippy::unwrap_used)]

use chrono::{DateTime, TimeZone, Utc};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use kernex_common::api::events::ServerEvent;
use kernex_common::api::{
    BundleInfo, Deployment, DeviceConfig, DeviceDetail, DeviceSummary, HeartbeatRecord,
    HistoryRecord,
};
use kernex_console::app::App;
use kernex_console::app::request::{DeviceData, Msg, Request};
use kernex_console::live::LiveEvent;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use serde_json::{Value, json};

pub const D1: &str = "019ab7e0c4a17d3e9b2f5c6d7e8f9a01";
pub const D2: &str = "019ab7e0c4a17d3e9b2f5c6d7e8f9a02";
pub const D3: &str = "019ab7e0c4a17d3e9b2f5c6d7e8f9a03";
pub const D4: &str = "019ab7e0c4a17d3e9b2f5c6d7e8f9a04";
pub const D5: &str = "019ab7e0c4a17d3e9b2f5c6d7e8f9a05";
pub const DEP: &str = "019ab7f1aa0b7c3d8e9f0a1b2c3d4e5f";

pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()
}

pub fn at(secs_ago: i64) -> String {
    (now() - chrono::Duration::seconds(secs_ago)).to_rfc3339()
}

#[allow(clippy::too_many_arguments)]
pub fn device(
    id: &str,
    ty: &str,
    adm: &str,
    status: &str,
    version: Option<&str>,
    cpu: f64,
    seen: Option<i64>,
    tags: &[&str],
) -> DeviceSummary {
    serde_json::from_value(json!({
        "device_id": id, "device_type": ty, "admission": adm, "status": status,
        "agent_status": if seen.is_some() { Some("idle") } else { None },
        "tags": tags, "current_bundle_version": version,
        "agent_version": seen.map(|_| "0.1.0"),
        "last_heartbeat": seen.map(at),
        "cpu_pct": seen.map(|_| cpu), "memory_mb": seen.map(|_| 512.0 + cpu * 4.0),
        "config_version": seen.map(|_| 2),
    }))
    .unwrap()
}

pub fn fleet() -> Vec<DeviceSummary> {
    vec![
        device(
            D1,
            "jetson-nano",
            "accepted",
            "online",
            Some("1.0.0"),
            12.0,
            Some(3),
            &["demo", "site:berlin", "canary"],
        ),
        device(
            D2,
            "rpi4",
            "accepted",
            "online",
            Some("1.0.0"),
            47.5,
            Some(4),
            &["demo", "site:lisbon"],
        ),
        device(
            D3,
            "gateway",
            "accepted",
            "offline",
            Some("1.0.0"),
            3.0,
            Some(900),
            &["demo", "site:berlin"],
        ),
        device(D4, "kiosk", "accepted", "never", None, 0.0, None, &[]),
        device(
            D5,
            "jetson-nano",
            "pending",
            "online",
            None,
            5.0,
            Some(2),
            &[],
        ),
    ]
}

pub fn bundle(version: &str, secs_ago: i64) -> BundleInfo {
    serde_json::from_value(json!({
        "id": format!("b-{version}"), "name": "hello", "version": version,
        "checksum_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "size_bytes": 1536,
        "manifest": {"name": "hello", "version": version, "description": "A small app",
                     "deploy": {"script": "deploy.sh"}},
        "created_at": at(secs_ago),
    }))
    .unwrap()
}

pub fn deployment() -> Deployment {
    serde_json::from_value(json!({
        "id": DEP, "kind": "deploy", "bundle_id": "b-1.1.0", "bundle_version": "1.1.0",
        "target_device_ids": [D1, D2, D3], "status": "in_progress",
        "created_at": at(60), "updated_at": at(5), "completed_at": null,
        "counts": {"pending": 1, "in_progress": 1, "success": 1, "failed": 0, "cancelled": 0},
        "devices": [
            {"device_id": D1, "status": "success", "phase": null, "progress_pct": null, "error_message": null, "log_tail": null, "updated_at": at(20)},
            {"device_id": D2, "status": "in_progress", "phase": "installing", "progress_pct": 60, "error_message": null, "log_tail": null, "updated_at": at(5)},
            {"device_id": D3, "status": "pending", "phase": null, "progress_pct": null, "error_message": null, "log_tail": null, "updated_at": at(60)},
        ],
    }))
    .unwrap()
}

pub fn history() -> Vec<HistoryRecord> {
    let rec = |v: &str, status: &str, err: Option<&str>, back: Option<&str>, ago: i64| {
        serde_json::from_value::<HistoryRecord>(json!({
            "id": format!("h-{v}-{ago}"), "device_id": D1, "deployment_id": DEP, "kind": "deploy",
            "bundle_id": format!("b-{v}"), "bundle_version": v, "status": status,
            "error_message": err, "log_tail": null, "rolled_back_to": back,
            "deployed_at": at(ago), "duration_seconds": 2.5,
        }))
        .unwrap()
    };
    vec![
        rec(
            "1.2.0",
            "failed",
            Some("deploy.sh exited with 1"),
            Some("1.1.0"),
            100,
        ),
        rec("1.1.0", "success", None, None, 300),
        rec("1.0.0", "success", None, None, 900),
    ]
}

pub fn config(version: u64) -> DeviceConfig {
    serde_json::from_value(json!({
        "device_id": D1, "version": version, "polling_interval": 5, "heartbeat_timeout": 30,
        "deploy_timeout": 300, "log_level": "info", "metadata": {}, "updated_at": at(1000),
    }))
    .unwrap()
}

pub fn device_data() -> DeviceData {
    let mut summary = fleet().remove(0);
    summary.current_bundle_version = Some("1.1.0".into());
    let detail: DeviceDetail = serde_json::from_value(json!({
        "device_id": D1, "device_type": "jetson-nano", "admission": "accepted", "status": "online",
        "agent_status": "idle", "tags": ["demo", "site:berlin", "canary"],
        "current_bundle_version": "1.1.0", "agent_version": "0.1.0", "last_heartbeat": at(3),
        "cpu_pct": 12.0, "memory_mb": 560.0, "config_version": 2,
        "hardware_metadata": {}, "public_key_fingerprint": "ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12",
        "registered_at": at(86_400), "queued_reports": 0,
    }))
    .unwrap();
    let _ = summary;
    let heartbeats: Vec<HeartbeatRecord> = (0..40)
        .map(|i| {
            serde_json::from_value(json!({
                "timestamp": at(i * 5), "agent_version": "0.1.0",
                "cpu_pct": ((i * 37) % 100) as f64, "memory_mb": 500.0 + ((i * 13) % 60) as f64,
                "status": "idle", "current_bundle_version": "1.1.0",
            }))
            .unwrap()
        })
        .collect();
    DeviceData {
        detail,
        heartbeats,
        history: history(),
        config: config(2),
    }
}

/// An app with the fleet, bundles and one deployment loaded, as after connecting.
pub fn loaded() -> App {
    let mut app = App::new("http://127.0.0.1:8000");
    app.fixed_now = Some(now());
    app.on_msg(Msg::Live(LiveEvent::Connected));
    let reqs = app.take_requests();
    assert!(
        reqs.contains(&Request::DevicePage {
            generation: 1,
            after: None
        }),
        "{reqs:?}"
    );
    assert!(reqs.contains(&Request::Deployments) && reqs.contains(&Request::Bundles));
    app.on_msg(Msg::DevicePage {
        generation: 1,
        page: fleet(),
        last: true,
    });
    app.on_msg(Msg::Bundles(vec![
        bundle("1.3.0", 100),
        bundle("1.2.0", 200),
        bundle("1.1.0", 300),
        bundle("1.0.0", 400),
    ]));
    app.on_msg(Msg::Deployments(vec![deployment()]));
    app.take_requests();
    app
}

/// `loaded()` with D1 open in the Device view, its data read.
pub fn device_open() -> App {
    let mut app = loaded();
    key(&mut app, KeyCode::Enter);
    app.on_msg(Msg::DeviceView(Box::new(device_data())));
    app.take_requests();
    app
}

pub fn key(app: &mut App, code: KeyCode) {
    app.on_key(KeyEvent::new(code, KeyModifiers::NONE));
}

pub fn keys(app: &mut App, s: &str) {
    for c in s.chars() {
        key(app, KeyCode::Char(c));
    }
}

pub fn screen(app: &mut App, w: u16, h: u16) -> String {
    app.prepare();
    app.page = kernex_console::views::body_rows(h);
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| kernex_console::views::draw(f, app)).unwrap();
    t.backend().to_string()
}

pub fn snap(app: &mut App) -> String {
    screen(app, 80, 24)
}

pub fn ev(kind: &str, data: Value) -> Msg {
    Msg::Live(LiveEvent::Event(Box::new(
        ServerEvent::parse(kind, &data.to_string()).unwrap(),
    )))
}
