//! Rollouts on the wire (SPEC §6): the policy a deployment is created with, and the
//! rollout block a deployment shows (the policy with its defaults filled, each wave's
//! numbers, and why it is paused).

use serde::{Deserialize, Serialize};

use super::Timestamp;

/// What a rollout does when its failure gate trips.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// No new deliveries; in-flight targets finish; an operator resumes.
    #[default]
    Pause,
    /// Every target not yet delivered is cancelled; the deployment ends.
    Abort,
}

impl OnFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Pause => "pause",
            OnFailure::Abort => "abort",
        }
    }
}

/// The `rollout` object of `POST /deployments` and `POST /devices/rollback`. Any field
/// may be left out; [`Default`] is the spec's defaults (one wave of 100 %, no gates).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(
        description = "Waves, health gates, failure gates, timeouts, pacing (SPEC §6). Any field may be left out."
    )
)]
#[serde(default)]
pub struct RolloutPolicy {
    /// Cumulative % of targets per wave; ascending; the last is 100.
    #[cfg_attr(feature = "openapi", schema(schema_with = super::openapi::waves))]
    pub waves: Vec<u8>,
    /// Targets carrying this tag come first.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Za-z0-9._:-]{1,64}$", min_length = 1, max_length = 64)
    )]
    pub first_tag: Option<String>,
    /// A wave is good when this % of its targets succeeded (and soaked).
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100))]
    pub success_threshold_pct: u8,
    /// How long a success must stay healthy before it counts.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub soak_seconds: u64,
    /// Failures over the whole deployment before the gate trips.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub max_failures: Option<u64>,
    /// ...or failures as a % of the targets delivered so far.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100))]
    pub max_failure_pct: Option<u8>,
    pub on_failure: OnFailure,
    /// `false`: the operator resumes each next wave.
    pub auto_advance: bool,
    /// A target not final this long after its wave opened becomes `timed_out`.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub target_timeout_seconds: Option<u64>,
    /// Most first deliveries released per minute.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub max_per_minute: Option<u64>,
    /// Nothing is delivered before this.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub start_at: Option<Timestamp>,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        RolloutPolicy {
            waves: vec![100],
            first_tag: None,
            success_threshold_pct: 100,
            soak_seconds: 0,
            max_failures: None,
            max_failure_pct: None,
            on_failure: OnFailure::Pause,
            auto_advance: true,
            target_timeout_seconds: None,
            max_per_minute: None,
            start_at: None,
        }
    }
}

impl RolloutPolicy {
    /// Why this policy is refused (SPEC §6), or `None` when it is valid.
    pub fn problem(&self) -> Option<String> {
        let w = &self.waves;
        if w.is_empty() {
            return Some("rollout.waves must not be empty".into());
        }
        if w.iter().any(|p| *p == 0 || *p > 100) {
            return Some("rollout.waves are percentages between 1 and 100".into());
        }
        if w.windows(2).any(|p| p[0] >= p[1]) {
            return Some("rollout.waves must be strictly ascending (cumulative %)".into());
        }
        if w.last() != Some(&100) {
            return Some("the last of rollout.waves must be 100".into());
        }
        if w.len() > 100 {
            return Some("rollout.waves has more than 100 waves".into());
        }
        if self.success_threshold_pct > 100 {
            return Some("rollout.success_threshold_pct must be between 0 and 100".into());
        }
        if self.max_failures.is_some() && self.max_failure_pct.is_some() {
            return Some("give at most one of rollout.max_failures and max_failure_pct".into());
        }
        if self.max_failure_pct.is_some_and(|p| p > 100) {
            return Some("rollout.max_failure_pct must be between 0 and 100".into());
        }
        const YEAR: u64 = 366 * 24 * 3600;
        if self.soak_seconds > YEAR {
            return Some("rollout.soak_seconds is more than a year".into());
        }
        if self
            .target_timeout_seconds
            .is_some_and(|t| t == 0 || t > YEAR)
        {
            return Some("rollout.target_timeout_seconds must be 1 s to a year".into());
        }
        if self.max_per_minute == Some(0) {
            return Some("rollout.max_per_minute must be at least 1".into());
        }
        None
    }
}

/// One wave as a deployment shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Wave {
    /// Cumulative %, as sent.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub pct: u8,
    /// This wave's own targets.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub targets: u64,
    /// Its targets that reported success.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub success: u64,
    /// ...and stayed healthy through the soak (what the health gate counts).
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub healthy: u64,
    /// Failed, timed out, or failed their soak.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub failed: u64,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime, required = true))]
    pub opened_at: Option<Timestamp>,
}

/// The `rollout` block of a deployment: the policy with its defaults filled, where the
/// rollout stands, and why it is paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rollout {
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub first_tag: Option<String>,
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100))]
    pub success_threshold_pct: u8,
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub soak_seconds: u64,
    #[cfg_attr(feature = "openapi", schema(required = true, minimum = 0))]
    pub max_failures: Option<u64>,
    #[cfg_attr(
        feature = "openapi",
        schema(required = true, minimum = 0, maximum = 100)
    )]
    pub max_failure_pct: Option<u8>,
    pub on_failure: OnFailure,
    pub auto_advance: bool,
    #[cfg_attr(feature = "openapi", schema(required = true, minimum = 1))]
    pub target_timeout_seconds: Option<u64>,
    #[cfg_attr(feature = "openapi", schema(required = true, minimum = 1))]
    pub max_per_minute: Option<u64>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime, required = true))]
    pub start_at: Option<Timestamp>,
    /// The 0-based index of the newest open wave.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub current_wave: usize,
    pub waves: Vec<Wave>,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub paused_reason: Option<String>,
}

/// What moved a rollout, carried by the `deployment` event that reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RolloutChange {
    /// Wave `wave` (0-based) opened: its targets may now be delivered.
    WaveOpened {
        wave: usize,
    },
    /// A gate held the rollout: the failure gate, or a good wave waiting for `resume`.
    GateTripped {
        reason: String,
    },
    /// The rollout was aborted by its failure gate.
    Aborted {
        reason: String,
    },
    /// A target was not final in time.
    TargetTimedOut {
        device_id: String,
    },
    /// A success did not stay healthy through its soak.
    SoakFailed {
        device_id: String,
    },
    /// An operator paused or resumed it.
    Paused {
        reason: String,
    },
    Resumed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_object_is_the_default_policy() {
        let p: RolloutPolicy = serde_json::from_str("{}").unwrap_or_default();
        assert_eq!(p, RolloutPolicy::default());
        assert_eq!(p.waves, [100]);
        assert!(p.problem().is_none());
    }

    #[test]
    fn bad_policies_name_their_problem() {
        let bad = |f: fn(&mut RolloutPolicy)| {
            let mut p = RolloutPolicy::default();
            f(&mut p);
            p.problem()
        };
        assert!(bad(|p| p.waves = vec![10, 5, 100]).is_some());
        assert!(bad(|p| p.waves = vec![10, 50]).is_some());
        assert!(bad(|p| p.waves = vec![0, 100]).is_some());
        assert!(bad(|p| p.waves = vec![]).is_some());
        assert!(bad(|p| p.success_threshold_pct = 101).is_some());
        assert!(
            bad(|p| {
                p.max_failures = Some(1);
                p.max_failure_pct = Some(5);
            })
            .is_some()
        );
        assert!(bad(|p| p.target_timeout_seconds = Some(0)).is_some());
        assert!(bad(|p| p.max_per_minute = Some(0)).is_some());
        assert!(bad(|p| p.waves = vec![1, 10, 100]).is_none());
    }
}
