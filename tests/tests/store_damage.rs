//! A damaged sled store (SPEC §2 "Backups"; sled 0.34 has known reports of corruption
//! after power loss): the last log segment truncated, or bytes flipped inside the log.
//! Whatever sled makes of it, the server either refuses to start with a message naming
//! `kernex-server check` and `kernex-server restore`, or it recovers to a store that
//! `check` finds sound and that holds only what the original held — never a half
//! store served silently. Afterwards the restore the message names brings the fleet
//! back answer for answer.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Output;

use kernex_tests::fleet::{Api, Fleet, answers, differences, populate};
use kernex_tests::{ServerProcess, bin};
use serde_json::Value;

const ADMIN: &str = "e2e-admin";
const ENROLL: &str = "e2e-enroll";
/// sled 0.34's default log segment size.
const SEGMENT: u64 = 512 * 1024;

/// Where the written part of sled's log ends: segments are zero-filled ahead, so the
/// file's length says little; damage past this point would hit nothing.
fn data_end(log: &Path) -> u64 {
    let bytes = std::fs::read(log).unwrap();
    bytes
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |i| i as u64 + 1)
}

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

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A populated data dir, stopped cleanly, its backup, and what it answered.
struct Original {
    _scratch: tempfile::TempDir,
    dir: PathBuf,
    backup: PathBuf,
    fleet: Fleet,
    answers: Vec<(String, Value)>,
}

async fn original() -> Original {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("original");
    let server = ServerProcess::start(&dir, ADMIN, ENROLL).unwrap();
    let api = Api::new(&server.url(""), ADMIN);
    let fleet = populate(&api, ENROLL, 4, 40).await.unwrap();
    let answers = answers(&api, &fleet).await.unwrap();
    assert!(server.terminate().unwrap());
    let backup = scratch.path().join("good.tar");
    let b = server_cli(&["backup", "--to", backup.to_str().unwrap()], &dir);
    assert!(b.status.success(), "{}", text(&b));
    Original {
        _scratch: scratch,
        dir,
        backup,
        fleet,
        answers,
    }
}

/// Start on the damaged dir and hold the outcome to the contract; returns what happened.
async fn start_damaged(o: &Original, damaged: &Path) -> &'static str {
    let check = server_cli(&["check"], damaged);
    let check_sound = check.status.success();
    if !check_sound {
        assert_eq!(check.status.code(), Some(1), "{}", text(&check));
        assert!(
            text(&check).contains("kernex-server restore --from"),
            "check names the restore command: {}",
            text(&check)
        );
    }
    match ServerProcess::start(damaged, ADMIN, ENROLL) {
        Err(e) => {
            let said = format!("{e:#}");
            eprintln!("refused: {}", said.lines().last().unwrap_or_default());
            assert!(
                said.contains("kernex-server check") && said.contains("kernex-server restore"),
                "a refusal names check and restore: {said}"
            );
            "refused"
        }
        Ok(server) => {
            // It serves: then the store must be sound, and hold nothing the original
            // did not (an earlier state at worst, never garbage).
            assert!(
                check_sound,
                "the server started on a store check finds unsound:\n{}",
                text(&check)
            );
            let api = Api::new(&server.url(""), ADMIN);
            let devices = api.get("/devices").await.unwrap();
            let known: Vec<&Value> = o.answers[0].1.as_array().unwrap().iter().collect();
            for d in devices.as_array().unwrap() {
                let same = known.iter().any(|k| {
                    k["device_id"] == d["device_id"] && k["device_type"] == d["device_type"]
                });
                assert!(same, "a device the original never had: {d}");
            }
            let got = answers(&api, &o.fleet).await;
            if let Ok(got) = got
                && differences(&o.answers, &got).is_empty()
            {
                return "recovered whole";
            }
            "recovered an earlier state"
        }
    }
}

/// The restore the refusal names brings the fleet back.
async fn restore_brings_it_back(o: &Original, into: &Path) {
    let r = server_cli(&["restore", "--from", o.backup.to_str().unwrap()], into);
    assert!(r.status.success(), "{}", text(&r));
    let server = ServerProcess::start(into, ADMIN, ENROLL).unwrap();
    let got = answers(&Api::new(&server.url(""), ADMIN), &o.fleet)
        .await
        .unwrap();
    let diff = differences(&o.answers, &got);
    assert!(diff.is_empty(), "{diff:#?}");
}

#[tokio::test]
async fn a_truncated_last_log_segment_is_recovered_or_refused_never_served_corrupt() {
    let o = original().await;
    let log = o.dir.join("db").join("db");
    let len = data_end(&log);
    let last_segment = (len - 1) / SEGMENT * SEGMENT;
    let mut outcomes = Vec::new();
    // Cut the written part of the last segment in half, then just its last bytes.
    for (i, cut_to) in [last_segment + (len - last_segment) / 2, len - 100]
        .into_iter()
        .enumerate()
    {
        let damaged = o._scratch.path().join(format!("truncated-{i}"));
        copy_dir(&o.dir, &damaged);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(damaged.join("db").join("db"))
            .unwrap();
        f.set_len(cut_to).unwrap();
        outcomes.push((cut_to, start_damaged(&o, &damaged).await));
    }
    eprintln!("log of {len} bytes truncated: {outcomes:?}");
    restore_brings_it_back(&o, &o._scratch.path().join("restored")).await;
}

#[tokio::test]
async fn flipped_bytes_in_the_log_are_recovered_or_refused_never_served_corrupt() {
    let o = original().await;
    let log = o.dir.join("db").join("db");
    let len = data_end(&log);
    let mut outcomes = Vec::new();
    for (i, at) in [len / 3, len / 2, len - 200].into_iter().enumerate() {
        let damaged = o._scratch.path().join(format!("flipped-{i}"));
        copy_dir(&o.dir, &damaged);
        let path = damaged.join("db").join("db");
        let mut bytes = std::fs::read(&path).unwrap();
        for b in &mut bytes[at as usize..at as usize + 8] {
            *b ^= 0x5a;
        }
        std::fs::write(&path, bytes).unwrap();
        outcomes.push((at, start_damaged(&o, &damaged).await));
    }
    eprintln!("log of {len} bytes, 8 bytes flipped at: {outcomes:?}");
    restore_brings_it_back(&o, &o._scratch.path().join("restored")).await;
}

#[tokio::test]
async fn check_names_damaged_bundle_files_and_the_restore_command() {
    let o = original().await;
    let sound = server_cli(&["check"], &o.dir);
    assert!(sound.status.success(), "{}", text(&sound));
    assert!(
        text(&sound).contains("2 bundle files verified"),
        "{}",
        text(&sound)
    );

    let damaged = o._scratch.path().join("bundles-damaged");
    copy_dir(&o.dir, &damaged);
    let bundles = damaged.join("bundles");
    std::fs::remove_file(bundles.join(format!("{}.tar.gz", o.fleet.bundles[0]))).unwrap();
    let second = bundles.join(format!("{}.tar.gz", o.fleet.bundles[1]));
    let mut bytes = std::fs::read(&second).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&second, bytes).unwrap();

    let c = server_cli(&["check"], &damaged);
    let said = text(&c);
    assert_eq!(c.status.code(), Some(1), "{said}");
    assert!(said.contains("NOT sound"), "{said}");
    assert!(
        said.contains("bundle 1.0.0") && said.contains("No such file"),
        "{said}"
    );
    assert!(
        said.contains("bundle 2.0.0") && said.contains("is damaged"),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "kernex-server restore --from BACKUP_FILE --data-dir {}.restored",
            damaged.display()
        )),
        "{said}"
    );
}
