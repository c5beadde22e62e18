//! PostgreSQL: fleet counts for /metrics.
#![allow(unused_variables)] // stubs: removed as each method is written

use super::*;

impl PgStore {
    pub(super) async fn fleet_counts(&self, now: Ts) -> Result<FleetCounts> {
        Err(not_built("fleet_counts"))
    }
}
