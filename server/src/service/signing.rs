//! Signed updates on the server (SPEC §7): the rules every backend applies to stored
//! signatures and trust documents, the server's own `--require-signatures` policy, and
//! the short-lived cache of the current trust document the heartbeat path reads.
//!
//! The server never holds a signing key: it checks that signed metadata describes the
//! archive it stores, keeps every signature it is given, and hands them to devices,
//! which verify them against keys provisioned out of band.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use kernex_common::update_signing::{PublicKey, Refusal, SignedDocument, TrustSet};

use crate::store::{BundleRecord, Result, Store, StoreError};

/// How long a heartbeat may answer from the cached trust document before reading the
/// store again (another server process may have stored a newer one).
const TRUST_CACHE_TTL: Duration = Duration::from_secs(2);

/// Signed metadata uploaded for `bundle` must describe that archive: its version, sha256
/// and size. The signatures must be well-formed (not necessarily from keys we know).
pub fn check_against_bundle(doc: &SignedDocument, bundle: &BundleRecord) -> Result<()> {
    let meta = doc.bundle_metadata().map_err(invalid)?;
    if meta.bundle_version != bundle.version {
        return Err(StoreError::Invalid(format!(
            "signed metadata is for version {}, the bundle is {}",
            meta.bundle_version, bundle.version
        )));
    }
    if !meta.sha256.eq_ignore_ascii_case(&bundle.checksum_sha256) {
        return Err(StoreError::Invalid(format!(
            "signed sha256 {} differs from the archive's {}",
            meta.sha256, bundle.checksum_sha256
        )));
    }
    if meta.size_bytes != bundle.size_bytes {
        return Err(StoreError::Invalid(format!(
            "signed size {} differs from the archive's {} bytes",
            meta.size_bytes, bundle.size_bytes
        )));
    }
    if doc.signatures.is_empty() {
        return Err(StoreError::Invalid(
            "the signatures document carries no signature".into(),
        ));
    }
    Ok(())
}

/// What a bundle's stored signatures become when `new` arrives: the first document is
/// stored as it is; later ones must be over the same metadata text, and add their
/// signatures (more signers, SPEC §7).
pub fn merge_signatures(
    stored: Option<SignedDocument>,
    new: &SignedDocument,
) -> Result<SignedDocument> {
    match stored {
        None => Ok(new.clone()),
        Some(mut doc) => {
            doc.merge(new).map_err(|e| match e {
                Refusal::Malformed(m) if m.contains("different metadata") => StoreError::Conflict(
                    "the bundle already has signed metadata with a different text; sign that \
                     text (the signatures must all be over the same metadata)"
                        .into(),
                ),
                other => invalid(other),
            })?;
            Ok(doc)
        }
    }
}

/// Whether `new` may replace the stored trust document: its version must be higher
/// (SPEC §7: the server keeps the newest), and when one is stored, a threshold of the
/// stored set's keys must have signed it (the same rule a device applies). The first
/// document must be signed by `anchor` (the server's `--trust-key` keys) when given, so
/// a stolen operator token cannot pin the chain with a document of its own.
pub fn next_trust(
    stored: Option<&SignedDocument>,
    new: &SignedDocument,
    anchor: Option<&TrustSet>,
) -> Result<u64> {
    let meta = new.trust_metadata().map_err(invalid)?;
    TrustSet::from_metadata(&meta).map_err(invalid)?;
    if let Some(old) = stored {
        let old_meta = old.trust_metadata().map_err(invalid)?;
        if meta.version <= old_meta.version {
            return Err(StoreError::Conflict(format!(
                "trust document version {} is not above the stored version {}",
                meta.version, old_meta.version
            )));
        }
        let current = TrustSet::from_metadata(&old_meta).map_err(invalid)?;
        current
            .accept_update(new, chrono::Utc::now())
            .map_err(|e| StoreError::Invalid(format!("trust document refused: {e}")))?;
    } else {
        if meta.expires <= chrono::Utc::now() {
            return Err(StoreError::Invalid(format!(
                "trust document expired at {}",
                meta.expires.to_rfc3339()
            )));
        }
        if let Some(anchor) = anchor {
            anchor.check_threshold(new, anchor.threshold()).map_err(|e| {
                StoreError::Invalid(format!(
                    "the first trust document must be signed by the server's --trust-key                      keys: {e}"
                ))
            })?;
        }
    }
    Ok(meta.version)
}

fn invalid(e: Refusal) -> StoreError {
    StoreError::Invalid(e.to_string())
}

/// `--trust-key` + `--require-signatures`: deployments of bundles without enough valid
/// signatures from these keys are refused, so an operator token alone cannot ship code.
#[derive(Debug, Clone, Default)]
pub struct SignaturePolicy {
    pub keys: Vec<PublicKey>,
    pub required: usize,
}

impl SignaturePolicy {
    /// Checked at start-up: N keys must exist to require N signatures.
    pub fn new(keys: Vec<PublicKey>, required: usize) -> std::result::Result<Self, String> {
        if required > 0 {
            TrustSet::new(keys.clone(), required).map_err(|e| {
                format!("--require-signatures {required} needs at least {required} --trust-key file(s): {e}")
            })?;
        }
        Ok(SignaturePolicy { keys, required })
    }

    /// The keys a first trust document must be signed by: the `--trust-key` keys with
    /// the `--require-signatures` threshold (at least 1); `None` without keys.
    pub fn anchor(&self) -> Option<TrustSet> {
        if self.keys.is_empty() {
            return None;
        }
        let threshold = self.required.clamp(1, self.keys.len());
        TrustSet::new(self.keys.clone(), threshold).ok()
    }

    /// `Ok` when the bundle may be deployed under this policy.
    pub fn check(&self, version: &str, signed: Option<&SignedDocument>) -> Result<()> {
        if self.required == 0 {
            return Ok(());
        }
        let trust = TrustSet::new(self.keys.clone(), self.required).map_err(invalid)?;
        let doc = signed.ok_or_else(|| {
            StoreError::Invalid(format!(
                "bundle {version} has no signatures; this server requires {} valid signature(s) \
                 from its trusted keys (kernex-console bundle sign, then POST /bundles/{{id}}/signatures)",
                self.required
            ))
        })?;
        trust
            .check_threshold(doc, self.required)
            .map_err(|e| StoreError::Invalid(format!("bundle {version} may not be deployed: {e}")))
    }
}

/// The current trust document and its version.
pub type VersionedTrust = (u64, SignedDocument);

/// The current trust document, cached briefly so a heartbeat costs no store read.
#[derive(Debug, Default)]
pub struct TrustCache {
    /// When it was read, and what was read (`None`: no document stored).
    inner: RwLock<Option<(Instant, Option<VersionedTrust>)>>,
}

impl TrustCache {
    /// The current trust document and its version, if one was ever stored.
    pub async fn current(&self, store: &dyn Store) -> Result<Option<VersionedTrust>> {
        if let Some((at, doc)) = &*self.inner.read().unwrap_or_else(|p| p.into_inner())
            && at.elapsed() < TRUST_CACHE_TTL
        {
            return Ok(doc.clone());
        }
        let doc = match store.trust_document().await? {
            Some(d) => {
                let v = d.trust_metadata().map_err(invalid)?.version;
                Some((v, d))
            }
            None => None,
        };
        self.set(doc.clone());
        Ok(doc)
    }

    /// A new document was stored by this process.
    pub fn set(&self, doc: Option<VersionedTrust>) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), doc));
    }
}
