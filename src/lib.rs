//! Herald: a notification service. HTTP in (`http`), PostgreSQL queue (`store`), dispatch
//! (`dispatch`) through provider adapters (`providers`). See `app` for how they are wired.

// `pub` only where it is reachable from outside the crate; what is not says `pub(crate)` or
// less, so that a reader sees at once what is the crate's interface.
#![warn(unreachable_pub)]

pub mod accept;
pub mod app;
pub mod batching;
pub mod config;
pub mod cpu;
pub mod dev;
pub mod dispatch;
pub mod domain;
pub mod fair;
pub mod http;
pub mod lambda;
pub mod metrics;
pub mod providers;
pub mod receipts;
pub mod secret;
pub mod store;
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod views;

/// The version, with the git revision it was built from when known: `0.1.0 (abc123def456)`.
pub const VERSION: &str = env!("HERALD_VERSION");
/// The git revision alone, or empty.
pub const GIT_REV: &str = env!("HERALD_GIT_REV");
