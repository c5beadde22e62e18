//! The real `kernex-server` binary: crash durability, token CLI, clean shutdown.
#![allow(clippy::unwrap_used)]

use kernex_common::signing::{DeviceKey, ENROLLMENT_HEADER, SIGNATURE_HEADER};
use kernex_tests::{ServerProcess, bin};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ADMIN: &str = "e2e-admin";
const ENROLL: &str = "e2e-enroll";

fn bundle(version: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let manifest = json!({"name": "app", "version": version, "deploy": {"script": "deploy.sh"}});
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    std::fs::write(dir.path().join("deploy.sh"), "#!/bin/sh\necho ok\n").unwrap();
    let mut out = Vec::new();
    kernex_common::bundle::pack(dir.path(), &mut out).unwrap();
    out
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(server: &ServerProcess) -> Self {
        Api {
            http: kernex_tests::client(),
            base: server.url("/api/v1"),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder, expect: StatusCode) -> Value {
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, expect, "body: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn op(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        expect: StatusCode,
    ) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req, expect).await
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), ADMIN, ENROLL).unwrap();
    let api = Api::new(&server);
    use reqwest::Method as M;

    // Registration.
    let key = DeviceKey::generate(2048).unwrap();
    let body = serde_json::to_vec(&json!({
        "public_key": key.public_key_pem().unwrap(), "device_type": "gw",
        "hardware_metadata": {}, "timestamp": chrono::Utc::now(),
    }))
    .unwrap();
    let reg = api
        .send(
            api.http
                .post(format!("{}/devices/register", api.base))
                .header("content-type", "application/json")
                .header(SIGNATURE_HEADER, key.sign(&body))
                .header(ENROLLMENT_HEADER, ENROLL)
                .body(body),
            StatusCode::CREATED,
        )
        .await;
    let id = reg["device_id"].as_str().unwrap().to_owned();
    let token = reg["device_token"].as_str().unwrap().to_owned();

    // Operator writes: tags, config, bundle, deployment, token.
    api.op(
        M::PATCH,
        &format!("/devices/{id}"),
        Some(json!({"tags": ["site:a"]})),
        StatusCode::OK,
    )
    .await;
    api.op(
        M::PUT,
        &format!("/devices/{id}/config"),
        Some(json!({"polling_interval": 17})),
        StatusCode::OK,
    )
    .await;
    let archive = bundle("1.0.0");
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(archive.clone()).file_name("app.tar.gz"),
    );
    let b = api
        .send(
            api.http
                .post(format!("{}/bundles", api.base))
                .bearer_auth(ADMIN)
                .multipart(form),
            StatusCode::CREATED,
        )
        .await;
    let bundle_id = b["id"].as_str().unwrap().to_owned();
    let dep = api
        .op(
            M::POST,
            "/deployments",
            Some(json!({"bundle_version": "1.0.0", "target_device_ids": [id]})),
            StatusCode::CREATED,
        )
        .await;
    let dep_id = dep["id"].as_str().unwrap().to_owned();
    let minted = api
        .op(
            M::POST,
            "/tokens",
            Some(json!({"name": "ci"})),
            StatusCode::CREATED,
        )
        .await;

    // Device side: heartbeat delivers, result acknowledged.
    let hb = api
        .send(
            api.http
                .post(format!("{}/devices/{id}/heartbeat", api.base))
                .bearer_auth(&token)
                .json(&json!({"agent_version": "1", "cpu_pct": 1.0, "memory_mb": 2.0, "status": "idle"})),
            StatusCode::OK,
        )
        .await;
    assert_eq!(hb["commands"][0]["type"], "deploy");
    api.send(
        api.http
            .post(format!("{}/deployments/{dep_id}/result", api.base))
            .bearer_auth(&token)
            .json(&json!({"device_id": id, "status": "success", "report_id": "r-1", "log_tail": "done"})),
        StatusCode::OK,
    )
    .await;

    // Crash: no graceful shutdown, no final flush.
    server.kill().unwrap();

    let server = ServerProcess::start(dir.path(), ADMIN, ENROLL).unwrap();
    let api = Api::new(&server);
    let d = api
        .op(M::GET, &format!("/devices/{id}"), None, StatusCode::OK)
        .await;
    assert_eq!(d["tags"], json!(["site:a"]));
    assert_eq!(d["current_bundle_version"], "1.0.0");
    let c = api
        .op(
            M::GET,
            &format!("/devices/{id}/config"),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(
        (c["version"].as_u64(), c["polling_interval"].as_u64()),
        (Some(2), Some(17))
    );
    let dep = api
        .op(
            M::GET,
            &format!("/deployments/{dep_id}"),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(dep["status"], "success");
    let hist = api
        .op(
            M::GET,
            &format!("/devices/{id}/bundle-history"),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(hist.as_array().unwrap().len(), 1);
    // The bundle survives byte for byte.
    let bytes = api
        .http
        .get(format!("{}/bundles/{bundle_id}", api.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&bytes)),
        b["checksum_sha256"].as_str().unwrap()
    );
    // Both tokens still work; a repeated result is still recognised.
    let t = minted["token"].as_str().unwrap();
    let r = api
        .http
        .get(format!("{}/bundles", api.base))
        .bearer_auth(t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let again = api
        .send(
            api.http
                .post(format!("{}/deployments/{dep_id}/result", api.base))
                .bearer_auth(&token)
                .json(&json!({"device_id": id, "status": "failed", "report_id": "r-1"})),
            StatusCode::OK,
        )
        .await;
    assert_eq!(
        again["status"], "success",
        "first result wins after a restart too"
    );
}

#[tokio::test]
async fn token_create_refuses_a_held_data_dir_and_works_on_a_stopped_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), ADMIN, ENROLL).unwrap();
    let out = std::process::Command::new(bin("kernex-server").unwrap())
        .args(["token", "create", "--name", "ops"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use"), "stderr: {err}");
    assert!(server.terminate().unwrap(), "clean exit on SIGTERM");

    let out = std::process::Command::new(bin("kernex-server").unwrap())
        .args(["token", "create", "--name", "ops"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("kxo_"));

    let server = ServerProcess::start(dir.path(), ADMIN, ENROLL).unwrap();
    let r = kernex_tests::client()
        .get(server.url("/api/v1/devices"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn first_start_writes_a_private_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(bin("kernex-server").unwrap())
        .args(["--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("KERNEX_ADMIN_TOKEN")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let path = dir.path().join("admin.token");
    // The file is written before the listener binds; wait for the log line that says so.
    let stderr = child.stderr.take().unwrap();
    let mut log = String::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
        let line = line.unwrap();
        log.push_str(&line);
        if line.contains("listening") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let token = std::fs::read_to_string(&path).unwrap();
    assert!(token.trim().starts_with("kxo_"));
    assert!(
        !log.contains(token.trim()),
        "the token itself is never logged"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

#[tokio::test]
async fn serves_https_with_the_given_certificate() {
    let tls = kernex_tests::workspace_root().join("fixtures/tls");
    let cert = tls.join("server.pem");
    let key = tls.join("server.key");
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(
        dir.path(),
        ADMIN,
        ENROLL,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )
    .unwrap();
    let port = server.addr.rsplit(':').next().unwrap().to_owned();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(tls.join("ca.pem")).unwrap()).unwrap();
    let client = kernex_tests::client_builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let r = client
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Without the private CA the certificate is not trusted.
    let untrusted = kernex_tests::client()
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await;
    assert!(untrusted.is_err());
    // Plain HTTP on the TLS port gets no API answer.
    let plain = kernex_tests::client()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(plain.map(|r| r.status() != StatusCode::OK).unwrap_or(true));
}

#[tokio::test]
async fn sigterm_stops_cleanly_even_with_a_live_event_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), ADMIN, ENROLL).unwrap();
    let resp = kernex_tests::client()
        .get(server.url("/api/v1/events"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // The stream is open (headers arrived); SIGTERM must still end the process promptly.
    let clean = tokio::task::spawn_blocking(move || {
        server.terminate_within(std::time::Duration::from_secs(30))
    })
    .await
    .unwrap()
    .unwrap();
    assert!(clean, "exit status 0 after SIGTERM");
    drop(resp);
}
