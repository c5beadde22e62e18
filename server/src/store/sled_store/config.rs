//! Versioned device configuration on sled (merged by [`rules::merge_config`]).

use kernex_common::api::{ConfigUpdate, DeviceConfig};

use super::*;
use crate::service::rules;

impl SledStore {
    /// The device's config, or the defaults at version 1 if none was ever set.
    pub(super) fn config(&self, device_id: &str) -> Result<DeviceConfig> {
        Ok(get(&self.configs, device_id)?.unwrap_or_else(|| DeviceConfig::defaults(device_id)))
    }

    /// Apply an already validated update. Also copies the interval onto the device
    /// record (listing derives online status from it).
    pub(super) fn update_config(
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
                let current = tx_get::<DeviceConfig>(configs, device_id)?
                    .unwrap_or_else(|| DeviceConfig::defaults(device_id));
                let c = rules::merge_config(current, update, now);
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
