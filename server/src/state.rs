//! Shared state handed to every handler.

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::events::Events;
use crate::metrics::Metrics;
use crate::store::Store;

/// Settings the handlers need at run time.
#[derive(Debug, Clone)]
pub struct Limits {
    pub enrollment_token: Option<String>,
    pub max_bundle_size: u64,
    pub heartbeat_retention: u64,
}

/// Cheap to clone: an `Arc` around everything.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
pub struct Inner {
    pub store: Store,
    pub events: Events,
    pub metrics: Metrics,
    pub limits: Limits,
    /// Where archives live: `<data-dir>/bundles/`.
    pub bundle_dir: PathBuf,
    /// Cancelled when the server starts shutting down: ends the endless responses
    /// (`/events`) so a graceful shutdown does not wait for them forever.
    pub shutdown: CancellationToken,
}

impl AppState {
    pub fn new(store: Store, limits: Limits, bundle_dir: PathBuf) -> Self {
        AppState(Arc::new(Inner {
            store,
            events: Events::default(),
            metrics: Metrics::default(),
            limits,
            bundle_dir,
            shutdown: CancellationToken::new(),
        }))
    }
}

impl Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
