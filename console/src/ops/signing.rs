//! Signed updates (SPEC §7) from the operator's side: `key generate NAME`, `bundle sign
//! FILE --key NAME.key`, `bundle add-signatures VERSION FILE.sig.json`, `trust sign FILE
//! --key NAME.key` and `trust push FILE`.
//!
//! Keys stay on the operator's machine: the server only ever sees public keys and
//! signatures. A second signer runs `bundle sign` on the same archive; when FILE.sig.json
//! exists and describes that archive, the new signature is added to it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::Utc;
use kernex_common::update_signing::{
    BundleMetadata, SecretKey, SignedDocument, TrustMetadata, TrustSet, parse_expiry, parse_semver,
};
use serde::Serialize;

use super::{OpError, OpResult, Report, connect};
use crate::cli::ConnArgs;

/// Where `bundle sign FILE` writes and `bundle push FILE` looks: `FILE.sig.json`.
pub(crate) fn sig_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".sig.json");
    PathBuf::from(name)
}

/// The signatures document beside `file`, if there is one.
pub(crate) fn sig_beside(file: &Path) -> OpResult<Option<SignedDocument>> {
    let path = sig_path(file);
    if !path.exists() {
        return Ok(None);
    }
    read_doc(&path).map(Some)
}

fn read_doc(path: &Path) -> OpResult<SignedDocument> {
    let text = fs::read_to_string(path)
        .map_err(|e| OpError::Usage(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        OpError::Usage(format!(
            "{} is not a signed document ({{\"metadata\", \"signatures\"}}): {e}",
            path.display()
        ))
    })
}

fn read_key(path: &Path) -> OpResult<SecretKey> {
    let text = fs::read_to_string(path)
        .map_err(|e| OpError::Usage(format!("cannot read key {}: {e}", path.display())))?;
    SecretKey::parse(&text).map_err(|e| OpError::Usage(format!("{}: {e}", path.display())))
}

/// Write `bytes` to a new file with `mode`, refusing to replace one.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> OpResult<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| OpError::Failed(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| OpError::Failed(format!("cannot write {}: {e}", path.display())))
}

/// Replace `path` atomically with `doc` as pretty JSON.
fn write_doc(path: &Path, doc: &SignedDocument) -> OpResult<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| OpError::Failed(format!("cannot write in {}: {e}", dir.display())))?;
    let mut text = serde_json::to_string_pretty(doc)
        .map_err(|e| OpError::Failed(format!("cannot encode: {e}")))?;
    text.push('\n');
    tmp.write_all(text.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| OpError::Failed(format!("cannot write {}: {e}", path.display())))?;
    tmp.persist(path)
        .map_err(|e| OpError::Failed(format!("cannot write {}: {e}", path.display())))?;
    Ok(())
}

#[derive(Debug, Serialize)]
struct Generated {
    key_file: PathBuf,
    public_key_file: PathBuf,
    public_key: String,
    keyid: String,
}

/// `key generate NAME`: NAME.key (0600) and NAME.pub; prints the public key.
pub(crate) fn generate_key(name: &Path) -> OpResult<Report> {
    let with_ext = |ext: &str| {
        let mut n = name.as_os_str().to_owned();
        n.push(ext);
        PathBuf::from(n)
    };
    let (key_file, public_key_file) = (with_ext(".key"), with_ext(".pub"));
    for p in [&key_file, &public_key_file] {
        if p.exists() {
            return Err(OpError::Usage(format!(
                "{} exists; pick another name (a key is never overwritten)",
                p.display()
            )));
        }
    }
    let key = SecretKey::generate();
    let public_key = key.public().to_string();
    write_new(&key_file, key.to_file_text().as_bytes(), 0o600)?;
    write_new(
        &public_key_file,
        format!("{public_key}\n").as_bytes(),
        0o644,
    )?;
    let human = format!("{public_key}\n");
    Report::new(
        &Generated {
            key_file,
            public_key_file,
            keyid: key.public().key_id(),
            public_key,
        },
        human,
    )
}

#[derive(Debug, Serialize)]
struct Signed {
    signatures_file: PathBuf,
    bundle_version: String,
    keyid: String,
    signatures: usize,
}

/// `bundle sign FILE --key K`: FILE.sig.json with this key's signature (added to the
/// document already there when it describes the same archive).
pub(crate) fn sign_bundle(
    file: &Path,
    key: &Path,
    expires: &str,
    device_types: &[String],
    allow_downgrade: bool,
) -> OpResult<Report> {
    let key = read_key(key)?;
    let expires = parse_expiry(expires, Utc::now()).map_err(OpError::Usage)?;
    if let Some(bad) = device_types
        .iter()
        .find(|t| !kernex_common::validate::is_valid_tag(t))
    {
        return Err(OpError::Usage(format!("invalid device type {bad:?}")));
    }
    let archive = fs::File::open(file)
        .map_err(|e| OpError::Usage(format!("cannot read {}: {e}", file.display())))?;
    let inspection = kernex_common::bundle::inspect(
        std::io::BufReader::new(archive),
        &kernex_common::bundle::Limits::default(),
    )
    .map_err(|e| OpError::Failed(format!("{} is not a valid bundle: {e}", file.display())))?;
    let version = inspection.manifest.version;
    parse_semver(&version).map_err(|e| OpError::Failed(format!("cannot sign: {e}")))?;
    let sha256 = kernex_common::bundle::sha256_file(file)
        .map_err(|e| OpError::Failed(format!("cannot read {}: {e}", file.display())))?;
    let size_bytes = fs::metadata(file)
        .map_err(|e| OpError::Failed(format!("cannot read {}: {e}", file.display())))?
        .len();

    let out = sig_path(file);
    let existing = sig_beside(file)?.filter(|d| {
        d.bundle_metadata().is_ok_and(|m| {
            m.bundle_version == version && m.sha256 == sha256 && m.size_bytes == size_bytes
        })
    });
    let doc = match existing {
        // Another signer went first: sign the same text.
        Some(mut doc) => {
            doc.add_signature(&key);
            doc
        }
        None => {
            let meta = BundleMetadata {
                bundle_version: version.clone(),
                sha256,
                size_bytes,
                device_types: device_types.to_vec(),
                expires,
                allow_downgrade,
            };
            SignedDocument::sign_new(&meta, &key).map_err(|e| OpError::Failed(e.to_string()))?
        }
    };
    write_doc(&out, &doc)?;
    let human = format!(
        "{} ({} signature(s))\n",
        out.display(),
        doc.signatures.len()
    );
    Report::new(
        &Signed {
            signatures_file: out,
            bundle_version: version,
            keyid: key.public().key_id(),
            signatures: doc.signatures.len(),
        },
        human,
    )
}

/// `bundle add-signatures VERSION FILE`.
pub(crate) async fn add_signatures(
    conn: &ConnArgs,
    version: &str,
    file: &Path,
) -> OpResult<Report> {
    let doc = read_doc(file)?;
    let api = connect(conn)?;
    let bundle = api
        .bundles()
        .await?
        .into_iter()
        .find(|b| b.version == version)
        .ok_or_else(|| OpError::Failed(format!("the server has no bundle version {version}")))?;
    let stored = api.add_signatures(&bundle.id, &doc).await?;
    let human = format!(
        "bundle {version}: {} signature(s) stored\n",
        stored.signatures.len()
    );
    Report::new(&stored, human)
}

/// `trust sign FILE --key K`: sign the trust metadata in FILE (or add a signature to the
/// signed document there) and rewrite FILE as the signed document.
pub(crate) fn sign_trust(file: &Path, key: &Path) -> OpResult<Report> {
    let key = read_key(key)?;
    let text = fs::read_to_string(file)
        .map_err(|e| OpError::Usage(format!("cannot read {}: {e}", file.display())))?;
    let mut doc = match serde_json::from_str::<SignedDocument>(&text) {
        Ok(doc) => {
            doc.trust_metadata()
                .map_err(|e| OpError::Usage(format!("{}: {e}", file.display())))?;
            doc
        }
        Err(_) => {
            let meta: TrustMetadata = serde_json::from_str(&text).map_err(|e| {
                OpError::Usage(format!(
                    "{} holds neither a trust document nor trust metadata \
                     {{\"keys\", \"threshold\", \"version\", \"expires\"}}: {e}",
                    file.display()
                ))
            })?;
            TrustSet::from_metadata(&meta)
                .map_err(|e| OpError::Usage(format!("{}: {e}", file.display())))?;
            SignedDocument {
                metadata: serde_json::to_string_pretty(&meta)
                    .map_err(|e| OpError::Failed(e.to_string()))?,
                signatures: Vec::new(),
            }
        }
    };
    doc.add_signature(&key);
    write_doc(file, &doc)?;
    let human = format!(
        "{} ({} signature(s))\n",
        file.display(),
        doc.signatures.len()
    );
    Report::new(&doc, human)
}

/// `trust push FILE` → `PUT /trust`.
pub(crate) async fn push_trust(conn: &ConnArgs, file: &Path) -> OpResult<Report> {
    let doc = read_doc(file)?;
    let meta = doc
        .trust_metadata()
        .map_err(|e| OpError::Usage(format!("{}: {e}", file.display())))?;
    let stored = connect(conn)?.put_trust(&doc).await?;
    let human = format!(
        "trust document version {} stored; devices adopt it in their next heartbeats\n",
        meta.version
    );
    Report::new(&stored, human)
}
