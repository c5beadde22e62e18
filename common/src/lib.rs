//! Kernex common: what the server, the agent and the console agree on.
//!
//! - [`api`]: the JSON wire types of the `/api/v1` HTTP API (SPEC §1).
//!   [`api::events::ServerEvent`] is the live event stream (`GET /events`).
//! - [`manifest`]: the bundle `manifest.json` schema and its validation.
//! - [`bundle`]: packing a folder into a bundle and checking an archive entry by entry
//!   (the same rules on the server at upload and on the agent before it extracts).
//! - [`range`]: the HTTP `Range` header of bundle downloads.
//! - [`signing`]: RSA-PSS registration signatures and key fingerprints.
//! - [`update_signing`]: Ed25519 operator keys, signed bundle metadata and trust
//!   documents, and the checks a device makes before it runs a bundle (SPEC §7).
//! - [`validate`]: small shared input rules (ids, tags, versions).
//!
//! This crate is serde plus the archive and crypto crates; it pulls in no async runtime.
//!
//! ```
//! use kernex_common::manifest::Manifest;
//! let m: Manifest = serde_json::from_str(
//!     r#"{"name": "app", "version": "1.0.0", "deploy": {"script": "deploy.sh"}}"#,
//! ).unwrap();
//! assert!(m.validate().is_ok());
//! ```

pub mod api; // wire types of the HTTP API
pub mod bundle; // pack a folder, inspect and safely unpack archives
pub mod manifest; // manifest.json schema
pub mod range; // the HTTP Range header of bundle downloads
pub mod signing; // registration signatures, fingerprints
pub mod transport; // which server URLs a client may use (SPEC §7)
pub mod update_signing; // Ed25519 signed bundles, trust sets (SPEC §7)
pub mod validate; // shared input rules
