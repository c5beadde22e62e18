//! The store's heartbeat cost against fleet size, seeded through the store (not HTTP).
//!
//! For each fleet (default 1,000, 100,000 and 1,000,000 devices; `KERNEX_BENCH_FLEETS`
//! picks others) it registers the devices, opens a deployment to 1 % of them (their
//! beats re-send a command), gives every 10th a config and lets every device beat once,
//! then reports:
//! - `store µs/beat`: [`Store::write_beats`] alone, in the writer's batches (wall
//!   clock), each beat at a pseudo-random device;
//! - `store CPU µs`: the CPU time of the whole process (every thread: the live-record
//!   snapshots and sled's own threads too) over those beats, per beat; on a machine
//!   shared with other work this is the steadier of the two;
//! - `path µs/beat`: the whole heartbeat path above the store ([`HeartbeatService::beat`]:
//!   work index, commands, queueing to the beat writer), one caller, writer running;
//! - `bytes/beat`: growth of the store's files (sled and the live-record log) per
//!   heartbeat over the measured beats (log-structured: this includes space not
//!   reclaimed yet);
//! - the process's resident memory at the end of that fleet;
//! - `reopen`: how long the store then takes to open again without a clean shutdown
//!   (the live records' snapshot and log read back);
//! - a cancel of a 100,000-target deployment in the server's chunks: its steps' median,
//!   p99 and longest (how long a heartbeat's read could wait behind one);
//! - a 100,000-target rollout (waves 1, 10, 100 %): the time to open each wave (its
//!   targets released in the driver's chunks), to evaluate the gates (one deployment
//!   read and the pure rule, as the driver's timer does per active rollout), to page a
//!   wave for timeouts, and the heartbeat path's latency while the last wave opens
//!   against the same latency with nothing else running.
//!   `KERNEX_BENCH_ONLY=rollout` runs only this part (`KERNEX_BENCH_ROLLOUT` sets its size).
//!
//! Run with `just bench` (release). Prints a table; no pass/fail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt;
use kernex_common::api::{Admission, ConfigUpdate, DeploymentKind, HeartbeatRequest};
use kernex_common::manifest::{Manifest, ScriptSpec};
use kernex_server::routes::deployments::CANCEL_CHUNK;
use kernex_server::service::heartbeat::HeartbeatService;
use kernex_server::store::{
    Beat, BundleRecord, NewRegistration, SledOptions, SledStore, Store, new_id,
};
use serde_json::json;

/// Beats measured per fleet: enough that the live-record snapshot a 1M fleet takes
/// now and then (see `live_table.rs`) is inside the window, amortized as in a real run.
const BEATS: usize = 1_000_000;

fn report(config_version: Option<u64>) -> HeartbeatRequest {
    HeartbeatRequest {
        agent_version: "0.3.1".into(),
        cpu_pct: 12.5,
        memory_mb: 812.0,
        status: "idle".into(),
        current_bundle_version: Some("1.0.0".into()),
        config_version,
        queued_reports: 0,
        trust_version: None,
    }
}

async fn seed(store: &Arc<dyn Store>, n: usize) -> Vec<String> {
    let now = Utc::now();
    let regs = (0..n).map(|i| NewRegistration {
        public_key_pem: String::new(),
        fingerprint: format!("fp-{i}"),
        device_type: "bench".into(),
        hardware_metadata: json!({"model": "bench", "serial": i}),
        signature_hash: format!("sig-{i}"),
        replay_until: now,
        admission: Admission::Accepted,
        refusal: None,
        max_pending: None,
        token_hash: format!("tok-{i}"),
        now,
    });
    // Many at once: the group commit shares one fsync among all that wait.
    let mut ids: Vec<String> = futures_util::stream::iter(regs)
        .map(|reg| {
            let store = store.clone();
            async move {
                store
                    .register(&reg)
                    .await
                    .expect("register")
                    .device
                    .id()
                    .to_owned()
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    ids.sort();
    ids
}

fn bundle() -> BundleRecord {
    BundleRecord {
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
    }
}

/// A pseudo-random walk over the fleet (no two neighbours in a row).
fn pick(ids: &[String], i: usize) -> &str {
    &ids[(i.wrapping_mul(7919)) % ids.len()]
}

/// CPU time this process has used (user + system, all threads), in seconds: unlike the
/// wall clock it does not count time spent waiting for a core other programs hold.
fn cpu_seconds() -> f64 {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are 14 and 15.
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let utime: f64 = rest.get(11)?.parse().ok()?;
            let stime: f64 = rest.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(f64::NAN);
    ticks / 100.0 // USER_HZ
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Time spent in [`Store::write_beats`] alone: the batches are built outside it (picking
/// ids from a list of 1M is the bench's own cache misses, not the store's).
async fn write_beats(store: &dyn Store, ids: &[String], beats: usize, offset: usize) -> Duration {
    let mut spent = Duration::ZERO;
    let mut i = offset;
    while i < offset + beats {
        let batch: Vec<Beat> = (i..(i + 1024).min(offset + beats))
            .map(|k| Beat {
                device_id: pick(ids, k).to_owned(),
                at: Utc::now(),
                report: report(Some(1)),
                polling_interval: 60,
            })
            .collect();
        i += batch.len();
        let started = Instant::now();
        store.write_beats(batch).await.expect("write_beats");
        spent += started.elapsed();
    }
    spent
}

async fn fleet(n: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sled = SledStore::open(dir.path(), SledOptions::default()).expect("open");
    let store: Arc<dyn Store> = Arc::new(sled.clone());
    let started = Instant::now();
    let ids = seed(&store, n).await;
    let seeded = started.elapsed();

    let b = bundle();
    store.insert_bundle(&b).await.expect("bundle");
    let targets: Vec<String> = ids.iter().step_by(100).cloned().collect();
    store
        .create_deployment(DeploymentKind::Deploy, &b, &targets, None, Utc::now())
        .await
        .expect("deployment");
    let update = ConfigUpdate {
        polling_interval: Some(30),
        ..Default::default()
    };
    for id in ids.iter().step_by(10) {
        store
            .update_config(id, &update, Utc::now())
            .await
            .expect("config");
    }

    // Every device beats once: each has a live record and a history ring.
    write_beats(&*store, &ids, n, 0).await;
    store.sync().await.expect("sync");
    let size_before = sled.size_on_disk().expect("size");

    let beats = BEATS;
    let cpu_before = cpu_seconds();
    let store_time = write_beats(&*store, &ids, beats, 1).await;
    let store_cpu = cpu_seconds() - cpu_before;
    store.sync().await.expect("sync");
    let size_after = sled.size_on_disk().expect("size");

    let work = sled.work_snapshot_blocking().expect("snapshot");
    let service = HeartbeatService::start(store.clone(), work);
    let path_beats = BEATS;
    let started = Instant::now();
    for k in 0..path_beats {
        let out = service
            .beat(pick(&ids, k + 3), report(Some(2)), Utc::now())
            .await
            .expect("beat");
        std::hint::black_box(out);
    }
    service.settle().await;
    let path_time = started.elapsed();
    let rss = rss_mib();

    // A start after a crash: the live records' snapshot and log are read back.
    drop((service, store, sled));
    let started = Instant::now();
    let reopened = loop {
        match SledStore::open(dir.path(), SledOptions::default()) {
            Ok(s) => break s,
            Err(e) if e.is_locked() => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("reopen: {e}"),
        }
    };
    let reopen = started.elapsed();
    drop(reopened);

    println!(
        "{:>9} {:>9.1}s {:>14.2} {:>14.2} {:>14.2} {:>12.0} {:>10.0} {:>9.1}s",
        n,
        seeded.as_secs_f64(),
        store_time.as_secs_f64() * 1e6 / beats as f64,
        store_cpu * 1e6 / beats as f64,
        path_time.as_secs_f64() * 1e6 / path_beats as f64,
        (size_after as f64 - size_before as f64) / beats as f64,
        rss,
        reopen.as_secs_f64(),
    );
}

/// Disk used per device with full history rings at the default retention: 1,000 devices
/// beating 1,000 times each, three laps of the ring, the size after each lap (sled is
/// log-structured: overwritten slots are garbage until its GC reuses their segments, so
/// the size settles rather than growing with every lap).
async fn full_rings() {
    let devices = 1_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let sled = SledStore::open(dir.path(), SledOptions::default()).expect("open");
    let store: Arc<dyn Store> = Arc::new(sled.clone());
    let ids = seed(&store, devices).await;
    let empty = sled.size_on_disk().expect("size");
    let retention = SledOptions::default().heartbeat_retention as usize;
    let mut sizes = Vec::new();
    for lap in 0..3 {
        write_beats(
            &*store,
            &ids,
            devices * retention,
            lap * devices * retention,
        )
        .await;
        store.write_beats(Vec::new()).await.expect("write out");
        store.sync().await.expect("sync");
        let size = sled.size_on_disk().expect("size");
        sizes.push(size.saturating_sub(empty) as f64 / devices as f64 / 1024.0);
    }
    let laps: Vec<String> = sizes.iter().map(|k| format!("{k:.0}")).collect();
    let last = sizes.last().copied().unwrap_or_default();
    println!(
        "\nfull history rings, {devices} devices × {retention} beats, KiB on disk per device after laps 1-3: {} (→ {:.0} GiB at 1M devices)",
        laps.join(", "),
        last * 1e6 / 1048576.0,
    );
}

/// A 100,000-target deployment cancelled in the server's chunks while nothing else
/// runs: the longest step bounds how long a heartbeat could wait behind it.
async fn big_cancel(n: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> =
        Arc::new(SledStore::open(dir.path(), SledOptions::default()).expect("open"));
    let ids = seed(&store, n).await;
    let b = bundle();
    store.insert_bundle(&b).await.expect("bundle");
    let started = Instant::now();
    let dep = store
        .create_deployment(DeploymentKind::Deploy, &b, &ids, None, Utc::now())
        .await
        .expect("deployment");
    let created = started.elapsed();
    let started = Instant::now();
    let mut steps = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let t = Instant::now();
        let step = store
            .cancel_deployment_step(
                &dep.id,
                after.as_deref(),
                CANCEL_CHUNK,
                "cancelled",
                Utc::now(),
            )
            .await
            .expect("cancel");
        steps.push(t.elapsed().as_secs_f64() * 1e3);
        match step.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let total = started.elapsed().as_secs_f64() * 1e3;
    let last = steps.pop().unwrap_or_default();
    steps.sort_by(f64::total_cmp);
    let at = |q: f64| {
        steps
            .get(((steps.len() as f64 - 1.0) * q) as usize)
            .copied()
    };
    println!(
        "\n{n}-target deployment: created in {:.0} ms (transactions of 256 targets); cancelled in {total:.0} ms \
         over {} steps of {CANCEL_CHUNK}: median {:.2} ms, p99 {:.2} ms, longest {:.2} ms, \
         last (with the fsync) {last:.1} ms",
        created.as_secs_f64() * 1e3,
        steps.len() + 1,
        at(0.5).unwrap_or_default(),
        at(0.99).unwrap_or_default(),
        steps.last().copied().unwrap_or_default(),
    );
}

/// Heartbeat path latencies (µs) of `beats` beats at devices outside the rollout.
async fn beat_latencies(service: &HeartbeatService, ids: &[String], beats: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(beats);
    for k in 0..beats {
        let t = Instant::now();
        service
            .beat(pick(ids, k), report(Some(1)), Utc::now())
            .await
            .expect("beat");
        out.push(t.elapsed().as_secs_f64() * 1e6);
        // A beat every ~100 µs: heartbeats arriving while the wave opens.
        tokio::task::yield_now().await;
    }
    out.sort_by(f64::total_cmp);
    out
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q) as usize)
        .copied()
        .unwrap_or_default()
}

/// Open the three waves in turn (each released in the driver's chunks); the time and
/// count of each, and the beat latencies measured while the last one opened.
async fn open_waves(
    store: &Arc<dyn Store>,
    dep_id: &str,
    service: &HeartbeatService,
    others: &[String],
) -> (Vec<(f64, usize)>, Vec<f64>) {
    use kernex_server::store::RolloutUpdate;
    let mut opened = Vec::new();
    let mut during = Vec::new();
    for k in 0..3 {
        let open = {
            let store = store.clone();
            let id = dep_id.to_owned();
            tokio::spawn(async move {
                let t = Instant::now();
                store
                    .update_rollout(&id, &RolloutUpdate::OpenWave(k), Utc::now())
                    .await
                    .expect("open");
                let mut released = 0;
                loop {
                    let step = store
                        .release_step(&id, usize::MAX, Utc::now())
                        .await
                        .expect("release");
                    released += step.released.len();
                    if step.done {
                        break;
                    }
                }
                (t.elapsed().as_secs_f64() * 1e3, released)
            })
        };
        if k == 2 {
            // Heartbeats from devices outside the rollout while its biggest wave opens.
            during = beat_latencies(service, others, 20_000).await;
        }
        opened.push(open.await.expect("join"));
    }
    (opened, during)
}

/// A rollout to `n` targets through the store and the pure rules the driver uses.
async fn big_rollout(n: usize) {
    use kernex_server::service::rollout;
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> =
        Arc::new(SledStore::open(dir.path(), SledOptions::default()).expect("open"));
    // The rollout's targets, plus 10,000 devices outside it that keep beating.
    let all = seed(&store, n + 10_000).await;
    let (targets, others) = all.split_at(n);
    let b = bundle();
    store.insert_bundle(&b).await.expect("bundle");
    let policy = kernex_common::api::RolloutPolicy {
        waves: vec![1, 10, 100],
        ..Default::default()
    };
    let ordered = rollout::order(targets.to_vec(), &Default::default());
    let plan = rollout::plan(&policy, ordered.len() as u64);
    let started = Instant::now();
    let dep = store
        .create_deployment(DeploymentKind::Deploy, &b, &ordered, Some(plan), Utc::now())
        .await
        .expect("deployment");
    let created = started.elapsed().as_secs_f64() * 1e3;
    let service = Arc::new(HeartbeatService::start(
        store.clone(),
        store.work_snapshot().await.expect("snapshot"),
    ));
    let quiet = beat_latencies(&service, others, 20_000).await;
    let (opened, during) = open_waves(&store, &dep.id, &service, others).await;
    // The driver's per-tick work for one active rollout: read it, decide.
    let t = Instant::now();
    let rounds = 1_000;
    for _ in 0..rounds {
        let d = store.deployment(&dep.id).await.expect("read");
        std::hint::black_box(rollout::next_step(&d, Utc::now()));
    }
    let gate_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    // A timeout check pages the whole last wave (only when its earliest deadline passed).
    let t = Instant::now();
    let mut after = None;
    loop {
        let step = store
            .time_out_step(&dep.id, 2, after, 256, Utc::now())
            .await
            .expect("timeouts");
        match step.next {
            Some(p) => after = Some(p),
            None => break,
        }
    }
    let paged = t.elapsed().as_secs_f64() * 1e3;
    let waves: Vec<String> = opened
        .iter()
        .enumerate()
        .map(|(k, (ms, released))| format!("wave {k}: {released} targets in {ms:.0} ms"))
        .collect();
    println!(
        "
{n}-target rollout (waves 1/10/100 %): created in {created:.0} ms; opened {}; gate evaluation {gate_us:.1} µs per active rollout per tick; a timeout page over the last wave {paged:.0} ms",
        waves.join(", "),
    );
    println!(
        "heartbeat path µs (devices outside the rollout): quiet median {:.0}, p99 {:.0}; while the last wave opens median {:.0}, p99 {:.0}",
        quantile(&quiet, 0.5),
        quantile(&quiet, 0.99),
        quantile(&during, 0.5),
        quantile(&during, 0.99),
    );
}

fn main() {
    if std::env::var("KERNEX_BENCH_ONLY").as_deref() == Ok("rollout") {
        let n = std::env::var("KERNEX_BENCH_ROLLOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(big_rollout(n));
        return;
    }
    let fleets: Vec<usize> = std::env::var("KERNEX_BENCH_FLEETS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 100_000, 1_000_000]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        println!(
            "{:>9} {:>10} {:>14} {:>14} {:>14} {:>12} {:>10} {:>10}",
            "devices",
            "seeded in",
            "store µs/beat",
            "store CPU µs",
            "path µs/beat",
            "bytes/beat",
            "RSS MiB",
            "reopen"
        );
        for n in fleets {
            fleet(n).await;
        }
        full_rings().await;
        big_cancel(100_000).await;
        big_rollout(100_000).await;
    });
}
