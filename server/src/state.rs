//! Shared state handed to every handler.

use std::ops::Deref;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::blobs::Blobs;
use crate::cluster::Cluster;
use crate::events::Events;
use crate::metrics::Metrics;
use crate::service::heartbeat::HeartbeatService;
use crate::service::rollouts::{self, Rollouts};
use crate::store::{Store, WorkSnapshot};

/// Settings the handlers need at run time.
#[derive(Clone)]
pub struct Limits {
    pub enrollment_token: Option<String>,
    pub max_bundle_size: u64,
    /// Registrations without the enrollment token are refused (SPEC §1.9).
    pub require_enrollment: bool,
    /// Most devices pending at once.
    pub max_pending: u64,
    /// Bearer token `/metrics` requires, if any.
    pub metrics_token: Option<String>,
    /// Timeouts and the connection cap.
    pub connections: crate::settings::ConnLimits,
    /// `--trust-key` + `--require-signatures` (SPEC §7).
    pub signatures: crate::service::signing::SignaturePolicy,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mask = |s: &Option<String>| s.as_ref().map(|_| "***");
        f.debug_struct("Limits")
            .field("enrollment_token", &mask(&self.enrollment_token))
            .field("max_bundle_size", &self.max_bundle_size)
            .field("require_enrollment", &self.require_enrollment)
            .field("max_pending", &self.max_pending)
            .field("metrics_token", &mask(&self.metrics_token))
            .field("connections", &self.connections)
            .field("signatures", &self.signatures)
            .finish()
    }
}

/// Cheap to clone: an `Arc` around everything.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
pub struct Inner {
    pub store: Arc<dyn Store>,
    /// The heartbeat path: work index and beat writer (SPEC §1.2, §1.6).
    pub heartbeats: HeartbeatService,
    /// The rollout driver: the active rollouts, moved on events and a timer (SPEC §6).
    pub rollouts: Rollouts,
    pub events: Events,
    /// This replica among others on a shared store (SPEC §8); alone on sled.
    pub cluster: Cluster,
    pub metrics: Metrics,
    pub limits: Limits,
    /// Where archives live: `<data-dir>/bundles/`, a `--blob-dir` or a `--blob-url` bucket.
    pub blobs: Blobs,
    /// Cancelled when the server starts shutting down: ends the endless responses
    /// (`/events`) so a graceful shutdown does not wait for them forever.
    pub shutdown: CancellationToken,
}

impl AppState {
    /// Needs a tokio runtime (it starts the beat writer and the rollout driver). `work` is what the heartbeat
    /// service's index is built from ([`Store::work_snapshot`]).
    pub fn new(
        store: Arc<dyn Store>,
        work: WorkSnapshot,
        limits: Limits,
        blobs: impl Into<Blobs>,
    ) -> Self {
        Self::with_cluster(store, work, limits, blobs, Cluster::default())
    }

    /// [`AppState::new`] as one replica of several on a shared store (SPEC §8): the
    /// work index and events follow `cluster`'s outbox, timers its lease.
    pub fn with_cluster(
        store: Arc<dyn Store>,
        work: WorkSnapshot,
        limits: Limits,
        blobs: impl Into<Blobs>,
        cluster: Cluster,
    ) -> Self {
        let inner = Arc::new(Inner {
            heartbeats: HeartbeatService::start_with(store.clone(), work, cluster.outbox.clone()),
            rollouts: Rollouts::default(),
            store,
            events: Events::new(cluster.clone()),
            cluster,
            metrics: Metrics::default(),
            limits,
            blobs: blobs.into(),
            shutdown: CancellationToken::new(),
        });
        // The driver's timer holds the state weakly: dropping the state ends it.
        rollouts::start(Arc::downgrade(&inner));
        AppState(inner)
    }

    /// The state around `inner` (for tasks that hold it weakly).
    pub fn from_inner(inner: Arc<Inner>) -> Self {
        AppState(inner)
    }

    /// A handle that does not keep the state alive (for background tasks).
    pub fn downgrade(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.0)
    }
}

impl Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
