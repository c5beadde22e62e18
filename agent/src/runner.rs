//! The heartbeat loop (SPEC §3): register when needed, heartbeat every
//! `polling_interval`, hand commands to the executor (which runs beside the loop, so
//! heartbeats keep flowing during a long deploy), flush the queue after every good
//! heartbeat, and back off 1 s → 60 s with jitter while the server is unreachable.

use std::sync::Arc;
use std::time::Duration;

use kernex_common::api::{
    Admission, BundleCommand, Command, ConfigureCommand, DeploymentKind, HeartbeatRequest,
};
use rand::RngExt;
use reqwest::StatusCode;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::client::ClientError;
use crate::context::Ctx;
use crate::executor::{self, Ran};
use crate::identity::{DeviceFile, Identity, RegisterError};
use crate::logging::LogControl;
use crate::queue;
use crate::state::{AgentState, AppliedConfig, ErrorSource};
use crate::sysmetrics::Sampler;

/// One backoff step in production: waits run 1, 2, 4 … 60 of these.
pub const BACKOFF_UNIT: Duration = Duration::from_secs(1);
/// Longest wait between attempts while the server is unreachable, in backoff units.
const BACKOFF_MAX_UNITS: u32 = 60;
/// Longest wait between attempts while the server is unreachable.
#[cfg(test)]
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Registration settings from the command line.
#[derive(Debug, Clone)]
pub struct RegisterOptions {
    pub device_type: String,
    pub enrollment_token: Option<String>,
}

/// Why a cycle did not complete.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error("{0}")]
    Unreachable(ClientError),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Local(#[from] anyhow::Error),
}

/// Exponential backoff with jitter: 1, 2, 4 … 60 s, each drawn from [½, 1] of the step so
/// a fleet that lost its server does not come back in lock-step. It counts failures, not
/// wall-clock time (a device clock that jumps changes nothing); the unit is shortened only
/// to simulate long outages in seconds (`--backoff-unit-ms`).
#[derive(Debug)]
pub struct Backoff {
    failures: u32,
    unit: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(BACKOFF_UNIT)
    }
}

impl Backoff {
    pub fn new(unit: Duration) -> Self {
        Backoff { failures: 0, unit }
    }

    pub fn next_delay(&mut self) -> Duration {
        let units = (1u32 << self.failures.min(6)).min(BACKOFF_MAX_UNITS);
        self.failures = self.failures.saturating_add(1);
        (self.unit * units).mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// The daemon.
pub struct Runner {
    pub ctx: Arc<Ctx>,
    identity: Identity,
    options: RegisterOptions,
    log: Option<LogControl>,
    sampler: Sampler,
    wake: Arc<Notify>,
    task: Option<JoinHandle<()>>,
    told_pending: bool,
    /// Metadata of the last trust document refused (logged once, not on every beat).
    refused_trust: Option<String>,
}

impl Runner {
    pub fn new(
        ctx: Arc<Ctx>,
        identity: Identity,
        options: RegisterOptions,
        log: Option<LogControl>,
    ) -> Self {
        Runner {
            ctx,
            identity,
            options,
            log,
            sampler: Sampler::new(),
            wake: Arc::new(Notify::new()),
            task: None,
            told_pending: false,
            refused_trust: None,
        }
    }

    fn busy(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// The registered identity, registering first when there is none (or it belongs to
    /// another server).
    async fn ensure_registered(&self) -> Result<DeviceFile, CycleError> {
        if let Some(d) = self.ctx.device() {
            return Ok(d);
        }
        let device = self
            .identity
            .register(
                &self.ctx.client,
                &self.options.device_type,
                self.options.enrollment_token.as_deref(),
            )
            .await
            .map_err(|e| match e {
                RegisterError::Transient(e) => CycleError::Unreachable(e),
                RegisterError::Refused(m) => CycleError::Refused(m),
                RegisterError::Local(e) => CycleError::Local(e),
            })?;
        device
            .save(&self.ctx.paths.device())
            .map_err(|e| CycleError::Local(e.into()))?;
        let admission = device.admission;
        self.ctx
            .state
            .update(|s| s.admission = Some(admission))
            .map_err(|e| CycleError::Local(e.into()))?;
        self.ctx.set_device(Some(device.clone()));
        Ok(device)
    }

    /// What the device is doing, for the heartbeat's `status` (≤ 32 chars).
    fn activity(&self, st: &AgentState) -> String {
        let text = match (&st.in_progress, self.busy()) {
            (Some(p), true) => match p.kind {
                DeploymentKind::Deploy => format!("deploying {}", p.bundle_version),
                DeploymentKind::Rollback => format!("rolling back to {}", p.bundle_version),
            },
            _ => "idle".to_owned(),
        };
        kernex_common::validate::tail_utf8(&text, 32).to_owned()
    }

    /// One heartbeat; returns the commands of the reply.
    async fn beat(&mut self, device: &DeviceFile) -> Result<Vec<Command>, CycleError> {
        let (cpu_pct, memory_mb) = self.sampler.sample();
        let st = self.ctx.state.get();
        let status = self.activity(&st);
        let body = HeartbeatRequest {
            agent_version: crate::AGENT_VERSION.to_owned(),
            cpu_pct,
            memory_mb,
            status,
            current_bundle_version: st.current_bundle_version.clone(),
            config_version: (st.config.version > 0).then_some(st.config.version),
            queued_reports: self.ctx.queue.len() as u64,
            trust_version: Some(self.ctx.trust.version()),
        };
        let timeout = Duration::from_secs(st.config.heartbeat_timeout.max(1));
        match self
            .ctx
            .client
            .heartbeat(&device.device_id, &device.device_token, &body, timeout)
            .await
        {
            Ok(reply) => {
                let admission = reply.admission;
                // Kept in memory and written only with a change or every few minutes
                // (flash wear); a recovered connection clears its old error.
                self.ctx
                    .state
                    .heartbeat(chrono::Utc::now(), |s| {
                        s.admission = Some(admission);
                        s.clear_error(&[ErrorSource::Heartbeat, ErrorSource::Other]);
                    })
                    .map_err(|e| CycleError::Local(e.into()))?;
                if admission == Admission::Pending && !self.told_pending {
                    tracing::warn!(device.id = %device.device_id, "this device is pending: an operator must accept it before it gets commands");
                }
                self.told_pending = admission == Admission::Pending;
                tracing::debug!(commands = reply.commands.len(), "heartbeat answered");
                Ok(reply.commands)
            }
            Err(e) if e.status() == Some(StatusCode::UNAUTHORIZED) => {
                // The token was revoked (re-registered elsewhere, deleted, rejected):
                // register again with the same key on the next cycle.
                tracing::warn!(error = %e, "device token refused; registering again");
                self.ctx.set_device(None);
                let _ = crate::fsutil::remove_durable(&self.ctx.paths.device());
                Err(CycleError::Refused(e.to_string()))
            }
            Err(e) if e.is_transient() => Err(CycleError::Unreachable(e)),
            Err(e) => Err(CycleError::Refused(e.to_string())),
        }
    }

    /// Apply a configure command at once and persist it; the next heartbeat acknowledges
    /// it through `config_version`.
    pub fn apply_config(&self, c: &ConfigureCommand) {
        let current = self.ctx.state.get().config;
        if c.config_version == current.version {
            return;
        }
        match AppliedConfig::from_command(c) {
            Ok(cfg) => {
                let level_changed = cfg.log_level != current.log_level;
                if let Err(e) = self.ctx.state.update(|s| {
                    s.config = cfg.clone();
                    s.clear_error(&[ErrorSource::Config]);
                }) {
                    tracing::error!(error = %e, "could not save the new configuration; not applied");
                    return;
                }
                if level_changed && let Some(log) = &self.log {
                    log.set_level(&cfg.log_level);
                }
                tracing::info!(
                    version = cfg.version,
                    polling_interval = cfg.polling_interval,
                    heartbeat_timeout = cfg.heartbeat_timeout,
                    deploy_timeout = cfg.deploy_timeout,
                    log_level = %cfg.log_level,
                    "configuration applied"
                );
            }
            Err(e) => {
                tracing::error!(version = c.config_version, error = %e, "configuration refused");
                let _ = self.ctx.state.update(|s| {
                    s.set_error(
                        ErrorSource::Config,
                        format!("configuration {} refused: {e}", c.config_version),
                    )
                });
            }
        }
    }

    /// Verify and adopt a newer trust set (key rotation, SPEC §7). A refusal is logged
    /// once per offered version: the server re-sends it on every beat.
    fn adopt_trust(&mut self, doc: &kernex_common::update_signing::SignedDocument) {
        match self.ctx.trust.adopt(doc) {
            Ok(version) => {
                tracing::info!(
                    version,
                    "trust document adopted; its keys replace the earlier ones"
                );
                self.refused_trust = None;
            }
            Err(why) => {
                if self.refused_trust.as_deref() != Some(doc.metadata.as_str()) {
                    tracing::warn!(reason = %why, "trust document refused");
                    self.refused_trust = Some(doc.metadata.clone());
                }
            }
        }
    }

    /// Register if needed, heartbeat, start or apply the commands, flush. Bundle
    /// commands run in the background unless `inline`.
    pub async fn cycle(&mut self, inline: bool) -> Result<(), CycleError> {
        let device = self.ensure_registered().await?;
        let commands = self.beat(&device).await?;
        for command in commands {
            match command {
                Command::Configure(c) => self.apply_config(&c),
                Command::Trust(t) => self.adopt_trust(&t.document),
                Command::Deploy(b) => self.start(DeploymentKind::Deploy, b, inline).await,
                Command::Rollback(b) => self.start(DeploymentKind::Rollback, b, inline).await,
            }
        }
        flush(&self.ctx).await;
        Ok(())
    }

    async fn start(&mut self, kind: DeploymentKind, cmd: BundleCommand, inline: bool) {
        if self.busy() {
            // The running one is reported first; the server keeps re-sending the rest.
            return;
        }
        if self.ctx.state.get().in_progress.is_some() {
            // Nothing runs, yet a deployment is marked in progress: its task died
            // without finishing (a bug, a panic). Settle it as interrupted first, or
            // the device would refuse work forever.
            if let Err(e) = executor::recover(&self.ctx).await {
                tracing::error!(error = %format!("{e:#}"), "cannot settle the unfinished deployment");
                return;
            }
        }
        let ctx = self.ctx.clone();
        let wake = self.wake.clone();
        let job = async move {
            match executor::run_command(&ctx, kind, &cmd).await {
                Ok(Ran::Finished(_)) => {
                    // Send the result at once rather than at the next heartbeat.
                    flush(&ctx).await;
                }
                Ok(Ran::Retry(_) | Ran::Skipped) => {}
                Err(e) => {
                    tracing::error!(deployment.id = %cmd.deployment_id, error = %format!("{e:#}"), "command not executed")
                }
            }
            wake.notify_one();
        };
        if inline {
            job.await;
        } else {
            self.task = Some(tokio::spawn(job));
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(self.ctx.state.get().config.polling_interval.max(1))
    }

    fn note_failure(&self, e: &CycleError) {
        let message = e.to_string();
        match e {
            CycleError::Unreachable(_) => tracing::warn!(error = %message, "server unreachable"),
            _ => tracing::error!(error = %message, "heartbeat failed"),
        }
        let _ = self
            .ctx
            .state
            .update(|s| s.set_error(ErrorSource::Heartbeat, message));
    }

    /// `run --once`: one cycle, commands run to completion. `Err` (recorded as the last
    /// error too) when the server did not answer the heartbeat.
    pub async fn once(&mut self) -> Result<(), CycleError> {
        let result = self.cycle(true).await;
        if let Err(e) = &result {
            self.note_failure(e);
        }
        let _ = self.ctx.state.save_heartbeat();
        result
    }

    /// The daemon loop, until `shutdown` resolves. A deployment still running then is
    /// waited for; a second signal (`force`) stops at once.
    pub async fn run(
        &mut self,
        shutdown: impl std::future::Future<Output = ()>,
        force: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut backoff = Backoff::new(self.ctx.backoff_unit);
        loop {
            let delay = match self.cycle(false).await {
                Ok(()) => {
                    backoff.reset();
                    self.interval()
                }
                Err(e) => {
                    self.note_failure(&e);
                    backoff.next_delay()
                }
            };
            tracing::debug!(delay_s = delay.as_secs_f64(), "next heartbeat");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.wake.notified() => {}
                () = &mut shutdown => break,
            }
        }
        if let Some(task) = self.task.take().filter(|t| !t.is_finished()) {
            tracing::warn!(
                "waiting for the running deployment to finish (signal again to stop now)"
            );
            tokio::select! {
                _ = task => {}
                () = force => tracing::warn!("stopping mid-deployment; it is reported as interrupted on the next start"),
            }
        }
        if let Err(e) = self.ctx.state.save_heartbeat() {
            tracing::warn!(error = %e, "could not save the last heartbeat time");
        }
        tracing::info!("stopped");
    }
}

/// Send the queue in order, never the report of a deployment still being recorded.
async fn flush(ctx: &Ctx) {
    let Some(device) = ctx.device() else { return };
    let skip = ctx.state.get().in_progress.map(|p| p.deployment_id);
    match queue::flush(
        &ctx.queue,
        &ctx.client,
        &device.device_id,
        &device.device_token,
        skip.as_deref(),
    )
    .await
    {
        Ok(r) => {
            if let Some(e) = r.stopped {
                tracing::info!(remaining = r.remaining, error = %e, "queue not fully sent; will retry");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read the queue"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_minute_with_jitter() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= BACKOFF_MAX);
        }
        let late = b.next_delay();
        assert!(late >= Duration::from_secs(30), "{late:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
