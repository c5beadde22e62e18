//! PostgreSQL: bundle records.
#![allow(unused_variables)] // stubs: removed as each method is written

use super::*;

impl PgStore {
    pub(super) async fn insert_bundle(&self, bundle: &BundleRecord) -> Result<()> {
        Err(not_built("insert_bundle"))
    }

    pub(super) async fn bundle(&self, id: &str) -> Result<BundleRecord> {
        Err(not_built("bundle"))
    }

    pub(super) async fn bundle_version_exists(&self, version: &str) -> Result<bool> {
        Err(not_built("bundle_version_exists"))
    }

    pub(super) async fn bundle_by_version(&self, version: &str) -> Result<Option<BundleRecord>> {
        Err(not_built("bundle_by_version"))
    }

    pub(super) async fn list_bundles(&self) -> Result<Vec<BundleRecord>> {
        Err(not_built("list_bundles"))
    }
}
