//! PostgreSQL: progress, results and history. What a result means is decided by
//! [`rules`]; this file applies it in one transaction, once per target.

use kernex_common::api::ResultStatus;
use sqlx::types::Json;

use super::deployments::{
    is_open, lock_deployment, lock_target, no_deployment, sql_limit, store_deployment,
    store_targets,
};
use super::*;
use crate::service::rules::{self, ResultDecision};

fn not_a_target() -> StoreError {
    StoreError::Forbidden("this device is not a target of the deployment".into())
}

impl PgStore {
    /// Record a device's progress on its target (a final target keeps its record).
    pub(super) async fn record_progress(
        &self,
        deployment_id: &str,
        report: &ProgressReport,
        now: Ts,
    ) -> Result<TargetRecord> {
        let mut tx = self.pool.begin().await?;
        let mut t = lock_target(&mut tx, deployment_id, &report.device_id)
            .await?
            .ok_or_else(not_a_target)?;
        if t.status.is_final() {
            return Ok(t);
        }
        t.phase = Some(report.phase);
        t.progress_pct = Some(report.progress_pct);
        t.updated_at = now;
        sqlx::query("UPDATE targets SET doc = $3 WHERE deployment_id = $1 AND device_id = $2")
            .bind(deployment_id)
            .bind(&report.device_id)
            .bind(Json(&t))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(t)
    }

    /// Apply a device's final result: the target, deployment, history, device record
    /// and report id change together, as [`rules::apply_result`] says. Idempotent by
    /// `report_id`, first final result wins: the device's row is locked first, so two
    /// results for one target (whatever their report ids) apply one after the other,
    /// and the second finds the target final and changes nothing.
    pub(super) async fn apply_result(
        &self,
        deployment_id: &str,
        report: &ResultReport,
        now: Ts,
    ) -> Result<ResultOutcome> {
        let device_id = report.device_id.as_str();
        let mut tx = self.pool.begin().await?;
        // Lock order: device, deployment, target.
        let device: Option<Json<DeviceRecord>> =
            sqlx::query_scalar("SELECT doc FROM devices WHERE device_id = $1 FOR NO KEY UPDATE")
                .bind(device_id)
                .fetch_optional(&mut *tx)
                .await?;
        let dep = lock_deployment(&mut tx, deployment_id).await?;
        let mut t = lock_target(&mut tx, deployment_id, device_id)
            .await?
            .ok_or_else(not_a_target)?;
        let seen: Option<(String, String)> =
            sqlx::query_as("SELECT deployment_id, device_id FROM reports WHERE report_id = $1")
                .bind(&report.report_id)
                .fetch_optional(&mut *tx)
                .await?;
        let seen_ref = seen.as_ref().map(|(d, v)| (d.as_str(), v.as_str()));
        match rules::decide_result(&t, seen_ref, deployment_id)? {
            ResultDecision::Repeat => return Ok(ResultOutcome::Repeat { target: t }),
            ResultDecision::Apply => {}
        }
        let mut dep = dep.ok_or_else(|| no_deployment(deployment_id))?;
        let mut device = device
            .map(|d| d.0)
            .ok_or_else(|| StoreError::NotFound(format!("no device {device_id:?}")))?;
        let inserted: Option<String> = sqlx::query_scalar(
            "INSERT INTO reports (report_id, deployment_id, device_id) VALUES ($1, $2, $3) \
             ON CONFLICT (report_id) DO NOTHING RETURNING report_id",
        )
        .bind(&report.report_id)
        .bind(deployment_id)
        .bind(device_id)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            // Another target's result took this report id meanwhile.
            return Err(StoreError::Invalid(
                "report_id was already used for a different result".into(),
            ));
        }
        let before = dep.status;
        let record = rules::apply_result(&mut dep, &mut t, &mut device, report, now);
        debug_assert!(!is_open(t.status));
        if report.status == ResultStatus::Success {
            sqlx::query(
                "INSERT INTO device_success (device_id, version) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(device_id)
            .bind(&dep.bundle_version)
            .execute(&mut *tx)
            .await?;
        }
        store_targets(&mut tx, deployment_id, &[&t]).await?;
        sqlx::query("INSERT INTO history (device_id, history_id, doc) VALUES ($1, $2, $3)")
            .bind(device_id)
            .bind(&record.id)
            .bind(Json(&record))
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE devices SET doc = $2 WHERE device_id = $1")
            .bind(device_id)
            .bind(Json(&device))
            .execute(&mut *tx)
            .await?;
        // A late result after a timeout may find the deployment final already.
        store_deployment(&mut tx, before, &dep).await?;
        tx.commit().await?;
        let live = self.live_of(device_id).await?;
        Ok(ResultOutcome::Applied {
            deployment: dep,
            target: t,
            history: record,
            device: Device {
                record: device,
                live,
            },
        })
    }

    /// A device's live record, `None` when it never beat (or is gone by now).
    pub(super) async fn live_of(&self, device_id: &str) -> Result<Option<LiveRecord>> {
        match self.device(device_id).await {
            Ok(d) => Ok(d.live),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn is_target(&self, deployment_id: &str, device_id: &str) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM targets WHERE deployment_id = $1 AND device_id = $2)",
        )
        .bind(deployment_id)
        .bind(device_id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Newest first, at most `limit`.
    pub(super) async fn history(
        &self,
        device_id: &str,
        limit: usize,
    ) -> Result<Vec<HistoryRecord>> {
        let docs: Vec<Json<HistoryRecord>> = sqlx::query_scalar(
            "SELECT doc FROM history WHERE device_id = $1 ORDER BY history_id DESC LIMIT $2",
        )
        .bind(device_id)
        .bind(sql_limit(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(docs.into_iter().map(|d| d.0).collect())
    }

    pub(super) async fn device_ran_version(&self, device_id: &str, version: &str) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM device_success WHERE device_id = $1 AND version = $2)",
        )
        .bind(device_id)
        .bind(version)
        .fetch_one(&self.pool)
        .await?)
    }
}
