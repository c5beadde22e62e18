//! What the daemon's parts share: the state dir, `state.json`, the queue, the HTTP client
//! and the current device identity.

use std::sync::RwLock;
use std::time::Duration;

use kernex_common::api::{Phase, ProgressReport};

use crate::client::Client;
use crate::identity::DeviceFile;
use crate::paths::Paths;
use crate::queue::Queue;
use crate::state::StateStore;

/// Bundles kept under `bundles/` (besides the current and previous ones).
pub const KEEP_BUNDLES: usize = 3;

pub struct Ctx {
    pub paths: Paths,
    pub state: StateStore,
    pub queue: Queue,
    pub client: Client,
    device: RwLock<Option<DeviceFile>>,
    pub stall_timeout: Duration,
    pub keep_bundles: usize,
}

impl Ctx {
    pub fn new(paths: Paths, state: StateStore, client: Client) -> Self {
        Ctx {
            queue: Queue::new(paths.queue()),
            paths,
            state,
            client,
            device: RwLock::new(None),
            stall_timeout: crate::download::STALL_TIMEOUT,
            keep_bundles: KEEP_BUNDLES,
        }
    }

    /// The registered identity, if there is one.
    pub fn device(&self) -> Option<DeviceFile> {
        self.device
            .read()
            .map(|d| d.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn set_device(&self, device: Option<DeviceFile>) {
        match self.device.write() {
            Ok(mut d) => *d = device,
            Err(p) => *p.into_inner() = device,
        }
    }

    /// Tell the server how far a deployment got. Best effort, in the background: a lost
    /// progress report costs nothing, and the pipeline never waits on the network here.
    pub fn progress(&self, deployment_id: &str, phase: Phase, pct: u8) {
        let Some(device) = self.device() else { return };
        let client = self.client.clone();
        let id = deployment_id.to_owned();
        let body = ProgressReport {
            device_id: device.device_id,
            phase,
            progress_pct: pct.min(100),
        };
        tokio::spawn(async move {
            if let Err(e) = client.progress(&device.device_token, &id, &body).await {
                tracing::debug!(deployment.id = %id, error = %e, "progress report not delivered");
            }
        });
    }
}
