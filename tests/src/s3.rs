//! An S3-compatible endpoint for the blob-store tests (SPEC §8 `--blob-url`): moto's
//! server from PyPI, started once per test process by the project's own
//! `scripts/s3-server.sh` (which installs it into `target/moto-venv` on first use), and
//! stopped when the process exits: the script serves until its stdin pipe closes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The access key the servers under test use.
const ACCESS_KEY: &str = "kernex-test";

struct Server {
    endpoint: String,
    /// Held so the pipe to the script's stdin stays open while this process lives.
    _child: Mutex<Child>,
}

/// The endpoint (`http://127.0.0.1:PORT`), or why there is none.
pub fn endpoint() -> std::result::Result<String, String> {
    static SERVER: OnceLock<std::result::Result<Server, String>> = OnceLock::new();
    SERVER
        .get_or_init(|| start().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map(|s| s.endpoint.clone())
        .map_err(Clone::clone)
}

fn start() -> Result<Server> {
    let root = crate::workspace_root();
    // Install first (it may take a while, once), then serve.
    let installed = Command::new("bash")
        .arg(root.join("scripts/s3-server.sh"))
        .arg("install")
        .output()
        .context("running scripts/s3-server.sh install")?;
    if !installed.status.success() {
        bail!(
            "scripts/s3-server.sh install failed: {}",
            String::from_utf8_lossy(&installed.stderr).trim()
        );
    }
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new("bash")
        .arg(root.join("scripts/s3-server.sh"))
        .args(["serve", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting scripts/s3-server.sh serve")?;
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    while TcpStream::connect(&addr).is_err() {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("moto_server did not listen on {addr} within 60 s (see target/moto-{port}.log)");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Server {
        endpoint: format!("http://{addr}"),
        _child: Mutex::new(child),
    })
}

/// A fresh bucket on the endpoint; its name.
pub fn fresh_bucket(endpoint: &str) -> Result<String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "kx-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let status = raw_request(endpoint, "PUT", &format!("/{name}"))?;
    if status != 200 {
        bail!("creating bucket {name}: HTTP {status}");
    }
    Ok(name)
}

/// The status of a request made as the test's access key, e.g. a `HEAD` of
/// `/bucket/key` to see whether an object is there. moto checks who asks, not the
/// signature, so an `Authorization` header naming the key is enough (an anonymous
/// request is refused with 403 like a real bucket's).
pub fn raw_request(endpoint: &str, method: &str, path: &str) -> Result<u16> {
    let addr = endpoint.trim_start_matches("http://");
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20260101/us-east-1/s3/aws4_request, \
         SignedHeaders=host, Signature=0\r\n\r\n"
    )?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{method} {path}: no status in {reply:?}"))
}

/// What a server needs in its environment to reach the endpoint.
pub fn env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", "kernex-test-secret"),
        ("AWS_REGION", "us-east-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}
