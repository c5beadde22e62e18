//! PostgreSQL: rollout waves, releases, timeouts, soak verdicts (SPEC §6).
#![allow(unused_variables)] // stubs: removed as each method is written

use super::*;

impl PgStore {
    pub(super) async fn update_rollout(
        &self,
        id: &str,
        update: &RolloutUpdate,
        now: Ts,
    ) -> Result<RolloutUpdated> {
        Err(not_built("update_rollout"))
    }

    pub(super) async fn release_step(&self, id: &str, max: usize, now: Ts) -> Result<ReleaseStep> {
        Err(not_built("release_step"))
    }

    pub(super) async fn time_out_step(
        &self,
        id: &str,
        wave: usize,
        after: Option<u64>,
        chunk: usize,
        now: Ts,
    ) -> Result<TimeoutStep> {
        Err(not_built("time_out_step"))
    }

    pub(super) async fn record_soak(
        &self,
        id: &str,
        device_id: &str,
        ok: bool,
        now: Ts,
    ) -> Result<Option<DeploymentRecord>> {
        Err(not_built("record_soak"))
    }

    pub(super) async fn active_rollouts(&self) -> Result<Vec<DeploymentRecord>> {
        Err(not_built("active_rollouts"))
    }

    pub(super) async fn retire_rollout(&self, id: &str) -> Result<()> {
        Err(not_built("retire_rollout"))
    }
}
