//! PostgreSQL: versioned device config.
#![allow(unused_variables)] // stubs: removed as each method is written

use super::*;

impl PgStore {
    pub(super) async fn config(&self, device_id: &str) -> Result<DeviceConfig> {
        Err(not_built("config"))
    }

    pub(super) async fn update_config(
        &self,
        device_id: &str,
        update: &ConfigUpdate,
        now: Ts,
    ) -> Result<DeviceConfig> {
        Err(not_built("update_config"))
    }
}
