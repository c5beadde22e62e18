//! PostgreSQL: admission changes and deletions that cancel targets.
#![allow(unused_variables)] // stubs: removed as each method is written

use super::*;

impl PgStore {
    pub(super) async fn set_admission(
        &self,
        device_id: &str,
        admission: Admission,
        now: Ts,
    ) -> Result<(Device, Vec<DeploymentRecord>)> {
        Err(not_built("set_admission"))
    }

    pub(super) async fn delete_device(
        &self,
        device_id: &str,
        now: Ts,
    ) -> Result<Vec<DeploymentRecord>> {
        Err(not_built("delete_device"))
    }

    pub(super) async fn delete_bundle(&self, id: &str) -> Result<BundleRecord> {
        Err(not_built("delete_bundle"))
    }
}
