//! PostgreSQL: bundle signatures and the trust document (SPEC §7).
#![allow(unused_variables)] // stubs: removed as each method is written

use super::*;

impl PgStore {
    pub(super) async fn bundle_signatures(
        &self,
        bundle_id: &str,
    ) -> Result<Option<SignedDocument>> {
        Err(not_built("bundle_signatures"))
    }

    pub(super) async fn add_bundle_signatures(
        &self,
        bundle_id: &str,
        doc: &SignedDocument,
    ) -> Result<SignedDocument> {
        Err(not_built("add_bundle_signatures"))
    }

    pub(super) async fn trust_document(&self) -> Result<Option<SignedDocument>> {
        Err(not_built("trust_document"))
    }

    pub(super) async fn put_trust_document(
        &self,
        doc: &SignedDocument,
        anchor: Option<&TrustSet>,
    ) -> Result<u64> {
        Err(not_built("put_trust_document"))
    }
}
