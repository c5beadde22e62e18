//! The saved context: the server and operator token that `kernex-console login` checked,
//! so later runs work without flags.
//!
//! It lives in `<config dir>/context.json` — the platform config dir from `directories`
//! (`~/.config/kernex` on Linux), or `$KERNEX_CONFIG_DIR` when set (tests, several
//! setups side by side). The dir is made 0700 and the file 0600: it holds a token.
//!
//! Precedence when connecting ([`resolve`]): flags > environment (`KERNEX_SERVER`,
//! `KERNEX_TOKEN`, merged into the flags by clap) > the saved context > the local
//! server's `admin.token`. The saved token goes only to the saved server: `--server`
//! naming another one does not receive it.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cli::ConnArgs;

/// The server used when nothing names one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8000";
/// File name inside the config dir.
const FILE: &str = "context.json";

/// What `login` saved.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    pub server: String,
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("server", &self.server)
            .field("token", &"***")
            .field("ca_cert", &self.ca_cert)
            .finish()
    }
}

/// Where the context is kept (`None`: no home directory to put it in).
pub fn path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KERNEX_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join(FILE));
    }
    directories::ProjectDirs::from("", "", "kernex").map(|d| d.config_dir().join(FILE))
}

/// The saved context, if any. A file that exists but cannot be read is an error (said with
/// its path), not silently ignored.
pub fn load() -> Result<Option<Context>, String> {
    let Some(path) = path() else { return Ok(None) };
    load_from(&path)
}

fn load_from(path: &Path) -> Result<Option<Context>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            format!(
                "{} is not a saved context ({e}): run `kernex-console login` again or \
                 `kernex-console logout`",
                path.display()
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Save `ctx` (dir 0700, file 0600, replaced atomically); returns the file's path.
pub fn save(ctx: &Context) -> io::Result<PathBuf> {
    let path = path().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no config directory (set KERNEX_CONFIG_DIR)",
        )
    })?;
    save_to(&path, ctx)?;
    Ok(path)
}

fn save_to(path: &Path, ctx: &Context) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // An existing dir keeps its owner's choice, but never stays readable by others.
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))?;
    }
    let tmp = dir.join(format!(".{FILE}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let body = serde_json::to_vec_pretty(ctx).map_err(io::Error::other)?;
    file.write_all(&body)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Remove the saved context; whether there was one, and where.
pub fn remove() -> io::Result<(bool, Option<PathBuf>)> {
    let Some(path) = path() else {
        return Ok((false, None));
    };
    match std::fs::remove_file(&path) {
        Ok(()) => Ok((true, Some(path))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((false, Some(path))),
        Err(e) => Err(e),
    }
}

/// What a connection uses once flags, environment and the saved context are weighed.
#[derive(Debug, PartialEq, Eq)]
pub struct Resolved {
    pub server: String,
    /// `None`: fall back to the local server's `admin.token`.
    pub token: Option<String>,
    pub ca_cert: Option<PathBuf>,
}

/// Apply the precedence of the module docs.
pub fn resolve(conn: &ConnArgs, saved: Option<&Context>) -> Resolved {
    let flag = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let server = flag(&conn.server);
    // The saved context applies to its own server only.
    let saved = saved.filter(|c| server.as_deref().is_none_or(|s| same_server(s, &c.server)));
    Resolved {
        server: server
            .or_else(|| saved.map(|c| c.server.clone()))
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned()),
        token: flag(&conn.token).or_else(|| saved.map(|c| c.token.clone())),
        ca_cert: conn
            .ca_cert
            .clone()
            .or_else(|| saved.and_then(|c| c.ca_cert.clone())),
    }
}

fn same_server(a: &str, b: &str) -> bool {
    a.trim().trim_end_matches('/') == b.trim().trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn ctx(server: &str) -> Context {
        Context {
            server: server.into(),
            token: "saved".into(),
            ca_cert: None,
        }
    }

    fn conn(server: Option<&str>, token: Option<&str>) -> ConnArgs {
        ConnArgs {
            server: server.map(Into::into),
            token: token.map(Into::into),
            ..ConnArgs::default()
        }
    }

    #[test]
    fn flags_beat_the_saved_context_which_beats_the_defaults() {
        let saved = ctx("https://fleet.example:8443");
        let r = resolve(&conn(None, None), Some(&saved));
        assert_eq!(r.server, "https://fleet.example:8443");
        assert_eq!(r.token.as_deref(), Some("saved"));

        let r = resolve(&conn(None, Some("flag")), Some(&saved));
        assert_eq!(r.token.as_deref(), Some("flag"));

        let r = resolve(&conn(None, None), None);
        assert_eq!(r.server, DEFAULT_SERVER);
        assert_eq!(r.token, None, "falls back to admin.token");
    }

    #[test]
    fn the_saved_token_never_goes_to_another_server() {
        let saved = ctx("https://fleet.example:8443/");
        let r = resolve(&conn(Some("http://other:8000"), None), Some(&saved));
        assert_eq!(r.server, "http://other:8000");
        assert_eq!(r.token, None);
        let r = resolve(
            &conn(Some("https://fleet.example:8443"), None),
            Some(&saved),
        );
        assert_eq!(r.token.as_deref(), Some("saved"));
    }

    #[test]
    fn saved_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg").join(FILE);
        assert_eq!(load_from(&path).unwrap(), None);
        save_to(&path, &ctx("http://a:1")).unwrap();
        save_to(&path, &ctx("http://b:2")).unwrap();
        assert_eq!(load_from(&path).unwrap(), Some(ctx("http://b:2")));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);

        std::fs::write(&path, "not json").unwrap();
        let err = load_from(&path).unwrap_err();
        assert!(err.contains("not a saved context"), "{err}");
    }

    #[test]
    fn debug_masks_the_token() {
        assert!(!format!("{:?}", ctx("http://a")).contains("saved"));
    }
}
