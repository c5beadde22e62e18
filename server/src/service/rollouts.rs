//! The rollout driver (SPEC §6): moves every *active* rollout — opens waves, releases
//! their targets (paced), times targets out, judges soaks, trips gates.
//!
//! It runs on events and on a timer. Events: a creation, a result, a pause or resume
//! call the driver inline, so what they cause is in the reply. Timer: one task looks at
//! the active rollouts every [`TICK`] (a soak ending, a deadline passing, `start_at`,
//! pacing). The set of active rollouts is in memory, rebuilt from the store at start
//! ([`Store::active_rollouts`]); a heartbeat never touches it. Nothing here scans all
//! deployments: a timeout check pages one wave's targets, and only when its earliest
//! deadline has passed.
//!
//! Restart-safe by construction: every decision is stored before it is acted on (the
//! wave's `opened_at`, each release with its cursor, each timeout and soak verdict,
//! the pause), so a restarted driver picks up where the store says; releases move
//! `waiting` → `pending` once, and delivery moves `pending` → `in_progress` once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Weak;
use std::time::Duration;

use chrono::Utc;
use kernex_common::api::events::{DeploymentEvent, ServerEvent};
use kernex_common::api::{RolloutChange, RolloutPolicy, TargetStatus};
use tokio::sync::Mutex;

use super::rollout::{self, Step};
use crate::state::{AppState, Inner};
use crate::store::{
    DeploymentRecord, Result, RolloutState, RolloutUpdate, StoreError, TargetFilter, Ts,
};

/// How often the timer looks at the active rollouts (a change shows within 1 s).
pub const TICK: Duration = Duration::from_millis(250);
/// Among replicas, ticks between reloads of what the driver keeps about each rollout
/// (successes another replica took may be soaking).
const RELOAD_EVERY: u64 = 20;
/// Targets one timeout step looks at.
const STEP: usize = 256;
/// Targets a device's result request releases itself when it opens a wave (one
/// transaction); the timer releases the rest, so a result never waits for a 100,000-target
/// wave to open.
const INLINE_RELEASE: u64 = 256;

/// What the driver keeps in memory about one active rollout (rebuilt from the store).
#[derive(Debug, Default)]
struct Active {
    /// Successes soaking: (when the soak ends, device).
    soaking: BTreeSet<(Ts, String)>,
    /// The earliest moment a released target may time out (`None`: none can).
    next_timeout: Option<Ts>,
}

/// The driver: the active rollouts, behind one lock (evaluations never interleave).
#[derive(Debug, Default)]
pub struct Rollouts {
    active: Mutex<HashMap<String, Active>>,
}

/// Check a policy and plan the rollout of `targets`: their rollout order and the stored
/// state. `Invalid` (a 400) when the policy is refused.
pub async fn plan(
    state: &AppState,
    policy: Option<&RolloutPolicy>,
    targets: Vec<String>,
) -> Result<(Vec<String>, Option<RolloutState>)> {
    let Some(policy) = policy else {
        return Ok((targets, None));
    };
    if let Some(problem) = policy.problem() {
        return Err(StoreError::Invalid(problem));
    }
    if let Some(tag) = &policy.first_tag
        && !kernex_common::validate::is_valid_tag(tag)
    {
        return Err(StoreError::Invalid(format!(
            "rollout.first_tag {tag:?} is not a valid tag"
        )));
    }
    let first: HashSet<String> = match &policy.first_tag {
        Some(tag) => state
            .store
            .accepted_devices_with_tags(std::slice::from_ref(tag))
            .await?
            .into_iter()
            .collect(),
        None => HashSet::new(),
    };
    let ordered = rollout::order(targets, &first);
    let plan = rollout::plan(policy, ordered.len() as u64);
    Ok((ordered, Some(plan)))
}

/// Publish a deployment's new state, with what moved it.
pub fn emit(state: &AppState, dep: &DeploymentRecord, change: Option<RolloutChange>) {
    state.events.emit(ServerEvent::Deployment(DeploymentEvent {
        id: dep.id.clone(),
        kind: Some(dep.kind),
        bundle_id: Some(dep.bundle_id.clone()),
        bundle_version: Some(dep.bundle_version.clone()),
        status: Some(dep.status),
        counts: Some(dep.counts),
        updated_at: Some(dep.updated_at),
        completed_at: dep.completed_at,
        device: None,
        rollout: dep.rollout.as_ref().map(|r| Box::new(r.to_wire())),
        change,
    }));
}

impl Rollouts {
    /// Move one rollout as far as it goes now; its deployment as stored after.
    pub async fn evaluate(&self, state: &AppState, id: &str) -> Result<DeploymentRecord> {
        let mut active = self.active.lock().await;
        evaluate(state, &mut active, id, Utc::now(), u64::MAX).await
    }

    /// A device's result was applied to a rollout: start its soak, then evaluate.
    pub async fn on_result(
        &self,
        state: &AppState,
        id: &str,
        device_id: &str,
        status: TargetStatus,
    ) -> Result<DeploymentRecord> {
        let mut active = self.active.lock().await;
        let now = Utc::now();
        if status == TargetStatus::Success {
            let dep = state.store.deployment(id).await?;
            let soak = dep.rollout.as_ref().map_or(0, |r| r.policy.soak_seconds);
            if soak > 0
                && let Some(a) = active.get_mut(id)
            {
                a.soaking.insert((now + secs(soak), device_id.to_owned()));
            }
        }
        evaluate(state, &mut active, id, now, INLINE_RELEASE).await
    }

    /// `POST /deployments/{id}/pause`.
    pub async fn pause(&self, state: &AppState, id: &str) -> Result<DeploymentRecord> {
        let _held = self.active.lock().await;
        let reason = "paused by operator".to_owned();
        let up = state
            .store
            .update_rollout(id, &RolloutUpdate::Pause(reason.clone()), Utc::now())
            .await?;
        emit(
            state,
            &up.deployment,
            Some(RolloutChange::Paused { reason }),
        );
        Ok(up.deployment)
    }

    /// `POST /deployments/{id}/resume`: continue; open the next wave if the current one
    /// is good; make every target held by the pause deliverable again.
    pub async fn resume(&self, state: &AppState, id: &str) -> Result<DeploymentRecord> {
        let mut active = self.active.lock().await;
        let now = Utc::now();
        let up = state
            .store
            .update_rollout(id, &RolloutUpdate::Resume, now)
            .await?;
        emit(state, &up.deployment, Some(RolloutChange::Resumed));
        if up.advance
            && let Some(r) = &up.deployment.rollout
        {
            open_wave(state, &mut active, &up.deployment, r.opened, now).await?;
        }
        touch_pending(state, id).await?;
        evaluate(state, &mut active, id, now, u64::MAX).await
    }
}

/// Start the timer task; it ends when the server state is dropped.
///
/// Among replicas (SPEC §8) only the lease holder's timer works, and since other
/// replicas create rollouts and take results, it re-reads the active set from the store
/// on every tick and forgets what it learnt about soaks every [`RELOAD_EVERY`] ticks.
pub fn start(state: Weak<Inner>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut loaded = false;
        let mut ticks: u64 = 0;
        loop {
            tick.tick().await;
            let Some(inner) = state.upgrade() else {
                break;
            };
            let state = AppState::from_inner(inner);
            if state.shutdown.is_cancelled() {
                break;
            }
            if !state.cluster.leads() {
                loaded = false;
                continue;
            }
            let shared = state.cluster.outbox.is_open();
            ticks += 1;
            if shared && ticks.is_multiple_of(RELOAD_EVERY) {
                state.rollouts.active.lock().await.clear();
            }
            let ids: Vec<String> = if loaded && !shared {
                state.rollouts.active.lock().await.keys().cloned().collect()
            } else {
                match state.store.active_rollouts().await {
                    Ok(deps) => {
                        loaded = true;
                        deps.into_iter().map(|d| d.id).collect()
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reading the active rollouts failed");
                        continue;
                    }
                }
            };
            for id in ids {
                if let Err(e) = state.rollouts.evaluate(&state, &id).await {
                    tracing::warn!(deployment.id = %id, error = %e, "rollout step failed");
                }
            }
        }
    });
}

fn secs(s: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000))
}

/// What the driver learns about a rollout it has not seen (at start, or just created):
/// the successes still soaking and the earliest possible timeout.
async fn load(state: &AppState, dep: &DeploymentRecord) -> Result<Active> {
    let mut a = Active::default();
    let Some(r) = &dep.rollout else {
        return Ok(a);
    };
    if let Some(t) = r.policy.target_timeout_seconds {
        a.next_timeout = r
            .waves
            .iter()
            .filter_map(|w| w.opened_at)
            .min()
            .map(|at| at + secs(t));
    }
    if r.policy.soak_seconds > 0 {
        let mut after = None;
        loop {
            let page = state
                .store
                .deployment_targets(
                    &dep.id,
                    &TargetFilter {
                        status: Some(TargetStatus::Success),
                        after: after.clone(),
                        limit: 1000,
                    },
                )
                .await?;
            for t in &page {
                if t.soak_ok.is_none()
                    && let Some(at) = t.result_at
                {
                    a.soaking
                        .insert((at + secs(r.policy.soak_seconds), t.device_id.clone()));
                }
            }
            match page.last() {
                Some(t) if page.len() == 1000 => after = Some(t.device_id.clone()),
                _ => break,
            }
        }
    }
    Ok(a)
}

/// Move one rollout as far as it goes at `now`, releasing at most `release_cap` targets
/// (the rest on the next ticks).
async fn evaluate(
    state: &AppState,
    active: &mut HashMap<String, Active>,
    id: &str,
    now: Ts,
    release_cap: u64,
) -> Result<DeploymentRecord> {
    let mut dep = state.store.deployment(id).await?;
    let Some(r) = &dep.rollout else {
        return Ok(dep);
    };
    if dep.status.is_final() {
        // Its last successes still soak: their verdicts still go into the waves.
        let soak = r.policy.soak_seconds;
        if let Some(a) = active.get_mut(id)
            && !a.soaking.is_empty()
        {
            if judge_soaks(state, a, id, soak, now).await? {
                dep = state.store.deployment(id).await?;
            }
            if !a.soaking.is_empty() {
                return Ok(dep);
            }
        } else if !active.contains_key(id) {
            // Seen first now (a start): maybe successes still soaking.
            let a = load(state, &dep).await?;
            if !a.soaking.is_empty() {
                active.insert(id.to_owned(), a);
                return Ok(dep);
            }
        }
        active.remove(id);
        state.store.retire_rollout(id).await?;
        return Ok(dep);
    }
    if !active.contains_key(id) {
        let a = load(state, &dep).await?;
        active.insert(id.to_owned(), a);
    }
    let soak = r.policy.soak_seconds;
    let Some(a) = active.get_mut(id) else {
        return Ok(dep);
    };
    if judge_soaks(state, a, id, soak, now).await? {
        dep = state.store.deployment(id).await?;
    }
    if a.next_timeout.is_some_and(|t| t <= now) {
        dep = time_out(state, a, &dep, now).await?;
    }
    // Gates: at most one step per wave, then releases.
    let waves = dep.rollout.as_ref().map_or(0, |r| r.waves.len());
    for _ in 0..=waves + 1 {
        match rollout::next_step(&dep, now) {
            Step::Nothing => break,
            Step::OpenWave(k) => dep = open_wave(state, active, &dep, k, now).await?,
            Step::Hold { reason } => {
                dep = gate_pause(state, id, reason, now).await?;
            }
            Step::Trip {
                reason,
                abort: false,
            } => dep = gate_pause(state, id, reason, now).await?,
            Step::Trip {
                reason,
                abort: true,
            } => dep = abort(state, id, reason, now).await?,
        }
    }
    if let Some(a) = active.get_mut(id) {
        dep = release(state, a, &dep, now, release_cap).await?;
        if dep.status.is_final() && a.soaking.is_empty() {
            active.remove(id);
            state.store.retire_rollout(id).await?;
        }
    }
    Ok(dep)
}

/// Judge the soaks that ended by `now`; whether any verdict was stored.
async fn judge_soaks(
    state: &AppState,
    a: &mut Active,
    id: &str,
    soak: u64,
    now: Ts,
) -> Result<bool> {
    let mut changed = false;
    let mut settled = false;
    while let Some((due, device_id)) = a.soaking.first().cloned() {
        if due > now {
            break;
        }
        a.soaking.pop_first();
        if !settled {
            // Every beat answered so far is in the store before it is judged.
            state.heartbeats.settle().await;
            settled = true;
        }
        let since = due - secs(soak);
        let verdict = match state.store.device(&device_id).await {
            Ok(d) => {
                let beats = state.store.heartbeats(&device_id, 1000).await?;
                rollout::soak_verdict(since, due, d.record.polling_interval, &beats)
            }
            Err(StoreError::NotFound(_)) => Err("was deleted during its soak".to_owned()),
            Err(e) => return Err(e),
        };
        if let Some(dep) = state
            .store
            .record_soak(id, &device_id, verdict.is_ok(), now)
            .await?
        {
            changed = true;
            match verdict {
                Ok(()) => emit(state, &dep, None),
                Err(why) => {
                    tracing::info!(deployment.id = %id, device.id = %device_id, %why, "soak failed");
                    emit(state, &dep, Some(RolloutChange::SoakFailed { device_id }));
                }
            }
        }
    }
    Ok(changed)
}

/// Time out what is past its deadline in the open waves (paged); the next deadline.
async fn time_out(
    state: &AppState,
    a: &mut Active,
    dep: &DeploymentRecord,
    now: Ts,
) -> Result<DeploymentRecord> {
    let opened = dep.rollout.as_ref().map_or(0, |r| r.opened);
    let mut out = dep.clone();
    let mut next: Option<Ts> = None;
    for k in 0..opened {
        let mut after = None;
        loop {
            let step = state
                .store
                .time_out_step(&dep.id, k, after, STEP, now)
                .await?;
            out = step.deployment;
            if let Some(d) = step.next_deadline {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
            if !step.timed_out.is_empty() {
                state
                    .heartbeats
                    .touch(step.timed_out.iter().map(String::as_str));
            }
            for device_id in step.timed_out {
                tracing::info!(deployment.id = %dep.id, device.id = %device_id, "target timed out");
                emit(
                    state,
                    &out,
                    Some(RolloutChange::TargetTimedOut { device_id }),
                );
            }
            match step.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
    }
    a.next_timeout = next;
    Ok(out)
}

async fn open_wave(
    state: &AppState,
    active: &mut HashMap<String, Active>,
    dep: &DeploymentRecord,
    k: usize,
    now: Ts,
) -> Result<DeploymentRecord> {
    let up = state
        .store
        .update_rollout(&dep.id, &RolloutUpdate::OpenWave(k), now)
        .await?;
    if up.changed {
        tracing::info!(deployment.id = %dep.id, wave = k, "rollout wave opened");
        if let (Some(a), Some(t)) = (
            active.get_mut(&dep.id),
            dep.rollout
                .as_ref()
                .and_then(|r| r.policy.target_timeout_seconds),
        ) {
            let d = now + secs(t);
            a.next_timeout = Some(a.next_timeout.map_or(d, |n| n.min(d)));
        }
        emit(
            state,
            &up.deployment,
            Some(RolloutChange::WaveOpened { wave: k }),
        );
    }
    Ok(up.deployment)
}

async fn gate_pause(
    state: &AppState,
    id: &str,
    reason: String,
    now: Ts,
) -> Result<DeploymentRecord> {
    let up = state
        .store
        .update_rollout(id, &RolloutUpdate::Pause(reason.clone()), now)
        .await?;
    tracing::info!(deployment.id = %id, %reason, "rollout gate holds the rollout");
    emit(
        state,
        &up.deployment,
        Some(RolloutChange::GateTripped { reason }),
    );
    Ok(up.deployment)
}

/// The failure gate aborts: every target not yet delivered is cancelled, in chunks.
async fn abort(state: &AppState, id: &str, reason: String, now: Ts) -> Result<DeploymentRecord> {
    state
        .store
        .update_rollout(id, &RolloutUpdate::Abort(reason.clone()), now)
        .await?;
    let why = format!("aborted by the rollout's failure gate: {reason}");
    let mut after: Option<String> = None;
    let dep = loop {
        let step = state
            .store
            .cancel_deployment_step(id, after.as_deref(), 64, &why, now)
            .await?;
        state
            .heartbeats
            .touch(step.cancelled.iter().map(String::as_str));
        match step.next {
            Some(next) => after = Some(next),
            None => break step.deployment,
        }
    };
    tracing::warn!(deployment.id = %id, %reason, "rollout aborted");
    emit(state, &dep, Some(RolloutChange::Aborted { reason }));
    Ok(dep)
}

/// Release what the current wave's budget allows now, in chunks.
async fn release(
    state: &AppState,
    a: &mut Active,
    dep: &DeploymentRecord,
    now: Ts,
    cap: u64,
) -> Result<DeploymentRecord> {
    let Some(r) = &dep.rollout else {
        return Ok(dep.clone());
    };
    if r.paused_reason.is_some() || dep.status.is_final() {
        return Ok(dep.clone());
    }
    let mut budget = rollout::release_budget(r, now).min(cap);
    let mut out = dep.clone();
    let mut any = false;
    while budget > 0 {
        let step = state
            .store
            .release_step(&dep.id, usize::try_from(budget).unwrap_or(usize::MAX), now)
            .await?;
        budget = budget.saturating_sub(step.released.len() as u64);
        any |= !step.released.is_empty();
        state
            .heartbeats
            .touch(step.released.iter().map(String::as_str));
        out = step.deployment;
        if step.done {
            break;
        }
    }
    if any {
        if let Some(t) = r.policy.target_timeout_seconds {
            let d = now + secs(t);
            a.next_timeout = Some(a.next_timeout.map_or(d, |n| n.min(d)));
        }
        emit(state, &out, None);
    }
    Ok(out)
}

/// After a resume: targets a pause held (pending, undelivered) get their command again.
async fn touch_pending(state: &AppState, id: &str) -> Result<()> {
    let mut after = None;
    loop {
        let page = state
            .store
            .deployment_targets(
                id,
                &TargetFilter {
                    status: Some(TargetStatus::Pending),
                    after: after.clone(),
                    limit: 1000,
                },
            )
            .await?;
        state
            .heartbeats
            .touch(page.iter().map(|t| t.device_id.as_str()));
        match page.last() {
            Some(t) if page.len() == 1000 => after = Some(t.device_id.clone()),
            _ => return Ok(()),
        }
    }
}
