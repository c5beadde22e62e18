//! Scale-out end to end (SPEC §8): two real `kernex-server` replicas on one PostgreSQL
//! database and one shared blob dir, driven over loopback as devices and an operator
//! would. What one replica takes in, the other serves: registrations, heartbeats, live
//! events, deployments, bundles; and a rollout whose timer-holding replica is SIGKILLed
//! finishes through the other, each target delivered and reported once. Also the
//! migration path: a sled backup restored into PostgreSQL answers as the sled server did.
//!
//! The cluster is `KERNEX_TEST_DATABASE_URL` (CI starts one) or one this test starts
//! with `scripts/pg-cluster.sh`; without PostgreSQL the tests say SKIPPED and pass.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kernex_tests::fleet::{Api, answers, bundle, differences, populate};
use kernex_tests::{ServerProcess, bin, postgres};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ADMIN: &str = "scale-admin";
const ENROLL: &str = "scale-enroll";

fn cluster() -> Option<String> {
    match postgres::cluster() {
        Ok(url) => Some(url),
        Err(why) => {
            eprintln!("SKIPPED: no PostgreSQL cluster for the scale-out tests ({why})");
            None
        }
    }
}

/// What every test here runs on: a fresh database, a scratch dir, and in it the blob
/// dir the replicas share. `None` (the test says SKIPPED) without PostgreSQL.
struct Scene {
    database: postgres::Database,
    scratch: tempfile::TempDir,
    blobs: PathBuf,
}

impl Scene {
    fn new() -> Option<Scene> {
        let cluster = cluster()?;
        let database = postgres::fresh_database(&cluster).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let blobs = scratch.path().join("blobs");
        Some(Scene {
            database,
            scratch,
            blobs,
        })
    }

    fn url(&self) -> &str {
        &self.database.url
    }

    fn dir(&self) -> &Path {
        self.scratch.path()
    }

    /// A replica on the database with its own data dir `name` and the shared blob dir.
    fn replica(&self, name: &str) -> ServerProcess {
        ServerProcess::start_with(
            &self.dir().join(name),
            ADMIN,
            ENROLL,
            &[
                "--database-url",
                self.url(),
                "--blob-dir",
                self.blobs.to_str().unwrap(),
            ],
        )
        .unwrap()
    }
}

/// Poll `check` every 200 ms until it returns `Some`, or fail after `limit`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The deploy command for `dep` in a heartbeat reply, if there is one.
fn deploy_command(reply: &Value, dep: &str) -> Option<Value> {
    reply["commands"]
        .as_array()?
        .iter()
        .find(|c| c["deployment_id"] == dep)
        .cloned()
}

/// Collect `/events` frames of a server into a shared string.
fn follow_events(api: &Api) -> std::sync::Arc<std::sync::Mutex<String>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let req = api
        .http
        .get(format!("{}/events", api.base))
        .bearer_auth(&api.admin);
    let sink = seen.clone();
    tokio::spawn(async move {
        let Ok(mut resp) = req.send().await else {
            return;
        };
        while let Ok(Some(chunk)) = resp.chunk().await {
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk));
        }
    });
    seen
}

#[tokio::test]
async fn replicas_share_devices_events_deployments_and_bundles() {
    let Some(scene) = Scene::new() else { return };
    let a = scene.replica("a");
    let b = scene.replica("b");
    let (api_a, api_b) = (Api::new(&a.url(""), ADMIN), Api::new(&b.url(""), ADMIN));

    // Registered through A, heartbeating through B; A's /events client sees the beats.
    let (id, token) = api_a.register(Some(ENROLL)).await.unwrap();
    let events = follow_events(&api_a);
    eventually(
        "B's heartbeat on A's /events",
        Duration::from_secs(30),
        || {
            let (api_b, id, token, events) = (&api_b, &id, &token, &events);
            async move {
                api_b.beat(id, token, None).await.unwrap();
                let seen = events.lock().unwrap().clone();
                seen.lines()
                    .any(|l| l.contains(id.as_str()) && l.contains("agent_version"))
                    .then_some(())
            }
        },
    )
    .await;
    let device = api_a.get(&format!("/devices/{id}")).await.unwrap();
    assert_eq!(device["agent_version"], "1.2.3", "{device}");

    // A bundle uploaded to A; a deployment of it created on B reaches the device
    // polling A; the device downloads the archive from B, byte for byte.
    let archive = bundle("1.0.0").unwrap();
    let uploaded = api_a.upload(archive.clone()).await.unwrap();
    let bundle_id = uploaded["id"].as_str().unwrap().to_owned();
    let dep = api_b
        .op(
            Method::POST,
            "/deployments",
            Some(json!({"bundle_id": bundle_id, "target_device_ids": [id]})),
            StatusCode::CREATED,
        )
        .await
        .unwrap();
    let dep_id = dep["id"].as_str().unwrap().to_owned();
    let command = eventually(
        "B's deployment on a device polling A",
        Duration::from_secs(30),
        || {
            let (api_a, id, token, dep_id) = (&api_a, &id, &token, &dep_id);
            async move { deploy_command(&api_a.beat(id, token, None).await.unwrap(), dep_id) }
        },
    )
    .await;
    assert_eq!(command["bundle_id"], bundle_id.as_str(), "{command}");
    let downloaded = api_b
        .http
        .get(format!("{}/bundles/{bundle_id}", api_b.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(downloaded.status(), 200);
    let bytes = downloaded.bytes().await.unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&bytes)),
        hex::encode(Sha256::digest(&archive))
    );

    // The result reported to B finishes the deployment A shows.
    api_b.result(&dep_id, &id, &token, "success").await.unwrap();
    let shown = api_a.get(&format!("/deployments/{dep_id}")).await.unwrap();
    assert_eq!(shown["status"], "success", "{shown}");
    drop((a, b));
}

/// One device's part in the rollout: poll `api` until the deploy command for `dep`
/// arrives, report success once.
async fn deploy_once(api: &Api, dev: &(String, String), dep: &str) {
    eventually("a deploy command", Duration::from_secs(60), || async {
        deploy_command(&api.beat(&dev.0, &dev.1, None).await.unwrap(), dep)
    })
    .await;
    api.result(dep, &dev.0, &dev.1, "success").await.unwrap();
}

#[tokio::test]
async fn a_rollout_finishes_through_b_after_its_timer_replica_is_killed() {
    let Some(scene) = Scene::new() else { return };
    // A starts first and takes the timer lease.
    let a = scene.replica("a");
    let start = Instant::now();
    while !a.logs().iter().any(|l| l.contains("leads=true")) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "A never took the timer lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = scene.replica("b");
    let (api_a, api_b) = (Api::new(&a.url(""), ADMIN), Api::new(&b.url(""), ADMIN));
    let mut devices = Vec::new();
    for _ in 0..4 {
        devices.push(api_b.register(Some(ENROLL)).await.unwrap());
    }
    let ids: Vec<&str> = devices.iter().map(|d| d.0.as_str()).collect();
    api_a.upload(bundle("2.0.0").unwrap()).await.unwrap();
    // A canary of one, soaking 3 s: the next wave opens on a timer, not inline.
    let policy = json!({"waves": [25, 100], "soak_seconds": 3});
    let dep = api_a
        .op(
            Method::POST,
            "/deployments",
            Some(json!({"bundle_version": "2.0.0", "target_device_ids": ids, "rollout": policy})),
            StatusCode::CREATED,
        )
        .await
        .unwrap();
    let dep_id = dep["id"].as_str().unwrap().to_owned();
    let canary = dep["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["status"] == "pending")
        .map(|d| d["device_id"].as_str().unwrap().to_owned())
        .expect("one released canary");
    let canary = devices.iter().find(|d| d.0 == canary).unwrap().clone();
    deploy_once(&api_a, &canary, &dep_id).await;

    // Mid-rollout (the canary soaking), the replica holding the timers dies.
    a.kill().unwrap();
    for dev in devices.iter().filter(|d| d.0 != canary.0) {
        deploy_once(&api_b, dev, &dep_id).await;
    }
    let done = eventually(
        "the rollout finished through B",
        Duration::from_secs(60),
        || {
            let (api_b, dep_id) = (&api_b, &dep_id);
            async move {
                let d = api_b.get(&format!("/deployments/{dep_id}")).await.unwrap();
                (d["status"] == "success").then_some(d)
            }
        },
    )
    .await;
    assert_eq!(done["counts"]["success"], 4, "{done}");
    assert_eq!(done["rollout"]["waves"][1]["success"], 3, "{done}");
    for dev in &devices {
        // Delivered and reported once: one history entry, and no command any more.
        let history = api_b
            .get(&format!("/devices/{}/bundle-history", dev.0))
            .await
            .unwrap();
        let entries = history.as_array().unwrap();
        assert_eq!(
            entries
                .iter()
                .filter(|h| h["deployment_id"] == dep_id.as_str())
                .count(),
            1,
            "{history}"
        );
        let reply = api_b.beat(&dev.0, &dev.1, Some("2.0.0")).await.unwrap();
        assert!(deploy_command(&reply, &dep_id).is_none(), "{reply}");
    }
    drop(b);
}

/// Timestamps cut to microseconds: PostgreSQL's `timestamptz` keeps six digits, sled's
/// records nine, so a token's `created_at` loses its last three digits in the move (the
/// records kept as JSON keep them all).
fn to_micros(answers: Vec<(String, Value)>) -> Vec<(String, Value)> {
    fn cut(v: &mut Value) {
        match v {
            Value::String(s) => {
                if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s)
                    && s.split('.').nth(1).is_some_and(|frac| frac.len() > 7)
                {
                    let t = t.with_timezone(&chrono::Utc);
                    *s = t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(cut),
            Value::Object(o) => o.values_mut().for_each(cut),
            _ => {}
        }
    }
    answers
        .into_iter()
        .map(|(path, mut v)| {
            cut(&mut v);
            (path, v)
        })
        .collect()
}

fn server_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin("kernex-server").unwrap())
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_sled_backup_restored_into_postgres_answers_the_same() {
    let Some(scene) = Scene::new() else { return };
    let (url, scratch) = (scene.url(), scene.dir());
    let sled_dir = scratch.join("sled");
    let sled = ServerProcess::start(&sled_dir, ADMIN, ENROLL).unwrap();
    let api = Api::new(&sled.url(""), ADMIN);
    let fleet = populate(&api, ENROLL, 3, 20).await.unwrap();
    let before = answers(&api, &fleet).await.unwrap();
    sled.terminate().unwrap();

    let file = scratch.join("sled.tar");
    let out = server_cli(&[
        "backup",
        "--to",
        file.to_str().unwrap(),
        "--data-dir",
        sled_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blobs = &scene.blobs;
    let out = server_cli(&[
        "restore",
        "--from",
        file.to_str().unwrap(),
        "--database-url",
        url,
        "--blob-dir",
        blobs.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The restored database and its archives check sound.
    let checked = server_cli(&[
        "check",
        "--database-url",
        url,
        "--blob-dir",
        blobs.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success() && said.contains("sound"),
        "{said}{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    // A second restore into the now filled database is refused and changes nothing.
    let again = server_cli(&[
        "restore",
        "--from",
        file.to_str().unwrap(),
        "--database-url",
        url,
        "--blob-dir",
        blobs.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    let pg = scene.replica("pg");
    let api = Api::new(&pg.url(""), ADMIN);
    let after = answers(&api, &fleet).await.unwrap();
    let diff = differences(&to_micros(before), &to_micros(after));
    assert!(
        diff.is_empty(),
        "the PostgreSQL server answers differently: {diff:#?}"
    );
}

/// SPEC §8: a replica writes no `admin.token`; `token create --database-url` mints an
/// operator token in the database while replicas run, and every replica honours it.
#[tokio::test]
async fn token_create_works_on_the_database_while_replicas_run() {
    let Some(scene) = Scene::new() else { return };
    let url = scene.url();
    let a = scene.replica("a");
    let b = scene.replica("b");
    for dir in ["a", "b"] {
        assert!(!scene.dir().join(dir).join("admin.token").exists());
    }
    let out = server_cli(&[
        "token",
        "create",
        "--database-url",
        url,
        "--name",
        "night-shift",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    for server in [&a, &b] {
        Api::new(&server.url(""), &token)
            .get("/devices")
            .await
            .unwrap();
    }
    // The name is taken now: refused, nothing changes.
    let again = server_cli(&[
        "token",
        "create",
        "--database-url",
        url,
        "--name",
        "night-shift",
    ]);
    assert!(!again.status.success());
    let tokens = Api::new(&b.url(""), ADMIN).get("/tokens").await.unwrap();
    let names: Vec<&str> = tokens
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["admin", "night-shift"], "{tokens}");

    // Revoked through A, refused by B at once: B had the token cached from the calls
    // above (and a device's from its heartbeats), and the revocation's notice clears it.
    let (id, device_token) = Api::new(&a.url(""), ADMIN)
        .register(Some(ENROLL))
        .await
        .unwrap();
    let on_b = Api::new(&b.url(""), ADMIN);
    on_b.beat(&id, &device_token, None).await.unwrap();
    Api::new(&a.url(""), ADMIN)
        .op(
            Method::DELETE,
            "/tokens/night-shift",
            None,
            StatusCode::NO_CONTENT,
        )
        .await
        .unwrap();
    Api::new(&a.url(""), ADMIN)
        .op(
            Method::POST,
            &format!("/devices/{id}/reject"),
            None,
            StatusCode::OK,
        )
        .await
        .unwrap();
    let refused = |status: StatusCode| status == StatusCode::UNAUTHORIZED;
    eventually(
        "B refuses the revoked tokens",
        Duration::from_secs(5),
        || {
            let (b, token, on_b, id, device_token) = (&b, &token, &on_b, &id, &device_token);
            async move {
                let op = on_b
                    .http
                    .get(b.url("/api/v1/devices"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .ok()?
                    .status();
                let beat = on_b
                    .http
                    .post(format!("{}/devices/{id}/heartbeat", on_b.base))
                    .bearer_auth(device_token)
                    .json(&json!({}))
                    .send()
                    .await
                    .ok()?
                    .status();
                (refused(op) && refused(beat)).then_some(())
            }
        },
    )
    .await;
}
