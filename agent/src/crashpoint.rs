//! Named crash points for end-to-end tests of crash safety.
//!
//! With `KERNEX_AGENT_CRASH_AT=<name>` in its environment the agent aborts — no
//! destructors, no flushing, as abrupt as SIGKILL — when it reaches the point of that
//! name. Tests use it to stop the agent *exactly* between two durable steps (say, after
//! the result is queued and before `state.json` records it), which a kill timed from
//! outside can only hit by luck. Unset, each point is one environment lookup.

/// The environment variable naming the point to crash at.
pub const ENV: &str = "KERNEX_AGENT_CRASH_AT";

/// Every crash point, in the order a deployment passes them.
pub const POINTS: &[&str] = &[
    "before-queue-write",
    "after-queue-write",
    "after-state-update",
    "after-send",
];

/// Abort here if the environment asks for it.
pub fn hit(name: &str) {
    debug_assert!(POINTS.contains(&name), "unknown crash point {name}");
    if std::env::var_os(ENV).is_some_and(|v| v == name) {
        eprintln!("kernex-agent: crash point {name:?} reached ({ENV}); aborting");
        std::process::abort();
    }
}
