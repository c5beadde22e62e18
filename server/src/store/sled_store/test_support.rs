//! Builders for the backend's unit tests.
#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;

/// Register accepted device number `i`; returns its id.
pub fn device(store: &SledStore, i: usize, now: Ts) -> String {
    let reg = NewRegistration {
        public_key_pem: String::new(),
        fingerprint: format!("fp-{i}"),
        device_type: "t".into(),
        hardware_metadata: json!({}),
        signature_hash: format!("sig-{i}"),
        replay_until: now,
        admission: Admission::Accepted,
        refusal: None,
        max_pending: None,
        token_hash: format!("tok-{i}"),
        now,
    };
    store.register(&reg).unwrap().device.id().to_owned()
}

/// Open the store in `dir` once the previous handle's lock is gone (sled releases it
/// from its own threads, shortly after the drop).
pub fn reopen(dir: &Path) -> SledStore {
    loop {
        match SledStore::open(dir, SledOptions::default()) {
            Ok(s) => break s,
            Err(e) if e.is_locked() => std::thread::sleep(std::time::Duration::from_millis(20)),
            Err(e) => panic!("{e}"),
        }
    }
}
