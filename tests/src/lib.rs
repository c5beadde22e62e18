//! Support for end-to-end tests that run the real Kernex binaries over loopback.
//!
//! [`ServerProcess`] starts `kernex-server` on a temp data dir and port 0, learns the
//! bound address from its log line (no sleeping, no port guessing), and can be killed
//! with SIGKILL to test crash durability. [`agent`] drives `kernex-agent` the same way.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// A TCP proxy that breaks connections on purpose (stall, reset, truncate, black-hole,
/// slow-drip) between agents and the server.
pub mod fault_proxy;

/// `kernex-agent` state dirs, one-shot commands and daemons, bundles and polling.
pub mod agent;
/// A fleet built over HTTP, and every answer an operator can read about it.
pub mod fleet;
/// An operator's HTTP calls (one token, JSON in and out).
pub mod operator;
/// A PostgreSQL cluster and fresh databases for the scale-out tests (SPEC §8).
pub mod postgres;
/// The power-loss shim: a durable image of a data dir, kept by an `LD_PRELOAD` library.
pub mod power_loss;
/// An S3-compatible endpoint (moto) for the `--blob-url` tests (SPEC §8).
pub mod s3;

/// Path of a workspace binary. `cargo test --workspace` builds every binary before the
/// tests run, so it is normally used as is; when it is missing or older than its sources
/// (someone ran only `cargo test -p kernex-tests` after an edit), it is rebuilt first, so
/// a test never runs a stale program.
pub fn bin(name: &str) -> Result<PathBuf> {
    static CHECKED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test-binary> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no target dir")?;
    let path = dir.join(name);
    let mut checked = CHECKED
        .lock()
        .map_err(|_| anyhow::anyhow!("build lock poisoned"))?;
    if !checked.iter().any(|b| b == name) {
        let crate_dir = workspace_root().join(name.trim_start_matches("kernex-"));
        let sources = [crate_dir.join("src"), workspace_root().join("common/src")];
        let built = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let stale = match built {
            None => true,
            Some(t) => sources.iter().any(|d| newer_than(d, t)),
        };
        if stale {
            let out = Command::new(env!("CARGO"))
                .args(["build", "--quiet", "-p", name, "--bin", name])
                .current_dir(workspace_root())
                .output()?;
            if !out.status.success() {
                bail!(
                    "cargo build --bin {name} failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        checked.push(name.to_owned());
    }
    Ok(path)
}

/// Is any file below `dir` modified after `t`?
fn newer_than(dir: &Path, t: std::time::SystemTime) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            newer_than(&p, t)
        } else {
            e.metadata().and_then(|m| m.modified()).is_ok_and(|m| m > t)
        }
    })
}

/// The workspace root (for fixtures).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A running `kernex-server`.
pub struct ServerProcess {
    child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    /// Everything it logged so far is kept draining into this (for failure messages).
    logs: mpsc::Receiver<String>,
}

impl ServerProcess {
    /// Start on `data_dir` with the given admin and enrollment tokens.
    pub fn start(data_dir: &Path, admin: &str, enroll: &str) -> Result<Self> {
        Self::start_with(data_dir, admin, enroll, &[])
    }

    /// Start with extra command-line arguments.
    pub fn start_with(data_dir: &Path, admin: &str, enroll: &str, extra: &[&str]) -> Result<Self> {
        Self::spawn("127.0.0.1:0", data_dir, admin, enroll, extra, &[])
    }

    /// Start with extra command-line arguments and environment variables.
    pub fn start_with_args_env(
        data_dir: &Path,
        admin: &str,
        enroll: &str,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Result<Self> {
        Self::spawn("127.0.0.1:0", data_dir, admin, enroll, extra, env)
    }

    /// Start with extra environment variables (e.g. an `LD_PRELOAD`).
    pub fn start_with_env(
        data_dir: &Path,
        admin: &str,
        enroll: &str,
        env: &[(String, String)],
    ) -> Result<Self> {
        Self::spawn("127.0.0.1:0", data_dir, admin, enroll, &[], env)
    }

    /// Start listening on `listen` (e.g. the address of a server that was killed, so its
    /// devices find it again after an outage).
    pub fn start_on(data_dir: &Path, admin: &str, enroll: &str, listen: &str) -> Result<Self> {
        Self::spawn(listen, data_dir, admin, enroll, &[], &[])
    }

    /// Start again on the data dir and address of a server that was stopped (a restart
    /// after a crash). The port was free a moment ago; the bind is retried briefly in case
    /// it races the close.
    pub async fn restart_on(
        data_dir: &Path,
        admin: &str,
        enroll: &str,
        listen: &str,
    ) -> Result<Self> {
        Self::restart_on_with_env(data_dir, admin, enroll, listen, &[]).await
    }

    /// [`Self::restart_on`] with extra environment variables (e.g. an `LD_PRELOAD`).
    pub async fn restart_on_with_env(
        data_dir: &Path,
        admin: &str,
        enroll: &str,
        listen: &str,
        env: &[(String, String)],
    ) -> Result<Self> {
        let mut last = None;
        for _ in 0..40 {
            match Self::spawn(listen, data_dir, admin, enroll, &[], env) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
            .with_context(|| format!("server did not restart on {listen}"))
    }

    fn spawn(
        listen: &str,
        data_dir: &Path,
        admin: &str,
        enroll: &str,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Result<Self> {
        let mut child = Command::new(bin("kernex-server")?)
            .args(["--listen", listen, "--log-level", "info"])
            .args(extra)
            .arg("--data-dir")
            .arg(data_dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("KERNEX_ADMIN_TOKEN", admin)
            .env("KERNEX_ENROLLMENT_TOKEN", enroll)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr)
                .lines()
                .map_while(std::result::Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    if let Some(addr) = line
                        .split("addr=")
                        .nth(1)
                        .filter(|_| line.contains("listening"))
                    {
                        let addr = addr
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned();
                        return Ok(ServerProcess {
                            child,
                            addr,
                            data_dir: data_dir.to_path_buf(),
                            logs: rx,
                        });
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    bail!("server did not start; it said:\n{}", seen.join("\n"));
                }
            }
        }
    }

    /// The server's process id (for /proc measurements).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGKILL: no clean shutdown, no final flush.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM and wait (up to `limit`) for the exit; returns whether it exited with
    /// status 0. An error if it is still running after `limit`.
    pub fn terminate_within(mut self, limit: Duration) -> Result<bool> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            if std::time::Instant::now() > deadline {
                bail!("server still running {limit:?} after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited with status 0.
    pub fn terminate(self) -> Result<bool> {
        self.terminate_within(Duration::from_secs(60))
    }

    /// Log lines received so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.try_iter().collect()
    }
}

/// For a failing test: the last 200 lines a server logged — `earlier` (kept from
/// servers killed during the test) followed by what `current` logged since.
pub fn eprint_server_log(earlier: &std::sync::Mutex<Vec<String>>, current: Option<&ServerProcess>) {
    let mut lines = earlier.lock().map(|l| l.clone()).unwrap_or_default();
    if let Some(s) = current {
        lines.extend(s.logs());
    }
    let from = lines.len().saturating_sub(200);
    eprintln!("---- server log (last {} lines) ----", lines.len() - from);
    for l in &lines[from..] {
        eprintln!("{l}");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reqwest client builder with rustls on the `ring` provider (the only one the workspace
/// compiles in; installed once per process).
pub fn client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// A default HTTP client (see [`client_builder`]).
pub fn client() -> reqwest::Client {
    client_builder()
        .build()
        .expect("a default reqwest client builds")
}
