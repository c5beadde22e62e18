//! Driving the real `kernex-agent` binary: an [`Agent`] is one device (a state dir, the
//! server it talks to, the environment its scripts see) whose subcommands a test runs;
//! [`AgentDaemon`] is a running `kernex-agent run`. [`eventually`] polls with a deadline,
//! so tests wait for facts rather than for time. Bundle builders make fixture archives and
//! test-only bundles whose deploy script blocks on a gate file the test opens.
//!
//! ```no_run
//! # async fn demo(server: &kernex_tests::ServerProcess) {
//! use kernex_tests::agent::Agent;
//! let dir = tempfile::tempdir().unwrap();
//! let agent = Agent::new(dir.path(), &server.url("")).enrollment("enroll");
//! let out = agent.once().await;
//! assert!(out.status.success());
//! # }
//! ```

use std::ffi::OsString;
use std::fmt::Write as _;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::bin;

/// Key size for test devices: the default 4096 bits is slow to generate on small machines.
pub const TEST_KEY_BITS: &str = "2048";

/// The longest a one-shot agent command may take before the test gives up on it.
const COMMAND_LIMIT: Duration = Duration::from_secs(180);

/// Environment variables of the agent that a test's own environment must not leak in.
const AGENT_ENV: [&str; 6] = [
    "KERNEX_SERVER",
    "KERNEX_STATE_DIR",
    "KERNEX_ENROLLMENT_TOKEN",
    "KERNEX_DEVICE_TYPE",
    "KERNEX_KEY_BITS",
    "KERNEX_CA_CERT",
];

/// One device: its state dir, its server and the environment its scripts inherit.
#[derive(Debug, Clone)]
pub struct Agent {
    /// Holds `state/` and the daemons' captured stdout/stderr.
    root: PathBuf,
    pub state_dir: PathBuf,
    server: String,
    enrollment: Option<String>,
    env: Vec<(String, OsString)>,
}

impl Agent {
    /// A device whose state lives in `root/state`, talking to `server` (a base URL).
    pub fn new(root: &Path, server: &str) -> Self {
        Agent {
            root: root.to_path_buf(),
            state_dir: root.join("state"),
            server: server.trim_end_matches('/').to_owned(),
            enrollment: None,
            env: Vec::new(),
        }
    }

    /// Present this enrollment token when registering (so the device is `accepted`).
    #[must_use]
    pub fn enrollment(mut self, token: &str) -> Self {
        self.enrollment = Some(token.to_owned());
        self
    }

    /// Set an environment variable for every agent process (and so for its scripts).
    #[must_use]
    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    /// The agent command with the global flags and environment set.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("kernex-agent").expect("the kernex-agent binary builds"));
        for var in AGENT_ENV {
            cmd.env_remove(var);
        }
        cmd.args(args)
            .arg("--server")
            .arg(&self.server)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        // Scripts see only an allow-listed environment; the variables a test sets for
        // its scripts are passed through by name.
        let names: Vec<&str> = self
            .env
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !k.starts_with("KERNEX_"))
            .collect();
        if !names.is_empty() {
            cmd.env("KERNEX_SCRIPT_ENV", names.join(","));
        }
        cmd
    }

    /// Run a one-shot subcommand to completion (bounded by a generous limit).
    pub async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::from(self.command(args));
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        match tokio::time::timeout(COMMAND_LIMIT, cmd.output()).await {
            Ok(out) => out.expect("kernex-agent starts"),
            Err(_) => panic!(
                "`kernex-agent {}` still running after {COMMAND_LIMIT:?}\n{}",
                args.join(" "),
                self.logs()
            ),
        }
    }

    /// The arguments of `run` for this device (enrollment, test key size) plus `extra`.
    fn run_args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["run", "--key-bits", TEST_KEY_BITS];
        if let Some(t) = &self.enrollment {
            args.extend(["--enrollment-token", t.as_str()]);
        }
        args.extend_from_slice(extra);
        args
    }

    /// `kernex-agent run --once` (registering first if needed).
    pub async fn once(&self) -> Output {
        self.run(&self.run_args(&["--once"])).await
    }

    /// `run --once`, which must exit 0 (the server answered); panics with the logs if not.
    pub async fn once_ok(&self) {
        let out = self.once().await;
        assert!(
            out.status.success(),
            "`run --once` failed with {}\n{}\n{}",
            out.status,
            describe(&out),
            self.logs()
        );
    }

    /// `status --json` plus `extra` flags: the parsed report and how long it took. Any
    /// verdict is accepted (0 healthy, 1 unhealthy, 3 not registered); the exit code is
    /// in the report's `exit_code`, checked against the process's own.
    pub async fn status(&self, extra: &[&str]) -> (Value, Duration) {
        let started = Instant::now();
        let (code, report) = self.status_code(extra).await;
        let took = started.elapsed();
        assert!(
            matches!(code, Some(0 | 1 | 3)),
            "`status` could not tell ({code:?}): {report}\n{}",
            self.logs()
        );
        (report, took)
    }

    /// `status --json` plus `extra` flags: the exit code and the parsed report (whose
    /// `exit_code` must match).
    pub async fn status_code(&self, extra: &[&str]) -> (Option<i32>, Value) {
        let mut args = vec!["status", "--json"];
        args.extend_from_slice(extra);
        let out = self.run(&args).await;
        let report = parse_stdout(&out);
        assert_eq!(
            report["exit_code"].as_i64().map(|c| c as i32),
            out.status.code(),
            "`status --json`'s exit_code differs from its exit status: {}",
            describe(&out)
        );
        (out.status.code(), report)
    }

    /// `status --json --offline` (no probe of the server).
    pub async fn status_offline(&self) -> Value {
        self.status(&["--offline"]).await.0
    }

    /// `history --json`: executed deployments, newest first.
    pub async fn history(&self) -> Vec<Value> {
        let out = self.run(&["history", "--json"]).await;
        assert!(
            out.status.success(),
            "`history` failed: {}\n{}",
            describe(&out),
            self.logs()
        );
        match parse_stdout(&out) {
            Value::Array(items) => items,
            other => panic!("`history --json` is not an array: {other}"),
        }
    }

    /// `flush`: the exit status.
    pub async fn flush(&self) -> ExitStatus {
        self.run(&["flush"]).await.status
    }

    /// Start `kernex-agent run` (the daemon); its stdout/stderr go to files next to the
    /// state dir, which [`Agent::logs`] includes.
    pub fn spawn_daemon(&self) -> Result<AgentDaemon> {
        std::fs::create_dir_all(&self.root)?;
        let n = std::fs::read_dir(&self.root)?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("daemon-"))
            .count();
        let out = std::fs::File::create(self.root.join(format!("daemon-{n}.out")))?;
        let err = out.try_clone()?;
        let child = self
            .command(&self.run_args(&[]))
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting the agent daemon")?;
        Ok(AgentDaemon { child })
    }

    /// A file of the state dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.state_dir.join(rel)
    }

    /// A JSON file of the state dir (`device.json`, `state.json`).
    pub fn read_json(&self, rel: &str) -> Value {
        let path = self.path(rel);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}\n{}", path.display(), self.logs()));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {text}", path.display()))
    }

    /// The device id from `device.json`.
    pub fn device_id(&self) -> String {
        self.read_json("device.json")["device_id"]
            .as_str()
            .unwrap_or_else(|| panic!("device.json has no device_id\n{}", self.logs()))
            .to_owned()
    }

    /// The unsent reports: `queue/*.json` (not `queue/rejected/`).
    pub fn queued(&self) -> Vec<Value> {
        let Ok(entries) = std::fs::read_dir(self.path("queue")) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .filter_map(|t| serde_json::from_str(&t).ok())
            .collect()
    }

    /// Everything the agent logged (the files under `logs/`) and the daemons' captured
    /// output, for failure messages: the tail of each file.
    pub fn logs(&self) -> String {
        let mut files = Vec::new();
        for dir in [self.state_dir.join("logs"), self.root.clone()] {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                files.extend(
                    entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| p.is_file())
                        .filter(|p| dir != self.root || p.to_string_lossy().ends_with(".out")),
                );
            }
        }
        files.sort();
        let mut text = format!("---- agent logs ({}) ----\n", self.state_dir.display());
        for f in files {
            let body = std::fs::read_to_string(&f).unwrap_or_default();
            let lines: Vec<&str> = body.lines().collect();
            let from = lines.len().saturating_sub(300);
            let _ = writeln!(text, "== {} ({} lines)", f.display(), lines.len());
            for l in &lines[from..] {
                let _ = writeln!(text, "{l}");
            }
        }
        text
    }
}

/// A running `kernex-agent run`; killed when dropped.
#[derive(Debug)]
pub struct AgentDaemon {
    child: Child,
}

impl AgentDaemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to finish, flush or clean up.
    pub fn sigkill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Send SIGTERM (without waiting).
    pub fn sigterm(&self) -> Result<()> {
        signal("TERM", self.child.id())
    }

    /// Has it exited? (reaps it if so)
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Wait up to `limit` for the exit; `None` if it is still running then.
    pub async fn wait_within(&mut self, limit: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for AgentDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kill -SIG pid` (no libc in this crate; `-` before a pid means its process group).
pub fn signal(sig: &str, pid: impl std::fmt::Display) -> Result<()> {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    Ok(())
}

/// Is `pid` a live (not zombie) process whose command line contains `needle`?
pub fn process_alive(pid: u32, needle: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state letter follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    matches!(state, Some(s) if s != "Z" && s != "X")
        && String::from_utf8_lossy(&cmdline).contains(needle)
}

/// Poll `probe` (every 200 ms) until it yields a value; panics naming `what` after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait until `path` exists and return its contents.
pub async fn wait_for_file(path: &Path, limit: Duration) -> String {
    eventually(&format!("{} to appear", path.display()), limit, || async {
        std::fs::read_to_string(path).ok()
    })
    .await
}

/// Stdout and stderr of a finished command, for failure messages.
pub fn describe(out: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn parse_stdout(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("output is not JSON ({e}): {}", describe(out)))
}

/// Pack a bundle source folder.
pub fn pack_dir(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    kernex_common::bundle::pack(dir, &mut out)
        .unwrap_or_else(|e| panic!("packing {}: {e}", dir.display()));
    out
}

/// A fixture bundle from `fixtures/bundles/<name>`, packed.
pub fn fixture_bundle(name: &str) -> Vec<u8> {
    pack_dir(&crate::workspace_root().join("fixtures/bundles").join(name))
}

/// A bundle named `e2e` at `version` made of the given executable scripts
/// (`deploy.sh` must be among them; `rollback.sh` and `health.sh` are named in the
/// manifest when present).
pub fn script_bundle(version: &str, scripts: &[(&str, &str)]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut manifest = json!({
        "name": "e2e",
        "version": version,
        "deploy": {"script": "deploy.sh", "timeout_s": 600},
    });
    for (name, body) in scripts {
        let path = dir.path().join(name);
        std::fs::write(&path, body).expect("writing a script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
        match *name {
            "rollback.sh" => manifest["rollback"] = json!({"script": name}),
            "health.sh" => manifest["health"] = json!({"script": name, "timeout_s": 60}),
            _ => {}
        }
    }
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string())
        .expect("writing the manifest");
    pack_dir(dir.path())
}

/// Environment variable naming the file a [`gated_bundle`]'s deploy script creates (with
/// its pid inside) once it runs.
pub const STARTED_ENV: &str = "KX_E2E_STARTED";
/// Environment variable naming the file whose existence lets the script finish.
pub const GATE_ENV: &str = "KX_E2E_GATE";
/// Environment variable naming a file each deploy of [`gated_bundle`] and [`fast_bundle`]
/// appends `<deployment id> <version>` to (so a test can count executions).
pub const RUNS_ENV: &str = "KX_E2E_RUNS";

const RECORD_RUN: &str = r#"if [ -n "${KX_E2E_RUNS:-}" ]; then
  echo "${KERNEX_DEPLOYMENT_ID} ${KERNEX_BUNDLE_VERSION}" >> "${KX_E2E_RUNS}"
fi
"#;

const ROLLBACK: &str = r#"#!/bin/sh
set -eu
echo "rolling back to ${KERNEX_BUNDLE_VERSION}"
mkdir -p "${KERNEX_BUNDLE_DIR}/run"
echo "${KERNEX_BUNDLE_VERSION}" > "${KERNEX_BUNDLE_DIR}/run/version"
"#;

/// A bundle whose deploy script says it started (writing its pid to `$KX_E2E_STARTED`),
/// then waits for `$KX_E2E_GATE` to exist (giving up after about three minutes so it
/// never lingers), then installs like the fixtures do.
pub fn gated_bundle(version: &str) -> Vec<u8> {
    let deploy = format!(
        r#"#!/bin/sh
set -eu
{RECORD_RUN}echo "deploying ${{KERNEX_BUNDLE_VERSION}} (previous: ${{KERNEX_PREVIOUS_VERSION:-none}})"
echo $$ > "${{KX_E2E_STARTED}}.tmp"
mv "${{KX_E2E_STARTED}}.tmp" "${{KX_E2E_STARTED}}"
i=0
while [ ! -f "${{KX_E2E_GATE}}" ]; do
  i=$((i + 1))
  if [ "$i" -gt 1800 ]; then
    echo "the gate never opened" >&2
    exit 9
  fi
  sleep 0.1
done
mkdir -p "${{KERNEX_BUNDLE_DIR}}/run"
echo "${{KERNEX_BUNDLE_VERSION}}" > "${{KERNEX_BUNDLE_DIR}}/run/version"
echo "installed"
"#
    );
    script_bundle(
        version,
        &[("deploy.sh", &deploy), ("rollback.sh", ROLLBACK)],
    )
}

/// A bundle whose deploy script installs at once (recording the run in `$KX_E2E_RUNS`).
pub fn fast_bundle(version: &str) -> Vec<u8> {
    let deploy = format!(
        r#"#!/bin/sh
set -eu
{RECORD_RUN}mkdir -p "${{KERNEX_BUNDLE_DIR}}/run"
echo "${{KERNEX_BUNDLE_VERSION}}" > "${{KERNEX_BUNDLE_DIR}}/run/version"
echo "installed ${{KERNEX_BUNDLE_VERSION}}"
"#
    );
    script_bundle(
        version,
        &[("deploy.sh", &deploy), ("rollback.sh", ROLLBACK)],
    )
}
