//! HTTP handlers, one file per area. Routing lives in `crate::router`.

pub mod backup; // GET /backup, streamed snapshot
pub mod bundles; // upload, list, download (Range), delete
pub mod config; // versioned device config
pub mod deployments; // deployments, progress, results
pub mod devices; // register, heartbeat, devices, history, rollback
pub mod events; // /events SSE
pub mod health; // /healthz, /metrics, /openapi.json
pub mod signing; // bundle signatures, trust documents (SPEC §7)
pub mod tokens; // operator tokens

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Who may touch a device's own resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    OperatorOnly,
    DeviceOnly,
    OperatorOrDevice,
}

/// Resolve a device named in the path, in the spec's order: 404 when it does not exist,
/// then 403 when this caller may not touch it. (401 was settled by the extractor.)
pub async fn device_access(
    state: &AppState,
    caller: &Caller,
    device_id: &str,
    access: Access,
) -> ApiResult<()> {
    let own = matches!(caller, Caller::Device { device_id: d } if d == device_id);
    // A live device token implies its device exists (deleting a device revokes its
    // tokens in the same transaction): no extra read on the device's own calls.
    if own && access != Access::OperatorOnly {
        return Ok(());
    }
    if !state.store.device_exists(device_id).await? {
        return Err(ApiError::not_found(format!("no device {device_id:?}")));
    }
    match (access, caller) {
        (Access::OperatorOnly, _) => caller.require_operator(),
        (Access::OperatorOrDevice, Caller::Operator { .. }) => Ok(()),
        _ => caller.require_device(device_id),
    }
}

/// A `limit` query value: `default` when absent, 400 outside `1..=max`.
pub fn limit(value: Option<usize>, default: usize, max: usize) -> ApiResult<usize> {
    match value {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit must be between 1 and {max}, got {n}"
        ))),
    }
}

/// A short free-text field: at most `max` characters.
pub fn check_len(field: &str, value: &str, max: usize) -> ApiResult<()> {
    if value.chars().count() > max {
        return Err(ApiError::bad_request(format!(
            "{field} is longer than {max} characters"
        )));
    }
    Ok(())
}
