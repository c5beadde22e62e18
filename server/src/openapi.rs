//! The OpenAPI document of the HTTP API, generated from the code (utoipa): each handler
//! carries its `#[utoipa::path]` (method, path, parameters, bodies, every status it can
//! answer), the wire types in `kernex_common::api` derive their schemas, and [`ApiDoc`]
//! lists the handlers. Served at `GET /api/v1/openapi.json`; `tests/openapi.rs` checks it
//! against the router and against real responses, so it cannot drift from the routes.

use std::sync::LazyLock;

use kernex_common::api::ErrorBody;
use kernex_common::validate::MAX_ID_LEN;
use utoipa::openapi::RefOr;
use utoipa::openapi::encoding::EncodingBuilder;

use crate::error::ApiError;
use utoipa::openapi::schema::{
    AllOfBuilder, AnyOfBuilder, KnownFormat, ObjectBuilder, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, PartialSchema, ToResponse, ToSchema};

use crate::routes;

/// The whole document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Kernex server API", version = "1.0.0", description = "HTTP API of kernex-server (SPEC section 1). Times are RFC 3339 UTC. Unknown request fields are ignored. Every error has the body {\"error\": code, \"message\": text}. Operator endpoints take an operator token, device endpoints a device token, both as `Authorization: Bearer <token>`; a device token on an operator endpoint is 403. Status order: 401 credentials, 404 resource in the path, 403 permission, 400 body."),
    servers((url = "/")),
    security(("bearerAuth" = [])),
    tags(
        (name = "devices", description = "Registration, heartbeats, the fleet and admission."),
        (name = "config", description = "Versioned device configuration."),
        (name = "bundles", description = "Bundle archives: upload, download, delete."),
        (name = "deployments", description = "Deployments, rollbacks, device progress and results, history."),
        (name = "tokens", description = "Operator tokens."),
        (name = "events", description = "Live Server-Sent Events."),
        (name = "health", description = "Probes, metrics and this document."),
        (name = "signing", description = "Signed updates: bundle signatures and trust documents (SPEC section 7)."),
        (name = "backup", description = "Consistent snapshots of the whole store (backups, migration between backends)."),
    ),
    paths(
        routes::devices::register,
        routes::devices::rollback,
        routes::devices::list,
        routes::devices::get,
        routes::devices::patch,
        routes::devices::delete,
        routes::devices::heartbeat,
        routes::devices::heartbeats,
        routes::devices::accept,
        routes::devices::reject,
        routes::devices::history,
        routes::config::get,
        routes::config::put,
        routes::bundles::list,
        routes::bundles::upload,
        routes::bundles::download,
        routes::bundles::delete,
        routes::bundles::info,
        routes::deployments::list,
        routes::deployments::create,
        routes::deployments::get,
        routes::deployments::targets,
        routes::deployments::cancel,
        routes::deployments::pause,
        routes::deployments::resume,
        routes::deployments::progress,
        routes::deployments::result,
        routes::events::stream,
        routes::tokens::list,
        routes::tokens::create,
        routes::tokens::delete,
        routes::backup::download,
        routes::health::openapi,
        routes::health::healthz,
        routes::health::metrics,
        routes::signing::get_signatures,
        routes::signing::add_signatures,
        routes::signing::get_trust,
        routes::signing::put_trust,
    ),
    components(
        schemas(ErrorBody),
        responses(BadRequest, Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge, Internal, RequestTimeout, Unavailable),
    ),
    modifiers(&BearerAuth, &BundleRequired, &ErrorCodes, &UploadEncoding)
)]
pub struct ApiDoc;

/// The document as served: generated once, on first use.
pub static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("a document of strings and maps serialises")
});

/// The `bearerAuth` scheme every authenticated operation names.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "Operator token, or a device token returned by registration.",
            ))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearerAuth", SecurityScheme::Http(scheme));
    }
}

/// `POST /deployments` names its bundle by `bundle_version` or `bundle_id`, at least one
/// of them non-null (`routes::deployments::create` answers 400 otherwise): the derived
/// `CreateDeployment` schema, and one of the two.
struct BundleRequired;

impl Modify for BundleRequired {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let Some(schemas) = doc.components.as_mut().map(|c| &mut c.schemas) else {
            return;
        };
        let Some(derived) = schemas.remove("CreateDeployment") else {
            return;
        };
        let named = |field: &str| {
            ObjectBuilder::new()
                .schema_type(SchemaType::AnyValue)
                .property(
                    field,
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .min_length(Some(1))
                        .max_length(Some(MAX_ID_LEN)),
                )
                .required(field)
        };
        let either = AnyOfBuilder::new()
            .item(named("bundle_version"))
            .item(named("bundle_id"));
        schemas.insert(
            "CreateDeployment".to_owned(),
            AllOfBuilder::new().item(derived).item(either).into(),
        );
    }
}

/// `ErrorBody.error` is one of [`ApiError::CODES`].
struct ErrorCodes;

impl Modify for ErrorCodes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let Some(RefOr::T(Schema::Object(body))) = doc
            .components
            .as_mut()
            .and_then(|c| c.schemas.get_mut("ErrorBody"))
        else {
            return;
        };
        body.properties.insert(
            "error".to_owned(),
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(ApiError::CODES))
                .into(),
        );
    }
}

/// The `file` part of `POST /bundles` is the archive.
struct UploadEncoding;

impl Modify for UploadEncoding {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let Some(form) = doc
            .paths
            .paths
            .get_mut("/api/v1/bundles")
            .and_then(|item| item.post.as_mut())
            .and_then(|op| op.request_body.as_mut())
            .and_then(|body| body.content.get_mut("multipart/form-data"))
        else {
            return;
        };
        form.encoding.insert(
            "file".to_owned(),
            EncodingBuilder::new()
                .content_type(Some("application/gzip, application/octet-stream"))
                .build(),
        );
    }
}

// ------------------------------------------------------------------- error responses

/// Malformed request: invalid JSON, missing Content-Type: application/json, a missing or
/// invalid field, an out-of-range query value, or a reference to something that does not
/// exist.
#[derive(ToResponse)]
pub struct BadRequest(#[allow(dead_code)] ErrorBody);

/// Missing, invalid or revoked credentials.
#[derive(ToResponse)]
pub struct Unauthorized(#[allow(dead_code)] ErrorBody);

/// These credentials may not touch this resource.
#[derive(ToResponse)]
pub struct Forbidden(#[allow(dead_code)] ErrorBody);

/// The resource named in the path does not exist.
#[derive(ToResponse)]
pub struct NotFound(#[allow(dead_code)] ErrorBody);

/// Duplicate or conflicting state.
#[derive(ToResponse)]
pub struct Conflict(#[allow(dead_code)] ErrorBody);

/// Request body over the limit.
#[derive(ToResponse)]
pub struct PayloadTooLarge(#[allow(dead_code)] ErrorBody);

/// Server-side failure (details are only logged).
#[derive(ToResponse)]
pub struct Internal(#[allow(dead_code)] ErrorBody);

/// The request body stopped arriving (less than the minimum transfer rate).
#[derive(ToResponse)]
pub struct RequestTimeout(#[allow(dead_code)] ErrorBody);

/// A limit is reached (e.g. --max-pending: too many devices waiting for an accept), or
/// the request outlasted its budget.
#[derive(ToResponse)]
pub struct Unavailable(#[allow(dead_code)] ErrorBody);

// ------------------------------------------------------------------- path parameters

/// The `{device_id}` of a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DeviceIdParam {
    /// Device id.
    #[param(min_length = 1, max_length = 64)]
    #[allow(dead_code)]
    device_id: String,
}

/// The `{bundle_id}` of a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct BundleIdParam {
    /// Bundle id.
    #[param(min_length = 1, max_length = 64)]
    #[allow(dead_code)]
    bundle_id: String,
}

/// The `{deployment_id}` of a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DeploymentIdParam {
    /// Deployment id.
    #[param(min_length = 1, max_length = 64)]
    #[allow(dead_code)]
    deployment_id: String,
}

/// The `{name}` of a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TokenNameParam {
    /// Token name.
    #[param(min_length = 1, max_length = 64)]
    #[allow(dead_code)]
    name: String,
}

// ------------------------------------------------------------- non-JSON bodies

/// The multipart form of `POST /bundles` (read part by part in `routes::bundles::upload`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct BundleUpload {
    /// The bundle: a gzip'd tar with manifest.json at its root.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// Optional JSON text; must equal the archive's own manifest.json.
    manifest: Option<String>,
    /// Optional signed metadata document (the FILE.sig.json written by `kernex-console
    /// bundle sign`); must describe this archive (version, sha256, size).
    signatures: Option<String>,
}

/// Raw bytes (an archive): `{"type": "string", "format": "binary"}`.
pub struct Binary;

impl PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl ToSchema for Binary {}

/// Any JSON object.
pub struct JsonObject;

impl PartialSchema for JsonObject {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new().schema_type(Type::Object).into()
    }
}

impl ToSchema for JsonObject {}

/// The `Accept-Ranges` header of a bundle download: always `bytes`.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum AcceptRanges {
    Bytes,
}
