//! `login --server URL --token-file F` and `logout`: the saved context of
//! [`crate::context`].
//!
//! `login` saves nothing the server has not accepted: it lists one device with the token
//! first, so a typo'd URL is exit 2 (unreachable) and a wrong token exit 1 (refused), and
//! the old context stays as it was.

use std::io::Read;
use std::path::Path;

use serde::Serialize;

use super::{OpError, OpResult, Report};
use crate::api::{Api, DeviceQuery};
use crate::cli::{ConnArgs, LoginArgs};
use crate::context::{self, Context};

/// What `login` prints (`--json` too); never the token.
#[derive(Debug, Serialize)]
struct Saved {
    server: String,
    path: String,
}

pub(crate) async fn login(conn: &ConnArgs, args: &LoginArgs) -> OpResult<Report> {
    let server = conn
        .server
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| OpError::Usage("login needs --server URL (or KERNEX_SERVER)".into()))?
        .trim_end_matches('/')
        .to_owned();
    kernex_common::transport::check_server_url(&server, conn.insecure_http)
        .map_err(OpError::Usage)?;
    let token = read_token(&args.token_file)?;
    let api = Api::new(&server, &token, conn.ca_cert.as_deref())?;
    // Any authenticated read proves both the address and the token.
    api.devices(&DeviceQuery {
        limit: Some(1),
        ..DeviceQuery::default()
    })
    .await?;
    let ctx = Context {
        server: api.server().to_owned(),
        token,
        ca_cert: conn.ca_cert.as_deref().map(absolute),
    };
    let path = context::save(&ctx)
        .map_err(|e| OpError::Failed(format!("cannot save the context: {e}")))?;
    let saved = Saved {
        server: ctx.server.clone(),
        path: path.display().to_string(),
    };
    let human = format!(
        "logged in to {} (saved in {}); later runs need no --server/--token\n",
        saved.server, saved.path
    );
    Report::new(&saved, human)
}

pub(crate) fn logout() -> OpResult<Report> {
    match context::remove() {
        Ok((true, Some(path))) => Ok(Report::text(format!(
            "logged out (removed {})\n",
            path.display()
        ))),
        Ok(_) => Ok(Report::text(String::new()).when_empty("no saved context")),
        Err(e) => Err(OpError::Failed(format!("cannot remove the context: {e}"))),
    }
}

/// The token from a file (`-` = stdin), trimmed; an empty one is a usage error.
fn read_token(path: &Path) -> OpResult<String> {
    let mut text = String::new();
    let read = if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(path).map(|t| text = t)
    };
    read.map_err(|e| {
        OpError::Usage(format!(
            "cannot read the token file {}: {e}",
            path.display()
        ))
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(OpError::Usage(format!(
            "the token file {} is empty",
            path.display()
        )));
    }
    Ok(token.to_owned())
}

/// A CA path that still means the same file when run from another directory.
fn absolute(p: &Path) -> std::path::PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}
