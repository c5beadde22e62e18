//! The bundle manifest (`manifest.json` at the archive root).

use serde::{Deserialize, Serialize};

use crate::validate::{MAX_ID_LEN, is_valid_version};

/// `manifest.json` of a bundle (SPEC §1.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(description = "The bundle's manifest.json; optional fields are omitted when absent.")
)]
pub struct Manifest {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub name: String,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Za-z0-9._+-]{1,64}$", min_length = 1, max_length = 64)
    )]
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 8192))]
    pub description: Option<String>,
    pub deploy: ScriptSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<ScriptSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<ScriptSpec>,
}

/// One script a manifest names, with its optional timeout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScriptSpec {
    /// Relative path of a regular file inside the bundle.
    #[cfg_attr(feature = "openapi", schema(min_length = 1))]
    pub script: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86400))]
    pub timeout_s: Option<u64>,
}

/// Why a manifest is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest.json is not valid: {0}")]
    Parse(String),
    #[error("manifest name must be 1-64 characters")]
    Name,
    #[error("manifest version must be 1-64 characters of [A-Za-z0-9._+-], got {0:?}")]
    Version(String),
    #[error("manifest {field} script path {path:?} is not a relative path inside the bundle")]
    ScriptPath { field: &'static str, path: String },
    #[error("manifest {field} timeout_s must be between 1 and 86400")]
    Timeout { field: &'static str },
    #[error("manifest description is longer than 8 KiB")]
    Description,
}

impl Manifest {
    /// Parse and validate manifest bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Parse(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// Check the field rules of SPEC §1.4 (not whether the scripts exist; see
    /// [`crate::bundle::inspect`]).
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.name.is_empty() || self.name.chars().count() > MAX_ID_LEN {
            return Err(ManifestError::Name);
        }
        if !is_valid_version(&self.version) {
            return Err(ManifestError::Version(self.version.clone()));
        }
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.len() > 8 * 1024)
        {
            return Err(ManifestError::Description);
        }
        for (field, spec) in self.scripts() {
            if normalize_entry_path(&spec.script).is_none() {
                return Err(ManifestError::ScriptPath {
                    field,
                    path: spec.script.clone(),
                });
            }
            if spec.timeout_s.is_some_and(|t| !(1..=86_400).contains(&t)) {
                return Err(ManifestError::Timeout { field });
            }
        }
        Ok(())
    }

    /// The scripts this manifest names, with the field that names each.
    pub fn scripts(&self) -> impl Iterator<Item = (&'static str, &ScriptSpec)> {
        [
            Some(("deploy", &self.deploy)),
            self.rollback.as_ref().map(|s| ("rollback", s)),
            self.health.as_ref().map(|s| ("health", s)),
        ]
        .into_iter()
        .flatten()
    }
}

/// Normalise an archive entry path or a script path to `a/b/c` form: strips a leading
/// `./` and empty/`.` components. `None` for absolute paths, `..` components, empty
/// paths, and anything with a NUL or backslash (which would mean different things on
/// different systems).
pub fn normalize_entry_path(raw: &str) -> Option<String> {
    if raw.starts_with('/') || raw.contains('\0') || raw.contains('\\') {
        return None;
    }
    let mut parts = Vec::new();
    for comp in raw.split('/') {
        match comp {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(json: &str) -> Result<Manifest, ManifestError> {
        Manifest::from_slice(json.as_bytes())
    }

    #[test]
    fn accepts_full_manifest() {
        let m = manifest(
            r#"{"name":"det","version":"1.2.0","description":"x",
                "deploy":{"script":"deploy.sh","timeout_s":300},
                "rollback":{"script":"./rollback.sh"},
                "health":{"script":"bin/health.sh","timeout_s":60},
                "extra":"ignored"}"#,
        )
        .unwrap();
        assert_eq!(m.scripts().count(), 3);
    }

    #[test]
    fn rejects_bad_fields() {
        assert!(matches!(
            manifest(r#"{"name":"a","deploy":{"script":"d.sh"}}"#),
            Err(ManifestError::Parse(_))
        ));
        assert_eq!(
            manifest(r#"{"name":"","version":"1","deploy":{"script":"d.sh"}}"#),
            Err(ManifestError::Name)
        );
        assert!(matches!(
            manifest(r#"{"name":"a","version":"1 0","deploy":{"script":"d.sh"}}"#),
            Err(ManifestError::Version(_))
        ));
        assert!(matches!(
            manifest(r#"{"name":"a","version":"1","deploy":{"script":"../d.sh"}}"#),
            Err(ManifestError::ScriptPath { .. })
        ));
        assert!(matches!(
            manifest(r#"{"name":"a","version":"1","deploy":{"script":"/d.sh"}}"#),
            Err(ManifestError::ScriptPath { .. })
        ));
        assert!(matches!(
            manifest(r#"{"name":"a","version":"1","deploy":{"script":"d.sh","timeout_s":0}}"#),
            Err(ManifestError::Timeout { .. })
        ));
    }

    #[test]
    fn normalizes_paths() {
        assert_eq!(normalize_entry_path("./a//b/./c").as_deref(), Some("a/b/c"));
        assert_eq!(normalize_entry_path("a/../b"), None);
        assert_eq!(normalize_entry_path("/etc/passwd"), None);
        assert_eq!(normalize_entry_path("./"), None);
    }
}
