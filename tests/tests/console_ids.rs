//! Ids in the scripted console commands (SPEC §4 "Ids"): the full id or any unique
//! suffix of 6+ characters works for `device`, `config get/set`, `accept`, `reject`,
//! `deployments ID`, `deploy --devices` and `rollback --devices`; a shorter one is a
//! usage error (exit 2) and an unknown one exits 1 saying so. (Ambiguity needs two ids
//! sharing 6+ final characters, which random ids never do: the unit tests of
//! `console/src/ops/ids.rs` cover it.)
//!
//! The real console, server and agents; each test has its own temp dir and server.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use kernex_tests::agent::{Agent, fixture_bundle};
use kernex_tests::{ServerProcess, bin};
use serde_json::Value;

const ADMIN: &str = "ids-admin";
const ENROLL: &str = "ids-enroll";
const PATIENCE: Duration = Duration::from_secs(120);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn code(self, expected: i32, needle: &str) -> Run {
        assert_eq!(
            self.code, expected,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(needle) || self.stdout.contains(needle),
            "output does not say {needle:?}: {}\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        assert_eq!(self.code, 0, "{}", self.stderr);
        serde_json::from_str(&self.stdout).unwrap()
    }
}

struct World {
    dir: tempfile::TempDir,
    server: ServerProcess,
}

impl World {
    fn start() -> World {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("server"), ADMIN, ENROLL).unwrap();
        World { dir, server }
    }

    async fn run(&self, args: &[&str]) -> Run {
        let mut cmd = tokio::process::Command::new(bin("kernex-console").unwrap());
        for var in [
            "KERNEX_SERVER",
            "KERNEX_TOKEN",
            "KERNEX_CA_CERT",
            "KERNEX_DATA_DIR",
        ] {
            cmd.env_remove(var);
        }
        cmd.args(args)
            .args(["--server", &self.server.url(""), "--token", ADMIN])
            .env("KERNEX_CONSOLE_LOG", self.dir.path().join("console.log"))
            // Never the user's saved `login` context.
            .env("KERNEX_CONFIG_DIR", self.dir.path().join("config"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(PATIENCE, cmd.output())
            .await
            .expect("the console finishes")
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// A device registered with `run --once`; its full id.
    async fn device(&self, name: &str, enrolled: bool) -> String {
        let mut agent = Agent::new(&self.dir.path().join(name), &self.server.url(""));
        if enrolled {
            agent = agent.enrollment(ENROLL);
        }
        agent.once_ok().await;
        agent.device_id()
    }
}

/// The last `n` characters of an id.
fn tail(id: &str, n: usize) -> &str {
    &id[id.len() - n..]
}

#[tokio::test]
async fn device_commands_take_a_unique_suffix() {
    let w = World::start();
    let a = w.device("a", true).await;
    let _b = w.device("b", true).await;
    let pending = w.device("p", false).await;
    let suffix = tail(&a, 8);

    let page = w.run(&["--json", "device", suffix]).await.json();
    assert_eq!(page["device"]["device_id"], a.as_str());
    let config = w
        .run(&["--json", "config", "get", tail(&a, 6)])
        .await
        .json();
    assert_eq!(config["device_id"], a.as_str());
    let set = w
        .run(&["--json", "config", "set", suffix, "polling_interval=30"])
        .await
        .json();
    assert_eq!(set["polling_interval"], 30);
    // The full id still works.
    assert_eq!(
        w.run(&["--json", "config", "get", &a]).await.json()["polling_interval"],
        30
    );

    let accepted = w.run(&["--json", "accept", tail(&pending, 7)]).await.json();
    assert_eq!(accepted["device_id"], pending.as_str());
    assert_eq!(accepted["admission"], "accepted");
    let rejected = w.run(&["--json", "reject", tail(&pending, 6)]).await.json();
    assert_eq!(rejected["admission"], "rejected");
}

#[tokio::test]
async fn a_short_suffix_is_a_usage_error_and_an_unknown_one_exits_1() {
    let w = World::start();
    let a = w.device("a", true).await;
    for args in [
        vec!["device", tail(&a, 5)],
        vec!["config", "get", tail(&a, 3)],
        vec!["accept", tail(&a, 5)],
        vec!["deployments", "abcde"],
        vec!["deploy", "1.0.0", "--devices", tail(&a, 4)],
        vec!["rollback", "1.0.0", "--devices", tail(&a, 5)],
    ] {
        w.run(&args).await.code(2, "too short");
    }
    for args in [
        vec!["device", "zzzzzz"],
        vec!["config", "set", "zzzzzz", "polling_interval=30"],
        vec!["reject", "zzzzzzz"],
        vec!["deploy", "1.0.0", "--devices", "zzzzzz"],
        vec!["rollback", "1.0.0", "--devices", "zzzzzz"],
    ] {
        w.run(&args).await.code(1, "no device id ends with \"zzzzz");
    }
    w.run(&["deployments", "zzzzzz"])
        .await
        .code(1, "no deployment id ends with");
}

#[tokio::test]
async fn deploy_targets_and_deployments_take_suffixes() {
    let w = World::start();
    let a = w.device("a", true).await;
    let b = w.device("b", true).await;
    let file = w.dir.path().join("hello-1.0.0.tar.gz");
    std::fs::write(&file, fixture_bundle("hello-1.0.0")).unwrap();
    w.run(&["bundle", "push", file.to_str().unwrap()])
        .await
        .code(0, "");

    // Two suffixes of one device and a suffix of another: two targets, full ids.
    let devices = format!("{},{},{}", tail(&a, 6), tail(&a, 9), tail(&b, 6));
    let dep = w
        .run(&["--json", "deploy", "1.0.0", "--devices", &devices])
        .await
        .json();
    let mut targets: Vec<&str> = dep["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["device_id"].as_str().unwrap())
        .collect();
    targets.sort_unstable();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort_unstable();
    assert_eq!(targets, want, "{dep}");

    let id = dep["id"].as_str().unwrap();
    let shown = w.run(&["--json", "deployments", tail(id, 6)]).await.json();
    assert_eq!(shown["id"], id);
}
