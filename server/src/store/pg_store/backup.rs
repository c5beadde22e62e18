//! PostgreSQL: export and import as domain records ([`BackupRecord`], SPEC §2 backups),
//! the format every backend shares: a sled backup restores here and back.
//!
//! Export reads one `REPEATABLE READ` snapshot, in pages, so writers never wait for it.
//! Import fills an empty database in one transaction (a restore that fails leaves the
//! database as empty as it found it) and rebuilds the counters from the rows.

use kernex_common::api::{DeviceConfig, ResultStatus};
use sqlx::types::Json;
use sqlx::{PgConnection, Row};

use super::*;

/// Rows one export query reads (and records one blocking write to the sink takes).
const PAGE: i64 = 500;

/// The sink, fed off the async workers a page at a time.
struct Out {
    sink: Option<Box<dyn RecordSink>>,
    buf: Vec<BackupRecord>,
}

impl Out {
    fn push(&mut self, record: BackupRecord) {
        self.buf.push(record);
    }

    async fn flush(&mut self) -> Result<()> {
        let Some(mut sink) = self.sink.take() else {
            return Err(StoreError::backend("the backup sink failed earlier"));
        };
        let records = std::mem::take(&mut self.buf);
        let sink = tokio::task::spawn_blocking(move || -> Result<Box<dyn RecordSink>> {
            for r in &records {
                sink.record(r)?;
            }
            Ok(sink)
        })
        .await
        .map_err(StoreError::backend)??;
        self.sink = Some(sink);
        Ok(())
    }

    async fn maybe_flush(&mut self) -> Result<()> {
        if self.buf.len() >= PAGE as usize {
            self.flush().await?;
        }
        Ok(())
    }
}

impl PgStore {
    pub(super) async fn export(&self, sink: Box<dyn RecordSink>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let mut out = Out {
            sink: Some(sink),
            buf: Vec::new(),
        };
        export_tokens(&mut tx, &mut out).await?;
        export_devices(&mut tx, &mut out).await?;
        export_bundles(&mut tx, &mut out).await?;
        export_deployments(&mut tx, &mut out).await?;
        export_history(&mut tx, &mut out).await?;
        out.flush().await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn import(&self, mut source: RecordSource) -> Result<RecordCounts> {
        let mut tx = self.pool.begin().await?;
        if !is_empty(&mut tx).await? {
            return Err(StoreError::Conflict(
                "the store is not empty: a restore only fills an empty one".into(),
            ));
        }
        let mut state = Import {
            retention: self.options.heartbeat_retention.max(1),
            counts: RecordCounts::default(),
            device: None,
            beats: Vec::new(),
        };
        loop {
            // Reading the source is blocking I/O: a page at a time, off the workers.
            let (back, page) = tokio::task::spawn_blocking(move || {
                let page: Vec<Result<BackupRecord>> = source.by_ref().take(PAGE as usize).collect();
                (source, page)
            })
            .await
            .map_err(StoreError::backend)?;
            source = back;
            if page.is_empty() {
                break;
            }
            for record in page {
                state.one(&mut tx, record?).await?;
            }
        }
        state.flush_beats(&mut tx, None).await?;
        recount(&mut tx).await?;
        tx.commit().await?;
        Ok(state.counts)
    }
}

async fn is_empty(conn: &mut PgConnection) -> Result<bool> {
    let any: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM devices) OR EXISTS (SELECT 1 FROM tokens) \
         OR EXISTS (SELECT 1 FROM configs) OR EXISTS (SELECT 1 FROM bundles) \
         OR EXISTS (SELECT 1 FROM deployments) OR EXISTS (SELECT 1 FROM history)",
    )
    .fetch_one(conn)
    .await?;
    Ok(!any)
}

async fn export_tokens(conn: &mut PgConnection, out: &mut Out) -> Result<()> {
    let rows = sqlx::query(
        "SELECT name, hash, created_at FROM tokens WHERE kind = 'operator' ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await?;
    for r in rows {
        out.push(BackupRecord::OperatorToken(OperatorTokenRecord {
            name: r.try_get("name")?,
            hash: r.try_get("hash")?,
            created_at: r.try_get("created_at")?,
        }));
    }
    let rows =
        sqlx::query("SELECT signature_hash, expires_at FROM registrations ORDER BY signature_hash")
            .fetch_all(&mut *conn)
            .await?;
    for r in rows {
        out.push(BackupRecord::Registration {
            signature_hash: r.try_get("signature_hash")?,
            until: r.try_get("expires_at")?,
        });
    }
    out.flush().await
}

/// Each device, then its config, token, heartbeats (oldest first) and live record.
async fn export_devices(conn: &mut PgConnection, out: &mut Out) -> Result<()> {
    let mut after = String::new();
    loop {
        let devices: Vec<(String, Json<DeviceRecord>)> = sqlx::query_as(
            "SELECT device_id, doc FROM devices WHERE device_id > $1 ORDER BY device_id LIMIT $2",
        )
        .bind(&after)
        .bind(PAGE)
        .fetch_all(&mut *conn)
        .await?;
        let Some(last) = devices.last() else {
            return Ok(());
        };
        after = last.0.clone();
        for (id, Json(device)) in devices {
            out.push(BackupRecord::Device(device));
            export_device_parts(conn, out, &id).await?;
            out.maybe_flush().await?;
        }
    }
}

async fn export_device_parts(conn: &mut PgConnection, out: &mut Out, id: &str) -> Result<()> {
    let config: Option<Json<DeviceConfig>> =
        sqlx::query_scalar("SELECT doc FROM configs WHERE device_id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    if let Some(Json(config)) = config {
        out.push(BackupRecord::Config(config));
    }
    let hash: Option<String> =
        sqlx::query_scalar("SELECT hash FROM tokens WHERE kind = 'device' AND name = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    if let Some(hash) = hash {
        out.push(BackupRecord::DeviceToken {
            device_id: id.to_owned(),
            hash,
        });
    }
    // At most the retention: one device's history, never the fleet's.
    let beats: Vec<Json<kernex_common::api::HeartbeatRecord>> =
        sqlx::query_scalar("SELECT doc FROM heartbeats WHERE device_id = $1 ORDER BY seq")
            .bind(id)
            .fetch_all(&mut *conn)
            .await?;
    for Json(beat) in beats {
        out.push(BackupRecord::Heartbeat {
            device_id: id.to_owned(),
            beat,
        });
    }
    let live: Option<Json<LiveSnapshot>> =
        sqlx::query_scalar("SELECT doc FROM device_live WHERE device_id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    if let Some(Json(live)) = live {
        out.push(BackupRecord::Live {
            device_id: id.to_owned(),
            live,
        });
    }
    Ok(())
}

/// Bundles, each followed by its signatures, then the trust document.
async fn export_bundles(conn: &mut PgConnection, out: &mut Out) -> Result<()> {
    let rows: Vec<(Json<BundleRecord>, Option<Json<SignedDocument>>)> = sqlx::query_as(
        "SELECT b.doc, s.doc FROM bundles b LEFT JOIN bundle_signatures s USING (bundle_id) \
         ORDER BY b.bundle_id",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (Json(bundle), signatures) in rows {
        let bundle_id = bundle.id.clone();
        out.push(BackupRecord::Bundle(bundle));
        if let Some(Json(document)) = signatures {
            out.push(BackupRecord::BundleSignatures {
                bundle_id,
                document,
            });
        }
        out.maybe_flush().await?;
    }
    let trust: Option<Json<SignedDocument>> =
        sqlx::query_scalar("SELECT doc FROM trust WHERE id = 1")
            .fetch_optional(&mut *conn)
            .await?;
    if let Some(Json(document)) = trust {
        out.push(BackupRecord::Trust(document));
    }
    out.flush().await
}

/// Each deployment, its targets, then the rollout order of the targets not released.
async fn export_deployments(conn: &mut PgConnection, out: &mut Out) -> Result<()> {
    let mut after = String::new();
    loop {
        let deps: Vec<(String, Json<DeploymentRecord>)> = sqlx::query_as(
            "SELECT deployment_id, doc FROM deployments WHERE deployment_id > $1 \
             ORDER BY deployment_id LIMIT $2",
        )
        .bind(&after)
        .bind(PAGE)
        .fetch_all(&mut *conn)
        .await?;
        let Some(last) = deps.last() else {
            return Ok(());
        };
        after = last.0.clone();
        for (id, Json(dep)) in deps {
            out.push(BackupRecord::Deployment(dep));
            export_targets(conn, out, &id).await?;
        }
    }
}

async fn export_targets(conn: &mut PgConnection, out: &mut Out, id: &str) -> Result<()> {
    let mut after = String::new();
    loop {
        let targets: Vec<(String, Json<TargetRecord>)> = sqlx::query_as(
            "SELECT device_id, doc FROM targets WHERE deployment_id = $1 AND device_id > $2 \
             ORDER BY device_id LIMIT $3",
        )
        .bind(id)
        .bind(&after)
        .bind(PAGE)
        .fetch_all(&mut *conn)
        .await?;
        let Some(last) = targets.last() else {
            break;
        };
        after = last.0.clone();
        for (_, Json(target)) in targets {
            out.push(BackupRecord::Target {
                deployment_id: id.to_owned(),
                target,
            });
        }
        out.maybe_flush().await?;
    }
    let mut after: (i32, i64) = (-1, -1);
    loop {
        let waiting: Vec<(i32, i64, String)> = sqlx::query_as(
            "SELECT wave, position, device_id FROM targets \
             WHERE deployment_id = $1 AND status = 'waiting' AND (wave, position) > ($2, $3) \
             ORDER BY wave, position LIMIT $4",
        )
        .bind(id)
        .bind(after.0)
        .bind(after.1)
        .bind(PAGE)
        .fetch_all(&mut *conn)
        .await?;
        let Some(last) = waiting.last() else {
            return Ok(());
        };
        after = (last.0, last.1);
        for (wave, position, device_id) in waiting {
            out.push(BackupRecord::WaveTarget {
                deployment_id: id.to_owned(),
                wave: u32::try_from(wave).map_err(StoreError::codec)?,
                position: u64::try_from(position).map_err(StoreError::codec)?,
                device_id,
            });
        }
        out.maybe_flush().await?;
    }
}

async fn export_history(conn: &mut PgConnection, out: &mut Out) -> Result<()> {
    let mut after = (String::new(), String::new());
    loop {
        let rows: Vec<(String, String, Json<HistoryRecord>)> = sqlx::query_as(
            "SELECT device_id, history_id, doc FROM history WHERE (device_id, history_id) > ($1, $2) \
             ORDER BY device_id, history_id LIMIT $3",
        )
        .bind(&after.0)
        .bind(&after.1)
        .bind(PAGE)
        .fetch_all(&mut *conn)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        after = (last.0.clone(), last.1.clone());
        for (_, _, Json(h)) in rows {
            out.push(BackupRecord::History(h));
        }
        out.maybe_flush().await?;
    }
}

/// Counters from the rows (an import writes rows only).
async fn recount(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("DELETE FROM counters")
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO counters (name, value) \
         SELECT 'devices.' || admission, count(*) FROM devices GROUP BY admission \
         UNION ALL \
         SELECT 'deployments.' || status, count(*) FROM deployments GROUP BY status \
         UNION ALL \
         SELECT 'devices.beaten', count(*) FROM device_live",
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// An import in progress.
struct Import {
    retention: u64,
    counts: RecordCounts,
    /// The device whose records follow: (id, polling interval).
    device: Option<(String, u64)>,
    /// Its heartbeats so far, oldest first.
    beats: Vec<kernex_common::api::HeartbeatRecord>,
}

impl Import {
    async fn one(&mut self, conn: &mut PgConnection, record: BackupRecord) -> Result<()> {
        self.counts.add(record.kind());
        match record {
            BackupRecord::OperatorToken(t) => {
                insert_token(conn, &t.hash, "operator", &t.name, t.created_at).await?;
            }
            BackupRecord::DeviceToken { device_id, hash } => {
                insert_token(conn, &hash, "device", &device_id, chrono::Utc::now()).await?;
            }
            BackupRecord::Registration {
                signature_hash,
                until,
            } => {
                sqlx::query(
                    "INSERT INTO registrations (signature_hash, expires_at) VALUES ($1, $2)",
                )
                .bind(signature_hash)
                .bind(until)
                .execute(&mut *conn)
                .await?;
            }
            BackupRecord::Device(d) => {
                self.flush_beats(conn, None).await?;
                self.device = Some((d.device_id.clone(), d.polling_interval));
                insert_device(conn, &d).await?;
            }
            BackupRecord::Config(c) => {
                sqlx::query("INSERT INTO configs (device_id, doc) VALUES ($1, $2)")
                    .bind(&c.device_id)
                    .bind(Json(&c))
                    .execute(&mut *conn)
                    .await?;
            }
            BackupRecord::Heartbeat { device_id, beat } => {
                if self.device.as_ref().map(|d| d.0.as_str()) != Some(device_id.as_str()) {
                    return Err(StoreError::Invalid(format!(
                        "heartbeat of {device_id} outside its device's records"
                    )));
                }
                self.beats.push(beat);
            }
            BackupRecord::Live { device_id, live } => {
                self.flush_beats(conn, Some((&device_id, &live))).await?;
            }
            other => self.one_more(conn, other).await?,
        }
        Ok(())
    }

    async fn one_more(&mut self, conn: &mut PgConnection, record: BackupRecord) -> Result<()> {
        match record {
            BackupRecord::Bundle(b) => {
                sqlx::query("INSERT INTO bundles (bundle_id, version, doc) VALUES ($1, $2, $3)")
                    .bind(&b.id)
                    .bind(&b.version)
                    .bind(Json(&b))
                    .execute(&mut *conn)
                    .await?;
            }
            BackupRecord::BundleSignatures {
                bundle_id,
                document,
            } => {
                sqlx::query("INSERT INTO bundle_signatures (bundle_id, doc) VALUES ($1, $2)")
                    .bind(bundle_id)
                    .bind(Json(&document))
                    .execute(&mut *conn)
                    .await?;
            }
            BackupRecord::Trust(document) => {
                let version = document
                    .trust_metadata()
                    .map_err(|e| StoreError::Invalid(format!("trust document: {e}")))?
                    .version;
                sqlx::query("INSERT INTO trust (id, version, doc) VALUES (1, $1, $2)")
                    .bind(i64::try_from(version).map_err(StoreError::codec)?)
                    .bind(Json(&document))
                    .execute(&mut *conn)
                    .await?;
            }
            BackupRecord::Deployment(dep) => insert_deployment(conn, &dep).await?,
            BackupRecord::Target {
                deployment_id,
                target,
            } => insert_target(conn, &deployment_id, &target).await?,
            BackupRecord::WaveTarget {
                deployment_id,
                wave,
                position,
                device_id,
            } => {
                sqlx::query(
                    "UPDATE targets SET wave = $3, position = $4 \
                     WHERE deployment_id = $1 AND device_id = $2",
                )
                .bind(deployment_id)
                .bind(device_id)
                .bind(i32::try_from(wave).map_err(StoreError::codec)?)
                .bind(i64::try_from(position).map_err(StoreError::codec)?)
                .execute(&mut *conn)
                .await?;
            }
            BackupRecord::History(h) => {
                if h.status == ResultStatus::Success {
                    sqlx::query(
                        "INSERT INTO device_success (device_id, version) VALUES ($1, $2) \
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(&h.device_id)
                    .bind(&h.bundle_version)
                    .execute(&mut *conn)
                    .await?;
                }
                sqlx::query("INSERT INTO history (device_id, history_id, doc) VALUES ($1, $2, $3)")
                    .bind(&h.device_id)
                    .bind(&h.id)
                    .bind(Json(&h))
                    .execute(&mut *conn)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Store the current device's heartbeats (the newest `retention`, laid out in this
    /// store's ring) and its live record.
    async fn flush_beats(
        &mut self,
        conn: &mut PgConnection,
        live: Option<(&str, &LiveSnapshot)>,
    ) -> Result<()> {
        let beats = std::mem::take(&mut self.beats);
        let Some((device_id, interval)) = self.device.clone() else {
            if live.is_some() || !beats.is_empty() {
                return Err(StoreError::Invalid(
                    "heartbeats or a live record before any device".into(),
                ));
            }
            return Ok(());
        };
        let total = beats.len() as u64;
        let skip = total.saturating_sub(self.retention);
        let kept: Vec<(i32, i64, Json<&kernex_common::api::HeartbeatRecord>)> = beats
            .iter()
            .enumerate()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .map(|(i, b)| {
                // Numbered from 1, as the beat writer numbers a device's beats.
                let seq = i as u64 + 1;
                (
                    i32::try_from(seq % self.retention).unwrap_or(i32::MAX),
                    i64::try_from(seq).unwrap_or(i64::MAX),
                    Json(b),
                )
            })
            .collect();
        for (slot, seq, doc) in kept {
            sqlx::query(
                "INSERT INTO heartbeats (device_id, slot, seq, doc) VALUES ($1, $2, $3, $4)",
            )
            .bind(&device_id)
            .bind(slot)
            .bind(seq)
            .bind(doc)
            .execute(&mut *conn)
            .await?;
        }
        if let Some((live_id, live)) = live {
            if live_id != device_id {
                return Err(StoreError::Invalid(format!(
                    "live record of {live_id} outside its device's records"
                )));
            }
            let online_until = live.last_heartbeat
                + chrono::Duration::seconds(
                    i64::try_from(interval.saturating_mul(3)).unwrap_or(i64::MAX / 1000),
                );
            sqlx::query(
                "INSERT INTO device_live (device_id, last_heartbeat, online_until, beats, doc) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&device_id)
            .bind(live.last_heartbeat)
            .bind(online_until)
            .bind(i64::try_from(total).unwrap_or(i64::MAX))
            .bind(Json(live))
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

async fn insert_token(
    conn: &mut PgConnection,
    hash: &str,
    kind: &str,
    name: &str,
    created_at: Ts,
) -> Result<()> {
    sqlx::query("INSERT INTO tokens (hash, kind, name, created_at) VALUES ($1, $2, $3, $4)")
        .bind(hash)
        .bind(kind)
        .bind(name)
        .bind(created_at)
        .execute(conn)
        .await?;
    Ok(())
}

async fn insert_device(conn: &mut PgConnection, d: &DeviceRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO devices (device_id, fingerprint, admission, doc) VALUES ($1, $2, $3, $4)",
    )
    .bind(&d.device_id)
    .bind(&d.fingerprint)
    .bind(wire_name(&d.admission)?)
    .bind(Json(d))
    .execute(&mut *conn)
    .await?;
    if !d.tags.is_empty() {
        sqlx::query(
            "INSERT INTO device_tags (tag, device_id) SELECT t, $2 FROM UNNEST($1::text[]) AS t \
             ON CONFLICT DO NOTHING",
        )
        .bind(&d.tags)
        .bind(&d.device_id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn insert_deployment(conn: &mut PgConnection, dep: &DeploymentRecord) -> Result<()> {
    let last = dep.status.is_final();
    sqlx::query(
        "INSERT INTO deployments (deployment_id, bundle_id, status, final, rollout_active, doc) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&dep.id)
    .bind(&dep.bundle_id)
    .bind(wire_name(&dep.status)?)
    .bind(last)
    .bind(dep.rollout.is_some() && !last)
    .bind(Json(dep))
    .execute(conn)
    .await?;
    Ok(())
}

async fn insert_target(
    conn: &mut PgConnection,
    deployment_id: &str,
    t: &TargetRecord,
) -> Result<()> {
    // A waiting target becomes deliverable when its wave is released, not before.
    let open = !t.status.is_final() && t.status != TargetStatus::Waiting;
    sqlx::query(
        "INSERT INTO targets (deployment_id, device_id, status, open, wave, position, doc) \
         VALUES ($1, $2, $3, $4, $5, 0, $6)",
    )
    .bind(deployment_id)
    .bind(&t.device_id)
    .bind(wire_name(&t.status)?)
    .bind(open)
    .bind(i32::try_from(t.wave).map_err(StoreError::codec)?)
    .bind(Json(t))
    .execute(&mut *conn)
    .await?;
    if let Some(report_id) = &t.report_id {
        sqlx::query(
            "INSERT INTO reports (report_id, deployment_id, device_id) VALUES ($1, $2, $3)",
        )
        .bind(report_id)
        .bind(deployment_id)
        .bind(&t.device_id)
        .execute(conn)
        .await?;
    }
    Ok(())
}
