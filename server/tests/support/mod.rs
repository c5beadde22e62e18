//! Test harness: an in-process server on its own temp data dir, driven through
//! `Router::oneshot`, plus helpers that act as devices (real RSA keys, real signatures)
//! and build real tar.gz bundles.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use kernex_common::signing::{DeviceKey, ENROLLMENT_HEADER, SIGNATURE_HEADER};
use kernex_server::{AppState, ServerSettings};
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt;

/// The enrollment token every [`TestApp`] is configured with.
pub const ENROLL: &str = "enroll-secret";
/// The admin token every [`TestApp`] is configured with.
pub const ADMIN: &str = "admin-secret";

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Assert the status and, for errors, the uniform error body; returns the JSON body.
    #[track_caller]
    pub fn expect(&self, status: StatusCode) -> Value {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            self.text()
        );
        if status.is_client_error() || status.is_server_error() {
            let v = self.json();
            assert!(
                v["error"].is_string() && v["message"].is_string(),
                "not the error shape: {v}"
            );
        }
        if self.body.is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// The `error` code of an error body.
    pub fn code(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

/// A device as a test drives it.
pub struct Device {
    pub id: String,
    pub token: String,
    pub key: DeviceKey,
}

/// One server with its own data dir (and, on PostgreSQL, its own database).
pub struct TestApp {
    pub dir: TempDir,
    pub state: AppState,
    pub router: Router,
    /// The database this server uses, when the suite runs on PostgreSQL.
    pub database_url: Option<String>,
    /// Drops that database when the test is over.
    database: Option<Arc<TestDatabase>>,
}

/// A test's own database: dropped with the last handle on it (a suite run would
/// otherwise leave thousands behind).
#[derive(Debug)]
pub struct TestDatabase {
    pub url: String,
    cluster: String,
    name: String,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (cluster, name) = (self.cluster.clone(), self.name.clone());
        // On a thread of its own: the drop may happen inside a runtime.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(kernex_server::store::pg_store::drop_scratch_database(
                    &cluster, &name,
                ))
                .map_err(|e| e.to_string())
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("dropping test database {}: {e}", self.name);
        }
    }
}

/// The backend matrix (SPEC §8): with `KERNEX_TEST_DATABASE_URL` set (any database of a
/// PostgreSQL cluster the tests may create databases on), every [`TestApp`] runs on a
/// fresh database of that cluster; unset, on sled.
pub fn postgres() -> bool {
    matches!(std::env::var("KERNEX_TEST_DATABASE_URL"), Ok(url) if !url.is_empty())
}

/// A fresh, empty database for one server, when the suite runs on PostgreSQL.
pub fn fresh_database() -> Option<Arc<TestDatabase>> {
    let cluster = std::env::var("KERNEX_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    let name = format!("kx_test_{}", uuid_like());
    // On a thread of its own: the caller may be inside a runtime.
    let (c, n) = (cluster.clone(), name.clone());
    let created = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(kernex_server::store::pg_store::scratch_database(&c, &n))
    })
    .join()
    .unwrap();
    let url =
        created.expect("creating a test database (is KERNEX_TEST_DATABASE_URL's cluster up?)");
    Some(Arc::new(TestDatabase { url, cluster, name }))
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{}_{}_{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl TestApp {
    pub fn new() -> Self {
        Self::with(|_| {})
    }

    /// A server whose settings `tweak` adjusts (enrollment and admin tokens are preset).
    pub fn with(tweak: impl FnOnce(&mut ServerSettings)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = ServerSettings::for_data_dir(dir.path());
        settings.admin_token = Some(ADMIN.into());
        settings.enrollment_token = Some(ENROLL.into());
        let database = fresh_database();
        settings.database_url = database.as_ref().map(|d| d.url.clone());
        tweak(&mut settings);
        let state = kernex_server::open(&settings).unwrap();
        let router = kernex_server::router(state.clone());
        let database_url = settings.database_url;
        TestApp {
            dir,
            state,
            router,
            database_url,
            database,
        }
    }

    /// A server on an existing data dir (e.g. one a restore filled), with the usual
    /// enrollment token and no admin token of its own: the store's tokens decide.
    pub fn on_dir(dir: TempDir) -> Self {
        let mut settings = ServerSettings::for_data_dir(dir.path());
        settings.enrollment_token = Some(ENROLL.into());
        let state = kernex_server::open(&settings).unwrap();
        let router = kernex_server::router(state.clone());
        TestApp {
            dir,
            state,
            router,
            database_url: None,
            database: None,
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stop this server and start a new one on the same data dir (as a restart does:
    /// only what the store holds survives). Waits for the old one to release the dir.
    pub async fn restart(self) -> TestApp {
        let TestApp {
            dir,
            state,
            router,
            database_url,
            database,
        } = self;
        state.heartbeats.close().await.unwrap();
        state.store.sync().await.unwrap();
        state.shutdown.cancel();
        drop(router);
        drop(state);
        let mut settings = ServerSettings::for_data_dir(dir.path());
        settings.admin_token = Some(ADMIN.into());
        settings.enrollment_token = Some(ENROLL.into());
        settings.database_url = database_url.clone();
        for _ in 0..400 {
            match kernex_server::open(&settings) {
                Ok(state) => {
                    let router = kernex_server::router(state.clone());
                    return TestApp {
                        dir,
                        state,
                        router,
                        database_url,
                        database,
                    };
                }
                Err(kernex_server::StartError::Locked(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                }
                Err(e) => panic!("restart: {e}"),
            }
        }
        panic!("the old server never released its data dir");
    }

    pub async fn send(&self, req: Request<Body>) -> Resp {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Resp {
            status,
            headers,
            body,
        }
    }

    /// A JSON request (`body` None → no body) with an optional bearer token.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(v) => b
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&v).unwrap()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        self.send(req).await
    }

    /// GET as the admin operator.
    pub async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, Some(ADMIN), None).await
    }

    /// POST JSON as the admin operator.
    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(ADMIN), Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.call(Method::PUT, path, Some(ADMIN), Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Resp {
        self.call(Method::PATCH, path, Some(ADMIN), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.call(Method::DELETE, path, Some(ADMIN), None).await
    }

    /// Send a registration body signed by `key` (raw bytes, so tests can tamper).
    pub async fn register_raw(
        &self,
        body: &[u8],
        signature: Option<&str>,
        enrollment: Option<&str>,
    ) -> Resp {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/devices/register")
            .header("content-type", "application/json");
        if let Some(s) = signature {
            b = b.header(SIGNATURE_HEADER, s);
        }
        if let Some(e) = enrollment {
            b = b.header(ENROLLMENT_HEADER, e);
        }
        self.send(b.body(Body::from(body.to_vec())).unwrap()).await
    }

    /// Register `key` with a fresh, correctly signed body.
    pub async fn register_key(&self, key: &DeviceKey, enrollment: Option<&str>) -> Resp {
        let body = registration_body(key, chrono::Utc::now());
        let sig = key.sign(&body);
        self.register_raw(&body, Some(&sig), enrollment).await
    }

    /// A new accepted device (registered with the enrollment token).
    pub async fn device(&self) -> Device {
        let key = new_key();
        let v = self
            .register_key(&key, Some(ENROLL))
            .await
            .expect(StatusCode::CREATED);
        Device {
            id: v["device_id"].as_str().unwrap().to_owned(),
            token: v["device_token"].as_str().unwrap().to_owned(),
            key,
        }
    }

    /// A new pending device (registered without an enrollment token).
    pub async fn pending_device(&self) -> Device {
        let key = new_key();
        let v = self
            .register_key(&key, None)
            .await
            .expect(StatusCode::CREATED);
        assert_eq!(v["admission"], "pending");
        Device {
            id: v["device_id"].as_str().unwrap().to_owned(),
            token: v["device_token"].as_str().unwrap().to_owned(),
            key,
        }
    }

    /// Heartbeat as `dev` with the given reported state; returns the response.
    pub async fn heartbeat(
        &self,
        dev: &Device,
        current: Option<&str>,
        config_version: Option<u64>,
    ) -> Resp {
        let body = json!({
            "agent_version": "0.1.0", "cpu_pct": 12.5, "memory_mb": 812.0, "status": "idle",
            "current_bundle_version": current, "config_version": config_version, "queued_reports": 0,
        });
        self.call(
            Method::POST,
            &format!("/api/v1/devices/{}/heartbeat", dev.id),
            Some(&dev.token),
            Some(body),
        )
        .await
    }

    /// Upload archive bytes as multipart part `file` (and optionally a `manifest` part).
    pub async fn upload(&self, archive: &[u8], manifest: Option<&str>) -> Resp {
        let (content_type, body) = multipart(archive, manifest);
        let req = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/bundles")
            .header("authorization", format!("Bearer {ADMIN}"))
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap();
        self.send(req).await
    }

    /// Upload a good bundle of `version` and return its info JSON.
    pub async fn bundle(&self, version: &str) -> Value {
        self.upload(&bundle_bytes("app", version), None)
            .await
            .expect(StatusCode::CREATED)
    }

    /// Create a deployment of `version` to `devices`; returns the deployment JSON.
    pub async fn deploy(&self, version: &str, devices: &[&Device]) -> Value {
        let ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
        self.post(
            "/api/v1/deployments",
            json!({"bundle_version": version, "target_device_ids": ids}),
        )
        .await
        .expect(StatusCode::CREATED)
    }

    /// Report a result for `dev` on a deployment.
    pub async fn result(&self, dev: &Device, deployment_id: &str, body: Value) -> Resp {
        self.call(
            Method::POST,
            &format!("/api/v1/deployments/{deployment_id}/result"),
            Some(&dev.token),
            Some(body),
        )
        .await
    }
}

/// A fresh 2048-bit device key (the smallest the server accepts; fast to make).
pub fn new_key() -> DeviceKey {
    DeviceKey::generate(2048).unwrap()
}

/// The registration body a device would send at `at`.
pub fn registration_body(key: &DeviceKey, at: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "public_key": key.public_key_pem().unwrap(),
        "device_type": "jetson-nano",
        "hardware_metadata": {"cpu": "arm64", "ram_mb": 4096},
        "timestamp": at,
    }))
    .unwrap()
}

/// A multipart/form-data body with part `file` (and `manifest` if given).
pub fn multipart(archive: &[u8], manifest: Option<&str>) -> (String, Vec<u8>) {
    let boundary = "kernex-test-boundary-7d1f";
    let mut body = Vec::new();
    if let Some(m) = manifest {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\r\n{m}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b.tar.gz\"\r\nContent-Type: application/gzip\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(archive);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A real bundle (packed from a temp folder with `kernex_common::bundle::pack`).
pub fn bundle_bytes(name: &str, version: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let manifest = json!({
        "name": name, "version": version,
        "deploy": {"script": "deploy.sh", "timeout_s": 60},
        "rollback": {"script": "rollback.sh"},
        "health": {"script": "health.sh"},
    });
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    std::fs::write(dir.path().join("deploy.sh"), "#!/bin/sh\necho deploy\n").unwrap();
    std::fs::write(dir.path().join("rollback.sh"), "#!/bin/sh\necho rollback\n").unwrap();
    std::fs::write(dir.path().join("health.sh"), "#!/bin/sh\nexit 0\n").unwrap();
    let mut out = Vec::new();
    kernex_common::bundle::pack(dir.path(), &mut out).unwrap();
    out
}

/// Deterministic pseudo-random bytes (for payloads that must not compress away).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
