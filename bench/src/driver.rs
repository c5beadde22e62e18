//! `kernex-bench-http`: start both servers, build the fleet and its workload, then
//! alternate wrk runs against kernex and the no-op server and summarise.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use kernex_common::api::Command as HeartbeatCommand;

use crate::fleet::{self, Api, Device};
use crate::keys;
use crate::process::{ChildGuard, Noop, Server};
use crate::wrk;

/// Deployments created before the runs, and devices each one targets.
const DEPLOYMENTS: usize = 50;
const TARGETS_PER_DEPLOYMENT: usize = 10;
/// Every this-many-th device gets a config change.
const CONFIG_EVERY: usize = 10;

/// Heartbeat throughput of kernex-server over HTTP, against a no-op axum server with the
/// same route, both driven by wrk with one request per device in turn.
#[derive(Debug, Parser)]
#[command(name = "kernex-bench-http", version)]
pub struct Args {
    /// kernex-server binary [default: <target>/release/kernex-server].
    #[arg(long, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,
    /// kernex-noop binary [default: <target>/release/kernex-noop].
    #[arg(long, value_name = "PATH")]
    pub noop_bin: Option<PathBuf>,
    /// Devices registered (and cycled through by wrk).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=99_999))]
    pub devices: u32,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..))]
    pub duration: u32,
    /// wrk connections (-c).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,
    /// wrk threads (-t).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: u32,
    /// kernex/noop run pairs.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Bundle folder packed, uploaded and deployed [default: fixtures/bundles/hello-1.0.0].
    #[arg(long, value_name = "DIR")]
    pub bundle_dir: Option<PathBuf>,
    /// Where device keys are cached [default: <target>/kernex-bench/keys].
    #[arg(long, value_name = "DIR")]
    pub keys_dir: Option<PathBuf>,
    /// Print each wrk report in full.
    #[arg(long, short)]
    pub verbose: bool,
}

/// `$CARGO_TARGET_DIR`, else the workspace's `target/`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn existing(path: PathBuf, build: &str) -> Result<PathBuf> {
    if !path.is_file() {
        bail!("{} not found: build it first ({build})", path.display());
    }
    Ok(path)
}

/// Bytes taken on disk by the files below `dir` (allocated blocks, so a sparse or
/// preallocated file counts for what it uses), and their apparent length.
fn dir_size(dir: &Path) -> DirSize {
    let mut total = DirSize::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return total;
    };
    for e in entries.flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => {
                let sub = dir_size(&e.path());
                total.on_disk += sub.on_disk;
                total.apparent += sub.apparent;
            }
            Ok(m) => {
                total.on_disk += on_disk(&m);
                total.apparent += m.len();
            }
            Err(_) => {}
        }
    }
    total
}

#[derive(Debug, Default, Clone, Copy)]
struct DirSize {
    on_disk: u64,
    apparent: u64,
}

impl std::fmt::Display for DirSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        write!(
            f,
            "{:.1} MiB on disk ({:.1} MiB apparent)",
            mib(self.on_disk),
            mib(self.apparent)
        )
    }
}

#[cfg(unix)]
fn on_disk(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::blocks(m) * 512
}

#[cfg(not(unix))]
fn on_disk(m: &std::fs::Metadata) -> u64 {
    m.len()
}

/// One wrk run and the server CPU time it cost per request (µs; where measurable).
struct Run {
    report: wrk::Report,
    cpu_us: Option<f64>,
}

fn us(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

/// The middle value (the mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if !n.is_multiple_of(2) => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The whole benchmark.
pub fn run(args: &Args) -> Result<()> {
    if args.connections < args.threads {
        bail!("--connections must be at least --threads (wrk needs a connection per thread)");
    }
    let target = target_dir();
    let build = "cargo build --release -p kernex-server -p kernex-bench";
    let server_bin = existing(
        args.server_bin
            .clone()
            .unwrap_or_else(|| target.join("release/kernex-server")),
        build,
    )?;
    let noop_bin = existing(
        args.noop_bin
            .clone()
            .unwrap_or_else(|| target.join("release/kernex-noop")),
        build,
    )?;
    let bundle_dir = args
        .bundle_dir
        .clone()
        .unwrap_or_else(|| workspace_root().join("fixtures/bundles/hello-1.0.0"));
    let keys_dir = args
        .keys_dir
        .clone()
        .unwrap_or_else(|| target.join("kernex-bench/keys"));
    let n = usize::try_from(args.devices)?;

    let keys = keys::load_or_generate(&keys_dir, n)?;

    // Declared before the servers, so it is removed after they are killed.
    let work = tempfile::Builder::new()
        .prefix("kernex-bench-")
        .tempdir()
        .context("creating a temp dir")?;
    let data_dir = work.path().join("data");
    let admin = format!("kxo_bench_{}", uuid::Uuid::new_v4().simple());
    let enroll = format!("kxe_bench_{}", uuid::Uuid::new_v4().simple());
    let mut server = Server::start(&server_bin, &data_dir, &admin, &enroll)?;
    let noop = Noop::start(&noop_bin)?;
    let kernex_url = format!("http://{}", server.addr);
    let noop_url = format!("http://{}", noop.addr);
    eprintln!(
        "kernex-server on {kernex_url} (data in {}), kernex-noop on {noop_url}",
        data_dir.display()
    );

    let body = serde_json::to_string(&fleet::heartbeat_body())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let api = Api::new(kernex_url.clone(), admin)?;
    let signed = keys::registrations(&keys)?;
    let devices = runtime
        .block_on(prepare(&api, &enroll, signed, &bundle_dir, &body))
        .map_err(|e| with_log(e.context("setting up the fleet"), &server))?;
    drop(runtime);

    let script = work.path().join("heartbeat.lua");
    std::fs::write(&script, wrk::script(&devices, &body, args.threads))
        .with_context(|| format!("writing {}", script.display()))?;

    let before = dir_size(&data_dir);
    println!(
        "wrk -t{} -c{} -d{}s, {n} devices, {DEPLOYMENTS} deployments x {TARGETS_PER_DEPLOYMENT} \
         targets, config changed on every {CONFIG_EVERY}th device",
        args.threads, args.connections, args.duration
    );
    println!(
        "{:<7} {:>12} {:>8} {:>8}   {:>12} {:>8} {:>8}",
        "round", "kernex req/s", "p99 ms", "cpu µs", "noop req/s", "p99 ms", "cpu µs"
    );
    let (mut kernex, mut noops) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let k = measure(args, &script, round, "kernex", &kernex_url, &server.process)
            .map_err(|e| with_log(e, &server))?;
        let o = measure(args, &script, round, "noop", &noop_url, &noop.process)?;
        println!(
            "{round:<7} {:>12.0} {:>8.2} {:>8}   {:>12.0} {:>8.2} {:>8}",
            k.report.requests_per_sec,
            k.report.p99_ms,
            us(k.cpu_us),
            o.report.requests_per_sec,
            o.report.p99_ms,
            us(o.cpu_us)
        );
        kernex.push(k);
        noops.push(o);
    }
    // A clean stop flushes what the group commit still holds, so "after" is what stays.
    server.process.terminate(Duration::from_secs(30))?;
    let after = dir_size(&data_dir);

    let rps = |v: &[Run]| median(v.iter().map(|r| r.report.requests_per_sec).collect());
    let p99 = |v: &[Run]| median(v.iter().map(|r| r.report.p99_ms).collect());
    let cpu = |v: &[Run]| {
        let all: Option<Vec<f64>> = v.iter().map(|r| r.cpu_us).collect();
        all.map(median)
    };
    let (k_rps, o_rps, k_p99, o_p99) = (rps(&kernex), rps(&noops), p99(&kernex), p99(&noops));
    let (k_cpu, o_cpu) = (cpu(&kernex), cpu(&noops));
    println!(
        "{:<7} {k_rps:>12.0} {k_p99:>8.2} {:>8}   {o_rps:>12.0} {o_p99:>8.2} {:>8}",
        "median",
        us(k_cpu),
        us(o_cpu)
    );
    println!(
        "kernex/noop: {:.3} of the throughput, {:.2}x the p99 latency{}",
        k_rps / o_rps,
        k_p99 / o_p99,
        match k_cpu.zip(o_cpu) {
            Some((k, o)) => format!(", {:.1}x the server CPU per heartbeat", k / o),
            None => String::new(),
        }
    );
    let beats: u64 = kernex.iter().map(|r| r.report.requests).sum();
    println!("kernex data dir before the runs: {before}");
    println!("kernex data dir after {beats} heartbeats and a clean stop: {after}");
    Ok(())
}

/// One wrk run against `url`, refused unless every response was a 2xx, with the CPU time
/// the server behind it spent.
fn measure(
    args: &Args,
    script: &Path,
    round: u32,
    who: &str,
    url: &str,
    server: &ChildGuard,
) -> Result<Run> {
    let cpu_before = server.cpu_time();
    let (report, text) = wrk::run(args.threads, args.connections, args.duration, script, url)?;
    let cpu = cpu_before
        .zip(server.cpu_time())
        .map(|(a, b)| b.saturating_sub(a));
    if args.verbose {
        eprintln!("{who}, round {round}:\n{text}");
    }
    if report.requests == 0 {
        bail!("{who}: wrk completed no requests:\n{text}");
    }
    if report.non_2xx > 0 {
        bail!(
            "{who}: {} of {} responses were not 2xx, so this is not measuring heartbeats:\n\
             {text}",
            report.non_2xx,
            report.requests
        );
    }
    if let Some(errors) = &report.socket_errors {
        eprintln!("  {who}, round {round}: socket errors: {errors}");
    }
    let cpu_us = cpu.map(|c| c.as_secs_f64() * 1e6 / report.requests as f64);
    Ok(Run { report, cpu_us })
}

/// Show the server's last log lines with an error it may explain.
fn with_log(e: anyhow::Error, server: &Server) -> anyhow::Error {
    eprintln!("kernex-server's last log lines:\n{}", server.log_tail());
    e
}

/// Register the fleet, upload and deploy the bundle, change some configs, then check
/// that a heartbeat is answered with the commands this work implies.
async fn prepare(
    api: &Api,
    enroll: &str,
    signed: Vec<(Vec<u8>, String)>,
    bundle_dir: &Path,
    body: &str,
) -> Result<Vec<Device>> {
    api.wait_healthy(Duration::from_secs(10)).await?;
    eprintln!("registering {} devices", signed.len());
    let devices = api.register_all(enroll, signed).await?;
    let bundle = api.upload_bundle(bundle_dir).await?;
    api.deploy(
        &bundle.version,
        &devices,
        DEPLOYMENTS,
        TARGETS_PER_DEPLOYMENT,
    )
    .await?;
    let configured = api.configure_every(&devices, CONFIG_EVERY).await?;
    eprintln!(
        "uploaded {} {}, created {DEPLOYMENTS} deployments, changed {configured} configs",
        bundle.name, bundle.version
    );
    // Device 0 is a target of the first deployment and has a changed config: its reply
    // must carry both commands, or the runs would time a fleet with nothing to do.
    let first = devices.first().context("no devices")?;
    let reply = api.heartbeat(first, body).await?;
    let has = |f: fn(&HeartbeatCommand) -> bool| reply.commands.iter().any(f);
    if !has(|c| matches!(c, HeartbeatCommand::Deploy(_)))
        || !has(|c| matches!(c, HeartbeatCommand::Configure(_)))
    {
        bail!(
            "device {}'s heartbeat brought {:?}; expected a deploy and a configure command",
            first.id,
            reply.commands
        );
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn flags_parse() {
        let a = Args::try_parse_from(["kernex-bench-http", "--duration", "3", "--rounds", "1"])
            .unwrap();
        assert_eq!(
            (a.devices, a.duration, a.connections, a.threads),
            (1000, 3, 32, 2)
        );
        assert!(Args::try_parse_from(["kernex-bench-http", "--devices", "0"]).is_err());
    }
}
