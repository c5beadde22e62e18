//! Crash durability under load (SPEC §1.8): the real `kernex-server` is SIGKILLed at a
//! random moment while devices heartbeat, register and report results and operators write,
//! then restarted on the same data dir and address, three times over. After each restart
//! every acknowledged write must be there, and every heartbeat acknowledged more than a
//! second before the kill.
//!
//! A write whose reply never arrived (the connection died with the server) is unknown:
//! either outcome is right, so it is not checked, except that a config or tag write in
//! flight may be the state found afterwards. Each device's config and tags have a single
//! writer, so "the last acknowledged value" is well defined.
//!
//! The power-loss variant runs the same load and checks, but each kill also throws away
//! every write the server had not fsynced (`kernex_tests::power_loss`).
//!
//! `KX_CRASH_SEED=<n>` repeats a run's random choices (each run prints its seed); the
//! timing of the load still varies.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kernex_common::api::{
    Admission, BundleInfo, Command, ConfigUpdate, CreateDeployment, CreateToken, CreatedToken,
    Deployment, DeploymentDevice, DeploymentKind, DeviceConfig, DeviceDetail, DevicePatch,
    HeartbeatRecord, HeartbeatRequest, HeartbeatResponse, HistoryRecord, RegisterRequest,
    RegisterResponse, ResultReport, ResultStatus, Timestamp, TokenInfo,
};
use kernex_common::signing::{DeviceKey, DevicePublicKey, ENROLLMENT_HEADER, SIGNATURE_HEADER};
use kernex_tests::ServerProcess;
use kernex_tests::agent::{TEST_KEY_BITS, fast_bundle};
use kernex_tests::power_loss::DurableImage;
use reqwest::{RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::json;
use sha2::{Digest, Sha256};

const ADMIN: &str = "crash-admin";
const ENROLL: &str = "crash-enroll";
const KILLS: usize = 3;
/// Power losses per run (`KX_POWER_LOSS_KILLS` overrides). (Once the shim read a
/// write-only descriptor's data as zeros, which made sled's snapshot written while
/// recovering look corrupt at the second power loss; it reads through its own
/// descriptor now.)
const POWER_LOSS_KILLS: usize = 3;
/// Devices registered before the load; they take the config, tag and deployment writes.
const BASE_DEVICES: usize = 6;
/// Registrations the load may make per round (keys are made up front).
const NEW_PER_ROUND: usize = 4;
/// How long the load runs before the kill: a random time in this range.
const LOAD_MIN: Duration = Duration::from_millis(1500);
const LOAD_MAX: Duration = Duration::from_millis(3500);
/// SPEC §1.8: heartbeats may be lost for the last second before a crash, nothing older.
const HEARTBEAT_GRACE: Duration = Duration::from_secs(1);
const HEARTBEAT_EVERY: Duration = Duration::from_millis(100);
const WRITE_PACE: Duration = Duration::from_millis(10);
/// Bundle uploads (each with its deployment) per round and their pace: this bounds each
/// device's bundle history well below the 100 records one page returns.
const BUNDLES_PER_ROUND: usize = 15;
const BUNDLE_PACE: Duration = Duration::from_millis(100);
const REGISTER_PACE: Duration = Duration::from_millis(150);
/// A request the server does not answer within this is unknown (it never hangs the test).
const REQUEST_LIMIT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------------- the test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_and_heartbeats_survive_sigkill_under_load() {
    crash_under_load(false).await;
}

/// The same load and checks, but each kill is a power loss: the shim in
/// `tests/shim/durable_image.c` keeps what was fsynced, and the data dir is replaced by
/// that before the restart (see `kernex_tests::power_loss`). The only way to show that a
/// 2xx means on disk, not merely in the page cache.
#[tokio::test]
async fn acknowledged_writes_and_heartbeats_survive_power_loss_under_load() {
    crash_under_load(true).await;
}

async fn crash_under_load(power_loss: bool) {
    let what = if power_loss { "power-loss" } else { "crash" };
    let started = Instant::now();
    let (mut rng, seed) = Rng::seeded();
    eprintln!("{what} test: seed {seed} (KX_CRASH_SEED={seed} repeats its choices)");
    let kills = if power_loss {
        std::env::var("KX_POWER_LOSS_KILLS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(POWER_LOSS_KILLS)
    } else {
        KILLS
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server = Crashing::start(&dir.path().join("server"), power_loss);
    let mut keys = make_keys(BASE_DEVICES + kills * NEW_PER_ROUND).await;
    let setup = Load::new(&server.api());
    let mut devices = Vec::new();
    for n in 0..BASE_DEVICES {
        let key = keys.pop().unwrap();
        let device = register(&setup, &key, format!("base{n}"))
            .await
            .expect("registering a device before the load");
        devices.push(device);
    }
    setup.assert_clean(None);
    let mut fleet = Fleet::new(devices, keys, &server.api()).await;
    let setup_took = started.elapsed().as_secs_f64();

    let mut figures = Figures::default();
    for round in 1..=kills {
        let load = Load::new(&server.api());
        let acked_before = fleet.acknowledged();
        let running = fleet.spawn(&load, round, &mut rng);
        let load_started = Instant::now();
        tokio::time::sleep(rng.between(LOAD_MIN, LOAD_MAX)).await;
        // Not at a quiet point: kill while a write that must be durable is on its way
        // (there nearly always is one; give up waiting after a second).
        let waited = Instant::now();
        while load.writes_in_flight.load(Ordering::SeqCst) == 0
            && waited.elapsed() < Duration::from_secs(1)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let in_flight = load.writes_in_flight.load(Ordering::SeqCst);
        let kill_at = Instant::now();
        let lost_bytes = server.kill();
        load.stop.store(true, Ordering::SeqCst);
        fleet.join(running).await;
        let no_reply = load.assert_clean(Some(kill_at));
        let acked = fleet.acknowledged() - acked_before;

        let restart_at = Instant::now();
        server.restart().await;
        let check_at = Instant::now();
        let check = Check::new(&server.api(), kill_at).run(&mut fleet).await;
        eprintln!(
            "round {round}: killed {:.2} s into the load with {in_flight} durable writes \
             in flight ({lost_bytes} bytes not fsynced thrown away); {} heartbeats and {} \
             writes acknowledged, {no_reply} requests unanswered; restart {:.2} s; checks \
             {:.2} s: {} write checks, {} heartbeats required and found, {} of {} from the \
             last second lost (allowed)",
            (kill_at - load_started).as_secs_f64(),
            acked.heartbeats,
            acked.writes(),
            (check_at - restart_at).as_secs_f64(),
            check_at.elapsed().as_secs_f64(),
            check.write_checks,
            check.heartbeats_checked - check.heartbeats_lost,
            check.grace_lost,
            check.grace_seen,
        );
        figures.add(&check, no_reply);
    }

    let total = fleet.acknowledged();
    let warnings = server.warnings();
    eprintln!(
        "{what} test: {kills} kills, {:.1} s in all (keys and setup {setup_took:.1} s)\n\
         \x20 writes acknowledged: {} registrations, {} config PUTs, {} tag PATCHes, \
         {} tokens, {} bundles, {} deployments, {} results (+{} re-sent with the same \
         report id)\n\
         \x20 write checks after restarts: {} (an acknowledged write is checked again after \
         every later restart), all passed\n\
         \x20 heartbeats acknowledged: {}; acknowledged over 1 s before a kill: {}, looked up \
         {} times after restarts, lost: {}; from the last second before a kill: {}, lost {} \
         (allowed)\n\
         \x20 requests unanswered at a kill (unknown, not checked): {}\n\
         \x20 server log lines at WARN or ERROR: {}",
        started.elapsed().as_secs_f64(),
        total.registrations,
        total.configs,
        total.tags,
        total.tokens,
        total.bundles,
        total.deployments,
        total.results,
        total.resent,
        figures.write_checks,
        total.heartbeats,
        total.heartbeats - figures.grace_seen,
        figures.heartbeats_checked,
        figures.heartbeats_lost,
        figures.grace_seen,
        figures.grace_lost,
        figures.no_reply,
        warnings.len(),
    );
    for w in warnings.iter().take(20) {
        eprintln!("    {w}");
    }
    assert_eq!(figures.heartbeats_lost, 0);
    assert!(
        figures.write_checks > 0 && figures.heartbeats_checked > 0,
        "the load acknowledged nothing"
    );
}

/// The server under test: killed and restarted on the same data dir and address, its log
/// kept across restarts and printed if the test fails.
struct Crashing {
    server: Option<ServerProcess>,
    data_dir: PathBuf,
    addr: String,
    earlier_logs: Mutex<Vec<String>>,
    /// Set for power loss: the durable image a kill falls back to.
    durable: Option<DurableImage>,
}

impl Crashing {
    fn start(data_dir: &Path, power_loss: bool) -> Self {
        let durable = power_loss.then(|| DurableImage::new(data_dir).unwrap());
        let env = durable.as_ref().map(DurableImage::env).unwrap_or_default();
        let server = ServerProcess::start_with_env(data_dir, ADMIN, ENROLL, &env).unwrap();
        Crashing {
            addr: server.addr.clone(),
            server: Some(server),
            data_dir: durable
                .as_ref()
                .map_or_else(|| data_dir.to_path_buf(), |d| d.data_dir.clone()),
            earlier_logs: Mutex::new(Vec::new()),
            durable,
        }
    }

    fn api(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }

    /// SIGKILL: no clean shutdown, no final flush; under power loss the data dir then
    /// keeps only what was fsynced. The bytes thrown away.
    fn kill(&mut self) -> u64 {
        let server = self.server.take().expect("the server is running");
        self.earlier_logs.lock().unwrap().extend(server.logs());
        server.kill().unwrap();
        self.durable.as_ref().map_or(0, |d| d.lose_power().unwrap())
    }

    /// What the servers logged at WARN or ERROR so far.
    fn warnings(&self) -> Vec<String> {
        let mut logs = self.earlier_logs.lock().unwrap();
        if let Some(s) = &self.server {
            logs.extend(s.logs());
        }
        logs.iter()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .cloned()
            .collect()
    }

    async fn restart(&mut self) {
        let env = self
            .durable
            .as_ref()
            .map(DurableImage::env)
            .unwrap_or_default();
        let server =
            ServerProcess::restart_on_with_env(&self.data_dir, ADMIN, ENROLL, &self.addr, &env)
                .await
                .unwrap();
        self.server = Some(server);
    }
}

impl Drop for Crashing {
    fn drop(&mut self) {
        if std::thread::panicking() {
            kernex_tests::eprint_server_log(&self.earlier_logs, self.server.as_ref());
        }
    }
}

/// A small xorshift generator: the test wants repeatable choices, not good randomness.
struct Rng(u64);

impl Rng {
    /// From `KX_CRASH_SEED`, else a fresh seed; the generator and its seed.
    fn seeded() -> (Rng, u64) {
        let seed = std::env::var("KX_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| std::collections::hash_map::RandomState::new().hash_one(0u8));
        (Rng(seed | 1), seed)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        lo + Duration::from_millis(self.below((hi - lo).as_millis() as usize) as u64)
    }

    /// An independent generator for one task.
    fn split(&mut self) -> Rng {
        Rng(self.next() | 1)
    }
}

/// An HTTP client that gives up on a request after [`REQUEST_LIMIT`].
fn client() -> reqwest::Client {
    kernex_tests::client_builder()
        .timeout(REQUEST_LIMIT)
        .build()
        .unwrap()
}

/// RSA keys for every device the test will register, made on the blocking pool.
async fn make_keys(n: usize) -> Vec<DeviceKey> {
    let bits: usize = TEST_KEY_BITS.parse().unwrap();
    let tasks: Vec<_> = (0..n)
        .map(|_| tokio::task::spawn_blocking(move || DeviceKey::generate(bits).unwrap()))
        .collect();
    let mut keys = Vec::new();
    for t in tasks {
        keys.push(t.await.unwrap());
    }
    keys
}

// ------------------------------------------------------------------------- the load

/// What every load task of one round shares.
#[derive(Clone)]
struct Load {
    http: reqwest::Client,
    api: String,
    /// Set after the kill: tasks finish what they are doing and return their ledgers.
    stop: Arc<AtomicBool>,
    /// Registrations, operator writes and results sent and not answered yet.
    writes_in_flight: Arc<AtomicUsize>,
    /// Requests that got no reply, and when they failed.
    no_reply: Arc<Mutex<Vec<(Instant, String)>>>,
    /// Replies that broke the spec.
    problems: Arc<Mutex<Vec<String>>>,
}

impl Load {
    /// A fresh client: no pooled connection outlives the server it went to.
    fn new(api: &str) -> Self {
        Load {
            http: client(),
            api: api.to_owned(),
            stop: Arc::default(),
            writes_in_flight: Arc::default(),
            no_reply: Arc::default(),
            problems: Arc::default(),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn problem(&self, p: String) {
        self.problems.lock().unwrap().push(p);
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    /// Send `req`: the parsed reply when its status is `expect` (acknowledged), `None`
    /// when no reply arrived (unknown) or another status came (a problem). A task stops
    /// at its first `None`, so a write that may still land is never followed by another
    /// to the same place.
    async fn call<T: DeserializeOwned>(
        &self,
        what: &str,
        req: RequestBuilder,
        expect: StatusCode,
        write: bool,
    ) -> Option<T> {
        if write {
            self.writes_in_flight.fetch_add(1, Ordering::SeqCst);
        }
        let reply = async {
            let resp = req.send().await?;
            let status = resp.status();
            Ok::<_, reqwest::Error>((status, resp.bytes().await?))
        }
        .await;
        if write {
            self.writes_in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        match reply {
            Err(e) => {
                self.no_reply
                    .lock()
                    .unwrap()
                    .push((Instant::now(), format!("{what}: {e}")));
                None
            }
            Ok((status, body)) if status == expect => match serde_json::from_slice(&body) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.problem(format!(
                        "{what}: the {status} reply does not parse ({e}): {}",
                        String::from_utf8_lossy(&body)
                    ));
                    None
                }
            },
            Ok((status, body)) => {
                self.problem(format!(
                    "{what}: expected {expect}, got {status}: {}",
                    String::from_utf8_lossy(&body)
                ));
                None
            }
        }
    }

    /// Panic on any broken rule, and on requests that got no reply while the server was
    /// still up (before `kill_at`); the number of requests that got none.
    fn assert_clean(&self, kill_at: Option<Instant>) -> usize {
        let problems = self.problems.lock().unwrap();
        assert!(
            problems.is_empty(),
            "the server broke the spec under load:\n{}",
            problems.join("\n")
        );
        let no_reply = self.no_reply.lock().unwrap();
        let early: Vec<&str> = no_reply
            .iter()
            .filter(|(at, _)| kill_at.is_none_or(|k| *at < k))
            .map(|(_, what)| what.as_str())
            .collect();
        assert!(
            early.is_empty(),
            "requests failed while the server was up:\n{}",
            early.join("\n")
        );
        no_reply.len()
    }
}

/// A device as the test plays it: its identity and what the server acknowledged to it.
struct Device {
    /// A short test-side name (report ids are made from it).
    name: String,
    id: String,
    token: String,
    fingerprint: String,
    /// Acknowledged heartbeats: the reply's `server_time` and when the reply arrived
    /// (those lost within the grace period of a kill are dropped after its check).
    beats: Vec<(Timestamp, Instant)>,
    /// Heartbeats acknowledged, ever.
    beats_acked: usize,
    /// The config version of the last configure command, reported back as an agent does.
    config_version: Option<u64>,
    /// Results by deployment id: one report id per deployment, reused on a retry.
    reports: BTreeMap<String, Report>,
    /// Acknowledged results posted again with the same report id.
    resent: usize,
}

struct Report {
    id: String,
    status: ResultStatus,
    acked: bool,
}

/// Register `key` with the enrollment token; the device, `None` if not acknowledged.
async fn register(load: &Load, key: &DeviceKey, name: String) -> Option<Device> {
    let public_key = key.public_key_pem().unwrap();
    let fingerprint = DevicePublicKey::from_pem(&public_key)
        .unwrap()
        .fingerprint();
    let body = serde_json::to_vec(&RegisterRequest {
        public_key,
        device_type: "crash-gw".into(),
        hardware_metadata: json!({"name": name}),
        timestamp: chrono::Utc::now(),
    })
    .unwrap();
    let req = load
        .http
        .post(load.url("/devices/register"))
        .header("content-type", "application/json")
        .header(SIGNATURE_HEADER, key.sign(&body))
        .header(ENROLLMENT_HEADER, ENROLL)
        .body(body);
    let reply: RegisterResponse = load
        .call("registration", req, StatusCode::CREATED, true)
        .await?;
    if reply.admission != Admission::Accepted {
        load.problem(format!(
            "registration with the enrollment token admitted as {:?}",
            reply.admission
        ));
    }
    Some(Device {
        name,
        id: reply.device_id,
        token: reply.device_token,
        fingerprint,
        beats: Vec::new(),
        beats_acked: 0,
        config_version: None,
        reports: BTreeMap::new(),
        resent: 0,
    })
}

/// One device for a round: first the results an earlier round sent without an answer
/// (an agent's outbox) and one acknowledged result again, then heartbeats at a steady pace
/// and a result for each deploy command they carry.
async fn device_task(load: Load, mut dev: Device, mut rng: Rng) -> Device {
    let unanswered: Vec<String> = dev
        .reports
        .iter()
        .filter(|(_, r)| !r.acked)
        .map(|(d, _)| d.clone())
        .collect();
    for dep in unanswered {
        if !post_result(&load, &mut dev, &dep).await {
            return dev;
        }
    }
    let acked: Vec<String> = dev
        .reports
        .iter()
        .filter(|(_, r)| r.acked)
        .map(|(d, _)| d.clone())
        .collect();
    if !acked.is_empty() {
        let dep = &acked[rng.below(acked.len())];
        if !post_result(&load, &mut dev, dep).await {
            return dev;
        }
        dev.resent += 1;
    }
    while !load.stopped() {
        let body = HeartbeatRequest {
            agent_version: "crash-1".into(),
            cpu_pct: rng.below(100) as f64,
            memory_mb: 512.0,
            status: "busy".into(),
            current_bundle_version: None,
            config_version: dev.config_version,
            queued_reports: 0,
            trust_version: None,
        };
        let req = load
            .http
            .post(load.url(&format!("/devices/{}/heartbeat", dev.id)))
            .bearer_auth(&dev.token)
            .json(&body);
        let Some(reply) = load
            .call::<HeartbeatResponse>("heartbeat", req, StatusCode::OK, false)
            .await
        else {
            return dev;
        };
        dev.beats.push((reply.server_time, Instant::now()));
        dev.beats_acked += 1;
        for command in reply.commands {
            match command {
                Command::Deploy(c) => {
                    if dev.reports.get(&c.deployment_id).is_some_and(|r| r.acked) {
                        load.problem(format!(
                            "device {}: deploy command for {} after its result was acknowledged",
                            dev.id, c.deployment_id
                        ));
                    } else if !post_result(&load, &mut dev, &c.deployment_id).await {
                        return dev;
                    }
                }
                Command::Configure(c) => dev.config_version = Some(c.config_version),
                Command::Trust(_) => {}
                Command::Rollback(c) => load.problem(format!(
                    "device {}: rollback command {} though the test made no rollback",
                    dev.id, c.deployment_id
                )),
            }
        }
        tokio::time::sleep(HEARTBEAT_EVERY).await;
    }
    dev
}

/// Post this device's result for `dep`: a new report (success or failed in turn), or the
/// one made for it before. False when it was not acknowledged.
async fn post_result(load: &Load, dev: &mut Device, dep: &str) -> bool {
    let n = dev.reports.len();
    let report = dev.reports.entry(dep.to_owned()).or_insert_with(|| Report {
        id: format!("{}-{n}", dev.name),
        status: if n % 3 == 2 {
            ResultStatus::Failed
        } else {
            ResultStatus::Success
        },
        acked: false,
    });
    let body = ResultReport {
        device_id: dev.id.clone(),
        status: report.status,
        report_id: report.id.clone(),
        error_message: (report.status == ResultStatus::Failed).then(|| "deploy.sh exited 1".into()),
        duration_seconds: Some(0.5),
        log_tail: Some(format!("report {}", report.id)),
        rolled_back_to: None,
    };
    let req = load
        .http
        .post(load.url(&format!("/deployments/{dep}/result")))
        .bearer_auth(&dev.token)
        .json(&body);
    let Some(target) = load
        .call::<DeploymentDevice>("result", req, StatusCode::OK, true)
        .await
    else {
        return false;
    };
    if target.status.as_str() != report.status.as_str() {
        load.problem(format!(
            "device {}: result {} for {dep} answered with status {}, not {} (the only result sent)",
            dev.id,
            report.id,
            target.status.as_str(),
            report.status.as_str()
        ));
    }
    report.acked = true;
    true
}

/// A value one writer keeps setting on one device: the last acknowledged one, and the one
/// whose reply never came (the server may or may not have applied it).
struct Tracked<T> {
    device: String,
    acked: T,
    in_flight: Option<T>,
}

/// The config as the test compares it: every field a PUT sets.
fn config_values(c: &DeviceConfig) -> ConfigUpdate {
    ConfigUpdate {
        polling_interval: Some(c.polling_interval),
        heartbeat_timeout: Some(c.heartbeat_timeout),
        deploy_timeout: Some(c.deploy_timeout),
        log_level: Some(c.log_level.clone()),
        metadata: Some(c.metadata.clone()),
    }
}

/// Config PUTs, one after another, to its own devices (all five fields each time).
struct ConfigWriter {
    devices: Vec<Tracked<(u64, ConfigUpdate)>>,
    n: u64,
    acked: usize,
}

impl ConfigWriter {
    async fn run(mut self, load: Load) -> Self {
        while !load.stopped() {
            let n = self.n;
            self.n += 1;
            let len = self.devices.len();
            let t = &mut self.devices[n as usize % len];
            let values = ConfigUpdate {
                polling_interval: Some(5 + n % 1000),
                heartbeat_timeout: Some(1 + n % 300),
                deploy_timeout: Some(1 + n % 86_400),
                log_level: Some(DeviceConfig::LOG_LEVELS[n as usize % 5].to_owned()),
                metadata: Some(json!({"n": n})),
            };
            t.in_flight = Some((t.acked.0 + 1, values.clone()));
            let req = load
                .http
                .put(load.url(&format!("/devices/{}/config", t.device)))
                .bearer_auth(ADMIN)
                .json(&values);
            let Some(c) = load
                .call::<DeviceConfig>("config PUT", req, StatusCode::OK, true)
                .await
            else {
                return self;
            };
            if c.version != t.acked.0 + 1 || config_values(&c) != values {
                load.problem(format!(
                    "device {}: config PUT after version {} answered {c:?} for {values:?}",
                    t.device, t.acked.0
                ));
            }
            t.acked = (c.version, values);
            t.in_flight = None;
            self.acked += 1;
            tokio::time::sleep(WRITE_PACE).await;
        }
        self
    }
}

/// Tag PATCHes, one after another, to its own devices.
struct TagWriter {
    devices: Vec<Tracked<BTreeSet<String>>>,
    n: usize,
    acked: usize,
}

impl TagWriter {
    async fn run(mut self, load: Load, round: usize) -> Self {
        while !load.stopped() {
            let n = self.n;
            self.n += 1;
            let len = self.devices.len();
            let t = &mut self.devices[n % len];
            let tags: BTreeSet<String> = [
                "crash".to_owned(),
                format!("round:{round}"),
                format!("n-{n}"),
            ]
            .into_iter()
            .collect();
            t.in_flight = Some(tags.clone());
            let req = load
                .http
                .patch(load.url(&format!("/devices/{}", t.device)))
                .bearer_auth(ADMIN)
                .json(&DevicePatch {
                    tags: tags.iter().cloned().collect(),
                });
            let Some(d) = load
                .call::<DeviceDetail>("tag PATCH", req, StatusCode::OK, true)
                .await
            else {
                return self;
            };
            let got: BTreeSet<String> = d.summary.tags.into_iter().collect();
            if got != tags {
                load.problem(format!(
                    "device {}: tag PATCH {tags:?} answered {got:?}",
                    t.device
                ));
            }
            t.acked = tags;
            t.in_flight = None;
            self.acked += 1;
            tokio::time::sleep(WRITE_PACE).await;
        }
        self
    }
}

/// Operator tokens minted over the API.
#[derive(Default)]
struct TokenWriter {
    acked: Vec<CreatedToken>,
    n: usize,
}

impl TokenWriter {
    async fn run(mut self, load: Load) -> Self {
        while !load.stopped() {
            let name = format!("crash-{}", self.n);
            self.n += 1;
            let req = load
                .http
                .post(load.url("/tokens"))
                .bearer_auth(ADMIN)
                .json(&CreateToken { name: name.clone() });
            let Some(t) = load
                .call::<CreatedToken>("token creation", req, StatusCode::CREATED, true)
                .await
            else {
                return self;
            };
            if t.name != name {
                load.problem(format!("token {name:?} created as {:?}", t.name));
            }
            self.acked.push(t);
            tokio::time::sleep(WRITE_PACE).await;
        }
        self
    }
}

/// Bundle uploads, each followed by a deployment of it to two of the base devices.
#[derive(Default)]
struct BundleWriter {
    targets: Vec<String>,
    bundles: Vec<BundleInfo>,
    deployments: Vec<Deployment>,
    n: usize,
}

impl BundleWriter {
    async fn run(mut self, load: Load, mut rng: Rng) -> Self {
        for _ in 0..BUNDLES_PER_ROUND {
            if load.stopped() {
                break;
            }
            let version = format!("1.{}.0", self.n);
            self.n += 1;
            let v = version.clone();
            let archive = tokio::task::spawn_blocking(move || fast_bundle(&v))
                .await
                .unwrap();
            let checksum = hex::encode(Sha256::digest(&archive));
            let size = archive.len() as u64;
            let form = reqwest::multipart::Form::new().part(
                "file",
                reqwest::multipart::Part::bytes(archive).file_name("crash.tar.gz"),
            );
            let req = load
                .http
                .post(load.url("/bundles"))
                .bearer_auth(ADMIN)
                .multipart(form);
            let Some(b) = load
                .call::<BundleInfo>("bundle upload", req, StatusCode::CREATED, true)
                .await
            else {
                return self;
            };
            if b.checksum_sha256 != checksum || b.size_bytes != size || b.version != version {
                load.problem(format!(
                    "bundle {version} ({checksum}, {size} bytes) stored as {b:?}"
                ));
            }
            let first = rng.below(self.targets.len());
            let second = (first + 1 + rng.below(self.targets.len() - 1)) % self.targets.len();
            let targets = vec![self.targets[first].clone(), self.targets[second].clone()];
            let req = load
                .http
                .post(load.url("/deployments"))
                .bearer_auth(ADMIN)
                .json(&CreateDeployment {
                    bundle_id: Some(b.id.clone()),
                    target_device_ids: targets.clone(),
                    ..Default::default()
                });
            self.bundles.push(b);
            let Some(d) = load
                .call::<Deployment>("deployment", req, StatusCode::CREATED, true)
                .await
            else {
                return self;
            };
            if sorted(&d.target_device_ids) != sorted(&targets) {
                load.problem(format!(
                    "deployment to {targets:?} created with targets {:?}",
                    d.target_device_ids
                ));
            }
            self.deployments.push(d);
            tokio::time::sleep(BUNDLE_PACE).await;
        }
        self
    }
}

/// New devices registering during the load (they heartbeat from the next round on).
#[derive(Default)]
struct Enroller {
    keys: Vec<DeviceKey>,
    registered: Vec<Device>,
}

impl Enroller {
    async fn run(mut self, load: Load, round: usize) -> Self {
        let mut n = 0;
        while !load.stopped() && n < NEW_PER_ROUND {
            let Some(key) = self.keys.pop() else {
                break;
            };
            let Some(device) = register(&load, &key, format!("r{round}n{n}")).await else {
                return self;
            };
            self.registered.push(device);
            n += 1;
            tokio::time::sleep(REGISTER_PACE).await;
        }
        self
    }
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

/// Everything the test plays and everything the server acknowledged to it.
struct Fleet {
    /// Every acknowledged device; the base devices come first.
    devices: Vec<Device>,
    configs: Vec<ConfigWriter>,
    tags: Vec<TagWriter>,
    tokens: TokenWriter,
    bundles: BundleWriter,
    enroller: Enroller,
}

/// The tasks of one round.
struct Running {
    devices: Vec<tokio::task::JoinHandle<Device>>,
    configs: Vec<tokio::task::JoinHandle<ConfigWriter>>,
    tags: Vec<tokio::task::JoinHandle<TagWriter>>,
    tokens: tokio::task::JoinHandle<TokenWriter>,
    bundles: tokio::task::JoinHandle<BundleWriter>,
    enroller: tokio::task::JoinHandle<Enroller>,
}

impl Fleet {
    /// The writers for the base devices, starting from what the server holds now; two
    /// config writers and two tag writers, each with its own half of the devices.
    async fn new(devices: Vec<Device>, keys: Vec<DeviceKey>, api: &str) -> Self {
        let check = Check::new(api, Instant::now());
        let mut halves: [Vec<Tracked<(u64, ConfigUpdate)>>; 2] = Default::default();
        let mut tag_halves: [Vec<Tracked<BTreeSet<String>>>; 2] = Default::default();
        for (i, d) in devices.iter().enumerate() {
            let c: DeviceConfig = check.get(&format!("/devices/{}/config", d.id), ADMIN).await;
            halves[i % 2].push(Tracked {
                device: d.id.clone(),
                acked: (c.version, config_values(&c)),
                in_flight: None,
            });
            let detail: DeviceDetail = check.get(&format!("/devices/{}", d.id), ADMIN).await;
            tag_halves[(i / 2) % 2].push(Tracked {
                device: d.id.clone(),
                acked: detail.summary.tags.into_iter().collect(),
                in_flight: None,
            });
        }
        Fleet {
            configs: halves
                .into_iter()
                .map(|devices| ConfigWriter {
                    devices,
                    n: 0,
                    acked: 0,
                })
                .collect(),
            tags: tag_halves
                .into_iter()
                .map(|devices| TagWriter {
                    devices,
                    n: 0,
                    acked: 0,
                })
                .collect(),
            tokens: TokenWriter::default(),
            bundles: BundleWriter {
                targets: devices.iter().map(|d| d.id.clone()).collect(),
                bundles: Vec::new(),
                deployments: Vec::new(),
                n: 0,
            },
            enroller: Enroller {
                keys,
                registered: Vec::new(),
            },
            devices,
        }
    }

    /// Start one round of load: every device and every writer as its own task.
    fn spawn(&mut self, load: &Load, round: usize, rng: &mut Rng) -> Running {
        Running {
            devices: std::mem::take(&mut self.devices)
                .into_iter()
                .map(|d| tokio::spawn(device_task(load.clone(), d, rng.split())))
                .collect(),
            configs: std::mem::take(&mut self.configs)
                .into_iter()
                .map(|w| tokio::spawn(w.run(load.clone())))
                .collect(),
            tags: std::mem::take(&mut self.tags)
                .into_iter()
                .map(|w| tokio::spawn(w.run(load.clone(), round)))
                .collect(),
            tokens: tokio::spawn(std::mem::take(&mut self.tokens).run(load.clone())),
            bundles: tokio::spawn(std::mem::take(&mut self.bundles).run(load.clone(), rng.split())),
            enroller: tokio::spawn(std::mem::take(&mut self.enroller).run(load.clone(), round)),
        }
    }

    /// Wait for a round's tasks (they stop at the kill) and take their ledgers back; the
    /// devices registered in the round join the fleet.
    async fn join(&mut self, running: Running) {
        for d in running.devices {
            self.devices.push(d.await.unwrap());
        }
        for w in running.configs {
            self.configs.push(w.await.unwrap());
        }
        for w in running.tags {
            self.tags.push(w.await.unwrap());
        }
        self.tokens = running.tokens.await.unwrap();
        self.bundles = running.bundles.await.unwrap();
        self.enroller = running.enroller.await.unwrap();
        self.devices.append(&mut self.enroller.registered);
    }

    /// What was acknowledged so far (heartbeats lost in the grace window not counted).
    fn acknowledged(&self) -> Acked {
        let devices = self.devices.iter().chain(&self.enroller.registered);
        let mut a = Acked {
            registrations: self.devices.len() + self.enroller.registered.len() - BASE_DEVICES,
            configs: self.configs.iter().map(|w| w.acked).sum(),
            tags: self.tags.iter().map(|w| w.acked).sum(),
            tokens: self.tokens.acked.len(),
            bundles: self.bundles.bundles.len(),
            deployments: self.bundles.deployments.len(),
            ..Acked::default()
        };
        for d in devices {
            a.heartbeats += d.beats_acked;
            a.results += d.reports.values().filter(|r| r.acked).count();
            a.resent += d.resent;
        }
        a
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Acked {
    heartbeats: usize,
    registrations: usize,
    configs: usize,
    tags: usize,
    tokens: usize,
    bundles: usize,
    deployments: usize,
    results: usize,
    resent: usize,
}

impl Acked {
    fn writes(&self) -> usize {
        self.registrations
            + self.configs
            + self.tags
            + self.tokens
            + self.bundles
            + self.deployments
            + self.results
    }
}

impl std::ops::Sub for Acked {
    type Output = Acked;
    fn sub(self, o: Acked) -> Acked {
        Acked {
            heartbeats: self.heartbeats - o.heartbeats,
            registrations: self.registrations - o.registrations,
            configs: self.configs - o.configs,
            tags: self.tags - o.tags,
            tokens: self.tokens - o.tokens,
            bundles: self.bundles - o.bundles,
            deployments: self.deployments - o.deployments,
            results: self.results - o.results,
            resent: self.resent - o.resent,
        }
    }
}

// ----------------------------------------------------------------------- the checks

/// After a restart: everything acknowledged is there.
struct Check {
    http: reqwest::Client,
    api: String,
    kill_at: Instant,
    failures: Vec<String>,
    write_checks: usize,
    heartbeats_checked: usize,
    heartbeats_lost: usize,
    grace_seen: usize,
    grace_lost: usize,
}

#[derive(Default)]
struct Figures {
    write_checks: usize,
    heartbeats_checked: usize,
    heartbeats_lost: usize,
    grace_seen: usize,
    grace_lost: usize,
    no_reply: usize,
}

impl Figures {
    fn add(&mut self, c: &Check, no_reply: usize) {
        self.write_checks += c.write_checks;
        self.heartbeats_checked += c.heartbeats_checked;
        self.heartbeats_lost += c.heartbeats_lost;
        self.grace_seen += c.grace_seen;
        self.grace_lost += c.grace_lost;
        self.no_reply += no_reply;
    }
}

impl Check {
    fn new(api: &str, kill_at: Instant) -> Self {
        Check {
            http: client(),
            api: api.to_owned(),
            kill_at,
            failures: Vec::new(),
            write_checks: 0,
            heartbeats_checked: 0,
            heartbeats_lost: 0,
            grace_seen: 0,
            grace_lost: 0,
        }
    }

    async fn status(&self, path: &str, bearer: &str) -> (StatusCode, Vec<u8>) {
        let resp = self
            .http
            .get(format!("{}{path}", self.api))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} after the restart: {e}"));
        let status = resp.status();
        (status, resp.bytes().await.unwrap().to_vec())
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, bearer: &str) -> T {
        let (status, body) = self.status(path, bearer).await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, StatusCode::OK, "GET {path}: {text}");
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {text}"))
    }

    fn expect(&mut self, ok: bool, failure: impl FnOnce() -> String) {
        self.write_checks += 1;
        if !ok {
            self.failures.push(failure());
        }
    }

    /// Check everything, then take what the server now holds as the acknowledged state of
    /// the writes whose replies never came.
    async fn run(mut self, fleet: &mut Fleet) -> Self {
        let mut deployments = HashMap::new();
        for d in &fleet.bundles.deployments {
            let got: Deployment = self.get(&format!("/deployments/{}", d.id), ADMIN).await;
            let c = &got.counts;
            let counted = c.pending + c.in_progress + c.success + c.failed + c.cancelled;
            self.expect(
                got.kind == DeploymentKind::Deploy
                    && got.bundle_id == d.bundle_id
                    && sorted(&got.target_device_ids) == sorted(&d.target_device_ids)
                    && counted == d.target_device_ids.len() as u64,
                || {
                    format!(
                        "deployment {} was acknowledged as {d:?}, is now {got:?}",
                        d.id
                    )
                },
            );
            deployments.insert(d.id.clone(), got);
        }
        for i in 0..fleet.devices.len() {
            self.device(&mut fleet.devices[i], &mut deployments).await;
        }
        for w in &mut fleet.configs {
            for t in &mut w.devices {
                let c: DeviceConfig = self
                    .get(&format!("/devices/{}/config", t.device), ADMIN)
                    .await;
                let now = (c.version, config_values(&c));
                let ok = now == t.acked || t.in_flight.as_ref() == Some(&now);
                self.expect(ok, || {
                    format!(
                        "device {}: config acknowledged at {:?} (in flight: {:?}) is now {now:?}",
                        t.device, t.acked, t.in_flight
                    )
                });
                t.acked = now;
                t.in_flight = None;
            }
        }
        for w in &mut fleet.tags {
            for t in &mut w.devices {
                let d: DeviceDetail = self.get(&format!("/devices/{}", t.device), ADMIN).await;
                let now: BTreeSet<String> = d.summary.tags.into_iter().collect();
                let ok = now == t.acked || t.in_flight.as_ref() == Some(&now);
                self.expect(ok, || {
                    format!(
                        "device {}: tags acknowledged as {:?} (in flight: {:?}) are now {now:?}",
                        t.device, t.acked, t.in_flight
                    )
                });
                t.acked = now;
                t.in_flight = None;
            }
        }
        let names: BTreeSet<String> = self
            .get::<Vec<TokenInfo>>("/tokens", ADMIN)
            .await
            .into_iter()
            .map(|t| t.name)
            .collect();
        for t in &fleet.tokens.acked {
            let (status, _) = self.status("/devices?limit=1", &t.token).await;
            self.expect(names.contains(&t.name) && status == StatusCode::OK, || {
                format!(
                    "operator token {:?}: listed {}, GET /devices answered {status}",
                    t.name,
                    names.contains(&t.name)
                )
            });
        }
        let listed: HashMap<String, BundleInfo> = self
            .get::<Vec<BundleInfo>>("/bundles", ADMIN)
            .await
            .into_iter()
            .map(|b| (b.id.clone(), b))
            .collect();
        for b in &fleet.bundles.bundles {
            let (status, bytes) = self.status(&format!("/bundles/{}", b.id), ADMIN).await;
            let got = hex::encode(Sha256::digest(&bytes));
            let info = listed.get(&b.id);
            self.expect(
                status == StatusCode::OK
                    && got == b.checksum_sha256
                    && info.is_some_and(|i| i.checksum_sha256 == b.checksum_sha256),
                || {
                    format!(
                        "bundle {} ({}): download {status} with sha256 {got}, listed as {info:?}",
                        b.id, b.version
                    )
                },
            );
        }
        assert!(
            self.failures.is_empty(),
            "after the restart, acknowledged state is missing or wrong:\n{}",
            self.failures.join("\n")
        );
        self
    }

    /// One device: its registration and token, its heartbeats, its results.
    async fn device(&mut self, dev: &mut Device, deployments: &mut HashMap<String, Deployment>) {
        let detail: DeviceDetail = self.get(&format!("/devices/{}", dev.id), ADMIN).await;
        let (status, _) = self
            .status(&format!("/devices/{}/config", dev.id), &dev.token)
            .await;
        self.expect(
            detail.public_key_fingerprint == dev.fingerprint
                && detail.summary.admission == Admission::Accepted
                && status == StatusCode::OK,
            || {
                format!(
                    "device {} ({}): fingerprint {}, admission {:?}, its token answered {status}",
                    dev.id, dev.name, detail.public_key_fingerprint, detail.summary.admission
                )
            },
        );

        let stored: Vec<HeartbeatRecord> = self
            .get(&format!("/devices/{}/heartbeats?limit=1000", dev.id), ADMIN)
            .await;
        assert!(stored.len() < 1000, "more heartbeats than one page holds");
        let stored: BTreeSet<Timestamp> = stored.into_iter().map(|h| h.timestamp).collect();
        let cutoff = self.kill_at.checked_sub(HEARTBEAT_GRACE);
        let mut kept = Vec::new();
        for (at, acked) in std::mem::take(&mut dev.beats) {
            let required = cutoff.is_some_and(|c| acked < c);
            let found = stored.contains(&at);
            if required {
                self.heartbeats_checked += 1;
                if !found {
                    self.heartbeats_lost += 1;
                    self.failures.push(format!(
                        "device {}: heartbeat {at:?} acknowledged {:?} before the kill is missing",
                        dev.id,
                        self.kill_at - acked
                    ));
                }
            } else {
                self.grace_seen += 1;
                if !found {
                    // Allowed to be lost; forget it so later rounds do not ask for it.
                    self.grace_lost += 1;
                    continue;
                }
            }
            kept.push((at, acked));
        }
        dev.beats = kept;

        let history: Vec<HistoryRecord> = self
            .get(
                &format!("/devices/{}/bundle-history?limit=100", dev.id),
                ADMIN,
            )
            .await;
        assert!(history.len() < 100, "more history than one page holds");
        let mut per_deployment: HashMap<&str, Vec<&HistoryRecord>> = HashMap::new();
        for h in &history {
            per_deployment.entry(&h.deployment_id).or_default().push(h);
        }
        for (dep, records) in &per_deployment {
            self.expect(records.len() == 1, || {
                format!(
                    "device {}: {} history records for deployment {dep}",
                    dev.id,
                    records.len()
                )
            });
        }
        for (dep, report) in dev.reports.iter().filter(|(_, r)| r.acked) {
            let records = per_deployment.get(dep.as_str());
            self.expect(
                records.is_some_and(|r| r.iter().all(|h| h.status == report.status)),
                || {
                    format!(
                        "device {}: acknowledged result {} for {dep} has history {records:?}",
                        dev.id, report.id
                    )
                },
            );
            if !deployments.contains_key(dep) {
                let d: Deployment = self.get(&format!("/deployments/{dep}"), ADMIN).await;
                deployments.insert(dep.clone(), d);
            }
            let target = deployments[dep]
                .devices
                .iter()
                .find(|t| t.device_id == dev.id);
            self.expect(
                target.is_some_and(|t| t.status.as_str() == report.status.as_str()),
                || {
                    format!(
                        "device {}: acknowledged result {} ({}) for {dep}, target is {target:?}",
                        dev.id,
                        report.id,
                        report.status.as_str()
                    )
                },
            );
        }
    }
}
