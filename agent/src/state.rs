//! `state.json`: what the agent knows about itself between runs.
//!
//! One [`StateStore`] owns the file inside the daemon. Every change goes through
//! [`StateStore::update`], which persists the new state (durably) before it becomes
//! visible, so what the process acts on is always what a restart would read back.
//!
//! The one exception is the time of the last good heartbeat: it changes on every beat
//! and nothing depends on it after a crash, so [`StateStore::heartbeat`] keeps it in
//! memory and writes it out only with the next real change, or when the copy on disk
//! is [`HEARTBEAT_SAVE_EVERY`] old, or at shutdown. On flash that is the difference
//! between a durable rewrite per beat (720 an hour at a 5 s interval) and a dozen.

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kernex_common::api::{Admission, ConfigureCommand, DeploymentKind, Phase, ResultStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fsutil;

/// How many executed deployment ids are remembered (the server stops re-sending a
/// command once its result arrived, so only recent ones can come back).
const EXECUTED_KEPT: usize = 256;
/// How many local history records `kernex-agent history` keeps.
const HISTORY_KEPT: usize = 100;
/// The longest the `last_heartbeat_at` in `state.json` lags behind the daemon's own
/// (while nothing else changes). `status` allows for it before calling beats stale.
pub const HEARTBEAT_SAVE_EVERY: Duration = Duration::from_secs(300);

/// The applied device configuration (SPEC §1.3). `version` 0 means "never configured":
/// the built-in defaults, which equal the server's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedConfig {
    pub version: u64,
    pub polling_interval: u64,
    pub heartbeat_timeout: u64,
    pub deploy_timeout: u64,
    pub log_level: String,
    #[serde(default)]
    pub metadata: Value,
}

impl Default for AppliedConfig {
    fn default() -> Self {
        AppliedConfig {
            version: 0,
            polling_interval: 60,
            heartbeat_timeout: 30,
            deploy_timeout: 300,
            log_level: "info".into(),
            metadata: Value::Object(Default::default()),
        }
    }
}

impl AppliedConfig {
    /// Check a configure command against the ranges of SPEC §1.3. The server enforces
    /// them too; the agent re-checks because a bad interval would wedge the device.
    pub fn from_command(c: &ConfigureCommand) -> Result<Self, String> {
        let check = |name: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} {v} is outside {lo}..={hi}"))
            }
        };
        check("polling_interval", c.polling_interval, 5, 86_400)?;
        check("heartbeat_timeout", c.heartbeat_timeout, 1, 300)?;
        check("deploy_timeout", c.deploy_timeout, 1, 86_400)?;
        if !kernex_common::api::DeviceConfig::LOG_LEVELS.contains(&c.log_level.as_str()) {
            return Err(format!("log_level {:?} is not a known level", c.log_level));
        }
        Ok(AppliedConfig {
            version: c.config_version,
            polling_interval: c.polling_interval,
            heartbeat_timeout: c.heartbeat_timeout,
            deploy_timeout: c.deploy_timeout,
            log_level: c.log_level.clone(),
            metadata: c.metadata.clone(),
        })
    }
}

/// The deployment the agent is working on right now. Written before any work starts, so
/// a restart that finds it knows the previous run died mid-deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InProgress {
    pub deployment_id: String,
    pub kind: DeploymentKind,
    pub bundle_version: String,
    pub started_at: DateTime<Utc>,
    /// The furthest phase reached (scripts run from `installing` on).
    #[serde(default)]
    pub phase: Option<Phase>,
    /// Process group of the script running now, so a restart can stop its leftovers.
    #[serde(default)]
    pub pgid: Option<i32>,
    /// Kernel boot id when the script started: a pgid means nothing after a reboot.
    #[serde(default)]
    pub boot_id: Option<String>,
    /// Crash recovery already tried to put the last good version back.
    #[serde(default)]
    pub restore_attempted: bool,
}

/// A bundle kept under `bundles/<version>/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptBundle {
    pub version: String,
    pub bundle_id: String,
    pub checksum_sha256: String,
    pub installed_at: DateTime<Utc>,
}

/// One finished deployment, as `kernex-agent history` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalRecord {
    pub deployment_id: String,
    pub kind: DeploymentKind,
    pub bundle_version: String,
    pub status: ResultStatus,
    pub error_message: Option<String>,
    pub rolled_back_to: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_seconds: f64,
    pub report_id: String,
}

/// The last error the daemon hit, with when and where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastError {
    pub at: DateTime<Utc>,
    pub message: String,
    /// What failed; it decides what clears the error again.
    #[serde(default)]
    pub source: ErrorSource,
}

/// Where an error came from. A heartbeat error clears with the next good heartbeat, a
/// deployment error with the next finished deployment, a configuration error with the
/// next configuration applied: `last_error` never outlives its cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorSource {
    /// Registering or heartbeating (server unreachable, refused token).
    Heartbeat,
    /// A deployment that stopped or failed.
    Deployment,
    /// A configuration the agent refused.
    Config,
    /// Written by an agent that did not record the source: cleared like a heartbeat's.
    #[default]
    Other,
}

/// The newest failed deployment, with the output of its scripts, kept for the
/// technician (`status`) even after the server has the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedDeployment {
    #[serde(flatten)]
    pub record: LocalRecord,
    /// The last 8 KiB of the scripts' output.
    pub log_tail: Option<String>,
}

/// Everything in `state.json`. Unknown or missing fields fall back to defaults so an
/// older or newer agent can read the file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentState {
    pub current_bundle_version: Option<String>,
    pub previous_bundle_version: Option<String>,
    pub config: AppliedConfig,
    pub admission: Option<Admission>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub last_error: Option<LastError>,
    /// The newest deployment that failed, with its log tail.
    pub last_failure: Option<FailedDeployment>,
    pub in_progress: Option<InProgress>,
    /// Kept bundles, oldest first.
    pub bundles: Vec<KeptBundle>,
    /// Deployment ids already executed, newest last.
    pub executed: VecDeque<String>,
    /// Finished deployments, newest first.
    pub history: VecDeque<LocalRecord>,
    /// Every version this device ran successfully, however long ago: what signed
    /// updates' anti-rollback compares against (SPEC §7).
    pub installed_versions: BTreeSet<String>,
}

impl AgentState {
    pub fn was_executed(&self, deployment_id: &str) -> bool {
        self.executed.iter().any(|d| d == deployment_id)
    }

    /// Record a finished deployment: remembered as executed, added to the history, and
    /// no longer in progress.
    pub fn finish(&mut self, record: LocalRecord) {
        if self
            .in_progress
            .as_ref()
            .is_some_and(|p| p.deployment_id == record.deployment_id)
        {
            self.in_progress = None;
        }
        if record.status == ResultStatus::Success {
            self.installed_versions
                .insert(record.bundle_version.clone());
        }
        if !self.was_executed(&record.deployment_id) {
            self.executed.push_back(record.deployment_id.clone());
            while self.executed.len() > EXECUTED_KEPT {
                self.executed.pop_front();
            }
        }
        if !self
            .history
            .iter()
            .any(|r| r.deployment_id == record.deployment_id)
        {
            self.history.push_front(record);
            self.history.truncate(HISTORY_KEPT);
        }
    }

    /// The highest version (semver order) this device has installed, if any.
    pub fn highest_installed(&self) -> Option<String> {
        let mut highest: Option<&str> = None;
        let all = self
            .installed_versions
            .iter()
            .chain(&self.current_bundle_version)
            .chain(&self.previous_bundle_version);
        for v in all {
            highest = Some(kernex_common::update_signing::higher_version(highest, v));
        }
        highest.map(str::to_owned)
    }

    /// Did this device ever run `version` successfully?
    pub fn ran_successfully(&self, version: &str) -> bool {
        self.installed_versions.contains(version)
            || self.current_bundle_version.as_deref() == Some(version)
            || self.previous_bundle_version.as_deref() == Some(version)
    }

    pub fn kept(&self, version: &str) -> Option<&KeptBundle> {
        self.bundles.iter().find(|b| b.version == version)
    }

    /// Record an error. The same error again keeps its first time ("failing since"),
    /// so a long outage does not rewrite `state.json` on every retry.
    pub fn set_error(&mut self, source: ErrorSource, message: impl Into<String>) {
        let message = message.into();
        if self
            .last_error
            .as_ref()
            .is_some_and(|e| e.source == source && e.message == message)
        {
            return;
        }
        self.last_error = Some(LastError {
            at: Utc::now(),
            message,
            source,
        });
    }

    /// Forget the last error if it came from one of `sources` (its cause is gone).
    pub fn clear_error(&mut self, sources: &[ErrorSource]) {
        if self
            .last_error
            .as_ref()
            .is_some_and(|e| sources.contains(&e.source))
        {
            self.last_error = None;
        }
    }
}

/// The daemon's handle on `state.json`.
#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The state as the process sees it: what is on disk plus, possibly, a newer
    /// `last_heartbeat_at`.
    state: AgentState,
    /// `last_heartbeat_at` as written to disk.
    saved_heartbeat: Option<DateTime<Utc>>,
}

impl StateStore {
    /// Load `state.json` (defaults when it does not exist yet). A file that cannot be
    /// parsed is moved aside — never silently overwritten — and the agent starts afresh.
    pub fn open(path: &Path) -> io::Result<Self> {
        let state = match fsutil::read_json::<AgentState>(path) {
            Ok(s) => s.unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let aside = path.with_extension(format!("json.corrupt-{}", Utc::now().timestamp()));
                std::fs::rename(path, &aside)?;
                tracing::error!(error = %e, moved_to = %aside.display(), "state.json was unreadable; starting from defaults");
                AgentState::default()
            }
            Err(e) => return Err(e),
        };
        Ok(StateStore {
            path: path.to_path_buf(),
            inner: Mutex::new(Inner {
                saved_heartbeat: state.last_heartbeat_at,
                state,
            }),
        })
    }

    /// Read `state.json` without taking ownership (for `status` and `flush`).
    pub fn read(path: &Path) -> io::Result<AgentState> {
        Ok(fsutil::read_json(path)?.unwrap_or_default())
    }

    /// A copy of the current state.
    pub fn get(&self) -> AgentState {
        self.lock().state.clone()
    }

    /// Change the state and persist it. When the write fails the change is not applied.
    /// The newest heartbeat time rides along with any write.
    pub fn update<R>(&self, f: impl FnOnce(&mut AgentState) -> R) -> io::Result<R> {
        let mut guard = self.lock();
        let mut next = guard.state.clone();
        let out = f(&mut next);
        if next != guard.state {
            Self::write(&self.path, &mut guard, next)?;
        }
        Ok(out)
    }

    /// A heartbeat was answered at `at`; `f` applies what the reply changes. Written to
    /// disk when `f` changed something, or when the heartbeat time on disk is older than
    /// [`HEARTBEAT_SAVE_EVERY`]; otherwise the time stays in memory.
    pub fn heartbeat(&self, at: DateTime<Utc>, f: impl FnOnce(&mut AgentState)) -> io::Result<()> {
        let mut guard = self.lock();
        let mut next = guard.state.clone();
        f(&mut next);
        let changed = next != guard.state;
        next.last_heartbeat_at = Some(at);
        let due = guard
            .saved_heartbeat
            .is_none_or(|saved| (at - saved).to_std().unwrap_or_default() >= HEARTBEAT_SAVE_EVERY);
        if changed || due {
            Self::write(&self.path, &mut guard, next)?;
        } else {
            guard.state = next;
        }
        Ok(())
    }

    /// Write the heartbeat time kept in memory, if newer than the file's (at shutdown).
    pub fn save_heartbeat(&self) -> io::Result<()> {
        let mut guard = self.lock();
        if guard.state.last_heartbeat_at != guard.saved_heartbeat {
            let next = guard.state.clone();
            Self::write(&self.path, &mut guard, next)?;
        }
        Ok(())
    }

    fn write(path: &Path, guard: &mut Inner, next: AgentState) -> io::Result<()> {
        fsutil::write_json(path, &next, 0o600)?;
        guard.saved_heartbeat = next.last_heartbeat_at;
        guard.state = next;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a state that was never persisted
        // half-changed (update works on a copy), so the data inside is still good.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> LocalRecord {
        LocalRecord {
            deployment_id: id.into(),
            kind: DeploymentKind::Deploy,
            bundle_version: "1.0.0".into(),
            status: ResultStatus::Success,
            error_message: None,
            rolled_back_to: None,
            started_at: Utc::now(),
            finished_at: Utc::now(),
            duration_seconds: 1.0,
            report_id: "r".into(),
        }
    }

    #[test]
    fn updates_persist_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let store = StateStore::open(&path).unwrap();
        store
            .update(|s| s.current_bundle_version = Some("1.0.0".into()))
            .unwrap();
        let again = StateStore::open(&path).unwrap();
        assert_eq!(again.get().current_bundle_version.as_deref(), Some("1.0.0"));
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{truncated").unwrap();
        let store = StateStore::open(&path).unwrap();
        assert_eq!(store.get(), AgentState::default());
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
            .collect();
        assert_eq!(aside.len(), 1);
    }

    #[test]
    fn finish_is_idempotent_and_bounded() {
        let mut s = AgentState::default();
        s.finish(record("d1"));
        s.finish(record("d1"));
        assert_eq!(s.history.len(), 1);
        assert_eq!(s.executed.len(), 1);
        for i in 0..(EXECUTED_KEPT + 10) {
            s.finish(record(&format!("x{i}")));
        }
        assert_eq!(s.executed.len(), EXECUTED_KEPT);
        assert_eq!(s.history.len(), HISTORY_KEPT);
        assert_eq!(
            s.history[0].deployment_id,
            format!("x{}", EXECUTED_KEPT + 9)
        );
    }

    #[test]
    fn heartbeats_are_written_only_with_a_change_or_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let store = StateStore::open(&path).unwrap();
        let on_disk = || StateStore::read(&path).unwrap().last_heartbeat_at;
        let t0 = Utc::now();
        store.heartbeat(t0, |_| {}).unwrap();
        assert_eq!(on_disk(), Some(t0), "the first beat is written");
        let t1 = t0 + chrono::Duration::seconds(5);
        store.heartbeat(t1, |_| {}).unwrap();
        assert_eq!(
            on_disk(),
            Some(t0),
            "a beat that changes nothing stays in memory"
        );
        assert_eq!(store.get().last_heartbeat_at, Some(t1));
        let t2 = t1 + chrono::Duration::seconds(5);
        store
            .heartbeat(t2, |s| s.admission = Some(Admission::Accepted))
            .unwrap();
        assert_eq!(
            on_disk(),
            Some(t2),
            "a beat that changes something is written"
        );
        store
            .update(|s| s.current_bundle_version = Some("1.0.0".into()))
            .unwrap();
        let t3 = t2 + HEARTBEAT_SAVE_EVERY;
        store.heartbeat(t3, |_| {}).unwrap();
        assert_eq!(on_disk(), Some(t3), "written once the copy on disk is old");
        let t4 = t3 + chrono::Duration::seconds(5);
        store.heartbeat(t4, |_| {}).unwrap();
        assert_eq!(on_disk(), Some(t3));
        store.save_heartbeat().unwrap();
        assert_eq!(on_disk(), Some(t4), "shutdown writes the newest time");
    }

    #[test]
    fn errors_clear_only_with_their_cause() {
        let mut s = AgentState::default();
        s.set_error(ErrorSource::Heartbeat, "server unreachable");
        s.clear_error(&[ErrorSource::Deployment]);
        let since = s.last_error.as_ref().unwrap().at;
        s.set_error(ErrorSource::Heartbeat, "server unreachable");
        assert_eq!(
            s.last_error.as_ref().unwrap().at,
            since,
            "a repeat keeps its time"
        );
        s.clear_error(&[ErrorSource::Heartbeat, ErrorSource::Other]);
        assert!(s.last_error.is_none());
        // An error written by an older agent (no source) clears like a heartbeat's.
        let old: LastError =
            serde_json::from_str(r#"{"at":"2026-01-01T00:00:00Z","message":"x"}"#).unwrap();
        assert_eq!(old.source, ErrorSource::Other);
    }

    #[test]
    fn configure_ranges_are_checked() {
        let mut c = ConfigureCommand {
            config_version: 2,
            polling_interval: 5,
            heartbeat_timeout: 30,
            deploy_timeout: 300,
            log_level: "debug".into(),
            metadata: Value::Null,
        };
        assert!(AppliedConfig::from_command(&c).is_ok());
        c.polling_interval = 0;
        assert!(AppliedConfig::from_command(&c).is_err());
        c.polling_interval = 60;
        c.log_level = "loud".into();
        assert!(AppliedConfig::from_command(&c).is_err());
    }
}
