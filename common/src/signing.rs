//! Device identity: RSA keys, RSASSA-PSS registration signatures, fingerprints.
//!
//! The device signs the exact bytes of its registration body with RSASSA-PSS (SHA-256,
//! MGF1-SHA-256, salt length 32) and sends the base64 signature in
//! [`SIGNATURE_HEADER`]. Signing uses only the randomized (blinded) signer
//! (`sign_with_rng`), because the `rsa` crate's unblinded private-key operations carry a
//! timing advisory (RUSTSEC-2023-0071); verification is unaffected by it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::pss::{Signature, SigningKey, VerifyingKey};
use rsa::signature::{RandomizedSigner, Verifier};
use rsa::traits::PublicKeyParts;
use rsa::{PrivateKey, PublicKey};
use sha2::{Digest, Sha256};

/// Header carrying the base64 registration signature.
pub const SIGNATURE_HEADER: &str = "X-Kernex-Signature";
/// Header carrying the enrollment token on registration.
pub const ENROLLMENT_HEADER: &str = "X-Kernex-Enrollment-Token";
/// Smallest RSA modulus accepted for a device key.
pub const MIN_KEY_BITS: usize = 2048;

/// Why a key or signature was refused.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("public_key is not a PEM SubjectPublicKeyInfo RSA key")]
    BadPublicKey,
    #[error("RSA key has {0} bits; at least 2048 are required")]
    KeyTooSmall(usize),
    #[error("signature is not valid base64")]
    BadEncoding,
    #[error("signature does not verify")]
    Mismatch,
    #[error("private key: {0}")]
    PrivateKey(String),
}

/// A device's public key, parsed and size-checked.
#[derive(Debug, Clone)]
pub struct DevicePublicKey {
    key: PublicKey,
    der: Vec<u8>,
}

impl DevicePublicKey {
    /// Parse a PEM `SubjectPublicKeyInfo` RSA key of at least [`MIN_KEY_BITS`] bits.
    pub fn from_pem(pem: &str) -> Result<Self, SigningError> {
        let key =
            PublicKey::from_public_key_pem(pem.trim()).map_err(|_| SigningError::BadPublicKey)?;
        let bits = key.size() * 8;
        if bits < MIN_KEY_BITS {
            return Err(SigningError::KeyTooSmall(bits));
        }
        let der = key
            .to_public_key_der()
            .map_err(|_| SigningError::BadPublicKey)?
            .as_bytes()
            .to_vec();
        Ok(DevicePublicKey { key, der })
    }

    /// Lowercase hex SHA-256 of the SubjectPublicKeyInfo DER.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(&self.der))
    }

    /// The key re-encoded as canonical PEM.
    pub fn to_pem(&self) -> String {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
    }

    /// Verify a base64 RSASSA-PSS/SHA-256 signature (salt 32) over `body`.
    pub fn verify(&self, body: &[u8], signature_b64: &str) -> Result<(), SigningError> {
        let raw = STANDARD
            .decode(signature_b64.trim())
            .map_err(|_| SigningError::BadEncoding)?;
        let sig = Signature::try_from(raw.as_slice()).map_err(|_| SigningError::Mismatch)?;
        VerifyingKey::<Sha256>::new(self.key.clone())
            .verify(body, &sig)
            .map_err(|_| SigningError::Mismatch)
    }
}

/// A device's private key (held only by the agent, and by tests acting as devices).
#[derive(Clone)]
pub struct DeviceKey {
    key: PrivateKey,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceKey(..)")
    }
}

impl DeviceKey {
    /// Generate a new key of `bits` bits (the agent uses 4096).
    pub fn generate(bits: usize) -> Result<Self, SigningError> {
        let key = PrivateKey::new(&mut rand::rng(), bits)
            .map_err(|e| SigningError::PrivateKey(e.to_string()))?;
        Ok(DeviceKey { key })
    }

    /// Load a PKCS#8 PEM private key.
    pub fn from_pem(pem: &str) -> Result<Self, SigningError> {
        let key =
            PrivateKey::from_pkcs8_pem(pem).map_err(|e| SigningError::PrivateKey(e.to_string()))?;
        Ok(DeviceKey { key })
    }

    /// PKCS#8 PEM of the private key (to store with mode 0600).
    pub fn to_pem(&self) -> Result<String, SigningError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map(|p| p.to_string())
            .map_err(|e| SigningError::PrivateKey(e.to_string()))
    }

    /// PEM SubjectPublicKeyInfo of the public half, as registration sends it.
    pub fn public_key_pem(&self) -> Result<String, SigningError> {
        self.key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| SigningError::PrivateKey(e.to_string()))
    }

    /// Base64 RSASSA-PSS signature over `body`, made with the blinded randomized signer.
    pub fn sign(&self, body: &[u8]) -> String {
        let signer = SigningKey::<Sha256>::new(self.key.clone());
        let sig = signer.sign_with_rng(&mut rand::rng(), body);
        STANDARD.encode(Box::<[u8]>::from(sig))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_fingerprint() {
        let key = DeviceKey::generate(2048).unwrap();
        let public = DevicePublicKey::from_pem(&key.public_key_pem().unwrap()).unwrap();
        let body = br#"{"hello":"world"}"#;
        let sig = key.sign(body);
        public.verify(body, &sig).unwrap();
        assert!(matches!(
            public.verify(b"{}", &sig),
            Err(SigningError::Mismatch)
        ));
        assert!(matches!(
            public.verify(body, "%%%"),
            Err(SigningError::BadEncoding)
        ));
        assert_eq!(public.fingerprint().len(), 64);
        let reloaded = DeviceKey::from_pem(&key.to_pem().unwrap()).unwrap();
        public.verify(body, &reloaded.sign(body)).unwrap();
    }

    #[test]
    fn refuses_small_and_garbage_keys() {
        let small = DeviceKey::generate(1024).unwrap();
        assert!(matches!(
            DevicePublicKey::from_pem(&small.public_key_pem().unwrap()),
            Err(SigningError::KeyTooSmall(1024))
        ));
        assert!(matches!(
            DevicePublicKey::from_pem("nope"),
            Err(SigningError::BadPublicKey)
        ));
    }
}
