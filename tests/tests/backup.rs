//! Backups end to end with the real `kernex-server` (SPEC §2 "Backups"): a backup taken
//! over HTTP from a running server and one taken by `kernex-server backup` on its data
//! dir both restore (`kernex-server restore`) into servers that answer exactly as the
//! original does; `check` passes on them; restore refuses a non-empty dir; the CLI
//! refuses a data dir a server holds.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Output;

use kernex_tests::fleet::{Api, answers, differences, populate};
use kernex_tests::{ServerProcess, bin};

const ADMIN: &str = "e2e-admin";
const ENROLL: &str = "e2e-enroll";

fn server_cli(args: &[&str], data_dir: &Path) -> Output {
    std::process::Command::new(bin("kernex-server").unwrap())
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn http_and_cli_backups_restore_into_servers_that_answer_the_same() {
    let scratch = tempfile::tempdir().unwrap();
    let original = scratch.path().join("original");
    let server = ServerProcess::start(&original, ADMIN, ENROLL).unwrap();
    let api = Api::new(&server.url(""), ADMIN);
    let fleet = populate(&api, ENROLL, 3, 20).await.unwrap();

    // From the running server, streamed to a file as it arrives.
    let http_file = scratch.path().join("http.tar");
    let mut resp = api
        .http
        .get(format!("{}/backup", api.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut out = std::fs::File::create(&http_file).unwrap();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        std::io::Write::write_all(&mut out, &chunk).unwrap();
    }
    drop(out);

    // The CLI refuses a data dir the server holds, and says why.
    let cli_file = scratch.path().join("cli.tar");
    let held = server_cli(&["backup", "--to", cli_file.to_str().unwrap()], &original);
    assert!(!held.status.success(), "{}", text(&held));
    assert!(text(&held).contains("in use"), "{}", text(&held));
    assert!(!cli_file.exists());

    assert!(server.terminate().unwrap(), "clean shutdown");
    let done = server_cli(&["backup", "--to", cli_file.to_str().unwrap()], &original);
    assert!(done.status.success(), "{}", text(&done));

    let mut restored = Vec::new();
    for (name, file) in [("from-http", &http_file), ("from-cli", &cli_file)] {
        let dir = scratch.path().join(name);
        let r = server_cli(&["restore", "--from", file.to_str().unwrap()], &dir);
        assert!(r.status.success(), "{name}: {}", text(&r));
        let c = server_cli(&["check"], &dir);
        assert!(c.status.success(), "{name}: {}", text(&c));
        assert!(text(&c).contains("sound"), "{}", text(&c));
        restored.push(dir);
    }

    // Restore never overwrites: the original dir is refused, untouched.
    let r = server_cli(
        &["restore", "--from", cli_file.to_str().unwrap()],
        &original,
    );
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(text(&r).contains("not empty"), "{}", text(&r));

    let server = ServerProcess::start(&original, ADMIN, ENROLL).unwrap();
    let want = answers(&Api::new(&server.url(""), ADMIN), &fleet)
        .await
        .unwrap();
    assert_eq!(want.len(), 28);
    drop(server);
    for dir in &restored {
        let copy = ServerProcess::start(dir, ADMIN, ENROLL).unwrap();
        let copy_api = Api::new(&copy.url(""), ADMIN);
        let got = answers(&copy_api, &fleet).await.unwrap();
        let diff = differences(&want, &got);
        assert!(diff.is_empty(), "{dir:?} answers differently: {diff:#?}");
        // The second operator token is the same hash: it still works.
        let ops = Api::new(&copy.url(""), &fleet.ops_token);
        ops.get("/devices").await.unwrap();
        // The device token too, and the open deployment is still delivered.
        let (id, token) = &fleet.devices[0];
        let beat = copy_api.beat(id, token, None).await.unwrap();
        assert!(
            beat["commands"].to_string().contains(&fleet.deployments[1]),
            "{beat}"
        );
    }
}
