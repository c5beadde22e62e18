//! A small fleet built through the real HTTP API (devices of each admission, tags, a
//! config, heartbeats, bundles, a finished and an open deployment, history, a second
//! operator token), and everything an operator can read back about it — so a test can
//! compare two servers answer for answer (backup/restore, store damage).

use anyhow::{Context, Result, bail};
use kernex_common::signing::{DeviceKey, ENROLLMENT_HEADER, SIGNATURE_HEADER};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// What [`populate`] made.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// Accepted devices: (id, device token).
    pub devices: Vec<(String, String)>,
    pub pending: String,
    pub bundles: Vec<String>,
    pub deployments: Vec<String>,
    /// The second operator token (`ops`).
    pub ops_token: String,
}

/// Typed calls against one server's `/api/v1`.
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub admin: String,
}

impl Api {
    pub fn new(server_url: &str, admin: &str) -> Self {
        Api {
            http: crate::client(),
            base: format!("{server_url}/api/v1"),
            admin: admin.to_owned(),
        }
    }

    /// Send, check the status, return the JSON body (Null when empty).
    pub async fn send(&self, req: reqwest::RequestBuilder, expect: StatusCode) -> Result<Value> {
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if status != expect {
            bail!("expected {expect}, got {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// An operator call.
    pub async fn op(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        expect: StatusCode,
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.admin);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req, expect)
            .await
            .with_context(|| path.to_owned())
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.op(Method::GET, path, None, StatusCode::OK).await
    }

    /// Register a new key (accepted with the enrollment token, else pending).
    pub async fn register(&self, enroll: Option<&str>) -> Result<(String, String)> {
        let key = DeviceKey::generate(2048)?;
        let body = serde_json::to_vec(&json!({
            "public_key": key.public_key_pem()?, "device_type": "gw",
            "hardware_metadata": {"board": "rpi4"}, "timestamp": chrono::Utc::now(),
        }))?;
        let mut req = self
            .http
            .post(format!("{}/devices/register", self.base))
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, key.sign(&body));
        if let Some(e) = enroll {
            req = req.header(ENROLLMENT_HEADER, e);
        }
        let v = self.send(req.body(body), StatusCode::CREATED).await?;
        Ok((
            v["device_id"].as_str().context("device_id")?.to_owned(),
            v["device_token"]
                .as_str()
                .context("device_token")?
                .to_owned(),
        ))
    }

    /// A heartbeat as a device; the reply.
    pub async fn beat(&self, id: &str, token: &str, version: Option<&str>) -> Result<Value> {
        let body = json!({"agent_version": "1.2.3", "cpu_pct": 3.5, "memory_mb": 256.0,
            "status": "idle", "current_bundle_version": version, "config_version": 2});
        self.send(
            self.http
                .post(format!("{}/devices/{id}/heartbeat", self.base))
                .bearer_auth(token)
                .json(&body),
            StatusCode::OK,
        )
        .await
    }

    pub async fn upload(&self, archive: Vec<u8>) -> Result<Value> {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(archive).file_name("app.tar.gz"),
        );
        self.send(
            self.http
                .post(format!("{}/bundles", self.base))
                .bearer_auth(&self.admin)
                .multipart(form),
            StatusCode::CREATED,
        )
        .await
    }

    pub async fn result(&self, dep: &str, id: &str, token: &str, status: &str) -> Result<()> {
        self.send(
            self.http
                .post(format!("{}/deployments/{dep}/result", self.base))
                .bearer_auth(token)
                .json(&json!({"device_id": id, "status": status,
                    "report_id": format!("r-{}-{}", short(dep), short(id)), "log_tail": "done"})),
            StatusCode::OK,
        )
        .await
        .map(|_| ())
    }
}

/// A real bundle archive of `app` at `version`.
pub fn bundle(version: &str) -> Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let manifest = json!({"name": "app", "version": version, "deploy": {"script": "deploy.sh"}});
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string())?;
    std::fs::write(dir.path().join("deploy.sh"), "#!/bin/sh\necho ok\n")?;
    let mut out = Vec::new();
    kernex_common::bundle::pack(dir.path(), &mut out)?;
    Ok(out)
}

/// Build the fleet. `devices` accepted devices (at least 2), each beating `beats` times.
pub async fn populate(api: &Api, enroll: &str, devices: usize, beats: usize) -> Result<Fleet> {
    let mut accepted = Vec::new();
    for _ in 0..devices.max(2) {
        accepted.push(api.register(Some(enroll)).await?);
    }
    let (pending, _) = api.register(None).await?;
    let (rejected, _) = api.register(Some(enroll)).await?;
    api.op(
        Method::POST,
        &format!("/devices/{rejected}/reject"),
        None,
        StatusCode::OK,
    )
    .await?;
    let (a, a_token) = accepted[0].clone();
    api.op(
        Method::PATCH,
        &format!("/devices/{a}"),
        Some(json!({"tags": ["site:a", "lab"]})),
        StatusCode::OK,
    )
    .await?;
    api.op(
        Method::PUT,
        &format!("/devices/{a}/config"),
        Some(json!({"polling_interval": 17, "metadata": {"zone": "n"}})),
        StatusCode::OK,
    )
    .await?;
    for (id, token) in &accepted {
        for _ in 0..beats {
            api.beat(id, token, None).await?;
        }
    }
    let b1 = api.upload(bundle("1.0.0")?).await?;
    let b2 = api.upload(bundle("2.0.0")?).await?;
    let ids: Vec<&str> = accepted.iter().map(|(id, _)| id.as_str()).collect();
    let done = api
        .op(
            Method::POST,
            "/deployments",
            Some(json!({"bundle_version": "1.0.0", "target_device_ids": ids})),
            StatusCode::CREATED,
        )
        .await?;
    let done_id = done["id"].as_str().context("id")?.to_owned();
    for (i, (id, token)) in accepted.iter().enumerate() {
        api.beat(id, token, None).await?;
        let status = if i == 1 { "failed" } else { "success" };
        api.result(&done_id, id, token, status).await?;
    }
    api.beat(&a, &a_token, Some("1.0.0")).await?;
    let open = api
        .op(
            Method::POST,
            "/deployments",
            Some(json!({"bundle_version": "2.0.0", "target_device_ids": [a]})),
            StatusCode::CREATED,
        )
        .await?;
    let ops = api
        .op(
            Method::POST,
            "/tokens",
            Some(json!({"name": "ops"})),
            StatusCode::CREATED,
        )
        .await?;
    Ok(Fleet {
        devices: accepted,
        pending,
        bundles: vec![
            b1["id"].as_str().context("id")?.to_owned(),
            b2["id"].as_str().context("id")?.to_owned(),
        ],
        deployments: vec![done_id, open["id"].as_str().context("id")?.to_owned()],
        ops_token: ops["token"].as_str().context("token")?.to_owned(),
    })
}

/// Every read an operator can make about the fleet: (path, answer). Bundle downloads
/// are answered by their SHA-256.
pub async fn answers(api: &Api, fleet: &Fleet) -> Result<Vec<(String, Value)>> {
    let mut paths: Vec<String> = [
        "/devices",
        "/devices?status=online",
        "/devices?tag=lab",
        "/bundles",
        "/deployments",
        "/tokens",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let ids = fleet
        .devices
        .iter()
        .map(|(id, _)| id)
        .chain([&fleet.pending]);
    for id in ids {
        for tail in ["", "/heartbeats?limit=1000", "/config", "/bundle-history"] {
            paths.push(format!("/devices/{id}{tail}"));
        }
    }
    for dep in &fleet.deployments {
        paths.push(format!("/deployments/{dep}"));
        paths.push(format!("/deployments/{dep}/targets"));
    }
    let mut out = Vec::new();
    for p in paths {
        let v = api.get(&p).await?;
        out.push((p, v));
    }
    for b in &fleet.bundles {
        let bytes = api
            .http
            .get(format!("{}/bundles/{b}", api.base))
            .bearer_auth(&api.admin)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        let sum = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        out.push((format!("/bundles/{b} sha256"), Value::String(sum)));
    }
    Ok(out)
}

/// The answers that differ: (path, first, second).
pub fn differences(
    first: &[(String, Value)],
    second: &[(String, Value)],
) -> Vec<(String, Value, Value)> {
    first
        .iter()
        .zip(second)
        .filter(|((_, a), (_, b))| a != b)
        .map(|((p, a), (_, b))| (p.clone(), a.clone(), b.clone()))
        .collect()
}

/// The first 16 characters of an id (two of them fit in a 64-character report id).
fn short(id: &str) -> &str {
    id.get(..16).unwrap_or(id)
}
