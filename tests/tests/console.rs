//! The real `kernex-console` scripted subcommands (SPEC §4) against the real
//! `kernex-server`, with real `kernex-agent --once` runs where a device must act:
//! packing and pushing bundles, listings with and without `--json`, deploy and rollback
//! under `--wait`, configuration, admission, and the exit codes (0 ok, 1 refused or
//! failed, 2 usage or unreachable) including the token fallback to `admin.token`.
//!
//! Each test has its own temp dir and server. Waits poll for a fact with a generous
//! deadline, never sleep for a guessed time. A failing test prints the console's output,
//! the agent's logs and the server's log.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use kernex_tests::agent::{Agent, fixture_bundle};
use kernex_tests::{ServerProcess, bin, workspace_root};
use serde_json::Value;

const ADMIN: &str = "console-admin";
const ENROLL: &str = "console-enroll";

/// How long a test waits for something that should happen "soon" on a slow machine.
const PATIENCE: Duration = Duration::from_secs(120);

/// Environment variables of the console that the test's own environment must not leak in.
const CONSOLE_ENV: [&str; 6] = [
    "KERNEX_CONFIG_DIR",
    "KERNEX_SERVER",
    "KERNEX_TOKEN",
    "KERNEX_CA_CERT",
    "KERNEX_CONSOLE_LOG",
    "KERNEX_DATA_DIR",
];

/// A finished console run.
struct Run {
    args: Vec<String>,
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn from_output(args: &[&str], out: Output) -> Run {
        Run {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            // A signal (a panic's abort, a kill) has no code: never a pass.
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn describe(&self) -> String {
        format!(
            "`kernex-console {}` exited {}\nstdout:\n{}\nstderr:\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }

    /// Assert the exit code; returns the run for more checks.
    fn code(self, expected: i32) -> Run {
        assert_eq!(self.code, expected, "{}", self.describe());
        assert!(
            !self.stderr.contains("panicked"),
            "the console panicked: {}",
            self.describe()
        );
        self
    }

    fn ok(self) -> Run {
        self.code(0)
    }

    /// Exit 1 or 2 with `kernex-console: …` on stderr naming `needle`.
    fn fails(self, code: i32, needle: &str) -> Run {
        let run = self.code(code);
        assert!(
            run.stderr.contains("kernex-console: ") && run.stderr.contains(needle),
            "stderr does not say {needle:?}: {}",
            run.describe()
        );
        run
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.describe()))
    }
}

/// One test's world: a temp dir and a server on it.
struct World {
    dir: tempfile::TempDir,
    /// `None` while a test has it stopped.
    server: Option<ServerProcess>,
    /// Its address, kept across a stop so a restart listens on it again.
    addr: String,
    /// Server log lines collected before a stop.
    server_log: std::sync::Mutex<Vec<String>>,
    /// Agents the test made, for failure messages.
    agents: std::sync::Mutex<Vec<Agent>>,
}

impl World {
    fn start() -> World {
        Self::start_with_admin(ADMIN)
    }

    /// With `admin` empty the server writes a generated token to `<data>/admin.token`.
    fn start_with_admin(admin: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("server"), admin, ENROLL).unwrap();
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        World {
            dir,
            addr: server.addr.clone(),
            server: Some(server),
            server_log: std::sync::Mutex::new(Vec::new()),
            agents: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A URL on the server (also while it is stopped).
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The server's data dir.
    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("server")
    }

    /// SIGKILL the server (an outage).
    fn kill_server(&mut self) {
        let server = self.server.take().expect("the server is running");
        self.server_log.lock().unwrap().extend(server.logs());
        server.kill().unwrap();
    }

    /// Start the server again on the same data dir and address.
    async fn restart_server(&mut self) {
        assert!(self.server.is_none(), "the server is still running");
        let server = ServerProcess::restart_on(&self.data_dir(), ADMIN, ENROLL, &self.addr)
            .await
            .unwrap();
        self.server = Some(server);
    }

    /// Where the console keeps its `login` context in these tests.
    fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// The console with no `--server`, `--token` or their variables: only a saved
    /// context (or the defaults) can tell it where to go.
    async fn run_bare(&self, args: &[&str]) -> Run {
        let mut cmd = tokio::process::Command::new(bin("kernex-console").unwrap());
        for var in CONSOLE_ENV {
            cmd.env_remove(var);
        }
        cmd.args(args)
            .env("KERNEX_CONSOLE_LOG", self.dir.path().join("console.log"))
            .env("KERNEX_CONFIG_DIR", self.config_dir())
            // No admin.token to fall back on.
            .env("KERNEX_DATA_DIR", self.dir.path().join("no-data"))
            .current_dir(self.work())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        self.finish(args, cmd).await
    }

    /// The console's working directory (where `bundle pack` writes by default).
    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// The console with a clean environment, in the work dir, talking to our server.
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        self.command_on(&self.url(""), args)
    }

    /// The console talking to `server`.
    fn command_on(&self, server: &str, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(bin("kernex-console").unwrap());
        for var in CONSOLE_ENV {
            cmd.env_remove(var);
        }
        cmd.args(args)
            .args(["--server", server])
            // The console's log (the TUI's) never lands in the user's real state dir.
            .env("KERNEX_CONSOLE_LOG", self.dir.path().join("console.log"))
            // `login` saves here, never in the user's real config dir.
            .env("KERNEX_CONFIG_DIR", self.config_dir())
            .current_dir(self.work())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Run with the admin token.
    async fn run(&self, args: &[&str]) -> Run {
        let mut cmd = self.command(args);
        cmd.arg("--token").arg(ADMIN);
        self.finish(args, cmd).await
    }

    /// Run with no `--token` and this environment.
    async fn run_env(&self, args: &[&str], env: &[(&str, &Path)]) -> Run {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.finish(args, cmd).await
    }

    async fn finish(&self, args: &[&str], mut cmd: tokio::process::Command) -> Run {
        match tokio::time::timeout(PATIENCE, cmd.output()).await {
            Ok(out) => Run::from_output(args, out.unwrap()),
            Err(_) => panic!("`kernex-console {}` still running", args.join(" ")),
        }
    }

    /// A device registered with `run --once` (accepted with the enrollment token, pending
    /// without); its agent and id.
    async fn device(&self, name: &str, enrolled: bool) -> (Agent, String) {
        let mut agent = Agent::new(&self.dir.path().join(name), &self.url(""));
        if enrolled {
            agent = agent.enrollment(ENROLL);
        }
        self.agents.lock().unwrap().push(agent.clone());
        agent.once_ok().await;
        let id = agent.device_id();
        (agent, id)
    }

    /// A fixture bundle packed into the work dir; its path.
    fn fixture_file(&self, name: &str) -> PathBuf {
        let path = self.work().join(format!("{name}.tar.gz"));
        std::fs::write(&path, fixture_bundle(name)).unwrap();
        path
    }

    /// How many deployments the server has.
    async fn deployment_count(&self) -> usize {
        let resp = kernex_tests::client()
            .get(self.url("/api/v1/deployments?limit=1000"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{resp:?}");
        resp.json::<Vec<Value>>().await.unwrap().len()
    }

    /// Run a console command that creates a deployment and waits on it while the device
    /// works: once the deployment exists, `run --once` cycles (each executes a delivered
    /// command to the end and reports it) until the console exits.
    async fn run_with_agent(&self, args: &[&str], agent: &Agent) -> Run {
        let before = self.deployment_count().await;
        let mut cmd = self.command(args);
        cmd.arg("--token").arg(ADMIN);
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + PATIENCE;
        // A heartbeat before the deployment exists would carry no command.
        while self.deployment_count().await == before {
            if child.try_wait().unwrap().is_some() {
                let out = child.wait_with_output().await.unwrap();
                return Run::from_output(args, out);
            }
            assert!(Instant::now() < deadline, "no deployment was created");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        loop {
            agent.once_ok().await;
            // The console polls about once a second: give it a few polls to notice.
            let settle = Instant::now() + Duration::from_secs(10);
            while Instant::now() < settle {
                if child.try_wait().unwrap().is_some() {
                    let out = child.wait_with_output().await.unwrap();
                    return Run::from_output(args, out);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(
                Instant::now() < deadline,
                "`kernex-console {}` still waiting after {PATIENCE:?}",
                args.join(" ")
            );
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        if let Ok(agents) = self.agents.lock() {
            for a in agents.iter() {
                eprintln!("{}", a.logs());
            }
        }
        kernex_tests::eprint_server_log(&self.server_log, self.server.as_ref());
    }
}

fn fixture_dir(name: &str) -> PathBuf {
    workspace_root().join("fixtures/bundles").join(name)
}

fn sha256(path: &Path) -> String {
    kernex_common::bundle::sha256_file(path).unwrap()
}

/// `bundle pack`, `bundle push`, `bundles`.
mod bundles {
    use super::*;

    #[tokio::test]
    async fn pack_then_push_lists_the_bundle_and_refuses_duplicates_and_non_bundles() {
        let w = World::start();
        let src = fixture_dir("hello-1.0.0");
        let src = src.to_str().unwrap();

        // Packed into the current dir under <name>-<version>.tar.gz; stdout is the path.
        let packed = w.run(&["bundle", "pack", src]).await.ok();
        assert_eq!(
            packed.stdout.trim(),
            "hello-1.0.0.tar.gz",
            "{}",
            packed.describe()
        );
        let archive = w.work().join("hello-1.0.0.tar.gz");
        let info = kernex_common::bundle::inspect(
            std::fs::File::open(&archive).unwrap(),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(info.manifest.version, "1.0.0");
        // Only the archive is left in the work dir (no temp files).
        let names: Vec<_> = std::fs::read_dir(w.work())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["hello-1.0.0.tar.gz"]);

        // -o and --json.
        let out = w.dir.path().join("out.tgz");
        let packed = w
            .run(&["--json", "bundle", "pack", src, "-o", out.to_str().unwrap()])
            .await
            .ok()
            .json();
        assert_eq!(packed["path"], out.to_str().unwrap());
        assert_eq!(packed["version"], "1.0.0");
        assert_eq!(packed["checksum_sha256"], sha256(&out));

        // Pushed: the server stores exactly these bytes.
        let pushed = w
            .run(&["--json", "bundle", "push", "hello-1.0.0.tar.gz"])
            .await
            .ok()
            .json();
        assert_eq!(pushed["version"], "1.0.0");
        assert_eq!(pushed["name"], "hello");
        assert_eq!(pushed["checksum_sha256"], sha256(&archive));

        let listed = w.run(&["--json", "bundles"]).await.ok().json();
        let listed = listed.as_array().unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0]["id"], pushed["id"]);
        let human = w.run(&["bundles"]).await.ok();
        let mut lines = human.stdout.lines();
        assert!(
            lines.next().unwrap().starts_with("VERSION"),
            "{}",
            human.describe()
        );
        assert!(
            lines.next().unwrap().starts_with("1.0.0 "),
            "{}",
            human.describe()
        );

        // The same version again: the server's 409, exit 1.
        w.run(&["bundle", "push", "hello-1.0.0.tar.gz"])
            .await
            .fails(1, "409");
        // Not a bundle: the server's own message, exit 1.
        std::fs::write(w.work().join("notes.txt"), "not an archive\n").unwrap();
        w.run(&["bundle", "push", "notes.txt"])
            .await
            .fails(1, "not a gzip archive");
        // No such file: a usage error, the server is not asked.
        w.run(&["bundle", "push", "missing.tar.gz"])
            .await
            .fails(2, "missing.tar.gz");
        w.run(&["bundle", "pack", "no-such-dir"])
            .await
            .fails(2, "not a directory");
        assert_eq!(
            w.run(&["--json", "bundles"]).await.ok().json(),
            Value::Array(listed.clone()),
            "refused uploads stored nothing"
        );
    }
}

/// `devices`, `device`, `config get/set`, `accept`, `reject`.
mod fleet {
    use super::*;

    #[tokio::test]
    async fn listings_config_and_admission() {
        let w = World::start();
        let (_a, a) = w.device("agent-a", true).await;
        let (_b, b) = w.device("agent-b", false).await;

        // devices, as JSON and as a table.
        let all = w.run(&["--json", "devices"]).await.ok().json();
        let ids: Vec<&str> = all
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["device_id"].as_str().unwrap())
            .collect();
        let mut expected = vec![a.as_str(), b.as_str()];
        expected.sort();
        assert_eq!(ids, expected, "ordered by id");
        let table = w.run(&["devices"]).await.ok();
        let header = table.stdout.lines().next().unwrap();
        for col in [
            "ID",
            "TYPE",
            "ADMISSION",
            "STATUS",
            "VERSION",
            "LAST SEEN",
            "TAGS",
        ] {
            assert!(header.contains(col), "{col}: {}", table.describe());
        }
        let row_a = table.stdout.lines().find(|l| l.starts_with(&a)).unwrap();
        assert!(
            row_a.contains("accepted") && row_a.contains("online"),
            "{row_a}"
        );
        let pending = w
            .run(&["--json", "devices", "--admission", "pending"])
            .await
            .ok()
            .json();
        assert_eq!(pending.as_array().unwrap().len(), 1, "{pending}");
        assert_eq!(pending[0]["device_id"], b.as_str());
        w.run(&["devices", "--status", "sleeping"])
            .await
            .fails(2, "--status");

        // device: the summary, its config, its (empty) history.
        let page = w.run(&["--json", "device", &a]).await.ok().json();
        assert_eq!(page["device"]["device_id"], a.as_str());
        assert_eq!(page["device"]["admission"], "accepted");
        assert_eq!(page["config"]["version"], 1);
        assert_eq!(page["history"], Value::Array(vec![]));
        let text = w.run(&["device", &a]).await.ok();
        assert!(
            text.stdout.contains("polling_interval:") && text.stdout.contains(&a),
            "{}",
            text.describe()
        );
        w.run(&["device", "0123456789abcdef0123456789abcdef"])
            .await
            .fails(1, "404");
        w.run(&["device", "not/an/id"])
            .await
            .fails(2, "invalid device id");

        // config set: a good change bumps the version by one.
        assert_eq!(
            w.run(&["--json", "config", "get", &a]).await.ok().json()["version"],
            1
        );
        let set = w
            .run(&[
                "--json",
                "config",
                "set",
                &a,
                "polling_interval=30",
                "log_level=debug",
            ])
            .await
            .ok()
            .json();
        assert_eq!(set["version"], 2);
        assert_eq!(set["polling_interval"], 30);
        assert_eq!(set["log_level"], "debug");
        // Out of range: the server's 400 and message, exit 1, nothing changes.
        w.run(&["config", "set", &a, "polling_interval=1", "log_level=warn"])
            .await
            .fails(1, "polling_interval must be between");
        let now = w.run(&["--json", "config", "get", &a]).await.ok().json();
        assert_eq!(now["version"], 2);
        assert_eq!(now["log_level"], "debug");
        // Usage errors: exit 2, nothing sent.
        w.run(&["config", "set", &a, "colour=red"])
            .await
            .fails(2, "unknown key \"colour\"");
        w.run(&["config", "set", &a, "polling_interval=soon"])
            .await
            .fails(2, "whole number");
        w.run(&["config", "set", &a, "metadata=[1,2]"])
            .await
            .fails(2, "JSON object");
        let set = w
            .run(&["config", "set", &a, r#"metadata={"site":"berlin"}"#])
            .await
            .ok();
        assert!(
            set.stdout.contains(r#"{"site":"berlin"}"#),
            "{}",
            set.describe()
        );
        assert_eq!(
            w.run(&["--json", "config", "get", &a]).await.ok().json()["version"],
            3
        );

        // Admission of the pending device.
        let accepted = w.run(&["--json", "accept", &b]).await.ok().json();
        assert_eq!(accepted["device_id"], b.as_str());
        assert_eq!(accepted["admission"], "accepted");
        let rejected = w.run(&["reject", &b]).await.ok();
        assert!(
            rejected.stdout.contains("rejected"),
            "{}",
            rejected.describe()
        );
        let listed = w
            .run(&["--json", "devices", "--admission", "rejected"])
            .await
            .ok()
            .json();
        assert_eq!(listed[0]["device_id"], b.as_str());
        w.run(&["accept", "0123456789abcdef0123456789abcdef"])
            .await
            .fails(1, "404");
    }
}

/// `deploy`, `rollback`, `deployments`, `--wait`.
mod deploy {
    use super::*;

    #[tokio::test]
    async fn deploy_and_rollback_under_wait_end_with_the_deployments_outcome() {
        let w = World::start();
        for name in ["hello-1.0.0", "hello-1.1.0", "hello-1.2.0-broken"] {
            let file = w.fixture_file(name);
            w.run(&["bundle", "push", file.to_str().unwrap()])
                .await
                .ok();
        }
        let (agent, id) = w.device("agent", true).await;

        // A good release: exit 0, the final deployment on stdout, progress on stderr.
        let run = w
            .run_with_agent(
                &[
                    "--json",
                    "deploy",
                    "1.0.0",
                    "--devices",
                    &id,
                    "--wait",
                    "--timeout",
                    "300",
                ],
                &agent,
            )
            .await
            .ok();
        let first = run.json();
        assert_eq!(first["status"], "success", "{}", run.describe());
        assert_eq!(first["devices"][0]["status"], "success");
        assert!(run.stderr.contains("1/1 finished"), "{}", run.describe());

        let run = w
            .run_with_agent(&["deploy", "1.1.0", "--devices", &id, "--wait"], &agent)
            .await
            .ok();
        assert!(
            run.stdout.contains("status:     success"),
            "{}",
            run.describe()
        );

        // A release whose deploy script fails: exit 1, and the data still says why.
        let run = w
            .run_with_agent(
                &[
                    "--json",
                    "deploy",
                    "1.2.0-broken",
                    "--devices",
                    &id,
                    "--wait",
                ],
                &agent,
            )
            .await
            .fails(1, "failed");
        let broken = run.json();
        assert_eq!(broken["status"], "failed", "{}", run.describe());
        let broken_id = broken["id"].as_str().unwrap().to_owned();
        let text = w.run(&["deployments", &broken_id]).await.ok();
        assert!(
            text.stdout.contains(&format!("{id} failed:")),
            "{}",
            text.describe()
        );

        // Back to 1.0.0, which the device ran successfully.
        let run = w
            .run_with_agent(
                &["--json", "rollback", "1.0.0", "--devices", &id, "--wait"],
                &agent,
            )
            .await
            .ok();
        let back = run.json();
        assert_eq!(back["kind"], "rollback");
        assert_eq!(back["status"], "success", "{}", run.describe());
        let page = w.run(&["--json", "device", &id]).await.ok().json();
        assert_eq!(page["device"]["current_bundle_version"], "1.0.0");
        assert_eq!(page["history"].as_array().unwrap().len(), 4, "{page}");

        // The list, newest first, and a status filter.
        let list = w.run(&["--json", "deployments"]).await.ok().json();
        let versions: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["bundle_version"].as_str().unwrap())
            .collect();
        assert_eq!(versions, ["1.0.0", "1.2.0-broken", "1.1.0", "1.0.0"]);
        let failed = w
            .run(&["--json", "deployments", "--status", "failed"])
            .await
            .ok()
            .json();
        assert_eq!(failed.as_array().unwrap().len(), 1);
        assert_eq!(failed[0]["id"], broken_id.as_str());
        let table = w.run(&["deployments"]).await.ok();
        assert!(
            table.stdout.starts_with("ID ") && table.stdout.contains(&broken_id),
            "{}",
            table.describe()
        );
        w.run(&["deployments", "--status", "done"])
            .await
            .fails(2, "--status");

        // Refusals: an unknown version, a tag nobody carries (exit 1); bad input (exit 2).
        w.run(&["deploy", "9.9.9", "--devices", &id])
            .await
            .fails(1, "400");
        w.run(&["deploy", "1.0.0", "--tag", "nobody"])
            .await
            .fails(1, "400");
        w.run(&["rollback", "1.1.0-nope", "--devices", &id])
            .await
            .fails(1, "400");
        w.run(&["deploy", "1.0.0", "--devices", "a/b"])
            .await
            .fails(2, "invalid device id");

        // Nobody runs the agent now: --timeout gives up with exit 1 and shows where it is.
        let started = Instant::now();
        let run = w
            .run(&[
                "deploy",
                "1.1.0",
                "--devices",
                &id,
                "--wait",
                "--timeout",
                "2",
            ])
            .await
            .fails(1, "gave up waiting after");
        assert!(run.stdout.contains("pending"), "{}", run.describe());
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "took {:?}",
            started.elapsed()
        );
    }
    #[tokio::test]
    async fn wait_rides_out_a_server_restart() {
        let mut w = World::start();
        let file = w.fixture_file("hello-1.0.0");
        w.run(&["bundle", "push", file.to_str().unwrap()])
            .await
            .ok();
        let (agent, id) = w.device("agent", true).await;

        let args = ["--json", "deploy", "1.0.0", "--devices", &id, "--wait"];
        let mut cmd = w.command(&args);
        cmd.arg("--token").arg(ADMIN);
        let mut child = cmd.spawn().unwrap();
        // Its stderr (one line per change when it is not a terminal), read as it comes.
        let stderr = child.stderr.take().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut said: Vec<String> = Vec::new();
        let mut wait_for = async |needle: &str, said: &mut Vec<String>| {
            let found = tokio::time::timeout(PATIENCE, async {
                while let Some(line) = rx.recv().await {
                    said.push(line.clone());
                    if line.contains(needle) {
                        return true;
                    }
                }
                false
            })
            .await;
            assert!(
                matches!(found, Ok(true)),
                "the console never said {needle:?}; it said:\n{}",
                said.join("\n")
            );
        };

        wait_for("0/1 finished", &mut said).await;
        w.kill_server();
        wait_for("retrying", &mut said).await;
        w.restart_server().await;
        agent.once_ok().await;
        let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
            .await
            .expect("the console finished")
            .unwrap();
        // The rest of what it said, up to its end.
        while let Some(line) = rx.recv().await {
            said.push(line);
        }
        let mut run = Run::from_output(&args, out);
        run.stderr = said.join("\n");
        let run = run.ok();
        assert_eq!(run.json()["status"], "success", "{}", run.describe());
    }
}

/// Reaching the server: tokens, the `admin.token` fallback, an absent server, a closed
/// pipe.
mod connection {
    use super::*;

    #[tokio::test]
    async fn a_404_without_a_body_names_the_path() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let w = World::start();
        // Something that is not the Kernex API: every request gets a bare 404.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let other = format!("http://{addr}");
        let cmd = w.command_on(&other, &["devices", "--token", "t"]);
        w.finish(&["devices", "--server", &other], cmd)
            .await
            .fails(1, "/api/v1/devices not found");
    }

    #[tokio::test]
    async fn login_saves_a_context_that_later_runs_use_and_logout_forgets() {
        use std::os::unix::fs::PermissionsExt;
        let w = World::start();
        let good = w.dir.path().join("token");
        std::fs::write(&good, format!("{ADMIN}\n")).unwrap();
        let bad = w.dir.path().join("bad-token");
        std::fs::write(&bad, "wrong").unwrap();
        let saved = w.config_dir().join("context.json");
        let url = w.url("");
        let login = async |file: &Path, server: &str| {
            let file = file.to_str().unwrap();
            w.run_bare(&["login", "--server", server, "--token-file", file])
                .await
        };

        // Without a context nothing answers at the default address with a token.
        w.run_bare(&["devices"]).await.fails(2, "login");
        // A refused token: exit 1, nothing saved.
        login(&bad, &url).await.fails(1, "401");
        assert!(!saved.exists());
        // Nobody listening: exit 2, nothing saved.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        login(&good, &format!("http://127.0.0.1:{port}"))
            .await
            .fails(2, "cannot reach");
        assert!(!saved.exists());

        let run = login(&good, &url).await.ok();
        assert!(run.stdout.contains("logged in"), "{}", run.describe());
        assert!(!run.stdout.contains(ADMIN) && !run.stderr.contains(ADMIN));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&saved), 0o600);
        assert_eq!(mode(&w.config_dir()), 0o700);

        // No flags needed now, in every output format.
        let run = w.run_bare(&["devices", "-o", "json"]).await.ok();
        assert_eq!(run.json(), Value::Array(vec![]));
        w.run_bare(&["bundles", "-o", "yaml"]).await.ok();
        // A flag still wins over the context.
        let mut cmd = w.command(&["devices"]);
        cmd.env("KERNEX_CONFIG_DIR", w.config_dir())
            .args(["--token", "wrong"]);
        w.finish(&["devices", "--token", "wrong"], cmd)
            .await
            .fails(1, "401");

        let run = w.run_bare(&["logout"]).await.ok();
        assert!(run.stdout.contains("logged out"), "{}", run.describe());
        assert!(!saved.exists());
        w.run_bare(&["devices"]).await.fails(2, "login");
    }

    #[tokio::test]
    async fn tokens_fallback_unreachable_and_usage_errors() {
        // No admin token configured: the server writes one to <data>/admin.token.
        let w = World::start_with_admin("");
        let data = w.data_dir();
        let token_file = data.join("admin.token");
        let deadline = Instant::now() + PATIENCE;
        while !token_file.exists() {
            assert!(Instant::now() < deadline, "no {}", token_file.display());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // No --token: KERNEX_DATA_DIR/admin.token is used.
        let run = w
            .run_env(&["--json", "devices"], &[("KERNEX_DATA_DIR", &data)])
            .await
            .ok();
        assert_eq!(run.json(), Value::Array(vec![]));
        // No token anywhere: exit 2, saying how to give one.
        let empty = w.dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        w.run_env(&["devices"], &[("KERNEX_DATA_DIR", &empty)])
            .await
            .fails(2, "--token");
        // A wrong token: the server's 401, exit 1.
        let mut cmd = w.command(&["devices"]);
        cmd.args(["--token", "wrong"]);
        w.finish(&["devices", "--token", "wrong"], cmd)
            .await
            .fails(1, "401");

        // Nothing listening: exit 2.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let gone = format!("http://127.0.0.1:{port}");
        let cmd = w.command_on(&gone, &["devices", "--token", "t"]);
        w.finish(&["devices", "--server", &gone], cmd)
            .await
            .fails(2, "cannot reach");
        // A usage error is found before the server is asked (which would be exit 2 too,
        // but with another message).
        let cmd = w.command_on(
            &gone,
            &["config", "set", "device1", "colour=red", "--token", "t"],
        );
        w.finish(&["config", "set", "device1", "colour=red"], cmd)
            .await
            .fails(2, "unknown key");
        // clap's own usage errors are exit 2 as well.
        let run = w.run(&["deploy", "1.0.0"]).await;
        assert_eq!(run.code, 2, "{}", run.describe());

        // stdout closed before anything is written: a quiet exit 0, no panic.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut cmd = w.command(&["--json", "devices"]);
        cmd.env("KERNEX_DATA_DIR", &data).stdout(writer);
        let run = w.finish(&["--json", "devices", "| (closed)"], cmd).await;
        assert_eq!(run.code, 0, "{}", run.describe());
        assert!(run.stderr.is_empty(), "{}", run.describe());
    }
}
