//! Signed updates (SPEC §7): a bundle's signatures (`/bundles/{id}/signatures`) and the
//! trust document (`/trust`). The server stores what operators signed offline and hands
//! it to devices; it holds no signing key and cannot make a signature.

use axum::Json;
use axum::extract::State;
use kernex_common::update_signing::SignedDocument;
use tracing::instrument;

use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::service::signing::check_against_bundle;
use crate::state::AppState;

/// `GET /bundles/{id}/signatures` — the signed metadata and every stored signature.
#[utoipa::path(
    get,
    path = "/api/v1/bundles/{bundle_id}/signatures",
    operation_id = "getBundleSignatures",
    tag = "signing",
    summary = "Get a bundle's signed metadata and signatures",
    security(("bearerAuth" = [])),
    params(
        crate::openapi::BundleIdParam,
    ),
    responses(
        (status = 200, description = "The stored document.", body = kernex_common::update_signing::SignedDocument),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn get_signatures(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<SignedDocument>> {
    state.store.bundle(&id).await?;
    caller.require_operator()?;
    let doc = state
        .store
        .bundle_signatures(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("bundle {id} has no signatures yet")))?;
    Ok(Json(doc))
}

/// `POST /bundles/{id}/signatures` — add signatures (the first document sets the signed
/// metadata, which must describe this archive; later ones must sign the same text).
#[utoipa::path(
    post,
    path = "/api/v1/bundles/{bundle_id}/signatures",
    operation_id = "addBundleSignatures",
    tag = "signing",
    summary = "Add signatures to a bundle",
    description = "The first document sets the bundle's signed metadata, which must describe the archive (version, sha256, size), else 400. Later documents must be over the same metadata text (409 otherwise); their signatures are added. The server verifies nothing it cannot: devices check the signatures against their own trusted keys.",
    security(("bearerAuth" = [])),
    params(
        crate::openapi::BundleIdParam,
    ),
    request_body = kernex_common::update_signing::SignedDocument,
    responses(
        (status = 200, description = "Every signature stored for the bundle now.", body = kernex_common::update_signing::SignedDocument),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 500, response = crate::openapi::Internal),
    )
)]
#[instrument(skip_all, err(level = "warn"), fields(bundle.id = %id))]
pub async fn add_signatures(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    body: Result<ApiJson<SignedDocument>, ApiError>,
) -> ApiResult<Json<SignedDocument>> {
    let bundle = state.store.bundle(&id).await?;
    caller.require_operator()?;
    let ApiJson(doc) = body?;
    check_against_bundle(&doc, &bundle)?;
    let stored = state.store.add_bundle_signatures(&id, &doc).await?;
    tracing::info!(version = %bundle.version, signatures = stored.signatures.len(), "bundle signatures stored");
    Ok(Json(stored))
}

/// `GET /trust` — the newest trust document.
#[utoipa::path(
    get,
    path = "/api/v1/trust",
    operation_id = "getTrust",
    tag = "signing",
    summary = "Get the newest trust document",
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "The trust document devices are given.", body = kernex_common::update_signing::SignedDocument),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::Internal),
    )
)]
pub async fn get_trust(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<SignedDocument>> {
    caller.require_operator()?;
    let doc = state
        .store
        .trust_document()
        .await?
        .ok_or_else(|| ApiError::not_found("no trust document has been pushed"))?;
    Ok(Json(doc))
}

/// `PUT /trust` — store a newer trust document; devices get it in their heartbeats.
#[utoipa::path(
    put,
    path = "/api/v1/trust",
    operation_id = "putTrust",
    tag = "signing",
    summary = "Push a new trust document (key rotation)",
    description = "Kept when its version is above the stored one (409 otherwise) and, once one is stored, signed by a threshold of the stored set's keys (400 otherwise). Devices whose heartbeat reports a lower trust_version get it as a `trust` command.",
    security(("bearerAuth" = [])),
    request_body = kernex_common::update_signing::SignedDocument,
    responses(
        (status = 200, description = "Stored.", body = kernex_common::update_signing::SignedDocument),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 500, response = crate::openapi::Internal),
    )
)]
#[instrument(skip_all, err(level = "warn"))]
pub async fn put_trust(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<ApiJson<SignedDocument>, ApiError>,
) -> ApiResult<Json<SignedDocument>> {
    caller.require_operator()?;
    let ApiJson(doc) = body?;
    let anchor = state.limits.signatures.anchor();
    let version = state
        .store
        .put_trust_document(&doc, anchor.as_ref())
        .await?;
    state.heartbeats.trust.set(Some((version, doc.clone())));
    tracing::info!(version, "trust document stored");
    Ok(Json(doc))
}
