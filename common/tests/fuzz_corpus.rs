//! Every file of the fuzz corpus (`fuzz/corpus/<target>/`: seeds, inputs the fuzzer
//! found interesting, and regressions of crashes it found) replayed through the same
//! target bodies `cargo fuzz` runs, on stable without a sanitizer: a parser change that
//! panics on any of them fails `cargo test`. `just fuzz` grows the corpus.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

#[path = "../../fuzz/src/lib.rs"]
mod targets;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no inputs", dir.display());
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect()
}

fn replay(target: &str, run: fn(&[u8])) {
    for (path, data) in corpus(target) {
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{target} panics on {}", path.display());
    }
}

#[test]
fn the_manifest_corpus_replays_cleanly() {
    replay("manifest", targets::manifest);
}

#[test]
fn the_archive_corpus_replays_cleanly() {
    replay("archive", targets::archive);
}

#[test]
fn the_range_corpus_replays_cleanly() {
    replay("range", targets::range);
}

#[test]
fn the_registration_corpus_replays_cleanly() {
    replay("registration", targets::registration);
}

/// The registration seed really is signed by the fuzz key, so the fuzzer starts from an
/// input that gets through the whole PSS check.
#[test]
fn the_signed_registration_seed_verifies() {
    use kernex_common::signing::DevicePublicKey;
    let data = std::fs::read(corpus_dir("registration").join("seed-signed")).unwrap();
    let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
    let (sig, body) = data[2..].split_at(len);
    let sig = std::str::from_utf8(sig).unwrap();
    let key = DevicePublicKey::from_pem(targets::FUZZ_DEVICE_KEY).unwrap();
    key.verify(body, sig).unwrap();
    let mut tampered = body.to_vec();
    tampered[10] ^= 1;
    assert!(key.verify(&tampered, sig).is_err());
}
