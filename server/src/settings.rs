//! Command-line flags, each also an environment variable `KERNEX_*` (SPEC §2).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
pub enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Manage operator tokens on a stopped server's data dir.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
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
    /// Operator token to accept (stored hashed as the token named "admin").
    #[arg(long, env = "KERNEX_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Token that admits registering devices as accepted (without it they are pending).
    #[arg(long, env = "KERNEX_ENROLLMENT_TOKEN", hide_env_values = true)]
    pub enrollment_token: Option<String>,
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
            .field("max_bundle_size", &self.max_bundle_size)
            .field("heartbeat_retention", &self.heartbeat_retention)
            .field("log_level", &self.log_level)
            .field("tls_cert", &self.tls_cert)
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
        }
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
        }
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
}
