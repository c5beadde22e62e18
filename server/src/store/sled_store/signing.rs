//! Signed updates (SPEC §7): a bundle's signed metadata and signatures, and the current
//! trust document. Both are JSON [`SignedDocument`]s; the rules that decide what may be
//! stored are in [`crate::service::signing`].

use kernex_common::update_signing::{SignedDocument, TrustSet};

use super::*;
use crate::service::signing::{merge_signatures, next_trust};

/// Key of the one trust document in the `trust` tree.
const TRUST_KEY: &[u8] = b"current";

impl SledStore {
    pub(super) fn bundle_signatures(&self, bundle_id: &str) -> Result<Option<SignedDocument>> {
        get(&self.bundle_signatures, bundle_id)
    }

    /// Merge `doc` into the bundle's stored signatures, atomically (two signers at once
    /// both keep theirs).
    pub(super) fn add_bundle_signatures(
        &self,
        bundle_id: &str,
        doc: &SignedDocument,
    ) -> Result<SignedDocument> {
        (&self.bundles, &self.bundle_signatures)
            .transaction(|(bundles, sigs)| {
                if bundles.get(bundle_id.as_bytes())?.is_none() {
                    return abort(StoreError::NotFound(format!("no bundle {bundle_id:?}")));
                }
                let stored = tx_get::<SignedDocument>(sigs, bundle_id)?;
                let merged = match merge_signatures(stored, doc) {
                    Ok(m) => m,
                    Err(e) => return abort(e),
                };
                tx_put(sigs, bundle_id, &merged)?;
                Ok(merged)
            })
            .map_err(tx_err)
    }

    /// Store a trust document as it is (a restore: it was checked when first stored).
    pub(super) fn import_trust_document(&self, doc: &SignedDocument) -> Result<()> {
        self.trust.insert(TRUST_KEY, serde_json::to_vec(doc)?)?;
        Ok(())
    }

    pub(super) fn trust_document(&self) -> Result<Option<SignedDocument>> {
        get(&self.trust, TRUST_KEY)
    }

    /// Store `doc` when it is newer than (and signed by) the stored one.
    pub(super) fn put_trust_document(
        &self,
        doc: &SignedDocument,
        anchor: Option<&TrustSet>,
    ) -> Result<u64> {
        self.trust
            .transaction(|trust| {
                let stored = tx_get::<SignedDocument>(trust, TRUST_KEY)?;
                let version = match next_trust(stored.as_ref(), doc, anchor) {
                    Ok(v) => v,
                    Err(e) => return abort(e),
                };
                tx_put(trust, TRUST_KEY, doc)?;
                Ok(version)
            })
            .map_err(tx_err)
    }
}
