//! PostgreSQL: heartbeats: live records and the history ring, in batches.
#![allow(unused_variables)] // stubs: removed as each method is written

use super::*;

impl PgStore {
    pub(super) async fn write_beats(&self, beats: Vec<Beat>) -> Result<()> {
        Err(not_built("write_beats"))
    }

    pub(super) async fn heartbeats(
        &self,
        device_id: &str,
        limit: usize,
    ) -> Result<Vec<HeartbeatRecord>> {
        Err(not_built("heartbeats"))
    }
}
