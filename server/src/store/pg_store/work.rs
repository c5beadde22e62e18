//! PostgreSQL: what a heartbeat needs: open targets, delivery, downloads.
#![allow(unused_variables)] // stubs: removed as each method is written

use super::*;

impl PgStore {
    pub(super) async fn work_snapshot(&self) -> Result<WorkSnapshot> {
        Err(not_built("work_snapshot"))
    }

    pub(super) async fn open_targets(
        &self,
        device_id: &str,
    ) -> Result<Vec<(DeploymentRecord, TargetStatus)>> {
        Err(not_built("open_targets"))
    }

    pub(super) async fn deliver(
        &self,
        deployment_id: &str,
        device_id: &str,
        now: Ts,
    ) -> Result<Option<DeploymentRecord>> {
        Err(not_built("deliver"))
    }

    pub(super) async fn device_may_download(
        &self,
        device_id: &str,
        bundle_id: &str,
    ) -> Result<bool> {
        Err(not_built("device_may_download"))
    }
}
