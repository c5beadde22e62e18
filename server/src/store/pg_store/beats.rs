//! PostgreSQL: heartbeats: live records and the history ring, in batches.
#![allow(unused_variables)] // stubs: removed as each method is written

use super::*;

/// A live record from its stored form (`device_live.doc`: the backup format's
/// [`LiveSnapshot`]).
pub(super) fn live_from_doc(s: LiveSnapshot) -> LiveRecord {
    LiveRecord {
        last_heartbeat: s.last_heartbeat,
        agent_version: s.agent_version,
        agent_status: s.agent_status,
        cpu_pct: s.cpu_pct,
        memory_mb: s.memory_mb,
        config_version: s.config_version,
        queued_reports: s.queued_reports,
        reported_version: match (s.reported_version, s.reported_at) {
            (Some(v), Some(at)) => Some((v, at)),
            _ => None,
        },
    }
}

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
