//! All SQL lives here. Functions take `&mut PgConnection` (or a pool where they own the
//! transaction), so callers can compose them; row types are converted to domain types at this
//! boundary. Queries are runtime-checked (`sqlx::query`), each covered by the integration tests,
//! so a fresh clone builds without a database.
//!
//! Lock order, everywhere: a `jobs` row before its `notifications` row. Claim, completion,
//! rescue and cancel all follow it, which is what keeps them from deadlocking each other.

pub mod ingest;
pub mod keys;
pub mod notifications;
pub mod receipts;
pub mod retention;
pub mod suppressions;
pub mod tracking;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, migrate::Migrator};

pub use notifications::{EventRecord, NotificationRecord};

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The channel `LISTEN`ed to by dispatchers; a notification carries no payload (it is a hint).
pub const WAKE_CHANNEL: &str = "herald_jobs";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Not done, for a reason that passes (a neighbour's failure in a batch, a race): retry.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Build a pool that connects on first use, so a process can start (and answer `/healthz`)
/// before the database is reachable; `/readyz` reports whether it is.
pub fn pool(url: &str, max_connections: u32, acquire_timeout: Duration) -> Result<PgPool, sqlx::Error> {
    let opts: PgConnectOptions = url.parse()?;
    let opts = opts.application_name("herald");
    Ok(PgPoolOptions::new().max_connections(max_connections).acquire_timeout(acquire_timeout).connect_lazy_with(opts))
}

pub async fn migrate(pool: &PgPool) -> StoreResult<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Readiness: the database answers and every embedded migration has been applied.
pub async fn migrations_current(pool: &PgPool) -> StoreResult<bool> {
    let applied: Vec<i64> =
        match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success").fetch_all(pool).await {
            Ok(v) => v,
            // No migrations table yet: reachable, but not migrated.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => return Ok(false),
            Err(e) => return Err(e.into()),
        };
    Ok(MIGRATOR.iter().filter(|m| m.migration_type.is_up_migration()).all(|m| applied.contains(&m.version)))
}
