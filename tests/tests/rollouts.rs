//! Rollouts end to end (SPEC §6): the real `kernex-server`, real `kernex-agent` devices
//! (each cycle a `run --once`, so the test decides who beats when) and the real
//! `kernex-console` scripted commands: `deploy … --waves --first-tag --max-failures
//! --on-failure`, `pause`/`resume`/`cancel` by id suffix, and `deploy --wait`, which
//! follows the waves and exits 1 when the rollout pauses.
//!
//! A broken bundle stops at the canary: the other devices never receive it (their agents
//! never run its script, their histories stay empty). A good bundle reaches every device,
//! wave by wave.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use kernex_tests::agent::{Agent, RUNS_ENV, eventually, fast_bundle, script_bundle};
use kernex_tests::{ServerProcess, bin};
use serde_json::{Value, json};

const ADMIN: &str = "rollout-admin";
const ENROLL: &str = "rollout-enroll";
const PATIENCE: Duration = Duration::from_secs(120);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    #[track_caller]
    fn code(self, expected: i32) -> Run {
        assert_eq!(self.code, expected, "{}", self.describe());
        assert!(!self.stderr.contains("panicked"), "{}", self.describe());
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.describe()))
    }
}

/// A server, four devices (the first tagged `canary`), and the console.
struct World {
    dir: tempfile::TempDir,
    server: ServerProcess,
    http: reqwest::Client,
    agents: Vec<Agent>,
    ids: Vec<String>,
}

impl World {
    async fn start() -> World {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("server"), ADMIN, ENROLL).unwrap();
        let mut w = World {
            http: kernex_tests::client(),
            agents: Vec::new(),
            ids: Vec::new(),
            server,
            dir,
        };
        for i in 0..4 {
            let root = w.dir.path().join(format!("agent{i}"));
            let agent = Agent::new(&root, &w.server.url(""))
                .enrollment(ENROLL)
                .env(RUNS_ENV, root.join("runs"));
            agent.once_ok().await;
            w.ids.push(agent.device_id());
            w.agents.push(agent);
        }
        w.api(
            reqwest::Method::PATCH,
            &format!("/devices/{}", w.ids[0]),
            Some(json!({"tags": ["canary"]})),
        )
        .await;
        w
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method.clone(), self.server.url(&format!("/api/v1{path}")))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{method} {path} → {status}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn deployment(&self, id: &str) -> Value {
        self.api(reqwest::Method::GET, &format!("/deployments/{id}"), None)
            .await
    }

    fn console(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(bin("kernex-console").unwrap());
        for var in [
            "KERNEX_SERVER",
            "KERNEX_TOKEN",
            "KERNEX_CA_CERT",
            "KERNEX_DATA_DIR",
        ] {
            cmd.env_remove(var);
        }
        cmd.args(args)
            .args(["--server", &self.server.url(""), "--token", ADMIN])
            .env("KERNEX_CONSOLE_LOG", self.dir.path().join("console.log"))
            .env("KERNEX_CONFIG_DIR", self.dir.path().join("config"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    async fn run(&self, args: &[&str]) -> Run {
        let out = tokio::time::timeout(PATIENCE, self.console(args).output())
            .await
            .expect("the console finished")
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Upload an archive through the console (`bundle push`).
    async fn push(&self, name: &str, archive: Vec<u8>) {
        let path = self.dir.path().join(name);
        std::fs::write(&path, archive).unwrap();
        self.run(&["bundle", "push", path.to_str().unwrap()])
            .await
            .code(0);
    }

    /// The deployments this device's agent ran a script for.
    fn runs(&self, i: usize) -> Vec<String> {
        let path: PathBuf = self.dir.path().join(format!("agent{i}")).join("runs");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split(' ').next().unwrap_or_default().to_owned())
            .collect()
    }

    /// One agent cycle on every device `which`.
    async fn cycle(&self, which: &[usize]) {
        for &i in which {
            self.agents[i].once_ok().await;
        }
    }

    fn all_ids(&self) -> String {
        self.ids.join(",")
    }
}

/// A broken bundle stops at the canary: the gate pauses the rollout, `deploy --wait`
/// exits 1 saying why, the other devices never receive it; `cancel` by suffix ends it.
#[tokio::test]
async fn a_broken_bundle_stops_at_the_canary() {
    let w = World::start().await;
    let broken = "#!/bin/sh\necho \"${KERNEX_DEPLOYMENT_ID} ${KERNEX_BUNDLE_VERSION}\" >> \"${KX_E2E_RUNS}\"\necho \"this build is broken\" >&2\nexit 3\n";
    w.push(
        "broken.tar.gz",
        script_bundle("2.0.0", &[("deploy.sh", broken)]),
    )
    .await;
    let ids = w.all_ids();
    let mut wait = w.console(&[
        "deploy",
        "2.0.0",
        "--devices",
        &ids,
        "--waves",
        "25,100",
        "--first-tag",
        "canary",
        "--max-failures",
        "0",
        "--on-failure",
        "pause",
        "--target-timeout",
        "1h",
        "--wait",
        "--timeout",
        "110",
    ]);
    let waiting = wait.spawn().unwrap();
    // The deployment exists once the console created it.
    let dep = eventually("the deployment to exist", PATIENCE, || async {
        let list = w
            .api(reqwest::Method::GET, "/deployments?devices=false", None)
            .await;
        list.as_array().unwrap().first().cloned()
    })
    .await;
    let id = dep["id"].as_str().unwrap().to_owned();
    assert_eq!(dep["rollout"]["waves"][0]["targets"], 1);
    assert_eq!(dep["rollout"]["target_timeout_seconds"], 3600);
    // Every device beats; only the canary gets the bundle, and it fails.
    w.cycle(&[1, 2, 3, 0]).await;
    let dep = eventually(
        "the canary's failure to pause the rollout",
        PATIENCE,
        || async {
            let d = w.deployment(&id).await;
            (d["status"] == "paused").then_some(d)
        },
    )
    .await;
    assert_eq!(w.runs(0), [id.as_str()]);
    assert_eq!(dep["counts"]["failed"], 1);
    assert_eq!(dep["counts"]["waiting"], 3);
    let out = waiting.wait_with_output().await.unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
    .code(1);
    assert!(
        run.stderr.contains("paused") && run.stderr.contains("max_failures"),
        "{}",
        run.describe()
    );
    assert!(run.stdout.contains("rollout: paused"), "{}", run.describe());
    // More cycles change nothing for the others.
    w.cycle(&[1, 2, 3]).await;
    for i in 1..4 {
        assert!(w.runs(i).is_empty(), "device {i} ran the broken bundle");
        let h = w
            .api(
                reqwest::Method::GET,
                &format!("/devices/{}/bundle-history", w.ids[i]),
                None,
            )
            .await;
        assert_eq!(h, json!([]), "device {i}");
    }
    // Cancel by a suffix of the id: the waiting targets are cancelled; it ends failed.
    let suffix = &id[id.len() - 8..];
    let v = w.run(&["cancel", suffix, "--json"]).await.code(0).json();
    assert_eq!(v["status"], "failed");
    assert_eq!(v["counts"]["cancelled"], 3);
}

/// A good bundle reaches every device wave by wave, and `deploy --wait` follows the
/// waves to the end (exit 0); `pause`/`resume` by id suffix hold and release a rollout.
#[tokio::test]
async fn a_good_bundle_reaches_every_device_wave_by_wave() {
    let w = World::start().await;
    w.push("good.tar.gz", fast_bundle("1.1.0")).await;
    let ids = w.all_ids();
    let follow = w
        .console(&[
            "deploy",
            "1.1.0",
            "--devices",
            &ids,
            "--waves",
            "25,100",
            "--first-tag",
            "canary",
            "--threshold",
            "100",
            "--wait",
            "--timeout",
            "110",
        ])
        .spawn()
        .unwrap();
    let dep = eventually("the deployment to exist", PATIENCE, || async {
        let list = w
            .api(reqwest::Method::GET, "/deployments?devices=false", None)
            .await;
        list.as_array().unwrap().first().cloned()
    })
    .await;
    let id = dep["id"].as_str().unwrap().to_owned();
    assert_eq!(dep["counts"]["waiting"], 3);
    // Wave 0: only the canary receives it (the others beat first: nothing for them).
    w.cycle(&[1, 2, 3, 0]).await;
    assert_eq!(w.runs(0), [id.as_str()]);
    for i in 1..4 {
        assert!(w.runs(i).is_empty(), "device {i} got it before its wave");
    }
    // Its success opens wave 1: everyone else receives it.
    let dep = eventually("every device to succeed", PATIENCE, || async {
        w.cycle(&[0, 1, 2, 3]).await;
        let d = w.deployment(&id).await;
        (d["status"] == "success").then_some(d)
    })
    .await;
    assert_eq!(dep["rollout"]["current_wave"], 1);
    assert_eq!(dep["rollout"]["waves"][0]["healthy"], 1);
    assert_eq!(dep["rollout"]["waves"][1]["success"], 3);
    for i in 0..4 {
        assert_eq!(w.runs(i), [id.as_str()], "device {i}");
        let d = w
            .api(
                reqwest::Method::GET,
                &format!("/devices/{}", w.ids[i]),
                None,
            )
            .await;
        assert_eq!(d["current_bundle_version"], "1.1.0");
    }
    let out = follow.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("wave 2/2"),
        "--wait did not follow the waves: {stderr}"
    );
    // A finished rollout can be neither paused nor resumed (409 → exit 1).
    let suffix = &id[id.len() - 6..];
    w.run(&["pause", suffix]).await.code(1);
    w.run(&["resume", suffix]).await.code(1);

    // Pause and resume by suffix: while paused nothing new is delivered.
    w.push("next.tar.gz", fast_bundle("1.2.0")).await;
    let v = w
        .run(&[
            "deploy",
            "1.2.0",
            "--devices",
            &ids,
            "--waves",
            "50,100",
            "--json",
        ])
        .await
        .code(0)
        .json();
    let id2 = v["id"].as_str().unwrap().to_owned();
    let suffix2 = &id2[id2.len() - 8..];
    let v = w.run(&["pause", suffix2, "--json"]).await.code(0).json();
    assert_eq!(v["status"], "paused");
    assert_eq!(v["rollout"]["paused_reason"], "paused by operator");
    w.cycle(&[0, 1, 2, 3]).await;
    assert!(
        (0..4).all(|i| w.runs(i).len() == 1),
        "delivered while paused"
    );
    let shown = w.run(&["deployments", suffix2]).await.code(0);
    assert!(
        shown.stdout.contains("rollout: paused: paused by operator"),
        "{}",
        shown.describe()
    );
    w.run(&["resume", suffix2]).await.code(0);
    eventually("the first wave to run after resume", PATIENCE, || async {
        w.cycle(&[0, 1, 2, 3]).await;
        ((0..4).filter(|&i| w.runs(i).len() == 2).count() >= 2).then_some(())
    })
    .await;
}

/// Bad rollout flags are usage errors (exit 2) and create nothing.
#[tokio::test]
async fn bad_rollout_flags_are_usage_errors() {
    let w = World::start().await;
    w.push("good.tar.gz", fast_bundle("1.1.0")).await;
    let ids = w.all_ids();
    for bad in [
        &["--waves", "50,10"][..],
        &["--waves", "10,50"],
        &["--soak", "10 minutes"],
        &["--max-failures", "1", "--max-failure-pct", "5"],
        &["--start-at", "tomorrow"],
        &["--on-failure", "explode"],
    ] {
        let mut args = vec!["deploy", "1.1.0", "--devices", &ids];
        args.extend_from_slice(bad);
        let run = w.run(&args).await.code(2);
        assert!(
            run.stderr.contains(bad[0]) || run.stderr.contains("--"),
            "{}",
            run.describe()
        );
    }
    let list = w.api(reqwest::Method::GET, "/deployments", None).await;
    assert_eq!(list, json!([]));
}
