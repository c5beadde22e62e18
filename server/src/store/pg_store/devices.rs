//! PostgreSQL: registration, device records, listing, tags.
//!
//! A device is its `devices` row (the [`DeviceRecord`] in `doc`, with `fingerprint` and
//! `admission` beside it) plus, once it beat, its `device_live` row. Tags are in the
//! record and, for the tag queries, in `device_tags`.
//!
//! Row locks on `devices`: a write to one device (tags, config, registration) takes its
//! row `FOR NO KEY UPDATE`; heartbeat batches take `FOR KEY SHARE`, which that does not
//! block, so a beat never waits for an operator's edit (only a deletion waits for, and
//! is waited on by, a batch holding the device).

use kernex_common::api::{Admission, OnlineStatus};
use sqlx::PgConnection;
use sqlx::types::Json;

use super::beats::live_from_doc;
use super::counts::admission_moved;
use super::tokens::set_device_token;
use super::*;
use crate::service::rules;

/// The columns [`device_from_row`] reads, for `FROM devices d LEFT JOIN device_live l`.
pub(super) const DEVICE_COLUMNS: &str = "d.doc, l.doc";

type DeviceRow = (Json<DeviceRecord>, Option<Json<LiveSnapshot>>);

fn device_from_row((record, live): DeviceRow) -> Device {
    Device {
        record: record.0,
        live: live.map(|l| live_from_doc(l.0)),
    }
}

/// A device with its live record, read in the caller's transaction (`None`: no such
/// device). `lock` takes the device row `FOR NO KEY UPDATE` (it blocks other writers of
/// the device, not the heartbeats' `FOR KEY SHARE`; the live row is not locked: only
/// heartbeats write it).
pub(super) async fn load_device(
    conn: &mut PgConnection,
    device_id: &str,
    lock: bool,
) -> Result<Option<Device>> {
    let sql = format!(
        "SELECT {DEVICE_COLUMNS} FROM devices d LEFT JOIN device_live l USING (device_id) \
         WHERE d.device_id = $1{}",
        if lock { " FOR NO KEY UPDATE OF d" } else { "" }
    );
    let row: Option<DeviceRow> = sqlx::query_as(&sql)
        .bind(device_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(device_from_row))
}

/// Rewrite a device's record (and its `admission` column) in the caller's transaction.
/// Tags are not touched here: [`PgStore::set_tags`] keeps `device_tags` in step.
pub(super) async fn store_device_record(conn: &mut PgConnection, d: &DeviceRecord) -> Result<()> {
    sqlx::query("UPDATE devices SET admission = $2, doc = $3 WHERE device_id = $1")
        .bind(&d.device_id)
        .bind(wire_name(&d.admission)?)
        .bind(Json(d))
        .execute(conn)
        .await?;
    Ok(())
}

/// Can PostgreSQL hold this text? (Not U+0000.) A key with one names nothing stored, so
/// lookups answer "not found" without asking the database.
pub(super) fn storable(key: &str) -> bool {
    !key.contains('\0')
}

fn no_device(device_id: &str) -> StoreError {
    StoreError::NotFound(format!("no device {device_id:?}"))
}

impl PgStore {
    /// Store a verified registration (SPEC §1.2). The replay check, the admission rule
    /// and the token swap commit together; a refusal after the replay check commits the
    /// burned signature and returns its error.
    pub(super) async fn register(&self, reg: &NewRegistration) -> Result<RegisterOutcome> {
        let mut tx = self.pool.begin().await?;
        let outcome = register_tx(&mut tx, reg).await?;
        tx.commit().await?;
        // A key registered again has a new token; the old one is revoked.
        self.token_cache().clear();
        self.prune_registrations(reg.now).await?;
        let (record, created) = outcome?;
        let device = self.device(&record.device_id).await?;
        Ok(RegisterOutcome { device, created })
    }

    /// Forget replay-window entries that expired: an index range on `expires_at`, so it
    /// touches only those, however many registrations are remembered.
    async fn prune_registrations(&self, now: Ts) -> Result<()> {
        sqlx::query("DELETE FROM registrations WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn device(&self, device_id: &str) -> Result<Device> {
        if !storable(device_id) {
            return Err(no_device(device_id));
        }
        let mut conn = self.pool.acquire().await?;
        load_device(&mut conn, device_id, false)
            .await?
            .ok_or_else(|| no_device(device_id))
    }

    pub(super) async fn admissions(
        &self,
        device_ids: &[String],
    ) -> Result<std::collections::HashMap<String, Admission>> {
        // An id PostgreSQL cannot hold (a NUL byte) names no device.
        let ids: Vec<&str> = device_ids
            .iter()
            .map(String::as_str)
            .filter(|id| storable(id))
            .collect();
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT device_id, admission FROM devices WHERE device_id = ANY($1)")
                .bind(&ids)
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(id, admission)| {
                let admission = Admission::parse(&admission).ok_or_else(|| {
                    StoreError::backend(format!("device {id}: unknown admission {admission:?}"))
                })?;
                Ok((id, admission))
            })
            .collect()
    }

    pub(super) async fn device_exists(&self, device_id: &str) -> Result<bool> {
        if !storable(device_id) {
            return Ok(false);
        }
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM devices WHERE device_id = $1)")
                .bind(device_id)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// One page of devices ordered by id, after the cursor, matching the filter: one
    /// query naming only the filters given, so the planner walks an index in id order:
    /// `device_tags`' primary key with a tag, `devices_by_admission` with an admission,
    /// `devices`' primary key else; the status filter compares
    /// `device_live.online_until`.
    pub(super) async fn list_devices(&self, f: &DeviceFilter, now: Ts) -> Result<Vec<Device>> {
        let admission = f.admission.as_ref().map(wire_name).transpose()?;
        let mut q =
            sqlx::QueryBuilder::<sqlx::Postgres>::new(format!("SELECT {DEVICE_COLUMNS} FROM "));
        // The cursor is repeated on every table joined by id: the planner does not carry
        // it across a merge join, and would read `device_live` from its start.
        match &f.tag {
            Some(tag) => {
                q.push("device_tags t JOIN devices d ON d.device_id = t.device_id AND t.tag = ")
                    .push_bind(tag);
                if let Some(after) = &f.after {
                    q.push(" AND t.device_id > ").push_bind(after);
                }
            }
            None => {
                q.push("devices d");
            }
        }
        q.push(" LEFT JOIN device_live l ON l.device_id = d.device_id");
        if let Some(after) = &f.after {
            q.push(" AND l.device_id > ").push_bind(after);
        }
        q.push(" WHERE true");
        if let Some(after) = &f.after {
            q.push(" AND d.device_id > ").push_bind(after);
        }
        if let Some(a) = admission {
            q.push(" AND d.admission = ").push_bind(a);
        }
        let threshold = super::beats::online_threshold(now);
        match f.status {
            None => {}
            Some(OnlineStatus::Never) => {
                q.push(" AND l.device_id IS NULL");
            }
            Some(OnlineStatus::Online) => {
                q.push(" AND l.online_until > ").push_bind(threshold);
            }
            Some(OnlineStatus::Offline) => {
                q.push(" AND l.online_until <= ").push_bind(threshold);
            }
        }
        q.push(" ORDER BY d.device_id LIMIT ")
            .push_bind(i64::try_from(f.limit).unwrap_or(i64::MAX));
        let rows: Vec<DeviceRow> = q.build_query_as().fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(device_from_row).collect())
    }

    /// Accepted devices carrying any of `tags`, deduplicated, in id order.
    pub(super) async fn accepted_devices_with_tags(&self, tags: &[String]) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT t.device_id FROM device_tags t \
             JOIN devices d ON d.device_id = t.device_id \
             WHERE t.tag = ANY($1) AND d.admission = 'accepted' ORDER BY t.device_id",
        )
        .bind(tags)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Replace a device's tags (already validated): the record and `device_tags` in one
    /// transaction, the device row locked.
    pub(super) async fn set_tags(&self, device_id: &str, tags: &[String]) -> Result<Device> {
        let mut tx = self.pool.begin().await?;
        let Some(mut device) = load_device(&mut tx, device_id, true).await? else {
            return Err(no_device(device_id));
        };
        sqlx::query("DELETE FROM device_tags WHERE device_id = $1")
            .bind(device_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO device_tags (tag, device_id) SELECT DISTINCT tag, $2 FROM UNNEST($1::text[]) AS tag",
        )
        .bind(tags)
        .bind(device_id)
        .execute(&mut *tx)
        .await?;
        device.record.tags = tags.to_vec();
        store_device_record(&mut tx, &device.record).await?;
        tx.commit().await?;
        Ok(device)
    }
}

/// The registration transaction. The outer `Err` rolls back; the inner one is a refusal
/// that commits (the signature stays burned).
async fn register_tx(
    conn: &mut PgConnection,
    reg: &NewRegistration,
) -> Result<Result<(DeviceRecord, bool)>> {
    // The replay check: a concurrent use of the same signature waits on the primary key
    // and then finds it taken.
    let fresh = sqlx::query(
        "INSERT INTO registrations (signature_hash, expires_at) VALUES ($1, $2) \
         ON CONFLICT (signature_hash) DO NOTHING",
    )
    .bind(&reg.signature_hash)
    .bind(reg.replay_until)
    .execute(&mut *conn)
    .await?;
    if fresh.rows_affected() == 0 {
        return Err(StoreError::Unauthorized(
            "this registration request was already used; sign a new one".into(),
        ));
    }
    // From here a refusal commits: the signature stays burned.
    if let Some(why) = &reg.refusal {
        return Ok(Err(StoreError::Unauthorized(why.clone())));
    }
    // Two attempts at most: a registration of the same key that committed between our
    // read and our insert is found by the second read (its row is then locked).
    for _ in 0..2 {
        let existing: Option<Json<DeviceRecord>> =
            sqlx::query_scalar("SELECT doc FROM devices WHERE fingerprint = $1 FOR NO KEY UPDATE")
                .bind(&reg.fingerprint)
                .fetch_optional(&mut *conn)
                .await?;
        let existing = existing.map(|j| j.0);
        let admission = match rules::admit(existing.as_ref(), reg.admission) {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        let before = existing.as_ref().map(|d| d.admission);
        let device = match existing {
            Some(mut d) => {
                d.admission = admission;
                d.device_type = reg.device_type.clone();
                d.hardware_metadata = reg.hardware_metadata.clone();
                store_device_record(conn, &d).await?;
                d
            }
            None => {
                if let Some(max) = reg.max_pending
                    && admission == Admission::Pending
                    && pending_count_locked(conn).await? >= max
                {
                    return Ok(Err(StoreError::Unavailable(format!(
                        "{max} devices are already waiting for an operator's accept \
                         (--max-pending); register with the enrollment token or try later"
                    ))));
                }
                let mut d = new_device(reg);
                d.admission = admission;
                if !insert_device(conn, &d).await? {
                    continue;
                }
                d
            }
        };
        set_device_token(conn, &device.device_id, &reg.token_hash, reg.now).await?;
        admission_moved(conn, before, Some(admission)).await?;
        return Ok(Ok((device, before.is_none())));
    }
    Err(StoreError::Conflict(
        "another registration of this key is in progress; try again".into(),
    ))
}

/// Pending devices now, with the counter's row locked until the transaction ends, so
/// concurrent registrations of new pending devices cannot both pass the cap.
async fn pending_count_locked(conn: &mut PgConnection) -> Result<u64> {
    let key = counts::admission_key(Admission::Pending);
    sqlx::query("INSERT INTO counters (name, value) VALUES ($1, 0) ON CONFLICT DO NOTHING")
        .bind(key)
        .execute(&mut *conn)
        .await?;
    let n: i64 = sqlx::query_scalar("SELECT value FROM counters WHERE name = $1 FOR UPDATE")
        .bind(key)
        .fetch_one(&mut *conn)
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Insert a new device; `false` when its key is taken (a concurrent registration).
async fn insert_device(conn: &mut PgConnection, d: &DeviceRecord) -> Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO devices (device_id, fingerprint, admission, doc) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (fingerprint) DO NOTHING",
    )
    .bind(&d.device_id)
    .bind(&d.fingerprint)
    .bind(wire_name(&d.admission)?)
    .bind(Json(d))
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

fn new_device(reg: &NewRegistration) -> DeviceRecord {
    DeviceRecord {
        device_id: new_id(),
        device_type: reg.device_type.clone(),
        admission: reg.admission,
        tags: Vec::new(),
        public_key_pem: reg.public_key_pem.clone(),
        fingerprint: reg.fingerprint.clone(),
        hardware_metadata: reg.hardware_metadata.clone(),
        registered_at: reg.now,
        polling_interval: kernex_common::api::DeviceConfig::DEFAULT_POLLING_INTERVAL,
        current_bundle_version: None,
        version_set_at: None,
        last_deployment: None,
    }
}
