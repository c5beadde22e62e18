//! The device's identity: its RSA key (`device_key.pem`) and what registration gave it
//! (`device.json`).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use chrono::{DateTime, Utc};
use kernex_common::api::{Admission, RegisterRequest};
use kernex_common::signing::{DeviceKey, DevicePublicKey};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use crate::client::{Client, ClientError};
use crate::fsutil;
use crate::sysmetrics;

/// `device.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceFile {
    pub device_id: String,
    pub device_token: String,
    /// The server this identity belongs to.
    pub server: String,
    pub admission: Admission,
    pub registered_at: DateTime<Utc>,
    pub public_key_fingerprint: String,
}

impl DeviceFile {
    pub fn load(path: &Path) -> io::Result<Option<Self>> {
        fsutil::read_json(path)
    }

    pub fn save(&self, path: &Path) -> io::Result<()> {
        fsutil::write_json(path, self, 0o600)
    }
}

/// The private key and its public half.
#[derive(Debug)]
pub struct Identity {
    pub key: DeviceKey,
    pub public_key_pem: String,
    pub fingerprint: String,
}

impl Identity {
    /// Load `device_key.pem`, or generate a `bits`-bit key and write it (0600) when there
    /// is none. An unreadable key is an error, never replaced: the key *is* the device.
    pub async fn load_or_create(path: &Path, bits: usize) -> anyhow::Result<Self> {
        let key = match fs::read_to_string(path) {
            Ok(pem) => {
                let mode = fs::metadata(path)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "device key was readable by others; setting 0600");
                    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
                }
                DeviceKey::from_pem(&pem).with_context(|| {
                    format!(
                        "{} is not a usable private key (move it away to make a new identity)",
                        path.display()
                    )
                })?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::info!(bits, "generating the device key (this takes a moment)");
                let key = tokio::task::spawn_blocking(move || DeviceKey::generate(bits))
                    .await
                    .context("key generation task failed")?
                    .context("cannot generate the device key")?;
                let pem = key.to_pem().context("cannot encode the device key")?;
                fsutil::write_atomic(path, pem.as_bytes(), 0o600)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                tracing::info!(path = %path.display(), "device key written");
                key
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let public_key_pem = key
            .public_key_pem()
            .context("cannot encode the public key")?;
        let fingerprint = DevicePublicKey::from_pem(&public_key_pem)
            .context("cannot read back the public key")?
            .fingerprint();
        Ok(Identity {
            key,
            public_key_pem,
            fingerprint,
        })
    }

    /// Register with the server (SPEC §1.2): sign the exact body bytes with the blinded
    /// signer and post them. The same key always gets the same device id back.
    pub async fn register(
        &self,
        client: &Client,
        device_type: &str,
        enrollment_token: Option<&str>,
    ) -> Result<DeviceFile, RegisterError> {
        let first = self
            .register_at(client, device_type, enrollment_token, Utc::now())
            .await;
        let Err(RegisterError::Refused(ref why)) = first else {
            return first;
        };
        // Devices without a real-time clock boot with a wrong one, and the server refuses
        // a timestamp more than 5 minutes off. Its `Date` header tells its time: when ours
        // is that far off, sign once more with the server's (the signature still proves
        // the key; the server still refuses replays).
        let Some(server_now) = client.server_time().await else {
            return first;
        };
        let skew = (server_now - Utc::now()).num_seconds();
        if skew.abs() < 240 {
            return first;
        }
        tracing::warn!(skew_s = skew, refused = %why, "this device's clock is off; registering with the server's time");
        self.register_at(client, device_type, enrollment_token, server_now)
            .await
    }

    async fn register_at(
        &self,
        client: &Client,
        device_type: &str,
        enrollment_token: Option<&str>,
        timestamp: DateTime<Utc>,
    ) -> Result<DeviceFile, RegisterError> {
        let body = RegisterRequest {
            public_key: self.public_key_pem.clone(),
            device_type: device_type.to_owned(),
            hardware_metadata: sysmetrics::hardware_metadata(),
            timestamp,
        };
        let bytes = serde_json::to_vec(&body).map_err(|e| RegisterError::Local(e.into()))?;
        let key = self.key.clone();
        let signed = bytes.clone();
        let signature = tokio::task::spawn_blocking(move || key.sign(&signed))
            .await
            .map_err(|e| RegisterError::Local(e.into()))?;
        match client.register(bytes, &signature, enrollment_token).await {
            Ok((status, resp)) => {
                if !kernex_common::validate::is_valid_id(&resp.device_id) {
                    return Err(RegisterError::Local(anyhow::anyhow!(
                        "server returned an unusable device id {:?}",
                        resp.device_id
                    )));
                }
                tracing::info!(
                    device.id = %resp.device_id,
                    admission = resp.admission.as_str(),
                    new = status == StatusCode::CREATED,
                    "registered"
                );
                Ok(DeviceFile {
                    device_id: resp.device_id,
                    device_token: resp.device_token,
                    server: client.server().to_owned(),
                    admission: resp.admission,
                    registered_at: Utc::now(),
                    public_key_fingerprint: self.fingerprint.clone(),
                })
            }
            Err(e) if e.is_transient() => Err(RegisterError::Transient(e)),
            Err(e) => Err(RegisterError::Refused(match e.status() {
                Some(StatusCode::UNAUTHORIZED) => format!(
                    "{e} (check the enrollment token, and that this device's clock is within 5 minutes of the server's)"
                ),
                Some(StatusCode::FORBIDDEN) => {
                    format!("{e} (an operator rejected this device)")
                }
                _ => e.to_string(),
            })),
        }
    }
}

/// Why registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(transparent)]
    Transient(ClientError),
    #[error("registration refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Local(anyhow::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Check that `path` holds a private key file only its owner can read.
    fn check_private(path: &Path) -> anyhow::Result<()> {
        let mode = fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            anyhow::bail!("{} has mode {mode:o}; expected 0600", path.display());
        }
        Ok(())
    }

    #[tokio::test]
    async fn key_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device_key.pem");
        let first = Identity::load_or_create(&path, 2048).await.unwrap();
        check_private(&path).unwrap();
        let again = Identity::load_or_create(&path, 2048).await.unwrap();
        assert_eq!(first.fingerprint, again.fingerprint);
    }

    #[tokio::test]
    async fn a_damaged_key_is_an_error_and_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device_key.pem");
        fs::write(&path, "garbage").unwrap();
        let err = Identity::load_or_create(&path, 2048).await.unwrap_err();
        assert!(format!("{err:#}").contains("not a usable private key"));
        assert_eq!(fs::read_to_string(&path).unwrap(), "garbage");
    }
}
