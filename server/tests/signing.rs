//! SPEC §7 on the server: signatures uploaded with a bundle or later, checked against
//! the archive, carried in deploy/rollback commands; `--trust-key` +
//! `--require-signatures`; `PUT /trust` and the `trust` heartbeat command.
#![allow(clippy::unwrap_used)]

mod support;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use chrono::{Duration, Utc};
use kernex_common::update_signing::{BundleMetadata, SecretKey, SignedDocument, TrustMetadata};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::*;

fn metadata_for(archive: &[u8], version: &str) -> BundleMetadata {
    BundleMetadata {
        bundle_version: version.into(),
        sha256: hex::encode(Sha256::digest(archive)),
        size_bytes: archive.len() as u64,
        device_types: vec![],
        expires: Utc::now() + Duration::days(30),
        allow_downgrade: false,
    }
}

fn signed(meta: &BundleMetadata, keys: &[&SecretKey]) -> SignedDocument {
    let mut doc = SignedDocument::sign_new(meta, keys[0]).unwrap();
    for k in &keys[1..] {
        doc.add_signature(k);
    }
    doc
}

/// Upload `archive` with a `signatures` part.
async fn upload_signed(app: &TestApp, archive: &[u8], doc: &SignedDocument) -> Resp {
    let (_, mut body) = multipart(archive, None);
    let boundary = "kernex-test-boundary-7d1f";
    // Insert the signatures part before the closing boundary.
    let end = format!("--{boundary}--\r\n");
    body.truncate(body.len() - end.len());
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"signatures\"; filename=\"b.tar.gz.sig.json\"\r\n\r\n{}\r\n{end}",
            serde_json::to_string(doc).unwrap()
        )
        .as_bytes(),
    );
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/bundles")
        .header("authorization", format!("Bearer {ADMIN}"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .unwrap();
    app.send(req).await
}

fn deploy_command(beat: &Value) -> &Value {
    beat["commands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "deploy" || c["type"] == "rollback")
        .expect("a bundle command")
}

#[tokio::test]
async fn signatures_uploaded_with_the_bundle_travel_in_the_deploy_command() {
    let app = TestApp::new();
    let key = SecretKey::generate();
    let archive = bundle_bytes("app", "1.0.0");
    let doc = signed(&metadata_for(&archive, "1.0.0"), &[&key]);
    let info = upload_signed(&app, &archive, &doc)
        .await
        .expect(StatusCode::CREATED);
    let got = app
        .get(&format!(
            "/api/v1/bundles/{}/signatures",
            info["id"].as_str().unwrap()
        ))
        .await
        .expect(StatusCode::OK);
    assert_eq!(got, serde_json::to_value(&doc).unwrap());

    let dev = app.device().await;
    app.deploy("1.0.0", &[&dev]).await;
    let beat = app.heartbeat(&dev, None, None).await.expect(StatusCode::OK);
    let cmd = deploy_command(&beat);
    assert_eq!(cmd["signed"]["metadata"], doc.metadata.as_str());
    assert_eq!(
        cmd["signed"]["signatures"][0]["keyid"],
        key.public().key_id()
    );
    // The re-sent command (from the work index's cache) carries them too.
    let again = app.heartbeat(&dev, None, None).await.expect(StatusCode::OK);
    assert_eq!(deploy_command(&again)["signed"], cmd["signed"]);
}

#[tokio::test]
async fn an_unsigned_bundle_command_has_no_signed_field() {
    let app = TestApp::new();
    app.bundle("1.0.0").await;
    let dev = app.device().await;
    app.deploy("1.0.0", &[&dev]).await;
    let beat = app.heartbeat(&dev, None, None).await.expect(StatusCode::OK);
    assert!(deploy_command(&beat).get("signed").is_none());
}

#[tokio::test]
async fn metadata_that_does_not_describe_the_archive_is_refused_and_nothing_is_stored() {
    let app = TestApp::new();
    let key = SecretKey::generate();
    let archive = bundle_bytes("app", "1.0.0");
    let good = metadata_for(&archive, "1.0.0");
    let cases = [
        (
            BundleMetadata {
                bundle_version: "1.0.1".into(),
                ..good.clone()
            },
            "version",
        ),
        (
            BundleMetadata {
                sha256: "ab".repeat(32),
                ..good.clone()
            },
            "sha256",
        ),
        (
            BundleMetadata {
                size_bytes: 7,
                ..good.clone()
            },
            "size",
        ),
    ];
    for (meta, what) in cases {
        let r = upload_signed(&app, &archive, &signed(&meta, &[&key])).await;
        let body = r.expect(StatusCode::BAD_REQUEST);
        assert!(
            body["message"].as_str().unwrap().contains(what),
            "{what}: {body}"
        );
    }
    // Not a signed document at all.
    let mut doc = signed(&good, &[&key]);
    doc.signatures[0].sig = "bm90IGEgc2lnbmF0dXJl".into();
    upload_signed(&app, &archive, &doc)
        .await
        .expect(StatusCode::BAD_REQUEST);
    let list = app.get("/api/v1/bundles").await.expect(StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 0, "nothing stored: {list}");
}

#[tokio::test]
async fn more_signers_add_their_signatures_later() {
    let app = TestApp::new();
    let (a, b) = (SecretKey::generate(), SecretKey::generate());
    let archive = bundle_bytes("app", "2.0.0");
    let info = app.upload(&archive, None).await.expect(StatusCode::CREATED);
    let id = info["id"].as_str().unwrap();
    let path = format!("/api/v1/bundles/{id}/signatures");
    app.get(&path).await.expect(StatusCode::NOT_FOUND);

    let meta = metadata_for(&archive, "2.0.0");
    let first = signed(&meta, &[&a]);
    let r = app.post(&path, serde_json::to_value(&first).unwrap()).await;
    assert_eq!(
        r.expect(StatusCode::OK)["signatures"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // B signs the same text.
    let mut second = first.clone();
    second.signatures.clear();
    second.add_signature(&b);
    let r = app
        .post(&path, serde_json::to_value(&second).unwrap())
        .await;
    let stored = r.expect(StatusCode::OK);
    let ids: Vec<_> = stored["signatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["keyid"].clone())
        .collect();
    assert_eq!(
        ids,
        vec![json!(a.public().key_id()), json!(b.public().key_id())]
    );
    // Repeating is harmless.
    app.post(&path, serde_json::to_value(&second).unwrap())
        .await
        .expect(StatusCode::OK);
    // Different metadata text (another expiry) cannot be merged.
    let other = signed(
        &BundleMetadata {
            expires: meta.expires + Duration::days(1),
            ..meta.clone()
        },
        &[&b],
    );
    let r = app.post(&path, serde_json::to_value(&other).unwrap()).await;
    assert_eq!(r.code(), "conflict");
    // Wrong archive, unknown bundle, bad body, device token.
    let wrong = signed(
        &BundleMetadata {
            size_bytes: 1,
            ..meta.clone()
        },
        &[&a],
    );
    app.post(&path, serde_json::to_value(&wrong).unwrap())
        .await
        .expect(StatusCode::BAD_REQUEST);
    app.post(
        "/api/v1/bundles/nope/signatures",
        serde_json::to_value(&first).unwrap(),
    )
    .await
    .expect(StatusCode::NOT_FOUND);
    app.post(&path, json!({"metadata": 5}))
        .await
        .expect(StatusCode::BAD_REQUEST);
    let dev = app.device().await;
    let r = app
        .call(
            Method::POST,
            &path,
            Some(&dev.token),
            Some(serde_json::to_value(&first).unwrap()),
        )
        .await;
    r.expect(StatusCode::FORBIDDEN);
    let after = app.get(&path).await.expect(StatusCode::OK);
    assert_eq!(after, stored);
}

fn key_file(dir: &std::path::Path, name: &str, key: &SecretKey) -> std::path::PathBuf {
    let p = dir.join(format!("{name}.pub"));
    std::fs::write(&p, format!("{}\n", key.public())).unwrap();
    p
}

#[tokio::test]
async fn require_signatures_refuses_deployments_short_of_the_threshold() {
    let keys = tempfile::tempdir().unwrap();
    let (a, b) = (SecretKey::generate(), SecretKey::generate());
    let (pa, pb) = (
        key_file(keys.path(), "a", &a),
        key_file(keys.path(), "b", &b),
    );
    let app = TestApp::with(|s| {
        s.trust_keys = vec![pa, pb];
        s.require_signatures = 2;
    });
    let dev = app.device().await;
    let deploy = |v: &str| json!({"bundle_version": v, "target_device_ids": [dev.id]});

    app.bundle("1.0.0").await;
    let r = app.post("/api/v1/deployments", deploy("1.0.0")).await;
    let body = r.expect(StatusCode::BAD_REQUEST);
    assert!(
        body["message"].as_str().unwrap().contains("no signatures"),
        "{body}"
    );

    // One trusted signature plus one from a stranger: still short.
    let archive = bundle_bytes("app", "1.1.0");
    let stranger = SecretKey::generate();
    let doc = signed(&metadata_for(&archive, "1.1.0"), &[&a, &stranger]);
    upload_signed(&app, &archive, &doc)
        .await
        .expect(StatusCode::CREATED);
    let body = app
        .post("/api/v1/deployments", deploy("1.1.0"))
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert!(
        body["message"].as_str().unwrap().contains("1 of the 2"),
        "{body}"
    );

    let archive = bundle_bytes("app", "1.2.0");
    let doc = signed(&metadata_for(&archive, "1.2.0"), &[&a, &b]);
    upload_signed(&app, &archive, &doc)
        .await
        .expect(StatusCode::CREATED);
    app.post("/api/v1/deployments", deploy("1.2.0"))
        .await
        .expect(StatusCode::CREATED);

    // A rollback to an unsigned bundle is refused the same way.
    let r = app
        .post(
            "/api/v1/devices/rollback",
            json!({"bundle_version": "1.0.0", "target_device_ids": [dev.id]}),
        )
        .await;
    assert!(
        r.expect(StatusCode::BAD_REQUEST)["message"]
            .as_str()
            .unwrap()
            .contains("no signatures")
    );
}

#[tokio::test]
async fn require_signatures_needs_enough_trust_keys_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = kernex_server::ServerSettings::for_data_dir(dir.path());
    settings.require_signatures = 1;
    let e = kernex_server::open(&settings).unwrap_err();
    assert!(e.to_string().contains("--require-signatures"), "{e}");
    let bad = dir.path().join("bad.pub");
    std::fs::write(&bad, "ssh-ed25519 AAAA").unwrap();
    settings.trust_keys = vec![bad];
    let e = kernex_server::open(&settings).unwrap_err();
    assert!(e.to_string().contains("bad.pub"), "{e}");
}

fn trust_doc(keys: &[&SecretKey], version: u64, signers: &[&SecretKey]) -> SignedDocument {
    let meta = TrustMetadata {
        keys: keys.iter().map(|k| k.public().to_string()).collect(),
        threshold: 1,
        version,
        expires: Utc::now() + Duration::days(365),
    };
    signed_trust(&meta, signers)
}

fn signed_trust(meta: &TrustMetadata, signers: &[&SecretKey]) -> SignedDocument {
    let mut doc = SignedDocument::sign_new(meta, signers[0]).unwrap();
    for k in &signers[1..] {
        doc.add_signature(k);
    }
    doc
}

async fn beat_with_trust(app: &TestApp, dev: &Device, trust_version: Option<u64>) -> Value {
    let body = json!({
        "agent_version": "0.1.0", "cpu_pct": 1.0, "memory_mb": 1.0, "status": "idle",
        "trust_version": trust_version,
    });
    app.call(
        Method::POST,
        &format!("/api/v1/devices/{}/heartbeat", dev.id),
        Some(&dev.token),
        Some(body),
    )
    .await
    .expect(StatusCode::OK)
}

fn trust_commands(beat: &Value) -> Vec<Value> {
    beat["commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "trust")
        .cloned()
        .collect()
}

#[tokio::test]
async fn put_trust_keeps_the_newest_and_heartbeats_carry_it_while_lower() {
    let app = TestApp::new();
    let dev = app.device().await;
    app.get("/api/v1/trust").await.expect(StatusCode::NOT_FOUND);
    assert!(trust_commands(&beat_with_trust(&app, &dev, None).await).is_empty());

    let (old, new) = (SecretKey::generate(), SecretKey::generate());
    let v2 = trust_doc(&[&new], 2, &[&old]);
    let r = app
        .put("/api/v1/trust", serde_json::to_value(&v2).unwrap())
        .await;
    r.expect(StatusCode::OK);
    assert_eq!(
        app.get("/api/v1/trust").await.expect(StatusCode::OK),
        serde_json::to_value(&v2).unwrap()
    );

    for reported in [None, Some(0), Some(1)] {
        let cmds = trust_commands(&beat_with_trust(&app, &dev, reported).await);
        assert_eq!(cmds.len(), 1, "{reported:?}");
        assert_eq!(cmds[0]["document"], serde_json::to_value(&v2).unwrap());
    }
    assert!(trust_commands(&beat_with_trust(&app, &dev, Some(2)).await).is_empty());

    // Not newer → 409; newer but not signed by the stored set's keys → 400.
    let r = app
        .put(
            "/api/v1/trust",
            serde_json::to_value(trust_doc(&[&old], 2, &[&new])).unwrap(),
        )
        .await;
    assert_eq!(r.code(), "conflict");
    let r = app
        .put(
            "/api/v1/trust",
            serde_json::to_value(trust_doc(&[&old], 3, &[&old])).unwrap(),
        )
        .await;
    let body = r.expect(StatusCode::BAD_REQUEST);
    assert!(
        body["message"].as_str().unwrap().contains("signature"),
        "{body}"
    );
    // Malformed metadata, an impossible threshold, a device token.
    app.put("/api/v1/trust", json!({"metadata": "{}", "signatures": []}))
        .await
        .expect(StatusCode::BAD_REQUEST);
    let impossible = TrustMetadata {
        keys: vec![new.public().to_string()],
        threshold: 2,
        version: 4,
        expires: Utc::now() + Duration::days(1),
    };
    app.put(
        "/api/v1/trust",
        serde_json::to_value(signed_trust(&impossible, &[&new])).unwrap(),
    )
    .await
    .expect(StatusCode::BAD_REQUEST);
    let r = app
        .call(
            Method::PUT,
            "/api/v1/trust",
            Some(&dev.token),
            Some(serde_json::to_value(&v2).unwrap()),
        )
        .await;
    r.expect(StatusCode::FORBIDDEN);

    // A proper next version, signed by the current (v2) key.
    let v3 = trust_doc(&[&old, &new], 3, &[&new]);
    app.put("/api/v1/trust", serde_json::to_value(&v3).unwrap())
        .await
        .expect(StatusCode::OK);
    let cmds = trust_commands(&beat_with_trust(&app, &dev, Some(2)).await);
    assert_eq!(cmds[0]["document"], serde_json::to_value(&v3).unwrap());
}

#[tokio::test]
async fn a_pending_device_gets_no_trust_command() {
    let app = TestApp::new();
    let k = SecretKey::generate();
    app.put(
        "/api/v1/trust",
        serde_json::to_value(trust_doc(&[&k], 1, &[&k])).unwrap(),
    )
    .await
    .expect(StatusCode::OK);
    let dev = app.pending_device().await;
    assert!(
        beat_with_trust(&app, &dev, None).await["commands"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn with_trust_keys_the_first_trust_document_must_be_signed_by_them() {
    let keys = tempfile::tempdir().unwrap();
    let ops = SecretKey::generate();
    let path = key_file(keys.path(), "ops", &ops);
    let app = TestApp::with(|s| s.trust_keys = vec![path]);
    // A stolen operator token alone cannot pin the chain with its own document.
    let thief = SecretKey::generate();
    let r = app
        .put(
            "/api/v1/trust",
            serde_json::to_value(trust_doc(&[&thief], u64::MAX, &[&thief])).unwrap(),
        )
        .await;
    let body = r.expect(StatusCode::BAD_REQUEST);
    assert!(
        body["message"].as_str().unwrap().contains("--trust-key"),
        "{body}"
    );
    app.get("/api/v1/trust").await.expect(StatusCode::NOT_FOUND);
    let good = trust_doc(&[&thief, &ops], 2, &[&ops]);
    app.put("/api/v1/trust", serde_json::to_value(&good).unwrap())
        .await
        .expect(StatusCode::OK);
}
