//! The servers under test, as child processes that are killed when their handle drops,
//! so an error anywhere in the driver (or a panic) leaves nothing running.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long a server may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Log lines kept for error messages.
const LOG_TAIL: usize = 40;

/// A child process, SIGKILLed on drop unless it already exited.
pub struct ChildGuard {
    child: Child,
    name: &'static str,
}

impl ChildGuard {
    fn spawn(name: &'static str, cmd: &mut Command) -> Result<Self> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(ChildGuard { child, name })
    }

    /// SIGTERM, then wait up to `limit` for it to exit (SIGKILL after that).
    pub fn terminate(&mut self, limit: Duration) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .context("child pid out of range")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .with_context(|| format!("signalling {}", self.name))?;
        let deadline = Instant::now() + limit;
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("{} still running {limit:?} after SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl ChildGuard {
    /// CPU time (user + system, every thread) it has used so far, from
    /// `/proc/<pid>/stat`; `None` where there is no such file.
    pub fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after the `(comm)`, which may itself hold spaces: state is the first,
        // utime (field 14 of proc(5)) the 12th, stime the 13th.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        // In USER_HZ, which Linux's user ABI fixes at 100.
        Some(Duration::from_millis((utime + stime) * 10))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Lines read from a child's pipe on a thread of their own (so the pipe never fills and
/// blocks the child), the first one `pick` accepts sent back, the last few kept.
fn drain(
    pipe: impl Read + Send + 'static,
    pick: impl Fn(&str) -> Option<String> + Send + 'static,
) -> (mpsc::Receiver<String>, Arc<Mutex<VecDeque<String>>>) {
    let (tx, rx) = mpsc::channel();
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL)));
    let kept = Arc::clone(&tail);
    std::thread::spawn(move || {
        let mut found = false;
        for line in BufReader::new(pipe)
            .lines()
            .map_while(std::result::Result::ok)
        {
            if !found && let Some(v) = pick(&line) {
                found = true;
                let _ = tx.send(v);
            }
            if let Ok(mut t) = kept.lock() {
                if t.len() == LOG_TAIL {
                    t.pop_front();
                }
                t.push_back(line);
            }
        }
    });
    (rx, tail)
}

fn joined(tail: &Mutex<VecDeque<String>>) -> String {
    tail.lock()
        .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

/// A running `kernex-server`.
pub struct Server {
    pub process: ChildGuard,
    /// `127.0.0.1:PORT`
    pub addr: String,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Server {
    /// Start on a fresh `data_dir` and port 0; the bound address comes from its
    /// `listening (http) addr=…` log line (as the tests crate's `ServerProcess` reads it).
    pub fn start(bin: &Path, data_dir: &Path, admin: &str, enroll: &str) -> Result<Self> {
        Self::start_with(bin, data_dir, admin, enroll, &[])
    }

    /// [`Server::start`] with extra flags (e.g. `--database-url`).
    pub fn start_with(
        bin: &Path,
        data_dir: &Path,
        admin: &str,
        enroll: &str,
        extra: &[String],
    ) -> Result<Self> {
        let mut process = ChildGuard::spawn(
            "kernex-server",
            Command::new(bin)
                .args(["--listen", "127.0.0.1:0", "--log-level", "info"])
                .args(extra)
                .arg("--data-dir")
                .arg(data_dir)
                .env("KERNEX_ADMIN_TOKEN", admin)
                .env("KERNEX_ENROLLMENT_TOKEN", enroll)
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )?;
        let stderr = process.child.stderr.take().context("no stderr pipe")?;
        let (rx, log) = drain(stderr, |line| {
            let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
            line.contains("listening").then(|| addr.to_owned())
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => Ok(Server { process, addr, log }),
            Err(_) => bail!(
                "kernex-server did not say where it listens; it logged:\n{}",
                joined(&log)
            ),
        }
    }

    /// Its last log lines (for error messages).
    pub fn log_tail(&self) -> String {
        joined(&self.log)
    }
}

/// A running `kernex-noop`.
pub struct Noop {
    pub process: ChildGuard,
    pub addr: String,
}

impl Noop {
    /// Start on port 0; it prints its bound address as its first line on stdout.
    pub fn start(bin: &Path) -> Result<Self> {
        let mut process = ChildGuard::spawn(
            "kernex-noop",
            Command::new(bin)
                .args(["--listen", "127.0.0.1:0"])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )?;
        let stdout = process.child.stdout.take().context("no stdout pipe")?;
        let (rx, _) = drain(stdout, |line| Some(line.trim().to_owned()));
        let addr = rx
            .recv_timeout(START_TIMEOUT)
            .context("kernex-noop did not print its address")?;
        Ok(Noop { process, addr })
    }
}
