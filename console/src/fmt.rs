//! Small text formats shared by the TUI and the scripted commands.

use chrono::{DateTime, Utc};

/// Bytes in binary units: `812 B`, `1.5 KiB`, `3.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// How long ago `t` was, in its largest unit: `4s`, `12m`, `3h`, `5d`. A device's clock
/// may run ahead of ours: that reads `0s`, never a negative age.
pub fn age(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - t).num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m", s / 60),
        3_600..86_400 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A duration flag: `90`, `90s`, `10m`, `1h`, `2d` → seconds. `None` when unreadable.
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// What holds a rollout now, in one line (SPEC §6): the pause reason, the schedule, or
/// the current wave's health gate. `None` for a deployment without a rollout or a final
/// one.
pub fn rollout_gate(
    r: &kernex_common::api::Rollout,
    status: kernex_common::api::DeploymentStatus,
    now: DateTime<Utc>,
) -> Option<String> {
    use kernex_common::api::DeploymentStatus as S;
    if status.is_final() {
        return r.paused_reason.clone();
    }
    if let Some(reason) = &r.paused_reason {
        return Some(format!("paused: {reason}"));
    }
    if status == S::Scheduled {
        return Some(match r.start_at {
            Some(t) if t > now => format!("scheduled: starts in {}", age(now, t)),
            _ => "scheduled: starting".to_owned(),
        });
    }
    let k = r.current_wave;
    let w = r.waves.get(k)?;
    let need = (u64::from(r.success_threshold_pct) * w.targets).div_ceil(100);
    let soak = if r.soak_seconds > 0 {
        format!(", soak {}s", r.soak_seconds)
    } else {
        String::new()
    };
    if k + 1 >= r.waves.len() {
        return Some(format!(
            "last wave {}/{}: {}/{} healthy{soak}",
            k + 1,
            r.waves.len(),
            w.healthy,
            w.targets
        ));
    }
    Some(format!(
        "wave {}/{} gate: {}/{} healthy, needs {need}{soak}",
        k + 1,
        r.waves.len(),
        w.healthy,
        w.targets
    ))
}

#[cfg(test)]
mod rollout_tests {
    use super::*;

    #[test]
    fn durations_read_with_units() {
        assert_eq!(parse_duration("90"), Some(90));
        assert_eq!(parse_duration("10m"), Some(600));
        assert_eq!(parse_duration("1h"), Some(3600));
        assert_eq!(parse_duration("2d"), Some(172_800));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration("m"), None);
    }
}
