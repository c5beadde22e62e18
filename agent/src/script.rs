//! Running a bundle's script: executed directly (no shell command line is ever built
//! from input), in its own process group so a timeout kills everything it started,
//! keeping the last 8 KiB of its combined output.

use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// Bytes of output kept for `log_tail`.
pub const TAIL_BYTES: usize = 8 * 1024;
/// After SIGTERM on timeout, how long the group gets before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);
/// After the script exits, how long to wait for its output pipes to close (a service it
/// started in the background may hold them open forever).
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// How a script ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    TimedOut(Duration),
    /// It could not be started at all.
    NotStarted(String),
}

/// The outcome of one script run.
#[derive(Debug, Clone)]
pub struct ScriptRun {
    pub exit: Exit,
    pub tail: String,
    pub duration: Duration,
}

impl ScriptRun {
    pub fn success(&self) -> bool {
        self.exit == Exit::Code(0)
    }

    /// A sentence for `error_message`.
    pub fn describe(&self, what: &str) -> String {
        match &self.exit {
            Exit::Code(0) => format!("{what} succeeded"),
            Exit::Code(c) => format!("{what} exited with code {c}"),
            Exit::Signal(s) => format!("{what} was killed by signal {s}"),
            Exit::TimedOut(t) => format!("{what} timed out after {} s and was killed", t.as_secs()),
            Exit::NotStarted(e) => format!("{what} could not be started: {e}"),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ScriptSpec {
    /// The bundle folder: the working directory.
    pub dir: PathBuf,
    /// The script's path relative to `dir`, as the manifest names it.
    pub script: String,
    /// The deployment's `KERNEX_*` variables.
    pub env: Vec<(String, String)>,
    /// Extra variable names (or `PREFIX*`) passed from the agent's environment
    /// (`--script-env`); see [`crate::script_env`].
    pub pass_env: Vec<String>,
    /// Run as this user (`--run-as`), the bundle folder handed to it first.
    pub run_as: Option<crate::run_as::RunAs>,
    pub timeout: Duration,
}

/// Run a script to completion (or timeout). `on_start` receives the process group id as
/// soon as the process exists, so it can be recorded for crash recovery.
pub async fn run(spec: &ScriptSpec, on_start: impl FnOnce(i32)) -> ScriptRun {
    let started = Instant::now();
    let not_started = |e: String| ScriptRun {
        exit: Exit::NotStarted(e),
        tail: String::new(),
        duration: started.elapsed(),
    };
    if let Some(user) = &spec.run_as
        && let Err(e) = user.hand_over(&spec.dir)
    {
        return not_started(format!(
            "cannot hand the bundle folder to user {}: {e}",
            user.name
        ));
    }
    let path = match resolve(&spec.dir, &spec.script) {
        Ok(p) => p,
        Err(e) => return not_started(e),
    };
    let mut child = match spawn(&path, spec).await {
        Ok(c) => c,
        Err(e) => return not_started(format!("{}: {e}", spec.script)),
    };
    let Some(pgid) = child.id().and_then(|id| i32::try_from(id).ok()) else {
        return not_started("the process exited before it could be tracked".into());
    };
    on_start(pgid);

    let tail = Arc::new(Mutex::new(Tail::default()));
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(collect(out, tail.clone())));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(collect(err, tail.clone())));
    }

    let exit = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => exit_of(s),
            Err(e) => Exit::NotStarted(format!("waiting for the script failed: {e}")),
        },
        () = tokio::time::sleep(spec.timeout) => {
            kill_group(pgid, Signal::TERM);
            if tokio::time::timeout(TERM_GRACE, child.wait()).await.is_err() {
                kill_group(pgid, Signal::KILL);
                let _ = child.wait().await;
            }
            // Whatever it left behind in its group goes too.
            kill_group(pgid, Signal::KILL);
            Exit::TimedOut(spec.timeout)
        }
    };

    let deadline = tokio::time::Instant::now() + DRAIN_GRACE;
    for r in readers {
        let abort = r.abort_handle();
        if tokio::time::timeout_at(deadline, r).await.is_err() {
            abort.abort();
        }
    }
    let tail = tail.lock().map(|t| t.text()).unwrap_or_default();
    ScriptRun {
        exit,
        tail,
        duration: started.elapsed(),
    }
}

/// Send `signal` to a whole process group; a group that is already gone is fine.
pub fn kill_group(pgid: i32, signal: Signal) {
    if let Some(pid) = Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// Members of process group `pgid`, from `/proc`: each one's `/proc/<pid>` folder and
/// its state letter (`Z` for a zombie).
fn group_members(pgid: i32) -> Vec<(std::path::PathBuf, String)> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let group = pgid.to_string();
    procs
        .flatten()
        .filter_map(|p| {
            let stat = std::fs::read_to_string(p.path().join("stat")).ok()?;
            // pid (comm) state ppid pgrp …: comm may hold spaces, so split after ')'.
            let rest = stat.rsplit_once(')')?.1;
            let mut fields = rest.split_whitespace();
            let state = fields.next()?.to_owned();
            (fields.nth(1)? == group).then(|| (p.path(), state))
        })
        .collect()
}

/// Is some member of process group `pgid` a script of deployment `deployment_id`? (Its
/// environment says so.) Guards against killing an unrelated group that reused the id.
pub fn group_runs_deployment(pgid: i32, deployment_id: &str) -> bool {
    let marker = format!("KERNEX_DEPLOYMENT_ID={deployment_id}");
    group_members(pgid).iter().any(|(dir, _)| {
        std::fs::read(dir.join("environ"))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == marker.as_bytes()))
    })
}

/// The script's real path, which must be a regular file inside the bundle folder (the
/// archive checks already guarantee it; this holds even if the folder was tampered
/// with on the device).
fn resolve(dir: &Path, script: &str) -> Result<PathBuf, String> {
    let rel = kernex_common::manifest::normalize_entry_path(script)
        .ok_or_else(|| format!("script path {script:?} is not inside the bundle"))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("bundle folder {}: {e}", dir.display()))?;
    let path = dir
        .join(&rel)
        .canonicalize()
        .map_err(|e| format!("script {script:?}: {e}"))?;
    if !path.starts_with(&dir) {
        return Err(format!("script {script:?} resolves outside the bundle"));
    }
    if !path.is_file() {
        return Err(format!("script {script:?} is not a regular file"));
    }
    Ok(path)
}

async fn spawn(path: &Path, spec: &ScriptSpec) -> std::io::Result<tokio::process::Child> {
    let executable = std::fs::metadata(path)?.permissions().mode() & 0o111 != 0;
    let mut attempts = 0;
    loop {
        // A script without the executable bit is handed to sh as a file argument —
        // still no command line built from input.
        let mut cmd = if executable {
            Command::new(path)
        } else {
            let mut c = Command::new("/bin/sh");
            c.arg(path);
            c
        };
        cmd.current_dir(&spec.dir)
            // An allow-listed environment, never the agent's whole one.
            .env_clear()
            .envs(crate::script_env::environment(
                std::env::vars_os(),
                &spec.pass_env,
                &spec.env,
                &spec.run_as.as_ref().map(|u| u.env()).unwrap_or_default(),
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        if let Some(user) = &spec.run_as {
            cmd.uid(user.uid).gid(user.gid);
        }
        match cmd.spawn() {
            // ETXTBSY: another thread of ours forked while the freshly extracted file
            // was still open for writing somewhere; it clears in moments.
            Err(e) if e.raw_os_error() == Some(26) && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

fn exit_of(status: std::process::ExitStatus) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => Exit::Code(c),
        (None, Some(s)) => Exit::Signal(s),
        (None, None) => Exit::Code(-1),
    }
}

/// A bounded buffer of the newest output bytes.
#[derive(Default)]
struct Tail {
    bytes: VecDeque<u8>,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend(chunk);
        let excess = self.bytes.len().saturating_sub(TAIL_BYTES);
        self.bytes.drain(..excess);
    }

    fn text(&self) -> String {
        let (a, b) = self.bytes.as_slices();
        let raw = [a, b].concat();
        let text = String::from_utf8_lossy(&raw);
        // Lossy decoding can grow the text (U+FFFD is 3 bytes); cut again.
        kernex_common::validate::tail_utf8(&text, TAIL_BYTES).to_owned()
    }
}

async fn collect(mut reader: impl AsyncRead + Unpin, tail: Arc<Mutex<Tail>>) {
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Ok(mut t) = tail.lock() {
                    t.push(&buf[..n]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Processes of group `pgid` that are not zombies.
    fn running_members(pgid: i32) -> usize {
        group_members(pgid)
            .iter()
            .filter(|(_, state)| state != "Z")
            .count()
    }

    fn spec(dir: &Path, body: &str, timeout: Duration) -> ScriptSpec {
        let path = dir.join("run.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        ScriptSpec {
            dir: dir.to_path_buf(),
            script: "run.sh".into(),
            env: vec![("KERNEX_TEST_VALUE".into(), "from-env".into())],
            pass_env: Vec::new(),
            run_as: None,
            timeout,
        }
    }

    #[tokio::test]
    async fn runs_in_the_bundle_dir_with_env_and_keeps_output() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(
            dir.path(),
            "pwd; echo \"$KERNEX_TEST_VALUE\"; echo oops >&2; exit 3",
            Duration::from_secs(30),
        );
        let run = run(&s, |_| {}).await;
        assert_eq!(run.exit, Exit::Code(3));
        let canon = dir.path().canonicalize().unwrap();
        assert!(run.tail.contains(canon.to_str().unwrap()), "{}", run.tail);
        assert!(run.tail.contains("from-env"));
        assert!(run.tail.contains("oops"));
        assert_eq!(run.describe("deploy"), "deploy exited with code 3");
    }

    #[test]
    fn a_running_group_is_found_and_recognised_by_its_deployment() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env("KERNEX_DEPLOYMENT_ID", "dep-1")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = i32::try_from(child.id()).unwrap();
        assert_eq!(running_members(pgid), 1);
        assert!(group_runs_deployment(pgid, "dep-1"));
        assert!(!group_runs_deployment(pgid, "dep-2"));
        kill_group(pgid, Signal::KILL);
        child.wait().unwrap();
        assert_eq!(running_members(pgid), 0);
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        // The child in the background would outlive a kill of the script alone.
        let s = spec(
            dir.path(),
            "sleep 300 & echo started; wait",
            Duration::from_millis(500),
        );
        let mut group = 0;
        let run = run(&s, |g| group = g).await;
        assert_eq!(run.exit, Exit::TimedOut(Duration::from_millis(500)));
        assert!(run.tail.contains("started"));
        // Killed members may linger as zombies until init reaps them; none may still run.
        let deadline = Instant::now() + Duration::from_secs(30);
        while running_members(group) > 0 {
            assert!(Instant::now() < deadline, "the background sleep survived");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn only_the_last_8_kib_of_output_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(
            dir.path(),
            "i=0; while [ $i -lt 2000 ]; do echo \"line $i\"; i=$((i+1)); done",
            Duration::from_secs(30),
        );
        let run = run(&s, |_| {}).await;
        assert!(run.success());
        assert!(run.tail.len() <= TAIL_BYTES);
        assert!(run.tail.ends_with("line 1999\n"));
        assert!(!run.tail.contains("line 1\n"));
    }

    #[tokio::test]
    async fn a_script_outside_the_bundle_or_missing_is_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path(), "true", Duration::from_secs(5));
        s.script = "../run.sh".into();
        assert!(matches!(run(&s, |_| {}).await.exit, Exit::NotStarted(_)));
        s.script = "missing.sh".into();
        assert!(matches!(run(&s, |_| {}).await.exit, Exit::NotStarted(_)));
    }

    #[tokio::test]
    async fn a_script_without_the_executable_bit_still_runs() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path(), "echo plain", Duration::from_secs(30));
        std::fs::set_permissions(
            dir.path().join("run.sh"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let run = run(&s, |_| {}).await;
        assert!(run.success(), "{:?}", run.exit);
        assert!(run.tail.contains("plain"));
    }
}
