//! Fleet counts for `/metrics` (devices by admission, deployments by status), kept in the
//! `counters` tree by the same transactions that change what they count, so a scrape
//! reads a handful of keys at any fleet size.

use kernex_common::api::{Admission, DeploymentStatus};

use super::*;

fn admission_key(a: Admission) -> &'static str {
    match a {
        Admission::Pending => "devices.pending",
        Admission::Accepted => "devices.accepted",
        Admission::Rejected => "devices.rejected",
    }
}

fn status_key(s: DeploymentStatus) -> &'static str {
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

fn tx_add(tree: &TransactionalTree, key: &str, delta: i64) -> TxResult<()> {
    let old = tree.get(key)?.map_or(0, |v| read_i64(&v));
    tree.insert(key, &(old + delta).to_be_bytes())?;
    Ok(())
}

fn read_i64(bytes: &[u8]) -> i64 {
    bytes.try_into().map(i64::from_be_bytes).unwrap_or_default()
}

/// How many devices have this admission, read inside a transaction.
pub(super) fn tx_admission_count(tree: &TransactionalTree, a: Admission) -> TxResult<u64> {
    Ok(tree
        .get(admission_key(a))?
        .map_or(0, |v| u64::try_from(read_i64(&v)).unwrap_or(0)))
}

/// A device moved from one admission to another (`None`: it did not exist / no more).
pub(super) fn tx_admission(
    tree: &TransactionalTree,
    before: Option<Admission>,
    after: Option<Admission>,
) -> TxResult<()> {
    if before == after {
        return Ok(());
    }
    if let Some(b) = before {
        tx_add(tree, admission_key(b), -1)?;
    }
    if let Some(a) = after {
        tx_add(tree, admission_key(a), 1)?;
    }
    Ok(())
}

/// A deployment moved from one status to another (`None`: it is new).
pub(super) fn tx_deployment(
    tree: &TransactionalTree,
    before: Option<DeploymentStatus>,
    after: DeploymentStatus,
) -> TxResult<()> {
    if before == Some(after) {
        return Ok(());
    }
    if let Some(b) = before {
        tx_add(tree, status_key(b), -1)?;
    }
    tx_add(tree, status_key(after), 1)
}

impl SledStore {
    pub(super) fn fleet_counts(&self, now: Ts) -> Result<FleetCounts> {
        let read = |key: &str| -> Result<u64> {
            Ok(self
                .counters
                .get(key)?
                .map_or(0, |v| u64::try_from(read_i64(&v)).unwrap_or(0)))
        };
        let mut deployments = [0; 7];
        for (slot, status) in deployments.iter_mut().zip(DeploymentStatus::ALL) {
            *slot = read(status_key(status))?;
        }
        let devices_pending = read(admission_key(Admission::Pending))?;
        let devices_accepted = read(admission_key(Admission::Accepted))?;
        let devices_rejected = read(admission_key(Admission::Rejected))?;
        let total = devices_pending + devices_accepted + devices_rejected;
        let (online, beaten) = self.online.counts(now.timestamp());
        Ok(FleetCounts {
            devices_pending,
            devices_accepted,
            devices_rejected,
            deployments,
            online,
            offline: beaten.saturating_sub(online),
            never: total.saturating_sub(beaten),
        })
    }

    /// A data dir written before the counters existed: count once, at open.
    pub(super) fn rebuild_counters_if_missing(&self) -> Result<()> {
        if !self.counters.is_empty() || (self.devices.is_empty() && self.deployments.is_empty()) {
            return Ok(());
        }
        self.recount()?;
        self.flush_blocking()
    }

    /// Count devices by admission and deployments by status from the records (and
    /// refill the pending index), replacing whatever the counters said.
    pub(super) fn recount(&self) -> Result<()> {
        self.counters.clear()?;
        let mut totals: std::collections::HashMap<&'static str, i64> = Default::default();
        for v in self.devices.iter().values() {
            let d: DeviceRecord = dec(&v?)?;
            *totals.entry(admission_key(d.admission)).or_default() += 1;
            if d.admission == Admission::Pending {
                self.device_pending.insert(d.device_id.as_bytes(), &[])?;
            }
        }
        for v in self.deployments.iter().values() {
            let d: DeploymentRecord = dec(&v?)?;
            *totals.entry(status_key(d.status)).or_default() += 1;
        }
        for (key, n) in totals {
            self.counters.insert(key, &n.to_be_bytes())?;
        }
        Ok(())
    }
}
