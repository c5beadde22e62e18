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
    /// Also run kernex-server on PostgreSQL, one replica and two replicas (SPEC §8), side
    /// by side with sled: a cluster URL (`postgres://user@host:port/postgres`) on which
    /// the bench may create databases (`just serve-pg` or `scripts/pg-cluster.sh` starts
    /// one).
    #[arg(long, env = "KERNEX_BENCH_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
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

/// One kernex-server setup under test: its servers (replicas share the load), the fleet
/// registered on it and, per server, the wrk script that cycles through its share of
/// the fleet (a load balancer spreads devices; one device's beats are seconds apart, so
/// two replicas rarely store beats of one device at once).
struct Target {
    label: &'static str,
    servers: Vec<Server>,
    scripts: Vec<PathBuf>,
    /// The sled data dir (its size is reported); none on PostgreSQL.
    data_dir: Option<PathBuf>,
    runs: Vec<Run>,
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
    let admin = format!("kxo_bench_{}", uuid::Uuid::new_v4().simple());
    let enroll = format!("kxe_bench_{}", uuid::Uuid::new_v4().simple());
    let body = serde_json::to_string(&fleet::heartbeat_body())?;
    let setup = Setup {
        bin: &server_bin,
        work: work.path(),
        admin: &admin,
        enroll: &enroll,
        keys: &keys,
        bundle_dir: &bundle_dir,
        body: &body,
        threads: args.threads,
    };
    let mut targets = vec![setup.target("sled", 1, None)?];
    if let Some(cluster) = &args.database_url {
        targets.push(setup.target("pg x1", 1, Some(&fresh_database(cluster)?))?);
        targets.push(setup.target("pg x2", 2, Some(&fresh_database(cluster)?))?);
    }
    let noop = Noop::start(&noop_bin)?;
    let noop_url = format!("http://{}", noop.addr);
    let noop_script = targets[0].scripts[0].clone();
    let sled_dir = targets[0].data_dir.clone();
    let before = sled_dir.as_deref().map(dir_size).unwrap_or_default();

    println!(
        "wrk -t{} -c{} -d{}s, {n} devices, {DEPLOYMENTS} deployments x {TARGETS_PER_DEPLOYMENT} \
         targets, config changed on every {CONFIG_EVERY}th device",
        args.threads, args.connections, args.duration
    );
    let mut header = format!("{:<7}", "round");
    for t in &targets {
        header += &format!(
            " {:>14} {:>7} {:>7}",
            format!("{} req/s", t.label),
            "p99 ms",
            "cpu µs"
        );
    }
    header += &format!("   {:>12} {:>7} {:>7}", "noop req/s", "p99 ms", "cpu µs");
    println!("{header}");
    let mut noops = Vec::new();
    for round in 1..=args.rounds {
        let mut line = format!("{round:<7}");
        for t in &mut targets {
            let r = measure_target(args, round, t)?;
            line += &format!(
                " {:>14.0} {:>7.2} {:>7}",
                r.report.requests_per_sec,
                r.report.p99_ms,
                us(r.cpu_us)
            );
            t.runs.push(r);
        }
        let o = measure(
            args,
            round,
            "noop",
            &[(&noop_url, noop_script.as_path(), &noop.process)],
        )?;
        line += &format!(
            "   {:>12.0} {:>7.2} {:>7}",
            o.report.requests_per_sec,
            o.report.p99_ms,
            us(o.cpu_us)
        );
        println!("{line}");
        noops.push(o);
    }
    // A clean stop flushes what the group commit still holds, so "after" is what stays.
    for t in &mut targets {
        for s in &mut t.servers {
            let started = std::time::Instant::now();
            s.process
                .terminate(Duration::from_secs(60))
                .map_err(|e| with_log(e.context(t.label), s))?;
            eprintln!(
                "{}: stopped in {:.1} s",
                t.label,
                started.elapsed().as_secs_f64()
            );
        }
    }
    summarise(&targets, &noops);
    let beats: u64 = targets[0].runs.iter().map(|r| r.report.requests).sum();
    if let Some(dir) = &sled_dir {
        println!("sled data dir before the runs: {before}");
        println!(
            "sled data dir after {beats} heartbeats and a clean stop: {}",
            dir_size(dir)
        );
    }
    Ok(())
}

/// The medians of every target against the no-op server's.
fn summarise(targets: &[Target], noops: &[Run]) {
    let rps = |v: &[Run]| median(v.iter().map(|r| r.report.requests_per_sec).collect());
    let p99 = |v: &[Run]| median(v.iter().map(|r| r.report.p99_ms).collect());
    let cpu = |v: &[Run]| {
        let all: Option<Vec<f64>> = v.iter().map(|r| r.cpu_us).collect();
        all.map(median)
    };
    let (o_rps, o_p99, o_cpu) = (rps(noops), p99(noops), cpu(noops));
    let mut line = format!("{:<7}", "median");
    for t in targets {
        line += &format!(
            " {:>14.0} {:>7.2} {:>7}",
            rps(&t.runs),
            p99(&t.runs),
            us(cpu(&t.runs))
        );
    }
    line += &format!("   {o_rps:>12.0} {o_p99:>7.2} {:>7}", us(o_cpu));
    println!("{line}");
    for t in targets {
        let (k_rps, k_p99, k_cpu) = (rps(&t.runs), p99(&t.runs), cpu(&t.runs));
        println!(
            "kernex {}/noop: {:.3} of the throughput, {:.2}x the p99 latency{}",
            t.label,
            k_rps / o_rps,
            k_p99 / o_p99,
            match k_cpu.zip(o_cpu) {
                Some((k, o)) => format!(", {:.1}x the kernex-server CPU per heartbeat", k / o),
                None => String::new(),
            }
        );
    }
}

/// What every target is built from.
struct Setup<'a> {
    bin: &'a Path,
    work: &'a Path,
    admin: &'a str,
    enroll: &'a str,
    keys: &'a [kernex_common::signing::DeviceKey],
    bundle_dir: &'a Path,
    body: &'a str,
    threads: u32,
}

impl Setup<'_> {
    /// Start `replicas` servers (sled without a database, else on `database`), build
    /// the fleet and its work through the first, and write its wrk script.
    fn target(
        &self,
        label: &'static str,
        replicas: usize,
        database: Option<&str>,
    ) -> Result<Target> {
        let dir = self.work.join(label.replace(' ', "-"));
        let mut servers = Vec::new();
        for i in 0..replicas {
            let data_dir = dir.join(format!("data-{i}"));
            let extra: Vec<String> = database
                .map(|url| {
                    vec![
                        "--database-url".into(),
                        url.into(),
                        "--blob-dir".into(),
                        dir.join("blobs").display().to_string(),
                    ]
                })
                .unwrap_or_default();
            servers.push(Server::start_with(
                self.bin,
                &data_dir,
                self.admin,
                self.enroll,
                &extra,
            )?);
        }
        let url = format!("http://{}", servers[0].addr);
        eprintln!("{label}: kernex-server on {url} ({replicas} replica(s))");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let api = Api::new(url, self.admin.to_owned())?;
        let signed = keys::registrations(self.keys)?;
        let devices = runtime
            .block_on(prepare(
                &api,
                self.enroll,
                signed,
                self.bundle_dir,
                self.body,
            ))
            .map_err(|e| {
                with_log(
                    e.context(format!("setting up the fleet ({label})")),
                    &servers[0],
                )
            })?;
        let mut scripts = Vec::new();
        for i in 0..replicas {
            let share: Vec<Device> = devices
                .iter()
                .enumerate()
                .filter(|(n, _)| n % replicas == i)
                .map(|(_, d)| d.clone())
                .collect();
            let script = dir.join(format!("heartbeat-{i}.lua"));
            std::fs::write(&script, wrk::script(&share, self.body, self.threads))
                .with_context(|| format!("writing {}", script.display()))?;
            scripts.push(script);
        }
        Ok(Target {
            label,
            servers,
            scripts,
            data_dir: database.is_none().then(|| dir.join("data-0")),
            runs: Vec::new(),
        })
    }
}

/// A fresh database on the cluster at `url` (created with `psql`).
fn fresh_database(url: &str) -> Result<String> {
    let name = format!("kx_bench_{}", uuid::Uuid::new_v4().simple());
    let out = std::process::Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c"])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .context("running psql (is PostgreSQL's client installed?)")?;
    if !out.status.success() {
        bail!(
            "CREATE DATABASE failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    Ok(match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    })
}

fn measure_target(args: &Args, round: u32, t: &Target) -> Result<Run> {
    let urls: Vec<String> = t
        .servers
        .iter()
        .map(|s| format!("http://{}", s.addr))
        .collect();
    let servers: Vec<(&str, &Path, &ChildGuard)> = urls
        .iter()
        .map(String::as_str)
        .zip(&t.scripts)
        .zip(t.servers.iter().map(|s| &s.process))
        .map(|((url, script), process)| (url, script.as_path(), process))
        .collect();
    measure(args, round, t.label, &servers).map_err(|e| with_log(e, &t.servers[0]))
}

/// One wrk run per server, at once, each with its share of the connections, refused
/// unless every response was a 2xx; the sum of their throughput, the worst p99 and the
/// CPU time the servers spent per request.
fn measure(
    args: &Args,
    round: u32,
    who: &str,
    servers: &[(&str, &Path, &ChildGuard)],
) -> Result<Run> {
    let n = u32::try_from(servers.len()).unwrap_or(1).max(1);
    let threads = (args.threads / n).max(1);
    let connections = (args.connections / n).max(threads);
    let cpu_before: Vec<Option<Duration>> = servers.iter().map(|s| s.2.cpu_time()).collect();
    let results: Vec<Result<(wrk::Report, String)>> = std::thread::scope(|scope| {
        let runs: Vec<_> = servers
            .iter()
            .map(|(url, script, _)| {
                scope.spawn(move || wrk::run(threads, connections, args.duration, script, url))
            })
            .collect();
        runs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("wrk thread panicked")))
            })
            .collect()
    });
    let mut total = wrk::Report::default();
    for (i, r) in results.into_iter().enumerate() {
        let (report, text) = r?;
        if args.verbose {
            eprintln!("{who} #{i}, round {round}:\n{text}");
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
            eprintln!("  {who} #{i}, round {round}: socket errors: {errors}");
        }
        total.requests_per_sec += report.requests_per_sec;
        total.p99_ms = total.p99_ms.max(report.p99_ms);
        total.requests += report.requests;
    }
    let cpu: Option<Duration> = servers
        .iter()
        .zip(cpu_before)
        .map(|((_, _, s), before)| before.zip(s.cpu_time()).map(|(a, b)| b.saturating_sub(a)))
        .sum();
    let cpu_us = cpu.map(|c| c.as_secs_f64() * 1e6 / total.requests as f64);
    Ok(Run {
        report: total,
        cpu_us,
    })
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
