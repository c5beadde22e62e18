//! PostgreSQL: registration, device records, listing, tags.
#![allow(unused_variables)] // stubs: removed as each method is written

use super::*;

impl PgStore {
    pub(super) async fn register(&self, reg: &NewRegistration) -> Result<RegisterOutcome> {
        Err(not_built("register"))
    }

    pub(super) async fn device(&self, device_id: &str) -> Result<Device> {
        Err(not_built("device"))
    }

    pub(super) async fn device_exists(&self, device_id: &str) -> Result<bool> {
        Err(not_built("device_exists"))
    }

    pub(super) async fn list_devices(&self, filter: &DeviceFilter, now: Ts) -> Result<Vec<Device>> {
        Err(not_built("list_devices"))
    }

    pub(super) async fn accepted_devices_with_tags(&self, tags: &[String]) -> Result<Vec<String>> {
        Err(not_built("accepted_devices_with_tags"))
    }

    pub(super) async fn set_tags(&self, device_id: &str, tags: &[String]) -> Result<Device> {
        Err(not_built("set_tags"))
    }
}
