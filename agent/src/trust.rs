//! The keys this device trusts to sign bundles (SPEC §7 "Agent trust", "Key rotation").
//!
//! Provisioned out of band: `--trust-key FILE` (repeatable) and any key file
//! (`ed25519:<base64>`) in `<state-dir>/trust/`, with `--signature-threshold N`. Once a
//! trust document arrives in a heartbeat, signed by a threshold of the current keys and
//! with a higher version, it is written to `<state-dir>/trust/trust.json` (durably) and
//! from then on its keys and threshold replace the provisioned ones, across restarts.
//!
//! With no trusted key at all, signature checks are off (the device runs what the
//! server sends, as before signing existed).

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use anyhow::{Context, bail};
use chrono::Utc;
use kernex_common::update_signing::{PublicKey, SignedDocument, TrustSet};

use crate::fsutil;

/// File name of the adopted trust document inside `<state-dir>/trust/`.
pub const TRUST_DOCUMENT: &str = "trust.json";

/// The current trust set, shared by the heartbeat loop and the pipeline.
#[derive(Debug)]
pub struct Trust {
    dir: PathBuf,
    set: RwLock<Option<TrustSet>>,
}

impl Trust {
    /// No keys: verification off (tests of the unsigned paths, and devices not pinned).
    pub fn none(dir: PathBuf) -> Self {
        Trust {
            dir,
            set: RwLock::new(None),
        }
    }

    /// Load the trust set: the adopted document if there is one, else the provisioned
    /// keys (`files` plus key files in `dir`) with `threshold`. A file that cannot be
    /// read or parsed is an error: a device must not silently stop checking.
    pub fn load(dir: &Path, files: &[PathBuf], threshold: usize) -> anyhow::Result<Self> {
        let document = dir.join(TRUST_DOCUMENT);
        if let Some(doc) = fsutil::read_json::<SignedDocument>(&document)
            .with_context(|| format!("cannot read {}", document.display()))?
        {
            let meta = doc
                .trust_metadata()
                .with_context(|| format!("{} is damaged", document.display()))?;
            let set = TrustSet::from_metadata(&meta)
                .with_context(|| format!("{} is damaged", document.display()))?;
            return Ok(Trust {
                dir: dir.to_path_buf(),
                set: RwLock::new(Some(set)),
            });
        }
        let mut paths: Vec<PathBuf> = files.to_vec();
        if dir.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("cannot list {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_key_file(p))
                .collect();
            found.sort();
            paths.extend(found);
        }
        let mut keys = Vec::new();
        for path in &paths {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read trusted key {}", path.display()))?;
            let key = PublicKey::parse(&text)
                .with_context(|| format!("trusted key {}", path.display()))?;
            keys.push(key);
        }
        if keys.is_empty() {
            if threshold > 1 {
                bail!("--signature-threshold {threshold} given, but no trusted key (--trust-key)");
            }
            return Ok(Trust::none(dir.to_path_buf()));
        }
        let set = TrustSet::new(keys, threshold).context("--signature-threshold")?;
        Ok(Trust {
            dir: dir.to_path_buf(),
            set: RwLock::new(Some(set)),
        })
    }

    /// The current set, or `None` when no key is trusted.
    pub fn current(&self) -> Option<TrustSet> {
        self.set.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Version of the adopted trust document; 0 for provisioned keys or none.
    pub fn version(&self) -> u64 {
        self.current().map_or(0, |s| s.version)
    }

    /// Verify and adopt a trust document from the server. `Err` says why it was refused
    /// (nothing changes then).
    pub fn adopt(&self, doc: &SignedDocument) -> Result<u64, String> {
        let Some(current) = self.current() else {
            return Err(
                "no trusted key is provisioned on this device, so a trust document \
                        cannot be verified"
                    .into(),
            );
        };
        let (meta, next) = current
            .accept_update(doc, Utc::now())
            .map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        fsutil::write_json(&self.dir.join(TRUST_DOCUMENT), doc, 0o600)
            .map_err(|e| format!("cannot save the trust document: {e}"))?;
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = Some(next);
        Ok(meta.version)
    }
}

/// A provisioned key file in the trust dir: anything but the adopted document, hidden
/// files and temporary files.
fn is_key_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name != TRUST_DOCUMENT && !name.starts_with('.') && !name.ends_with(".tmp")
}

/// SPEC §7 checks for a deploy or rollback command, before anything is downloaded or
/// run: `Err` is the reason reported with the `failed` result. With no trusted key,
/// everything passes.
pub fn verify_command(
    trust: &Trust,
    state: &crate::state::AgentState,
    device_type: &str,
    kind: kernex_common::api::DeploymentKind,
    cmd: &kernex_common::api::BundleCommand,
) -> Result<(), String> {
    let Some(set) = trust.current() else {
        return Ok(());
    };
    let highest = state.highest_installed();
    let check = kernex_common::update_signing::BundleCheck {
        bundle_version: &cmd.bundle_version,
        sha256: &cmd.checksum_sha256,
        size_bytes: cmd.size_bytes,
        device_type,
        now: Utc::now(),
        highest_installed: highest.as_deref(),
        rollback_to_known_good: kind == kernex_common::api::DeploymentKind::Rollback
            && state.ran_successfully(&cmd.bundle_version),
    };
    kernex_common::update_signing::verify_bundle(&set, cmd.signed.as_ref(), &check)
        .map(|_| ())
        .map_err(|e| format!("signature check refused the bundle: {e}"))
}
