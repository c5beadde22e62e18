//! Faulty networks between a real agent and the real server (issue 14): a
//! [`FaultProxy`] sits on the agent's only path to the server and breaks connections the
//! way bad links do — reset mid-download, a result's reply lost, a long outage, a server
//! that drips bytes. Every scenario checks the same end state: nothing lost (the server
//! has every result), nothing doubled (one history record and one script run per
//! deployment).
//!
//! The operator API and the metrics are read directly, never through the proxy.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use kernex_tests::ServerProcess;
use kernex_tests::agent::{Agent, AgentDaemon, eventually, pack_dir};
use kernex_tests::fault_proxy::{Direction, Fault, FaultProxy, Rule, proxy_to};
use kernex_tests::operator::OperatorApi;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ADMIN: &str = "faults-admin";
const ENROLL: &str = "faults-enroll";
/// How long a test waits for something that should happen "soon" on a slow machine.
const PATIENCE: Duration = Duration::from_secs(120);
/// The file each deploy script appends `<deployment id> <version>` to.
const RUNS_ENV: &str = "KX_FAULTS_RUNS";

/// Operator calls with the admin token, straight to the server; what these tests add.
type Api = OperatorApi;

trait FaultTestApi {
    async fn history(&self, device: &str) -> Vec<Value>;
}

impl FaultTestApi for OperatorApi {
    /// The device's server-side history, newest first.
    async fn history(&self, device: &str) -> Vec<Value> {
        let h = self
            .get(&format!("/devices/{device}/bundle-history?limit=100"))
            .await;
        h.as_array().unwrap().clone()
    }
}

/// A server, a fault proxy in front of it, and one device whose agent only knows the
/// proxy.
struct World {
    dir: tempfile::TempDir,
    server: ServerProcess,
    proxy: FaultProxy,
    api: Api,
    agent: Agent,
    device: String,
}

impl World {
    /// Start everything and register the device (through the proxy, no faults yet) with
    /// the shortest polling interval; `env` goes to the agent.
    async fn start(env: &[(&str, &str)]) -> World {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("server"), ADMIN, ENROLL).unwrap();
        let proxy = proxy_to(&server.addr).await;
        let mut agent = Agent::new(&dir.path().join("agent"), &proxy.url())
            .enrollment(ENROLL)
            .env(RUNS_ENV, dir.path().join("runs"));
        for (k, v) in env {
            agent = agent.env(k, v);
        }
        let api = Api::new(server.url(""), ADMIN);
        agent.once_ok().await;
        let device = agent.device_id();
        let cfg = json!({"polling_interval": 5, "heartbeat_timeout": 2});
        api.ok(Method::PUT, &format!("/devices/{device}/config"), Some(cfg))
            .await;
        agent.once_ok().await;
        World {
            dir,
            server,
            proxy,
            api,
            agent,
            device,
        }
    }

    /// The deploy scripts' runs so far: `(deployment id, version)` in order.
    fn runs(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(self.dir.path().join("runs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(d, v)| (d.to_owned(), v.to_owned()))
            .collect()
    }

    /// Wait until the device's status in `deployment` is final; the target entry.
    async fn final_target(&self, deployment: &str) -> Value {
        eventually(
            &format!("deployment {deployment} to finish"),
            PATIENCE,
            || async {
                let t = self.api.target(deployment, &self.device).await;
                matches!(t["status"].as_str(), Some("success" | "failed")).then_some(t)
            },
        )
        .await
    }

    /// Wait until the agent's queue is empty.
    async fn drained(&self) {
        eventually("the agent's queue to drain", PATIENCE, || async {
            self.agent.queued().is_empty().then_some(())
        })
        .await;
    }

    /// The history records of one deployment.
    async fn history_of(&self, deployment: &str) -> Vec<Value> {
        let all = self.api.history(&self.device).await;
        all.into_iter()
            .filter(|r| r["deployment_id"] == deployment)
            .collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.agent.logs());
            eprintln!("proxy requests: {:#?}", self.proxy.requests());
            kernex_tests::eprint_server_log(&std::sync::Mutex::new(Vec::new()), Some(&self.server));
        }
    }
}

/// A bundle `faults` at `version` carrying `payload` bytes of incompressible data (so the
/// archive is about that big), whose deploy script records its run and installs.
fn payload_bundle(version: &str, payload: usize) -> Vec<u8> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let manifest = json!({
        "name": "e2e",
        "version": version,
        "deploy": {"script": "deploy.sh", "timeout_s": 120},
    });
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    let deploy = format!(
        "#!/bin/sh\nset -eu\necho \"${{KERNEX_DEPLOYMENT_ID}} ${{KERNEX_BUNDLE_VERSION}}\" >> \"${{{RUNS_ENV}}}\"\n\
         echo \"installed ${{KERNEX_BUNDLE_VERSION}}\"\n"
    );
    let script = dir.path().join("deploy.sh");
    std::fs::write(&script, deploy).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("payload.bin"), noise(version, payload)).unwrap();
    pack_dir(dir.path())
}

/// `len` bytes that gzip cannot shrink: a SHA-256 chain seeded by `seed`.
fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = Sha256::digest(seed.as_bytes());
    while out.len() < len {
        out.extend_from_slice(&block);
        block = Sha256::digest(block);
    }
    out.truncate(len);
    out
}

fn agent_log_count(agent: &Agent, needle: &str) -> usize {
    agent.logs().matches(needle).count()
}

/// Start the daemon; the handle kills it when dropped.
fn daemon(w: &World) -> AgentDaemon {
    w.agent.spawn_daemon().unwrap()
}

#[tokio::test]
async fn the_connection_dies_five_times_mid_download_and_the_deploy_resumes_by_range() {
    let w = World::start(&[]).await;
    let archive = payload_bundle("2.0.0", 400 * 1024);
    let size = archive.len() as u64;
    w.api.upload(archive).await;
    // Every bundle reply is cut with a RST 48 KiB in, five times; the sixth goes through.
    let cut = 48 * 1024;
    w.proxy.set(vec![
        Rule::new(Direction::ToClient, Fault::Reset)
            .after(cut)
            .matching("/bundles/")
            .times(5),
    ]);
    let dep = w.api.deploy("2.0.0", &w.device).await;
    let _d = daemon(&w);

    let t = w.final_target(&dep).await;
    assert_eq!(t["status"], "success", "{t}");
    w.drained().await;

    assert_eq!(w.proxy.fired(), vec![Fault::Reset; 5], "five resets");
    let gets = w.proxy.requests_to("/bundles/");
    assert_eq!(gets.len(), 6, "one request per attempt: {gets:#?}");
    assert_eq!(
        gets[0].range, None,
        "the first attempt starts at 0: {gets:#?}"
    );
    let starts: Vec<u64> = gets[1..].iter().map(|r| r.range_start().unwrap()).collect();
    assert!(
        starts.windows(2).all(|p| p[0] < p[1]) && starts[0] > 0 && starts[4] < size,
        "each retry resumes further on with Range: {starts:?}"
    );
    // Resumed, never restarted: the bundle crossed the wire about once, plus six reply
    // heads and what a RST destroyed in the agent's socket buffer. Starting over each
    // time would carry 5 × 48 KiB more.
    let carried: u64 = gets.iter().map(|r| r.reply_bytes).sum();
    assert!(
        carried >= size && carried < size + 5 * cut / 2,
        "{carried} bytes carried for a {size}-byte bundle"
    );
    assert_eq!(
        w.runs(),
        vec![(dep.clone(), "2.0.0".to_owned())],
        "the script ran once"
    );
    assert_eq!(w.history_of(&dep).await.len(), 1);
    assert_eq!(agent_log_count(&w.agent, "checksum mismatch"), 0);
    assert_eq!(
        agent_log_count(&w.agent, "deployment attempt stopped"),
        5,
        "five interrupted attempts, each resumed"
    );
    let device = w.api.get(&format!("/devices/{}", w.device)).await;
    assert_eq!(device["current_bundle_version"], "2.0.0");
}

#[tokio::test]
async fn a_result_whose_reply_is_lost_is_delivered_exactly_once() {
    let w = World::start(&[]).await;
    w.api.upload(payload_bundle("2.0.0", 1024)).await;
    // The server applies the result, but its reply never reaches the agent (the
    // connection closes before a byte of it), twice: once cut cleanly, once reset.
    w.proxy.set(vec![
        Rule::new(Direction::ToClient, Fault::Truncate)
            .matching("/result")
            .times(1),
        Rule::new(Direction::ToClient, Fault::Reset)
            .matching("/result")
            .times(1),
    ]);
    let dep = w.api.deploy("2.0.0", &w.device).await;
    let _d = daemon(&w);

    let t = w.final_target(&dep).await;
    assert_eq!(t["status"], "success", "{t}");
    w.drained().await;
    assert_eq!(w.proxy.fired(), vec![Fault::Truncate, Fault::Reset]);
    let posts = w.proxy.requests_to("/result");
    assert_eq!(
        posts.len(),
        3,
        "sent until a reply arrived (twice lost, then answered): {posts:#?}"
    );
    assert_eq!(
        w.history_of(&dep).await.len(),
        1,
        "one history record for three deliveries"
    );
    assert_eq!(w.runs().len(), 1, "the script ran once");
    let d = w.api.get(&format!("/deployments/{dep}")).await;
    assert_eq!(d["counts"]["success"], 1, "{d}");
    assert_eq!(d["status"], "success", "{d}");
}

#[tokio::test]
async fn a_ten_minute_outage_in_seconds_backs_off_and_delivers_in_order() {
    // One backoff step of 10 ms instead of 1 s: six seconds here are ten minutes of
    // the production schedule (1, 2, 4 … 60 s).
    let w = World::start(&[("KERNEX_BACKOFF_UNIT_MS", "10")]).await;
    let gate = w.dir.path().join("gate");
    let gated = format!(
        "#!/bin/sh\nset -eu\necho \"${{KERNEX_DEPLOYMENT_ID}} ${{KERNEX_BUNDLE_VERSION}}\" >> \"${{{RUNS_ENV}}}\"\n\
         i=0\nwhile [ ! -f '{}' ]; do i=$((i+1)); [ $i -lt 1800 ] || exit 9; sleep 0.1; done\n",
        gate.display()
    );
    w.api.upload(script_only_bundle("2.0.0", &gated)).await;
    w.api.upload(payload_bundle("3.0.0", 1024)).await;
    let first = w.api.deploy("2.0.0", &w.device).await;
    let _d = daemon(&w);
    eventually("the first deploy to start", PATIENCE, || async {
        (!w.runs().is_empty()).then_some(())
    })
    .await;

    // The outage: every connection is reset as soon as the agent speaks.
    w.proxy
        .set(vec![Rule::new(Direction::ToServer, Fault::Reset)]);
    let before = w.proxy.connections();
    std::fs::write(&gate, "open").unwrap();
    eventually("the first result to be queued", PATIENCE, || async {
        (w.agent.queued().len() == 1).then_some(())
    })
    .await;
    // Meanwhile the operator starts the next deployment.
    let second = w.api.deploy("3.0.0", &w.device).await;
    let outage = Duration::from_secs(6);
    tokio::time::sleep(outage).await;
    let attempts = w.proxy.connections() - before;
    // Backoff 5–10 ms, then doubling to a 300–600 ms cap: at most ~30 cycles in 6 s
    // (a few connections each), at least ten. A loop without backoff makes thousands.
    assert!(
        (10..=120).contains(&attempts),
        "{attempts} connection attempts during a {outage:?} outage"
    );
    assert_eq!(
        w.api.target(&first, &w.device).await["status"],
        "in_progress",
        "nothing got through"
    );

    w.proxy.clear();
    let back = Instant::now();
    let t = w.final_target(&first).await;
    assert_eq!(t["status"], "success", "{t}");
    let reconnect = back.elapsed();
    // The backoff is capped at 60 units (600 ms here): the agent is back within a step.
    assert!(
        reconnect < Duration::from_secs(10),
        "took {reconnect:?} to deliver after the outage"
    );
    let t = w.final_target(&second).await;
    assert_eq!(t["status"], "success", "{t}");
    w.drained().await;

    // In order: the queued result first, then the deployment made during the outage.
    let history = w.api.history(&w.device).await;
    let ids: Vec<&str> = history
        .iter()
        .map(|r| r["deployment_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![second.as_str(), first.as_str()],
        "newest first: {history:#?}"
    );
    assert_eq!(
        w.runs(),
        vec![
            (first.clone(), "2.0.0".to_owned()),
            (second.clone(), "3.0.0".to_owned())
        ],
        "each deployment ran once, in order"
    );
    let device = w.api.get(&format!("/devices/{}", w.device)).await;
    assert_eq!(device["current_bundle_version"], "3.0.0");
}

#[tokio::test]
async fn a_slow_drip_server_fails_the_deploy_by_the_download_deadline() {
    // Deadline: 1 s + the bundle at 200 kB/s, about 3 s for 400 KiB. The proxy drips
    // 1 KiB per 50 ms (20 KiB/s: 20 s for the bundle), never silent long enough for the
    // 60 s stall guard.
    let w = World::start(&[
        ("KERNEX_DOWNLOAD_MIN_RATE", "200000"),
        ("KERNEX_DOWNLOAD_GRACE", "1"),
    ])
    .await;
    w.api.upload(payload_bundle("2.0.0", 400 * 1024)).await;
    w.proxy.set(vec![
        Rule::new(
            Direction::ToClient,
            Fault::SlowDrip {
                bytes: 1024,
                every: Duration::from_millis(50),
            },
        )
        .matching("/bundles/"),
    ]);
    let started = Instant::now();
    let dep = w.api.deploy("2.0.0", &w.device).await;
    let _d = daemon(&w);

    let t = w.final_target(&dep).await;
    let took = started.elapsed();
    assert_eq!(t["status"], "failed", "{t}");
    let msg = t["error_message"].as_str().unwrap_or_default();
    assert!(msg.contains("too slow"), "{t}");
    assert!(
        took < Duration::from_secs(15),
        "gave up after {took:?}, not by its deadline"
    );
    w.drained().await;
    assert_eq!(w.history_of(&dep).await.len(), 1);
    assert!(w.runs().is_empty(), "no script ran: {:?}", w.runs());
    assert_eq!(
        w.proxy.requests_to("/bundles/").len(),
        1,
        "one attempt, no retry loop"
    );
    let device = w.api.get(&format!("/devices/{}", w.device)).await;
    assert_eq!(device["current_bundle_version"], Value::Null, "{device}");
    assert!(
        !has_partial_download(&w.agent.path("downloads")),
        "the partial download is removed"
    );
}

/// A bundle at `version` whose deploy script is `deploy` and nothing else.
fn script_only_bundle(version: &str, deploy: &str) -> Vec<u8> {
    kernex_tests::agent::script_bundle(version, &[("deploy.sh", deploy)])
}

fn has_partial_download(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".part"))
    })
}

/// The proxy itself, against a plain TCP peer that answers each request line with a
/// fixed reply: each fault does what it says, in the direction and at the offset asked.
mod proxy {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A reply of 64 KiB to every `GET` it reads.
    const REPLY: usize = 64 * 1024;

    async fn upstream() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&vec![b'x'; REPLY]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Send one request through `proxy`; what came back before the end, and how it ended.
    async fn exchange(proxy: &FaultProxy, within: Duration) -> (usize, &'static str) {
        let mut s = TcpStream::connect(&proxy.addr).await.unwrap();
        s.write_all(b"GET /api/v1/bundles/b HTTP/1.1\r\nrange: bytes=7-\r\n\r\n")
            .await
            .unwrap();
        let mut got = 0;
        let mut buf = vec![0u8; 16 * 1024];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => return (got, "silent"),
                Ok(Ok(0)) => return (got, "closed"),
                Ok(Err(_)) => return (got, "reset"),
                Ok(Ok(n)) => {
                    got += n;
                    if got == REPLY {
                        return (got, "complete");
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn each_fault_breaks_the_reply_where_it_is_told_to() {
        let up = upstream().await;
        let proxy = proxy_to(&up).await;
        let quick = Duration::from_millis(700);
        assert_eq!(exchange(&proxy, quick).await, (REPLY, "complete"));
        let reqs = proxy.requests();
        assert_eq!(reqs[0].line, "GET /api/v1/bundles/b");
        assert_eq!(reqs[0].range_start(), Some(7));
        assert_eq!(reqs[0].reply_bytes, REPLY as u64);

        let down = |fault| Rule::new(Direction::ToClient, fault).after(1000);
        proxy.set(vec![down(Fault::Truncate)]);
        assert_eq!(exchange(&proxy, quick).await, (1000, "closed"));
        proxy.set(vec![down(Fault::Reset)]);
        let (got, how) = exchange(&proxy, quick).await;
        assert_eq!(how, "reset", "after {got} bytes");
        assert!(got <= 1000);
        proxy.set(vec![down(Fault::Stall)]);
        assert_eq!(exchange(&proxy, quick).await, (1000, "silent"));
        proxy.set(vec![down(Fault::BlackHole)]);
        assert_eq!(exchange(&proxy, quick).await, (1000, "silent"));
        // Toward the server: the request never arrives, so nothing comes back.
        proxy.set(vec![Rule::new(Direction::ToServer, Fault::BlackHole)]);
        assert_eq!(exchange(&proxy, quick).await, (0, "silent"));

        // 4 KiB per 100 ms: about 1.6 s for the 64 KiB reply, none of it in 0.7 s.
        let drip = Fault::SlowDrip {
            bytes: 4096,
            every: Duration::from_millis(100),
        };
        proxy.set(vec![Rule::new(Direction::ToClient, drip)]);
        let (got, how) = exchange(&proxy, quick).await;
        assert_eq!(how, "silent");
        assert!((4096..REPLY).contains(&got), "{got} bytes in {quick:?}");
        let started = Instant::now();
        assert_eq!(
            exchange(&proxy, Duration::from_secs(10)).await.1,
            "complete"
        );
        assert!(started.elapsed() >= Duration::from_millis(1400));

        // Counted faults expire; a rule for other requests leaves this one alone.
        proxy.set(vec![
            down(Fault::Truncate).times(1),
            Rule::new(Direction::ToClient, Fault::Reset).matching("/result"),
        ]);
        assert_eq!(exchange(&proxy, quick).await, (1000, "closed"));
        assert_eq!(exchange(&proxy, quick).await, (REPLY, "complete"));
        proxy.clear();
        assert_eq!(exchange(&proxy, quick).await, (REPLY, "complete"));
    }
}
