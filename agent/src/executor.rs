//! The deploy / rollback pipeline (SPEC §3 steps 1–9).
//!
//! Crash safety rests on two writes: `in_progress` goes into `state.json` before any
//! work starts, and the result goes into the queue before `state.json` records the
//! outcome. A restart that finds `in_progress` either finds the queued result (and
//! finishes the bookkeeping) or knows the deployment was interrupted.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kernex_common::api::{BundleCommand, DeploymentKind, Phase, ResultReport, ResultStatus};
use kernex_common::bundle::{self, Limits};
use kernex_common::manifest::Manifest;
use kernex_common::validate::{MAX_MESSAGE_LEN, is_valid_id, is_valid_version, tail_utf8};

use crate::context::Ctx;
use crate::crashpoint;
use crate::download::{Download, DownloadError};
use crate::identity::DeviceFile;
use crate::queue::{Outcome, QueuedReport};
use crate::script::{self, ScriptRun, ScriptSpec};
use crate::state::{
    AgentState, ErrorSource, FailedDeployment, InProgress, KeptBundle, LocalRecord,
};

/// What happened to a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Ran {
    /// Executed; its result is queued (and maybe already delivered).
    Finished(ResultStatus),
    /// Not finished (the download was interrupted); the server re-sends the command
    /// and the next attempt resumes.
    Retry(String),
    /// Already executed (or unusable): not run again.
    Skipped,
}

/// Execute a deploy or rollback command, at most once per deployment id.
pub async fn run_command(
    ctx: &Ctx,
    kind: DeploymentKind,
    cmd: &BundleCommand,
) -> anyhow::Result<Ran> {
    let Some(device) = ctx.device() else {
        anyhow::bail!("not registered");
    };
    if !is_valid_id(&cmd.deployment_id) || !is_valid_version(&cmd.bundle_version) {
        tracing::error!(
            ?cmd,
            "ignoring a command with an unusable deployment id or version"
        );
        return Ok(Ran::Skipped);
    }
    let st = ctx.state.get();
    if st.was_executed(&cmd.deployment_id)
        || ctx.executed.contains(&cmd.deployment_id)
        || ctx.queue.find(&cmd.deployment_id)?.is_some()
    {
        tracing::debug!(deployment.id = %cmd.deployment_id, "already executed; its result is queued or delivered");
        return Ok(Ran::Skipped);
    }
    if let Some(p) = &st.in_progress {
        anyhow::bail!("deployment {} is still in progress", p.deployment_id);
    }

    let started_at = Utc::now();
    ctx.state.update(|s| {
        s.in_progress = Some(InProgress {
            deployment_id: cmd.deployment_id.clone(),
            kind,
            bundle_version: cmd.bundle_version.clone(),
            started_at,
            phase: None,
            pgid: None,
            boot_id: None,
            restore_attempted: false,
        })
    })?;
    tracing::info!(deployment.id = %cmd.deployment_id, kind = kind.as_str(), version = %cmd.bundle_version, "executing");

    match pipeline(ctx, kind, cmd, &device, started_at).await {
        Ok(report) => {
            let status = report.report.status;
            finish_patiently(ctx, report).await?;
            Ok(Ran::Finished(status))
        }
        Err(why) => {
            tracing::warn!(deployment.id = %cmd.deployment_id, reason = %why, "deployment attempt stopped; it resumes when the server sends it again");
            ctx.state.update(|s| {
                s.in_progress = None;
                s.set_error(ErrorSource::Deployment, why.clone());
            })?;
            Ok(Ran::Retry(why))
        }
    }
}

/// [`finish`], retried while the disk refuses (full, read-only for a moment): the
/// outcome is only in memory until it is written, and giving up would make a restart
/// report a finished deployment as interrupted.
async fn finish_patiently(ctx: &Ctx, report: QueuedReport) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        match finish(ctx, report.clone()) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tracing::error!(deployment.id = %report.deployment_id, error = %e, "cannot record the result; retrying in 10 s");
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Queue the result durably, then record the outcome in `state.json`, then prune old
/// bundles. The order is what crash recovery relies on. Safe to repeat.
pub fn finish(ctx: &Ctx, report: QueuedReport) -> std::io::Result<()> {
    crashpoint::hit("before-queue-write");
    if ctx.queue.find(&report.deployment_id)?.is_none() {
        ctx.queue.push(&report)?;
    }
    crashpoint::hit("after-queue-write");
    // Durable before state.json moves on: the id is remembered for ever, not only
    // among state.json's newest 256.
    ctx.executed.record(&report.deployment_id)?;
    ctx.state.update(|s| apply(s, &report))?;
    crashpoint::hit("after-state-update");
    tracing::info!(
        deployment.id = %report.deployment_id,
        status = report.report.status.as_str(),
        rolled_back_to = ?report.report.rolled_back_to,
        error = ?report.report.error_message,
        "deployment finished; result queued"
    );
    prune_bundles(ctx);
    Ok(())
}

fn apply(s: &mut AgentState, q: &QueuedReport) {
    s.current_bundle_version = q.outcome.current_bundle_version.clone();
    s.previous_bundle_version = q.outcome.previous_bundle_version.clone();
    let record = LocalRecord {
        deployment_id: q.deployment_id.clone(),
        kind: q.kind,
        bundle_version: q.bundle_version.clone(),
        status: q.report.status,
        error_message: q.report.error_message.clone(),
        rolled_back_to: q.report.rolled_back_to.clone(),
        started_at: q.started_at,
        finished_at: q.queued_at,
        duration_seconds: q.report.duration_seconds.unwrap_or_default(),
        report_id: q.report.report_id.clone(),
    };
    if q.report.status == ResultStatus::Failed {
        s.set_error(
            ErrorSource::Deployment,
            format!(
                "deployment {} failed: {}",
                q.deployment_id,
                q.report.error_message.as_deref().unwrap_or("no message")
            ),
        );
        s.last_failure = Some(FailedDeployment {
            record: record.clone(),
            log_tail: q.report.log_tail.clone(),
        });
    } else {
        s.clear_error(&[ErrorSource::Deployment]);
    }
    s.finish(record);
}

/// Output of every script of one deployment, cut to the newest 8 KiB.
#[derive(Default)]
struct LogTail(String);

impl LogTail {
    fn add(&mut self, label: &str, run: &ScriptRun) {
        self.0.push_str(&format!("--- {label} ---\n{}", run.tail));
        if !self.0.ends_with('\n') {
            self.0.push('\n');
        }
        if self.0.len() > 2 * MAX_MESSAGE_LEN {
            self.0 = tail_utf8(&self.0, MAX_MESSAGE_LEN).to_owned();
        }
    }

    fn finish(self) -> Option<String> {
        (!self.0.is_empty()).then(|| tail_utf8(&self.0, MAX_MESSAGE_LEN).to_owned())
    }
}

/// Everything from download to health check. `Err` means "try again later".
async fn pipeline(
    ctx: &Ctx,
    kind: DeploymentKind,
    cmd: &BundleCommand,
    device: &DeviceFile,
    started_at: DateTime<Utc>,
) -> Result<QueuedReport, String> {
    let t0 = Instant::now();
    let st = ctx.state.get();
    let unchanged = Outcome {
        current_bundle_version: st.current_bundle_version.clone(),
        previous_bundle_version: st.previous_bundle_version.clone(),
    };
    let old_current = st.current_bundle_version.clone();
    let version = cmd.bundle_version.as_str();
    let mut log = LogTail::default();
    let report =
        |status, error: Option<String>, log: LogTail, rolled_back_to, outcome| QueuedReport {
            deployment_id: cmd.deployment_id.clone(),
            kind,
            bundle_version: cmd.bundle_version.clone(),
            started_at,
            queued_at: Utc::now(),
            report: ResultReport {
                device_id: device.device_id.clone(),
                status,
                report_id: uuid::Uuid::new_v4().to_string(),
                error_message: error.map(|e| tail_utf8(&e, MAX_MESSAGE_LEN).to_owned()),
                duration_seconds: Some(t0.elapsed().as_secs_f64()),
                log_tail: log.finish(),
                rolled_back_to,
            },
            outcome,
        };

    // 0. Signed updates (SPEC §7): refused before anything is downloaded or run.
    if let Err(why) = crate::trust::verify_command(&ctx.trust, &st, &ctx.device_type, kind, cmd) {
        tracing::warn!(deployment.id = %cmd.deployment_id, reason = %why, "bundle refused");
        return Ok(report(
            ResultStatus::Failed,
            Some(why),
            log,
            None,
            unchanged,
        ));
    }

    // 1–3. The bundle folder (kept from before, or downloaded and extracted now) and its
    // manifest, which must be for the version the command names.
    let prepared = match prepare(ctx, cmd, device).await {
        Ok(dir) => read_manifest(&dir, version).map(|m| (dir, m)),
        Err(DownloadError::Retry(why)) => return Err(why),
        Err(DownloadError::Fail(why)) => Err(why),
    };
    let (dir, manifest) = match prepared {
        Ok(p) => p,
        Err(why) => {
            return Ok(report(
                ResultStatus::Failed,
                Some(why),
                log,
                None,
                unchanged,
            ));
        }
    };

    // 4. The script.
    enter_phase(ctx, &cmd.deployment_id, Phase::Installing);
    let (label, spec) = match kind {
        DeploymentKind::Deploy => ("deploy", &manifest.deploy),
        DeploymentKind::Rollback => match &manifest.rollback {
            Some(r) => ("rollback", r),
            None => ("deploy", &manifest.deploy),
        },
    };
    let label = format!("{label} script {}", spec.script);
    let env = script_env(
        device,
        &cmd.deployment_id,
        version,
        &dir,
        old_current.as_deref(),
    );
    let timeout = spec
        .timeout_s
        .unwrap_or_else(|| ctx.state.get().config.deploy_timeout);
    let run = run_script(ctx, &dir, &spec.script, env.clone(), timeout).await;
    log.add(&label, &run);
    let mut failure = (!run.success()).then(|| run.describe(&label));

    // 5. The health check.
    if failure.is_none()
        && let Some(health) = &manifest.health
    {
        enter_phase(ctx, &cmd.deployment_id, Phase::HealthCheck);
        let timeout = health
            .timeout_s
            .unwrap_or_else(|| ctx.state.get().config.deploy_timeout);
        let run = run_script(ctx, &dir, &health.script, env, timeout).await;
        let label = format!("health check {}", health.script);
        log.add(&label, &run);
        if !run.success() {
            failure = Some(run.describe(&label));
        }
    }

    let Some(failure) = failure else {
        // 6. Success: this is the version now; the one before it is kept as previous.
        let previous = if old_current.as_deref() == Some(version) {
            st.previous_bundle_version.clone()
        } else {
            old_current
        };
        let outcome = Outcome {
            current_bundle_version: Some(version.to_owned()),
            previous_bundle_version: previous,
        };
        return Ok(report(ResultStatus::Success, None, log, None, outcome));
    };

    // 7. Failure: put the last good version back, from its kept folder.
    let (rolled_back_to, message) = match old_current.filter(|v| v != version) {
        Some(good) if st.kept(&good).is_some() && ctx.paths.bundle(&good).is_dir() => {
            match restore(
                ctx,
                device,
                &cmd.deployment_id,
                &good,
                Some(version),
                &mut log,
            )
            .await
            {
                Ok(()) => (
                    Some(good.clone()),
                    format!("{failure}; rolled back to {good}"),
                ),
                Err(e) => (
                    None,
                    format!("{failure}; automatic rollback to {good} failed too: {e}"),
                ),
            }
        }
        _ => (None, failure),
    };
    Ok(report(
        ResultStatus::Failed,
        Some(message),
        log,
        rolled_back_to,
        unchanged,
    ))
}

/// Run the kept bundle `version`'s rollback script (its deploy script when it has none)
/// to make it the running version again.
async fn restore(
    ctx: &Ctx,
    device: &DeviceFile,
    deployment_id: &str,
    version: &str,
    failed_version: Option<&str>,
    log: &mut LogTail,
) -> Result<(), String> {
    let dir = ctx.paths.bundle(version);
    let manifest = read_manifest(&dir, version)?;
    let spec = manifest.rollback.as_ref().unwrap_or(&manifest.deploy);
    let env = script_env(device, deployment_id, version, &dir, failed_version);
    let timeout = spec
        .timeout_s
        .unwrap_or(ctx.state.get().config.deploy_timeout);
    tracing::warn!(deployment.id = %deployment_id, to = %version, "rolling back automatically");
    let run = run_script(ctx, &dir, &spec.script, env, timeout).await;
    let label = format!("automatic rollback to {version}: script {}", spec.script);
    log.add(&label, &run);
    if run.success() {
        Ok(())
    } else {
        Err(run.describe(&format!("script {}", spec.script)))
    }
}

fn script_env(
    device: &DeviceFile,
    deployment_id: &str,
    version: &str,
    dir: &Path,
    previous: Option<&str>,
) -> Vec<(String, String)> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    vec![
        ("KERNEX_DEVICE_ID".into(), device.device_id.clone()),
        ("KERNEX_DEPLOYMENT_ID".into(), deployment_id.to_owned()),
        ("KERNEX_BUNDLE_VERSION".into(), version.to_owned()),
        (
            "KERNEX_BUNDLE_DIR".into(),
            dir.to_string_lossy().into_owned(),
        ),
        (
            "KERNEX_PREVIOUS_VERSION".into(),
            previous.unwrap_or_default().to_owned(),
        ),
    ]
}

async fn run_script(
    ctx: &Ctx,
    dir: &Path,
    script: &str,
    env: Vec<(String, String)>,
    timeout_s: u64,
) -> ScriptRun {
    let spec = ScriptSpec {
        pass_env: ctx.script_env.clone(),
        run_as: ctx.run_as.clone(),
        dir: dir.to_path_buf(),
        script: script.to_owned(),
        env,
        timeout: Duration::from_secs(timeout_s.max(1)),
    };
    script::run(&spec, |pgid| {
        let boot = boot_id();
        note_in_progress(ctx, "process group", |p| {
            p.pgid = Some(pgid);
            p.boot_id = boot;
        });
    })
    .await
}

/// A new phase: recorded in `in_progress` (recovery needs to know whether a script
/// had started) and reported to the server.
fn enter_phase(ctx: &Ctx, deployment_id: &str, phase: Phase) {
    note_in_progress(ctx, "phase", |p| p.phase = Some(phase));
    ctx.progress(deployment_id, phase, 0);
}

/// Record something about the deployment in progress. Best effort: failing to write it
/// only makes crash recovery less precise, so the deployment goes on.
fn note_in_progress(ctx: &Ctx, what: &str, f: impl FnOnce(&mut InProgress)) {
    if let Err(e) = ctx.state.update(|s| s.in_progress.as_mut().map(f)) {
        tracing::warn!(error = %e, "could not record the deployment's {what}");
    }
}

/// This boot's id: a process group id recorded before a reboot means nothing after it.
fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
}

fn read_manifest(dir: &Path, version: &str) -> Result<Manifest, String> {
    let bytes = fs::read(dir.join(bundle::MANIFEST_FILE))
        .map_err(|e| format!("cannot read the bundle's manifest.json: {e}"))?;
    let manifest = Manifest::from_slice(&bytes).map_err(|e| e.to_string())?;
    if manifest.version != version {
        return Err(format!(
            "bundle manifest says version {:?} but the command is for {version:?}",
            manifest.version
        ));
    }
    Ok(manifest)
}

/// Steps 1–2: a folder holding the bundle the command names. A kept folder with the same
/// checksum is used as is (a rollback works offline); otherwise download and extract.
async fn prepare(
    ctx: &Ctx,
    cmd: &BundleCommand,
    device: &DeviceFile,
) -> Result<PathBuf, DownloadError> {
    let dir = ctx.paths.bundle(&cmd.bundle_version);
    let kept = ctx.state.get().kept(&cmd.bundle_version).cloned();
    if let Some(k) = kept
        && k.checksum_sha256.eq_ignore_ascii_case(&cmd.checksum_sha256)
        && dir.join(bundle::MANIFEST_FILE).is_file()
    {
        tracing::info!(version = %cmd.bundle_version, "using the kept bundle; nothing to download");
        return Ok(dir);
    }

    enter_phase(ctx, &cmd.deployment_id, Phase::Downloading);
    let size = cmd.size_bytes.max(1);
    let mut last_step = 0;
    let download = Download {
        client: &ctx.client,
        token: &device.device_token,
        command: cmd,
        dir: &ctx.paths.downloads(),
        stall_timeout: ctx.stall_timeout,
        pace: ctx.pace,
    };
    let archive = download
        .run(|have| {
            // A progress report per 10 %, not per chunk.
            let step = (have.saturating_mul(10) / size).min(10);
            if step > last_step {
                last_step = step;
                ctx.progress(&cmd.deployment_id, Phase::Downloading, (step * 10) as u8);
            }
        })
        .await?;

    enter_phase(ctx, &cmd.deployment_id, Phase::Verifying);
    let downloads = ctx.paths.downloads();
    let version = cmd.bundle_version.clone();
    let target = dir.clone();
    let extracted = tokio::task::spawn_blocking(move || {
        let result = extract(&archive, &downloads, &target, &version);
        // Verified or refused, the archive is not needed any more.
        let _ = fs::remove_file(&archive);
        result
    })
    .await
    .map_err(|e| DownloadError::Retry(format!("extraction task failed: {e}")))?;
    extracted.map_err(DownloadError::Fail)?;

    let kept = KeptBundle {
        version: cmd.bundle_version.clone(),
        bundle_id: cmd.bundle_id.clone(),
        checksum_sha256: cmd.checksum_sha256.to_ascii_lowercase(),
        installed_at: Utc::now(),
    };
    ctx.state.update(|s| {
        s.bundles.retain(|b| b.version != kept.version);
        s.bundles.push(kept);
    })?;
    Ok(dir)
}

/// Safe extraction into a scratch folder, then a rename into `bundles/<version>/`.
fn extract(archive: &Path, scratch: &Path, target: &Path, version: &str) -> Result<(), String> {
    let tmp = scratch.join(format!("extract-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let file = fs::File::open(archive).map_err(|e| format!("cannot open the download: {e}"))?;
        let limits = Limits {
            // Devices are small: a bundle may unpack to at most 4 GiB here.
            max_unpacked_bytes: 4 * 1024 * 1024 * 1024,
            ..Limits::default()
        };
        let inspection =
            bundle::unpack(file, &tmp, &limits).map_err(|e| format!("bundle refused: {e}"))?;
        if inspection.manifest.version != version {
            return Err(format!(
                "bundle manifest says version {:?} but the command is for {version:?}",
                inspection.manifest.version
            ));
        }
        if target.exists() {
            // Same version, different contents (re-uploaded): replace it whole.
            let old = scratch.join(format!("old-{}", uuid::Uuid::new_v4().simple()));
            fs::rename(target, &old).map_err(|e| format!("cannot move the old folder: {e}"))?;
            let _ = fs::remove_dir_all(&old);
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        fs::rename(&tmp, target).map_err(|e| format!("cannot move the bundle into place: {e}"))?;
        if let Some(parent) = target.parent() {
            crate::fsutil::sync_dir(parent).map_err(|e| e.to_string())?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// Keep the newest [`Ctx::keep_bundles`] bundles, and always the current and previous.
pub fn prune_bundles(ctx: &Ctx) {
    let st = ctx.state.get();
    let mut by_age = st.bundles.clone();
    by_age.sort_by_key(|b| std::cmp::Reverse(b.installed_at));
    let protected = |v: &str| {
        st.current_bundle_version.as_deref() == Some(v)
            || st.previous_bundle_version.as_deref() == Some(v)
            || st
                .in_progress
                .as_ref()
                .is_some_and(|p| p.bundle_version == v)
    };
    let doomed: Vec<String> = by_age
        .iter()
        .skip(ctx.keep_bundles)
        .filter(|b| !protected(&b.version))
        .map(|b| b.version.clone())
        .collect();
    for version in doomed {
        // Forget it first, then move it into scratch (one rename), then delete it in the
        // background: a crash at any point never leaves a half-deleted folder that
        // `state.json` still lists as a kept bundle; scratch is cleared at start-up.
        if let Err(e) = ctx
            .state
            .update(|s| s.bundles.retain(|b| b.version != version))
        {
            tracing::warn!(error = %e, "could not record a pruned bundle");
            continue;
        }
        let dir = ctx.paths.bundle(&version);
        let trash = ctx
            .paths
            .downloads()
            .join(format!("old-{}", uuid::Uuid::new_v4().simple()));
        match fs::rename(&dir, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!(version, error = %e, "could not remove an old bundle");
                continue;
            }
        }
        let remove = move || {
            let _ = fs::remove_dir_all(&trash);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(remove)),
            Err(_) => remove(),
        }
        tracing::info!(version, "pruned an old bundle");
    }
}

/// At start-up: finish what a killed run left behind (SPEC §3 step 9).
///
/// - The result is in the queue already: record the outcome it carries.
/// - It is not: the deployment was interrupted. Stop what its script left running, put
///   the last good version back when a script had started, and report `failed`.
pub async fn recover(ctx: &Ctx) -> anyhow::Result<()> {
    clean_scratch(ctx);
    let st = ctx.state.get();
    let Some(ip) = st.in_progress.clone() else {
        return Ok(());
    };
    if let Some(q) = ctx.queue.find(&ip.deployment_id)? {
        tracing::info!(deployment.id = %ip.deployment_id, "result was queued before the restart; recording it");
        ctx.state.update(|s| apply(s, &q))?;
        return Ok(());
    }
    if let (Some(pgid), Some(boot)) = (ip.pgid, ip.boot_id.as_deref())
        && boot_id().as_deref() == Some(boot)
        && script::group_runs_deployment(pgid, &ip.deployment_id)
    {
        tracing::warn!(pgid, "stopping what the interrupted script left running");
        script::kill_group(pgid, rustix::process::Signal::KILL);
    }
    let Some(device) = ctx.device().or_else(|| {
        crate::identity::DeviceFile::load(&ctx.paths.device())
            .ok()
            .flatten()
    }) else {
        // Never registered, so never had a command: nothing to report to anyone.
        ctx.state.update(|s| s.in_progress = None)?;
        return Ok(());
    };
    let mut log = LogTail::default();
    let mut message = format!(
        "interrupted: the agent stopped while this {} was running (started {}); the device was left on {}",
        ip.kind.as_str(),
        ip.started_at.to_rfc3339(),
        st.current_bundle_version.as_deref().unwrap_or("no bundle")
    );
    let scripts_ran = matches!(ip.phase, Some(Phase::Installing | Phase::HealthCheck));
    let mut rolled_back_to = None;
    if ip.restore_attempted {
        message.push_str("; restoring it was attempted before and did not complete");
    } else if scripts_ran
        && let Some(good) = st.current_bundle_version.clone()
        && st.kept(&good).is_some()
        && ctx.paths.bundle(&good).is_dir()
    {
        // Record the attempt first: a restore that crashes or hangs is not repeated on
        // every restart.
        ctx.state.update(|s| {
            if let Some(p) = s.in_progress.as_mut() {
                p.restore_attempted = true;
            }
        })?;
        match restore(
            ctx,
            &device,
            &ip.deployment_id,
            &good,
            Some(&ip.bundle_version),
            &mut log,
        )
        .await
        {
            Ok(()) => rolled_back_to = Some(good),
            Err(e) => message.push_str(&format!("; restoring it failed: {e}")),
        }
    }
    tracing::warn!(deployment.id = %ip.deployment_id, "{message}");
    let report = QueuedReport {
        deployment_id: ip.deployment_id.clone(),
        kind: ip.kind,
        bundle_version: ip.bundle_version.clone(),
        started_at: ip.started_at,
        queued_at: Utc::now(),
        report: ResultReport {
            device_id: device.device_id.clone(),
            status: ResultStatus::Failed,
            report_id: uuid::Uuid::new_v4().to_string(),
            error_message: Some(message),
            duration_seconds: Some(
                (Utc::now() - ip.started_at)
                    .to_std()
                    .unwrap_or_default()
                    .as_secs_f64(),
            ),
            log_tail: log.finish(),
            rolled_back_to,
        },
        outcome: Outcome {
            current_bundle_version: st.current_bundle_version.clone(),
            previous_bundle_version: st.previous_bundle_version.clone(),
        },
    };
    finish(ctx, report)?;
    Ok(())
}

/// Partial downloads untouched this long are abandoned (a deployment that is retried
/// resumes within its polling interval).
const STALE_PARTIAL: Duration = Duration::from_secs(24 * 3600);

/// Scratch folders a killed extraction or prune left in `downloads/`, and partial
/// downloads nobody resumed for a day.
fn clean_scratch(ctx: &Ctx) {
    let Ok(rd) = fs::read_dir(ctx.paths.downloads()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if (name.starts_with("extract-") || name.starts_with("old-"))
            && e.file_type().is_ok_and(|t| t.is_dir())
        {
            let _ = fs::remove_dir_all(e.path());
        } else if name.ends_with(".part")
            && e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE_PARTIAL))
        {
            tracing::info!(file = %name, "removing an abandoned partial download");
            let _ = fs::remove_file(e.path());
        }
    }
}
