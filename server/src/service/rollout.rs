//! The rollout rules of SPEC §6 as pure functions: the rollout order, the waves' sizes,
//! the deployment status a rollout implies, the health and failure gates, pacing, soak
//! verdicts, pause and resume. Backends call the state-changing ones inside their
//! transactions; the rollout driver ([`super::rollouts`]) asks [`next_step`] what to do.

use std::collections::HashSet;

use kernex_common::api::{
    Counts, DeploymentStatus, HeartbeatRecord, OnFailure, RolloutPolicy, TargetStatus,
};
use sha2::{Digest, Sha256};

use crate::store::{DeploymentRecord, RolloutState, StoreError, TargetRecord, Ts, WaveState};

/// The rollout order: targets carrying the `first_tag` first, then the rest; within each
/// group by a stable hash of the id (so a fleet's canaries are not always the same
/// lowest ids, and the same targets give the same order on every server).
pub fn order(mut ids: Vec<String>, first: &HashSet<String>) -> Vec<String> {
    ids.sort_by_cached_key(|id| {
        let h: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        (!first.contains(id), h, id.clone())
    });
    ids
}

/// The waves for `n` targets: wave *k* holds the first ⌈waves\[k\] × n / 100⌉ targets,
/// at least one more than wave *k−1* while targets remain (a wave past the last target
/// is empty and good at once).
pub fn plan(policy: &RolloutPolicy, n: u64) -> RolloutState {
    let mut waves = Vec::with_capacity(policy.waves.len());
    let mut prev = 0u64;
    for &pct in &policy.waves {
        let want = (u64::from(pct) * n).div_ceil(100);
        let end = want.max(prev + 1).min(n);
        waves.push(WaveState {
            pct,
            targets: end - prev,
            ..WaveState::default()
        });
        prev = end;
    }
    RolloutState {
        policy: policy.clone(),
        waves,
        opened: 0,
        paused_reason: None,
        accepted_failures: 0,
    }
}

/// The wave of the target at `index` (0-based) in rollout order.
pub fn wave_of(state: &RolloutState, index: u64) -> u32 {
    let mut end = 0u64;
    for (k, w) in state.waves.iter().enumerate() {
        end += w.targets;
        if index < end {
            return u32::try_from(k).unwrap_or(u32::MAX);
        }
    }
    u32::try_from(state.waves.len().saturating_sub(1)).unwrap_or(u32::MAX)
}

/// After creation wrote what it could (a device rejected meanwhile is left out): each
/// wave's `targets` is what was written to it.
pub fn recount(state: &mut RolloutState, written_waves: &[u32]) {
    for w in &mut state.waves {
        w.targets = 0;
    }
    for &k in written_waves {
        if let Some(w) = state.waves.get_mut(k as usize) {
            w.targets += 1;
        }
    }
}

/// The deployment status of these counts under this rollout (SPEC §6): final statuses
/// by the §1.5 rule; else `paused` while paused, `scheduled` before the first wave opens.
pub fn status(counts: &Counts, rollout: Option<&RolloutState>) -> DeploymentStatus {
    let base = counts.overall();
    match rollout {
        Some(_) if base.is_final() => base,
        Some(r) if r.paused_reason.is_some() => DeploymentStatus::Paused,
        Some(r) if r.opened == 0 => DeploymentStatus::Scheduled,
        _ => base,
    }
}

/// What the rollout should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// Open wave `k` (0-based).
    OpenWave(usize),
    /// The failure gate tripped: pause, or abort (`abort`), saying why.
    Trip {
        reason: String,
        abort: bool,
    },
    /// The current wave is good but the policy waits for the operator's resume.
    Hold {
        reason: String,
    },
}

/// Is wave `k` good: enough of its targets succeeded and stayed healthy?
pub fn wave_good(state: &RolloutState, k: usize) -> bool {
    state.waves.get(k).is_some_and(|w| {
        w.healthy * 100 >= u64::from(state.policy.success_threshold_pct) * w.targets
    })
}

/// Has the failure gate tripped? Failures (failed, timed out, failed soaks) above
/// `max_failures`, or above `max_failure_pct` of the targets delivered so far, and above
/// what an operator's resume accepted. The reason when it has.
pub fn failure_gate(state: &RolloutState, counts: &Counts) -> Option<String> {
    let failures = state.failures();
    if failures <= state.accepted_failures {
        return None;
    }
    let p = &state.policy;
    if let Some(max) = p.max_failures
        && failures > max
    {
        return Some(format!("{failures} failures exceed max_failures {max}"));
    }
    if let Some(pct) = p.max_failure_pct {
        let delivered = counts.delivered().max(1);
        if failures * 100 > u64::from(pct) * delivered {
            return Some(format!(
                "{failures} failures of {delivered} delivered exceed max_failure_pct {pct}"
            ));
        }
    }
    None
}

/// Decide the rollout's next step at `now` (SPEC §6). Nothing for a deployment that is
/// final or paused.
pub fn next_step(dep: &DeploymentRecord, now: Ts) -> Step {
    let Some(r) = &dep.rollout else {
        return Step::Nothing;
    };
    if dep.status.is_final() || r.paused_reason.is_some() {
        return Step::Nothing;
    }
    if r.opened == 0 {
        return if r.policy.start_at.is_none_or(|t| now >= t) {
            Step::OpenWave(0)
        } else {
            Step::Nothing
        };
    }
    if let Some(reason) = failure_gate(r, &dep.counts) {
        return Step::Trip {
            abort: r.policy.on_failure == OnFailure::Abort,
            reason,
        };
    }
    let current = r.opened - 1;
    if current + 1 >= r.waves.len() || !wave_good(r, current) {
        return Step::Nothing;
    }
    if r.policy.auto_advance {
        Step::OpenWave(current + 1)
    } else {
        Step::Hold {
            reason: format!(
                "wave {current} is good; resume to open wave {} (auto_advance is off)",
                current + 1
            ),
        }
    }
}

/// Open wave `k`: record when; its targets are released after (in chunks, paced).
pub fn open_wave(dep: &mut DeploymentRecord, k: usize, now: Ts) -> bool {
    let Some(r) = dep.rollout.as_mut() else {
        return false;
    };
    if k != r.opened || k >= r.waves.len() || r.paused_reason.is_some() {
        return false;
    }
    r.waves[k].opened_at = Some(now);
    r.opened = k + 1;
    dep.refresh(now);
    true
}

/// How many of the current wave's targets may be released by `now`: all of them, or
/// with `max_per_minute` a budget that grows by that many a minute from the wave's
/// opening (the first target at once).
pub fn release_budget(state: &RolloutState, now: Ts) -> u64 {
    let Some(w) = state.opened.checked_sub(1).and_then(|k| state.waves.get(k)) else {
        return 0;
    };
    let allowed = match (state.policy.max_per_minute, w.opened_at) {
        (Some(per_minute), Some(at)) => {
            let ms = u64::try_from((now - at).num_milliseconds()).unwrap_or(0);
            1 + per_minute.saturating_mul(ms) / 60_000
        }
        _ => w.targets,
    };
    allowed.min(w.targets).saturating_sub(w.released)
}

/// Release one waiting target of the current wave (it becomes deliverable). `false`
/// when it is not waiting.
pub fn release(dep: &mut DeploymentRecord, target: &mut TargetRecord, now: Ts) -> bool {
    if target.status != TargetStatus::Waiting {
        return false;
    }
    target.status = TargetStatus::Pending;
    target.released_at = Some(now);
    target.updated_at = now;
    if let Some(w) = dep
        .rollout
        .as_mut()
        .and_then(|r| r.waves.get_mut(target.wave as usize))
    {
        w.released += 1;
    }
    dep.shift(TargetStatus::Waiting, TargetStatus::Pending, now);
    true
}

/// The moment a released, unfinished target times out, if the policy has a timeout.
pub fn deadline(state: &RolloutState, target: &TargetRecord) -> Option<Ts> {
    let secs = i64::try_from(state.policy.target_timeout_seconds?).ok()?;
    let from = target
        .released_at
        .or_else(|| state.waves.get(target.wave as usize)?.opened_at)?;
    Some(from + chrono::Duration::seconds(secs))
}

/// Time a target out if its deadline passed: `pending`/`in_progress` → `timed_out`
/// (while paused, only `in_progress`: a pause holds deliveries, so it must not time
/// out what it holds). Counts as a failure of its wave.
pub fn time_out(dep: &mut DeploymentRecord, target: &mut TargetRecord, now: Ts) -> bool {
    let Some(r) = &dep.rollout else {
        return false;
    };
    let eligible = match target.status {
        TargetStatus::InProgress => true,
        TargetStatus::Pending => r.paused_reason.is_none(),
        _ => false,
    };
    if !eligible || deadline(r, target).is_none_or(|d| now < d) {
        return false;
    }
    let from = target.status;
    target.status = TargetStatus::TimedOut;
    target.error_message = Some(format!(
        "no result within target_timeout_seconds ({} s)",
        r.policy.target_timeout_seconds.unwrap_or(0)
    ));
    target.updated_at = now;
    count_failure(dep, target.wave);
    dep.shift(from, TargetStatus::TimedOut, now);
    true
}

fn count_failure(dep: &mut DeploymentRecord, wave: u32) {
    if let Some(w) = dep
        .rollout
        .as_mut()
        .and_then(|r| r.waves.get_mut(wave as usize))
    {
        w.failed += 1;
    }
}

/// A first final result (or a late one replacing `timed_out`) meets the rollout: the
/// wave's numbers follow. A success with no soak is healthy at once. `was` is the
/// target's status before the result.
pub fn count_result(dep: &mut DeploymentRecord, target: &mut TargetRecord, was: TargetStatus) {
    let Some(r) = dep.rollout.as_mut() else {
        return;
    };
    let soak = r.policy.soak_seconds;
    let Some(w) = r.waves.get_mut(target.wave as usize) else {
        return;
    };
    match target.status {
        TargetStatus::Success => {
            w.success += 1;
            // A late success after a timeout records the truth; the failure it was
            // counted as stands (the gate decision already taken stands).
            if was == TargetStatus::TimedOut {
                // Its soak is moot: it already counts as a failure.
                target.soak_ok = Some(false);
            } else if soak == 0 {
                w.healthy += 1;
                target.soak_ok = Some(true);
            }
        }
        TargetStatus::Failed if was != TargetStatus::TimedOut => w.failed += 1,
        _ => {}
    }
}

/// Record a soak's verdict on a success. `false` when it was decided already.
pub fn record_soak(
    dep: &mut DeploymentRecord,
    target: &mut TargetRecord,
    ok: bool,
    now: Ts,
) -> bool {
    if target.status != TargetStatus::Success || target.soak_ok.is_some() {
        return false;
    }
    target.soak_ok = Some(ok);
    if let Some(w) = dep
        .rollout
        .as_mut()
        .and_then(|r| r.waves.get_mut(target.wave as usize))
    {
        if ok {
            w.healthy += 1;
        } else {
            w.failed += 1;
        }
    }
    dep.refresh(now);
    true
}

/// The soak verdict for a success at `since`, judged at `until` (≥ since + soak) from
/// the device's heartbeats (any order): it kept heartbeating (no gap longer than the
/// online window, 3 × its polling interval, from the success to the end of the soak)
/// and no beat reported a failure. `Err` with the reason when it failed.
pub fn soak_verdict(
    since: Ts,
    until: Ts,
    polling_interval: u64,
    beats: &[HeartbeatRecord],
) -> Result<(), String> {
    let window = i64::try_from(polling_interval.max(1).saturating_mul(3)).unwrap_or(i64::MAX);
    let mut times: Vec<Ts> = beats
        .iter()
        .filter(|b| b.timestamp >= since && b.timestamp <= until)
        .map(|b| b.timestamp)
        .collect();
    if let Some(bad) = beats
        .iter()
        .filter(|b| b.timestamp >= since && b.timestamp <= until)
        .find(|b| reports_failure(&b.status))
    {
        return Err(format!("reported {:?} during its soak", bad.status));
    }
    times.sort();
    let mut last = since;
    for t in times.into_iter().chain([until]) {
        if (t - last).num_seconds() > window {
            return Err(format!(
                "went offline during its soak (no heartbeat for {} s)",
                (t - last).num_seconds()
            ));
        }
        last = t;
    }
    Ok(())
}

/// A heartbeat status that reports a failure (the free-text agent status).
fn reports_failure(status: &str) -> bool {
    let s = status.to_ascii_lowercase();
    s.contains("unhealthy") || s.contains("fail")
}

/// Pause (an operator, or a gate): 409 when the deployment is final or already paused.
pub fn pause(dep: &mut DeploymentRecord, reason: &str, now: Ts) -> Result<(), StoreError> {
    if dep.status.is_final() {
        return Err(StoreError::Conflict(format!(
            "deployment is {}: nothing to pause",
            dep.status.as_str()
        )));
    }
    let Some(r) = dep.rollout.as_mut() else {
        return Err(StoreError::Conflict(
            "deployment has no rollout to pause (it was created without a policy)".into(),
        ));
    };
    if r.paused_reason.is_some() {
        return Err(StoreError::Conflict("deployment is already paused".into()));
    }
    r.paused_reason = Some(reason.to_owned());
    dep.refresh(now);
    Ok(())
}

/// Resume a paused rollout; the failures so far are accepted (the gate trips again only
/// on a further one). 409 when it is not paused. Returns whether the current wave is
/// good, so the caller opens the next wave (SPEC §6: resume opens it).
pub fn resume(dep: &mut DeploymentRecord, now: Ts) -> Result<bool, StoreError> {
    if dep.status.is_final() {
        return Err(StoreError::Conflict(format!(
            "deployment is {}: nothing to resume",
            dep.status.as_str()
        )));
    }
    let Some(r) = dep.rollout.as_mut() else {
        return Err(StoreError::Conflict(
            "deployment has no rollout to resume (it was created without a policy)".into(),
        ));
    };
    if r.paused_reason.is_none() {
        return Err(StoreError::Conflict("deployment is not paused".into()));
    }
    r.paused_reason = None;
    r.accepted_failures = r.failures();
    let advance = r.opened > 0 && r.opened < r.waves.len() && wave_good(r, r.opened - 1);
    dep.refresh(now);
    Ok(advance)
}

/// The failure gate aborts: record why; the caller cancels what was not delivered.
pub fn abort(dep: &mut DeploymentRecord, reason: &str, now: Ts) {
    if let Some(r) = dep.rollout.as_mut() {
        r.paused_reason = Some(format!("aborted: {reason}"));
    }
    dep.refresh(now);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn policy(waves: &[u8]) -> RolloutPolicy {
        RolloutPolicy {
            waves: waves.to_vec(),
            ..RolloutPolicy::default()
        }
    }

    #[test]
    fn waves_are_cumulative_and_grow_by_at_least_one() {
        let sizes = |w: &[u8], n| -> Vec<u64> {
            plan(&policy(w), n)
                .waves
                .iter()
                .map(|w| w.targets)
                .collect()
        };
        assert_eq!(sizes(&[1, 10, 50, 100], 1000), [10, 90, 400, 500]);
        assert_eq!(sizes(&[1, 10, 50, 100], 10), [1, 1, 3, 5]);
        assert_eq!(sizes(&[1, 2, 100], 2), [1, 1, 0]);
        assert_eq!(sizes(&[100], 7), [7]);
        let s = plan(&policy(&[1, 10, 100]), 10);
        let waves: Vec<u32> = (0..10).map(|i| wave_of(&s, i)).collect();
        assert_eq!(waves, [0, 1, 2, 2, 2, 2, 2, 2, 2, 2]);
    }

    #[test]
    fn the_first_tag_comes_first_and_the_order_is_stable() {
        let ids: Vec<String> = (0..20).map(|i| format!("dev-{i}")).collect();
        let first: HashSet<String> = ["dev-7".to_owned(), "dev-13".to_owned()].into();
        let a = order(ids.clone(), &first);
        let mut reversed = ids.clone();
        reversed.reverse();
        assert_eq!(order(reversed, &first), a);
        let head: HashSet<String> = a[..2].iter().cloned().collect();
        assert_eq!(head, first);
        assert_ne!(a[2..], ids[..18], "the rest is not in id order");
    }

    #[test]
    fn soak_fails_on_a_gap_or_a_failure_report() {
        let t0: Ts = "2026-12-01T00:00:00Z".parse().unwrap();
        let beat = |s: i64, status: &str| HeartbeatRecord {
            timestamp: t0 + chrono::Duration::seconds(s),
            agent_version: "1".into(),
            cpu_pct: 0.0,
            memory_mb: 0.0,
            status: status.into(),
            current_bundle_version: None,
        };
        let end = t0 + chrono::Duration::seconds(10);
        let steady: Vec<_> = (1..=10).map(|s| beat(s, "idle")).collect();
        assert!(soak_verdict(t0, end, 1, &steady).is_ok());
        let gap: Vec<_> = [1, 2, 9, 10].map(|s| beat(s, "idle")).to_vec();
        assert!(soak_verdict(t0, end, 1, &gap).is_err());
        let silent_end: Vec<_> = (1..=5).map(|s| beat(s, "idle")).collect();
        assert!(soak_verdict(t0, end, 1, &silent_end).is_err());
        let mut bad = steady.clone();
        bad[4].status = "unhealthy".into();
        assert!(soak_verdict(t0, end, 1, &bad).is_err());
    }
}
