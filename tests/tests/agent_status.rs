//! `kernex-agent status` tells the truth, with an exit code per verdict (SPEC §3, issue
//! 11): 0 healthy, 1 unhealthy (each reason with a next step), 2 cannot tell (no state
//! dir), 3 not registered or not admitted. Also: `run --once` says why it failed, and a
//! heartbeat error clears once heartbeats recover.
//!
//! The real binaries over loopback; each test has its own temp dir and server. Waits poll
//! for a fact with a deadline, never sleep for a guessed time.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use kernex_tests::ServerProcess;
use kernex_tests::agent::{Agent, describe, eventually, script_bundle};
use serde_json::{Value, json};

const ADMIN: &str = "status-admin";
const ENROLL: &str = "status-enroll";
const PATIENCE: Duration = Duration::from_secs(90);

/// The `kind` of each problem a `status --json` report lists.
fn kinds(report: &Value) -> Vec<String> {
    report["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems list: {report}"))
        .iter()
        .map(|p| {
            assert!(
                p["next_step"].as_str().is_some_and(|s| !s.is_empty()),
                "a problem without a next step: {p}"
            );
            p["kind"].as_str().unwrap().to_owned()
        })
        .collect()
}

struct World {
    dir: tempfile::TempDir,
    server: Option<ServerProcess>,
    addr: String,
    agent: Agent,
}

impl World {
    fn start() -> World {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("server"), ADMIN, ENROLL).unwrap();
        let agent = Agent::new(&dir.path().join("agent"), &server.url("")).enrollment(ENROLL);
        World {
            addr: server.addr.clone(),
            server: Some(server),
            dir,
            agent,
        }
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let server = self.server.as_ref().unwrap();
        let resp = kernex_tests::client()
            .request(method, server.url(&format!("/api/v1{path}")))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{path} → {status}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn upload(&self, archive: Vec<u8>) {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(archive).file_name("bundle.tar.gz"),
        );
        let resp = kernex_tests::client()
            .post(self.server.as_ref().unwrap().url("/api/v1/bundles"))
            .bearer_auth(ADMIN)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "upload: {}", resp.status());
    }
}

#[tokio::test]
async fn a_missing_state_dir_exits_2_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(&dir.path().join("typo"), "http://127.0.0.1:9");
    let out = agent.run(&["status"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(text.contains("does not exist"), "{text}");
    assert!(!text.contains("not registered"), "{text}");
    assert!(!text.contains("not running"), "{text}");
    let (code, report) = agent.status_code(&["--offline"]).await;
    assert_eq!(code, Some(2));
    assert_eq!(kinds(&report), ["no_state_dir"]);
    // `history` and `flush` read the same dir: the same typo is an error there too.
    assert_eq!(agent.run(&["history"]).await.status.code(), Some(2));
    assert!(!agent.state_dir.exists(), "status must not create the dir");
}

#[tokio::test]
async fn not_registered_or_not_admitted_exits_3() {
    let w = World::start();
    std::fs::create_dir_all(&w.agent.state_dir).unwrap();
    let (code, report) = w.agent.status_code(&[]).await;
    assert_eq!(code, Some(3), "{report}");
    assert_eq!(kinds(&report), ["not_registered", "daemon_not_running"]);

    // Without the enrollment token the device registers as pending: still 3.
    let pending = Agent::new(&w.dir.path().join("pending"), w.agent.server());
    let out = pending.once().await;
    assert!(out.status.success(), "{}", describe(&out));
    let (code, report) = pending.status_code(&["--offline"]).await;
    assert_eq!(code, Some(3), "{report}");
    assert!(
        kinds(&report).contains(&"not_admitted".to_owned()),
        "{report}"
    );
    let next = report["problems"][0]["next_step"].as_str().unwrap();
    assert!(next.contains("kernex-console accept"), "{next}");
}

#[tokio::test]
async fn a_healthy_device_exits_0_and_a_stopped_daemon_1() {
    let w = World::start();
    w.agent.once_ok().await;
    let mut daemon = w.agent.spawn_daemon().unwrap();
    let report = eventually("status to say healthy", PATIENCE, || async {
        let (code, report) = w.agent.status_code(&[]).await;
        (code == Some(0)).then_some(report)
    })
    .await;
    assert_eq!(kinds(&report), Vec::<String>::new());
    assert_eq!(report["daemon_running"], true);
    let out = w.agent.run(&["status"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("health           OK"));

    daemon.sigterm().unwrap();
    daemon.wait_within(PATIENCE).await.unwrap();
    let (code, report) = w.agent.status_code(&[]).await;
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(kinds(&report), ["daemon_not_running"]);
    // The daemon saved its newest heartbeat time on the way out.
    assert!(report["last_heartbeat_at"].is_string(), "{report}");
}

#[tokio::test]
async fn an_unreachable_server_exits_1_and_its_error_clears_when_beats_recover() {
    let mut w = World::start();
    w.agent.once_ok().await;
    w.server.take().unwrap().kill().unwrap();

    let out = w.agent.once().await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("run --once failed") && stderr.contains("next:"),
        "`run --once` must say why: {stderr}"
    );
    let (code, report) = w.agent.status_code(&[]).await;
    assert_eq!(code, Some(1), "{report}");
    let k = kinds(&report);
    for kind in ["server_unreachable", "heartbeat_failing"] {
        assert!(k.contains(&kind.to_owned()), "{kind} missing: {report}");
    }
    assert_eq!(report["last_error"]["source"], "heartbeat", "{report}");

    let data = w.dir.path().join("server");
    w.server = Some(
        ServerProcess::restart_on(&data, ADMIN, ENROLL, &w.addr)
            .await
            .unwrap(),
    );
    w.agent.once_ok().await;
    let (_, report) = w.agent.status_code(&[]).await;
    assert!(report["last_error"].is_null(), "not cleared: {report}");
    assert_eq!(kinds(&report), ["daemon_not_running"]);
}

#[tokio::test]
async fn a_failed_deployment_exits_1_and_keeps_its_log_tail() {
    let w = World::start();
    w.agent.once_ok().await;
    let device = w.agent.device_id();
    w.upload(script_bundle(
        "9.9.9-broken",
        &[(
            "deploy.sh",
            "#!/bin/sh\necho 'unpacking widgets'\necho 'disk on fire' >&2\nexit 7\n",
        )],
    ))
    .await;
    w.api(
        reqwest::Method::POST,
        "/deployments",
        json!({"bundle_version": "9.9.9-broken", "target_device_ids": [device]}),
    )
    .await;
    w.agent.once_ok().await;

    let (code, report) = w.agent.status_code(&["--offline"]).await;
    assert_eq!(code, Some(1), "{report}");
    assert!(
        kinds(&report).contains(&"deployment_failed".to_owned()),
        "{report}"
    );
    let failure = &report["last_failure"];
    assert_eq!(failure["bundle_version"], "9.9.9-broken", "{report}");
    assert!(
        failure["log_tail"]
            .as_str()
            .is_some_and(|t| t.contains("disk on fire")),
        "{report}"
    );
    let out = w.agent.run(&["status", "--offline"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.contains("last failure") && text.contains("disk on fire"),
        "{text}"
    );
}
