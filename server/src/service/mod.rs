//! The service layer: the fleet's rules, written once above every storage backend.
//!
//! [`rules`] holds the pure decisions (admission, config merge, result aggregation,
//! cancellation, delivery) that backends apply inside their transactions;
//! [`heartbeat`] decides what a heartbeat returns and stores beats through a
//! group-commit writer.

pub mod heartbeat; // the heartbeat path: work index, commands, beat writer
pub mod rollout; // pure rollout rules: waves, gates, soak, pacing (SPEC §6)
pub mod rollouts; // the rollout driver: active rollouts on events and a timer
pub mod rules; // pure rules every backend applies
pub mod signing; // signed updates: stored signatures, trust documents, policy
