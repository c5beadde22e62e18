//! Versioned device configuration.

use kernex_common::api::{ConfigUpdate, DeviceConfig};
use sled::Transactional;

use super::*;

impl Store {
    /// The device's config, or the defaults at version 1 if none was ever set.
    pub fn config(&self, device_id: &str) -> Result<DeviceConfig> {
        Ok(get(&self.configs, device_id)?.unwrap_or_else(|| DeviceConfig::defaults(device_id)))
    }

    /// Apply an already validated update: version + 1, the rest kept. Also copies the
    /// interval onto the device record (listing derives online status from it).
    pub fn update_config(
        &self,
        device_id: &str,
        update: &ConfigUpdate,
        now: Ts,
    ) -> Result<DeviceConfig> {
        (&self.devices, &self.configs)
            .transaction(|(devices, configs)| {
                let Some(mut device) = tx_get::<DeviceRecord>(devices, device_id)? else {
                    return abort(StoreError::NotFound(format!("no device {device_id:?}")));
                };
                let mut c = tx_get::<DeviceConfig>(configs, device_id)?
                    .unwrap_or_else(|| DeviceConfig::defaults(device_id));
                c.version += 1;
                if let Some(v) = update.polling_interval {
                    c.polling_interval = v;
                }
                if let Some(v) = update.heartbeat_timeout {
                    c.heartbeat_timeout = v;
                }
                if let Some(v) = update.deploy_timeout {
                    c.deploy_timeout = v;
                }
                if let Some(v) = &update.log_level {
                    c.log_level = v.clone();
                }
                if let Some(v) = &update.metadata {
                    c.metadata = v.clone();
                }
                c.updated_at = Some(now);
                tx_put(configs, device_id, &c)?;
                if device.polling_interval != c.polling_interval {
                    device.polling_interval = c.polling_interval;
                    tx_put(devices, device_id, &device)?;
                }
                Ok(c)
            })
            .map_err(tx_err)
    }
}
