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
