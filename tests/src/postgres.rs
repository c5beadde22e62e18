//! A PostgreSQL cluster for the scale-out tests (SPEC §8): `KERNEX_TEST_DATABASE_URL` when
//! set (CI starts one), else a throw-away cluster this process starts with the project's
//! own `scripts/pg-cluster.sh` (which installs Debian's postgresql when it can).

use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

/// The cluster's URL, or why there is none (the caller says "skipped" with it).
pub fn cluster() -> std::result::Result<String, String> {
    static URL: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("KERNEX_TEST_DATABASE_URL")
            && !url.is_empty()
        {
            return Ok(url);
        }
        start_own().map_err(|e| format!("{e:#}"))
    })
    .clone()
}

fn start_own() -> Result<String> {
    let root = crate::workspace_root();
    let dir = root.join("target").join("pg-test-cluster");
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/pg-cluster.sh"))
        .arg("start")
        .arg(&dir)
        .arg("55433")
        .output()
        .context("running scripts/pg-cluster.sh")?;
    if !out.status.success() {
        bail!(
            "scripts/pg-cluster.sh failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A database of the test's own, dropped (connections and all) with this handle.
#[derive(Debug)]
pub struct Database {
    pub url: String,
    cluster: String,
    name: String,
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = psql(
            &self.cluster,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn psql(url: &str, sql: &str) -> Result<()> {
    let out = std::process::Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .context("running psql")?;
    if !out.status.success() {
        bail!("{sql}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A fresh, empty database on the cluster (made with `psql`, which comes with it).
pub fn fresh_database(url: &str) -> Result<Database> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "kx_e2e_{}_{}_{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    psql(url, &format!("CREATE DATABASE {name}"))?;
    Ok(Database {
        url: with_database(url, &name),
        cluster: url.to_owned(),
        name,
    })
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = base[scheme_end..]
        .find('/')
        .map_or(base, |i| &base[..scheme_end + i]);
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}
