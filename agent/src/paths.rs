//! The state directory (SPEC §3):
//!
//! | path | what |
//! | --- | --- |
//! | `device_key.pem` | the device's RSA private key (0600) |
//! | `device.json` | device id, token, server (0600) |
//! | `state.json` | versions, applied config, last heartbeat/error, deployment in progress, local history |
//! | `queue/` | one file per unsent result report; `queue/rejected/` for refused ones |
//! | `bundles/<version>/` | extracted bundles kept for rollback |
//! | `downloads/` | partial downloads and extraction scratch space |
//! | `logs/` | daily rolling log files |
//! | `agent.lock` | held by the running daemon |
//! | `executed.log` | every deployment id ever executed, one a line (append-only, fsynced) |
//! | `trust/` | trusted signing keys (`ed25519:…` files) and the adopted `trust.json` |

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

/// Every path the agent uses, derived from one root.
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Paths { root: root.into() }
    }

    /// The platform data dir (`~/.local/share/kernex/agent` on Linux).
    pub fn default_root() -> Option<PathBuf> {
        directories::ProjectDirs::from("", "", "kernex").map(|d| d.data_dir().join("agent"))
    }

    pub fn key(&self) -> PathBuf {
        self.root.join("device_key.pem")
    }
    pub fn device(&self) -> PathBuf {
        self.root.join("device.json")
    }
    pub fn state(&self) -> PathBuf {
        self.root.join("state.json")
    }
    pub fn queue(&self) -> PathBuf {
        self.root.join("queue")
    }
    pub fn rejected(&self) -> PathBuf {
        self.queue().join("rejected")
    }
    pub fn bundles(&self) -> PathBuf {
        self.root.join("bundles")
    }
    pub fn bundle(&self, version: &str) -> PathBuf {
        self.bundles().join(version)
    }
    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// Every deployment id ever executed (append-only).
    pub fn executed(&self) -> PathBuf {
        self.root.join("executed.log")
    }
    /// Provisioned trusted keys and the adopted trust document (SPEC §7).
    pub fn trust(&self) -> PathBuf {
        self.root.join("trust")
    }
    pub fn lock(&self) -> PathBuf {
        self.root.join("agent.lock")
    }

    /// Create the directory tree. The root is private (0700): it holds the key and token.
    pub fn create(&self) -> io::Result<()> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)?;
        for dir in [
            self.rejected(),
            self.bundles(),
            self.downloads(),
            self.logs(),
        ] {
            fs::create_dir_all(&dir)?;
        }
        Ok(())
    }
}
