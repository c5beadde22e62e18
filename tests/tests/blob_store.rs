//! Bundles in an S3-compatible bucket (SPEC §8 `--blob-url`): two real `kernex-server`
//! replicas on one PostgreSQL database keep their archives in one bucket of a real S3
//! endpoint (moto's server, over HTTP on loopback), through the same AWS client that
//! talks to S3 or MinIO. What one replica stores the other serves, byte for byte and by
//! `Range`; a delete removes the object; a backup carries the archive out of the bucket
//! and a restore puts it into another.
//!
//! PostgreSQL as in `scale_out.rs`; the endpoint from `scripts/s3-server.sh`. Without
//! either the tests say SKIPPED and pass, except under CI (`CI=true`), where they fail.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use kernex_tests::fleet::{Api, bundle};
use kernex_tests::{ServerProcess, bin, postgres, s3};
use reqwest::StatusCode;

const ADMIN: &str = "blob-admin";
const ENROLL: &str = "blob-enroll";

/// A PostgreSQL cluster and an S3 endpoint, or `None` (SKIPPED) outside CI.
fn services() -> Option<(String, String)> {
    let found = postgres::cluster().and_then(|pg| s3::endpoint().map(|s3| (pg, s3)));
    match found {
        Ok(both) => Some(both),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI runs the blob-store tests, but: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: no PostgreSQL or S3 endpoint for the blob-store tests ({why})");
            None
        }
    }
}

/// A replica on `database` with its own data dir and the shared bucket `blob_url`.
fn replica(dir: &Path, database: &str, blob_url: &str, endpoint: &str) -> ServerProcess {
    ServerProcess::start_with_args_env(
        dir,
        ADMIN,
        ENROLL,
        &["--database-url", database, "--blob-url", blob_url],
        &s3::env(endpoint),
    )
    .unwrap()
}

fn server_cli(args: &[&str], endpoint: &str) -> std::process::Output {
    std::process::Command::new(bin("kernex-server").unwrap())
        .args(args)
        .envs(s3::env(endpoint))
        .output()
        .unwrap()
}

async fn download(api: &Api, id: &str, range: Option<&str>) -> (StatusCode, Vec<u8>) {
    let mut req = api
        .http
        .get(format!("{}/bundles/{id}", api.base))
        .bearer_auth(&api.admin);
    if let Some(r) = range {
        req = req.header("Range", r);
    }
    let resp = req.send().await.unwrap();
    (resp.status(), resp.bytes().await.unwrap().to_vec())
}

/// A real bundle archive carrying `payload` incompressible bytes (a SHA-256 chain).
fn large_bundle(version: &str, payload: usize) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let manifest =
        serde_json::json!({"name": "big", "version": version, "deploy": {"script": "deploy.sh"}});
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    std::fs::write(dir.path().join("deploy.sh"), "#!/bin/sh\necho ok\n").unwrap();
    let mut data = Vec::with_capacity(payload + 32);
    let mut block = Sha256::digest(version.as_bytes());
    while data.len() < payload {
        data.extend_from_slice(&block);
        block = Sha256::digest(block);
    }
    std::fs::write(dir.path().join("payload.bin"), data).unwrap();
    let mut out = Vec::new();
    kernex_common::bundle::pack(dir.path(), &mut out).unwrap();
    out
}

/// No `*.tar.gz` anywhere below `dir`: with a bucket, archives never stay on local disk.
fn no_local_archives(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return true;
    };
    entries.flatten().all(|e| {
        let p = e.path();
        if p.is_dir() {
            no_local_archives(&p)
        } else {
            !p.to_string_lossy().ends_with(".tar.gz")
        }
    })
}

#[tokio::test]
async fn replicas_keep_bundles_in_one_bucket() {
    let Some((cluster, endpoint)) = services() else {
        return;
    };
    let database = postgres::fresh_database(&cluster).unwrap();
    let bucket = s3::fresh_bucket(&endpoint).unwrap();
    let blob_url = format!("s3://{bucket}/fleet/bundles");
    let scratch = tempfile::tempdir().unwrap();
    let a = replica(
        &scratch.path().join("a"),
        &database.url,
        &blob_url,
        &endpoint,
    );
    let b = replica(
        &scratch.path().join("b"),
        &database.url,
        &blob_url,
        &endpoint,
    );
    let (api_a, api_b) = (Api::new(&a.url(""), ADMIN), Api::new(&b.url(""), ADMIN));

    // Uploaded to A: the object is in the bucket under the prefix, not on A's disk.
    let archive = bundle("1.0.0").unwrap();
    let uploaded = api_a.upload(archive.clone()).await.unwrap();
    let id = uploaded["id"].as_str().unwrap().to_owned();
    let object = format!("/{bucket}/fleet/bundles/{id}.tar.gz");
    assert_eq!(s3::raw_request(&endpoint, "HEAD", &object).unwrap(), 200);
    assert!(no_local_archives(scratch.path()));

    // B serves it whole and by range, byte for byte.
    let (status, whole) = download(&api_b, &id, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(whole, archive);
    let (status, tail) = download(&api_b, &id, Some("bytes=100-")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail, archive[100..]);
    let (status, middle) = download(&api_b, &id, Some("bytes=10-19")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(middle, archive[10..20]);

    // An archive above the 10 MB put limit goes up in parts; B serves it whole.
    let large = large_bundle("2.0.0", 12 << 20);
    assert!(large.len() > 10 << 20, "{} bytes", large.len());
    let uploaded = api_a.upload(large.clone()).await.unwrap();
    let large_id = uploaded["id"].as_str().unwrap();
    let (status, got) = download(&api_b, large_id, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(got == large, "the large archive differs after the bucket");
    let (status, got) = download(&api_b, large_id, Some("bytes=-5")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(got, large[large.len() - 5..]);

    // A backup taken through B carries the archive out of the bucket; restored into a
    // new database and another prefix, a server there serves the same bytes.
    let backup = api_b
        .http
        .get(format!("{}/backup", api_b.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(backup.status(), StatusCode::OK);
    let file = scratch.path().join("fleet.tar");
    std::fs::write(&file, backup.bytes().await.unwrap()).unwrap();
    let restored_db = postgres::fresh_database(&cluster).unwrap();
    let restored_url = format!("s3://{bucket}/restored");
    let out = server_cli(
        &[
            "restore",
            "--from",
            file.to_str().unwrap(),
            "--database-url",
            &restored_db.url,
            "--blob-url",
            &restored_url,
            "--data-dir",
            scratch.path().join("restore").to_str().unwrap(),
        ],
        &endpoint,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored_object = format!("/{bucket}/restored/{id}.tar.gz");
    assert_eq!(
        s3::raw_request(&endpoint, "HEAD", &restored_object).unwrap(),
        200
    );
    let c = replica(
        &scratch.path().join("c"),
        &restored_db.url,
        &restored_url,
        &endpoint,
    );
    let (status, again) = download(&Api::new(&c.url(""), ADMIN), &id, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, archive);
    assert!(no_local_archives(scratch.path()));

    // `check` reads every archive back from the bucket while the replicas run; an
    // object overwritten behind the server's back (here: emptied) is named as damaged.
    let check = |scratch: &Path| {
        server_cli(
            &[
                "check",
                "--database-url",
                &database.url,
                "--blob-url",
                &blob_url,
                "--data-dir",
                scratch.join("check").to_str().unwrap(),
            ],
            &endpoint,
        )
    };
    let out = check(scratch.path());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("sound") && said.contains("2 bundle files verified"),
        "{said}"
    );
    let large_object = format!("/{bucket}/fleet/bundles/{large_id}.tar.gz");
    assert_eq!(
        s3::raw_request(&endpoint, "PUT", &large_object).unwrap(),
        200
    );
    let out = check(scratch.path());
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "{large_id} in s3://{bucket}/fleet/bundles) is damaged: 0 bytes"
        )),
        "{said}"
    );
    assert!(said.contains("kernex-server restore"), "{said}");

    // Deleted through B: the object is gone, and A answers 404 for it.
    api_b
        .op(
            reqwest::Method::DELETE,
            &format!("/bundles/{id}"),
            None,
            StatusCode::NO_CONTENT,
        )
        .await
        .unwrap();
    assert_eq!(s3::raw_request(&endpoint, "HEAD", &object).unwrap(), 404);
    let (status, _) = download(&api_a, &id, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    drop((a, b, c));
}

/// A bucket is for replicas on a database: the embedded store refuses `--blob-url`
/// with a clear message, and starts nothing.
#[test]
fn the_embedded_store_refuses_a_bucket() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("sled");
    let out = std::process::Command::new(bin("kernex-server").unwrap())
        .args(["--blob-url", "s3://fleet/bundles", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("--database-url"), "{said}");
    assert!(!dir.join("db").exists(), "nothing is created: {said}");
}
