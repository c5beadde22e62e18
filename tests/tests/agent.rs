//! The real `kernex-agent` against the real `kernex-server` over loopback (SPEC §3):
//! identity, the deploy pipeline and its automatic rollback, configuration, the durable
//! report queue across server outages and agent crashes, the daemon loop, and `status`.
//!
//! Each test has its own temp dir, server and device. Waits poll for a fact with a
//! generous deadline (slow CI machines), never sleep for a guessed time. A failing test
//! prints the agent's log files and the server's log.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use kernex_tests::ServerProcess;
use kernex_tests::agent::{
    Agent, GATE_ENV, RUNS_ENV, STARTED_ENV, eventually, fast_bundle, fixture_bundle, gated_bundle,
    wait_for_file,
};
use kernex_tests::operator::OperatorApi;
use reqwest::Method;
use serde_json::{Value, json};

const ADMIN: &str = "e2e-admin";
const ENROLL: &str = "e2e-enroll";

/// How long a test waits for something that should happen "soon" on a slow machine.
const PATIENCE: Duration = Duration::from_secs(90);

/// Operator calls with the admin token; what these tests add to them.
type Api = OperatorApi;

trait AgentTestApi {
    async fn device(&self, device: &str) -> Value;
    async fn history_of(&self, device: &str, deployment: &str) -> Vec<Value>;
    async fn set_config(&self, device: &str, body: Value) -> Value;
    async fn bundle_bytes_served(&self) -> u64;
}

impl AgentTestApi for OperatorApi {
    async fn device(&self, device: &str) -> Value {
        self.get(&format!("/devices/{device}")).await
    }

    /// The device's server-side bundle-history records for one deployment.
    async fn history_of(&self, device: &str, deployment: &str) -> Vec<Value> {
        let h = self
            .get(&format!("/devices/{device}/bundle-history?limit=100"))
            .await;
        h.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["deployment_id"] == deployment)
            .cloned()
            .collect()
    }

    async fn set_config(&self, device: &str, body: Value) -> Value {
        self.ok(
            Method::PUT,
            &format!("/devices/{device}/config"),
            Some(body),
        )
        .await
    }

    /// `kernex_bundle_bytes_served…` from `/metrics`.
    async fn bundle_bytes_served(&self) -> u64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let values: Vec<u64> = text
            .lines()
            .filter(|l| l.starts_with("kernex_bundle_bytes_served"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .collect();
        assert!(!values.is_empty(), "no bundle bytes metric in:\n{text}");
        values.iter().sum()
    }
}

/// One test's world: a temp dir, a server on it, and one device's agent.
struct World {
    dir: tempfile::TempDir,
    server: Option<ServerProcess>,
    /// The server's address, kept across a kill so a restart listens on it again.
    addr: String,
    /// Server log lines collected before a kill (the rest are read at the end).
    server_log: std::sync::Mutex<Vec<String>>,
    api: Api,
    agent: Agent,
}

impl World {
    async fn start() -> World {
        Self::start_with_env(&[]).await
    }

    /// A world whose agent processes get `env` (names from the support module, values
    /// relative to the temp dir).
    async fn start_with_env(env: &[&str]) -> World {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("server");
        let server = ServerProcess::start(&data, ADMIN, ENROLL).unwrap();
        let addr = server.addr.clone();
        let mut agent = Agent::new(&dir.path().join("agent"), &server.url("")).enrollment(ENROLL);
        for var in env {
            agent = agent.env(var, dir.path().join(var.to_lowercase()));
        }
        World {
            api: Api::new(server.url(""), ADMIN),
            dir,
            server: Some(server),
            addr,
            server_log: std::sync::Mutex::new(Vec::new()),
            agent,
        }
    }

    /// The file an env var given to [`World::start_with_env`] names.
    fn env_path(&self, var: &str) -> PathBuf {
        self.dir.path().join(var.to_lowercase())
    }

    /// Register the device (`run --once`); its id.
    async fn register(&self) -> String {
        self.agent.once_ok().await;
        self.agent.device_id()
    }

    /// Upload a bundle, deploy it to the device and run one agent cycle; the deployment id.
    async fn deploy_once(&self, archive: Vec<u8>, device: &str) -> String {
        let version = self.api.upload(archive).await["version"]
            .as_str()
            .unwrap()
            .to_owned();
        let dep = self.api.deploy(&version, device).await;
        self.agent.once_ok().await;
        dep
    }

    /// SIGKILL the server (an outage).
    fn kill_server(&mut self) {
        let server = self.server.take().expect("the server is running");
        self.server_log.lock().unwrap().extend(server.logs());
        server.kill().unwrap();
    }

    /// Start the server again on the same data dir and address.
    async fn restart_server(&mut self) {
        assert!(self.server.is_none(), "the server is still running");
        let data = self.dir.path().join("server");
        let server = ServerProcess::restart_on(&data, ADMIN, ENROLL, &self.addr)
            .await
            .unwrap();
        self.server = Some(server);
    }

    /// Wait until the device's status in `deployment` is final; the target entry.
    async fn final_target(&self, deployment: &str, device: &str) -> Value {
        eventually(
            &format!("deployment {deployment} to finish on {device}"),
            PATIENCE,
            || async {
                let t = self.api.target(deployment, device).await;
                matches!(
                    t["status"].as_str(),
                    Some("success" | "failed" | "cancelled")
                )
                .then_some(t)
            },
        )
        .await
    }

    /// The deployed `run/version` file of a kept bundle.
    fn installed_version(&self, version: &str) -> String {
        let path = self.agent.path(&format!("bundles/{version}/run/version"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .trim()
            .to_owned()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        eprintln!("{}", self.agent.logs());
        kernex_tests::eprint_server_log(&self.server_log, self.server.as_ref());
    }
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn is_final(status: &Value) -> bool {
    matches!(status.as_str(), Some("success" | "failed"))
}

/// Registration and the device's identity files.
mod identity {
    use super::*;

    #[tokio::test]
    async fn registers_once_with_private_files_and_keeps_its_id_when_device_json_is_lost() {
        let w = World::start().await;
        let key = w.agent.path("device_key.pem");
        let device_json = w.agent.path("device.json");
        w.agent.once_ok().await;
        assert_eq!(mode(&key), 0o600, "device_key.pem mode");
        assert_eq!(mode(&device_json), 0o600, "device.json mode");
        let first = w.agent.read_json("device.json");
        let id = first["device_id"].as_str().unwrap().to_owned();
        let token = first["device_token"].as_str().unwrap().to_owned();
        assert!(!id.is_empty() && !token.is_empty(), "device.json: {first}");
        assert!(
            first["server"].as_str().unwrap().contains(&w.addr),
            "device.json names its server: {first}"
        );
        let key_pem = std::fs::read_to_string(&key).unwrap();

        // A second cycle uses the saved identity: no new registration, no new token.
        w.agent.once_ok().await;
        let second = w.agent.read_json("device.json");
        assert_eq!(second["device_id"], first["device_id"]);
        assert_eq!(
            second["device_token"], first["device_token"],
            "a registered agent does not register again"
        );
        let devices = w.api.get("/devices").await;
        assert_eq!(devices.as_array().unwrap().len(), 1, "{devices}");
        assert_eq!(devices[0]["admission"], "accepted");

        // device.json lost, key kept: registering again gives the same device id.
        std::fs::remove_file(&device_json).unwrap();
        w.agent.once_ok().await;
        let third = w.agent.read_json("device.json");
        assert_eq!(third["device_id"].as_str(), Some(id.as_str()));
        assert_ne!(
            third["device_token"].as_str(),
            Some(token.as_str()),
            "re-registration issues a fresh token"
        );
        assert_eq!(mode(&device_json), 0o600, "rewritten device.json mode");
        assert_eq!(std::fs::read_to_string(&key).unwrap(), key_pem, "key kept");
        assert_eq!(w.api.get("/devices").await.as_array().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn without_the_enrollment_token_a_device_waits_as_pending_until_accepted() {
        let w = World::start().await;
        let agent = Agent::new(&w.dir.path().join("unenrolled"), w.agent.server());
        let out = agent.once().await;
        assert!(out.status.success(), "{}", agent.logs());
        let id = agent.device_id();
        assert_eq!(agent.status_offline().await["admission"], "pending");
        assert_eq!(w.api.device(&id).await["admission"], "pending");

        w.api
            .ok(Method::POST, &format!("/devices/{id}/accept"), None)
            .await;
        let out = agent.once().await;
        assert!(out.status.success(), "{}", agent.logs());
        assert_eq!(
            agent.status_offline().await["admission"],
            "accepted",
            "the heartbeat's admission is saved"
        );
        assert_eq!(agent.device_id(), id);
    }

    #[tokio::test]
    async fn the_default_key_is_4096_bits() {
        let w = World::start().await;
        let out = w
            .agent
            .run(&["run", "--once", "--enrollment-token", ENROLL])
            .await;
        assert!(
            out.status.success(),
            "{}\n{}",
            kernex_tests::agent::describe(&out),
            w.agent.logs()
        );
        let pem = std::fs::read_to_string(w.agent.path("device_key.pem")).unwrap();
        let key = kernex_common::signing::DeviceKey::from_pem(&pem).unwrap();
        let public = key.public_key_pem().unwrap();
        // The SubjectPublicKeyInfo DER of an RSA key with e = 65537 is 294 bytes for 2048
        // bits and 550 for 4096: count the base64 payload.
        let b64: String = public.lines().filter(|l| !l.starts_with("-----")).collect();
        let der_len = b64.len() / 4 * 3 - b64.matches('=').count();
        assert_eq!(der_len, 550, "public key is not 4096-bit:\n{public}");
    }
}

/// The deploy pipeline: success, failing deploy and health scripts, rollback commands,
/// configuration.
mod pipeline {
    use super::*;

    #[tokio::test]
    async fn deploys_a_bundle_and_reports_success() {
        let w = World::start().await;
        let id = w.register().await;
        let dep = w.deploy_once(fixture_bundle("hello-1.0.0"), &id).await;

        let t = w.api.target(&dep, &id).await;
        assert_eq!(t["status"], "success", "{t}");
        let d = w.api.get(&format!("/deployments/{dep}")).await;
        assert_eq!(d["status"], "success", "{d}");
        assert_eq!(w.api.device(&id).await["current_bundle_version"], "1.0.0");
        assert_eq!(w.installed_version("1.0.0"), "1.0.0");
        assert_eq!(w.api.history_of(&id, &dep).await.len(), 1);

        let history = w.agent.history().await;
        assert_eq!(history.len(), 1, "{history:?}");
        assert_eq!(history[0]["deployment_id"].as_str(), Some(dep.as_str()));
        assert_eq!(history[0]["status"], "success");
        assert_eq!(history[0]["kind"], "deploy");
        assert_eq!(history[0]["bundle_version"], "1.0.0");

        let (status, _) = w.agent.status(&[]).await;
        assert_eq!(status["device_id"].as_str(), Some(id.as_str()), "{status}");
        assert_eq!(status["current_bundle_version"], "1.0.0", "{status}");
        assert_eq!(status["queued_reports"], 0, "{status}");
        assert_eq!(status["reachable"], true, "{status}");
        assert_eq!(status["admission"], "accepted", "{status}");
        assert_eq!(
            status["last_deployment"]["deployment_id"].as_str(),
            Some(dep.as_str()),
            "{status}"
        );
        assert_eq!(status["last_deployment"]["status"], "success", "{status}");
        let state = w.agent.read_json("state.json");
        assert_eq!(state["current_bundle_version"], "1.0.0", "{state}");
        assert!(state["in_progress"].is_null(), "{state}");
        assert!(w.agent.queued().is_empty());
    }

    /// Deploy 1.0.0, then `bad` (which fails): the result is `failed`, rolled back to
    /// 1.0.0, which is what the device runs afterwards. Returns the failed target.
    async fn fails_and_rolls_back(bad: &str, bad_version: &str) -> (World, Value) {
        let w = World::start().await;
        let id = w.register().await;
        let good = w.deploy_once(fixture_bundle("hello-1.0.0"), &id).await;
        assert_eq!(w.api.target(&good, &id).await["status"], "success");

        let dep = w.deploy_once(fixture_bundle(bad), &id).await;
        let t = w.api.target(&dep, &id).await;
        assert_eq!(t["status"], "failed", "{t}");
        let rec = w.api.history_of(&id, &dep).await;
        assert_eq!(rec.len(), 1, "{rec:?}");
        assert_eq!(rec[0]["rolled_back_to"], "1.0.0", "{rec:?}");
        assert_eq!(rec[0]["bundle_version"], bad_version);
        assert_eq!(w.api.device(&id).await["current_bundle_version"], "1.0.0");
        assert_eq!(w.installed_version("1.0.0"), "1.0.0");
        let state = w.agent.read_json("state.json");
        assert_eq!(state["current_bundle_version"], "1.0.0", "{state}");

        let history = w.agent.history().await;
        assert_eq!(history.len(), 2, "{history:?}");
        assert_eq!(history[0]["deployment_id"].as_str(), Some(dep.as_str()));
        assert_eq!(history[0]["status"], "failed");
        assert_eq!(history[0]["rolled_back_to"], "1.0.0");
        let status = w.agent.status_offline().await;
        assert_eq!(status["last_deployment"]["status"], "failed", "{status}");
        assert_eq!(
            status["last_deployment"]["rolled_back_to"], "1.0.0",
            "{status}"
        );
        assert_eq!(status["current_bundle_version"], "1.0.0", "{status}");
        assert_eq!(status["queued_reports"], 0, "{status}");
        (w, rec[0].clone())
    }

    #[tokio::test]
    async fn a_failing_deploy_script_rolls_back_to_the_previous_version() {
        let (_w, rec) = fails_and_rolls_back("hello-1.2.0-broken", "1.2.0-broken").await;
        let error = rec["error_message"].as_str().unwrap_or_default();
        assert!(!error.is_empty(), "an error message: {rec}");
        let text = format!("{error}\n{}", rec["log_tail"].as_str().unwrap_or_default());
        assert!(
            text.contains("migration 0042 failed"),
            "the script's output is reported: {rec}"
        );
    }

    #[tokio::test]
    async fn a_failing_health_check_rolls_back_to_the_previous_version() {
        let (_w, rec) = fails_and_rolls_back("hello-1.3.0-unhealthy", "1.3.0-unhealthy").await;
        assert!(
            !rec["error_message"].as_str().unwrap_or_default().is_empty(),
            "an error message: {rec}"
        );
    }

    #[tokio::test]
    async fn a_rollback_to_a_kept_version_downloads_nothing() {
        let w = World::start().await;
        let id = w.register().await;
        for (name, version) in [("hello-1.0.0", "1.0.0"), ("hello-1.1.0", "1.1.0")] {
            let dep = w.deploy_once(fixture_bundle(name), &id).await;
            assert_eq!(w.api.target(&dep, &id).await["status"], "success");
            assert_eq!(w.api.device(&id).await["current_bundle_version"], version);
        }
        let served = w.api.bundle_bytes_served().await;
        assert!(served > 0, "the two deploys were downloaded");

        let rb = w
            .api
            .ok(
                Method::POST,
                "/devices/rollback",
                Some(json!({"bundle_version": "1.0.0", "target_device_ids": [id]})),
            )
            .await;
        let dep = rb["id"].as_str().unwrap().to_owned();
        assert_eq!(rb["kind"], "rollback");
        w.agent.once_ok().await;

        let t = w.api.target(&dep, &id).await;
        assert_eq!(t["status"], "success", "{t}");
        assert_eq!(w.api.device(&id).await["current_bundle_version"], "1.0.0");
        assert_eq!(w.installed_version("1.0.0"), "1.0.0");
        assert_eq!(
            w.api.bundle_bytes_served().await,
            served,
            "a rollback to a kept bundle downloads nothing"
        );
        let history = w.agent.history().await;
        assert_eq!(history[0]["deployment_id"].as_str(), Some(dep.as_str()));
        assert_eq!(history[0]["kind"], "rollback");
        assert_eq!(history[0]["status"], "success");
        let status = w.agent.status_offline().await;
        assert_eq!(status["current_bundle_version"], "1.0.0", "{status}");
    }

    /// Kept bundles are pruned to the newest three, and never the one running, nor the
    /// one to roll back to.
    #[tokio::test]
    async fn keeps_only_the_newest_three_bundles() {
        let w = World::start().await;
        let id = w.register().await;
        let kept = |w: &World| {
            let mut names: Vec<String> = std::fs::read_dir(w.agent.path("bundles"))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        for n in 1..=5 {
            let dep = w.deploy_once(fast_bundle(&format!("5.0.{n}")), &id).await;
            assert_eq!(w.final_target(&dep, &id).await["status"], "success");
        }
        assert_eq!(kept(&w), ["5.0.3", "5.0.4", "5.0.5"]);

        // Roll back to 5.0.3 (kept): it is the running version now, 5.0.5 the previous.
        let rb = w
            .api
            .ok(
                Method::POST,
                "/devices/rollback",
                Some(json!({"bundle_version": "5.0.3", "target_device_ids": [id]})),
            )
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        w.agent.once_ok().await;
        assert_eq!(w.final_target(&rb, &id).await["status"], "success");
        // 5.0.6: the newest three are 5.0.4–5.0.6, and 5.0.3 stays as the previous.
        let dep = w.deploy_once(fast_bundle("5.0.6"), &id).await;
        assert_eq!(w.final_target(&dep, &id).await["status"], "success");
        assert_eq!(kept(&w), ["5.0.3", "5.0.4", "5.0.5", "5.0.6"]);
        // 5.0.7: 5.0.3 is neither newest nor previous any more.
        let dep = w.deploy_once(fast_bundle("5.0.7"), &id).await;
        assert_eq!(w.final_target(&dep, &id).await["status"], "success");
        let state = w.agent.read_json("state.json");
        assert_eq!(state["current_bundle_version"], "5.0.7");
        assert_eq!(state["previous_bundle_version"], "5.0.6");
        assert_eq!(kept(&w), ["5.0.5", "5.0.6", "5.0.7"]);
    }

    #[tokio::test]
    async fn applies_and_acknowledges_a_configuration() {
        let w = World::start().await;
        let id = w.register().await;
        let c = w
            .api
            .set_config(&id, json!({"polling_interval": 7, "log_level": "debug"}))
            .await;
        assert_eq!(c["version"], 2);

        w.agent.once_ok().await;
        let state = w.agent.read_json("state.json");
        let config = &state["config"];
        assert_eq!(config["version"], 2, "{state}");
        assert_eq!(config["polling_interval"], 7, "{state}");
        assert_eq!(config["log_level"], "debug", "{state}");
        assert_eq!(config["heartbeat_timeout"], 30, "{state}");
        assert_eq!(config["deploy_timeout"], 300, "{state}");

        // The next heartbeat acknowledges it.
        w.agent.once_ok().await;
        assert_eq!(w.api.device(&id).await["config_version"], 2);
        let status = w.agent.status_offline().await;
        assert_eq!(status["polling_interval"], 7, "{status}");
        assert_eq!(status["config_version"], 2, "{status}");
    }
}

/// The durable report queue: outages and crashes lose nothing and repeat nothing.
mod durability {
    use super::*;

    #[tokio::test]
    async fn a_result_made_while_the_server_is_down_is_delivered_once_after() {
        let mut w = World::start_with_env(&[STARTED_ENV, GATE_ENV]).await;
        let id = w.register().await;
        w.api.set_config(&id, json!({"polling_interval": 5})).await;
        w.api.upload(gated_bundle("2.0.0")).await;
        let dep = w.api.deploy("2.0.0", &id).await;
        let mut daemon = w.agent.spawn_daemon().unwrap();
        wait_for_file(&w.env_path(STARTED_ENV), PATIENCE).await;

        w.kill_server();
        std::fs::write(w.env_path(GATE_ENV), "open").unwrap();
        eventually("the result to be queued", PATIENCE, || async {
            (w.agent.status_offline().await["queued_reports"] == 1).then_some(())
        })
        .await;
        let queued = w.agent.queued();
        assert_eq!(queued.len(), 1, "{queued:?}");
        assert_eq!(queued[0]["deployment_id"].as_str(), Some(dep.as_str()));
        assert_eq!(queued[0]["report"]["status"], "success", "{queued:?}");
        assert!(queued[0]["report"]["report_id"].is_string(), "{queued:?}");
        let (status, took) = w.agent.status(&[]).await;
        assert_eq!(status["reachable"], false, "{status}");
        assert_eq!(status["queued_reports"], 1, "{status}");
        assert!(took < Duration::from_secs(3), "status took {took:?}");
        assert_eq!(
            w.agent.flush().await.code(),
            Some(1),
            "flush with the server down"
        );
        assert_eq!(w.agent.queued().len(), 1, "a failed flush keeps the report");

        w.restart_server().await;
        let t = w.final_target(&dep, &id).await;
        assert_eq!(t["status"], "success", "{t}");
        eventually("the queue to drain", PATIENCE, || async {
            (w.agent.status_offline().await["queued_reports"] == 0).then_some(())
        })
        .await;
        assert!(w.agent.queued().is_empty());
        assert_eq!(w.api.history_of(&id, &dep).await.len(), 1);
        assert_eq!(w.api.device(&id).await["current_bundle_version"], "2.0.0");
        assert_eq!(
            w.agent.flush().await.code(),
            Some(0),
            "flush with nothing queued"
        );
        assert!(
            daemon.exited().unwrap().is_none(),
            "the daemon kept running"
        );
    }

    #[tokio::test]
    async fn an_agent_killed_mid_deploy_reports_it_interrupted_and_stays_on_the_good_version() {
        let w = World::start_with_env(&[STARTED_ENV, GATE_ENV, RUNS_ENV]).await;
        let id = w.register().await;
        let good = w.deploy_once(fixture_bundle("hello-1.0.0"), &id).await;
        assert_eq!(w.api.target(&good, &id).await["status"], "success");

        w.api.upload(gated_bundle("2.0.0")).await;
        let dep = w.api.deploy("2.0.0", &id).await;
        let mut daemon = w.agent.spawn_daemon().unwrap();
        let pid: u32 = wait_for_file(&w.env_path(STARTED_ENV), PATIENCE)
            .await
            .trim()
            .parse()
            .unwrap();
        // Whatever happens below, the orphaned script does not outlive the test.
        let _reaper = Reaper(pid);
        daemon.sigkill().unwrap();

        w.agent.once_ok().await;
        let t = w.final_target(&dep, &id).await;
        assert_eq!(t["status"], "failed", "{t}");
        let error = t["error_message"].as_str().unwrap_or_default();
        assert!(error.contains("interrupted"), "error_message: {t}");
        assert_eq!(w.api.history_of(&id, &dep).await.len(), 1);
        assert_eq!(w.api.device(&id).await["current_bundle_version"], "1.0.0");
        let status = w.agent.status_offline().await;
        assert_eq!(status["current_bundle_version"], "1.0.0", "{status}");
        assert_eq!(status["queued_reports"], 0, "{status}");
        assert_eq!(w.installed_version("1.0.0"), "1.0.0");
        let state = w.agent.read_json("state.json");
        assert!(state["in_progress"].is_null(), "{state}");
        let history = w.agent.history().await;
        assert_eq!(history[0]["deployment_id"].as_str(), Some(dep.as_str()));
        assert_eq!(history[0]["status"], "failed");

        // Another cycle (the command may still be in flight) never runs it again.
        w.agent.once_ok().await;
        let runs = std::fs::read_to_string(w.env_path(RUNS_ENV)).unwrap();
        assert_eq!(
            runs.lines().filter(|l| l.starts_with(&dep)).count(),
            1,
            "the deployment ran once: {runs}"
        );
        // The restarted agent ended the dead one's leftover script.
        eventually(
            "the orphaned deploy script to be killed",
            PATIENCE,
            || async { (!kernex_tests::agent::process_alive(pid, "deploy.sh")).then_some(()) },
        )
        .await;
    }

    #[tokio::test]
    async fn killing_the_agent_at_any_moment_loses_no_result_and_repeats_no_deploy() {
        let w = World::start_with_env(&[RUNS_ENV]).await;
        let id = w.register().await;
        let mut n = 0;
        let mut release = || {
            n += 1;
            format!("3.0.{n}")
        };

        // Calibrate: how long a daemon takes from its start to a delivered result here,
        // so the kills below spread over start-up, heartbeat, download, script, queue
        // write and send on a fast machine and a slow one alike.
        let version = release();
        w.api.upload(fast_bundle(&version)).await;
        let dep = w.api.deploy(&version, &id).await;
        let started = std::time::Instant::now();
        let mut daemon = w.agent.spawn_daemon().unwrap();
        while !is_final(&w.api.target(&dep, &id).await["status"]) {
            assert!(started.elapsed() < PATIENCE, "the daemon never deployed");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let full = started.elapsed();
        daemon.sigkill().unwrap();
        assert_eq!(w.api.target(&dep, &id).await["status"], "success");

        for fraction in [0.0, 0.2, 0.4, 0.55, 0.7, 0.8, 0.88, 0.94, 1.0, 1.1, 1.5] {
            let version = release();
            w.api.upload(fast_bundle(&version)).await;
            let dep = w.api.deploy(&version, &id).await;
            let delay = full.mul_f64(fraction);
            let mut daemon = w.agent.spawn_daemon().unwrap();
            // The kill moment is the variable under test, not a synchronisation.
            tokio::time::sleep(delay).await;
            daemon.sigkill().unwrap();
            let at_kill = w.api.target(&dep, &id).await["status"].clone();

            let mut target = Value::Null;
            let mut cycles = 0;
            for _ in 0..3 {
                cycles += 1;
                w.agent.once_ok().await;
                target = w.api.target(&dep, &id).await;
                if is_final(&target["status"]) && w.agent.queued().is_empty() {
                    break;
                }
            }
            let ctx = format!(
                "kill {delay:?} after start (a full run takes {full:?}), server said \
                 {at_kill} then, {cycles} cycle(s) after: {target}"
            );
            // Which moment each kill hit shows in the output of a failing run.
            eprintln!("{ctx}");
            assert!(is_final(&target["status"]), "{ctx}");
            if target["status"] == "failed" {
                let error = target["error_message"].as_str().unwrap_or_default();
                assert!(error.contains("interrupted"), "{ctx}");
            }
            assert!(w.agent.queued().is_empty(), "{ctx}");
            assert_eq!(w.api.history_of(&id, &dep).await.len(), 1, "{ctx}");
            let runs = std::fs::read_to_string(w.env_path(RUNS_ENV)).unwrap_or_default();
            assert!(
                runs.lines().filter(|l| l.starts_with(&dep)).count() <= 1,
                "{ctx}: ran more than once:\n{runs}"
            );
            let local = w.agent.history().await;
            assert_eq!(
                local.iter().filter(|r| r["deployment_id"] == dep).count(),
                1,
                "{ctx}: local history {local:?}"
            );
            let device = w.api.device(&id).await;
            let state = w.agent.read_json("state.json");
            assert_eq!(
                device["current_bundle_version"], state["current_bundle_version"],
                "{ctx}: server and device agree on the running version"
            );
            assert!(state["in_progress"].is_null(), "{ctx}: {state}");
        }
    }

    /// The agent crashes (abort, as abrupt as SIGKILL) exactly between two durable steps
    /// of finishing a deployment — before the result is queued, after it is queued,
    /// after `state.json` records it, after the server acknowledged it but before the
    /// queue file is removed — and the next run settles it: one final result on the
    /// server, one history record, nothing left queued, the deploy script run once, and
    /// the device and server agreeing on the running version.
    #[tokio::test]
    async fn a_crash_between_any_two_durable_steps_loses_no_result() {
        let w = World::start_with_env(&[RUNS_ENV]).await;
        let id = w.register().await;
        // A good version first, so a crash that loses the outcome has one to go back to.
        let good = w.deploy_once(fast_bundle("4.0.0"), &id).await;
        assert_eq!(w.final_target(&good, &id).await["status"], "success");

        for (n, point) in [
            "before-queue-write",
            "after-queue-write",
            "after-state-update",
            "after-send",
        ]
        .into_iter()
        .enumerate()
        {
            let version = format!("4.1.{n}");
            w.api.upload(fast_bundle(&version)).await;
            let dep = w.api.deploy(&version, &id).await;

            let crashed = w
                .agent
                .clone()
                .env("KERNEX_AGENT_CRASH_AT", point)
                .once()
                .await;
            assert!(
                !crashed.status.success() && crashed.status.code() != Some(1),
                "{point}: the agent should have aborted, got {}",
                crashed.status
            );
            w.agent.once_ok().await;

            let target = w.final_target(&dep, &id).await;
            let ctx = format!("crash at {point}: {target}");
            if point == "before-queue-write" {
                // The outcome was never recorded: the restart cannot know the script
                // succeeded, so it reports the deployment interrupted and puts the last
                // good version back.
                assert_eq!(target["status"], "failed", "{ctx}");
                let error = target["error_message"].as_str().unwrap_or_default();
                assert!(error.contains("interrupted"), "{ctx}");
            } else {
                assert_eq!(target["status"], "success", "{ctx}");
            }
            assert!(w.agent.queued().is_empty(), "{ctx}: {:?}", w.agent.queued());
            assert_eq!(w.api.history_of(&id, &dep).await.len(), 1, "{ctx}");
            let runs = std::fs::read_to_string(w.env_path(RUNS_ENV)).unwrap_or_default();
            assert_eq!(
                runs.lines().filter(|l| l.starts_with(&dep)).count(),
                1,
                "{ctx}: the deploy script must run exactly once:\n{runs}"
            );
            let state = w.agent.read_json("state.json");
            assert!(state["in_progress"].is_null(), "{ctx}: {state}");
            assert_eq!(
                w.api.device(&id).await["current_bundle_version"],
                state["current_bundle_version"],
                "{ctx}: server and device agree on the running version"
            );
            let local = w.agent.history().await;
            assert_eq!(
                local.iter().filter(|r| r["deployment_id"] == dep).count(),
                1,
                "{ctx}: local history {local:?}"
            );
        }
    }

    /// Kills a process (and its group) when dropped.
    struct Reaper(u32);

    impl Drop for Reaper {
        fn drop(&mut self) {
            if kernex_tests::agent::process_alive(self.0, "deploy.sh") {
                let _ = kernex_tests::agent::signal("KILL", format!("-{}", self.0));
                let _ = kernex_tests::agent::signal("KILL", self.0);
            }
        }
    }
}

/// The daemon loop: heartbeats during long commands, signals.
mod daemon {
    use super::*;

    #[tokio::test]
    async fn heartbeats_continue_while_a_long_deploy_runs() {
        let w = World::start_with_env(&[STARTED_ENV, GATE_ENV]).await;
        let id = w.register().await;
        w.api.set_config(&id, json!({"polling_interval": 5})).await;
        // Applied and saved now, so the daemon beats every 5 s from its start.
        w.agent.once_ok().await;
        assert_eq!(
            w.agent.read_json("state.json")["config"]["polling_interval"],
            5
        );

        w.api.upload(gated_bundle("2.0.0")).await;
        let dep = w.api.deploy("2.0.0", &id).await;
        let mut daemon = w.agent.spawn_daemon().unwrap();
        wait_for_file(&w.env_path(STARTED_ENV), PATIENCE).await;
        let since = chrono::Utc::now();

        let busy = eventually("two heartbeats during the deploy", PATIENCE, || async {
            let beats = w
                .api
                .get(&format!("/devices/{id}/heartbeats?limit=50"))
                .await;
            let busy: Vec<Value> = beats
                .as_array()
                .unwrap()
                .iter()
                .filter(|b| {
                    b["timestamp"]
                        .as_str()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .is_some_and(|t| t > since)
                })
                .cloned()
                .collect();
            (busy.len() >= 2).then_some(busy)
        })
        .await;
        for b in &busy {
            assert_ne!(b["status"], "idle", "a beat during the deploy says so: {b}");
        }
        let t = w.api.target(&dep, &id).await;
        assert_eq!(t["status"], "in_progress", "the gate is still shut: {t}");
        // Progress reports got there: the script runs, so the phase is installing.
        let t = eventually("the installing phase on the server", PATIENCE, || async {
            let t = w.api.target(&dep, &id).await;
            (t["phase"] == "installing").then_some(t)
        })
        .await;
        assert_eq!(t["progress_pct"], 0, "{t}");

        std::fs::write(w.env_path(GATE_ENV), "open").unwrap();
        let t = w.final_target(&dep, &id).await;
        assert_eq!(t["status"], "success", "{t}");
        daemon.sigterm().unwrap();
        let exit = daemon.wait_within(PATIENCE).await.unwrap();
        assert!(
            exit.is_some_and(|s| s.success()),
            "clean exit on SIGTERM: {exit:?}"
        );
    }

    #[tokio::test]
    async fn sigterm_during_a_deploy_lets_it_finish() {
        let w = World::start_with_env(&[STARTED_ENV, GATE_ENV, RUNS_ENV]).await;
        let id = w.register().await;
        w.api.upload(gated_bundle("2.0.0")).await;
        let dep = w.api.deploy("2.0.0", &id).await;
        let mut daemon = w.agent.spawn_daemon().unwrap();
        wait_for_file(&w.env_path(STARTED_ENV), PATIENCE).await;
        daemon.sigterm().unwrap();
        std::fs::write(w.env_path(GATE_ENV), "open").unwrap();
        let exit = daemon.wait_within(PATIENCE).await.unwrap();
        assert!(
            exit.is_some_and(|s| s.success()),
            "exit 0 after the deploy: {exit:?}"
        );
        let state = w.agent.read_json("state.json");
        assert_eq!(state["current_bundle_version"], "2.0.0", "{state}");
        assert!(state["in_progress"].is_null(), "{state}");
        // Sent before exiting or still queued: either way it arrives, as a success.
        assert_eq!(w.agent.flush().await.code(), Some(0));
        let t = w.api.target(&dep, &id).await;
        assert_eq!(t["status"], "success", "{t}");
        assert_eq!(w.api.history_of(&id, &dep).await.len(), 1);
    }

    /// A configure command reaches a running daemon: the log level changes without a
    /// restart, and the new interval governs the next heartbeats.
    #[tokio::test]
    async fn a_running_daemon_applies_a_new_log_level_and_interval() {
        let w = World::start().await;
        let id = w.register().await;
        w.api.set_config(&id, json!({"polling_interval": 5})).await;
        let _daemon = w.agent.spawn_daemon().unwrap();
        let debug_lines = |w: &World| w.agent.logs().matches(" DEBUG kernex_agent").count();
        eventually("the daemon to take config version 2", PATIENCE, || async {
            (w.api.device(&id).await["config_version"] == 2).then_some(())
        })
        .await;
        assert_eq!(debug_lines(&w), 0, "info level logs no debug lines");

        w.api
            .set_config(&id, json!({"log_level": "debug", "polling_interval": 7}))
            .await;
        eventually("debug lines after the configure", PATIENCE, || async {
            (debug_lines(&w) > 0).then_some(())
        })
        .await;
        eventually(
            "the device to acknowledge config version 3",
            PATIENCE,
            || async { (w.api.device(&id).await["config_version"] == 3).then_some(()) },
        )
        .await;
        let (status, _) = w.agent.status(&["--offline"]).await;
        assert_eq!(status["polling_interval"], 7);
        assert_eq!(
            w.agent.read_json("state.json")["config"]["log_level"],
            "debug"
        );
    }

    /// Started before its server exists, the daemon backs off (1, 2, 4 … s, not a
    /// tight loop) and registers by itself once the server comes up.
    #[tokio::test]
    async fn backs_off_while_the_server_is_missing_and_registers_when_it_appears() {
        let dir = tempfile::tempdir().unwrap();
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let agent =
            Agent::new(&dir.path().join("agent"), &format!("http://{addr}")).enrollment(ENROLL);
        let started = std::time::Instant::now();
        let _daemon = agent.spawn_daemon().unwrap();
        let attempts = |agent: &Agent| agent.logs().matches("runner: server unreachable").count();
        eventually("three failed attempts", PATIENCE, || async {
            (attempts(&agent) >= 3).then_some(())
        })
        .await;
        // Backoff 1 s, then 2 s (each with jitter down to half): three attempts cannot
        // come sooner than ~1.5 s after the first. A loop without backoff would make
        // thousands.
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1400),
            "three attempts within {elapsed:?}: no backoff?\n{}",
            agent.logs()
        );
        let seen = attempts(&agent);
        let limit = 2 + (elapsed.as_secs() as usize);
        assert!(
            seen <= limit,
            "{seen} attempts in {elapsed:?}\n{}",
            agent.logs()
        );

        let server =
            ServerProcess::start_on(&dir.path().join("server"), ADMIN, ENROLL, &addr).unwrap();
        let api = Api::new(server.url(""), ADMIN);
        // The backoff is capped at 60 s, so it is back within about a minute at worst.
        let devices = eventually("the device to register", PATIENCE, || async {
            let list = api.get("/devices").await;
            (!list.as_array().unwrap().is_empty()).then_some(list)
        })
        .await;
        assert_eq!(devices[0]["admission"], "accepted");
        let id = devices[0]["device_id"].as_str().unwrap().to_owned();
        eventually("a heartbeat from it", PATIENCE, || async {
            let beats = api.get(&format!("/devices/{id}/heartbeats")).await;
            (!beats.as_array().unwrap().is_empty()).then_some(())
        })
        .await;
    }

    #[tokio::test]
    async fn sigterm_stops_an_idle_daemon_promptly() {
        let w = World::start().await;
        let id = w.register().await;
        let path = format!("/devices/{id}/heartbeats?limit=1000");
        let before = w.api.get(&path).await.as_array().unwrap().len();
        let mut daemon = w.agent.spawn_daemon().unwrap();
        eventually("the daemon's first heartbeat", PATIENCE, || async {
            (w.api.get(&path).await.as_array().unwrap().len() > before).then_some(())
        })
        .await;
        daemon.sigterm().unwrap();
        let exit = daemon.wait_within(Duration::from_secs(10)).await.unwrap();
        assert!(
            exit.is_some_and(|s| s.success()),
            "exit 0 within 10 s of SIGTERM: {exit:?}"
        );
    }
}

/// `kernex-agent status` for a technician at the device.
mod status {
    use super::*;

    #[tokio::test]
    async fn works_before_registration_and_gives_up_on_a_silent_server_quickly() {
        // Accepts connections (the kernel does) but never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("http://{}", silent.local_addr().unwrap());
        let agent = Agent::new(dir.path(), &url);
        std::fs::create_dir_all(&agent.state_dir).unwrap();
        let (status, took) = agent.status(&[]).await;
        assert!(status["device_id"].is_null(), "{status}");
        assert_eq!(status["reachable"], false, "{status}");
        assert_eq!(status["queued_reports"], 0, "{status}");
        assert!(status["last_deployment"].is_null(), "{status}");
        assert!(status["agent_version"].is_string(), "{status}");
        assert!(
            status["server"].as_str().is_some_and(|s| s.contains(&url)),
            "{status}"
        );
        assert!(took < Duration::from_secs(3), "status took {took:?}");
        let offline = agent.status_offline().await;
        assert!(offline["reachable"].is_null(), "{offline}");
        drop(silent);
    }

    #[tokio::test]
    async fn says_unreachable_quickly_when_the_server_is_down() {
        let mut w = World::start().await;
        let id = w.register().await;
        let (up, _) = w.agent.status(&[]).await;
        assert_eq!(up["reachable"], true, "{up}");
        assert_eq!(up["device_id"].as_str(), Some(id.as_str()), "{up}");
        assert_eq!(up["admission"], "accepted", "{up}");
        assert!(up["last_heartbeat_at"].is_string(), "{up}");
        assert_eq!(up["config_version"], 1, "{up}");
        assert_eq!(up["polling_interval"], 60, "{up}");
        for key in [
            "server",
            "previous_bundle_version",
            "current_bundle_version",
            "state_dir",
        ] {
            assert!(up.get(key).is_some(), "{key} missing: {up}");
        }

        w.kill_server();
        let (down, took) = w.agent.status(&[]).await;
        assert!(took < Duration::from_secs(3), "status took {took:?}");
        assert_eq!(down["reachable"], false, "{down}");
        assert_eq!(down["device_id"].as_str(), Some(id.as_str()), "{down}");
        assert_eq!(down["last_heartbeat_at"], up["last_heartbeat_at"], "{down}");
        let (offline, took) = w.agent.status(&["--offline"]).await;
        assert!(
            took < Duration::from_secs(3),
            "status --offline took {took:?}"
        );
        assert!(offline["reachable"].is_null(), "{offline}");
        // A cycle with the server down says so in its exit status.
        assert_eq!(w.agent.once().await.status.code(), Some(1));
    }
}
