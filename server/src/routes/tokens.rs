//! Operator tokens over the API.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use kernex_common::api::{CreateToken, CreatedToken, TokenInfo};

use crate::auth::{Caller, hash_token, mint_token};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::state::AppState;

/// A token name: 1–64 chars of `[A-Za-z0-9._-]`.
pub fn valid_token_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `POST /tokens`.
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    operation_id = "createToken",
    tag = "tokens",
    summary = "Create an operator token",
    description = "409 when a token of that name exists. JSON bodies are limited to 1 MiB (413 above).",
    security(("bearerAuth" = [])),
    request_body = kernex_common::api::CreateToken,
    responses(
        (status = 201, description = "The new token (shown only here).", body = kernex_common::api::CreatedToken),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<ApiJson<CreateToken>, ApiError>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    caller.require_operator()?;
    let ApiJson(req) = body?;
    if !valid_token_name(&req.name) {
        return Err(ApiError::bad_request(
            "name must be 1-64 characters of [A-Za-z0-9._-]",
        ));
    }
    let token = mint_token("kxo_");
    state
        .store
        .create_operator_token(&req.name, &hash_token(&token), Utc::now())
        .await?;
    tracing::info!(token.name = %req.name, "operator token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            name: req.name,
            token,
        }),
    ))
}

/// `GET /tokens` — names and creation times, never the tokens.
#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    operation_id = "listTokens",
    tag = "tokens",
    summary = "List operator tokens",
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "Names and creation times (never the tokens).", body = Vec<kernex_common::api::TokenInfo>),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<TokenInfo>>> {
    caller.require_operator()?;
    let tokens = state.store.list_operator_tokens().await?;
    Ok(Json(
        tokens
            .into_iter()
            .map(|t| TokenInfo {
                name: t.name,
                created_at: t.created_at,
            })
            .collect(),
    ))
}

/// `DELETE /tokens/{name}` query.
#[derive(Debug, Default, serde::Deserialize)]
pub struct DeleteQuery {
    /// `self=true`: yes, revoke the very token this request is made with.
    #[serde(default, rename = "self")]
    pub confirm_self: bool,
}

/// `DELETE /tokens/{name}`. Revoking the token the request is made with ends the
/// caller's own session, so it needs `?self=true` (else 409 and nothing changes).
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{name}",
    operation_id = "deleteToken",
    tag = "tokens",
    summary = "Revoke an operator token",
    description = "Revoking the token this request is made with ends the caller's own session: that needs ?self=true, else 409 conflict and nothing changes. 404 when no token has that name.",
    security(("bearerAuth" = [])),
    params(
        crate::openapi::TokenNameParam,
        ("self" = Option<bool>, Query, description = "true confirms revoking the very token this request is made with.", example = json!(false)),
    ),
    responses(
        (status = 204, description = "Revoked."),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    query: Result<ApiQuery<DeleteQuery>, ApiError>,
) -> ApiResult<StatusCode> {
    if !state.store.operator_token_exists(&name).await? {
        return Err(ApiError::not_found(format!("no token named {name:?}")));
    }
    caller.require_operator()?;
    let ApiQuery(query) = query?;
    if matches!(&caller, Caller::Operator { name: own } if *own == name) && !query.confirm_self {
        return Err(ApiError::conflict(format!(
            "{name:?} is the token this request is made with: revoking it ends this \
             session; repeat with ?self=true to confirm"
        )));
    }
    state.store.delete_operator_token(&name).await?;
    tracing::info!(token.name = %name, "operator token deleted");
    Ok(StatusCode::NO_CONTENT)
}
