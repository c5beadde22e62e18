//! Bearer-token authentication. [`Caller`] is the extractor: it answers 401 itself, and
//! handlers then ask it for the permission they need *after* resolving the resource in
//! the path, which gives the spec's order 401 → 404 → 403.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngExt;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;
use crate::store::Principal;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Operator { name: String },
    Device { device_id: String },
}

impl Caller {
    /// Operators only.
    pub fn require_operator(&self) -> Result<(), ApiError> {
        match self {
            Caller::Operator { .. } => Ok(()),
            Caller::Device { .. } => {
                Err(ApiError::forbidden("this endpoint needs an operator token"))
            }
        }
    }

    /// The device itself only.
    pub fn require_device(&self, device_id: &str) -> Result<(), ApiError> {
        match self {
            Caller::Device { device_id: own } if own == device_id => Ok(()),
            Caller::Device { .. } => Err(ApiError::forbidden(
                "a device token may only act for its own device",
            )),
            Caller::Operator { .. } => Err(ApiError::forbidden(
                "this endpoint needs the device's own token",
            )),
        }
    }

    /// An operator, or the device itself.
    pub fn require_operator_or_device(&self, device_id: &str) -> Result<(), ApiError> {
        match self {
            Caller::Operator { .. } => Ok(()),
            Caller::Device { .. } => self.require_device(device_id),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers)?;
        match state.store.principal(&hash_token(token)).await? {
            Some(Principal::Operator { name }) => Ok(Caller::Operator { name }),
            Some(Principal::Device { device_id }) => Ok(Caller::Device { device_id }),
            None => Err(ApiError::unauthorized("invalid or revoked token")),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is matched
/// case-insensitively (RFC 9110 §11.1), so `bearer` works too.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let header = headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
    header
        .to_str()
        .ok()
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("Authorization must be 'Bearer <token>'"))
}

/// Hex SHA-256 of a token: what the store keeps. Tokens are 256 random bits, so a plain
/// hash is enough (no password-style stretching needed).
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token with a readable prefix (`kxo_` operator, `kxd_` device).
pub fn mint_token(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Constant-time equality for secrets compared outside the store (enrollment token).
pub fn secret_eq(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}
