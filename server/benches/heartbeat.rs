//! Heartbeat cost against fleet size: the same per-heartbeat work on a fleet of 1,000 and
//! of 100,000 devices (each with an open deployment) shows it is O(this device), not a
//! scan. Run with `just bench` (release build; `KERNEX_BENCH_FLEETS=1000,20000` picks the
//! sizes). Prints a table; no pass/fail.

use std::time::Instant;

use chrono::Utc;
use kernex_common::api::{DeploymentKind, HeartbeatRequest};
use kernex_common::manifest::{Manifest, ScriptSpec};
use kernex_server::store::{BundleRecord, NewRegistration, Store, new_id};
use serde_json::json;

fn fleet(store: &Store, n: usize) -> Vec<String> {
    let now = Utc::now();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let reg = NewRegistration {
            public_key_pem: String::new(),
            fingerprint: format!("fp-{i}"),
            device_type: "bench".into(),
            hardware_metadata: json!({}),
            signature_hash: format!("sig-{i}"),
            replay_until: now,
            admission: kernex_common::api::Admission::Accepted,
            token_hash: format!("tok-{i}"),
            now,
        };
        ids.push(store.register(&reg).expect("register").device.device_id);
    }
    ids
}

fn main() {
    let hb = HeartbeatRequest {
        agent_version: "bench".into(),
        cpu_pct: 10.0,
        memory_mb: 100.0,
        status: "idle".into(),
        current_bundle_version: None,
        config_version: Some(1),
        queued_reports: 0,
    };
    println!(
        "{:>8} {:>16} {:>12} {:>14} {:>14}",
        "devices", "µs/first beat", "heartbeats", "mean µs/beat", "beats/s"
    );
    // KERNEX_BENCH_FLEETS=1000,20000,100000 to choose the fleet sizes.
    let fleets: Vec<usize> = std::env::var("KERNEX_BENCH_FLEETS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 100_000]);
    for n in fleets {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let ids = fleet(&store, n);
        let bundle = BundleRecord {
            id: new_id(),
            name: "app".into(),
            version: "1.0.0".into(),
            checksum_sha256: "0".repeat(64),
            size_bytes: 1,
            manifest: Manifest {
                name: "app".into(),
                version: "1.0.0".into(),
                description: None,
                deploy: ScriptSpec {
                    script: "deploy.sh".into(),
                    timeout_s: None,
                },
                rollback: None,
                health: None,
            },
            created_at: Utc::now(),
        };
        store.insert_bundle(&bundle).expect("bundle");
        // Every device has an open deployment: the fleet-wide index is as full as it gets.
        store
            .create_deployment(DeploymentKind::Deploy, &bundle, &ids, Utc::now())
            .expect("deployment");
        // First beat of each device delivers its command (pending → in_progress, a write
        // to the shared deployment record); measure that separately from steady state.
        let started = Instant::now();
        for id in &ids {
            store
                .heartbeat(id, &hb, Utc::now(), 1000)
                .expect("heartbeat");
        }
        let first = started.elapsed().as_secs_f64() * 1e6 / ids.len() as f64;
        let beats = 20_000usize;
        let started = Instant::now();
        for i in 0..beats {
            let id = &ids[(i * 7919) % ids.len()];
            store
                .heartbeat(id, &hb, Utc::now(), 1000)
                .expect("heartbeat");
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{:>8} {:>16.1} {:>12} {:>14.1} {:>14.0}",
            n,
            first,
            beats,
            secs * 1e6 / beats as f64,
            beats as f64 / secs
        );
    }
}
