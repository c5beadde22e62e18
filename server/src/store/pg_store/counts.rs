//! PostgreSQL: fleet counts for /metrics (devices by admission, deployments by status),
//! kept in the `counters` table by the transactions that change what they count (the
//! same names as sled's `counters` tree), so a scrape reads a handful of rows.

use sqlx::PgConnection;

use super::*;

pub(super) fn admission_key(a: Admission) -> &'static str {
    match a {
        Admission::Pending => "devices.pending",
        Admission::Accepted => "devices.accepted",
        Admission::Rejected => "devices.rejected",
    }
}

pub(super) fn status_key(s: DeploymentStatus) -> &'static str {
    match s {
        DeploymentStatus::Scheduled => "deployments.scheduled",
        DeploymentStatus::Pending => "deployments.pending",
        DeploymentStatus::InProgress => "deployments.in_progress",
        DeploymentStatus::Paused => "deployments.paused",
        DeploymentStatus::Success => "deployments.success",
        DeploymentStatus::Failed => "deployments.failed",
        DeploymentStatus::Cancelled => "deployments.cancelled",
    }
}

/// Add `delta` to each named counter, inside the caller's transaction (one statement;
/// zero deltas are skipped). Names are locked in sorted order, so two transactions
/// bumping the same counters never deadlock.
pub(super) async fn bump(conn: &mut PgConnection, changes: &[(&str, i64)]) -> Result<()> {
    let mut changes: Vec<(&str, i64)> = changes.iter().copied().filter(|c| c.1 != 0).collect();
    if changes.is_empty() {
        return Ok(());
    }
    changes.sort_by(|a, b| a.0.cmp(b.0));
    let names: Vec<&str> = changes.iter().map(|c| c.0).collect();
    let deltas: Vec<i64> = changes.iter().map(|c| c.1).collect();
    sqlx::query(
        "INSERT INTO counters (name, value) \
         SELECT * FROM UNNEST($1::text[], $2::bigint[]) \
         ON CONFLICT (name) DO UPDATE SET value = counters.value + EXCLUDED.value",
    )
    .bind(&names)
    .bind(&deltas)
    .execute(conn)
    .await?;
    Ok(())
}

/// A device moved from one admission to another (`None`: it did not exist / no more).
pub(super) async fn admission_moved(
    conn: &mut PgConnection,
    before: Option<Admission>,
    after: Option<Admission>,
) -> Result<()> {
    if before == after {
        return Ok(());
    }
    let mut changes = Vec::new();
    if let Some(b) = before {
        changes.push((admission_key(b), -1));
    }
    if let Some(a) = after {
        changes.push((admission_key(a), 1));
    }
    bump(conn, &changes).await
}

/// A deployment moved from one status to another (`None`: it did not exist before).
pub(super) async fn status_moved(
    conn: &mut PgConnection,
    before: Option<DeploymentStatus>,
    after: DeploymentStatus,
) -> Result<()> {
    if before == Some(after) {
        return Ok(());
    }
    let mut changes = vec![(status_key(after), 1)];
    if let Some(b) = before {
        changes.push((status_key(b), -1));
    }
    bump(conn, &changes).await
}

impl PgStore {
    /// The counter rows, plus online/offline/never from `device_live` (whose rows are
    /// the devices that ever beat), counted by the database over `device_live_online`:
    /// no row reaches this process, and deletions need no bookkeeping (the device's live
    /// row goes with it).
    pub(super) async fn fleet_counts(&self, now: Ts) -> Result<FleetCounts> {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT name, value FROM counters")
            .fetch_all(&self.pool)
            .await?;
        let (online, beaten): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE online_until > $1), count(*) FROM device_live",
        )
        .bind(super::beats::online_threshold(now))
        .fetch_one(&self.pool)
        .await?;
        let read = |key: &str| -> u64 {
            rows.iter()
                .find(|(name, _)| name == key)
                .map_or(0, |(_, v)| u64::try_from(*v).unwrap_or(0))
        };
        let mut deployments = [0; 7];
        for (slot, status) in deployments.iter_mut().zip(DeploymentStatus::ALL) {
            *slot = read(status_key(status));
        }
        let devices_pending = read(admission_key(Admission::Pending));
        let devices_accepted = read(admission_key(Admission::Accepted));
        let devices_rejected = read(admission_key(Admission::Rejected));
        let total = devices_pending + devices_accepted + devices_rejected;
        let beaten = u64::try_from(beaten).unwrap_or(0);
        let online = u64::try_from(online).unwrap_or(0).min(beaten);
        Ok(FleetCounts {
            devices_pending,
            devices_accepted,
            devices_rejected,
            deployments,
            online,
            offline: beaten - online,
            never: total.saturating_sub(beaten),
        })
    }
}
