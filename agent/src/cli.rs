//! Command line: `run` (the daemon), `status`, `flush`, `history`.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::client::Client;
use crate::context::Ctx;
use crate::executed::ExecutedLog;
use crate::identity::{DeviceFile, Identity};
use crate::paths::Paths;
use crate::queue::{self, Queue};
use crate::runner::{CycleError, RegisterOptions, Runner};
use crate::state::StateStore;
use crate::trust::Trust;
use crate::{executor, logging, status};

/// Exit codes of `status`, shown in its `--help` (the README repeats them).
const STATUS_HELP: &str = "\
Exit codes (the same with --json, whose `problems` lists each reason and next step):
  0  healthy: registered and accepted, daemon running, server answering, nothing stuck
  1  unhealthy: daemon not running, server unreachable (not checked with --offline),
     heartbeats failing or none answered for 5 min + 3 polling intervals, a result
     report queued for over 5 min (or 2 polling intervals), reports the server refused,
     a configuration refused, or the last deployment failed
  2  cannot tell: usage error, or the state dir does not exist or cannot be read
  3  not registered with a server yet, or not admitted (pending or rejected)
The human output ends with each problem and the next step to take.";

/// Server used when neither `--server` nor an earlier registration names one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8000";

#[derive(Debug, Parser)]
#[command(name = "kernex-agent", version, about = "Kernex device agent")]
pub struct Cli {
    /// Server URL. Defaults to the server this device registered with, else
    /// http://127.0.0.1:8000.
    #[arg(long, env = "KERNEX_SERVER", global = true)]
    pub server: Option<String>,
    /// State directory (key, identity, state, queue, bundles, logs). Defaults to the
    /// platform data dir, e.g. ~/.local/share/kernex/agent.
    #[arg(long, env = "KERNEX_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// PEM file of an extra CA to trust (a private CA), besides the system roots.
    #[arg(long, env = "KERNEX_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Allow plain http:// to a server that is not on a loopback address (anyone on the
    /// path can then read the device token and change what the device is told).
    #[arg(long, env = "KERNEX_INSECURE_HTTP", global = true)]
    pub insecure_http: bool,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the daemon: register, heartbeat, execute commands, deliver results.
    Run(RunArgs),
    /// What this device is, runs and owes the server (works offline); exits non-zero
    /// when something needs a technician.
    #[command(after_help = STATUS_HELP)]
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Do not probe the server.
        #[arg(long)]
        offline: bool,
    },
    /// Send queued results now; exits 1 if anything stays queued.
    Flush,
    /// Deployments this device executed, newest first.
    History {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// One register/heartbeat/execute/flush cycle, then exit: 0 when the server answered,
    /// 1 when not.
    #[arg(long)]
    pub once: bool,
    /// Enrollment token: admits the device as accepted instead of pending. Prefer the
    /// environment variable: a flag's value shows in `ps`.
    #[arg(long, env = "KERNEX_ENROLLMENT_TOKEN", hide_env_values = true)]
    pub enrollment_token: Option<String>,
    /// Device type reported at registration.
    #[arg(long, env = "KERNEX_DEVICE_TYPE", default_value = "generic")]
    pub device_type: String,
    /// Size of the RSA key generated on first run.
    #[arg(long, env = "KERNEX_KEY_BITS", default_value_t = 4096,
          value_parser = clap::value_parser!(u16).range(2048..=16384))]
    pub key_bits: u16,
    /// Public key file (`ed25519:<base64>`) of an operator whose signature bundles must
    /// carry (repeatable). Key files in <state-dir>/trust/ count too. With none, bundles
    /// are not signature-checked.
    #[arg(long = "trust-key", env = "KERNEX_TRUST_KEYS", value_delimiter = ',')]
    pub trust_keys: Vec<PathBuf>,
    /// How many distinct trusted keys must have signed a bundle.
    #[arg(long, env = "KERNEX_SIGNATURE_THRESHOLD", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub signature_threshold: u16,
    /// A variable of the agent's environment that scripts may see besides PATH, HOME,
    /// LANG, LC_*, TZ, TERM, USER, LOGNAME, SHELL, TMPDIR (repeatable; `PREFIX*` for a
    /// family; KERNEX_* never pass). Scripts get nothing else of the agent's environment.
    #[arg(
        long = "script-env",
        env = "KERNEX_SCRIPT_ENV",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub script_env: Vec<String>,
    /// Run bundle scripts as this user (a name or uid from /etc/passwd) instead of the
    /// agent's own; needs the agent to run as root. Each bundle folder is handed to the
    /// user before its script runs; the state dir becomes 0711 (the folders above it
    /// must let the user pass too).
    #[arg(long, env = "KERNEX_RUN_AS", value_name = "USER")]
    pub run_as: Option<String>,
    /// Minimum download rate in bytes/s: an attempt that has not fetched the bundle within
    /// --download-grace plus its size at this rate fails the deployment. 0 turns the
    /// deadline off (the 60 s stall guard stays).
    #[arg(long, env = "KERNEX_DOWNLOAD_MIN_RATE", default_value_t = crate::download::MIN_RATE)]
    pub download_min_rate: u64,
    /// Seconds added to every download's deadline (connection set-up, slow start).
    #[arg(long, env = "KERNEX_DOWNLOAD_GRACE", default_value_t = crate::download::DEADLINE_GRACE.as_secs())]
    pub download_grace: u64,
    /// Length of one reconnect backoff step in ms (waits are 1, 2, 4 … 60 steps). Only
    /// for simulating long outages quickly in tests; leave it at 1000 on devices.
    #[arg(long, env = "KERNEX_BACKOFF_UNIT_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub backoff_unit_ms: u64,
}

/// Run a parsed command line; the process exit code.
pub async fn run_cli(cli: Cli) -> ExitCode {
    let result = match &cli.command {
        Cmd::Run(args) => run(&cli, args).await,
        Cmd::Status { json, offline } => status_cmd(&cli, *json, *offline).await,
        Cmd::Flush => flush_cmd(&cli).await,
        Cmd::History { json } => history_cmd(&cli, *json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("kernex-agent: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn paths(cli: &Cli) -> anyhow::Result<Paths> {
    match &cli.state_dir {
        Some(dir) => Ok(Paths::new(dir)),
        None => Paths::default_root()
            .map(Paths::new)
            .context("no --state-dir given and no platform data dir known"),
    }
}

/// `--server`, else the server of the registration on file, else the default.
fn server(cli: &Cli, paths: &Paths) -> String {
    cli.server
        .clone()
        .or_else(|| {
            DeviceFile::load(&paths.device())
                .ok()
                .flatten()
                .map(|d| d.server)
        })
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned())
}

/// The HTTP client for `server`, refusing plain http:// off loopback (SPEC §7).
fn client(cli: &Cli, server: &str) -> anyhow::Result<Client> {
    kernex_common::transport::check_server_url(server, cli.insecure_http)
        .map_err(anyhow::Error::msg)?;
    Client::new(server, cli.ca_cert.as_deref())
}

/// Hold `agent.lock` for the daemon's lifetime: one daemon per state dir.
async fn lock(paths: &Paths) -> anyhow::Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(paths.lock())
        .with_context(|| format!("cannot open {}", paths.lock().display()))?;
    // `status` takes the lock shared for an instant to see whether we run; allow for it.
    let mut tries = 0;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if tries < 20 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(paths.lock()).unwrap_or_default();
                bail!(
                    "another kernex-agent (pid {}) is already running on {}",
                    holder.trim(),
                    paths.root.display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).context("cannot lock the state dir");
            }
        }
    }
    file.set_len(0)?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

async fn run(cli: &Cli, args: &RunArgs) -> anyhow::Result<ExitCode> {
    // Listen for SIGTERM/SIGINT from the very start, so a stop during start-up (key
    // generation, a held lock) is an orderly exit too. `--once` keeps the default
    // behaviour: a signal ends it, and the next start reports anything unfinished.
    let signals = if args.once {
        None
    } else {
        Some(shutdown_signals()?)
    };
    let paths = paths(cli)?;
    paths
        .create()
        .with_context(|| format!("cannot create the state dir {}", paths.root.display()))?;
    let _lock = lock(&paths).await?;
    let state = StateStore::open(&paths.state())
        .with_context(|| format!("cannot read {}", paths.state().display()))?;
    // The saved configuration applies before the first beat.
    let log = logging::init_daemon(&paths.logs(), &state.get().config.log_level)?;
    let server = server(cli, &paths);
    let client = client(cli, &server)?;
    tracing::info!(
        version = crate::AGENT_VERSION,
        server = %server,
        state_dir = %paths.root.display(),
        once = args.once,
        "kernex-agent starting"
    );
    let identity = Identity::load_or_create(&paths.key(), usize::from(args.key_bits)).await?;
    let mut ctx = Ctx::new(paths.clone(), state, client);
    ctx.trust = Trust::load(
        &paths.trust(),
        &args.trust_keys,
        usize::from(args.signature_threshold),
    )?;
    ctx.device_type = args.device_type.clone();
    ctx.script_env = args.script_env.clone();
    if let Some(user) = &args.run_as {
        let user = crate::run_as::RunAs::lookup(user)?;
        user.check_can_switch()?;
        user.open_path(&paths.root, &paths.bundles())
            .context("cannot open the state dir's path to the --run-as user")?;
        ctx.run_as = Some(user);
    }
    ctx.executed = ExecutedLog::open(&paths.executed())
        .with_context(|| format!("cannot read {}", paths.executed().display()))?;
    if let Some(set) = ctx.trust.current() {
        tracing::info!(
            keys = set.keys().len(),
            threshold = set.threshold(),
            trust_version = set.version,
            "bundles must be signed"
        );
    }
    ctx.pace = crate::download::Pace {
        min_rate: args.download_min_rate,
        grace: Duration::from_secs(args.download_grace),
    };
    ctx.backoff_unit = Duration::from_millis(args.backoff_unit_ms);
    let ctx = Arc::new(ctx);
    match DeviceFile::load(&paths.device()) {
        Ok(Some(d))
            if d.server == ctx.client.server()
                && d.public_key_fingerprint == identity.fingerprint =>
        {
            ctx.set_device(Some(d));
        }
        Ok(Some(d)) => {
            tracing::info!(registered_with = %d.server, "device.json is for another server or key; registering anew");
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "device.json unreadable; registering anew"),
    }
    executor::recover(&ctx).await?;

    let mut runner = Runner::new(
        ctx,
        identity,
        RegisterOptions {
            device_type: args.device_type.clone(),
            enrollment_token: args.enrollment_token.clone(),
        },
        Some(log),
    );
    if args.once {
        // Logs go to files; a one-shot run says why it failed where it was started.
        return Ok(match runner.once().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kernex-agent: run --once failed: {e}");
                eprintln!("  next: {}", once_next_step(&e, &server));
                ExitCode::from(1)
            }
        });
    }
    let (first_rx, second_rx) = signals.context("signal handlers were not set up")?;
    runner
        .run(
            async {
                let _ = first_rx.await;
            },
            async {
                let _ = second_rx.await;
            },
        )
        .await;
    Ok(ExitCode::SUCCESS)
}

/// What to try after a failed `run --once`.
fn once_next_step(e: &CycleError, server: &str) -> String {
    match e {
        CycleError::Unreachable(_) => {
            format!("check the network and the server URL (--server / KERNEX_SERVER, now {server})")
        }
        CycleError::Refused(_) => "the server refused: check the enrollment token \
             (KERNEX_ENROLLMENT_TOKEN) or ask an operator whether this device was removed"
            .into(),
        CycleError::Local(_) => "a local problem: check the state dir's permissions and \
             free space; details are in its logs/"
            .into(),
    }
}

/// The first SIGTERM/SIGINT resolves the first receiver (stop after the running
/// deployment), the second resolves the second (stop now).
fn shutdown_signals() -> anyhow::Result<(
    tokio::sync::oneshot::Receiver<()>,
    tokio::sync::oneshot::Receiver<()>,
)> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let (second_tx, second_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut first = Some(first_tx);
        let mut second = Some(second_tx);
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if let Some(tx) = first.take() {
                tracing::info!("signal received; shutting down");
                let _ = tx.send(());
            } else if let Some(tx) = second.take() {
                let _ = tx.send(());
                return;
            }
        }
    });
    Ok((first_rx, second_rx))
}

async fn status_cmd(cli: &Cli, json: bool, offline: bool) -> anyhow::Result<ExitCode> {
    logging::init_cli();
    let paths = paths(cli)?;
    let server = server(cli, &paths);
    let client = if offline {
        None
    } else {
        Some(client(cli, &server)?)
    };
    let report = status::gather(&paths, &server, client.as_ref()).await?;
    if json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&report)?));
    } else {
        emit(&status::render(&report));
    }
    Ok(ExitCode::from(report.exit_code))
}

/// The state dir of a command that only reads it: one that does not exist is a typo
/// (or the wrong user), not an empty device.
fn existing_paths(cli: &Cli) -> anyhow::Result<Paths> {
    let paths = paths(cli)?;
    if !paths.root.is_dir() {
        bail!(
            "the state dir {} does not exist: check --state-dir / KERNEX_STATE_DIR \
             (the daemon creates it on its first `kernex-agent run`)",
            paths.root.display()
        );
    }
    Ok(paths)
}

async fn flush_cmd(cli: &Cli) -> anyhow::Result<ExitCode> {
    logging::init_cli();
    let paths = existing_paths(cli)?;
    let queue = Queue::new(paths.queue());
    let waiting = queue.len();
    if waiting == 0 {
        emit("queue is empty\n");
        return Ok(ExitCode::SUCCESS);
    }
    let Some(device) = DeviceFile::load(&paths.device())? else {
        emit(&format!(
            "{waiting} report(s) queued, but this device is not registered: run `kernex-agent run` first\n"
        ));
        return Ok(ExitCode::from(1));
    };
    let server = server(cli, &paths);
    let client = client(cli, &server)?;
    let skip = StateStore::read(&paths.state())?
        .in_progress
        .map(|p| p.deployment_id);
    let r = queue::flush(
        &queue,
        &client,
        &device.device_id,
        &device.device_token,
        skip.as_deref(),
    )
    .await?;
    let left = queue.len();
    emit(&format!(
        "sent {}, rejected {} (see {}), {left} still queued\n",
        r.sent,
        r.rejected,
        paths.rejected().display()
    ));
    if let Some(e) = r.stopped {
        emit(&format!("stopped: {e}\n"));
    }
    Ok(if left == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn history_cmd(cli: &Cli, json: bool) -> anyhow::Result<ExitCode> {
    let paths = existing_paths(cli)?;
    let state = StateStore::read(&paths.state())?;
    let records: Vec<_> = state.history.into_iter().collect();
    if json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&records)?));
    } else {
        emit(&status::render_history(&records));
    }
    Ok(ExitCode::SUCCESS)
}

/// Write to stdout; a closed pipe (`status | head`) is not an error worth a panic.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}
