//! The real `kernex-console` TUI in a real pseudo-terminal (80×24) against the real
//! `kernex-server` and a real agent: it draws the live fleet, shows a lost server as
//! "reconnecting" with the fleet stale (not offline) and recovers by itself when the server comes back on the same address,
//! quits on `q` with exit 0 and leaves the alternate screen, and writes its log to the
//! log file, never to the screen; a deploy started from its keys that fails on the
//! device is drilled into with `l`, showing the script's own output.
//!
//! Waits poll the terminal output for a fact with a generous deadline; nothing sleeps
//! for a guessed time.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::num::NonZeroU16;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kernex_tests::agent::{Agent, fixture_bundle};
use kernex_tests::{ServerProcess, bin};
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
use rustix::termios::{Winsize, tcsetwinsize};

const ADMIN: &str = "tui-admin";
const ENROLL: &str = "tui-enroll";
const PATIENCE: Duration = Duration::from_secs(120);
const ROWS: NonZeroU16 = NonZeroU16::new(24).unwrap();
const COLS: NonZeroU16 = NonZeroU16::new(80).unwrap();

/// What the console wrote: the raw bytes and the screen they draw (a vt100 emulator,
/// since the renderer only rewrites the cells that changed).
struct Term {
    raw: Vec<u8>,
    parser: vt100::Parser,
}

/// The console running on a pty.
struct Tui {
    child: Child,
    master: std::fs::File,
    term: Arc<Mutex<Term>>,
}

impl Tui {
    fn start(server: &str, log: &std::path::Path) -> Tui {
        let master_fd: OwnedFd = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
        grantpt(&master_fd).unwrap();
        unlockpt(&master_fd).unwrap();
        let name = ptsname(&master_fd, Vec::new()).unwrap();
        tcsetwinsize(
            &master_fd,
            Winsize {
                ws_row: ROWS.get(),
                ws_col: COLS.get(),
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        )
        .unwrap();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().unwrap())
            .unwrap();
        let child = Command::new(bin("kernex-console").unwrap())
            .args(["--server", server, "--token", ADMIN, "--log-file"])
            .arg(log)
            .env_remove("KERNEX_SERVER")
            .env_remove("KERNEX_TOKEN")
            .env_remove("KERNEX_CONSOLE_LOG")
            .env("TERM", "xterm-256color")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave))
            .spawn()
            .unwrap();
        let master = std::fs::File::from(master_fd);
        let term = Arc::new(Mutex::new(Term {
            raw: Vec::new(),
            parser: vt100::Parser::new(ROWS, COLS, 0),
        }));
        let (mut reader, sink) = (master.try_clone().unwrap(), term.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            // Ends with EIO once the console exits and the pty's other side is closed.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut t = sink.lock().unwrap();
                t.raw.extend_from_slice(&buf[..n]);
                t.parser.process(&buf[..n]);
            }
        });
        Tui {
            child,
            master,
            term,
        }
    }

    /// Everything written so far, escape sequences included.
    fn output(&self) -> String {
        String::from_utf8_lossy(&self.term.lock().unwrap().raw).into_owned()
    }

    /// The screen as the operator sees it now.
    fn screen(&self) -> String {
        self.term.lock().unwrap().parser.screen().contents()
    }

    /// Wait until the screen shows `text`.
    fn wait_for(&self, text: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{text:?} never appeared on the console's screen; it shows:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn press(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).unwrap();
        self.master.flush().unwrap();
    }

    /// Wait for the console to exit; its exit code.
    fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "the console did not exit; it showed:\n{}",
                printable(&self.output())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Terminal output with escape sequences made visible, for failure messages.
fn printable(s: &str) -> String {
    s.replace('\x1b', "␛")
}

#[tokio::test]
async fn the_tui_follows_the_fleet_survives_a_server_restart_and_quits_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("server");
    let server = ServerProcess::start(&data, ADMIN, ENROLL).unwrap();
    let addr = server.addr.clone();
    let agent = Agent::new(root.path(), &server.url("")).enrollment(ENROLL);
    agent.once_ok().await;
    let device_id = agent.read_json("device.json")["device_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let log = root.path().join("console.log");
    let mut tui = Tui::start(&server.url(""), &log);
    // The live fleet, with our device (narrow tables show an id's end).
    tui.wait_for("● live");
    tui.wait_for(&device_id[device_id.len() - 11..]);
    tui.wait_for("Fleet 1 devices");

    // The server goes away: the header says so, and the console keeps running.
    server.kill().unwrap();
    tui.wait_for("◌ reconnecting");
    assert!(!tui.screen().contains("● live"));
    // What it shows is the last known state, said to be so: never "offline".
    tui.wait_for("stale since");
    tui.wait_for("1 online when last heard");
    assert!(!tui.screen().contains("offline"), "{}", tui.screen());
    // It comes back on the same address: the console reconnects by itself.
    let server = ServerProcess::start_on(&data, ADMIN, ENROLL, &addr).unwrap();
    tui.wait_for("● live");
    tui.wait_for("reconnected: re-reading the fleet");
    // Re-read: the server's word again, nothing stale.
    tui.wait_for("1 online sort:");

    tui.press("q");
    assert_eq!(tui.wait_exit(), 0, "{}", tui.screen());
    let out = tui.output();
    assert!(
        !tui.term.lock().unwrap().parser.screen().alternate_screen(),
        "the alternate screen was not left: {}",
        printable(&out[out.len().saturating_sub(300)..])
    );
    // Logs went to the file, not the screen.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("console started"), "{logged}");
    assert!(
        !out.contains("console started"),
        "a log line reached the screen"
    );
    drop(server);
}

/// Operator calls the test makes around the console (setting up what it shows).
async fn upload(server: &ServerProcess, archive: Vec<u8>) -> String {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(archive).file_name("bundle.tar.gz"),
    );
    let resp = kernex_tests::client()
        .post(server.url("/api/v1/bundles"))
        .bearer_auth(ADMIN)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "upload: {}", resp.status());
    let v: serde_json::Value = resp.json().await.unwrap();
    v["version"].as_str().unwrap().to_owned()
}

async fn deploy(server: &ServerProcess, version: &str, device: &str) {
    let resp = kernex_tests::client()
        .post(server.url("/api/v1/deployments"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"bundle_version": version, "target_device_ids": [device]}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "deploy: {}", resp.status());
}

#[tokio::test]
async fn l_on_a_failed_target_shows_the_scripts_own_output() {
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&root.path().join("server"), ADMIN, ENROLL).unwrap();
    let agent = Agent::new(root.path(), &server.url("")).enrollment(ENROLL);
    agent.once_ok().await;
    let device_id = agent.device_id();
    // A good version to fall back to, then the broken one, newest.
    let good = upload(&server, fixture_bundle("hello-1.0.0")).await;
    deploy(&server, &good, &device_id).await;
    agent.once_ok().await;
    let broken = upload(&server, fixture_bundle("hello-1.2.0-broken")).await;

    let mut tui = Tui::start(&server.url(""), &root.path().join("console.log"));
    tui.wait_for("● live");
    tui.wait_for(&device_id[device_id.len() - 11..]);
    // d: the newest bundle (nothing failed yet), the selected device, confirm.
    tui.press("d");
    tui.wait_for("Which bundle?");
    tui.press("\r");
    tui.wait_for(&format!("Deploy {broken} to"));
    tui.press("\r");
    tui.wait_for("are you sure?");
    tui.press("y");
    tui.wait_for(&format!("created deploy of {broken} to 1 device"));
    // The device runs it: the script fails and the agent rolls back.
    agent.once_ok().await;
    tui.wait_for("1 failed");
    tui.press("l");
    // The script's own output (stdout and stderr), which only its log tail carries.
    tui.wait_for(&format!("deploying {broken}"));
    tui.wait_for("error: migration 0042 failed");
    let screen = tui.screen();
    assert!(
        screen.contains(&format!("deploy {broken} on {device_id}"))
            && screen.contains("rolled back to 1.0.0")
            && screen.contains("log (the end of what its scripts printed)"),
        "{screen}"
    );
    tui.press("\x1b");
    // (Esc and q written together would read as Alt-q.)
    tui.wait_for(" l logs ");
    tui.press("q");
    assert_eq!(tui.wait_exit(), 0, "{}", tui.screen());
}

#[test]
fn a_refused_token_exits_1_before_taking_over_the_terminal() {
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&root.path().join("server"), ADMIN, ENROLL).unwrap();
    let out = Command::new(bin("kernex-console").unwrap())
        .args(["--server", &server.url(""), "--token", "wrong"])
        .env_remove("KERNEX_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401"), "{err}");
}

#[test]
fn without_a_terminal_the_tui_says_to_use_a_subcommand() {
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&root.path().join("server"), ADMIN, ENROLL).unwrap();
    let out = Command::new(bin("kernex-console").unwrap())
        .args(["--server", &server.url(""), "--token", ADMIN, "--log-file"])
        .arg(root.path().join("console.log"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs a terminal"), "{err}");
}
