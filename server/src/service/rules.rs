//! The fleet's rules as pure functions: no I/O, no engine. Every backend calls them inside
//! its own transaction and stores what they return, so sled and PostgreSQL cannot drift
//! apart on what a result or a config update means.

use kernex_common::api::{
    Admission, BundleCommand, Command, ConfigUpdate, DeploymentKind, DeploymentStatus,
    DeviceConfig, HistoryRecord, LastDeployment, ResultReport, ResultStatus, TargetStatus,
};

use kernex_common::update_signing::SignedDocument;

use crate::store::{DeploymentRecord, DeviceRecord, StoreError, TargetRecord, Ts, new_id};

/// The admission a registration gets (SPEC §1.1): a new key gets what it presented; a
/// known pending device is promoted when it now presents the enrollment token; a rejected
/// key is refused.
pub fn admit(
    existing: Option<&DeviceRecord>,
    presented: Admission,
) -> Result<Admission, StoreError> {
    match existing {
        None => Ok(presented),
        Some(d) if d.admission == Admission::Rejected => Err(StoreError::Forbidden(format!(
            "device {} was rejected by an operator",
            d.device_id
        ))),
        Some(d) if d.admission == Admission::Pending && presented == Admission::Accepted => {
            Ok(Admission::Accepted)
        }
        Some(d) => Ok(d.admission),
    }
}

/// A config update merged onto the current config: the fields given replace, the rest
/// stay, and the version goes up by exactly one (SPEC §1.3). Validation happened before.
pub fn merge_config(mut c: DeviceConfig, update: &ConfigUpdate, now: Ts) -> DeviceConfig {
    c.version += 1;
    if let Some(v) = update.polling_interval {
        c.polling_interval = v;
    }
    if let Some(v) = update.heartbeat_timeout {
        c.heartbeat_timeout = v;
    }
    if let Some(v) = update.deploy_timeout {
        c.deploy_timeout = v;
    }
    if let Some(v) = &update.log_level {
        c.log_level = v.clone();
    }
    if let Some(v) = &update.metadata {
        c.metadata = v.clone();
    }
    c.updated_at = Some(now);
    c
}

/// The command that delivers a deployment to one of its targets (SPEC §1.6), carrying
/// the bundle's signed metadata and signatures when it has any (SPEC §7).
pub fn bundle_command(dep: &DeploymentRecord, signed: Option<SignedDocument>) -> Command {
    let payload = BundleCommand {
        deployment_id: dep.id.clone(),
        bundle_id: dep.bundle_id.clone(),
        bundle_version: dep.bundle_version.clone(),
        checksum_sha256: dep.checksum_sha256.clone(),
        size_bytes: dep.size_bytes,
        signed,
    };
    match dep.kind {
        DeploymentKind::Deploy => Command::Deploy(payload),
        DeploymentKind::Rollback => Command::Rollback(payload),
    }
}

/// How a result report meets the stored target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultDecision {
    /// The first final result: apply it.
    Apply,
    /// A repeat of an applied `report_id`, or a late result after the first: 200 with
    /// the stored result, nothing changes.
    Repeat,
}

/// Decide what a result does (SPEC §1.5): idempotent by `report_id`, first result wins.
/// `seen` is what the store remembers for this `report_id`: the deployment and device
/// it was used for.
pub fn decide_result(
    target: &TargetRecord,
    seen: Option<(&str, &str)>,
    deployment_id: &str,
) -> Result<ResultDecision, StoreError> {
    if let Some((dep, device)) = seen {
        if dep != deployment_id || device != target.device_id {
            return Err(StoreError::Invalid(
                "report_id was already used for a different result".into(),
            ));
        }
        return Ok(ResultDecision::Repeat);
    }
    // A target that timed out still takes the device's real result (SPEC §6).
    if target.status.is_final() && target.status != TargetStatus::TimedOut {
        return Ok(ResultDecision::Repeat);
    }
    Ok(ResultDecision::Apply)
}

/// Apply a first final result to the target, its deployment and the device's version;
/// returns the history record to append. `device_version` is the version a result set
/// on the device record, with its time.
pub fn apply_result(
    dep: &mut DeploymentRecord,
    target: &mut TargetRecord,
    device: &mut DeviceRecord,
    r: &ResultReport,
    now: Ts,
) -> HistoryRecord {
    let to = match r.status {
        ResultStatus::Success => TargetStatus::Success,
        ResultStatus::Failed => TargetStatus::Failed,
    };
    let was = target.status;
    target.status = to;
    target.error_message = r.error_message.clone();
    target.log_tail = r.log_tail.clone();
    target.report_id = Some(r.report_id.clone());
    target.updated_at = now;
    target.result_at = Some(now);
    if to == TargetStatus::Success {
        target.progress_pct = Some(100);
    }
    super::rollout::count_result(dep, target, was);
    dep.shift(was, to, now);
    let new_version = match (r.status, &r.rolled_back_to) {
        (ResultStatus::Success, _) => Some(dep.bundle_version.clone()),
        (ResultStatus::Failed, Some(v)) => Some(v.clone()),
        (ResultStatus::Failed, None) => None,
    };
    if let Some(v) = new_version {
        device.current_bundle_version = Some(v);
        device.version_set_at = Some(now);
    }
    device.last_deployment = Some(LastDeployment {
        deployment_id: dep.id.clone(),
        kind: dep.kind,
        bundle_version: dep.bundle_version.clone(),
        status: r.status,
        rolled_back_to: r.rolled_back_to.clone(),
        at: now,
    });
    HistoryRecord {
        id: new_id(),
        device_id: target.device_id.clone(),
        deployment_id: dep.id.clone(),
        kind: dep.kind,
        bundle_id: dep.bundle_id.clone(),
        bundle_version: dep.bundle_version.clone(),
        status: r.status,
        error_message: r.error_message.clone(),
        log_tail: r.log_tail.clone(),
        rolled_back_to: r.rolled_back_to.clone(),
        deployed_at: now,
        duration_seconds: r.duration_seconds,
    }
}

/// Cancel one unfinished target (an operator cancel, or its device was rejected or
/// deleted). `false` when it is already final and nothing changes.
pub fn cancel_target(
    dep: &mut DeploymentRecord,
    target: &mut TargetRecord,
    reason: &str,
    now: Ts,
) -> bool {
    if target.status.is_final() {
        return false;
    }
    dep.shift(target.status, TargetStatus::Cancelled, now);
    target.status = TargetStatus::Cancelled;
    target.error_message = Some(reason.to_owned());
    target.updated_at = now;
    true
}

/// Move a pending target to `in_progress` as its command is delivered. `false` when it
/// is not pending (already delivered, or finished meanwhile) or its rollout is paused
/// (a pause holds new deliveries; in-flight targets finish).
pub fn deliver(dep: &mut DeploymentRecord, target: &mut TargetRecord, now: Ts) -> bool {
    if target.status != TargetStatus::Pending || dep.status == DeploymentStatus::Paused {
        return false;
    }
    target.status = TargetStatus::InProgress;
    target.updated_at = now;
    dep.shift(TargetStatus::Pending, TargetStatus::InProgress, now);
    true
}
