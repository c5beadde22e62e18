//! PostgreSQL: versioned device config (merged by [`rules::merge_config`]).

use sqlx::types::Json;

use super::beats::online_until;
use super::devices::{load_device, store_device_record};
use super::*;
use crate::service::rules;

impl PgStore {
    /// The device's config, or the defaults at version 1 if none was ever set.
    pub(super) async fn config(&self, device_id: &str) -> Result<DeviceConfig> {
        if !super::devices::storable(device_id) {
            return Ok(DeviceConfig::defaults(device_id));
        }
        let stored: Option<Json<DeviceConfig>> =
            sqlx::query_scalar("SELECT doc FROM configs WHERE device_id = $1")
                .bind(device_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(stored.map_or_else(|| DeviceConfig::defaults(device_id), |j| j.0))
    }

    /// Apply an already validated update, with the device row locked (two updates at
    /// once each add exactly one version). A new interval is copied onto the device
    /// record and its live row's online window (listing and `/metrics` read those).
    pub(super) async fn update_config(
        &self,
        device_id: &str,
        update: &ConfigUpdate,
        now: Ts,
    ) -> Result<DeviceConfig> {
        let mut tx = self.pool.begin().await?;
        let Some(mut device) = load_device(&mut tx, device_id, true).await? else {
            return Err(StoreError::NotFound(format!("no device {device_id:?}")));
        };
        let current: Option<Json<DeviceConfig>> =
            sqlx::query_scalar("SELECT doc FROM configs WHERE device_id = $1")
                .bind(device_id)
                .fetch_optional(&mut *tx)
                .await?;
        let current = current.map_or_else(|| DeviceConfig::defaults(device_id), |j| j.0);
        let c = rules::merge_config(current, update, now);
        sqlx::query(
            "INSERT INTO configs (device_id, doc) VALUES ($1, $2) \
             ON CONFLICT (device_id) DO UPDATE SET doc = EXCLUDED.doc",
        )
        .bind(device_id)
        .bind(Json(&c))
        .execute(&mut *tx)
        .await?;
        if device.record.polling_interval != c.polling_interval {
            device.record.polling_interval = c.polling_interval;
            store_device_record(&mut tx, &device.record).await?;
            if let Some(live) = &device.live {
                sqlx::query("UPDATE device_live SET online_until = $2 WHERE device_id = $1")
                    .bind(device_id)
                    .bind(online_until(live.last_heartbeat, c.polling_interval))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(c)
    }
}
