//! Typed HTTP calls to the server, on the wire types of `kernex-common`.

use std::path::Path;
use std::time::Duration;

use kernex_common::api::{
    Admission, Command, DeploymentDevice, ErrorBody, HeartbeatRequest, ProgressReport,
    RegisterResponse, ResultReport, Timestamp,
};
use kernex_common::signing::{ENROLLMENT_HEADER, SIGNATURE_HEADER};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

/// Longest a registration, result or progress call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// `status` must answer within 3 s; the probe gets 2.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer: connection refused, DNS, TLS, timeout, cut off mid-way.
    #[error("server unreachable: {0}")]
    Unreachable(String),
    /// The server answered with an error status.
    #[error("server answered {status}: {message}")]
    Status { status: StatusCode, message: String },
    /// A 2xx with a body we cannot read.
    #[error("unexpected reply from server: {0}")]
    Decode(String),
}

impl ClientError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Worth trying again later (as opposed to a refusal that will not change).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable(_) | ClientError::Decode(_) => true,
            ClientError::Status { status, .. } => {
                status.is_server_error()
                    || status.is_redirection()
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
        }
    }
}

fn unreachable(e: reqwest::Error) -> ClientError {
    // The error chain names the real cause (connection refused, certificate …).
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    ClientError::Unreachable(msg)
}

/// A heartbeat reply with the commands this agent understands.
#[derive(Debug, Clone)]
pub struct HeartbeatReply {
    pub commands: Vec<Command>,
    pub admission: Admission,
    pub server_time: Timestamp,
}

#[derive(serde::Deserialize)]
struct RawHeartbeatReply {
    #[serde(default)]
    commands: Vec<serde_json::Value>,
    admission: Admission,
    server_time: Timestamp,
}

/// A client for one server.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// `server` is the base URL (`http://host:port`); `ca_cert` a PEM file of extra
    /// trusted roots for a private CA.
    pub fn new(server: &str, ca_cert: Option<&Path>) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(server)
            .map_err(|e| anyhow::anyhow!("--server {server:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            anyhow::bail!("--server {server:?} must be an http:// or https:// URL");
        }
        // The workspace compiles rustls with ring only; install it once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // A redirect is never part of the API. Following one would turn a result
            // POST into a GET somewhere else (a captive portal, an HTTP→HTTPS proxy)
            // whose 200 or 405 says nothing about our report.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kernex-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read --ca-cert {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                anyhow::anyhow!("--ca-cert {} is not a PEM certificate: {e}", path.display())
            })?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| anyhow::anyhow!("cannot set up the HTTP client: {e}"))?;
        Ok(Client {
            http,
            base: server.trim_end_matches('/').to_owned(),
        })
    }

    /// The server's base URL.
    pub fn server(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    /// `POST /devices/register` with the signed body.
    pub async fn register(
        &self,
        body: Vec<u8>,
        signature: &str,
        enrollment_token: Option<&str>,
    ) -> Result<(StatusCode, RegisterResponse), ClientError> {
        let mut req = self
            .http
            .post(self.url("/devices/register"))
            .timeout(CALL_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body);
        if let Some(t) = enrollment_token {
            req = req.header(ENROLLMENT_HEADER, t);
        }
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        Ok((status, decode(resp).await?))
    }

    /// POST a JSON body to an API path with the device token.
    async fn post_json<B: serde::Serialize>(
        &self,
        path: &str,
        token: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<reqwest::Response, ClientError> {
        self.http
            .post(self.url(path))
            .bearer_auth(token)
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(unreachable)
    }

    /// Send a heartbeat. A command this agent does not understand (a newer server) is
    /// logged and skipped; it does not make the whole reply unreadable.
    pub async fn heartbeat(
        &self,
        device_id: &str,
        token: &str,
        body: &HeartbeatRequest,
        timeout: Duration,
    ) -> Result<HeartbeatReply, ClientError> {
        let path = format!("/devices/{device_id}/heartbeat");
        let resp = self.post_json(&path, token, body, timeout).await?;
        let raw: RawHeartbeatReply = decode(resp).await?;
        let commands = raw
            .commands
            .into_iter()
            .filter_map(|c| match serde_json::from_value::<Command>(c.clone()) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(command = %c, error = %e, "skipping a command this agent does not understand");
                    None
                }
            })
            .collect();
        Ok(HeartbeatReply {
            commands,
            admission: raw.admission,
            server_time: raw.server_time,
        })
    }

    pub async fn progress(
        &self,
        token: &str,
        deployment_id: &str,
        body: &ProgressReport,
    ) -> Result<(), ClientError> {
        let path = format!("/deployments/{deployment_id}/progress");
        let resp = self.post_json(&path, token, body, CALL_TIMEOUT).await?;
        check(resp).await.map(drop)
    }

    /// Deliver a result. Only the server's own reply (the device's entry in the
    /// deployment) counts as delivery; any other 2xx body is treated as "not delivered".
    pub async fn result(
        &self,
        token: &str,
        deployment_id: &str,
        body: &ResultReport,
    ) -> Result<(), ClientError> {
        let path = format!("/deployments/{deployment_id}/result");
        let resp = self.post_json(&path, token, body, CALL_TIMEOUT).await?;
        let reply: DeploymentDevice = decode(resp).await?;
        if reply.device_id != body.device_id {
            return Err(ClientError::Decode(format!(
                "result acknowledged for device {:?}, not {:?}",
                reply.device_id, body.device_id
            )));
        }
        Ok(())
    }

    /// Start downloading a bundle from byte `offset`. The caller reads the body as a
    /// stream and interprets 200 / 206 / 416 itself; other errors come back as
    /// [`ClientError::Status`].
    pub async fn download(
        &self,
        token: &str,
        bundle_id: &str,
        offset: u64,
    ) -> Result<reqwest::Response, ClientError> {
        let mut req = self
            .http
            .get(self.url(&format!("/bundles/{bundle_id}")))
            .bearer_auth(token);
        if offset > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let resp = req.send().await.map_err(unreachable)?;
        match resp.status() {
            StatusCode::OK | StatusCode::PARTIAL_CONTENT | StatusCode::RANGE_NOT_SATISFIABLE => {
                Ok(resp)
            }
            _ => check(resp).await,
        }
    }

    /// The server's clock, from the `Date` header of `GET /healthz` (registration
    /// timestamps must be within 5 minutes of it).
    pub async fn server_time(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let resp = self
            .http
            .get(format!("{}/healthz", self.base))
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .ok()?;
        let date = resp.headers().get(reqwest::header::DATE)?.to_str().ok()?;
        chrono::DateTime::parse_from_rfc2822(date)
            .ok()
            .map(|d| d.with_timezone(&chrono::Utc))
    }

    /// Does the server answer `GET /healthz` within [`PROBE_TIMEOUT`]?
    pub async fn probe(&self) -> Result<(), ClientError> {
        let resp = self
            .http
            .get(format!("{}/healthz", self.base))
            .timeout(PROBE_TIMEOUT)
            .send()
            .await
            .map_err(unreachable)?;
        check(resp).await.map(drop)
    }
}

/// Turn a non-2xx into [`ClientError::Status`] with the server's message.
async fn check(resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let bytes = read_capped(resp, MAX_ERROR_BODY).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let message = serde_json::from_str::<ErrorBody>(&text)
        .map(|b| b.message)
        .unwrap_or_else(|_| kernex_common::validate::tail_utf8(&text, 512).to_owned());
    Err(ClientError::Status { status, message })
}

async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, ClientError> {
    let resp = check(resp).await?;
    let bytes = read_capped(resp, MAX_REPLY_BODY).await?;
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
}

/// The largest JSON reply the agent reads (a heartbeat with a signed bundle command, a
/// configure command and a trust document is a few tens of KiB): a hostile or broken
/// server cannot make the agent buffer without end.
pub const MAX_REPLY_BODY: usize = 2 * 1024 * 1024;
/// The most of an error body read for its message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Read a body chunk by chunk, refusing it once it passes `max` bytes (before reading
/// anything when `Content-Length` says so already).
async fn read_capped(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, ClientError> {
    let too_big = || ClientError::Decode(format!("reply body is larger than {max} bytes"));
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_big());
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
        if out.len() + chunk.len() > max {
            return Err(too_big());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
