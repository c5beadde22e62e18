//! `deploy`, `rollback` (with the rollout flags of SPEC §6), `deployments [ID]`, `pause`,
//! `resume`, `cancel`, and `--wait`.
//!
//! `--wait` polls `GET /deployments/{id}` about once a second until the deployment's
//! status is final, or its rollout pauses (a gate tripped: exit 1 with the reason). Polling cannot miss the end (each poll reads the whole state), costs
//! one small request a second, and survives a server restart: while the server is
//! unreachable the wait keeps trying for [`UNREACHABLE_LIMIT`] before giving up with
//! exit 2. A progress bar (finished targets of all, with the counts) is drawn on stderr
//! when it is a terminal; otherwise each change is a line on stderr, for CI logs.

use std::time::{Duration, Instant};

use chrono::Utc;
use kernex_common::api::{
    CreateDeployment, Deployment, DeploymentStatus, OnFailure, RollbackRequest, RolloutPolicy,
    TargetStatus,
};
use kernex_common::validate::is_valid_version;

use super::{OpError, OpResult, Report, check_tag, connect, ids, output, render};
use crate::api::{Api, ApiError};
use crate::cli::{ConnArgs, DeployArgs, OnFailureArg, RollbackArgs, RolloutArgs, WaitArgs};

/// How often `--wait` asks.
const POLL: Duration = Duration::from_secs(1);
/// How long `--wait` rides out an unreachable server (a restart, a network blip).
const UNREACHABLE_LIMIT: Duration = Duration::from_secs(60);
/// Largest `--limit` the server serves.
const MAX_LIMIT: u32 = 1000;

/// `deploy VERSION (--devices A,B | --tag T) [--wait [--timeout S]]`.
pub(crate) async fn deploy(conn: &ConnArgs, args: &DeployArgs) -> OpResult<Report> {
    check_version(&args.version)?;
    let devices = device_ids(&args.devices)?;
    let tags = tags(&args.tag)?;
    if devices.is_empty() && tags.is_empty() {
        return Err(OpError::Usage(
            "name the targets with --devices A,B or --tag T".into(),
        ));
    }
    let rollout = policy(&args.rollout)?;
    let api = connect(conn)?;
    let devices = resolved(&api, &devices).await?;
    let dep = api
        .create_deployment(&CreateDeployment {
            bundle_version: Some(args.version.clone()),
            bundle_id: None,
            target_device_ids: devices,
            target_tags: tags,
            rollout,
        })
        .await?;
    finish(&api, dep, &args.wait).await
}

/// `rollback VERSION --devices A,B [--wait [--timeout S]]`.
pub(crate) async fn rollback(conn: &ConnArgs, args: &RollbackArgs) -> OpResult<Report> {
    check_version(&args.version)?;
    let devices = device_ids(&args.devices)?;
    if devices.is_empty() {
        return Err(OpError::Usage("--devices names no device".into()));
    }
    let rollout = policy(&args.rollout)?;
    let api = connect(conn)?;
    let devices = resolved(&api, &devices).await?;
    let dep = api
        .rollback(&RollbackRequest {
            bundle_version: args.version.clone(),
            target_device_ids: devices,
            rollout,
        })
        .await?;
    finish(&api, dep, &args.wait).await
}

/// `pause ID`, `resume ID`, `cancel ID` (the id may be a unique suffix of 6+ chars).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Pause,
    Resume,
    Cancel,
}

pub(crate) async fn control(conn: &ConnArgs, id: &str, what: Control) -> OpResult<Report> {
    ids::check_ref("deployment", id)?;
    let api = connect(conn)?;
    let id = ids::deployment(&api, id).await?;
    let dep = match what {
        Control::Pause => api.pause(&id).await?,
        Control::Resume => api.resume(&id).await?,
        Control::Cancel => api.cancel(&id).await?,
    };
    Report::new(&dep, render::deployment(&dep, Utc::now(), output::width()))
}

/// The `--waves … --start-at` flags as a policy; `None` when none was given. Checked
/// here (exit 2) with the same rules the server applies.
fn policy(a: &RolloutArgs) -> OpResult<Option<RolloutPolicy>> {
    let given = !a.waves.is_empty()
        || a.first_tag.is_some()
        || a.threshold.is_some()
        || a.soak.is_some()
        || a.max_failures.is_some()
        || a.max_failure_pct.is_some()
        || a.on_failure.is_some()
        || a.no_auto_advance
        || a.target_timeout.is_some()
        || a.max_per_minute.is_some()
        || a.start_at.is_some();
    if !given {
        return Ok(None);
    }
    let duration = |flag: &str, v: &Option<String>| -> OpResult<Option<u64>> {
        v.as_deref()
            .map(|s| {
                crate::fmt::parse_duration(s).ok_or_else(|| {
                    OpError::Usage(format!(
                        "{flag} {s:?}: give seconds or a number with s, m, h or d (10m, 1h)"
                    ))
                })
            })
            .transpose()
    };
    let mut p = RolloutPolicy::default();
    if !a.waves.is_empty() {
        p.waves = a.waves.clone();
    }
    if let Some(tag) = &a.first_tag {
        check_tag(tag)?;
        p.first_tag = Some(tag.clone());
    }
    if let Some(t) = a.threshold {
        p.success_threshold_pct = t;
    }
    if let Some(s) = duration("--soak", &a.soak)? {
        p.soak_seconds = s;
    }
    p.max_failures = a.max_failures;
    p.max_failure_pct = a.max_failure_pct;
    if let Some(f) = a.on_failure {
        p.on_failure = match f {
            OnFailureArg::Pause => OnFailure::Pause,
            OnFailureArg::Abort => OnFailure::Abort,
        };
    }
    p.auto_advance = !a.no_auto_advance;
    p.target_timeout_seconds = duration("--target-timeout", &a.target_timeout)?;
    p.max_per_minute = a.max_per_minute;
    if let Some(t) = &a.start_at {
        let at = chrono::DateTime::parse_from_rfc3339(t).map_err(|e| {
            OpError::Usage(format!(
                "--start-at {t:?} is not an RFC 3339 time (2026-12-01T02:00:00Z): {e}"
            ))
        })?;
        p.start_at = Some(at.with_timezone(&Utc));
    }
    if let Some(problem) = p.problem() {
        return Err(OpError::Usage(problem.replace("rollout.", "--")));
    }
    Ok(Some(p))
}

/// `deployments [ID] [--status S] [--limit N]`.
pub(crate) async fn deployments(
    conn: &ConnArgs,
    id: Option<&str>,
    status: Option<&str>,
    limit: u32,
) -> OpResult<Report> {
    if let Some(id) = id {
        ids::check_ref("deployment", id)?;
        if status.is_some() {
            return Err(OpError::Usage(
                "--status filters the list; it does not apply to one deployment".into(),
            ));
        }
        let api = connect(conn)?;
        let dep = api.deployment(&ids::deployment(&api, id).await?).await?;
        return Report::new(&dep, render::deployment(&dep, Utc::now(), output::width()));
    }
    if let Some(s) = status.filter(|s| DeploymentStatus::parse(s).is_none()) {
        let valid: Vec<&str> = DeploymentStatus::ALL.iter().map(|t| t.as_str()).collect();
        return Err(OpError::Usage(format!(
            "--status must be one of {}, got {s:?}",
            valid.join(", ")
        )));
    }
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(OpError::Usage(format!(
            "--limit must be between 1 and {MAX_LIMIT}, got {limit}"
        )));
    }
    let list = connect(conn)?.deployments(status, limit, true).await?;
    Ok(Report::new(
        &list,
        render::deployments(&list, Utc::now(), output::width()),
    )?
    // Wide: every column, however narrow the terminal.
    .wide(render::deployments(&list, Utc::now(), None))
    .when_empty("no deployments"))
}

fn check_version(v: &str) -> OpResult<()> {
    if is_valid_version(v) {
        Ok(())
    } else {
        Err(OpError::Usage(format!(
            "invalid version {v:?}: versions are 1-64 characters of [A-Za-z0-9._+-]"
        )))
    }
}

/// `--devices a,b` (also `a, b` or a trailing comma): checked, without duplicates.
fn device_ids(list: &[String]) -> OpResult<Vec<String>> {
    checked_list(list, |id| ids::check_ref("device", id))
}

/// Typed device ids (full or suffixes, none when only tags were given) → full ids,
/// without duplicates (two suffixes may name one device).
async fn resolved(api: &Api, typed: &[String]) -> OpResult<Vec<String>> {
    if typed.is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<String> = Vec::new();
    for id in ids::devices(api, typed).await? {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

fn tags(list: &[String]) -> OpResult<Vec<String>> {
    checked_list(list, check_tag)
}

/// Trimmed, non-empty, each checked, first occurrence kept.
fn checked_list(list: &[String], check: impl Fn(&str) -> OpResult<()>) -> OpResult<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for item in list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        check(item)?;
        if !out.iter().any(|o| o == item) {
            out.push(item.to_owned());
        }
    }
    Ok(out)
}

/// The created deployment, or with `--wait` the finished one.
async fn finish(api: &Api, dep: Deployment, wait: &WaitArgs) -> OpResult<Report> {
    if !wait.wait {
        return Report::new(&dep, render::deployment(&dep, Utc::now(), output::width()));
    }
    watch(api, dep, wait.timeout.map(Duration::from_secs)).await
}

/// Follow a deployment until its status is final (or `timeout` passes, or Ctrl-C).
/// Exit 0 only for `success`.
async fn watch(api: &Api, mut dep: Deployment, timeout: Option<Duration>) -> OpResult<Report> {
    let id = dep.id.clone();
    let total = dep.counts.total();
    let bar = output::progress_bar(
        total,
        "{spinner} {prefix} [{bar:25}] {pos}/{len} finished  {msg} ({elapsed_precise})",
    );
    bar.set_prefix(format!("{} {}", dep.kind.as_str(), dep.bundle_version));
    let lines = !output::stderr_is_terminal();
    if lines {
        output::note(&format!(
            "waiting for {} {} ({id}) on {total} target(s)",
            dep.kind.as_str(),
            dep.bundle_version
        ));
    }
    let started = Instant::now();
    // No deadline beats a panic if a caller passes something absurd.
    let deadline = timeout.and_then(|t| tokio::time::Instant::now().checked_add(t));
    let mut last = String::new();
    let mut unreachable_since: Option<Instant> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    loop {
        let message = progress_message(&dep);
        bar.set_position(dep.counts.finished());
        if unreachable_since.is_none() {
            bar.set_message(message.clone());
        }
        if lines && message != last {
            output::note(&format!(
                "{}/{} finished: {message}",
                dep.counts.finished(),
                total
            ));
            last = message;
        }
        if dep.status.is_final() || dep.status == DeploymentStatus::Paused {
            break;
        }
        let now = tokio::time::Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            bar.finish_and_clear();
            let waited = started.elapsed().as_secs();
            let report = Report::new(&dep, render::deployment(&dep, Utc::now(), output::width()))?;
            return Ok(report.failed(format!(
                "gave up waiting after {waited} s: deployment {id} is still {} ({}); it goes \
                 on without us (`kernex-console deployments {id}`)",
                dep.status.as_str(),
                render::counts(&dep.counts)
            )));
        }
        let wake = deadline.map_or(now + POLL, |d| d.min(now + POLL));
        let step = async {
            tokio::time::sleep_until(wake).await;
            match deadline {
                Some(d) => tokio::time::timeout_at(d, api.deployment(&id)).await.ok(),
                None => Some(api.deployment(&id).await),
            }
        };
        let polled = tokio::select! {
            polled = step => polled,
            _ = &mut ctrl_c => {
                bar.finish_and_clear();
                return Err(OpError::Failed(format!(
                    "interrupted: deployment {id} goes on without us \
                     (`kernex-console deployments {id}`)"
                )));
            }
        };
        match polled {
            // The deadline passed mid-request: the next turn reports it.
            None => {}
            Some(Ok(d)) => {
                dep = d;
                unreachable_since = None;
            }
            Some(Err(e)) if e.is_transient() => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= UNREACHABLE_LIMIT {
                    bar.finish_and_clear();
                    return Err(stopped_waiting(&id, e));
                }
                bar.set_message("server unreachable, retrying");
                if lines && last != "unreachable" {
                    output::note(&format!("{e}; retrying"));
                    last = "unreachable".into();
                }
            }
            Some(Err(e)) => {
                bar.finish_and_clear();
                return Err(stopped_waiting(&id, e));
            }
        }
    }
    bar.finish_and_clear();
    let report = Report::new(&dep, render::deployment(&dep, Utc::now(), output::width()))?;
    if dep.status == DeploymentStatus::Success {
        Ok(report)
    } else {
        let why = dep
            .rollout
            .as_ref()
            .and_then(|r| r.paused_reason.as_deref())
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        Ok(report.failed(format!(
            "deployment {id} {} ({}){why}",
            dep.status.as_str(),
            render::counts(&dep.counts)
        )))
    }
}

/// The wait ended on an API error: say that the deployment exists, then the error.
fn stopped_waiting(id: &str, e: ApiError) -> OpError {
    output::error(&format!("stopped waiting for deployment {id}"));
    OpError::Api(e)
}

/// The bar's message: the rollout's wave, the counts, and for a single busy target its
/// phase.
fn progress_message(dep: &Deployment) -> String {
    let mut message = match &dep.rollout {
        Some(r) if r.waves.len() > 1 => format!(
            "wave {}/{} ({}%): ",
            r.current_wave + 1,
            r.waves.len(),
            r.waves.get(r.current_wave).map_or(100, |w| w.pct)
        ),
        _ => String::new(),
    };
    message.push_str(&render::counts(&dep.counts));
    let busy: Vec<_> = dep
        .devices
        .iter()
        .filter(|d| d.status == TargetStatus::InProgress)
        .collect();
    if let [one] = busy.as_slice()
        && let Some(phase) = one.phase
    {
        message.push_str(&format!(" ({}", phase.as_str()));
        if let Some(p) = one.progress_pct {
            message.push_str(&format!(" {p}%"));
        }
        message.push(')');
    }
    message
}

#[cfg(test)]
mod tests {
    use kernex_common::api::{Counts, DeploymentDevice, DeploymentKind, Phase};

    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn targets_are_trimmed_deduplicated_and_checked() {
        assert_eq!(
            device_ids(&strings(&["aaaaa1", " bbbbb2", "", "aaaaa1"])).unwrap(),
            strings(&["aaaaa1", "bbbbb2"])
        );
        // A suffix shorter than 6 characters is a usage error too.
        assert_eq!(
            device_ids(&strings(&["aaaaa1", "b2"]))
                .unwrap_err()
                .exit_code(),
            2
        );
        assert_eq!(
            device_ids(&strings(&["okokok", "not/ok"]))
                .unwrap_err()
                .exit_code(),
            2
        );
        assert_eq!(
            tags(&strings(&["site:berlin"])).unwrap(),
            strings(&["site:berlin"])
        );
        assert_eq!(tags(&strings(&["bad tag"])).unwrap_err().exit_code(), 2);
        assert!(check_version("1.2.0-broken").is_ok());
        assert_eq!(check_version("../1").unwrap_err().exit_code(), 2);
    }

    #[test]
    fn the_progress_message_names_a_lone_busy_targets_phase() {
        let now = Utc::now();
        let dev = |status, phase, pct| DeploymentDevice {
            device_id: "d".into(),
            status,
            phase,
            progress_pct: pct,
            error_message: None,
            log_tail: None,
            updated_at: now,
        };
        let mut dep = Deployment {
            id: "x".into(),
            kind: DeploymentKind::Deploy,
            bundle_id: "b".into(),
            bundle_version: "1.0.0".into(),
            target_device_ids: vec!["d".into(), "e".into()],
            status: kernex_common::api::DeploymentStatus::InProgress,
            created_at: now,
            updated_at: now,
            completed_at: None,
            counts: Counts {
                in_progress: 1,
                success: 1,
                ..Counts::default()
            },
            devices: vec![
                dev(TargetStatus::InProgress, Some(Phase::Downloading), Some(40)),
                dev(TargetStatus::Success, None, None),
            ],
            rollout: None,
        };
        assert_eq!(
            progress_message(&dep),
            "1 success, 1 in progress (downloading 40%)"
        );
        dep.devices[1] = dev(TargetStatus::InProgress, None, None);
        assert_eq!(progress_message(&dep), "1 success, 1 in progress");
    }
}
