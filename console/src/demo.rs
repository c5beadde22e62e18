//! `kernex-console demo`: a live fleet on a throw-away data dir, in one command.
//!
//! It starts a real `kernex-server`, several real `kernex-agent` processes (each with its
//! own state dir), packs and uploads the fixture bundles, rolls the first good version out
//! so there is history to roll back to, and opens the console. Quitting stops every
//! process it started and removes the data dir (unless `--keep`).
//!
//! The server and agent binaries are taken from next to this one; when this binary was
//! built from the workspace (`cargo run -p kernex-console -- demo`), they are built first
//! with the same profile, so the Rust toolchain is all a new machine needs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kernex_common::api::{Admission, ConfigUpdate, CreateDeployment, RolloutPolicy};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::api::{Api, DeviceQuery};
use crate::cli::{ConnArgs, DemoArgs};

/// Device types the demo agents report, for a fleet that looks like one.
const TYPES: [&str; 4] = ["jetson-nano", "rpi4", "gateway", "kiosk"];
/// Polling interval of demo devices: fast enough to watch a deployment happen.
const DEMO_POLL_S: u64 = 5;
const ENROLL: &str = "demo-enrollment";

type DemoResult<T> = Result<T, String>;

pub async fn run(conn: &ConnArgs, args: &DemoArgs) -> u8 {
    let dir = match tempfile::Builder::new().prefix("kernex-demo-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("kernex-console demo: cannot create a data dir: {e}");
            return 2;
        }
    };
    let mut fleet = Fleet::default();
    // Ctrl-C (or SIGTERM/SIGHUP) while it starts up stops what was started so far.
    let started = tokio::select! {
        r = start(dir.path(), args, &mut fleet) => Some(r),
        _ = wait_for_interrupt() => None,
    };
    let code = match started {
        None => 130,
        Some(Ok(api)) if args.headless => {
            println!("demo fleet is up: {}", api.server());
            println!("  export KERNEX_SERVER={}", api.server());
            println!(
                "  export KERNEX_TOKEN=$(cat {}/server/admin.token)",
                dir.path().display()
            );
            println!("Ctrl-C stops it.");
            wait_for_interrupt().await;
            0
        }
        Some(Ok(api)) => {
            let log = conn
                .log_file
                .clone()
                .unwrap_or_else(|| dir.path().join("console.log"));
            crate::app::run_tui_with(api, Some(&log)).await
        }
        Some(Err(e)) => {
            say(&format!("kernex-console demo: {e}"));
            2
        }
    };
    // After the TUI, stderr may be a terminal that hung up: never panic writing to it.
    say("stopping the demo fleet…");
    fleet.stop().await;
    // Keep the logs of a run that went wrong, where the message above pointed.
    if args.keep || code != 0 {
        let kept = dir.keep();
        say(&format!("demo data and logs kept in {}", kept.display()));
    }
    code
}

fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

async fn wait_for_interrupt() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
}

/// Every process the demo started; stopped in reverse order.
#[derive(Default)]
struct Fleet {
    children: Vec<(String, Child)>,
}

impl Fleet {
    /// SIGTERM everyone (agents finish what they are doing), then SIGKILL stragglers.
    async fn stop(&mut self) {
        for (_, child) in self.children.iter().rev() {
            if let Some(pid) = child
                .id()
                .and_then(|p| rustix::process::Pid::from_raw(p as i32))
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        for (name, child) in self.children.iter_mut().rev() {
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                tracing::warn!("{name} did not stop within 5 s; killing it");
                let _ = child.kill().await;
            }
        }
        self.children.clear();
    }
}

async fn start(dir: &Path, args: &DemoArgs, fleet: &mut Fleet) -> DemoResult<Api> {
    let bins = binaries().await?;
    eprintln!(
        "starting kernex-server on a throw-away data dir {}",
        dir.display()
    );
    let (child, url) = start_server(&bins.server, dir, &args.listen).await?;
    fleet.children.push(("kernex-server".into(), child));
    // The server wrote its operator token on first start, as on a real host.
    let token_file = dir.join("server").join("admin.token");
    let token = std::fs::read_to_string(&token_file)
        .map_err(|e| format!("cannot read {}: {e}", token_file.display()))?;
    let api = Api::new(&url, token.trim(), None).map_err(|e| e.to_string())?;

    eprintln!(
        "starting {} agents (+1 waiting for acceptance)…",
        args.agents
    );
    // One registration round first, so each device can get a fast polling interval
    // before its daemon's first heartbeat picks it up.
    let mut first = Vec::new();
    for i in 0..args.agents {
        let mut cmd = agent_cmd(&bins.agent, dir, i, &url);
        cmd.args(["run", "--once"])
            .env("KERNEX_ENROLLMENT_TOKEN", ENROLL);
        first.push(async move { cmd.status().await });
    }
    for (i, r) in futures_util::future::join_all(first)
        .await
        .into_iter()
        .enumerate()
    {
        match r {
            Ok(s) if s.success() => {}
            Ok(s) => {
                return Err(format!(
                    "agent {i} could not register ({s}); see {}",
                    dir.join(format!("agent-{i}.log")).display()
                ));
            }
            Err(e) => return Err(format!("cannot run {}: {e}", bins.agent.display())),
        }
    }
    let devices = api
        .all_devices(&DeviceQuery {
            admission: Some(Admission::Accepted.as_str().into()),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    for (i, d) in devices.iter().enumerate() {
        let update = ConfigUpdate {
            polling_interval: Some(DEMO_POLL_S),
            ..Default::default()
        };
        api.put_config(&d.device_id, &update)
            .await
            .map_err(|e| e.to_string())?;
        let mut tags = vec![
            "demo".to_owned(),
            format!("site:{}", if i % 2 == 0 { "berlin" } else { "lisbon" }),
        ];
        if i == 0 {
            tags.push("canary".into());
        }
        api.set_tags(&d.device_id, &tags)
            .await
            .map_err(|e| e.to_string())?;
    }
    for i in 0..args.agents {
        let mut cmd = agent_cmd(&bins.agent, dir, i, &url);
        // The token goes in the environment, where `ps` does not show it.
        cmd.arg("run").env("KERNEX_ENROLLMENT_TOKEN", ENROLL);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start an agent: {e}"))?;
        fleet.children.push((format!("agent-{i}"), child));
    }
    // One more, without the enrollment token: it waits as a pending device (press `a`).
    let mut cmd = agent_cmd(&bins.agent, dir, args.agents, &url);
    cmd.arg("run");
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start an agent: {e}"))?;
    fleet
        .children
        .push((format!("agent-{}", args.agents), child));
    // Tag it once it registers, in the background (the console opens meanwhile). Its
    // polling interval stays the default 60 s: a pending device gets no commands, so a
    // faster configured interval would only make the server call it offline. After
    // accepting it, `c` sets one — part of the tour.
    tokio::spawn(tag_pending(api.clone()));

    eprintln!("uploading the fixture bundles…");
    let fixtures = fixtures_dir()
        .ok_or("cannot find fixtures/bundles (run the demo from the Kernex workspace)")?;
    let packed = dir.join("packed");
    std::fs::create_dir_all(&packed).map_err(|e| e.to_string())?;
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .map_err(|e| format!("cannot read {}: {e}", fixtures.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("manifest.json").is_file())
        .collect();
    // Pre-release fixtures (the broken and unhealthy ones) go up first, so the newest
    // bundle — where the deploy picker starts — is a good one.
    let pre_release = |p: &PathBuf| {
        std::fs::read(p.join("manifest.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|m| m["version"].as_str().map(|v| v.contains('-')))
            .unwrap_or(false)
    };
    sources.sort_by_key(|p| (!pre_release(p), p.clone()));
    let mut first_version = None;
    for src in &sources {
        let (src, out) = (src.clone(), packed.clone());
        let (file, manifest) = tokio::task::spawn_blocking(move || {
            crate::ops::write_archive(&src, &out, |m| out.join(crate::ops::default_name(m)))
        })
        .await
        .map_err(|e| format!("packing failed: {e}"))?
        .map_err(|e| e.to_string())?;
        api.push_bundle(&file, |_| {})
            .await
            .map_err(|e| e.to_string())?;
        if !manifest.version.contains('-') {
            first_version.get_or_insert(manifest.version);
        }
    }
    // Roll the first version out so devices run something and have history to roll
    // back to once the operator deploys a newer one — as a canary rollout (SPEC §6): the
    // `canary` device first; once it has stayed healthy for two polls, the rest. Watch it
    // in Deployments (Tab): the gate line and the waves.
    if let Some(version) = first_version {
        eprintln!("rolling {version} out: the canary first, then the rest…");
        api.create_deployment(&CreateDeployment {
            bundle_version: Some(version),
            target_tags: vec!["demo".into()],
            rollout: Some(RolloutPolicy {
                waves: vec![1, 100],
                first_tag: Some("canary".into()),
                soak_seconds: 2 * DEMO_POLL_S,
                max_failures: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    }
    Ok(api)
}

/// Wait (up to a minute) for the pending demo device, then tag it. Best effort.
async fn tag_pending(api: Api) {
    let query = DeviceQuery {
        admission: Some(Admission::Pending.as_str().into()),
        ..Default::default()
    };
    for _ in 0..120 {
        if let Some(d) = api
            .devices(&query)
            .await
            .ok()
            .and_then(|p| p.into_iter().next())
        {
            let _ = api.set_tags(&d.device_id, &["lab".to_owned()]).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn agent_cmd(bin: &Path, dir: &Path, i: usize, url: &str) -> Command {
    let state = dir.join(format!("agent-{i}"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("agent-{i}.log")));
    let mut cmd = Command::new(bin);
    cmd.arg("--server")
        .arg(url)
        .arg("--state-dir")
        .arg(&state)
        .env("KERNEX_KEY_BITS", "2048")
        .env("KERNEX_DEVICE_TYPE", TYPES[i % TYPES.len()])
        .env_remove("KERNEX_ENROLLMENT_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    match log {
        Ok(f) => cmd.stderr(f),
        Err(_) => cmd.stderr(Stdio::null()),
    };
    cmd
}

async fn start_server(bin: &Path, dir: &Path, listen: &str) -> DemoResult<(Child, String)> {
    let mut child = Command::new(bin)
        .args(["--listen", listen, "--log-level", "info"])
        .arg("--data-dir")
        .arg(dir.join("server"))
        .env_remove("KERNEX_ADMIN_TOKEN")
        .env("KERNEX_ENROLLMENT_TOKEN", ENROLL)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stderr = child.stderr.take().ok_or("no server stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut log = tokio::fs::File::create(dir.join("server.log"))
        .await
        .map_err(|e| e.to_string())?;
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = log.write_all(format!("{line}\n").as_bytes()).await;
            if line.contains("listening")
                && let Some(addr) = line.split("addr=").nth(1)
            {
                return Some(
                    addr.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
        None
    })
    .await;
    let addr = match found {
        Ok(Some(a)) => a,
        _ => {
            return Err(format!(
                "kernex-server did not start; see {}",
                dir.join("server.log").display()
            ));
        }
    };
    // Keep copying the server's log to its file.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = log.write_all(format!("{line}\n").as_bytes()).await;
        }
    });
    Ok((child, format!("http://{addr}")))
}

struct Binaries {
    server: PathBuf,
    agent: PathBuf,
}

/// `kernex-server` and `kernex-agent` next to this binary, built first when this binary
/// came from the workspace.
async fn binaries() -> DemoResult<Binaries> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe
        .parent()
        .ok_or("cannot tell where this binary lives")?
        .to_path_buf();
    let bins = Binaries {
        server: dir.join("kernex-server"),
        agent: dir.join("kernex-agent"),
    };
    if let Some(ws) = workspace_dir() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(set_by_cargo_run) {
                cmd.env_remove(&key);
            }
        }
        cmd.current_dir(&ws).args([
            "build",
            "--quiet",
            "-p",
            "kernex-server",
            "-p",
            "kernex-agent",
        ]);
        // The profile this binary was built with is the name of its folder (`debug` is
        // the `dev` profile), so the nested build reuses the same artifacts.
        match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some(profile) => {
                cmd.args(["--profile", profile]);
            }
        }
        eprintln!("building kernex-server and kernex-agent (first time only takes a while)…");
        match cmd.status().await {
            Ok(s) if s.success() => {}
            Ok(s) => return Err(format!("cargo build failed ({s})")),
            // No cargo here: use whatever binaries are already in place.
            Err(e) => tracing::warn!("cannot run cargo: {e}"),
        }
    }
    for b in [&bins.server, &bins.agent] {
        if !b.is_file() {
            return Err(format!(
                "{} is missing: build the workspace first (cargo build --release --workspace)",
                b.display()
            ));
        }
    }
    Ok(bins)
}

/// Variables `cargo run` sets for the program it runs (SPEC of cargo's "environment
/// variables Cargo sets for crates"). Passed on to the nested `cargo build` they read
/// as a changed environment: ring's build script watches `CARGO_PKG_NAME`,
/// `CARGO_MANIFEST_DIR` and friends (`rerun-if-env-changed`), so it ran again and ring,
/// rustls, reqwest, the server and the agent recompiled on every demo start. `CARGO`
/// itself stays (the toolchain to use), and so do the user's own settings
/// (`CARGO_HOME`, `CARGO_TARGET_DIR`, `CARGO_BUILD_*`, `RUSTFLAGS`, …), which the outer
/// build saw too.
fn set_by_cargo_run(key: &str) -> bool {
    key.starts_with("CARGO_PKG_")
        || key.starts_with("CARGO_CFG_")
        || key.starts_with("DEP_")
        || matches!(
            key,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
                | "CARGO_MAKEFLAGS"
                | "CARGO_ENCODED_RUSTFLAGS"
                | "OUT_DIR"
        )
}

/// The workspace this binary was built from, if it is still there.
fn workspace_dir() -> Option<PathBuf> {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    ws.join("Cargo.toml").is_file().then_some(ws)
}

/// `fixtures/bundles`: `$KERNEX_FIXTURES`, else the workspace's, else `./fixtures/bundles`.
fn fixtures_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("KERNEX_FIXTURES") {
        return Some(PathBuf::from(d));
    }
    let candidates = [
        workspace_dir().map(|w| w.join("fixtures/bundles")),
        Some(PathBuf::from("fixtures/bundles")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_dir())
}

#[cfg(test)]
mod tests {
    use super::set_by_cargo_run;

    #[test]
    fn the_nested_build_drops_what_cargo_run_set_and_keeps_the_users_settings() {
        for k in [
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_MANIFEST_DIR",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "OUT_DIR",
        ] {
            assert!(set_by_cargo_run(k), "{k}");
        }
        for k in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_JOBS",
            "CARGO_PROFILE_RELEASE_LTO",
            "RUSTFLAGS",
            "PATH",
        ] {
            assert!(!set_by_cargo_run(k), "{k}");
        }
    }
}
