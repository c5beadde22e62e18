//! `config get ID` and `config set ID key=value...`.
//!
//! `set` parses every pair before it sends anything: an unknown key, a key given twice or
//! a value of the wrong kind is a usage error (exit 2) and the server is never asked.
//! Ranges (a polling interval of 1 s, metadata over 16 KiB) are the server's to judge:
//! its 400 and message come back as exit 1, and nothing changes.

use kernex_common::api::{ConfigUpdate, DeviceConfig};
use serde_json::Value;

use super::{OpError, OpResult, Report, connect, ids, output, render};
use crate::cli::ConnArgs;

/// The keys `config set` takes: the fields of `PUT /devices/{id}/config`.
const KEYS: [&str; 5] = DeviceConfig::FIELDS;

pub(crate) async fn get(conn: &ConnArgs, id: &str) -> OpResult<Report> {
    ids::check_ref("device", id)?;
    let api = connect(conn)?;
    let config = api.config(&ids::device(&api, id).await?).await?;
    Report::new(&config, render::config(&config, chrono::Utc::now()))
}

pub(crate) async fn set(conn: &ConnArgs, id: &str, pairs: &[String]) -> OpResult<Report> {
    ids::check_ref("device", id)?;
    let update = parse_pairs(pairs)?;
    let api = connect(conn)?;
    let config = api
        .put_config(&ids::device(&api, id).await?, &update)
        .await?;
    Report::new(&config, render::config(&config, chrono::Utc::now()))
}

/// `key=value` words → the update to send.
pub(crate) fn parse_pairs(pairs: &[String]) -> OpResult<ConfigUpdate> {
    let mut update = ConfigUpdate::default();
    let mut seen: Vec<&str> = Vec::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(usage(format!(
                "expected KEY=VALUE, got {pair:?} (keys: {})",
                KEYS.join(", ")
            )));
        };
        let key = key.trim();
        if seen.contains(&key) {
            return Err(usage(format!("{key} is given twice")));
        }
        match key {
            "polling_interval" => update.polling_interval = Some(seconds(key, value)?),
            "heartbeat_timeout" => update.heartbeat_timeout = Some(seconds(key, value)?),
            "deploy_timeout" => update.deploy_timeout = Some(seconds(key, value)?),
            "log_level" => update.log_level = Some(log_level(value)?),
            "metadata" => update.metadata = Some(metadata(value)?),
            _ => {
                return Err(usage(format!(
                    "unknown key {key:?} (keys: {})",
                    KEYS.join(", ")
                )));
            }
        }
        seen.push(key);
    }
    Ok(update)
}

fn usage(message: String) -> OpError {
    OpError::Usage(message)
}

/// A whole number of seconds. Its range is the server's rule, not ours.
fn seconds(key: &str, value: &str) -> OpResult<u64> {
    value.trim().parse().map_err(|_| {
        usage(format!(
            "{key} must be a whole number of seconds, got {:?}",
            output::clean(value)
        ))
    })
}

/// One of the levels every agent understands (case does not matter).
fn log_level(value: &str) -> OpResult<String> {
    let level = value.trim().to_ascii_lowercase();
    if DeviceConfig::LOG_LEVELS.contains(&level.as_str()) {
        Ok(level)
    } else {
        Err(usage(format!(
            "log_level must be one of {}, got {:?}",
            DeviceConfig::LOG_LEVELS.join(", "),
            output::clean(value)
        )))
    }
}

/// A JSON object (it replaces the device's metadata as a whole).
fn metadata(value: &str) -> OpResult<Value> {
    match serde_json::from_str::<Value>(value) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(usage(
            r#"metadata must be a JSON object, e.g. metadata='{"site":"berlin"}'"#.to_owned(),
        )),
        Err(e) => Err(usage(format!("metadata is not valid JSON: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(words: &[&str]) -> OpResult<ConfigUpdate> {
        let owned: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
        parse_pairs(&owned)
    }

    fn usage_message(words: &[&str]) -> String {
        match parse(words) {
            Err(e @ OpError::Usage(_)) => {
                assert_eq!(e.exit_code(), 2);
                e.to_string()
            }
            Err(other) => panic!("{words:?}: not a usage error: {other}"),
            Ok(u) => panic!("{words:?} parsed: {u:?}"),
        }
    }

    #[test]
    fn every_key_parses_into_the_update() {
        let u = parse(&[
            "polling_interval=30",
            "heartbeat_timeout= 45",
            "deploy_timeout=600",
            "log_level=DEBUG",
            r#"metadata={"site":"berlin","n":[1,2]}"#,
        ])
        .unwrap();
        assert_eq!(u.polling_interval, Some(30));
        assert_eq!(u.heartbeat_timeout, Some(45));
        assert_eq!(u.deploy_timeout, Some(600));
        assert_eq!(u.log_level.as_deref(), Some("debug"));
        assert_eq!(u.metadata, Some(json!({"site": "berlin", "n": [1, 2]})));
        // Only what was given goes on the wire.
        let body = serde_json::to_value(parse(&["log_level=warn"]).unwrap()).unwrap();
        assert_eq!(body, json!({"log_level": "warn"}));
    }

    #[test]
    fn an_equals_sign_inside_the_value_is_kept() {
        let u = parse(&[r#"metadata={"query":"a=b"}"#]).unwrap();
        assert_eq!(u.metadata, Some(json!({"query": "a=b"})));
    }

    #[test]
    fn out_of_range_numbers_are_left_to_the_server() {
        let u = parse(&["polling_interval=1", "deploy_timeout=0"]).unwrap();
        assert_eq!(u.polling_interval, Some(1));
        assert_eq!(u.deploy_timeout, Some(0));
    }

    #[test]
    fn bad_words_are_usage_errors() {
        assert!(usage_message(&["color=red"]).contains("unknown key \"color\""));
        assert!(usage_message(&["polling_interval"]).contains("expected KEY=VALUE"));
        assert!(usage_message(&["polling_interval=abc"]).contains("whole number"));
        assert!(usage_message(&["polling_interval=-5"]).contains("whole number"));
        assert!(usage_message(&["polling_interval=1.5"]).contains("whole number"));
        assert!(usage_message(&["polling_interval=99999999999999999999"]).contains("whole number"));
        assert!(usage_message(&["log_level=loud"]).contains("one of trace, debug"));
        assert!(usage_message(&["metadata=[1]"]).contains("JSON object"));
        assert!(usage_message(&["metadata={"]).contains("not valid JSON"));
        assert!(usage_message(&["log_level=info", "log_level=warn"]).contains("given twice"));
    }
}
