//! The heartbeat path above the store (SPEC §1.2, §1.6): what a beat returns, decided in
//! O(this device) from an in-memory work index, and the group-commit beat writer that
//! stores beats in batches without making the device wait for the disk.
//!
//! The whole data path of a heartbeat is three files: the handler
//! (`routes/devices.rs::heartbeat`), this file, and the backend's beat writer
//! (`store/sled_store/beats.rs`).
//!
//! **The work index** knows which devices may have something to do: devices with
//! unfinished deployment targets (with the command of an already delivered target
//! cached), devices waiting for an accept, and devices whose config is past version 1.
//! A device in none of them gets `[]` without a store read. The index is a hint that
//! errs only towards "look": a device listed with nothing open costs one store read,
//! after which it is dropped (unless a write touched it meanwhile: a generation number
//! tells). Every write that can give a device work calls [`HeartbeatService::touch`] (or
//! the admission and config hooks) after it commits; the index is rebuilt from the store
//! at start, so it holds nothing the store does not.
//!
//! **The beat writer** takes beats from a bounded channel and hands them to
//! [`Store::write_beats`] in batches of up to [`BATCH`]. The device's reply does not wait
//! for it (SPEC §1.8 lets a crash lose the last second of heartbeats, nothing else).
//! Reads that show heartbeat data call [`HeartbeatService::settle`] first, so an operator
//! sees every beat that was answered before the read began.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use kernex_common::api::{
    Admission, Command, ConfigureCommand, DeviceConfig, HeartbeatRequest, TargetStatus,
};
use kernex_common::update_signing::TrustCommand;
use tokio::sync::{mpsc, watch};

use super::rules;
use crate::cluster::{Note, Outbox};
use crate::store::{Beat, DeploymentRecord, Result, Store, Ts, WorkSnapshot};

/// Most beats one store write takes.
pub const BATCH: usize = 1024;
/// How often the writer lets the store write out what it holds while beats are few.
const IDLE_WRITE: std::time::Duration = std::time::Duration::from_millis(250);

/// What a heartbeat returns to the device.
#[derive(Debug, Clone)]
pub struct BeatOutcome {
    pub admission: Admission,
    pub commands: Vec<Command>,
    /// The deployment whose target moved to `in_progress` with this heartbeat.
    pub delivered: Option<DeploymentRecord>,
}

/// A device with (maybe) unfinished targets.
#[derive(Debug, Clone, Default)]
struct Open {
    /// Bumped by every write that touches this device's targets.
    generation: u64,
    /// The command of its oldest unfinished target once delivered: re-sent on every
    /// beat until the result arrives (at-least-once), with no store read.
    command: Option<Command>,
}

#[derive(Debug, Default)]
struct Work {
    open: HashMap<String, Open>,
    pending: HashSet<String>,
    /// Config version and polling interval of devices whose config was ever set
    /// (others run the defaults at version 1).
    configs: HashMap<String, (u64, u64)>,
    /// The configure command of devices behind their config, kept while they stay
    /// behind (it is re-sent on every beat until the device acknowledges it).
    configure: HashMap<String, Arc<ConfigureCommand>>,
    next_generation: u64,
}

impl Work {
    fn from_snapshot(s: WorkSnapshot) -> Self {
        Work {
            open: s.open.into_iter().map(|id| (id, Open::default())).collect(),
            pending: s.pending.into_iter().collect(),
            configs: s
                .configs
                .into_iter()
                .map(|c| (c.device_id, (c.version, c.polling_interval)))
                .collect(),
            configure: HashMap::new(),
            next_generation: 1,
        }
    }
}

/// The heartbeat service: work index and beat writer.
#[derive(Debug)]
pub struct HeartbeatService {
    store: Arc<dyn Store>,
    work: RwLock<Work>,
    /// Tells the other replicas about every change to the index (SPEC §8); a no-op on
    /// a store of one's own.
    outbox: Outbox,
    writer: BeatWriter,
    /// The current trust document (SPEC §7), re-read every few seconds.
    pub trust: super::signing::TrustCache,
}

impl HeartbeatService {
    /// Build the index from `snapshot` and start the beat writer (needs a tokio runtime).
    pub fn start(store: Arc<dyn Store>, snapshot: WorkSnapshot) -> Self {
        Self::start_with(store, snapshot, Outbox::default())
    }

    /// [`HeartbeatService::start`], telling other replicas about index changes.
    pub fn start_with(store: Arc<dyn Store>, snapshot: WorkSnapshot, outbox: Outbox) -> Self {
        HeartbeatService {
            writer: BeatWriter::start(store.clone()),
            work: RwLock::new(Work::from_snapshot(snapshot)),
            outbox,
            store,
            trust: super::signing::TrustCache::default(),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Work> {
        self.work.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Work> {
        self.work.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a heartbeat and decide the device's commands (SPEC §1.6): at most one
    /// deploy/rollback (its oldest unfinished target), and `configure` while the
    /// reported config version is behind. A pending device gets none.
    pub async fn beat(
        &self,
        device_id: &str,
        report: HeartbeatRequest,
        now: Ts,
    ) -> Result<BeatOutcome> {
        let (pending, open, (config_version, polling_interval), configure) = {
            let w = self.read();
            (
                w.pending.contains(device_id),
                w.open.get(device_id).cloned(),
                w.configs
                    .get(device_id)
                    .copied()
                    .unwrap_or((1, DeviceConfig::DEFAULT_POLLING_INTERVAL)),
                w.configure.get(device_id).cloned(),
            )
        };
        let mut outcome = BeatOutcome {
            admission: if pending {
                Admission::Pending
            } else {
                Admission::Accepted
            },
            commands: Vec::new(),
            delivered: None,
        };
        if !pending {
            match open {
                None => {}
                Some(Open {
                    command: Some(cmd), ..
                }) => outcome.commands.push(cmd),
                Some(Open { generation, .. }) => {
                    let (cmd, delivered) = self.next_command(device_id, generation, now).await?;
                    outcome.commands.extend(cmd);
                    outcome.delivered = delivered;
                }
            }
            let behind = report.config_version.unwrap_or(0) < config_version;
            match configure {
                Some(cmd) if behind && cmd.config_version == config_version => {
                    outcome.commands.push(Command::Configure((*cmd).clone()));
                }
                _ if behind => {
                    let cmd = self.configure_command(device_id, config_version).await?;
                    outcome.commands.push(Command::Configure(cmd));
                }
                Some(_) => {
                    self.write().configure.remove(device_id);
                }
                None => {}
            }
            // A newer trust set than the device holds (one cached read, SPEC §7).
            if let Some((version, document)) = self.trust.current(&*self.store).await?
                && report.trust_version.unwrap_or(0) < version
            {
                outcome
                    .commands
                    .push(Command::Trust(TrustCommand { document }));
            }
        }
        self.writer
            .submit(Beat {
                device_id: device_id.to_owned(),
                at: now,
                report,
                polling_interval,
            })
            .await;
        Ok(outcome)
    }

    /// The configure command for a device behind its config (read once, then kept until
    /// the device catches up).
    async fn configure_command(&self, device_id: &str, version: u64) -> Result<ConfigureCommand> {
        if version == 1 {
            // Defaults: nothing to read, nothing worth keeping.
            return Ok(DeviceConfig::defaults(device_id).to_command());
        }
        let cmd = self.store.config(device_id).await?.to_command();
        let mut w = self.write();
        if w.configs.get(device_id).map(|c| c.0) == Some(cmd.config_version) {
            w.configure
                .insert(device_id.to_owned(), Arc::new(cmd.clone()));
        }
        Ok(cmd)
    }

    /// The command for this device's oldest unfinished target, read from the store;
    /// delivers it if it was pending. Caches it, or drops the device from the index
    /// when nothing is open, unless a write touched the device since `generation`.
    async fn next_command(
        &self,
        device_id: &str,
        generation: u64,
        now: Ts,
    ) -> Result<(Option<Command>, Option<DeploymentRecord>)> {
        for (dep, status) in self.store.open_targets(device_id).await? {
            let delivered = match status {
                TargetStatus::InProgress => None,
                TargetStatus::Pending => match self.store.deliver(&dep.id, device_id, now).await? {
                    Some(moved) => Some(moved),
                    // Finished or cancelled meanwhile: look at the next one.
                    None => continue,
                },
                _ => continue,
            };
            let signed = self.store.bundle_signatures(&dep.bundle_id).await?;
            let cmd = rules::bundle_command(&dep, signed);
            let mut w = self.write();
            if let Some(open) = w.open.get_mut(device_id)
                && open.generation == generation
            {
                open.command = Some(cmd.clone());
            }
            return Ok((Some(cmd), delivered));
        }
        let mut w = self.write();
        if w.open
            .get(device_id)
            .is_some_and(|o| o.generation == generation)
        {
            w.open.remove(device_id);
        }
        Ok((None, None))
    }

    /// A write changed these devices' deployment targets (created, finished,
    /// cancelled): their next beats read them from the store, on every replica.
    pub fn touch<'a>(&self, device_ids: impl IntoIterator<Item = &'a str>) {
        if self.outbox.is_open() {
            let ids: Vec<String> = device_ids.into_iter().map(str::to_owned).collect();
            self.touch_here(ids.iter().map(String::as_str));
            self.outbox.send_touch(ids);
        } else {
            self.touch_here(device_ids);
        }
    }

    /// [`HeartbeatService::touch`] on this replica only (what another replica said).
    pub fn touch_here<'a>(&self, device_ids: impl IntoIterator<Item = &'a str>) {
        let mut w = self.write();
        for id in device_ids {
            w.next_generation += 1;
            let generation = w.next_generation;
            w.open.insert(
                id.to_owned(),
                Open {
                    generation,
                    command: None,
                },
            );
        }
    }

    /// A device's admission changed (or it registered).
    pub fn admission_changed(&self, device_id: &str, admission: Admission) {
        self.admission_changed_here(device_id, admission);
        self.outbox.send(Note::Admission {
            device_id: device_id.to_owned(),
            admission,
        });
    }

    /// [`HeartbeatService::admission_changed`] on this replica only.
    pub fn admission_changed_here(&self, device_id: &str, admission: Admission) {
        let mut w = self.write();
        if admission == Admission::Pending {
            w.pending.insert(device_id.to_owned());
        } else {
            w.pending.remove(device_id);
        }
    }

    /// A device's config was set.
    pub fn config_changed(&self, config: &DeviceConfig) {
        self.config_changed_here(config);
        self.outbox.send(Note::Config {
            config: config.clone(),
        });
    }

    /// [`HeartbeatService::config_changed`] on this replica only.
    pub fn config_changed_here(&self, config: &DeviceConfig) {
        let mut w = self.write();
        w.configure.remove(&config.device_id);
        w.configs.insert(
            config.device_id.clone(),
            (config.version, config.polling_interval),
        );
    }

    /// A device was deleted.
    pub fn forget(&self, device_id: &str) {
        self.forget_here(device_id);
        self.outbox.send(Note::Forget {
            device_id: device_id.to_owned(),
        });
    }

    /// [`HeartbeatService::forget`] on this replica only.
    pub fn forget_here(&self, device_id: &str) {
        let mut w = self.write();
        w.open.remove(device_id);
        w.pending.remove(device_id);
        w.configs.remove(device_id);
        w.configure.remove(device_id);
    }

    /// Bring the index back in line with the store (replicas: after a lost
    /// notification, and every few seconds). Every device open here or there is looked
    /// at on its next beat; pending devices and configs are the store's.
    pub fn resync(&self, snapshot: WorkSnapshot) {
        let mut w = self.write();
        let mut open: Vec<String> = w.open.keys().cloned().collect();
        open.extend(snapshot.open);
        for id in open {
            w.next_generation += 1;
            let generation = w.next_generation;
            w.open.insert(
                id,
                Open {
                    generation,
                    command: None,
                },
            );
        }
        w.pending = snapshot.pending.into_iter().collect();
        w.configs = snapshot
            .configs
            .into_iter()
            .map(|c| (c.device_id, (c.version, c.polling_interval)))
            .collect();
        w.configure.clear();
    }

    /// Wait until every beat answered before this call is in the store.
    pub async fn settle(&self) {
        self.writer.settle().await;
    }

    /// At shutdown: every answered beat stored and nothing left only in memory.
    pub async fn close(&self) -> Result<()> {
        self.writer.settle().await;
        self.store.write_beats(Vec::new()).await
    }
}

/// The group-commit writer: one task drains the queue in batches into the store.
#[derive(Debug)]
struct BeatWriter {
    tx: mpsc::Sender<Beat>,
    submitted: AtomicU64,
    applied: watch::Receiver<u64>,
}

impl BeatWriter {
    fn start(store: Arc<dyn Store>) -> Self {
        // Beats waiting for the writer before devices wait for it (backpressure): on sled
        // a few seconds of a 1M-device fleet's beats, so a long store transaction (a
        // deployment to 100,000 devices is one) delays the writer, not the replies; the
        // backend says how many it stores well within a second ([`Store::beat_queue`]).
        let (tx, mut rx) = mpsc::channel::<Beat>(store.beat_queue().max(BATCH));
        let (applied_tx, applied) = watch::channel(0u64);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            // An empty batch now and then lets the store write out what it holds in
            // memory while no beats arrive.
            let mut tick = tokio::time::interval(IDLE_WRITE);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let n = tokio::select! {
                    n = rx.recv_many(&mut batch, BATCH) => {
                        if n == 0 {
                            break;
                        }
                        n
                    }
                    _ = tick.tick() => 0,
                };
                if let Err(e) = store.write_beats(std::mem::take(&mut batch)).await {
                    tracing::error!(error = %e, beats = n, "storing heartbeats failed");
                }
                applied_tx.send_modify(|a| *a += n as u64);
            }
            if let Err(e) = store.write_beats(Vec::new()).await {
                tracing::error!(error = %e, "storing heartbeats failed");
            }
        });
        BeatWriter {
            tx,
            submitted: AtomicU64::new(0),
            applied,
        }
    }

    async fn submit(&self, beat: Beat) {
        // Wait for room first, then count and send with no await in between: a request
        // dropped while it waits (its client went away under backpressure) counts
        // nothing, so `settle` never waits for a beat that will not come.
        match self.tx.reserve().await {
            Ok(permit) => {
                self.submitted.fetch_add(1, Ordering::SeqCst);
                permit.send(beat);
            }
            // The writer is gone (runtime shutting down): nothing to wait for.
            Err(_) => tracing::warn!("heartbeat dropped: the beat writer has stopped"),
        }
    }

    /// Every beat submitted before this call has been applied (the channel is FIFO, so
    /// `applied >= submitted-at-start` covers them).
    async fn settle(&self) {
        let target = self.submitted.load(Ordering::SeqCst);
        let mut rx = self.applied.clone();
        let _ = rx.wait_for(|a| *a >= target).await;
    }
}
