//! PostgreSQL: what a heartbeat needs: the work snapshot the index is rebuilt from, a
//! device's open targets, delivery, and who may download a bundle. Each reads one
//! device's rows through an index (`targets_open_by_device`, `targets_by_device`),
//! never the fleet.

use sqlx::types::Json;

use super::deployments::{lock_deployment, lock_target, store_deployment, store_targets};
use super::*;
use crate::service::rules;

impl PgStore {
    /// Devices with open targets, pending devices, and every stored config.
    pub(super) async fn work_snapshot(&self) -> Result<WorkSnapshot> {
        let open: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT device_id FROM targets WHERE open ORDER BY device_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let pending: Vec<String> = sqlx::query_scalar(
            "SELECT device_id FROM devices WHERE admission = $1 ORDER BY device_id",
        )
        .bind(wire_name(&Admission::Pending)?)
        .fetch_all(&self.pool)
        .await?;
        let configs: Vec<Json<DeviceConfig>> =
            sqlx::query_scalar("SELECT doc FROM configs ORDER BY device_id")
                .fetch_all(&self.pool)
                .await?;
        Ok(WorkSnapshot {
            open,
            pending,
            configs: configs.into_iter().map(|c| c.0).collect(),
        })
    }

    /// This device's unfinished targets, oldest deployment first (ids are time-ordered).
    pub(super) async fn open_targets(
        &self,
        device_id: &str,
    ) -> Result<Vec<(DeploymentRecord, TargetStatus)>> {
        let rows: Vec<(Json<DeploymentRecord>, Json<TargetRecord>)> = sqlx::query_as(
            "SELECT d.doc, t.doc FROM targets t \
             JOIN deployments d ON d.deployment_id = t.deployment_id \
             WHERE t.device_id = $1 AND t.open ORDER BY t.deployment_id",
        )
        .bind(device_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter(|(_, t)| !t.0.status.is_final())
            .map(|(d, t)| (d.0, t.0.status))
            .collect())
    }

    /// Move a pending target to `in_progress`; the deployment when this call moved it.
    pub(super) async fn deliver(
        &self,
        deployment_id: &str,
        device_id: &str,
        now: Ts,
    ) -> Result<Option<DeploymentRecord>> {
        let mut tx = self.pool.begin().await?;
        let Some(mut dep) = lock_deployment(&mut tx, deployment_id).await? else {
            return Ok(None);
        };
        let Some(mut t) = lock_target(&mut tx, deployment_id, device_id).await? else {
            return Ok(None);
        };
        let before = dep.status;
        if !rules::deliver(&mut dep, &mut t, now) {
            return Ok(None);
        }
        store_targets(&mut tx, deployment_id, &[&t]).await?;
        store_deployment(&mut tx, before, &dep).await?;
        tx.commit().await?;
        Ok(Some(dep))
    }

    /// May this device download this bundle: is it a target of a deployment of it?
    pub(super) async fn device_may_download(
        &self,
        device_id: &str,
        bundle_id: &str,
    ) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM targets t \
               JOIN deployments d ON d.deployment_id = t.deployment_id \
              WHERE t.device_id = $1 AND d.bundle_id = $2)",
        )
        .bind(device_id)
        .bind(bundle_id)
        .fetch_one(&self.pool)
        .await?)
    }
}
