//! Live events of `GET /events` (SPEC §1.7): one [`ServerEvent`] variant per SSE
//! `event:` name, each with the typed payload of its `data:` line. The server writes
//! them with [`ServerEvent::name`] and [`ServerEvent::data_json`]; the console reads
//! them back with [`ServerEvent::parse`].
//!
//! ```
//! use kernex_common::api::events::ServerEvent;
//! let ev = ServerEvent::device_deleted("d1");
//! assert_eq!(ev.name(), "device");
//! assert_eq!(ev.data_json(), r#"{"device_id":"d1","deleted":true}"#);
//! assert_eq!(ServerEvent::parse(ev.name(), &ev.data_json()).unwrap(), ev);
//! ```

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::{
    BundleInfo, Counts, DeploymentDevice, DeploymentKind, DeploymentStatus, DeviceConfig,
    DeviceSummary, HeartbeatRequest, Rollout, RolloutChange, Timestamp,
};

/// One live event. As a whole it serialises as `{"event": <name>, "data": <payload>}`,
/// the same pair an SSE frame carries on its `event:` and `data:` lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "data", rename_all = "snake_case")]
pub enum ServerEvent {
    /// A device beat (sent only while someone listens).
    Heartbeat(HeartbeatEvent),
    /// A device registered, changed, or was deleted.
    Device(DeviceEvent),
    /// A deployment moved (created, delivered, progressed, finished, cancelled).
    Deployment(DeploymentEvent),
    /// A bundle was uploaded or deleted.
    Bundle(BundleEvent),
    /// A device's config was updated: the new config.
    Config(DeviceConfig),
    /// This subscriber fell behind and missed events: re-read state. Written by the
    /// stream itself for one subscriber, never broadcast.
    Lagged(LaggedEvent),
}

impl ServerEvent {
    /// The SSE `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            ServerEvent::Heartbeat(_) => "heartbeat",
            ServerEvent::Device(_) => "device",
            ServerEvent::Deployment(_) => "deployment",
            ServerEvent::Bundle(_) => "bundle",
            ServerEvent::Config(_) => "config",
            ServerEvent::Lagged(_) => "lagged",
        }
    }

    /// The SSE `data:` payload: the variant's JSON on one line.
    pub fn data_json(&self) -> String {
        let json = match self {
            ServerEvent::Heartbeat(e) => serde_json::to_string(e),
            ServerEvent::Device(e) => serde_json::to_string(e),
            ServerEvent::Deployment(e) => serde_json::to_string(e),
            ServerEvent::Bundle(e) => serde_json::to_string(e),
            ServerEvent::Config(e) => serde_json::to_string(e),
            ServerEvent::Lagged(e) => serde_json::to_string(e),
        };
        // These types have string keys and no fallible `Serialize` of their own, so
        // this cannot fail; should it ever, a reader sees `null` rather than nothing.
        json.unwrap_or_else(|_| "null".to_owned())
    }

    /// Read an SSE frame: its `event:` name and its `data:` payload.
    pub fn parse(name: &str, data: &str) -> Result<ServerEvent, EventError> {
        fn payload<T: DeserializeOwned>(event: &'static str, data: &str) -> Result<T, EventError> {
            serde_json::from_str(data).map_err(|source| EventError::Data { event, source })
        }
        Ok(match name {
            "heartbeat" => ServerEvent::Heartbeat(payload("heartbeat", data)?),
            "device" => ServerEvent::Device(payload("device", data)?),
            "deployment" => ServerEvent::Deployment(payload("deployment", data)?),
            "bundle" => ServerEvent::Bundle(payload("bundle", data)?),
            "config" => ServerEvent::Config(payload("config", data)?),
            "lagged" => ServerEvent::Lagged(payload("lagged", data)?),
            other => return Err(EventError::Unknown(other.to_owned())),
        })
    }

    /// `device`: the device's new row.
    pub fn device(summary: DeviceSummary) -> ServerEvent {
        ServerEvent::Device(DeviceEvent::Changed(Box::new(summary)))
    }

    /// `device`: the device was deleted.
    pub fn device_deleted(device_id: impl Into<String>) -> ServerEvent {
        ServerEvent::Device(DeviceEvent::Deleted {
            device_id: device_id.into(),
        })
    }

    /// `bundle`: a bundle was uploaded.
    pub fn bundle(info: BundleInfo) -> ServerEvent {
        ServerEvent::Bundle(BundleEvent::Uploaded(Box::new(info)))
    }

    /// `bundle`: a bundle was deleted.
    pub fn bundle_deleted(id: impl Into<String>, version: impl Into<String>) -> ServerEvent {
        ServerEvent::Bundle(BundleEvent::Deleted {
            id: id.into(),
            version: version.into(),
        })
    }
}

/// Why an SSE frame could not be read as a [`ServerEvent`].
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// An `event:` name this build does not know (a newer server): skip it.
    #[error("unknown event {0:?}")]
    Unknown(String),
    /// A known event whose `data:` does not have its shape.
    #[error("unreadable {event} event: {source}")]
    Data {
        event: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// `heartbeat`: what a device just reported, and when.
///
/// The server fills every field. Readers apply the event as a patch over the row they
/// hold, so each field but the id may be absent (or `null`) and is then left alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatEvent {
    pub device_id: String,
    pub timestamp: Option<Timestamp>,
    pub agent_version: Option<String>,
    pub cpu_pct: Option<f64>,
    pub memory_mb: Option<f64>,
    pub status: Option<String>,
    /// The version the server now records for the device (`null` before any).
    pub current_bundle_version: Option<String>,
    pub config_version: Option<u64>,
    pub queued_reports: Option<u64>,
}

impl HeartbeatEvent {
    /// The event for a beat the server accepted at `timestamp`.
    pub fn new(
        device_id: &str,
        timestamp: Timestamp,
        beat: &HeartbeatRequest,
        current_bundle_version: Option<String>,
    ) -> Self {
        HeartbeatEvent {
            device_id: device_id.to_owned(),
            timestamp: Some(timestamp),
            agent_version: Some(beat.agent_version.clone()),
            cpu_pct: Some(beat.cpu_pct),
            memory_mb: Some(beat.memory_mb),
            status: Some(beat.status.clone()),
            current_bundle_version,
            config_version: beat.config_version,
            queued_reports: Some(beat.queued_reports),
        }
    }
}

/// `device`: a device's new row (`GET /devices` shape), or its deletion, sent as
/// `{"device_id": …, "deleted": true}`.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceEvent {
    Changed(Box<DeviceSummary>),
    Deleted { device_id: String },
}

impl Serialize for DeviceEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Deleted<'a> {
            device_id: &'a str,
            deleted: bool,
        }
        match self {
            DeviceEvent::Changed(d) => d.serialize(s),
            DeviceEvent::Deleted { device_id } => Deleted {
                device_id,
                deleted: true,
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for DeviceEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Deleted {
            device_id: String,
        }
        let v = Value::deserialize(d)?;
        if is_deletion(&v) {
            let Deleted { device_id } = Deleted::deserialize(v).map_err(D::Error::custom)?;
            Ok(DeviceEvent::Deleted { device_id })
        } else {
            DeviceSummary::deserialize(v)
                .map(|d| DeviceEvent::Changed(Box::new(d)))
                .map_err(D::Error::custom)
        }
    }
}

/// `deployment`: a deployment's new state, without its target list (which can be long).
///
/// The server fills every field (`completed_at` is `null` until the deployment is done).
/// Readers apply the event as a patch over the deployment they hold, so each field but
/// the id may be absent (or `null`) and is then left alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentEvent {
    pub id: String,
    pub kind: Option<DeploymentKind>,
    pub bundle_id: Option<String>,
    pub bundle_version: Option<String>,
    pub status: Option<DeploymentStatus>,
    pub counts: Option<Counts>,
    pub updated_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
    /// The one target that changed, when the change was one device's (progress, result);
    /// `null` for creation, delivery, cancel and admission changes.
    pub device: Option<DeploymentDevice>,
    /// The rollout block (SPEC §6), for a deployment created with a policy.
    #[serde(default)]
    pub rollout: Option<Box<Rollout>>,
    /// What moved the rollout (a wave opened, a gate tripped, a target timed out …).
    #[serde(default)]
    pub change: Option<RolloutChange>,
}

/// `bundle`: an uploaded bundle (`GET /bundles` shape), or a deletion, sent as
/// `{"id": …, "version": …, "deleted": true}`.
#[derive(Debug, Clone, PartialEq)]
pub enum BundleEvent {
    /// Boxed: a manifest makes it several times the size of a deletion.
    Uploaded(Box<BundleInfo>),
    Deleted {
        id: String,
        version: String,
    },
}

impl Serialize for BundleEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Deleted<'a> {
            id: &'a str,
            version: &'a str,
            deleted: bool,
        }
        match self {
            BundleEvent::Uploaded(b) => b.serialize(s),
            BundleEvent::Deleted { id, version } => Deleted {
                id,
                version,
                deleted: true,
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for BundleEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Deleted {
            id: String,
            version: String,
        }
        let v = Value::deserialize(d)?;
        if is_deletion(&v) {
            let Deleted { id, version } = Deleted::deserialize(v).map_err(D::Error::custom)?;
            Ok(BundleEvent::Deleted { id, version })
        } else {
            BundleInfo::deserialize(v)
                .map(|b| BundleEvent::Uploaded(Box::new(b)))
                .map_err(D::Error::custom)
        }
    }
}

/// A deletion is told by `"deleted": true`; anything else is the record itself.
fn is_deletion(v: &Value) -> bool {
    v.get("deleted").and_then(Value::as_bool) == Some(true)
}

/// `lagged`: how many events this subscriber missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaggedEvent {
    pub missed: u64,
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use serde_json::json;

    use super::*;
    use crate::api::{Admission, OnlineStatus, Phase, TargetStatus};
    use crate::manifest::Manifest;

    fn at(s: &str) -> Timestamp {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn summary() -> DeviceSummary {
        DeviceSummary {
            device_id: "019ab7e0c4a17d3e9b2f5c6d7e8f9a01".into(),
            device_type: "rpi4".into(),
            admission: Admission::Accepted,
            status: OnlineStatus::Online,
            agent_status: Some("idle".into()),
            tags: vec!["lab".into()],
            current_bundle_version: Some("1.0.0".into()),
            agent_version: Some("0.1.0".into()),
            last_heartbeat: Some(at("2026-11-25T12:00:00Z")),
            cpu_pct: Some(12.5),
            memory_mb: Some(512.0),
            config_version: Some(1),
            last_deployment: None,
        }
    }

    fn bundle_info() -> BundleInfo {
        let manifest: Manifest = serde_json::from_value(json!({
            "name": "app", "version": "1.1.0", "deploy": {"script": "deploy.sh"},
        }))
        .unwrap();
        BundleInfo {
            id: "b1".into(),
            name: "app".into(),
            version: "1.1.0".into(),
            checksum_sha256: "ab".repeat(32),
            size_bytes: 1234,
            manifest,
            created_at: at("2026-11-25T12:00:00Z"),
        }
    }

    fn deployment(device: Option<DeploymentDevice>) -> DeploymentEvent {
        DeploymentEvent {
            id: "dep1".into(),
            kind: Some(DeploymentKind::Deploy),
            bundle_id: Some("b1".into()),
            bundle_version: Some("1.1.0".into()),
            status: Some(DeploymentStatus::InProgress),
            counts: Some(Counts {
                pending: 1,
                in_progress: 1,
                ..Counts::default()
            }),
            updated_at: Some(at("2026-11-25T12:00:05Z")),
            completed_at: None,
            device,
            rollout: None,
            change: None,
        }
    }

    /// One of every variant (and of every inner shape).
    fn every_event() -> Vec<ServerEvent> {
        let beat = HeartbeatRequest {
            agent_version: "0.1.0".into(),
            cpu_pct: 12.5,
            memory_mb: 512.0,
            status: "idle".into(),
            current_bundle_version: None,
            config_version: Some(3),
            queued_reports: 0,
            trust_version: None,
        };
        let now = at("2026-11-25T12:00:00Z");
        vec![
            ServerEvent::Heartbeat(HeartbeatEvent::new("d1", now, &beat, Some("1.0.0".into()))),
            ServerEvent::device(summary()),
            ServerEvent::device_deleted("d1"),
            ServerEvent::Deployment(deployment(None)),
            ServerEvent::Deployment(deployment(Some(DeploymentDevice {
                device_id: "d1".into(),
                status: TargetStatus::InProgress,
                phase: Some(Phase::Downloading),
                progress_pct: Some(40),
                error_message: None,
                log_tail: None,
                updated_at: now,
            }))),
            ServerEvent::bundle(bundle_info()),
            ServerEvent::bundle_deleted("b1", "1.1.0"),
            ServerEvent::Config(DeviceConfig::defaults("d1")),
            ServerEvent::Lagged(LaggedEvent { missed: 7 }),
        ]
    }

    #[test]
    fn every_variant_round_trips_through_an_sse_frame() {
        for ev in every_event() {
            let back = ServerEvent::parse(ev.name(), &ev.data_json()).unwrap();
            assert_eq!(back, ev);
        }
    }

    /// `name` and `data_json` are the serde form's `event` and `data`, so the enum's
    /// own JSON and the SSE frame never disagree.
    #[test]
    fn the_frame_is_the_tagged_form() {
        for ev in every_event() {
            let whole = serde_json::to_value(&ev).unwrap();
            assert_eq!(whole["event"], ev.name());
            let data: Value = serde_json::from_str(&ev.data_json()).unwrap();
            assert_eq!(whole["data"], data, "{}", ev.name());
            assert_eq!(serde_json::from_value::<ServerEvent>(whole).unwrap(), ev);
        }
    }

    /// The payloads as the server wrote them with `json!` before these types existed
    /// (hence the sorted keys): each parses, and writes back to the same JSON.
    #[test]
    fn parses_what_the_server_sent_before_the_types() {
        let frames = [
            (
                "heartbeat",
                r#"{"agent_version":"0.1.0","config_version":3,"cpu_pct":12.5,"current_bundle_version":null,"device_id":"d1","memory_mb":512.0,"queued_reports":0,"status":"idle","timestamp":"2026-11-25T12:00:00Z"}"#,
            ),
            ("device", r#"{"deleted":true,"device_id":"d1"}"#),
            (
                "device",
                r#"{"admission":"pending","agent_status":null,"agent_version":null,"config_version":null,"cpu_pct":null,"current_bundle_version":null,"device_id":"d1","device_type":"rpi4","last_deployment":null,"last_heartbeat":null,"memory_mb":null,"status":"never","tags":[]}"#,
            ),
            (
                "deployment",
                r#"{"bundle_id":"b1","bundle_version":"1.1.0","completed_at":null,"counts":{"cancelled":0,"failed":0,"in_progress":0,"pending":2,"success":0},"device":null,"id":"dep1","kind":"deploy","status":"pending","updated_at":"2026-11-25T12:00:00Z"}"#,
            ),
            (
                "deployment",
                r#"{"bundle_id":"b1","bundle_version":"1.1.0","completed_at":"2026-11-25T12:01:00Z","counts":{"cancelled":0,"failed":1,"in_progress":0,"pending":0,"success":1},"device":{"device_id":"d1","error_message":"health check failed","log_tail":"boom\n","phase":null,"progress_pct":null,"status":"failed","updated_at":"2026-11-25T12:01:00Z"},"id":"dep1","kind":"rollback","status":"failed","updated_at":"2026-11-25T12:01:00Z"}"#,
            ),
            (
                "bundle",
                r#"{"checksum_sha256":"00","created_at":"2026-11-25T12:00:00Z","id":"b1","manifest":{"deploy":{"script":"deploy.sh"},"name":"app","version":"1.1.0"},"name":"app","size_bytes":10,"version":"1.1.0"}"#,
            ),
            ("bundle", r#"{"deleted":true,"id":"b1","version":"1.1.0"}"#),
            (
                "config",
                r#"{"deploy_timeout":300,"device_id":"d1","heartbeat_timeout":30,"log_level":"info","metadata":{"site":"lab"},"polling_interval":60,"updated_at":"2026-11-25T12:00:00Z","version":2}"#,
            ),
            ("lagged", r#"{"missed":1100}"#),
        ];
        for (name, data) in frames {
            let ev = ServerEvent::parse(name, data).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(ev.name(), name);
            let sent: Value = serde_json::from_str(data).unwrap();
            let again: Value = serde_json::from_str(&ev.data_json()).unwrap();
            // Everything sent comes back unchanged; fields added since (the rollout
            // statuses of SPEC §6 in `counts`, `rollout`, `change`) come back as their
            // zero or null.
            assert_eq!(without_new_fields(again), sent, "{name}");
        }
        match ServerEvent::parse("device", r#"{"deleted":true,"device_id":"d1"}"#).unwrap() {
            ServerEvent::Device(DeviceEvent::Deleted { device_id }) => assert_eq!(device_id, "d1"),
            other => panic!("{other:?}"),
        }
    }

    /// A deployment event as the server wrote it before SPEC §6: without `rollout` and
    /// `change`, and `counts` without `waiting` and `timed_out`, which must be zero/null.
    fn without_new_fields(mut v: Value) -> Value {
        if let Some(o) = v.as_object_mut()
            && o.contains_key("counts")
        {
            for k in ["rollout", "change"] {
                assert_eq!(o.remove(k), Some(Value::Null), "{k}");
            }
            if let Some(c) = o.get_mut("counts").and_then(Value::as_object_mut) {
                for k in ["waiting", "timed_out"] {
                    assert_eq!(c.remove(k), Some(json!(0)), "{k}");
                }
            }
        }
        v
    }

    #[test]
    fn readers_take_partial_patches_and_refuse_what_is_not_an_event() {
        let beat = ServerEvent::parse("heartbeat", r#"{"device_id":"d1","cpu_pct":1.0}"#);
        let Ok(ServerEvent::Heartbeat(b)) = beat else {
            panic!("{beat:?}");
        };
        assert_eq!((b.cpu_pct, b.timestamp), (Some(1.0), None));
        let dep = ServerEvent::parse("deployment", r#"{"id":"dep1","status":"failed"}"#);
        assert!(
            matches!(dep, Ok(ServerEvent::Deployment(d)) if d.status == Some(DeploymentStatus::Failed) && d.counts.is_none())
        );
        // Not `"deleted": true`: read as a row, which this is not.
        assert!(ServerEvent::parse("device", r#"{"device_id":"d1","deleted":false}"#).is_err());
        assert!(matches!(
            ServerEvent::parse("frobnicated", "{}"),
            Err(EventError::Unknown(n)) if n == "frobnicated"
        ));
        assert!(matches!(
            ServerEvent::parse("heartbeat", "not json"),
            Err(EventError::Data {
                event: "heartbeat",
                ..
            })
        ));
        assert!(
            ServerEvent::parse("heartbeat", r#"{"cpu_pct":1.0}"#).is_err(),
            "no id"
        );
    }
}
