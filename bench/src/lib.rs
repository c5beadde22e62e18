//! `kernex-bench`: the HTTP heartbeat benchmark behind `just bench-http`.
//!
//! It answers one question: how many heartbeats a second does the real `kernex-server`
//! serve, over real HTTP, compared with an axum server that does no work at all
//! (`kernex-noop`, same route, same request and reply shapes)? The ratio is the cost of
//! Kernex itself: auth, the store, building commands — not of HTTP, JSON or the load
//! generator.
//!
//! The driver (`kernex-bench-http`) starts both servers, registers a fleet with real
//! signed registrations, gives it work (a bundle, 50 deployments, some config changes),
//! then runs `wrk` against each server in turn with a Lua script that cycles through the
//! devices, each request carrying its own device id and token.
//!
//! ```text
//! just bench-http --duration 5 --rounds 1
//! ```

/// The driver: flags, orchestration, the summary.
pub mod driver;
/// Registering the fleet and creating its workload over the HTTP API.
pub mod fleet;
/// Device keys, generated once in parallel and cached as PEM files.
pub mod keys;
/// The no-op heartbeat server.
pub mod noop;
/// Child processes (server, noop) that are killed when the driver exits.
pub mod process;
/// The Lua script wrk runs, running wrk, and reading its report.
pub mod wrk;
