//! OpenAPI schemas (utoipa, feature `openapi`) of the wire fields whose rules live in code
//! rather than in their Rust type: enumerated strings, free-form objects and arrays of
//! constrained strings. The derives in [`super`] name these with `schema_with`.

use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{RefOr, schema::AdditionalProperties};

use crate::api::{DeviceConfig, Health};
use crate::validate::{MAX_ID_LEN, MAX_TAGS};

/// [`crate::validate::is_valid_tag`] as a pattern.
pub const TAG_PATTERN: &str = "^[A-Za-z0-9._:-]{1,64}$";

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn nullable(t: Type) -> SchemaType {
    SchemaType::from_iter([t, Type::Null])
}

fn tag() -> ObjectBuilder {
    string()
        .pattern(Some(TAG_PATTERN))
        .min_length(Some(1))
        .max_length(Some(MAX_ID_LEN))
}

fn id() -> ObjectBuilder {
    string().min_length(Some(1)).max_length(Some(MAX_ID_LEN))
}

/// A config `log_level`: one of [`DeviceConfig::LOG_LEVELS`].
pub fn log_level() -> RefOr<Schema> {
    string().enum_values(Some(DeviceConfig::LOG_LEVELS)).into()
}

/// An optional `log_level` of a config update.
pub fn log_level_or_null() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(nullable(Type::String))
        .enum_values(Some(
            DeviceConfig::LOG_LEVELS
                .iter()
                .map(|l| serde_json::Value::from(*l))
                .chain([serde_json::Value::Null]),
        ))
        .into()
}

/// The `status` of `GET /healthz`: [`Health::OK`].
pub fn health_status() -> RefOr<Schema> {
    string().enum_values(Some([Health::OK])).into()
}

/// A free-form JSON object.
pub fn object() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::FreeForm(true)))
        .into()
}

/// A free-form JSON object, or null.
pub fn object_or_null() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(nullable(Type::Object))
        .additional_properties(Some(AdditionalProperties::FreeForm(true)))
        .into()
}

/// The tags of a device: at most [`MAX_TAGS`] valid tags.
pub fn device_tags() -> RefOr<Schema> {
    ArrayBuilder::new()
        .items(tag())
        .max_items(Some(MAX_TAGS))
        .into()
}

/// Tags to select devices by.
pub fn tags() -> RefOr<Schema> {
    ArrayBuilder::new().items(tag()).into()
}

/// Device ids.
pub fn ids() -> RefOr<Schema> {
    ArrayBuilder::new().items(id()).into()
}

/// Device ids, at least one.
pub fn some_ids() -> RefOr<Schema> {
    ArrayBuilder::new().items(id()).min_items(Some(1)).into()
}

/// Rollout waves: cumulative percentages (SPEC §6).
pub fn waves() -> RefOr<Schema> {
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(100)),
        )
        .min_items(Some(1))
        .max_items(Some(100))
        .into()
}
