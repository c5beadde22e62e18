//! Bodies of the fuzz targets: each takes arbitrary bytes, feeds them to one parser that
//! sees input from outside, and checks what must hold whatever the input — no panic, and
//! the parser's own promises (a range inside the body, a manifest that survives a round
//! trip, an archive accepted only with a valid manifest). `fuzz_targets/*.rs` hand them
//! to libFuzzer; `common/tests/fuzz_corpus.rs` replays the kept corpus through them in
//! `cargo test` (stable, no sanitizer), so every crash once found stays fixed.
//!
//! ```
//! kernex_fuzz::range(b"\x00\x00\x00\x00\x00\x00\x00\x0abytes=2-");
//! ```

use std::io::Cursor;

use kernex_common::api::RegisterRequest;
use kernex_common::bundle::{self, Limits};
use kernex_common::manifest::Manifest;
use kernex_common::range::{RangeRequest, parse_range};
use kernex_common::signing::DevicePublicKey;

/// The public half of a throw-away 2048-bit key: signatures over seed bodies made with
/// it let the fuzzer reach the PSS check itself, not only the base64 decoding.
pub const FUZZ_DEVICE_KEY: &str = include_str!("../keys/fuzz-device.pub.pem");

/// `manifest.json` bytes: parse and validate; what is accepted re-serialises to bytes
/// that parse to the same manifest.
pub fn manifest(data: &[u8]) {
    let Ok(m) = Manifest::from_slice(data) else {
        return;
    };
    let again = serde_json::to_vec(&m).expect("a parsed manifest serialises");
    let back = Manifest::from_slice(&again).expect("a serialised valid manifest parses");
    assert_eq!(back, m, "manifest round trip changed it");
    assert!(
        m.scripts().count() >= 1,
        "a valid manifest names a deploy script"
    );
}

/// A `.tar.gz` upload: the archive checker must refuse or accept without panicking, and
/// what it accepts has a manifest that validates on its own. Small limits keep each run
/// fast (a tar bomb is refused by them, as it would be by the real ones).
pub fn archive(data: &[u8]) {
    let limits = Limits {
        max_entries: 256,
        max_unpacked_bytes: 4 * 1024 * 1024,
        max_manifest_bytes: 64 * 1024,
    };
    if let Ok(inspection) = bundle::inspect(Cursor::new(data), &limits) {
        assert!(
            inspection.manifest.validate().is_ok(),
            "accepted an invalid manifest"
        );
        assert!(inspection.entries <= limits.max_entries);
        assert!(inspection.unpacked_bytes <= limits.max_unpacked_bytes);
    }
}

/// The first 8 bytes (big-endian) are the body size, the rest the `Range` header value.
/// A partial answer always lies inside the body.
pub fn range(data: &[u8]) {
    let (size, header) = match data.split_first_chunk::<8>() {
        Some((size, rest)) => (u64::from_be_bytes(*size), rest),
        None => (0, data),
    };
    let header = String::from_utf8_lossy(header);
    for h in [None, Some(header.as_ref())] {
        match parse_range(h, size) {
            RangeRequest::Partial { start, end } => {
                assert!(start <= end, "range {start}-{end} is backwards");
                assert!(end < size, "range {start}-{end} ends past a body of {size}");
            }
            RangeRequest::Full | RangeRequest::Unsatisfiable => {}
        }
    }
}

/// A registration: the first 2 bytes (big-endian) are the length of the signature
/// header, which follows; the rest is the body. As the server does: parse the body,
/// parse its public key, verify the signature over the exact body; and verify it
/// against the fixed fuzz key too (so the signature check runs on every input).
pub fn registration(data: &[u8]) {
    let (sig, body) = match data.split_first_chunk::<2>() {
        Some((len, rest)) => {
            let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
            rest.split_at(len)
        }
        None => (&[][..], data),
    };
    let sig = String::from_utf8_lossy(sig);
    if let Ok(req) = serde_json::from_slice::<RegisterRequest>(body)
        && let Ok(key) = DevicePublicKey::from_pem(&req.public_key)
    {
        let _ = key.verify(body, &sig);
        assert_eq!(key.fingerprint().len(), 64);
    }
    let key = DevicePublicKey::from_pem(FUZZ_DEVICE_KEY).expect("the fuzz key parses");
    let _ = key.verify(body, &sig);
}
