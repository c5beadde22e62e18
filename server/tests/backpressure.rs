//! The beat writer under backpressure: when the store falls behind, devices wait for
//! room in the writer's queue, and a device that gives up while it waits (its request
//! dropped) must not leave the writer's bookkeeping expecting a beat that never comes —
//! else every later `settle` (operator reads, shutdown) would wait forever.
//!
//! The writer is held still by locking the device's row from another connection, which
//! only PostgreSQL allows from outside the server: on sled the test says so and passes.

mod support;

use std::time::Duration;

use chrono::Utc;
use kernex_server::service::heartbeat::{BATCH, HeartbeatService};
use kernex_server::store::WorkSnapshot;
use sqlx::Connection;
use support::*;

fn report() -> kernex_common::api::HeartbeatRequest {
    kernex_common::api::HeartbeatRequest {
        agent_version: "1".into(),
        cpu_pct: 1.0,
        memory_mb: 1.0,
        status: "idle".into(),
        current_bundle_version: None,
        config_version: None,
        queued_reports: 0,
        trust_version: None,
    }
}

#[tokio::test]
async fn a_beat_given_up_while_waiting_for_room_is_not_waited_for() {
    if !postgres() {
        eprintln!("runs on PostgreSQL only (the writer is held still by a row lock)");
        return;
    }
    let app = TestApp::new();
    let dev = app.device().await;
    let url = app.database_url.clone().unwrap();
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM devices WHERE device_id = $1 FOR UPDATE")
        .bind(&dev.id)
        .execute(&mut *tx)
        .await
        .unwrap();

    let service = HeartbeatService::start(app.state.store.clone(), WorkSnapshot::default());
    let room = app.state.store.beat_queue() + BATCH + 1;
    let mut gave_up = false;
    for _ in 0..room + 16 {
        let beat = service.beat(&dev.id, report(), Utc::now());
        if tokio::time::timeout(Duration::from_millis(200), beat)
            .await
            .is_err()
        {
            gave_up = true; // dropped while it waited for room
            break;
        }
    }
    assert!(gave_up, "the queue never filled while the writer was held");

    tx.rollback().await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), service.settle())
        .await
        .expect("settle waited for a beat that was never queued");
    let stored = app.state.store.heartbeats(&dev.id, 10).await.unwrap();
    assert!(!stored.is_empty());
}
