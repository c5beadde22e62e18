//! The human rendering of each kind of data. Pure functions of the data, the current time
//! and the room available, so they are tested without a server or a terminal.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use kernex_common::api::{
    BundleInfo, Counts, Deployment, DeploymentStatus, DeviceConfig, DeviceDetail, DeviceSummary,
    HistoryRecord, Phase, Rollout, TargetStatus,
};

use super::output::{
    Column, Table, ago, bytes, clean, cut, duration, key_values, megabytes, or_dash, percent,
    when_ago,
};

/// Lines of a failed device's log tail shown under a deployment.
const LOG_LINES: usize = 5;
/// Longest error message shown under a deployment (the whole one is in `--json`).
const ERROR_CHARS: usize = 500;

type Now = DateTime<Utc>;

// --------------------------------------------------------------------------- devices

/// `devices`: one row per device. In a narrow terminal the tags, then the type, memory
/// and CPU columns give way; the id never does (it is what the other commands take).
pub(crate) fn devices(list: &[DeviceSummary], now: Now, width: Option<usize>) -> String {
    let mut t = Table::new(&[
        Column::new("ID"),
        Column::new("TYPE").optional(1),
        Column::new("ADMISSION"),
        Column::new("STATUS"),
        Column::new("VERSION"),
        Column::new("CPU").right().optional(3),
        Column::new("MEM").right().optional(2),
        Column::new("LAST SEEN"),
        Column::new("TAGS").optional(0).flex(),
    ]);
    for d in list {
        t.row(vec![
            d.device_id.clone(),
            cut(&d.device_type, 24),
            d.admission.as_str().to_owned(),
            d.status.as_str().to_owned(),
            or_dash(d.current_bundle_version.as_deref()),
            percent(d.cpu_pct),
            megabytes(d.memory_mb),
            ago(d.last_heartbeat, now),
            d.tags.join(","),
        ]);
    }
    if t.is_empty() {
        return String::new();
    }
    t.render(width)
}

/// `devices -o wide`: every column whatever the width, plus the agent, its state, the
/// config version and the device's last deployment.
pub(crate) fn devices_wide(list: &[DeviceSummary], now: Now) -> String {
    let mut t = Table::new(&[
        Column::new("ID"),
        Column::new("TYPE"),
        Column::new("ADMISSION"),
        Column::new("STATUS"),
        Column::new("VERSION"),
        Column::new("CPU").right(),
        Column::new("MEM").right(),
        Column::new("LAST SEEN"),
        Column::new("AGENT"),
        Column::new("AGENT STATUS"),
        Column::new("CONFIG").right(),
        Column::new("LAST DEPLOY"),
        Column::new("TAGS"),
    ]);
    for d in list {
        t.row(vec![
            d.device_id.clone(),
            clean(&d.device_type),
            d.admission.as_str().to_owned(),
            d.status.as_str().to_owned(),
            or_dash(d.current_bundle_version.as_deref()),
            percent(d.cpu_pct),
            megabytes(d.memory_mb),
            ago(d.last_heartbeat, now),
            or_dash(d.agent_version.as_deref()),
            or_dash(d.agent_status.as_deref()),
            d.config_version
                .map_or_else(|| "-".into(), |v| v.to_string()),
            last_deploy(d),
            d.tags.join(","),
        ]);
    }
    if t.is_empty() {
        return String::new();
    }
    t.render(None)
}

/// `1.2.0 failed→1.1.0`: the version and result of the device's newest deployment.
fn last_deploy(d: &DeviceSummary) -> String {
    let Some(l) = &d.last_deployment else {
        return "-".into();
    };
    let mut s = format!("{} {}", clean(&l.bundle_version), l.status.as_str());
    if let Some(to) = &l.rolled_back_to {
        s.push('→');
        s.push_str(&clean(to));
    }
    s
}

/// `device ID`, `accept`, `reject`: every field of one device.
pub(crate) fn device(d: &DeviceDetail, now: Now) -> String {
    let s = &d.summary;
    let status = match &s.agent_status {
        Some(a) if !a.is_empty() => format!("{} (agent: {a})", s.status.as_str()),
        _ => s.status.as_str().to_owned(),
    };
    key_values(&[
        ("id", s.device_id.clone()),
        ("type", s.device_type.clone()),
        ("admission", s.admission.as_str().to_owned()),
        ("status", status),
        ("last seen", when_ago(s.last_heartbeat, now)),
        ("version", or_dash(s.current_bundle_version.as_deref())),
        ("agent", or_dash(s.agent_version.as_deref())),
        ("cpu", percent(s.cpu_pct)),
        ("memory", megabytes(s.memory_mb)),
        (
            "config",
            match s.config_version {
                Some(v) => format!("version {v} acknowledged"),
                None => "none acknowledged yet".to_owned(),
            },
        ),
        (
            "tags",
            if s.tags.is_empty() {
                "-".into()
            } else {
                s.tags.join(", ")
            },
        ),
        ("queued reports", d.queued_reports.to_string()),
        ("registered", when_ago(Some(d.registered_at), now)),
        ("key sha256", d.public_key_fingerprint.clone()),
        ("hardware", flat_json(&d.hardware_metadata)),
    ])
}

/// `config get`/`config set`: the fields under the names `config set` takes.
pub(crate) fn config(c: &DeviceConfig, now: Now) -> String {
    key_values(&[
        ("device", c.device_id.clone()),
        ("version", c.version.to_string()),
        ("polling_interval", format!("{} s", c.polling_interval)),
        ("heartbeat_timeout", format!("{} s", c.heartbeat_timeout)),
        ("deploy_timeout", format!("{} s", c.deploy_timeout)),
        ("log_level", c.log_level.clone()),
        ("metadata", compact_json(&c.metadata)),
        (
            "updated",
            match c.updated_at {
                Some(t) => when_ago(Some(t), now),
                None => "never (defaults)".to_owned(),
            },
        ),
    ])
}

/// A device's bundle history, newest first.
pub(crate) fn history(records: &[HistoryRecord], now: Now, width: Option<usize>) -> String {
    let mut t = Table::new(&[
        Column::new("DEPLOYED"),
        Column::new("KIND"),
        Column::new("VERSION"),
        Column::new("STATUS"),
        Column::new("TOOK").right().optional(1),
        Column::new("DEPLOYMENT").optional(0),
        Column::new("NOTE").flex(),
    ]);
    for r in records {
        let note = history_note(r);
        t.row(vec![
            ago(Some(r.deployed_at), now),
            r.kind.as_str().to_owned(),
            r.bundle_version.clone(),
            r.status.as_str().to_owned(),
            duration(r.duration_seconds),
            r.deployment_id.clone(),
            note,
        ]);
    }
    t.render(width)
}

/// The error of a history record, and the version it fell back to unless the error
/// already says so.
fn history_note(r: &HistoryRecord) -> String {
    let error = r.error_message.as_deref().unwrap_or("").trim();
    match &r.rolled_back_to {
        Some(v) if !error.contains(&format!("rolled back to {v}")) => {
            if error.is_empty() {
                format!("rolled back to {v}")
            } else {
                format!("{error} (rolled back to {v})")
            }
        }
        _ => error.to_owned(),
    }
}

/// `device ID`: the device, its config and its recent history.
pub(crate) fn device_page(
    d: &DeviceDetail,
    c: &DeviceConfig,
    h: &[HistoryRecord],
    now: Now,
    width: Option<usize>,
) -> String {
    let mut out = device(d, now);
    out.push_str("\nconfiguration\n");
    out.push_str(&indent(&config(c, now)));
    out.push_str("\nrecent bundle history\n");
    if h.is_empty() {
        out.push_str("  none\n");
    } else {
        out.push_str(&indent(&history(
            h,
            now,
            width.map(|w| w.saturating_sub(2)),
        )));
    }
    out
}

// --------------------------------------------------------------------------- bundles

/// `bundles`: newest first.
pub(crate) fn bundles(list: &[BundleInfo], now: Now, width: Option<usize>) -> String {
    let mut t = Table::new(&[
        Column::new("VERSION"),
        Column::new("NAME"),
        Column::new("SIZE").right(),
        Column::new("SHA256").optional(1),
        Column::new("CREATED").optional(2),
        Column::new("ID").optional(0),
    ]);
    for b in list {
        t.row(vec![
            b.version.clone(),
            cut(&b.name, 24),
            bytes(b.size_bytes),
            cut(&b.checksum_sha256, 13),
            ago(Some(b.created_at), now),
            b.id.clone(),
        ]);
    }
    if t.is_empty() {
        return String::new();
    }
    t.render(width)
}

/// `bundle push`: the stored bundle.
pub(crate) fn bundle(b: &BundleInfo, now: Now) -> String {
    let m = &b.manifest;
    let scripts: Vec<String> = m
        .scripts()
        .map(|(field, s)| format!("{field} {}", s.script))
        .collect();
    let mut pairs = vec![
        ("id", b.id.clone()),
        ("name", b.name.clone()),
        ("version", b.version.clone()),
        (
            "size",
            format!("{} ({} bytes)", bytes(b.size_bytes), b.size_bytes),
        ),
        ("sha256", b.checksum_sha256.clone()),
        ("created", when_ago(Some(b.created_at), now)),
        ("scripts", scripts.join(", ")),
    ];
    if let Some(d) = m.description.as_deref().filter(|d| !d.is_empty()) {
        pairs.push(("description", cut(&clean(d), 200)));
    }
    key_values(&pairs)
}

// ----------------------------------------------------------------------- deployments

/// `deployments`: newest first.
pub(crate) fn deployments(list: &[Deployment], now: Now, width: Option<usize>) -> String {
    let mut t = Table::new(&[
        Column::new("ID"),
        Column::new("KIND").optional(1),
        Column::new("VERSION"),
        Column::new("STATUS"),
        Column::new("DONE").right(),
        Column::new("FAILED").right().optional(2),
        Column::new("CREATED").optional(0),
    ]);
    for d in list {
        t.row(vec![
            d.id.clone(),
            d.kind.as_str().to_owned(),
            d.bundle_version.clone(),
            d.status.as_str().to_owned(),
            format!("{}/{}", d.counts.finished(), d.counts.total()),
            d.counts.failed.to_string(),
            ago(Some(d.created_at), now),
        ]);
    }
    if t.is_empty() {
        return String::new();
    }
    t.render(width)
}

/// `deployments ID`, `deploy`, `rollback`: the deployment, one row per target, and the
/// error (with the end of the log) of each target that failed.
pub(crate) fn deployment(d: &Deployment, now: Now, width: Option<usize>) -> String {
    let mut out = key_values(&[
        ("id", d.id.clone()),
        ("kind", d.kind.as_str().to_owned()),
        ("version", d.bundle_version.clone()),
        ("bundle", d.bundle_id.clone()),
        ("status", d.status.as_str().to_owned()),
        (
            "targets",
            format!(
                "{} finished of {} ({})",
                d.counts.finished(),
                d.counts.total(),
                counts(&d.counts)
            ),
        ),
        ("created", when_ago(Some(d.created_at), now)),
        ("updated", when_ago(Some(d.updated_at), now)),
        (
            "completed",
            match d.completed_at {
                Some(t) => when_ago(Some(t), now),
                None => "-".to_owned(),
            },
        ),
    ]);
    if let Some(r) = &d.rollout {
        out.push_str(&rollout(r, d.status, now, width));
    }
    let mut t = Table::new(&[
        Column::new("DEVICE"),
        Column::new("STATUS"),
        Column::new("PHASE"),
        Column::new("PROGRESS").right(),
        Column::new("UPDATED").optional(0),
    ]);
    for dev in &d.devices {
        t.row(vec![
            dev.device_id.clone(),
            dev.status.as_str().to_owned(),
            dev.phase.map_or("-", Phase::as_str).to_owned(),
            dev.progress_pct
                .map_or_else(|| "-".to_owned(), |p| format!("{p}%")),
            ago(Some(dev.updated_at), now),
        ]);
    }
    out.push('\n');
    out.push_str(&t.render(width));
    for dev in &d.devices {
        let error = dev.error_message.as_deref().filter(|e| !e.is_empty());
        if error.is_none() && dev.status != TargetStatus::Failed {
            continue;
        }
        let _ = writeln!(
            out,
            "\n{} {}: {}",
            dev.device_id,
            dev.status.as_str(),
            cut(&clean(error.unwrap_or("no error message")), ERROR_CHARS)
        );
        if let Some(tail) = dev.log_tail.as_deref() {
            let lines: Vec<&str> = tail.lines().filter(|l| !l.trim().is_empty()).collect();
            for line in &lines[lines.len().saturating_sub(LOG_LINES)..] {
                let room = width.map_or(ERROR_CHARS, |w| w.saturating_sub(4).max(20));
                let _ = writeln!(out, "  | {}", cut(&clean(line), room));
            }
        }
    }
    out
}

/// The non-zero counts: `2 success, 1 in progress`.
/// A rollout's gate line and its waves table (SPEC §6).
fn rollout(r: &Rollout, status: DeploymentStatus, now: Now, width: Option<usize>) -> String {
    let mut out = String::from("\n");
    if let Some(gate) = crate::fmt::rollout_gate(r, status, now) {
        let _ = writeln!(out, "rollout: {gate}");
    }
    let mut t = Table::new(&[
        Column::new("WAVE"),
        Column::new("PCT").right(),
        Column::new("TARGETS").right(),
        Column::new("SUCCESS").right(),
        Column::new("HEALTHY").right(),
        Column::new("FAILED").right(),
        Column::new("OPENED").optional(0),
    ]);
    for (k, w) in r.waves.iter().enumerate() {
        let mark = if k == r.current_wave && w.opened_at.is_some() {
            "▸"
        } else {
            " "
        };
        t.row(vec![
            format!("{mark}{}", k + 1),
            format!("{}%", w.pct),
            w.targets.to_string(),
            w.success.to_string(),
            w.healthy.to_string(),
            w.failed.to_string(),
            w.opened_at
                .map_or_else(|| "-".to_owned(), |t| ago(Some(t), now)),
        ]);
    }
    out.push_str(&t.render(width));
    out
}

pub(crate) fn counts(c: &Counts) -> String {
    let parts: Vec<String> = [
        (c.success, "success"),
        (c.failed, "failed"),
        (c.timed_out, "timed out"),
        (c.cancelled, "cancelled"),
        (c.in_progress, "in progress"),
        (c.pending, "pending"),
        (c.waiting, "waiting"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, s)| format!("{n} {s}"))
    .collect();
    if parts.is_empty() {
        "no targets".to_owned()
    } else {
        parts.join(", ")
    }
}

fn compact_json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::Object(m) if m.is_empty() => "{}".to_owned(),
        v => cut(&v.to_string(), 300),
    }
}

/// An object of plain values as `k=v, k=v` (easier to read than JSON); anything else
/// as compact JSON.
fn flat_json(v: &serde_json::Value) -> String {
    use serde_json::Value;
    let Value::Object(m) = v else {
        return compact_json(v);
    };
    if m.is_empty() || m.values().any(|x| x.is_object() || x.is_array()) {
        return compact_json(v);
    }
    let parts: Vec<String> = m
        .iter()
        .map(|(k, x)| match x {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    cut(&parts.join(", "), 300)
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use kernex_common::api::{Admission, DeploymentDevice, DeploymentKind, OnlineStatus};
    use serde_json::json;

    use super::*;

    const ID: &str = "0198a3f2c1d47c3e9b2a5f0e1d2c3b4a";

    fn now() -> Now {
        DateTime::parse_from_rfc3339("2025-06-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn summary() -> DeviceSummary {
        DeviceSummary {
            device_id: ID.into(),
            device_type: "jetson-nano".into(),
            admission: Admission::Accepted,
            status: OnlineStatus::Online,
            agent_status: Some("idle".into()),
            tags: vec!["site:berlin".into(), "canary".into()],
            current_bundle_version: Some("1.0.0".into()),
            agent_version: Some("0.1.0".into()),
            last_heartbeat: Some(now() - chrono::Duration::seconds(12)),
            cpu_pct: Some(12.5),
            memory_mb: Some(812.0),
            config_version: Some(2),
            last_deployment: None,
        }
    }

    #[test]
    fn wide_devices_add_agent_config_and_last_deploy_at_any_width() {
        let mut d = summary();
        d.last_deployment = Some(
            serde_json::from_value(json!({
                "deployment_id": "x", "kind": "deploy", "bundle_version": "1.2.0",
                "status": "failed", "rolled_back_to": "1.1.0", "at": now(),
            }))
            .unwrap(),
        );
        let text = devices_wide(&[d, summary()], now());
        let header = text.lines().next().unwrap();
        for col in [
            "AGENT",
            "AGENT STATUS",
            "CONFIG",
            "LAST DEPLOY",
            "TAGS",
            "CPU",
        ] {
            assert!(header.contains(col), "{text}");
        }
        assert!(text.contains("1.2.0 failed→1.1.0"), "{text}");
        assert!(text.contains("site:berlin,canary"), "{text}");
        assert_eq!(text.lines().count(), 3, "{text}");
    }

    fn deployment_with_failure() -> Deployment {
        let t = now() - chrono::Duration::seconds(30);
        Deployment {
            id: "0198a3f2c1d47c3e9b2a5f0e1d2c3bff".into(),
            kind: DeploymentKind::Deploy,
            bundle_id: "b1".into(),
            bundle_version: "1.2.0-broken".into(),
            target_device_ids: vec![ID.into(), "dev2".into()],
            status: kernex_common::api::DeploymentStatus::InProgress,
            created_at: t,
            updated_at: t,
            completed_at: None,
            counts: Counts {
                in_progress: 1,
                failed: 1,
                ..Counts::default()
            },
            devices: vec![
                DeploymentDevice {
                    device_id: ID.into(),
                    status: TargetStatus::Failed,
                    phase: Some(Phase::Installing),
                    progress_pct: Some(100),
                    error_message: Some("deploy.sh exited with 3".into()),
                    log_tail: Some("a\nb\nc\nd\ne\nerror: migration 0042 failed\n".into()),
                    updated_at: t,
                },
                DeploymentDevice {
                    device_id: "dev2".into(),
                    status: TargetStatus::InProgress,
                    phase: Some(Phase::HealthCheck),
                    progress_pct: None,
                    error_message: None,
                    log_tail: None,
                    updated_at: t,
                },
            ],
            rollout: None,
        }
    }

    #[test]
    fn the_device_table_fits_80_columns_keeping_whole_ids() {
        let list = vec![summary()];
        let wide = devices(&list, now(), None);
        assert!(wide.starts_with("ID "), "{wide}");
        assert!(wide.contains("site:berlin,canary") && wide.contains("jetson-nano"));
        assert!(wide.contains("12s ago") && wide.contains("812 MB") && wide.contains("12.5%"));
        let narrow = devices(&list, now(), Some(80));
        assert!(narrow.lines().all(|l| l.chars().count() <= 80), "{narrow}");
        for col in ["ID", "ADMISSION", "STATUS", "VERSION", "LAST SEEN"] {
            assert!(narrow.contains(col), "{col} missing:\n{narrow}");
        }
        assert!(narrow.contains(ID), "{narrow}");
        assert!(devices(&[], now(), None).is_empty());
    }

    #[test]
    fn a_deployment_shows_each_target_and_the_end_of_a_failed_log() {
        let text = deployment(&deployment_with_failure(), now(), Some(80));
        assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
        assert!(text.contains("status:     in_progress"), "{text}");
        assert!(
            text.contains("1 finished of 2 (1 failed, 1 in progress)"),
            "{text}"
        );
        assert!(
            text.contains("health_check") && text.contains("100%"),
            "{text}"
        );
        assert!(
            text.contains(&format!("{ID} failed: deploy.sh exited with 3")),
            "{text}"
        );
        assert!(text.contains("  | error: migration 0042 failed"), "{text}");
        assert!(!text.contains("  | a\n"), "only the last lines: {text}");
    }

    #[test]
    fn deployments_list_counts_finished_targets() {
        let text = deployments(&[deployment_with_failure()], now(), None);
        let row = text.lines().nth(1).unwrap();
        assert!(
            row.contains("1.2.0-broken") && row.contains("1/2"),
            "{text}"
        );
        assert!(row.ends_with("30s ago"), "{text}");
    }

    #[test]
    fn config_uses_the_keys_config_set_takes() {
        let mut c = DeviceConfig::defaults(ID);
        c.metadata = json!({"site": "berlin"});
        let text = config(&c, now());
        for key in [
            "polling_interval",
            "heartbeat_timeout",
            "deploy_timeout",
            "log_level",
            "metadata",
        ] {
            assert!(text.contains(&format!("{key}:")), "{key}: {text}");
        }
        assert!(text.contains(r#"{"site":"berlin"}"#), "{text}");
        assert!(text.contains("never (defaults)"), "{text}");
    }

    fn record(error: Option<&str>, rolled_back_to: Option<&str>) -> HistoryRecord {
        HistoryRecord {
            id: "h".into(),
            device_id: ID.into(),
            deployment_id: "d".into(),
            kind: DeploymentKind::Deploy,
            bundle_id: "b".into(),
            bundle_version: "1.2.0".into(),
            status: kernex_common::api::ResultStatus::Failed,
            error_message: error.map(str::to_owned),
            log_tail: None,
            rolled_back_to: rolled_back_to.map(str::to_owned),
            deployed_at: now(),
            duration_seconds: Some(1.0),
        }
    }

    #[test]
    fn a_history_note_names_the_fallback_once() {
        assert_eq!(
            history_note(&record(Some("exit 3; rolled back to 1.0.0"), Some("1.0.0"))),
            "exit 3; rolled back to 1.0.0"
        );
        assert_eq!(
            history_note(&record(Some("exit 3"), Some("1.0.0"))),
            "exit 3 (rolled back to 1.0.0)"
        );
        assert_eq!(
            history_note(&record(None, Some("1.0.0"))),
            "rolled back to 1.0.0"
        );
        assert_eq!(history_note(&record(None, None)), "");
    }

    #[test]
    fn hardware_reads_as_key_value_pairs() {
        assert_eq!(
            flat_json(&json!({"arch": "x86_64", "cpus": 2})),
            "arch=x86_64, cpus=2"
        );
        assert_eq!(flat_json(&json!({"disks": [1]})), r#"{"disks":[1]}"#);
        assert_eq!(flat_json(&json!({})), "{}");
        assert_eq!(flat_json(&serde_json::Value::Null), "-");
    }

    #[test]
    fn counts_name_only_what_is_there() {
        let c = Counts {
            success: 2,
            pending: 1,
            ..Counts::default()
        };
        assert_eq!(counts(&c), "2 success, 1 pending");
        assert_eq!(counts(&Counts::default()), "no targets");
        assert_eq!(c.finished(), 2);
    }
}
