//! Signed updates (SPEC §7): Ed25519 operator keys, signed bundle metadata, trust
//! documents, and the checks a device makes before it runs anything.
//!
//! A signed document is `{"metadata": "<JSON text>", "signatures": [{"keyid", "sig"}]}`.
//! The metadata stays a string, so every party verifies the exact bytes that were signed
//! and no canonical JSON form is needed. Two kinds exist:
//! - bundle metadata ([`BundleMetadata`]), checked by [`verify_bundle`];
//! - trust documents ([`TrustMetadata`]), the key rotation path, checked by
//!   [`TrustSet::accept_update`].
//!
//! Operator keys are never held by the server; this module is what the console uses to
//! sign and what the agent (and, for `--require-signatures`, the server) uses to verify.
//! (The device's own RSA identity is [`crate::signing`], unrelated.)
//!
//! ```
//! use kernex_common::update_signing::*;
//! let key = SecretKey::generate();
//! let meta = BundleMetadata {
//!     bundle_version: "1.0.0".into(),
//!     sha256: "ab".repeat(32),
//!     size_bytes: 10,
//!     device_types: vec![],
//!     expires: chrono::Utc::now() + chrono::Duration::days(1),
//!     allow_downgrade: false,
//! };
//! let doc = SignedDocument::sign_new(&meta, &key).unwrap();
//! let trust = TrustSet::new(vec![key.public()], 1).unwrap();
//! let check = BundleCheck {
//!     bundle_version: "1.0.0", sha256: &"ab".repeat(32), size_bytes: 10,
//!     device_type: "gateway", now: chrono::Utc::now(), highest_installed: None,
//!     rollback_to_known_good: false,
//! };
//! assert!(verify_bundle(&trust, Some(&doc), &check).is_ok());
//! ```

use std::collections::BTreeSet;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Duration, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Prefix of a public key in text form.
pub const PUBLIC_PREFIX: &str = "ed25519:";
/// Prefix of a secret key file's content (`NAME.key`).
pub const SECRET_PREFIX: &str = "ed25519-secret:";
/// Most keys a trust document may name.
pub const MAX_TRUST_KEYS: usize = 64;
/// Most signatures a signed document may carry.
pub const MAX_SIGNATURES: usize = 64;
/// Longest metadata text accepted.
pub const MAX_METADATA_LEN: usize = 16 * 1024;

/// Why a key, a document or a bundle was refused. The message is what the device
/// reports as its `error_message`, so it names the problem precisely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("bad key: {0}")]
    BadKey(String),
    #[error("malformed signed metadata: {0}")]
    Malformed(String),
    #[error(
        "unsigned bundle: this device requires {needed} valid signature(s) from its trusted keys"
    )]
    Unsigned { needed: usize },
    #[error(
        "too few valid signatures: {valid} of the {needed} required from distinct trusted keys{}",
        detail_suffix(.detail)
    )]
    TooFewSignatures {
        valid: usize,
        needed: usize,
        detail: String,
    },
    #[error("signed metadata is for version {signed}, the command names {command}")]
    VersionMismatch { signed: String, command: String },
    #[error("signed sha256 {signed} differs from the bundle's {actual}")]
    ChecksumMismatch { signed: String, actual: String },
    #[error("signed size {signed} bytes differs from the bundle's {actual}")]
    SizeMismatch { signed: u64, actual: u64 },
    #[error("device type {device_type} is not among the signed device types ({allowed})")]
    WrongDeviceType {
        device_type: String,
        allowed: String,
    },
    #[error("signed metadata expired at {0} (freeze protection)")]
    Expired(String),
    #[error(
        "downgrade refused: {version} is lower than {installed}, the highest installed \
         (not a rollback to a version this device ran, and allow_downgrade is not signed)"
    )]
    Downgrade { version: String, installed: String },
    #[error("version {0} is not semver; signed bundles need semver versions")]
    NotSemver(String),
    #[error("trust document version {offered} is not above the current {current}")]
    StaleTrust { offered: u64, current: u64 },
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

// ------------------------------------------------------------------------------ keys

/// An Ed25519 public key, in text `ed25519:<base64 of the raw 32 bytes>`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parse `ed25519:<base64>` (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, Refusal> {
        let b64 = text
            .trim()
            .strip_prefix(PUBLIC_PREFIX)
            .ok_or_else(|| Refusal::BadKey(format!("a public key starts with {PUBLIC_PREFIX}")))?;
        let raw: [u8; 32] = STANDARD
            .decode(b64)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| Refusal::BadKey("not base64 of 32 bytes".into()))?;
        VerifyingKey::from_bytes(&raw)
            .map(PublicKey)
            .map_err(|_| Refusal::BadKey("not a valid Ed25519 point".into()))
    }

    /// First 16 lowercase hex chars of the SHA-256 of the raw key.
    pub fn key_id(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        hex::encode(digest)[..16].to_owned()
    }

    /// Whether `sig` (base64) is this key's signature over `message`.
    pub fn verifies(&self, message: &[u8], sig: &str) -> bool {
        let Some(bytes) = STANDARD
            .decode(sig)
            .ok()
            .and_then(|v| <[u8; 64]>::try_from(v).ok())
        else {
            return false;
        };
        self.0
            .verify_strict(message, &Signature::from_bytes(&bytes))
            .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", STANDARD.encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

/// An operator's Ed25519 signing key; its file holds `ed25519-secret:<base64 seed>`.
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Self {
        let seed: [u8; 32] = rand::random();
        SecretKey(SigningKey::from_bytes(&seed))
    }

    /// Parse the content of a key file.
    pub fn parse(text: &str) -> Result<Self, Refusal> {
        let b64 = text.trim().strip_prefix(SECRET_PREFIX).ok_or_else(|| {
            Refusal::BadKey(format!("a secret key file starts with {SECRET_PREFIX}"))
        })?;
        let seed: [u8; 32] = STANDARD
            .decode(b64)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| Refusal::BadKey("not base64 of a 32-byte seed".into()))?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// The key file's content (one line).
    pub fn to_file_text(&self) -> String {
        format!("{SECRET_PREFIX}{}\n", STANDARD.encode(self.0.to_bytes()))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The signature entry for `message`.
    pub fn sign(&self, message: &[u8]) -> SignatureEntry {
        SignatureEntry {
            keyid: self.public().key_id(),
            sig: STANDARD.encode(self.0.sign(message).to_bytes()),
        }
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.public().key_id())
    }
}

// ------------------------------------------------------------------------- documents

/// One signature over a document's metadata text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignatureEntry {
    /// First 16 hex chars of the SHA-256 of the signer's raw Ed25519 public key.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[0-9a-f]{16}$", min_length = 16, max_length = 16)
    )]
    pub keyid: String,
    /// Base64 Ed25519 signature over the UTF-8 bytes of `metadata`.
    pub sig: String,
}

/// `{"metadata": "<JSON text>", "signatures": [...]}` — bundle metadata or a trust set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(
        description = "Signed metadata (SPEC section 7). `metadata` is a JSON text kept as a string, so signers and verifiers use the exact signed bytes. For a bundle it holds {bundle_version, sha256, size_bytes, device_types, expires, allow_downgrade}; for a trust document {keys, threshold, version, expires}."
    )
)]
pub struct SignedDocument {
    #[cfg_attr(feature = "openapi", schema(max_length = 16384))]
    pub metadata: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 64))]
    pub signatures: Vec<SignatureEntry>,
}

impl SignedDocument {
    /// Serialise `metadata` and sign it with `key`.
    pub fn sign_new<T: Serialize>(metadata: &T, key: &SecretKey) -> Result<Self, Refusal> {
        let text = serde_json::to_string_pretty(metadata)
            .map_err(|e| Refusal::Malformed(e.to_string()))?;
        let mut doc = SignedDocument {
            metadata: text,
            signatures: Vec::new(),
        };
        doc.add_signature(key);
        Ok(doc)
    }

    /// Add (or replace) `key`'s signature.
    pub fn add_signature(&mut self, key: &SecretKey) {
        let entry = key.sign(self.metadata.as_bytes());
        self.signatures.retain(|s| s.keyid != entry.keyid);
        self.signatures.push(entry);
    }

    /// Add the signatures of `other` (over the same metadata) not already present.
    /// Returns how many were added.
    pub fn merge(&mut self, other: &SignedDocument) -> Result<usize, Refusal> {
        if other.metadata != self.metadata {
            return Err(Refusal::Malformed(
                "the signatures are over different metadata than the stored one".into(),
            ));
        }
        let mut added = 0;
        for s in &other.signatures {
            if !self.signatures.iter().any(|e| e == s) {
                self.signatures.push(s.clone());
                added += 1;
            }
        }
        self.check_shape()?;
        Ok(added)
    }

    /// Size limits and well-formed signature entries (not whether they verify).
    pub fn check_shape(&self) -> Result<(), Refusal> {
        if self.metadata.len() > MAX_METADATA_LEN {
            return Err(Refusal::Malformed(format!(
                "metadata is over {MAX_METADATA_LEN} bytes"
            )));
        }
        if self.signatures.len() > MAX_SIGNATURES {
            return Err(Refusal::Malformed(format!(
                "more than {MAX_SIGNATURES} signatures"
            )));
        }
        for s in &self.signatures {
            let keyid_ok = s.keyid.len() == 16
                && s.keyid
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            if !keyid_ok {
                return Err(Refusal::Malformed(format!(
                    "keyid {:?} is not 16 lowercase hex chars",
                    s.keyid
                )));
            }
            let sig_ok = STANDARD.decode(&s.sig).is_ok_and(|b| b.len() == 64);
            if !sig_ok {
                return Err(Refusal::Malformed(format!(
                    "signature of {} is not base64 of 64 bytes",
                    s.keyid
                )));
            }
        }
        Ok(())
    }

    /// The metadata parsed as bundle metadata.
    pub fn bundle_metadata(&self) -> Result<BundleMetadata, Refusal> {
        self.check_shape()?;
        serde_json::from_str(&self.metadata)
            .map_err(|e| Refusal::Malformed(format!("bundle metadata: {e}")))
    }

    /// The metadata parsed as a trust set.
    pub fn trust_metadata(&self) -> Result<TrustMetadata, Refusal> {
        self.check_shape()?;
        serde_json::from_str(&self.metadata)
            .map_err(|e| Refusal::Malformed(format!("trust metadata: {e}")))
    }
}

/// The payload of a `{"type": "trust", "document": {...}}` heartbeat command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(
        description = "A newer trust set (key rotation): sent while the device's reported trust_version is lower."
    )
)]
pub struct TrustCommand {
    pub document: SignedDocument,
}

/// What the signers vouch for about one bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleMetadata {
    pub bundle_version: String,
    pub sha256: String,
    pub size_bytes: u64,
    /// Empty: any device type.
    #[serde(default)]
    pub device_types: Vec<String>,
    pub expires: DateTime<Utc>,
    #[serde(default)]
    pub allow_downgrade: bool,
}

/// A trust set: the keys devices trust, how many must sign, its version and expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustMetadata {
    pub keys: Vec<String>,
    pub threshold: usize,
    pub version: u64,
    pub expires: DateTime<Utc>,
}

/// A parsed, usable trust set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustSet {
    keys: Vec<PublicKey>,
    threshold: usize,
    /// 0 for provisioned keys; a trust document's version otherwise.
    pub version: u64,
}

impl TrustSet {
    /// Provisioned keys (duplicates removed) with a threshold of 1..=number of keys.
    pub fn new(keys: Vec<PublicKey>, threshold: usize) -> Result<Self, Refusal> {
        let mut seen = BTreeSet::new();
        let keys: Vec<_> = keys
            .into_iter()
            .filter(|k| seen.insert(k.key_id()))
            .collect();
        if threshold == 0 || threshold > keys.len() {
            return Err(Refusal::BadKey(format!(
                "threshold {threshold} needs between 1 and {} trusted keys",
                keys.len()
            )));
        }
        if keys.len() > MAX_TRUST_KEYS {
            return Err(Refusal::BadKey(format!("more than {MAX_TRUST_KEYS} keys")));
        }
        Ok(TrustSet {
            keys,
            threshold,
            version: 0,
        })
    }

    /// The set a trust document describes (its signatures are not checked here).
    pub fn from_metadata(meta: &TrustMetadata) -> Result<Self, Refusal> {
        let keys = meta
            .keys
            .iter()
            .map(|k| PublicKey::parse(k))
            .collect::<Result<Vec<_>, _>>()?;
        let mut set = TrustSet::new(keys, meta.threshold)?;
        set.version = meta.version;
        Ok(set)
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// Distinct trusted keys with a valid signature on `doc`, and a note on the
    /// signatures that did not count.
    pub fn valid_signers(&self, doc: &SignedDocument) -> (BTreeSet<String>, String) {
        let mut valid = BTreeSet::new();
        let mut notes = Vec::new();
        for s in &doc.signatures {
            match self.keys.iter().find(|k| k.key_id() == s.keyid) {
                None => notes.push(format!("{} is not a trusted key", s.keyid)),
                Some(k) if k.verifies(doc.metadata.as_bytes(), &s.sig) => {
                    valid.insert(s.keyid.clone());
                }
                Some(_) => notes.push(format!("signature of {} does not verify", s.keyid)),
            }
        }
        notes.dedup();
        (valid, notes.join("; "))
    }

    /// At least `needed` distinct trusted keys signed `doc` validly.
    pub fn check_threshold(&self, doc: &SignedDocument, needed: usize) -> Result<(), Refusal> {
        if doc.signatures.is_empty() {
            return Err(Refusal::Unsigned { needed });
        }
        let (valid, detail) = self.valid_signers(doc);
        if valid.len() < needed {
            return Err(Refusal::TooFewSignatures {
                valid: valid.len(),
                needed,
                detail,
            });
        }
        Ok(())
    }

    /// Accept a new trust document: a higher version, not expired, signed by a threshold
    /// of *this* set's keys. Returns the new set.
    pub fn accept_update(
        &self,
        doc: &SignedDocument,
        now: DateTime<Utc>,
    ) -> Result<(TrustMetadata, TrustSet), Refusal> {
        let meta = doc.trust_metadata()?;
        if meta.version <= self.version {
            return Err(Refusal::StaleTrust {
                offered: meta.version,
                current: self.version,
            });
        }
        if meta.expires <= now {
            return Err(Refusal::Expired(meta.expires.to_rfc3339()));
        }
        let next = TrustSet::from_metadata(&meta)?;
        self.check_threshold(doc, self.threshold)?;
        Ok((meta, next))
    }
}

// ----------------------------------------------------------------------------- checks

/// What the device knows when a deploy or rollback command arrives.
#[derive(Debug, Clone)]
pub struct BundleCheck<'a> {
    /// The version the command names.
    pub bundle_version: &'a str,
    /// The checksum and size the download is checked against.
    pub sha256: &'a str,
    pub size_bytes: u64,
    pub device_type: &'a str,
    pub now: DateTime<Utc>,
    /// The highest version this device has installed (semver order), if any.
    pub highest_installed: Option<&'a str>,
    /// The command is a rollback to a version in the device's own successful history.
    pub rollback_to_known_good: bool,
}

/// Every check of SPEC §7 "Agent trust", in order: signatures (threshold over distinct
/// trusted keys), version, sha256/size, device type, expiry, anti-rollback.
pub fn verify_bundle(
    trust: &TrustSet,
    signed: Option<&SignedDocument>,
    check: &BundleCheck<'_>,
) -> Result<BundleMetadata, Refusal> {
    let Some(doc) = signed else {
        return Err(Refusal::Unsigned {
            needed: trust.threshold,
        });
    };
    trust.check_threshold(doc, trust.threshold)?;
    let meta = doc.bundle_metadata()?;
    if meta.bundle_version != check.bundle_version {
        return Err(Refusal::VersionMismatch {
            signed: meta.bundle_version,
            command: check.bundle_version.to_owned(),
        });
    }
    if !meta.sha256.eq_ignore_ascii_case(check.sha256) {
        return Err(Refusal::ChecksumMismatch {
            signed: meta.sha256,
            actual: check.sha256.to_owned(),
        });
    }
    if meta.size_bytes != check.size_bytes {
        return Err(Refusal::SizeMismatch {
            signed: meta.size_bytes,
            actual: check.size_bytes,
        });
    }
    if !meta.device_types.is_empty() && !meta.device_types.iter().any(|t| t == check.device_type) {
        return Err(Refusal::WrongDeviceType {
            device_type: check.device_type.to_owned(),
            allowed: meta.device_types.join(", "),
        });
    }
    if meta.expires <= check.now {
        return Err(Refusal::Expired(meta.expires.to_rfc3339()));
    }
    check_downgrade(&meta, check)?;
    Ok(meta)
}

fn check_downgrade(meta: &BundleMetadata, check: &BundleCheck<'_>) -> Result<(), Refusal> {
    let version = parse_semver(&meta.bundle_version)?;
    let Some(installed) = check.highest_installed else {
        return Ok(());
    };
    // A highest version that is not semver (installed before signing was on) gives no
    // order to compare with.
    let Ok(highest) = semver::Version::parse(installed) else {
        return Ok(());
    };
    if version < highest && !check.rollback_to_known_good && !meta.allow_downgrade {
        return Err(Refusal::Downgrade {
            version: meta.bundle_version.clone(),
            installed: installed.to_owned(),
        });
    }
    Ok(())
}

/// A version in semver form, or the refusal `bundle sign` and the agent give.
pub fn parse_semver(version: &str) -> Result<semver::Version, Refusal> {
    semver::Version::parse(version).map_err(|_| Refusal::NotSemver(version.to_owned()))
}

/// The higher of two versions in semver order (a non-semver one loses).
pub fn higher_version<'a>(a: Option<&'a str>, b: &'a str) -> &'a str {
    match a {
        None => b,
        Some(a) => match (semver::Version::parse(a), semver::Version::parse(b)) {
            (Ok(x), Ok(y)) if x >= y => a,
            (Ok(_), Err(_)) => a,
            _ => b,
        },
    }
}

/// Parse an expiry like `90d`, `12h`, `30m`, `1y` (365 days) or an RFC 3339 time.
pub fn parse_expiry(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let (num, unit) = text.split_at(text.len().saturating_sub(1));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("{text:?}: expected e.g. 90d, 12h, 1y or an RFC 3339 time"))?;
    let span = match unit {
        "m" => Duration::try_minutes(n),
        "h" => Duration::try_hours(n),
        "d" => Duration::try_days(n),
        "y" => n.checked_mul(365).and_then(Duration::try_days),
        _ => None,
    }
    .filter(|d| *d > Duration::zero())
    .ok_or_else(|| format!("{text:?}: expected a positive span such as 90d, 12h or 1y"))?;
    now.checked_add_signed(span)
        .ok_or_else(|| format!("{text:?} is too far in the future"))
}

#[cfg(test)]
mod tests;
