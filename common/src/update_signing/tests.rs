//! Every refusal of [`verify_bundle`] and [`TrustSet::accept_update`], one test each.

use super::*;

const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn meta(version: &str) -> BundleMetadata {
    BundleMetadata {
        bundle_version: version.into(),
        sha256: SHA.into(),
        size_bytes: 1000,
        device_types: vec![],
        expires: Utc::now() + Duration::days(30),
        allow_downgrade: false,
    }
}

fn check(version: &str) -> BundleCheck<'_> {
    BundleCheck {
        bundle_version: version,
        sha256: SHA,
        size_bytes: 1000,
        device_type: "gateway",
        now: Utc::now(),
        highest_installed: None,
        rollback_to_known_good: false,
    }
}

fn one_key() -> (SecretKey, TrustSet) {
    let k = SecretKey::generate();
    let t = TrustSet::new(vec![k.public()], 1).unwrap();
    (k, t)
}

#[test]
fn key_text_round_trips_and_key_id_is_16_hex_of_sha256() {
    let k = SecretKey::generate();
    let text = k.public().to_string();
    assert!(text.starts_with("ed25519:"));
    let back = PublicKey::parse(&format!("  {text}\n")).unwrap();
    assert_eq!(back, k.public());
    let raw = STANDARD
        .decode(text.trim_start_matches("ed25519:"))
        .unwrap();
    assert_eq!(raw.len(), 32);
    assert_eq!(back.key_id(), hex::encode(Sha256::digest(&raw))[..16]);
    let again = SecretKey::parse(&k.to_file_text()).unwrap();
    assert_eq!(again.public(), k.public());
}

#[test]
fn bad_keys_are_refused_with_a_reason() {
    assert!(matches!(
        PublicKey::parse("rsa:abc"),
        Err(Refusal::BadKey(_))
    ));
    assert!(matches!(
        PublicKey::parse("ed25519:!!"),
        Err(Refusal::BadKey(_))
    ));
    assert!(matches!(
        PublicKey::parse(&format!("ed25519:{}", STANDARD.encode([1u8; 31]))),
        Err(Refusal::BadKey(_))
    ));
    assert!(matches!(
        SecretKey::parse("ed25519:AAAA"),
        Err(Refusal::BadKey(_))
    ));
}

#[test]
fn a_properly_signed_bundle_passes() {
    let (k, t) = one_key();
    let doc = SignedDocument::sign_new(&meta("1.2.0"), &k).unwrap();
    let got = verify_bundle(&t, Some(&doc), &check("1.2.0")).unwrap();
    assert_eq!(got, meta("1.2.0").clone_with_expiry(got.expires));
}

impl BundleMetadata {
    fn clone_with_expiry(mut self, e: DateTime<Utc>) -> Self {
        self.expires = e;
        self
    }
}

#[test]
fn unsigned_is_refused() {
    let (k, t) = one_key();
    assert_eq!(
        verify_bundle(&t, None, &check("1.0.0")),
        Err(Refusal::Unsigned { needed: 1 })
    );
    let mut doc = SignedDocument::sign_new(&meta("1.0.0"), &k).unwrap();
    doc.signatures.clear();
    assert!(matches!(
        verify_bundle(&t, Some(&doc), &check("1.0.0")),
        Err(Refusal::Unsigned { .. })
    ));
}

#[test]
fn an_untrusted_key_does_not_count() {
    let (_, t) = one_key();
    let stranger = SecretKey::generate();
    let doc = SignedDocument::sign_new(&meta("1.0.0"), &stranger).unwrap();
    let e = verify_bundle(&t, Some(&doc), &check("1.0.0")).unwrap_err();
    assert!(matches!(
        e,
        Refusal::TooFewSignatures {
            valid: 0,
            needed: 1,
            ..
        }
    ));
    assert!(e.to_string().contains("is not a trusted key"), "{e}");
}

#[test]
fn a_tampered_metadata_text_fails_the_signature() {
    let (k, t) = one_key();
    let mut doc = SignedDocument::sign_new(&meta("1.0.0"), &k).unwrap();
    doc.metadata = doc.metadata.replace("1000", "1001");
    let e = verify_bundle(&t, Some(&doc), &check("1.0.0")).unwrap_err();
    assert!(e.to_string().contains("does not verify"), "{e}");
}

#[test]
fn threshold_counts_distinct_trusted_keys() {
    let a = SecretKey::generate();
    let b = SecretKey::generate();
    let t = TrustSet::new(vec![a.public(), b.public()], 2).unwrap();
    let mut doc = SignedDocument::sign_new(&meta("1.0.0"), &a).unwrap();
    // The same key's signature twice is still one key.
    let dup = doc.signatures[0].clone();
    doc.signatures.push(dup);
    assert!(matches!(
        verify_bundle(&t, Some(&doc), &check("1.0.0")),
        Err(Refusal::TooFewSignatures {
            valid: 1,
            needed: 2,
            ..
        })
    ));
    doc.add_signature(&b);
    assert!(verify_bundle(&t, Some(&doc), &check("1.0.0")).is_ok());
}

#[test]
fn version_checksum_and_size_must_match_the_command() {
    let (k, t) = one_key();
    let doc = SignedDocument::sign_new(&meta("1.0.0"), &k).unwrap();
    assert!(matches!(
        verify_bundle(&t, Some(&doc), &check("1.0.1")),
        Err(Refusal::VersionMismatch { .. })
    ));
    let other = "f".repeat(64);
    let c = BundleCheck {
        sha256: &other,
        ..check("1.0.0")
    };
    assert!(matches!(
        verify_bundle(&t, Some(&doc), &c),
        Err(Refusal::ChecksumMismatch { .. })
    ));
    let c = BundleCheck {
        size_bytes: 999,
        ..check("1.0.0")
    };
    assert_eq!(
        verify_bundle(&t, Some(&doc), &c),
        Err(Refusal::SizeMismatch {
            signed: 1000,
            actual: 999
        })
    );
}

#[test]
fn wrong_device_type_is_refused() {
    let (k, t) = one_key();
    let mut m = meta("1.0.0");
    m.device_types = vec!["kiosk".into(), "camera".into()];
    let doc = SignedDocument::sign_new(&m, &k).unwrap();
    let e = verify_bundle(&t, Some(&doc), &check("1.0.0")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "device type gateway is not among the signed device types (kiosk, camera)"
    );
    let c = BundleCheck {
        device_type: "camera",
        ..check("1.0.0")
    };
    assert!(verify_bundle(&t, Some(&doc), &c).is_ok());
}

#[test]
fn expired_metadata_is_refused() {
    let (k, t) = one_key();
    let mut m = meta("1.0.0");
    m.expires = Utc::now() - Duration::seconds(1);
    let doc = SignedDocument::sign_new(&m, &k).unwrap();
    let e = verify_bundle(&t, Some(&doc), &check("1.0.0")).unwrap_err();
    assert!(matches!(e, Refusal::Expired(_)));
    assert!(e.to_string().contains("expired"));
}

#[test]
fn a_downgrade_is_refused_unless_rollback_or_allowed() {
    let (k, t) = one_key();
    let doc = SignedDocument::sign_new(&meta("1.9.0"), &k).unwrap();
    let c = BundleCheck {
        highest_installed: Some("1.10.0"),
        ..check("1.9.0")
    };
    assert_eq!(
        verify_bundle(&t, Some(&doc), &c),
        Err(Refusal::Downgrade {
            version: "1.9.0".into(),
            installed: "1.10.0".into()
        })
    );
    // The same version again or a higher one is fine.
    let c2 = BundleCheck {
        highest_installed: Some("1.9.0"),
        ..check("1.9.0")
    };
    assert!(verify_bundle(&t, Some(&doc), &c2).is_ok());
    // A rollback to a version the device ran.
    let c3 = BundleCheck {
        rollback_to_known_good: true,
        ..c.clone()
    };
    assert!(verify_bundle(&t, Some(&doc), &c3).is_ok());
    // Signed permission.
    let mut m = meta("1.9.0");
    m.allow_downgrade = true;
    let allowed = SignedDocument::sign_new(&m, &k).unwrap();
    assert!(verify_bundle(&t, Some(&allowed), &c).is_ok());
}

#[test]
fn a_non_semver_signed_version_is_refused() {
    let (k, t) = one_key();
    let doc = SignedDocument::sign_new(&meta("v2"), &k).unwrap();
    assert_eq!(
        verify_bundle(&t, Some(&doc), &check("v2")),
        Err(Refusal::NotSemver("v2".into()))
    );
}

#[test]
fn malformed_metadata_and_signatures_are_refused() {
    let (k, t) = one_key();
    let mut doc = SignedDocument::sign_new(&"not an object", &k).unwrap();
    assert!(matches!(
        verify_bundle(&t, Some(&doc), &check("1.0.0")),
        Err(Refusal::Malformed(_))
    ));
    doc.signatures[0].sig = "short".into();
    assert!(matches!(doc.check_shape(), Err(Refusal::Malformed(_))));
}

fn trust_doc(
    keys: &[&SecretKey],
    threshold: usize,
    version: u64,
    signers: &[&SecretKey],
) -> SignedDocument {
    let m = TrustMetadata {
        keys: keys.iter().map(|k| k.public().to_string()).collect(),
        threshold,
        version,
        expires: Utc::now() + Duration::days(365),
    };
    let mut doc = SignedDocument::sign_new(&m, signers[0]).unwrap();
    for s in &signers[1..] {
        doc.add_signature(s);
    }
    doc
}

#[test]
fn rotation_accepts_a_higher_version_signed_by_the_current_keys() {
    let (old, t) = one_key();
    let new = SecretKey::generate();
    let doc = trust_doc(&[&new], 1, 2, &[&old]);
    let (meta, next) = t.accept_update(&doc, Utc::now()).unwrap();
    assert_eq!(meta.version, 2);
    assert_eq!(next.version, 2);
    assert_eq!(next.keys(), &[new.public()]);
    // The new set now refuses the old key.
    let bundle = SignedDocument::sign_new(&super::tests::meta("1.0.0"), &old).unwrap();
    assert!(verify_bundle(&next, Some(&bundle), &check("1.0.0")).is_err());
}

#[test]
fn rotation_refuses_stale_versions_new_key_signatures_and_expiry() {
    let (old, t) = one_key();
    let new = SecretKey::generate();
    let (_, next) = t
        .accept_update(&trust_doc(&[&new], 1, 3, &[&old]), Utc::now())
        .unwrap();
    // Replaying version 3 or an older one.
    assert_eq!(
        next.accept_update(&trust_doc(&[&old], 1, 3, &[&new]), Utc::now())
            .unwrap_err(),
        Refusal::StaleTrust {
            offered: 3,
            current: 3
        }
    );
    // Signed only by the key it introduces (not by the current set).
    let evil = SecretKey::generate();
    assert!(matches!(
        next.accept_update(&trust_doc(&[&evil], 1, 9, &[&evil]), Utc::now()),
        Err(Refusal::TooFewSignatures { .. })
    ));
    // Expired.
    let mut m = trust_doc(&[&new], 1, 5, &[&new]).trust_metadata().unwrap();
    m.expires = Utc::now() - Duration::seconds(5);
    let expired = SignedDocument::sign_new(&m, &new).unwrap();
    assert!(matches!(
        next.accept_update(&expired, Utc::now()),
        Err(Refusal::Expired(_))
    ));
    // A threshold the key list cannot meet.
    let bad = trust_doc(&[&new], 2, 6, &[&new]);
    assert!(matches!(
        next.accept_update(&bad, Utc::now()),
        Err(Refusal::BadKey(_))
    ));
}

#[test]
fn threshold_two_rotation_needs_both_current_keys() {
    let a = SecretKey::generate();
    let b = SecretKey::generate();
    let t = TrustSet::new(vec![a.public(), b.public()], 2).unwrap();
    let c = SecretKey::generate();
    assert!(
        t.accept_update(&trust_doc(&[&c], 1, 1, &[&a]), Utc::now())
            .is_err()
    );
    assert!(
        t.accept_update(&trust_doc(&[&c], 1, 1, &[&a, &b]), Utc::now())
            .is_ok()
    );
}

#[test]
fn merge_adds_only_signatures_over_the_same_text() {
    let a = SecretKey::generate();
    let b = SecretKey::generate();
    let mut doc = SignedDocument::sign_new(&meta("1.0.0"), &a).unwrap();
    let mut other = doc.clone();
    other.signatures.clear();
    other.add_signature(&b);
    assert_eq!(doc.merge(&other).unwrap(), 1);
    assert_eq!(doc.merge(&other).unwrap(), 0);
    let different = SignedDocument::sign_new(&meta("1.0.1"), &b).unwrap();
    assert!(doc.merge(&different).is_err());
}

#[test]
fn expiry_spans_parse() {
    let now = Utc::now();
    assert_eq!(parse_expiry("90d", now).unwrap(), now + Duration::days(90));
    assert_eq!(parse_expiry("1y", now).unwrap(), now + Duration::days(365));
    assert_eq!(parse_expiry("12h", now).unwrap(), now + Duration::hours(12));
    assert!(parse_expiry("2030-01-01T00:00:00Z", now).is_ok());
    for bad in ["", "d", "0d", "-1d", "5w", "x9d"] {
        assert!(parse_expiry(bad, now).is_err(), "{bad}");
    }
}

#[test]
fn higher_version_orders_by_semver() {
    assert_eq!(higher_version(Some("1.10.0"), "1.9.0"), "1.10.0");
    assert_eq!(higher_version(Some("1.9.0"), "1.10.0"), "1.10.0");
    assert_eq!(higher_version(None, "0.1.0"), "0.1.0");
    assert_eq!(higher_version(Some("weird"), "0.1.0"), "0.1.0");
}
