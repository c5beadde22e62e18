//! Command-line flags, each also an environment variable `KERNEX_*` (SPEC §2).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::blobs::Blobs;

/// Kernex fleet server: HTTP API for devices and operators on an embedded store.
#[derive(Debug, Parser)]
#[command(
    name = "kernex-server",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
// Parsed once at start-up; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Manage operator tokens on a stopped server's data dir, or in a PostgreSQL database.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Write a backup of a data dir no server holds (a running server: GET /api/v1/backup).
    Backup {
        /// The backup file to write (written beside it, then renamed into place).
        #[arg(long)]
        to: PathBuf,
        #[arg(long, env = "KERNEX_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Back up this PostgreSQL database instead of the data dir's sled store.
        #[arg(long, env = "KERNEX_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// Where the bundle archives are [default: <data-dir>/bundles].
        #[arg(long, env = "KERNEX_BLOB_DIR")]
        blob_dir: Option<PathBuf>,
        /// The bucket the bundle archives are in, `s3://bucket[/prefix]` (with
        /// --database-url; the archives are staged in <data-dir>/bundles/tmp).
        #[arg(
            long,
            env = "KERNEX_BLOB_URL",
            requires = "database_url",
            conflicts_with = "blob_dir"
        )]
        blob_url: Option<String>,
    },
    /// Fill an empty (or new) data dir, or an empty PostgreSQL database, from a backup
    /// file (either backend's: this is how a sled store moves to PostgreSQL).
    Restore {
        /// The backup file to read.
        #[arg(long)]
        from: PathBuf,
        #[arg(long, env = "KERNEX_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Restore into this PostgreSQL database (it must be empty) instead of a data dir.
        #[arg(long, env = "KERNEX_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// Where the bundle archives go with --database-url [default: <data-dir>/bundles].
        #[arg(long, env = "KERNEX_BLOB_DIR")]
        blob_dir: Option<PathBuf>,
        /// Put the bundle archives into this bucket, `s3://bucket[/prefix]` (with
        /// --database-url).
        #[arg(
            long,
            env = "KERNEX_BLOB_URL",
            requires = "database_url",
            conflicts_with = "blob_dir"
        )]
        blob_url: Option<String>,
    },
    /// Bring a PostgreSQL database's schema up to date (the server also does it at start).
    Migrate {
        /// `postgres://user@host:port/database` (SPEC §8).
        #[arg(long, env = "KERNEX_DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// Verify a data dir no server holds, or a PostgreSQL database (replicas may run):
    /// exit 0 when sound, 1 with what is wrong.
    Check {
        #[arg(long, env = "KERNEX_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Check this PostgreSQL database (and its archives) instead of a data dir.
        #[arg(long, env = "KERNEX_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// Where the bundle archives are with --database-url [default: <data-dir>/bundles].
        #[arg(long, env = "KERNEX_BLOB_DIR")]
        blob_dir: Option<PathBuf>,
        /// The bucket the bundle archives are in, `s3://bucket[/prefix]`.
        #[arg(
            long,
            env = "KERNEX_BLOB_URL",
            requires = "database_url",
            conflicts_with = "blob_dir"
        )]
        blob_url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a new operator token and print it.
    Create {
        /// A name for the token (1-64 chars of [A-Za-z0-9._-]).
        #[arg(long)]
        name: String,
        #[arg(long, env = "KERNEX_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Mint it in this PostgreSQL database (works while replicas run).
        #[arg(long, env = "KERNEX_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
}

/// Flags of `kernex-server [serve]`.
#[derive(Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "KERNEX_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Where the store, bundles and admin.token live [default: the platform data dir].
    #[arg(long, env = "KERNEX_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Operator token to accept (stored hashed as the token named "admin"). Prefer the
    /// environment variable: a flag's value shows in `ps`.
    #[arg(long, env = "KERNEX_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Token that admits registering devices as accepted (without it they are pending).
    /// Prefer the environment variable: a flag's value shows in `ps`.
    #[arg(long, env = "KERNEX_ENROLLMENT_TOKEN", hide_env_values = true)]
    pub enrollment_token: Option<String>,
    /// Refuse (401) registrations that do not present the enrollment token: no device is
    /// ever pending. Needs --enrollment-token.
    #[arg(long, env = "KERNEX_REQUIRE_ENROLLMENT")]
    pub require_enrollment: bool,
    /// Most devices waiting for an operator's accept; new pending registrations beyond
    /// it get 503.
    #[arg(long, env = "KERNEX_MAX_PENDING", default_value_t = 10_000)]
    pub max_pending: u64,
    /// Bearer token that GET /metrics requires (open without it). Prefer the environment
    /// variable: a flag's value shows in `ps`.
    #[arg(long, env = "KERNEX_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Most open client connections; further ones wait in the listen backlog.
    #[arg(long, env = "KERNEX_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// How long a client may take to send a request's headers (and a TLS handshake).
    #[arg(long, env = "KERNEX_HEADER_TIMEOUT", default_value = "30s", value_parser = parse_duration, hide = true)]
    pub header_timeout: Duration,
    /// Budget of an ordinary request (not the event stream, bundle uploads or
    /// downloads): past it the answer is 503.
    #[arg(long, env = "KERNEX_REQUEST_TIMEOUT", default_value = "60s", value_parser = parse_duration, hide = true)]
    pub request_timeout: Duration,
    /// Window of the minimum transfer rate: a request body or response that moves
    /// less than --min-transfer-rate × this while it is under way is cut off.
    #[arg(long, env = "KERNEX_STALL_TIMEOUT", default_value = "30s", value_parser = parse_duration, hide = true)]
    pub stall_timeout: Duration,
    /// Minimum transfer rate of bodies in flight, bytes per second (K/M suffix).
    #[arg(long, env = "KERNEX_MIN_TRANSFER_RATE", default_value = "1K", value_parser = parse_size, hide = true)]
    pub min_transfer_rate: u64,
    /// Largest bundle accepted, in bytes, with optional K/M/G suffix.
    #[arg(long, env = "KERNEX_MAX_BUNDLE_SIZE", default_value = "2G", value_parser = parse_size)]
    pub max_bundle_size: u64,
    /// Heartbeats kept per device; older ones are pruned.
    #[arg(long, env = "KERNEX_HEARTBEAT_RETENTION", default_value_t = 1000)]
    pub heartbeat_retention: u64,
    /// Log filter (e.g. info, debug, kernex_server=debug).
    #[arg(long, env = "KERNEX_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    /// Public key file (`ed25519:…`) of an operator whose signatures count towards
    /// --require-signatures (repeatable; SPEC §7).
    #[arg(long = "trust-key", env = "KERNEX_TRUST_KEYS", value_delimiter = ',')]
    pub trust_keys: Vec<PathBuf>,
    /// Refuse deployments of bundles with fewer valid signatures from the --trust-key
    /// keys (0 = off), so an operator token alone cannot ship code.
    #[arg(long, env = "KERNEX_REQUIRE_SIGNATURES", default_value_t = 0)]
    pub require_signatures: usize,
    /// Store everything in this PostgreSQL database instead of the embedded sled store
    /// (`postgres://user:password@host:5432/kernex`), so several replicas can share it
    /// (SPEC §8). The data dir then holds only admin.token and, without --blob-dir,
    /// the bundles.
    #[arg(long, env = "KERNEX_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Database connections this process keeps open at most.
    #[arg(long, env = "KERNEX_DATABASE_CONNECTIONS", default_value_t = 16)]
    pub database_connections: u32,
    /// Where bundle archives live [default: <data-dir>/bundles]. Replicas on one database
    /// need a directory they all share (an NFS or similar mount).
    #[arg(long, env = "KERNEX_BLOB_DIR")]
    pub blob_dir: Option<PathBuf>,
    /// Keep bundle archives in an S3-compatible bucket, `s3://bucket[/prefix]`, shared
    /// by the replicas (with --database-url). Credentials, region and endpoint come from
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL (and
    /// AWS_ALLOW_HTTP=true for a plain-HTTP endpoint). Uploads are staged in
    /// <data-dir>/bundles/tmp.
    #[arg(
        long,
        env = "KERNEX_BLOB_URL",
        requires = "database_url",
        conflicts_with = "blob_dir"
    )]
    pub blob_url: Option<String>,
    #[arg(long, env = "KERNEX_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "KERNEX_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl std::fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mask = |s: &Option<String>| s.as_ref().map(|_| "***");
        f.debug_struct("ServeArgs")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("admin_token", &mask(&self.admin_token))
            .field("enrollment_token", &mask(&self.enrollment_token))
            .field("require_enrollment", &self.require_enrollment)
            .field("max_pending", &self.max_pending)
            .field("metrics_token", &mask(&self.metrics_token))
            .field("max_connections", &self.max_connections)
            .field("max_bundle_size", &self.max_bundle_size)
            .field("heartbeat_retention", &self.heartbeat_retention)
            .field("log_level", &self.log_level)
            .field("tls_cert", &self.tls_cert)
            .field(
                "database_url",
                &self.database_url.as_ref().map(|u| redact_url(u)),
            )
            .field("blob_dir", &self.blob_dir)
            .field("blob_url", &self.blob_url)
            .finish()
    }
}

/// What [`crate::open`] needs.
#[derive(Clone)]
pub struct ServerSettings {
    pub data_dir: PathBuf,
    pub admin_token: Option<String>,
    pub enrollment_token: Option<String>,
    pub max_bundle_size: u64,
    pub heartbeat_retention: u64,
    pub require_enrollment: bool,
    pub max_pending: u64,
    pub metrics_token: Option<String>,
    pub connections: ConnLimits,
    /// `--trust-key` files and `--require-signatures` (SPEC §7).
    pub trust_keys: Vec<PathBuf>,
    pub require_signatures: usize,
    /// PostgreSQL instead of sled (SPEC §8).
    pub database_url: Option<String>,
    pub database_connections: u32,
    /// Bundle archives [default: `<data_dir>/bundles`].
    pub blob_dir: Option<PathBuf>,
    /// Bundle archives in an S3-compatible bucket instead (PostgreSQL only).
    pub blob_url: Option<String>,
}

/// Connection and request limits (SPEC §1.9), applied by [`crate::serve`] and the router.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    /// Request headers (and a TLS handshake) must arrive within this.
    pub header_timeout: Duration,
    /// Budget of an ordinary request (SPEC §1.9: 503 past it).
    pub request_timeout: Duration,
    /// A body in flight (request or response) must move `min_rate` bytes/s, averaged
    /// over windows of this length.
    pub stall_timeout: Duration,
    pub min_rate: u64,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(30),
            min_rate: 1024,
        }
    }
}

impl std::fmt::Debug for ServerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSettings")
            .field("data_dir", &self.data_dir)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "***"))
            .field(
                "enrollment_token",
                &self.enrollment_token.as_ref().map(|_| "***"),
            )
            .field("max_bundle_size", &self.max_bundle_size)
            .field("heartbeat_retention", &self.heartbeat_retention)
            .field("require_enrollment", &self.require_enrollment)
            .field("max_pending", &self.max_pending)
            .field("metrics_token", &self.metrics_token.as_ref().map(|_| "***"))
            .field("connections", &self.connections)
            .field("trust_keys", &self.trust_keys)
            .field("require_signatures", &self.require_signatures)
            .field(
                "database_url",
                &self.database_url.as_ref().map(|u| redact_url(u)),
            )
            .field("blob_dir", &self.blob_dir)
            .field("blob_url", &self.blob_url)
            .finish()
    }
}

impl ServerSettings {
    /// Defaults for a data dir (tests and embedding).
    pub fn for_data_dir(dir: impl Into<PathBuf>) -> Self {
        ServerSettings {
            data_dir: dir.into(),
            admin_token: None,
            enrollment_token: None,
            max_bundle_size: 2 * 1024 * 1024 * 1024,
            heartbeat_retention: 1000,
            require_enrollment: false,
            max_pending: 10_000,
            metrics_token: None,
            connections: ConnLimits::default(),
            trust_keys: Vec::new(),
            require_signatures: 0,
            database_url: None,
            database_connections: 16,
            blob_dir: None,
            blob_url: None,
        }
    }

    /// Where bundle archives live, or are staged when they live in a bucket.
    pub fn bundle_dir(&self) -> PathBuf {
        self.blob_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("bundles"))
    }

    /// The blob store: `--blob-url`'s bucket (PostgreSQL only: sled's `check` and backups
    /// read the data dir), else [`ServerSettings::bundle_dir`].
    pub fn blobs(&self) -> Result<Blobs, String> {
        blob_store(
            self.blob_url.as_deref(),
            self.database_url.as_deref(),
            self.bundle_dir(),
        )
    }
}

/// A database URL with its password hidden, for logs.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl ServeArgs {
    pub fn settings(&self) -> ServerSettings {
        ServerSettings {
            data_dir: self.data_dir.clone().unwrap_or_else(default_data_dir),
            admin_token: self.admin_token.clone(),
            enrollment_token: self.enrollment_token.clone(),
            max_bundle_size: self.max_bundle_size,
            heartbeat_retention: self.heartbeat_retention,
            require_enrollment: self.require_enrollment,
            max_pending: self.max_pending,
            metrics_token: self.metrics_token.clone(),
            connections: ConnLimits {
                max_connections: self.max_connections.max(1),
                header_timeout: self.header_timeout,
                request_timeout: self.request_timeout,
                stall_timeout: self.stall_timeout,
                min_rate: self.min_transfer_rate,
            },
            trust_keys: self.trust_keys.clone(),
            require_signatures: self.require_signatures,
            database_url: self.database_url.clone().filter(|u| !u.is_empty()),
            database_connections: self.database_connections,
            blob_dir: self.blob_dir.clone(),
            blob_url: self.blob_url.clone().filter(|u| !u.is_empty()),
        }
    }
}

/// `--blob-url` (which needs `--database-url`), or the dir `local`.
pub fn blob_store(
    blob_url: Option<&str>,
    database_url: Option<&str>,
    local: PathBuf,
) -> Result<Blobs, String> {
    match blob_url.filter(|u| !u.is_empty()) {
        None => Ok(Blobs::in_dir(local)),
        Some(_) if database_url.is_none() => Err(
            "--blob-url needs --database-url: a bucket is for replicas sharing a database; \
             the embedded store keeps its bundles in the data dir"
                .into(),
        ),
        Some(url) => Blobs::in_bucket(url, local),
    }
}

/// The platform data dir, e.g. `~/.local/share/kernex/server`.
pub fn default_data_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "kernex")
        .map(|d| d.data_dir().join("server"))
        .unwrap_or_else(|| PathBuf::from("kernex-data"))
}

/// `2G`, `512M`, `100K`, `1048576` → bytes (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size suffix {c:?} (use K, M or G)")),
            };
            (&s[..i], mult)
        }
        _ => (s, 1),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 2G, 512M or 1048576"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `30s`, `500ms`, `2m`, `45` (seconds) → a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 500ms or 2m"))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        u => Err(format!("unknown duration unit {u:?} (use ms, s or m)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("G").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("s").is_err());
    }
}
