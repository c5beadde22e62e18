//! Typed operator client for the `/api/v1` endpoints the console uses. One error type says
//! whether the server refused (exit 1) or could not be reached (exit 2).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use kernex_common::api::{
    BundleInfo, ConfigUpdate, CreateDeployment, Deployment, DeploymentDevice, DeviceConfig,
    DeviceDetail, DeviceSummary, ErrorBody, HeartbeatRecord, HistoryRecord, RollbackRequest,
};
use kernex_common::update_signing::SignedDocument;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::cli::ConnArgs;

/// Targets per page when a deployment is read whole (the server's maximum).
pub const TARGET_PAGE: usize = 1000;

/// Timeout of one JSON request. Uploads and the event stream have none (they may run
/// long) but give up when the connection stalls.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Most of an error reply's body that is read.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Largest page `GET /devices` serves.
pub const MAX_PAGE: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No answer at all: connection refused, DNS, TLS, timeout.
    #[error("cannot reach {server}: {reason}")]
    Unreachable { server: String, reason: String },
    /// The server answered with a 4xx/5xx.
    #[error("server refused ({status}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// The server answered 2xx with something we cannot read.
    #[error("unexpected reply from the server: {0}")]
    Protocol(String),
    /// Set-up problems on our side (bad CA file, missing token).
    #[error("{0}")]
    Setup(String),
}

impl ApiError {
    /// SPEC §4 exit code: 1 the server refused, 2 unreachable or a usage problem.
    pub fn exit_code(&self) -> u8 {
        match self {
            ApiError::Refused { .. } | ApiError::Protocol(_) => 1,
            ApiError::Unreachable { .. } | ApiError::Setup(_) => 2,
        }
    }

    /// Worth retrying: no answer, or a gateway's answer while the server behind it
    /// restarts (502/503/504).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ApiError::Unreachable { .. }
                | ApiError::Refused {
                    status: 502..=504,
                    ..
                }
        )
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Query of `GET /devices`.
#[derive(Debug, Clone, Default)]
pub struct DeviceQuery {
    pub limit: Option<u32>,
    pub after: Option<String>,
    pub tag: Option<String>,
    pub status: Option<String>,
    pub admission: Option<String>,
}

/// The operator API client. Cheap to clone.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    /// Same TLS setup, no overall timeout: uploads and the event stream.
    streaming: reqwest::Client,
    base: String,
    token: String,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("base", &self.base).finish()
    }
}

impl Api {
    /// A client from the command line's connection flags (token from the flag, the
    /// environment, or the local server's `admin.token`).
    pub fn from_conn(conn: &ConnArgs) -> ApiResult<Api> {
        let saved = crate::context::load().map_err(ApiError::Setup)?;
        let r = crate::context::resolve(conn, saved.as_ref());
        kernex_common::transport::check_server_url(&r.server, conn.insecure_http)
            .map_err(ApiError::Setup)?;
        let token = match r.token {
            Some(t) => t,
            None => local_admin_token()?,
        };
        Api::new(&r.server, &token, r.ca_cert.as_deref())
    }

    pub fn new(server: &str, token: &str, ca_cert: Option<&Path>) -> ApiResult<Api> {
        // reqwest is built without a default rustls provider; pick ring once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs = match ca_cert {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    ApiError::Setup(format!("cannot read --ca-cert {}: {e}", path.display()))
                })?;
                Some(reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    ApiError::Setup(format!(
                        "--ca-cert {} is not a PEM certificate: {e}",
                        path.display()
                    ))
                })?)
            }
            None => None,
        };
        let builder = || {
            let b = reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("kernex-console/", env!("CARGO_PKG_VERSION")));
            match &certs {
                Some(c) => b.tls_certs_merge(c.clone()),
                None => b,
            }
        };
        let build = |b: reqwest::ClientBuilder| {
            b.build()
                .map_err(|e| ApiError::Setup(format!("cannot set up the HTTP client: {e}")))
        };
        let server = server.trim().trim_end_matches('/');
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            return Err(ApiError::Setup(format!(
                "--server {server:?} must start with http:// or https://"
            )));
        }
        Ok(Api {
            http: build(builder().timeout(REQUEST_TIMEOUT))?,
            streaming: build(builder().read_timeout(STALL_TIMEOUT))?,
            base: server.to_owned(),
            token: token.to_owned(),
        })
    }

    /// The server's base URL, as given.
    pub fn server(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    async fn send(&self, req: RequestBuilder) -> ApiResult<Response> {
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        check(resp).await
    }

    async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> ApiResult<T> {
        let resp = self.send(req).await?;
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Protocol(e.to_string()))
    }

    fn unreachable(&self, e: &reqwest::Error) -> ApiError {
        ApiError::Unreachable {
            server: self.base.clone(),
            reason: error_chain(e),
        }
    }

    // ------------------------------------------------------------------------ devices

    /// One page of `GET /devices`.
    pub async fn devices(&self, q: &DeviceQuery) -> ApiResult<Vec<DeviceSummary>> {
        let mut params: Vec<(&str, String)> = Vec::new();
        if let Some(l) = q.limit {
            params.push(("limit", l.to_string()));
        }
        for (k, v) in [
            ("after", &q.after),
            ("tag", &q.tag),
            ("status", &q.status),
            ("admission", &q.admission),
        ] {
            if let Some(v) = v {
                params.push((k, v.clone()));
            }
        }
        self.json(self.request(Method::GET, "/devices").query(&params))
            .await
    }

    /// Every device matching `q`, fetched page by page.
    pub async fn all_devices(&self, q: &DeviceQuery) -> ApiResult<Vec<DeviceSummary>> {
        let mut out = Vec::new();
        let mut q = q.clone();
        q.limit = Some(MAX_PAGE);
        loop {
            let page = self.devices(&q).await?;
            let full = page.len() == MAX_PAGE as usize;
            let after = page.last().map(|d| d.device_id.clone());
            out.extend(page);
            // A cursor that does not move would loop forever (a broken server or proxy).
            if !full || after.is_none() || after == q.after {
                return Ok(out);
            }
            q.after = after;
        }
    }

    pub async fn device(&self, id: &str) -> ApiResult<DeviceDetail> {
        self.json(self.request(Method::GET, &format!("/devices/{}", seg(id))))
            .await
    }

    pub async fn heartbeats(&self, id: &str, limit: u32) -> ApiResult<Vec<HeartbeatRecord>> {
        self.json(
            self.request(Method::GET, &format!("/devices/{}/heartbeats", seg(id)))
                .query(&[("limit", limit)]),
        )
        .await
    }

    pub async fn history(&self, id: &str, limit: u32) -> ApiResult<Vec<HistoryRecord>> {
        self.json(
            self.request(Method::GET, &format!("/devices/{}/bundle-history", seg(id)))
                .query(&[("limit", limit)]),
        )
        .await
    }

    pub async fn set_tags(&self, id: &str, tags: &[String]) -> ApiResult<DeviceDetail> {
        let body = kernex_common::api::DevicePatch {
            tags: tags.to_vec(),
        };
        self.json(
            self.request(Method::PATCH, &format!("/devices/{}", seg(id)))
                .json(&body),
        )
        .await
    }

    pub async fn accept(&self, id: &str) -> ApiResult<DeviceDetail> {
        self.json(self.request(Method::POST, &format!("/devices/{}/accept", seg(id))))
            .await
    }

    pub async fn reject(&self, id: &str) -> ApiResult<DeviceDetail> {
        self.json(self.request(Method::POST, &format!("/devices/{}/reject", seg(id))))
            .await
    }

    // ------------------------------------------------------------------------- config

    pub async fn config(&self, id: &str) -> ApiResult<DeviceConfig> {
        self.json(self.request(Method::GET, &format!("/devices/{}/config", seg(id))))
            .await
    }

    pub async fn put_config(&self, id: &str, update: &ConfigUpdate) -> ApiResult<DeviceConfig> {
        self.json(
            self.request(Method::PUT, &format!("/devices/{}/config", seg(id)))
                .json(update),
        )
        .await
    }

    // ------------------------------------------------------------------------ bundles

    pub async fn bundles(&self) -> ApiResult<Vec<BundleInfo>> {
        self.json(self.request(Method::GET, "/bundles")).await
    }

    /// Upload an archive, streamed from disk. `progress` is called with the bytes sent
    /// so far.
    pub async fn push_bundle(
        &self,
        path: &Path,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> ApiResult<BundleInfo> {
        self.push_bundle_signed(path, None, progress).await
    }

    /// [`Api::push_bundle`] with a signatures document (part `signatures`, SPEC §7).
    pub async fn push_bundle_signed(
        &self,
        path: &Path,
        signatures: Option<&SignedDocument>,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> ApiResult<BundleInfo> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| ApiError::Setup(format!("cannot open {}: {e}", path.display())))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| ApiError::Setup(format!("cannot read {}: {e}", path.display())))?
            .len();
        let mut sent = 0u64;
        let stream = tokio_util::io::ReaderStream::new(file).inspect_ok(move |chunk| {
            sent += chunk.len() as u64;
            progress(sent);
        });
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bundle.tar.gz".to_owned());
        let part =
            reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), len)
                .file_name(file_name)
                .mime_str("application/gzip")
                .map_err(|e| ApiError::Setup(e.to_string()))?;
        let mut form = reqwest::multipart::Form::new().part("file", part);
        if let Some(doc) = signatures {
            let text = serde_json::to_string(doc).map_err(|e| ApiError::Setup(e.to_string()))?;
            form = form.text("signatures", text);
        }
        let req = self
            .streaming
            .post(self.url("/bundles"))
            .bearer_auth(&self.token)
            .multipart(form);
        self.json(req).await
    }

    /// Add signatures to an uploaded bundle; what is stored now.
    pub async fn add_signatures(
        &self,
        bundle_id: &str,
        doc: &SignedDocument,
    ) -> ApiResult<SignedDocument> {
        self.json(
            self.request(
                Method::POST,
                &format!("/bundles/{}/signatures", seg(bundle_id)),
            )
            .json(doc),
        )
        .await
    }

    /// `PUT /trust`: a new trust document.
    pub async fn put_trust(&self, doc: &SignedDocument) -> ApiResult<SignedDocument> {
        self.json(self.request(Method::PUT, "/trust").json(doc))
            .await
    }

    // -------------------------------------------------------------------- deployments

    pub async fn create_deployment(&self, req: &CreateDeployment) -> ApiResult<Deployment> {
        self.json(self.request(Method::POST, "/deployments").json(req))
            .await
    }

    pub async fn rollback(&self, req: &RollbackRequest) -> ApiResult<Deployment> {
        self.json(self.request(Method::POST, "/devices/rollback").json(req))
            .await
    }

    /// The newest deployments. With `targets` false each comes without its per-device
    /// list (`devices=false`), so a list of fleet-wide rollouts stays small.
    pub async fn deployments(
        &self,
        status: Option<&str>,
        limit: u32,
        targets: bool,
    ) -> ApiResult<Vec<Deployment>> {
        let mut req = self
            .request(Method::GET, "/deployments")
            .query(&[("limit", limit)]);
        if let Some(s) = status {
            req = req.query(&[("status", s)]);
        }
        if !targets {
            req = req.query(&[("devices", "false")]);
        }
        self.json(req).await
    }

    /// One deployment with every target, read in pages of [`TARGET_PAGE`] from
    /// `/deployments/{id}/targets` (one response per page, however large the rollout).
    pub async fn deployment(&self, id: &str) -> ApiResult<Deployment> {
        let path = format!("/deployments/{}", seg(id));
        let mut d: Deployment = self
            .json(
                self.request(Method::GET, &path)
                    .query(&[("devices", "false")]),
            )
            .await?;
        let mut after: Option<String> = None;
        loop {
            let mut req = self
                .request(Method::GET, &format!("{path}/targets"))
                .query(&[("limit", TARGET_PAGE)]);
            if let Some(a) = &after {
                req = req.query(&[("after", a)]);
            }
            let page: Vec<DeploymentDevice> = self.json(req).await?;
            let full = page.len() == TARGET_PAGE;
            match page.last() {
                Some(last) if full => after = Some(last.device_id.clone()),
                _ => after = None,
            }
            d.devices.extend(page);
            if after.is_none() {
                break;
            }
        }
        d.target_device_ids = d.devices.iter().map(|t| t.device_id.clone()).collect();
        Ok(d)
    }

    pub async fn cancel(&self, id: &str) -> ApiResult<Deployment> {
        self.json(self.request(Method::POST, &format!("/deployments/{}/cancel", seg(id))))
            .await
    }

    pub async fn pause(&self, id: &str) -> ApiResult<Deployment> {
        self.json(self.request(Method::POST, &format!("/deployments/{}/pause", seg(id))))
            .await
    }

    pub async fn resume(&self, id: &str) -> ApiResult<Deployment> {
        self.json(self.request(Method::POST, &format!("/deployments/{}/resume", seg(id))))
            .await
    }

    // ------------------------------------------------------------------------- events

    /// Open `GET /events`; the caller reads the SSE body.
    pub async fn events(&self) -> ApiResult<Response> {
        let req = self
            .streaming
            .get(self.url("/events"))
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        self.send(req).await
    }
}

/// Turn a non-2xx reply into `Refused` with the server's own message.
async fn check(resp: Response) -> ApiResult<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    if status.is_redirection() {
        return Err(ApiError::Refused {
            status: status.as_u16(),
            code: "redirect".into(),
            message: format!(
                "redirected to {} (is --server the API's base URL?)",
                resp.headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?")
            ),
        });
    }
    let path = resp.url().path().to_owned();
    // An error body is a short JSON object; read no more than that from a server (or
    // proxy) that misbehaves.
    let mut body = Vec::new();
    let mut chunks = resp.bytes_stream();
    while let Some(Ok(chunk)) = chunks.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY {
            body.truncate(MAX_ERROR_BODY);
            break;
        }
    }
    let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(e) => (e.error, e.message),
        Err(_) => (
            status
                .canonical_reason()
                .unwrap_or("error")
                .to_lowercase()
                .replace(' ', "_"),
            String::from_utf8_lossy(&body).chars().take(200).collect(),
        ),
    };
    let message = if message.trim().is_empty() {
        empty_reason(status, &path)
    } else {
        message
    };
    let message = match status {
        StatusCode::UNAUTHORIZED => format!("{message} (check --token / KERNEX_TOKEN)"),
        _ => message,
    };
    Err(ApiError::Refused {
        status: status.as_u16(),
        code,
        message,
    })
}

/// What to say when the server (or a proxy in front of it) gave no reason: the path it
/// did not have, never an empty message.
fn empty_reason(status: StatusCode, path: &str) -> String {
    match status {
        StatusCode::NOT_FOUND => {
            format!("{path} not found (is --server the Kernex API's base URL?)")
        }
        _ => format!(
            "{} on {path}",
            status.canonical_reason().unwrap_or("error").to_lowercase()
        ),
    }
}

/// Percent-encode a path segment (ids are URL-safe, but user input may not be).
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `reqwest`'s top-level message hides the cause ("error sending request for url …");
/// the operator wants the root of it ("Connection refused", "timed out").
fn error_chain(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    root.to_string()
}

/// Where the local server keeps its admin token: `$KERNEX_DATA_DIR/admin.token`, else the
/// platform data dir the server defaults to.
pub fn local_admin_token_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KERNEX_DATA_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("admin.token"));
    }
    directories::ProjectDirs::from("", "", "kernex")
        .map(|d| d.data_dir().join("server").join("admin.token"))
}

fn local_admin_token() -> ApiResult<String> {
    let path = local_admin_token_path().ok_or_else(|| {
        ApiError::Setup(
            "no operator token: pass --token, set KERNEX_TOKEN or run `kernex-console login`"
                .into(),
        )
    })?;
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        Ok(_) => Err(ApiError::Setup(format!(
            "{} is empty: pass --token, set KERNEX_TOKEN or run `kernex-console login`",
            path.display()
        ))),
        Err(e) => Err(ApiError::Setup(format!(
            "no operator token: pass --token, set KERNEX_TOKEN or run `kernex-console login` \
             (and {} is not readable: {e})",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(seg("dev-1_a.b"), "dev-1_a.b");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
        assert_eq!(seg("../x"), "..%2Fx");
    }

    #[test]
    fn exit_codes_follow_the_spec() {
        let refused = ApiError::Refused {
            status: 400,
            code: "bad_request".into(),
            message: "x".into(),
        };
        assert_eq!(refused.exit_code(), 1);
        let gone = ApiError::Unreachable {
            server: "http://x".into(),
            reason: "refused".into(),
        };
        assert_eq!(gone.exit_code(), 2);
    }

    #[test]
    fn gateway_errors_and_silence_are_worth_retrying_refusals_are_not() {
        let refused = |status| ApiError::Refused {
            status,
            code: "x".into(),
            message: "x".into(),
        };
        assert!(refused(503).is_transient() && refused(502).is_transient());
        assert!(!refused(400).is_transient() && !refused(500).is_transient());
        let gone = ApiError::Unreachable {
            server: "http://x".into(),
            reason: "refused".into(),
        };
        assert!(gone.is_transient());
    }

    #[test]
    fn a_reply_without_a_reason_names_the_path() {
        let m = empty_reason(StatusCode::NOT_FOUND, "/api/v1/devices/abc");
        assert_eq!(
            m,
            "/api/v1/devices/abc not found (is --server the Kernex API's base URL?)"
        );
        let m = empty_reason(StatusCode::BAD_GATEWAY, "/health");
        assert_eq!(m, "bad gateway on /health");
    }

    #[test]
    fn a_server_url_needs_a_scheme() {
        let err = Api::new("localhost:8000", "t", None).unwrap_err();
        assert!(err.to_string().contains("http://"), "{err}");
        assert_eq!(err.exit_code(), 2);
    }
}
