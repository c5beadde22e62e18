//! PostgreSQL: heartbeats: live records and the history ring, in batches.
//!
//! A beat upserts its device's `device_live` row (the [`LiveRecord`] in `doc`, in the
//! backup's [`LiveSnapshot`] form; `online_until` beside it for the online/offline
//! queries; `beats`, the device's beat count) and writes history slot
//! `beats % retention` of `heartbeats`, overwriting the beat that fell out of retention:
//! storage stays bounded without a prune, and a beat costs O(1) rows.
//!
//! When the retention is lowered between runs, a device's slots past the new ring are
//! deleted at its next beat (an index range that is empty otherwise). When it is
//! raised, the old slots are kept in place and read by sequence number: a read still
//! returns the newest beats, but the ring refills a slot at a time, so some of the
//! older beats the larger retention would keep are overwritten in its first lap.
//!
//! A batch is one transaction of one statement per "round": a round holds at most one
//! beat per device (`ON CONFLICT DO UPDATE` may touch a row once per statement), so a
//! batch is one statement unless a device beat twice inside it. Beats of devices deleted
//! meanwhile are skipped (the devices row is read `FOR KEY SHARE`, so a delete either
//! commits before, and the beat is dropped, or waits for the batch).

use std::collections::HashMap;

use chrono::Duration;
use kernex_common::api::HeartbeatRequest;
use sqlx::types::Json;

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

/// The end of a device's online window: `last_heartbeat + 3 × polling_interval`. A
/// device is online while `online_until > now − 1 s` ([`online_threshold`]), which is
/// exactly [`Device::online_status`]'s whole-second rule.
pub(super) fn online_until(last_heartbeat: Ts, polling_interval: u64) -> Ts {
    // Intervals are validated to ≤ 1 day; the clamp (as in ROUND) only keeps damaged
    // data finite.
    let window = i64::try_from(polling_interval.min(1_051_200_000) * 3).unwrap_or(i64::MAX);
    last_heartbeat + Duration::seconds(window)
}

/// Devices with `online_until > online_threshold(now)` are online at `now`.
pub(super) fn online_threshold(now: Ts) -> Ts {
    now - Duration::seconds(1)
}

/// One round of a batch: upsert the live rows, write the ring slots, drop slots past a
/// lowered retention. The online window is the device record's interval (what
/// [`Device::online_status`] and `update_config` use, whichever replica took the beat),
/// the beat's own only for a record without one.
const ROUND: &str = "\
WITH input AS (
    SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::bigint[], $4::jsonb[], $5::jsonb[])
        AS i (device_id, at, interval, live, beat)
), known AS (
    SELECT i.device_id, i.at, i.live, i.beat,
        i.at + make_interval(secs => (3 * least(1051200000,
            coalesce((d.doc ->> 'polling_interval')::numeric, i.interval)))::float8)
            AS online_until
    FROM input i JOIN devices d ON d.device_id = i.device_id
    ORDER BY i.device_id
    FOR KEY SHARE OF d
), live AS (
    INSERT INTO device_live AS l (device_id, last_heartbeat, online_until, beats, doc)
    SELECT device_id, at, online_until, 1, live FROM known
    ON CONFLICT (device_id) DO UPDATE SET
        last_heartbeat = EXCLUDED.last_heartbeat,
        online_until = EXCLUDED.online_until,
        beats = l.beats + 1,
        doc = CASE WHEN jsonb_typeof(EXCLUDED.doc -> 'reported_version') = 'string'
            THEN EXCLUDED.doc
            ELSE EXCLUDED.doc || jsonb_build_object(
                'reported_version', l.doc -> 'reported_version',
                'reported_at', l.doc -> 'reported_at')
            END
    RETURNING l.device_id, l.beats
), ring AS (
    INSERT INTO heartbeats AS h (device_id, slot, seq, doc)
    SELECT live.device_id, (live.beats % $6)::integer, live.beats, known.beat
    FROM live JOIN known ON known.device_id = live.device_id
    ON CONFLICT (device_id, slot) DO UPDATE SET seq = EXCLUDED.seq, doc = EXCLUDED.doc
), pruned AS (
    DELETE FROM heartbeats h USING live
    WHERE h.device_id = live.device_id AND h.slot >= $6
)
SELECT count(*) FROM live";

/// One round's columns, in device-id order.
#[derive(Default)]
struct Round {
    ids: Vec<String>,
    at: Vec<Ts>,
    interval: Vec<i64>,
    live: Vec<Json<LiveSnapshot>>,
    beat: Vec<Json<HeartbeatRecord>>,
}

impl Round {
    fn push(&mut self, b: &Beat) {
        let r = &storable_report(&b.report);
        self.ids.push(b.device_id.clone());
        self.at.push(b.at);
        self.interval
            .push(i64::try_from(b.polling_interval).unwrap_or(i64::MAX));
        // A null `reported_version` keeps the stored one (see ROUND).
        self.live.push(Json(LiveSnapshot {
            last_heartbeat: b.at,
            agent_version: r.agent_version.clone(),
            agent_status: r.status.clone(),
            cpu_pct: r.cpu_pct,
            memory_mb: r.memory_mb,
            config_version: r.config_version,
            queued_reports: r.queued_reports,
            reported_version: r.current_bundle_version.clone(),
            reported_at: r.current_bundle_version.as_ref().map(|_| b.at),
        }));
        self.beat.push(Json(HeartbeatRecord {
            timestamp: b.at,
            agent_version: r.agent_version.clone(),
            cpu_pct: r.cpu_pct,
            memory_mb: r.memory_mb,
            status: r.status.clone(),
            current_bundle_version: r.current_bundle_version.clone(),
        }));
    }
}

/// A report's strings without U+0000, which PostgreSQL cannot store (sled can): one
/// such beat must not fail the whole batch, so the character becomes U+FFFD.
fn storable_report(r: &HeartbeatRequest) -> HeartbeatRequest {
    let clean = |s: &String| {
        if s.contains('\0') {
            s.replace('\0', "\u{FFFD}")
        } else {
            s.clone()
        }
    };
    HeartbeatRequest {
        agent_version: clean(&r.agent_version),
        status: clean(&r.status),
        current_bundle_version: r.current_bundle_version.as_ref().map(clean),
        ..r.clone()
    }
}

/// Split a batch into rounds: round `k` holds each device's `k`-th beat of the batch,
/// and each round is in device-id order (one lock order for every writer).
fn rounds(mut beats: Vec<Beat>) -> Vec<Round> {
    // Stable: a device's beats keep their arrival order.
    beats.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut rounds: Vec<Round> = Vec::new();
    for b in &beats {
        let k = seen.entry(b.device_id.as_str()).or_insert(0);
        if rounds.len() <= *k {
            rounds.push(Round::default());
        }
        rounds[*k].push(b);
        *k += 1;
    }
    rounds
}

impl PgStore {
    /// History slots per device.
    fn ring(&self) -> i64 {
        i64::try_from(self.options.heartbeat_retention)
            .unwrap_or(i64::MAX)
            .clamp(1, i64::from(i32::MAX))
    }

    /// Apply a batch in one transaction (committed, so durable, on return). An empty
    /// batch has nothing to write out: every earlier batch is committed already.
    pub(super) async fn write_beats(&self, beats: Vec<Beat>) -> Result<()> {
        if beats.is_empty() {
            return Ok(());
        }
        let ring = self.ring();
        let mut tx = self.pool.begin().await?;
        for round in rounds(beats) {
            sqlx::query(ROUND)
                .bind(&round.ids)
                .bind(&round.at)
                .bind(&round.interval)
                .bind(&round.live)
                .bind(&round.beat)
                .bind(ring)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Newest first, at most `limit` and at most the retention.
    pub(super) async fn heartbeats(
        &self,
        device_id: &str,
        limit: usize,
    ) -> Result<Vec<HeartbeatRecord>> {
        if !super::devices::storable(device_id) {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX).min(self.ring());
        let rows: Vec<Json<HeartbeatRecord>> = sqlx::query_scalar(
            "SELECT doc FROM heartbeats WHERE device_id = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(device_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|j| j.0).collect())
    }
}
