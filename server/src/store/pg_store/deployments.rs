//! PostgreSQL: deployments, targets and cancels.
#![allow(unused_variables)] // stubs: removed as each method is written

use super::*;

impl PgStore {
    pub(super) async fn create_deployment(
        &self,
        kind: DeploymentKind,
        bundle: &BundleRecord,
        target_ids: &[String],
        rollout: Option<RolloutState>,
        now: Ts,
    ) -> Result<DeploymentRecord> {
        Err(not_built("create_deployment"))
    }

    pub(super) async fn deployment(&self, id: &str) -> Result<DeploymentRecord> {
        Err(not_built("deployment"))
    }

    pub(super) async fn deployment_targets(
        &self,
        id: &str,
        filter: &TargetFilter,
    ) -> Result<Vec<TargetRecord>> {
        Err(not_built("deployment_targets"))
    }

    pub(super) async fn list_deployments(
        &self,
        status: Option<DeploymentStatus>,
        limit: usize,
    ) -> Result<Vec<DeploymentRecord>> {
        Err(not_built("list_deployments"))
    }

    pub(super) async fn cancel_deployment_step(
        &self,
        id: &str,
        after: Option<&str>,
        chunk: usize,
        reason: &str,
        now: Ts,
    ) -> Result<CancelStep> {
        Err(not_built("cancel_deployment_step"))
    }
}
