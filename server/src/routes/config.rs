//! Versioned device configuration.

use axum::Json;
use axum::extract::State;
use chrono::Utc;
use kernex_common::api::events::ServerEvent;
use kernex_common::api::{ConfigUpdate, DeviceConfig};

use super::{Access, device_access};
use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::state::AppState;

/// Largest `metadata` object, serialised.
const MAX_METADATA_BYTES: usize = 16 * 1024;

/// `GET /devices/{id}/config` — an operator or the device itself.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{device_id}/config",
    operation_id = "getDeviceConfig",
    tag = "config",
    summary = "Get a device's configuration",
    description = "Operator token, or the device's own token.",
    security(("bearerAuth" = [])),
    params(
        crate::openapi::DeviceIdParam,
    ),
    responses(
        (status = 200, description = "The current configuration (defaults at version 1 when never set).", body = kernex_common::api::DeviceConfig),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(device_id): ApiPath<String>,
) -> ApiResult<Json<DeviceConfig>> {
    device_access(&state, &caller, &device_id, Access::OperatorOrDevice).await?;
    Ok(Json(state.store.config(&device_id).await?))
}

fn in_range(field: &str, v: Option<u64>, lo: u64, hi: u64) -> Result<(), ApiError> {
    match v {
        Some(n) if !(lo..=hi).contains(&n) => Err(ApiError::bad_request(format!(
            "{field} must be between {lo} and {hi}, got {n}"
        ))),
        _ => Ok(()),
    }
}

/// Check every field of an update against SPEC §1.3; nothing is stored unless all pass.
pub fn validate(u: &ConfigUpdate) -> Result<(), ApiError> {
    in_range("polling_interval", u.polling_interval, 5, 86_400)?;
    in_range("heartbeat_timeout", u.heartbeat_timeout, 1, 300)?;
    in_range("deploy_timeout", u.deploy_timeout, 1, 86_400)?;
    if let Some(level) = &u.log_level
        && !DeviceConfig::LOG_LEVELS.contains(&level.as_str())
    {
        return Err(ApiError::bad_request(
            "log_level must be one of trace, debug, info, warn, error",
        ));
    }
    if let Some(m) = &u.metadata {
        if !m.is_object() {
            return Err(ApiError::bad_request("metadata must be an object"));
        }
        if m.to_string().len() > MAX_METADATA_BYTES {
            return Err(ApiError::bad_request("metadata is larger than 16 KiB"));
        }
    }
    Ok(())
}

/// `PUT /devices/{id}/config` — operators; any subset of the fields, version + 1.
#[utoipa::path(
    put,
    path = "/api/v1/devices/{device_id}/config",
    operation_id = "putDeviceConfig",
    tag = "config",
    summary = "Update a device's configuration",
    description = "Any subset of the fields; anything out of range is 400 and nothing changes. JSON bodies are limited to 1 MiB (413 above).",
    security(("bearerAuth" = [])),
    params(
        crate::openapi::DeviceIdParam,
    ),
    request_body = kernex_common::api::ConfigUpdate,
    responses(
        (status = 200, description = "The new configuration; version increased by 1.", body = kernex_common::api::DeviceConfig),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(device_id): ApiPath<String>,
    body: Result<ApiJson<ConfigUpdate>, ApiError>,
) -> ApiResult<Json<DeviceConfig>> {
    device_access(&state, &caller, &device_id, Access::OperatorOnly).await?;
    let ApiJson(update) = body?;
    validate(&update)?;
    let config = state
        .store
        .update_config(&device_id, &update, Utc::now())
        .await?;
    state.heartbeats.config_changed(&config);
    tracing::info!(device.id = %device_id, version = config.version, "config updated");
    state.events.emit(ServerEvent::Config(config.clone()));
    Ok(Json(config))
}
