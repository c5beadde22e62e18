//! What the daemon's parts share: the state dir, `state.json`, the queue, the HTTP client
//! and the current device identity.

use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use kernex_common::api::{Phase, ProgressReport};
use tokio::sync::mpsc;

use crate::client::Client;
use crate::executed::ExecutedLog;
use crate::identity::DeviceFile;
use crate::paths::Paths;
use crate::queue::Queue;
use crate::state::StateStore;
use crate::trust::Trust;

/// Bundles kept under `bundles/` (besides the current and previous ones).
pub const KEEP_BUNDLES: usize = 3;
/// Progress reports waiting to be sent before new ones are dropped.
const PROGRESS_BACKLOG: usize = 32;

pub struct Ctx {
    pub paths: Paths,
    pub state: StateStore,
    pub queue: Queue,
    pub client: Client,
    device: RwLock<Option<DeviceFile>>,
    pub stall_timeout: Duration,
    /// Overall deadline of a download attempt (`--download-min-rate`, `--download-grace`).
    pub pace: crate::download::Pace,
    /// One step of the reconnect backoff (`--backoff-unit-ms`; 1 s in production).
    pub backoff_unit: Duration,
    pub keep_bundles: usize,
    /// Keys that must sign bundles (SPEC §7); none = no signature checks.
    pub trust: Trust,
    /// This device's type, checked against signed `device_types`.
    pub device_type: String,
    /// Every deployment id ever executed (beyond `state.json`'s newest 256).
    pub executed: ExecutedLog,
    /// Variables scripts get from the agent's environment besides the allow-list.
    pub script_env: Vec<String>,
    /// `--run-as`: the user scripts run as.
    pub run_as: Option<crate::run_as::RunAs>,
    progress_tx: OnceLock<mpsc::Sender<(String, String, ProgressReport)>>,
}

impl Ctx {
    pub fn new(paths: Paths, state: StateStore, client: Client) -> Self {
        Ctx {
            queue: Queue::new(paths.queue()),
            trust: Trust::none(paths.trust()),
            executed: ExecutedLog::empty(paths.executed()),
            paths,
            state,
            client,
            device: RwLock::new(None),
            stall_timeout: crate::download::STALL_TIMEOUT,
            pace: crate::download::Pace::default(),
            backoff_unit: crate::runner::BACKOFF_UNIT,
            keep_bundles: KEEP_BUNDLES,
            device_type: "generic".into(),
            script_env: Vec::new(),
            run_as: None,
            progress_tx: OnceLock::new(),
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

    /// Tell the server how far a deployment got. Best effort, in the background: the
    /// pipeline never waits on the network here, and a lost progress report costs
    /// nothing. One sender task delivers them in order (spawned tasks could overtake
    /// each other and leave the server showing an older phase); when it falls behind by
    /// more than [`PROGRESS_BACKLOG`] reports, new ones are dropped.
    pub fn progress(&self, deployment_id: &str, phase: Phase, pct: u8) {
        let Some(device) = self.device() else { return };
        let tx = self.progress_tx.get_or_init(|| {
            let (tx, mut rx) = mpsc::channel::<(String, String, ProgressReport)>(PROGRESS_BACKLOG);
            let client = self.client.clone();
            tokio::spawn(async move {
                while let Some((id, token, body)) = rx.recv().await {
                    if let Err(e) = client.progress(&token, &id, &body).await {
                        tracing::debug!(deployment.id = %id, error = %e, "progress report not delivered");
                    }
                }
            });
            tx
        });
        let body = ProgressReport {
            device_id: device.device_id,
            phase,
            progress_pct: pct.min(100),
        };
        let _ = tx.try_send((deployment_id.to_owned(), device.device_token, body));
    }
}
