//! What a big fleet costs the console: loading 100,000 devices page by page, applying a
//! burst of live heartbeats, and drawing an 80×24 frame (which builds only the visible
//! rows) — after each heartbeat burst and while scrolling. Run with `just bench`
//! (release build). Prints a table; no pass/fail.

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use kernex_common::api::DeviceSummary;
use kernex_common::api::events::{HeartbeatEvent, ServerEvent};
use kernex_console::app::App;
use kernex_console::app::request::Msg;
use kernex_console::live::LiveEvent;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use serde_json::json;

fn page(p: usize) -> Vec<DeviceSummary> {
    (0..1000)
        .map(|i| {
            serde_json::from_value(json!({
                "device_id": format!("dev{:06}", p * 1000 + i), "device_type": "rpi4",
                "admission": "accepted", "status": "online", "agent_status": "idle",
                "tags": ["fleet"], "current_bundle_version": "1.0.0", "agent_version": "0.1.0",
                "last_heartbeat": "2026-11-25T12:00:00Z", "cpu_pct": (i % 100) as f64,
                "memory_mb": 512.0, "config_version": 1,
            }))
            .unwrap()
        })
        .collect()
}

/// A heartbeat event that says nothing but which device beat.
fn beat(device_id: &str) -> HeartbeatEvent {
    HeartbeatEvent {
        device_id: device_id.into(),
        timestamp: None,
        agent_version: None,
        cpu_pct: None,
        memory_mb: None,
        status: None,
        current_bundle_version: None,
        config_version: None,
        queued_reports: None,
    }
}

fn live(beat: HeartbeatEvent) -> Msg {
    Msg::Live(LiveEvent::Event(Box::new(ServerEvent::Heartbeat(beat))))
}

fn main() {
    let n_pages: usize = std::env::var("KERNEX_BENCH_PAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let mut app = App::new("http://bench");
    app.on_msg(Msg::Live(LiveEvent::Connected));
    app.take_requests();
    let pages: Vec<_> = (0..n_pages).map(page).collect();
    let t = Instant::now();
    for (p, page) in pages.into_iter().enumerate() {
        app.on_msg(Msg::DevicePage {
            generation: 1,
            page,
            last: p + 1 == n_pages,
        });
        app.take_requests();
    }
    app.prepare();
    let load = t.elapsed();

    let mut term = Terminal::new(TestBackend::new(80, 24)).unwrap();
    let frames = 200;
    let t = Instant::now();
    for _ in 0..frames {
        app.on_key(KeyEvent::new(KeyCode::PageDown, KeyModifiers::NONE));
        app.prepare();
        term.draw(|f| kernex_console::views::draw(f, &app)).unwrap();
    }
    let scroll = t.elapsed() / frames;

    let beats = 10_000;
    let t = Instant::now();
    for i in 0..beats {
        let id = format!("dev{:06}", (i * 7919) % (n_pages * 1000));
        app.on_msg(live(HeartbeatEvent {
            device_id: id,
            timestamp: Some("2026-11-25T12:00:05Z".parse().unwrap()),
            cpu_pct: Some(50.0),
            memory_mb: Some(600.0),
            status: Some("idle".into()),
            ..beat("")
        }));
    }
    let per_beat = t.elapsed() / beats as u32;
    let t = Instant::now();
    app.prepare();
    term.draw(|f| kernex_console::views::draw(f, &app)).unwrap();
    let frame_after = t.elapsed();

    // Sorted by CPU, a heartbeat burst forces a re-sort before the next frame.
    app.on_key(KeyEvent::new(KeyCode::Char('s'), KeyModifiers::NONE));
    app.on_key(KeyEvent::new(KeyCode::Char('s'), KeyModifiers::NONE));
    app.on_key(KeyEvent::new(KeyCode::Char('s'), KeyModifiers::NONE));
    app.on_msg(live(HeartbeatEvent {
        cpu_pct: Some(99.0),
        ..beat("dev000001")
    }));
    let t = Instant::now();
    app.prepare();
    term.draw(|f| kernex_console::views::draw(f, &app)).unwrap();
    let resort = t.elapsed();

    println!("console with {} devices", app.fleet.len());
    println!("  load {n_pages} pages of 1000            {load:>12.2?}");
    println!("  PgDn + frame (80x24)            {scroll:>12.2?}");
    println!("  apply one live heartbeat        {per_beat:>12.2?}");
    println!("  frame after {beats} heartbeats     {frame_after:>12.2?}");
    println!("  re-sort by cpu + frame          {resort:>12.2?}");
}
