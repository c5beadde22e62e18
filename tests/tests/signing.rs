//! Signed updates end to end (SPEC §7): keys made and bundles signed with the real
//! `kernex-console`, uploaded to a real `kernex-server`, verified by real agents pinned
//! with `--trust-key`. Every refused bundle is refused before any script runs (its
//! script would leave a marker file, which must not exist) and reported `failed` with
//! the reason.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use kernex_tests::agent::{Agent, describe, script_bundle};
use kernex_tests::{ServerProcess, bin};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ADMIN: &str = "sign-admin";
const ENROLL: &str = "sign-enroll";

struct World {
    dir: tempfile::TempDir,
    server: ServerProcess,
    http: reqwest::Client,
}

impl World {
    fn start() -> World {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("server"), ADMIN, ENROLL).unwrap();
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        World {
            dir,
            server,
            http: kernex_tests::client(),
        }
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// Run `kernex-console` in the work dir against this server; must exit 0.
    async fn console(&self, args: &[&str]) -> Output {
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
            .env("KERNEX_CONFIG_DIR", self.dir.path().join("config"))
            .env("KERNEX_CONSOLE_LOG", self.dir.path().join("console.log"))
            .current_dir(self.work())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = cmd.output().await.unwrap();
        assert!(
            out.status.success(),
            "kernex-console {}: {}",
            args.join(" "),
            describe(&out)
        );
        out
    }

    /// `key generate NAME` in the work dir; the public key file.
    async fn key(&self, name: &str) -> PathBuf {
        let out = self.console(&["key", "generate", name]).await;
        let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let pub_file = self.work().join(format!("{name}.pub"));
        assert_eq!(std::fs::read_to_string(&pub_file).unwrap().trim(), printed);
        assert!(printed.starts_with("ed25519:"), "{printed}");
        pub_file
    }

    /// Write a bundle archive into the work dir; its file name.
    fn archive(&self, version: &str) -> String {
        let marker = self.marker(version);
        let deploy = format!(
            "#!/bin/sh\nset -eu\necho ran > '{}'\necho installed {version}\n",
            marker.display()
        );
        let name = format!("app-{version}.tar.gz");
        std::fs::write(
            self.work().join(&name),
            script_bundle(version, &[("deploy.sh", &deploy)]),
        )
        .unwrap();
        name
    }

    /// The file a bundle's deploy script creates when it runs.
    fn marker(&self, version: &str) -> PathBuf {
        self.dir.path().join(format!("ran-{version}"))
    }

    async fn sign(&self, archive: &str, key: &str, extra: &[&str]) {
        let key_file = format!("{key}.key");
        let mut args = vec!["bundle", "sign", archive, "--key", key_file.as_str()];
        args.extend_from_slice(extra);
        self.console(&args).await;
    }

    async fn push(&self, archive: &str) {
        self.console(&["bundle", "push", archive]).await;
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, self.server.url(&format!("/api/v1{path}")))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn deploy(&self, version: &str, device: &str) -> String {
        let (status, d) = self
            .call(
                Method::POST,
                "/deployments",
                Some(json!({"bundle_version": version, "target_device_ids": [device]})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{d}");
        d["id"].as_str().unwrap().to_owned()
    }

    async fn target(&self, deployment: &str) -> Value {
        let (_, d) = self
            .call(Method::GET, &format!("/deployments/{deployment}"), None)
            .await;
        d["devices"][0].clone()
    }

    fn agent(&self, name: &str) -> Agent {
        Agent::new(&self.dir.path().join(name), &self.server.url("")).enrollment(ENROLL)
    }
}

/// `run --once` with the trust flags; must exit 0.
async fn once(agent: &Agent, trust: &[&Path], extra: &[&str]) {
    let mut args: Vec<String> = [
        "run",
        "--once",
        "--key-bits",
        "2048",
        "--enrollment-token",
        ENROLL,
    ]
    .map(str::to_owned)
    .to_vec();
    for t in trust {
        args.push("--trust-key".into());
        args.push(t.display().to_string());
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = agent.run(&args).await;
    assert!(out.status.success(), "{}\n{}", describe(&out), agent.logs());
}

/// Deploy `version` to the agent, run one cycle; the target's final entry.
async fn deploy_once(
    w: &World,
    agent: &Agent,
    version: &str,
    trust: &[&Path],
    extra: &[&str],
) -> Value {
    let id = w.deploy(version, &agent.device_id()).await;
    once(agent, trust, extra).await;
    w.target(&id).await
}

#[track_caller]
fn assert_refused(w: &World, target: &Value, version: &str, reason: &str) {
    assert_eq!(target["status"], "failed", "{version}: {target}");
    let msg = target["error_message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(reason),
        "{version}: expected {reason:?} in {msg:?}"
    );
    assert!(!w.marker(version).exists(), "{version}: its script ran");
}

#[tokio::test]
async fn signed_bundles_deploy_and_every_bad_one_is_refused_before_its_script() {
    let w = World::start();
    let ops = w.key("ops").await;
    w.key("stranger").await;
    let agent = w.agent("device");
    once(&agent, &[&ops], &[]).await; // register

    // Signed by the trusted key: deploys.
    let a = w.archive("2.0.0");
    w.sign(&a, "ops", &[]).await;
    assert!(w.work().join(format!("{a}.sig.json")).is_file());
    w.push(&a).await;
    let t = deploy_once(&w, &agent, "2.0.0", &[&ops], &[]).await;
    assert_eq!(t["status"], "success", "{t}");
    assert!(w.marker("2.0.0").exists());

    // Unsigned.
    let a = w.archive("2.1.0");
    w.push(&a).await;
    let t = deploy_once(&w, &agent, "2.1.0", &[&ops], &[]).await;
    assert_refused(&w, &t, "2.1.0", "unsigned bundle");

    // Signed, but by a key the device does not trust.
    let a = w.archive("2.2.0");
    w.sign(&a, "stranger", &[]).await;
    w.push(&a).await;
    let t = deploy_once(&w, &agent, "2.2.0", &[&ops], &[]).await;
    assert_refused(&w, &t, "2.2.0", "is not a trusted key");

    // Expired (freeze).
    let a = w.archive("2.3.0");
    w.sign(&a, "ops", &["--expires", "2020-01-01T00:00:00Z"])
        .await;
    w.push(&a).await;
    let t = deploy_once(&w, &agent, "2.3.0", &[&ops], &[]).await;
    assert_refused(&w, &t, "2.3.0", "expired");

    // For another device type.
    let a = w.archive("2.4.0");
    w.sign(&a, "ops", &["--device-type", "kiosk"]).await;
    w.push(&a).await;
    let t = deploy_once(&w, &agent, "2.4.0", &[&ops], &[]).await;
    assert_refused(&w, &t, "2.4.0", "device type generic is not among");

    // A downgrade below 2.0.0, properly signed.
    let a = w.archive("1.5.0");
    w.sign(&a, "ops", &[]).await;
    w.push(&a).await;
    let t = deploy_once(&w, &agent, "1.5.0", &[&ops], &[]).await;
    assert_refused(&w, &t, "1.5.0", "downgrade refused");

    // The device still runs 2.0.0.
    let (_, dev) = w
        .call(
            Method::GET,
            &format!("/devices/{}", agent.device_id()),
            None,
        )
        .await;
    assert_eq!(dev["current_bundle_version"], "2.0.0", "{dev}");

    // Rollback exceptions: a rollback to a version it ran, and a signed allow_downgrade.
    let a = w.archive("3.0.0");
    w.sign(&a, "ops", &[]).await;
    w.push(&a).await;
    assert_eq!(
        deploy_once(&w, &agent, "3.0.0", &[&ops], &[]).await["status"],
        "success"
    );
    std::fs::remove_file(w.marker("2.0.0")).unwrap();
    let (status, d) = w
        .call(
            Method::POST,
            "/devices/rollback",
            Some(json!({"bundle_version": "2.0.0", "target_device_ids": [agent.device_id()]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{d}");
    once(&agent, &[&ops], &[]).await;
    let t = w.target(d["id"].as_str().unwrap()).await;
    assert_eq!(t["status"], "success", "{t}");
    let a = w.archive("1.6.0");
    w.sign(&a, "ops", &["--allow-downgrade"]).await;
    w.push(&a).await;
    assert_eq!(
        deploy_once(&w, &agent, "1.6.0", &[&ops], &[]).await["status"],
        "success"
    );
    assert!(w.marker("1.6.0").exists());
}

#[tokio::test]
async fn threshold_two_of_two_needs_both_signatures() {
    let w = World::start();
    let (a, b) = (w.key("alice").await, w.key("bob").await);
    let agent = w.agent("device");
    let flags = ["--signature-threshold", "2"];
    once(&agent, &[&a, &b], &flags).await;

    let one = w.archive("1.0.0");
    w.sign(&one, "alice", &[]).await;
    w.push(&one).await;
    let t = deploy_once(&w, &agent, "1.0.0", &[&a, &b], &flags).await;
    assert_refused(&w, &t, "1.0.0", "1 of the 2");

    // Bob signs the same archive: his signature joins Alice's in the same file.
    let two = w.archive("1.1.0");
    w.sign(&two, "alice", &[]).await;
    w.sign(&two, "bob", &[]).await;
    let doc: Value =
        serde_json::from_slice(&std::fs::read(w.work().join(format!("{two}.sig.json"))).unwrap())
            .unwrap();
    assert_eq!(doc["signatures"].as_array().unwrap().len(), 2);
    w.push(&two).await;
    let t = deploy_once(&w, &agent, "1.1.0", &[&a, &b], &flags).await;
    assert_eq!(t["status"], "success", "{t}");

    // Signatures added after the upload count too (bundle add-signatures).
    let three = w.archive("1.2.0");
    w.sign(&three, "alice", &[]).await;
    w.push(&three).await;
    std::fs::remove_file(w.work().join(format!("{three}.sig.json"))).unwrap();
    let (_, stored) = w.call(Method::GET, "/bundles", None).await;
    let id = stored
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["version"] == "1.2.0")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, doc) = w
        .call(Method::GET, &format!("/bundles/{id}/signatures"), None)
        .await;
    // Bob signs the stored metadata text: a copy of the archive's sig file, re-signed.
    std::fs::write(w.work().join(format!("{three}.sig.json")), doc.to_string()).unwrap();
    w.sign(&three, "bob", &[]).await;
    w.console(&[
        "bundle",
        "add-signatures",
        "1.2.0",
        &format!("{three}.sig.json"),
    ])
    .await;
    let t = deploy_once(&w, &agent, "1.2.0", &[&a, &b], &flags).await;
    assert_eq!(t["status"], "success", "{t}");
}

#[tokio::test]
async fn a_trust_document_rotates_the_device_to_a_new_key() {
    let w = World::start();
    let old = w.key("old").await;
    let _new = w.key("new").await;
    let agent = w.agent("device");
    once(&agent, &[&old], &[]).await;

    let new_pub = std::fs::read_to_string(w.work().join("new.pub")).unwrap();
    let meta = json!({
        "keys": [new_pub.trim()],
        "threshold": 1,
        "version": 2,
        "expires": (chrono::Utc::now() + chrono::Duration::days(365)).to_rfc3339(),
    });
    std::fs::write(w.work().join("trust.json"), meta.to_string()).unwrap();
    // Signed by the new key only: the device must refuse it.
    w.console(&["trust", "sign", "trust.json", "--key", "new.key"])
        .await;
    w.console(&["trust", "push", "trust.json"]).await;
    once(&agent, &[&old], &[]).await;
    assert!(
        !agent.path("trust/trust.json").exists(),
        "adopted a document its keys did not sign"
    );

    // Signed by the current (old) key, at a higher version: adopted.
    let meta = json!({
        "keys": [new_pub.trim()],
        "threshold": 1,
        "version": 3,
        "expires": (chrono::Utc::now() + chrono::Duration::days(365)).to_rfc3339(),
    });
    std::fs::write(w.work().join("trust.json"), meta.to_string()).unwrap();
    w.console(&["trust", "sign", "trust.json", "--key", "old.key"])
        .await;
    let (status, body) = w
        .call(
            Method::PUT,
            "/trust",
            Some(
                serde_json::from_slice(&std::fs::read(w.work().join("trust.json")).unwrap())
                    .unwrap(),
            ),
        )
        .await;
    // The server keeps a chain too: version 2 (signed by `new`) is stored, so version 3
    // must be signed by `new` for the server; the device needs `old`. Sign with both.
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    w.console(&["trust", "sign", "trust.json", "--key", "new.key"])
        .await;
    w.console(&["trust", "push", "trust.json"]).await;
    once(&agent, &[&old], &[]).await;
    let adopted: Value =
        serde_json::from_slice(&std::fs::read(agent.path("trust/trust.json")).unwrap()).unwrap();
    assert!(
        adopted["metadata"]
            .as_str()
            .unwrap()
            .contains("\"version\": 3")
    );

    // From now on the old key's signature is not enough, the new key's is.
    let a = w.archive("1.0.0");
    w.sign(&a, "old", &[]).await;
    w.push(&a).await;
    let t = deploy_once(&w, &agent, "1.0.0", &[&old], &[]).await;
    assert_refused(&w, &t, "1.0.0", "is not a trusted key");
    let a = w.archive("1.1.0");
    w.sign(&a, "new", &[]).await;
    w.push(&a).await;
    let t = deploy_once(&w, &agent, "1.1.0", &[&old], &[]).await;
    assert_eq!(t["status"], "success", "{t}");
}

#[tokio::test]
async fn plain_http_off_loopback_is_refused_by_agent_and_console() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(&dir.path().join("a"), "http://192.0.2.10:8000");
    let out = agent.run(&["run", "--once", "--key-bits", "2048"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing plain http://") && err.contains("--insecure-http"),
        "{err}"
    );
    assert!(
        !agent.path("device_key.pem").exists(),
        "nothing was done before the refusal"
    );

    let out = tokio::process::Command::new(bin("kernex-console").unwrap())
        .args([
            "devices",
            "--server",
            "http://fleet.example.com:8000",
            "--token",
            "t",
        ])
        .env("KERNEX_CONFIG_DIR", dir.path().join("config"))
        .env("KERNEX_CONSOLE_LOG", dir.path().join("console.log"))
        .env_remove("KERNEX_INSECURE_HTTP")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing plain http://"), "{err}");
}
