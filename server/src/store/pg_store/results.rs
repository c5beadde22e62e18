//! PostgreSQL: progress, results and history.
#![allow(unused_variables)] // stubs: removed as each method is written

use super::*;

impl PgStore {
    pub(super) async fn record_progress(
        &self,
        deployment_id: &str,
        report: &ProgressReport,
        now: Ts,
    ) -> Result<TargetRecord> {
        Err(not_built("record_progress"))
    }

    pub(super) async fn apply_result(
        &self,
        deployment_id: &str,
        report: &ResultReport,
        now: Ts,
    ) -> Result<ResultOutcome> {
        Err(not_built("apply_result"))
    }

    pub(super) async fn is_target(&self, deployment_id: &str, device_id: &str) -> Result<bool> {
        Err(not_built("is_target"))
    }

    pub(super) async fn history(
        &self,
        device_id: &str,
        limit: usize,
    ) -> Result<Vec<HistoryRecord>> {
        Err(not_built("history"))
    }

    pub(super) async fn device_ran_version(&self, device_id: &str, version: &str) -> Result<bool> {
        Err(not_built("device_ran_version"))
    }
}
