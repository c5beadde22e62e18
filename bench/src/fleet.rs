//! The fleet and its workload, made through the public HTTP API as an operator and as
//! devices would: signed registrations, a bundle upload, deployments, config changes.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{StreamExt, TryStreamExt, stream};
use kernex_common::api::{
    Admission, BundleInfo, ConfigUpdate, CreateDeployment, HeartbeatRequest, HeartbeatResponse,
    RegisterResponse,
};
use kernex_common::signing::{ENROLLMENT_HEADER, SIGNATURE_HEADER};
use reqwest::{RequestBuilder, Response};

/// Requests in flight during set-up.
const IN_FLIGHT: usize = 16;

/// A registered device, as the load generator needs it.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: String,
    pub token: String,
}

/// The heartbeat every device sends: on config version 1, so the devices whose config
/// was changed get a `configure` command in every reply, as a device that has not applied
/// it yet would.
pub fn heartbeat_body() -> HeartbeatRequest {
    HeartbeatRequest {
        agent_version: "bench".to_owned(),
        cpu_pct: 12.5,
        memory_mb: 812.0,
        status: "idle".to_owned(),
        current_bundle_version: None,
        config_version: Some(1),
        queued_reports: 0,
        trust_version: None,
    }
}

/// An HTTP client on one server.
pub struct Api {
    client: reqwest::Client,
    base: String,
    admin: String,
}

impl Api {
    /// `base` is `http://host:port`; `admin` the operator token.
    pub fn new(base: String, admin: String) -> Result<Self> {
        // reqwest is built without a default TLS provider (plain HTTP here, but the
        // client still wants one).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(Api {
            client,
            base,
            admin,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn operator(&self, req: RequestBuilder) -> RequestBuilder {
        req.bearer_auth(&self.admin)
    }

    /// `GET /healthz` until it answers 200 (the server is bound once it logs its
    /// address, so this normally succeeds at once).
    pub async fn wait_healthy(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            match self.client.get(self.url("/healthz")).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) if Instant::now() > deadline => bail!("/healthz answered {}", r.status()),
                Err(e) if Instant::now() > deadline => {
                    return Err(e).context("/healthz did not answer");
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Register every signed body (see [`crate::keys::registrations`]) with the
    /// enrollment token, so every device is accepted; in input order.
    pub async fn register_all(
        &self,
        enroll: &str,
        signed: Vec<(Vec<u8>, String)>,
    ) -> Result<Vec<Device>> {
        stream::iter(signed)
            .map(|(body, signature)| async move {
                let resp = self
                    .client
                    .post(self.url("/api/v1/devices/register"))
                    .header(SIGNATURE_HEADER, signature)
                    .header(ENROLLMENT_HEADER, enroll)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .send()
                    .await?;
                let reg: RegisterResponse = ok(resp, "registration").await?.json().await?;
                if reg.admission != Admission::Accepted {
                    bail!(
                        "device {} was admitted as {} (the enrollment token was not honoured)",
                        reg.device_id,
                        reg.admission.as_str()
                    );
                }
                Ok(Device {
                    id: reg.device_id,
                    token: reg.device_token,
                })
            })
            .buffered(IN_FLIGHT)
            .try_collect()
            .await
    }

    /// Pack the bundle folder `dir` (in memory) and upload it.
    pub async fn upload_bundle(&self, dir: &Path) -> Result<BundleInfo> {
        let mut archive = Vec::new();
        let manifest = kernex_common::bundle::pack(dir, &mut archive)
            .with_context(|| format!("packing {}", dir.display()))?;
        let part = reqwest::multipart::Part::bytes(archive)
            .file_name(format!("{}-{}.tar.gz", manifest.name, manifest.version))
            .mime_str("application/gzip")?;
        let form = reqwest::multipart::Form::new().part("file", part);
        let resp = self
            .operator(self.client.post(self.url("/api/v1/bundles")))
            .multipart(form)
            .send()
            .await?;
        Ok(ok(resp, "bundle upload").await?.json().await?)
    }

    /// `count` deployments of `version`, each to `per` distinct devices, taking the
    /// devices in order (wrapping round a fleet smaller than `count × per`).
    pub async fn deploy(
        &self,
        version: &str,
        devices: &[Device],
        count: usize,
        per: usize,
    ) -> Result<()> {
        let per = per.min(devices.len());
        for d in 0..count {
            let targets = (0..per)
                .map(|k| devices[(d * per + k) % devices.len()].id.clone())
                .collect();
            let body = CreateDeployment {
                bundle_version: Some(version.to_owned()),
                target_device_ids: targets,
                ..CreateDeployment::default()
            };
            let resp = self
                .operator(self.client.post(self.url("/api/v1/deployments")))
                .json(&body)
                .send()
                .await?;
            ok(resp, "creating a deployment").await?;
        }
        Ok(())
    }

    /// `PUT /devices/{id}/config` with a new polling interval on every `every`-th device;
    /// how many were changed.
    pub async fn configure_every(&self, devices: &[Device], every: usize) -> Result<usize> {
        let update = ConfigUpdate {
            polling_interval: Some(30),
            ..ConfigUpdate::default()
        };
        let chosen: Vec<&Device> = devices.iter().step_by(every.max(1)).collect();
        let n = chosen.len();
        stream::iter(chosen)
            .map(|d| {
                let req = self.operator(
                    self.client
                        .put(self.url(&format!("/api/v1/devices/{}/config", d.id)))
                        .json(&update),
                );
                async move { ok(req.send().await?, "setting a config").await.map(drop) }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<()>()
            .await?;
        Ok(n)
    }

    /// One heartbeat, as wrk will send it (to check the workload before timing it).
    pub async fn heartbeat(&self, device: &Device, body: &str) -> Result<HeartbeatResponse> {
        let resp = self
            .client
            .post(self.url(&format!("/api/v1/devices/{}/heartbeat", device.id)))
            .bearer_auth(&device.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_owned())
            .send()
            .await?;
        Ok(ok(resp, "heartbeat").await?.json().await?)
    }
}

/// The response if it is a 2xx, else an error with its status and body.
async fn ok(resp: Response, what: &str) -> Result<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    bail!("{what}: {status}: {}", body.trim())
}
