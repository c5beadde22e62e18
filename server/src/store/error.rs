//! The store's error type: domain outcomes for the client, and engine failures that stay
//! opaque (no engine type appears here, so handlers are the same for every backend).

/// What can go wrong in the store. The domain variants carry a message for the client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unauthorized(String),
    /// A limit is reached (e.g. too many pending devices); answered as 503.
    #[error("{0}")]
    Unavailable(String),
    /// The data dir (or database) is held by another process.
    #[error("the store is in use by another process")]
    Locked,
    /// The engine failed (I/O, corruption, a lost connection). Logged, answered as 500.
    #[error("storage error: {0}")]
    Backend(String),
    /// A stored record could not be decoded.
    #[error("stored record could not be decoded: {0}")]
    Codec(String),
}

impl StoreError {
    pub fn backend(e: impl std::fmt::Display) -> Self {
        StoreError::Backend(e.to_string())
    }

    pub fn codec(e: impl std::fmt::Display) -> Self {
        StoreError::Codec(e.to_string())
    }

    /// True when the data dir is held by another process.
    pub fn is_locked(&self) -> bool {
        matches!(self, StoreError::Locked)
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::codec(e)
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;
