//! Command line: global connection flags, the scripted subcommands of SPEC §4, `login` /
//! `logout`, `completions` / `man`, and `demo`. No subcommand opens the TUI.
//!
//! Global flags are listed under their own heading in every subcommand's `--help`, apart
//! from the command's own; none is required (a saved `login` context or the local
//! server's `admin.token` can stand in for them).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "kernex-console",
    version,
    about = "Kernex operator console: the fleet TUI (no subcommand) and scripted operations",
    after_help = "Exit codes: 0 ok; 1 the server refused or the operation failed; \
                  2 usage error or server unreachable."
)]
pub struct Cli {
    #[command(flatten)]
    pub conn: ConnArgs,

    /// Print data as JSON: the same as `-o json`.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The `--help` heading of the flags every subcommand takes.
const GLOBAL: &str = "Global options";

/// How to reach the server. Shared by the TUI and every subcommand. Unset fields come from
/// the saved `login` context, then the defaults (see [`crate::context`]).
#[derive(Clone, Default, Args)]
pub struct ConnArgs {
    /// Server base URL [default: the saved login context, else http://127.0.0.1:8000].
    #[arg(long, env = "KERNEX_SERVER", global = true, help_heading = GLOBAL)]
    pub server: Option<String>,

    /// Operator token [default: the saved login context, else the local server's
    /// admin.token file]. Prefer KERNEX_TOKEN or `login --token-file`: a flag's value
    /// shows in `ps`.
    #[arg(
        long,
        env = "KERNEX_TOKEN",
        hide_env_values = true,
        global = true,
        help_heading = GLOBAL
    )]
    pub token: Option<String>,

    /// PEM CA certificate(s) to trust for an https server.
    #[arg(long, env = "KERNEX_CA_CERT", global = true, help_heading = GLOBAL)]
    pub ca_cert: Option<PathBuf>,

    /// Where the TUI writes its log [default: the platform state dir].
    #[arg(long, env = "KERNEX_CONSOLE_LOG", global = true, help_heading = GLOBAL)]
    pub log_file: Option<PathBuf>,

    /// Allow plain http:// to a server that is not on a loopback address (the token and
    /// everything else then cross the network readable and changeable).
    #[arg(long, env = "KERNEX_INSECURE_HTTP", global = true, help_heading = GLOBAL)]
    pub insecure_http: bool,
}

impl std::fmt::Debug for ConnArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnArgs")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("ca_cert", &self.ca_cert)
            .field("log_file", &self.log_file)
            .field("insecure_http", &self.insecure_http)
            .finish()
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a server and token, then save them as the context later runs use.
    Login(LoginArgs),
    /// Forget the saved context.
    Logout,
    /// List devices.
    Devices(DevicesArgs),
    /// Show one device: summary, config and recent bundle history.
    Device {
        id: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// List bundles, newest first.
    Bundles(OutputArgs),
    /// Pack or upload a bundle.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Operator signing keys (signed updates).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Trust documents: rotate the keys devices trust.
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Deploy a bundle version to devices or a tag.
    Deploy(DeployArgs),
    /// Roll devices back to a version they ran successfully before.
    Rollback(RollbackArgs),
    /// List deployments, or show one.
    Deployments {
        /// A deployment id: show it with its per-device status.
        id: Option<String>,
        /// Only deployments with this status.
        #[arg(long)]
        status: Option<String>,
        /// How many to list.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Pause a deployment's rollout: no new deliveries; in-flight targets finish.
    Pause { id: String },
    /// Resume a paused rollout (accepting its failures so far; opens the next wave if
    /// the current one is good).
    Resume { id: String },
    /// Cancel a deployment: targets not yet delivered are cancelled.
    Cancel { id: String },
    /// Read or change a device's configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Accept a pending device.
    Accept { id: String },
    /// Reject a device (revokes its tokens).
    Reject { id: String },
    /// Run a throw-away server and several real agents, upload the fixture bundles and
    /// open the console on that live fleet. Quitting stops everything it started.
    Demo(DemoArgs),
    /// Print a shell completion script (e.g. `kernex-console completions bash >
    /// ~/.local/share/bash-completion/completions/kernex-console`).
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write man pages: kernex-console.1 and one per subcommand.
    Man {
        /// Directory to write them to [default: print kernex-console.1 on stdout].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Shells `completions` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// File holding the operator token (never pass the token itself on the command line,
    /// where `ps` shows it). Use `-` for standard input.
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
}

/// How a data-printing command prints, kubectl-style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned text (the default).
    Text,
    /// Pretty JSON (`--json` says the same).
    Json,
    /// YAML.
    Yaml,
    /// Text with more columns.
    Wide,
}

#[derive(Debug, Clone, Copy, Default, Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, value_name = "FORMAT")]
    pub output: Option<Format>,
}

#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// Only devices carrying this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Only devices with this online status (online, offline, never).
    #[arg(long)]
    pub status: Option<String>,
    /// Only devices with this admission (accepted, pending, rejected).
    #[arg(long)]
    pub admission: Option<String>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Pack a bundle source folder (manifest.json + scripts) into <name>-<version>.tar.gz.
    Pack {
        dir: PathBuf,
        /// Where to write the archive [default: ./<name>-<version>.tar.gz].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Upload a bundle archive, with FILE.sig.json as its signatures when that sits
    /// beside it.
    Push { file: PathBuf },
    /// Sign a bundle archive with an operator key: writes (or adds a signature to)
    /// FILE.sig.json. The bundle version must be semver.
    Sign {
        file: PathBuf,
        /// The signing key file (from `key generate`).
        #[arg(long, value_name = "NAME.key")]
        key: PathBuf,
        /// How long the signature holds: 90d, 12h, 1y or an RFC 3339 time (devices refuse
        /// the bundle after it).
        #[arg(long, default_value = "90d")]
        expires: String,
        /// Device types that may install it (repeatable) [default: any].
        #[arg(long = "device-type", value_name = "T")]
        device_types: Vec<String>,
        /// Let devices that ran a higher version install this one.
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// Add the signatures in a FILE.sig.json to a bundle already uploaded.
    AddSignatures {
        /// The bundle version.
        version: String,
        /// The signatures document (`bundle sign` output).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make an Ed25519 signing key: NAME.key (0600, keep it off the server) and NAME.pub;
    /// prints the public key.
    Generate { name: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Sign a trust document with a key of the current trust set. FILE holds either the
    /// unsigned metadata {"keys", "threshold", "version", "expires"} or a document that
    /// others signed already; it is rewritten as the signed document.
    Sign {
        file: PathBuf,
        #[arg(long, value_name = "NAME.key")]
        key: PathBuf,
    },
    /// Upload a signed trust document (key rotation); devices adopt it in their next
    /// heartbeats.
    Push { file: PathBuf },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("targets").required(true).args(["devices", "tag"])))]
pub struct DeployArgs {
    /// The bundle version to deploy.
    pub version: String,
    /// Target device ids, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Target every accepted device carrying this tag (repeatable).
    #[arg(long)]
    pub tag: Vec<String>,
    #[command(flatten)]
    pub rollout: RolloutArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// The rollout policy (SPEC §6); without any of these a deployment goes to all its
/// targets at once.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Rollout (waves, gates, timeouts)")]
pub struct RolloutArgs {
    /// Cumulative % of targets per wave, ascending, ending at 100 (e.g. 1,10,100).
    #[arg(long, value_delimiter = ',', value_name = "PCTS")]
    pub waves: Vec<u8>,
    /// Targets carrying this tag come first (the canaries).
    #[arg(long, value_name = "TAG")]
    pub first_tag: Option<String>,
    /// A wave is good when this % of its targets succeeded and soaked [default: 100].
    #[arg(long, value_name = "PCT")]
    pub threshold: Option<u8>,
    /// How long a success must stay healthy before it counts (90, 90s, 10m, 1h).
    #[arg(long, value_name = "DURATION")]
    pub soak: Option<String>,
    /// Pause (or abort) when failures exceed this many.
    #[arg(long, value_name = "N", conflicts_with = "max_failure_pct")]
    pub max_failures: Option<u64>,
    /// ...or this % of the targets delivered so far.
    #[arg(long, value_name = "PCT")]
    pub max_failure_pct: Option<u8>,
    /// What the failure gate does.
    #[arg(long, value_enum, value_name = "ACTION")]
    pub on_failure: Option<OnFailureArg>,
    /// Do not open the next wave by itself: wait for `resume`.
    #[arg(long)]
    pub no_auto_advance: bool,
    /// A target not finished this long after its wave opened times out (10m, 1h).
    #[arg(long, value_name = "DURATION")]
    pub target_timeout: Option<String>,
    /// Most first deliveries per minute.
    #[arg(long, value_name = "N")]
    pub max_per_minute: Option<u64>,
    /// Deliver nothing before this time (RFC 3339, e.g. 2026-12-01T02:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub start_at: Option<String>,
}

/// `--on-failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnFailureArg {
    Pause,
    Abort,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The version to roll back to.
    pub version: String,
    /// Target device ids, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub devices: Vec<String>,
    #[command(flatten)]
    pub rollout: RolloutArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Wait until every target has finished, following the rollout's waves; exit 1
    /// unless the deployment succeeded (also when its rollout pauses).
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds, at most a year (exit 1) [default: wait as
    /// long as it takes].
    #[arg(long, requires = "wait", value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub timeout: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Show a device's configuration.
    Get {
        id: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Change fields: polling_interval=N heartbeat_timeout=N deploy_timeout=N
    /// log_level=LEVEL metadata=JSON.
    Set {
        id: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many agents to start (one more starts without the enrollment token and waits
    /// as a pending device).
    #[arg(long, default_value_t = 4)]
    pub agents: usize,
    /// Listen address of the demo server.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Leave the demo's data dir in place when it ends.
    #[arg(long)]
    pub keep: bool,
    /// Start the fleet and print how to reach it, without opening the TUI (Ctrl-C stops).
    #[arg(long)]
    pub headless: bool,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    #[test]
    fn subcommand_help_keeps_global_flags_apart_and_optional() {
        use clap::CommandFactory;
        let mut cmd = super::Cli::command();
        cmd.build();
        for name in ["devices", "deploy", "login"] {
            let help = cmd
                .find_subcommand_mut(name)
                .unwrap()
                .render_long_help()
                .to_string();
            let (own, global) = help.split_once("Global options:").expect(&help);
            assert!(
                global.contains("--server") && global.contains("--token"),
                "{help}"
            );
            assert!(
                !own.contains("--server") && !own.contains("--token "),
                "{help}"
            );
            let usage = help.lines().find(|l| l.starts_with("Usage:")).unwrap();
            assert!(
                !usage.contains("--server") && !usage.contains("--token <"),
                "{usage}"
            );
        }
    }

    #[test]
    fn an_absurd_wait_timeout_is_a_usage_error() {
        let parse = |t: &str| {
            Cli::try_parse_from(["kernex-console", "deploy", "1.0.0", "--devices", "a"]).and_then(
                |_| {
                    Cli::try_parse_from([
                        "kernex-console",
                        "deploy",
                        "1.0.0",
                        "--devices",
                        "a",
                        "--wait",
                        "--timeout",
                        t,
                    ])
                },
            )
        };
        assert!(parse("600").is_ok());
        for bad in ["0", "18446744073709551615", "-1"] {
            let e = parse(bad).err().map(|e| e.exit_code());
            assert_eq!(e, Some(2), "--timeout {bad}");
        }
    }
}
