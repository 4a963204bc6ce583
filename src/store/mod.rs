//! All SQL lives here. Functions take `&mut PgConnection` (or a pool where they own the
//! transaction), so callers can compose them; row types are converted to domain types at this
//! boundary. Queries are runtime-checked (`sqlx::query`), each covered by the integration tests,
//! so a fresh clone builds without a database.
//!
//! The statements that matter to a request's or a send's latency carry a span of their own
//! (`store.*`, `#[tracing::instrument]`), so a trace shows where the time went.
//!
//! Lock order, everywhere: a `jobs` row before its `notifications` row. Claim, completion,
//! rescue and cancel all follow it, which is what keeps them from deadlocking each other.

pub mod clean;
pub mod ingest;
pub mod keys;
pub mod limits;
pub mod notifications;
pub mod ops_links;
pub mod receipts;
pub mod retention;
pub mod stats;
pub mod suppressions;
pub mod templates;
pub(crate) mod tracking;

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Transaction, migrate::Migrator};

pub use notifications::{EventRecord, NotificationRecord};

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The channel `LISTEN`ed to by dispatchers; a notification carries no payload (it is a hint).
pub const WAKE_CHANNEL: &str = "herald_jobs";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {}", describe(.0))]
    Db(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Not done, for a reason that passes (a neighbour's failure in a batch, a race): retry.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// A write whose statement went out and whose outcome could not be learnt (the connection
    /// was lost before the answer, and the database stayed away): it may have committed.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// The error the other items of a failed batch statement get: its kind, not its cause.
    pub fn for_neighbour(&self) -> StoreError {
        match self {
            StoreError::OutcomeUnknown(m) => StoreError::OutcomeUnknown(m.clone()),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// Whether a failed write may have committed all the same: the connection failed or was
/// closed, or the server went down, after the statement (or the `COMMIT`) was sent. Errors
/// that come before anything is sent (no connection in time, too many connections) or that
/// roll back by definition (a serialization failure, a deadlock) are not.
pub fn is_ambiguous(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|c| c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03"))
        }
        _ => false,
    }
}

/// Whether a database error is the database being away or busy, not the request: the
/// connection failed, was reset or closed, no connection came in time, the server is
/// shutting down or starting (SQLSTATE 57P01-57P03), refuses more connections (53300), or
/// the transaction lost a race (40001, 40P01). Worth retrying; a client gets a 503.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01")
        }),
        _ => false,
    }
}

/// Whether `e` is the database refusing a statement for its data (a value it cannot store,
/// a constraint, an index entry too large), not the database being away: worth isolating the
/// items of a batch that cause it, not retrying.
pub fn is_data_error(e: &StoreError) -> bool {
    matches!(e, StoreError::Db(sqlx::Error::Database(_))) && !matches!(e, StoreError::Db(db) if is_transient(db))
}

/// One result per item of a batch written as a whole (`whole`, the caller's own write, not
/// boxed: the common path costs nothing here). When the database refused that write for the
/// data of some item (`is_data_error`), the halves are written apart with `write`, and so on
/// down to the items that cause it: a poisoned item costs its batch about 2·log2(n) more
/// writes instead of n, and only it gets the error. Any other failure fails every item.
pub async fn isolating<I, O, F>(items: &[I], whole: StoreResult<Vec<O>>, write: F) -> Vec<StoreResult<O>>
where
    F: for<'a> Fn(&'a [I]) -> futures::future::BoxFuture<'a, StoreResult<Vec<O>>>,
{
    let mut out: Vec<Option<StoreResult<O>>> = items.iter().map(|_| None).collect();
    let mut todo = Vec::new();
    settle_range(&mut out, &mut todo, (0, items.len()), whole);
    while let Some((lo, hi)) = todo.pop() {
        let result = write(&items[lo..hi]).await;
        settle_range(&mut out, &mut todo, (lo, hi), result);
    }
    out.into_iter().map(|r| r.unwrap_or_else(|| Err(StoreError::Corrupt("a batch result is missing".into())))).collect()
}

/// Record the result of writing `items[lo..hi]`, or queue its halves when the data of some
/// item was refused.
fn settle_range<O>(
    out: &mut [Option<StoreResult<O>>],
    todo: &mut Vec<(usize, usize)>,
    (lo, hi): (usize, usize),
    result: StoreResult<Vec<O>>,
) {
    match result {
        Ok(results) => {
            for (slot, r) in out[lo..hi].iter_mut().zip(results) {
                *slot = Some(Ok(r));
            }
        }
        Err(e) if hi - lo > 1 && is_data_error(&e) => {
            let mid = lo + (hi - lo) / 2;
            todo.push((mid, hi));
            todo.push((lo, mid));
        }
        Err(e) => {
            for slot in &mut out[(lo + 1).min(hi)..hi] {
                *slot = Some(Err(e.for_neighbour()));
            }
            if let Some(first) = out.get_mut(lo) {
                *first = Some(Err(e));
            }
        }
    }
}

/// A database error as a person should read it: the server's message and its SQLSTATE, not
/// the line of PostgreSQL's C source that raised it (sqlx's `Display` appends "at line N").
fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_owned(),
        },
        other => other.to_string(),
    }
}

/// When `e` means the database cannot be reached or refuses us (no server, a wrong role,
/// password or database name), a message that says which server, database and role were
/// tried (never the password) and what to do; `None` for other errors.
pub fn connect_problem(url: &str, e: &sqlx::Error) -> Option<String> {
    let reason = match e {
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Tls(t) => format!("TLS: {t}"),
        sqlx::Error::PoolTimedOut => "no answer within database.acquire_timeout_ms".to_owned(),
        // 08: connection exception; 28: invalid authorization; 3D000: no such database;
        // 57P03: the server is starting or shutting down.
        sqlx::Error::Database(db)
            if db
                .code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("28") || c == "3D000" || c == "57P03") =>
        {
            db.message().to_owned()
        }
        _ => return None,
    };
    let opts: PgConnectOptions = url.parse().ok()?;
    let role = opts.get_username();
    let db = opts.get_database().unwrap_or(role);
    Some(format!(
        "cannot use the PostgreSQL database `{db}` on {}:{} as role `{role}`: {reason}. \
         Set DATABASE_URL (or database.url) to a server, role and database that exist, \
         e.g. postgres://USER:PASSWORD@HOST:5432/DATABASE (`herald dev` prints the one it uses)",
        opts.get_host(),
        opts.get_port(),
    ))
}

/// The application name of connections that go through a transaction pooler
/// (`database.transaction_pooler`): what `session` and `begin` tell such a pool by.
const POOLED_NAME: &str = "herald (transaction pooler)";

/// Build a pool that connects on first use, so a process can start (and answer `/healthz`)
/// before the database is reachable; `/readyz` reports whether it is. `pooler`: the URL is a
/// transaction-mode pooler's (PgBouncer `pool_mode = transaction`, Amazon RDS Proxy), so no
/// prepared statement is cached (see `session`).
pub fn pool(url: &str, max_connections: u32, acquire_timeout: Duration, pooler: bool) -> Result<PgPool, sqlx::Error> {
    let opts: PgConnectOptions = url.parse()?;
    let (opts, ping) = if pooler {
        // No ping before each use either: through a pooler it reaches only the pooler, and
        // says nothing of the server connection the next transaction gets; a unit of work that
        // finds its connection gone fails like one whose server went away mid-way, and is
        // settled the same way (see `ingest`). It was one round trip in five per POST.
        (opts.application_name(POOLED_NAME).statement_cache_capacity(0), false)
    } else {
        (opts.application_name("herald"), true)
    };
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(ping)
        .connect_lazy_with(opts))
}

/// Whether `pool` goes through a transaction pooler (built by `pool` with `pooler`).
pub fn is_pooled(pool: &PgPool) -> bool {
    pool.connect_options().get_application_name() == Some(POOLED_NAME)
}

/// A connection to run statements on. Directly connected, it is a pooled connection and each
/// statement commits on its own. Through a transaction pooler, a transaction pooler hands each
/// transaction to any server connection, and sqlx runs a statement with parameters as two
/// exchanges (prepare, then bind and execute), between which the pooler may switch servers:
/// another client's statement would then run with our parameters (seen with PgBouncer 1.18).
/// So there a session is a transaction, which pins one server connection until it ends, and
/// which starts by dropping the prepared statements any earlier transaction left on that
/// server (statements are never cached through a pooler, so none is reused): `finish` commits.
pub enum Session {
    Direct(PoolConnection<Postgres>),
    Pinned(Transaction<'static, Postgres>),
}

/// What a transaction begins with through a pooler (see `Session`).
const PINNED_BEGIN: &str = "BEGIN; DEALLOCATE ALL";

pub async fn session(pool: &PgPool) -> StoreResult<Session> {
    Ok(if is_pooled(pool) {
        Session::Pinned(pool.begin_with(PINNED_BEGIN).await?)
    } else {
        Session::Direct(pool.acquire().await?)
    })
}

impl Session {
    /// Commit what the session wrote (through a pooler: until then nothing is committed). A
    /// session dropped without it is rolled back through a pooler, so writes must `finish`.
    pub async fn finish(self) -> StoreResult<()> {
        match self {
            Session::Direct(_) => Ok(()),
            Session::Pinned(tx) => Ok(tx.commit().await?),
        }
    }
}

impl std::ops::Deref for Session {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        match self {
            Session::Direct(c) => c,
            Session::Pinned(t) => t,
        }
    }
}

impl std::ops::DerefMut for Session {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            Session::Direct(c) => c,
            Session::Pinned(t) => t,
        }
    }
}

/// A transaction, safe behind a transaction pooler (see `Session`).
pub async fn begin(pool: &PgPool) -> StoreResult<Transaction<'static, Postgres>> {
    Ok(if is_pooled(pool) { pool.begin_with(PINNED_BEGIN).await? } else { pool.begin().await? })
}

/// A transaction for reads that may be slow (stats, lists), whose statements are cancelled past
/// `timeout` (SQLSTATE 57014). `SET LOCAL` lasts for the transaction only, so it is safe
/// behind a transaction-mode pooler. Dropped without a commit, it is rolled back: nothing to
/// keep.
pub async fn read_tx(pool: &PgPool, timeout: Duration) -> StoreResult<Transaction<'static, Postgres>> {
    let mut tx = begin(pool).await?;
    sqlx::query("SELECT set_config('statement_timeout', $1, true)")
        .bind(format!("{}ms", timeout.as_millis().max(1)))
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

pub async fn migrate(pool: &PgPool) -> StoreResult<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Readiness: the database answers and every embedded migration has been applied.
pub async fn migrations_current(pool: &PgPool) -> StoreResult<bool> {
    let mut s = session(pool).await?;
    let applied: Vec<i64> =
        match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success").fetch_all(&mut *s).await {
            Ok(v) => v,
            // No migrations table yet: reachable, but not migrated.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => return Ok(false),
            Err(e) => return Err(e.into()),
        };
    Ok(MIGRATOR.iter().filter(|m| m.migration_type.is_up_migration()).all(|m| applied.contains(&m.version)))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A refusal for its data, as PostgreSQL would give it.
    fn refused() -> StoreError {
        StoreError::Db(sqlx::Error::Protocol("stand-in".into())).for_neighbour()
    }

    #[tokio::test]
    async fn a_poisoned_item_costs_its_batch_a_few_writes_and_fails_alone() {
        // Any write holding item 317 is refused for its data.
        let writes = AtomicUsize::new(0);
        let items: Vec<usize> = (0..500).collect();
        let results = isolating(&items, Err(data_error()), |chunk: &[usize]| {
            writes.fetch_add(1, Ordering::SeqCst);
            let poisoned = chunk.contains(&317);
            Box::pin(async move {
                if poisoned {
                    // `is_data_error` is what isolating asks: make one of those.
                    Err(data_error())
                } else {
                    Ok(chunk.iter().map(|i| i * 2).collect())
                }
            })
        })
        .await;
        assert!(results[317].is_err());
        assert!(results.iter().enumerate().all(|(i, r)| i == 317 || r.as_ref().is_ok_and(|v| *v == i * 2)));
        let n = writes.load(Ordering::SeqCst);
        assert!(n <= 2 * 9, "{n} more writes for 500 items with one poisoned (one by one would be 500)");
        // Not a data error (the database away): every item fails, nothing is split.
        let writes = AtomicUsize::new(0);
        let results = isolating(&items, Err::<Vec<usize>, _>(refused()), |_chunk: &[usize]| {
            writes.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Err::<Vec<usize>, _>(refused()) })
        })
        .await;
        assert_eq!(writes.load(Ordering::SeqCst), 0);
        assert!(results.iter().all(Result::is_err));
        // A whole write that succeeded is the answer.
        let results = isolating(&items, Ok(items.clone()), |_chunk: &[usize]| Box::pin(async { Ok(vec![]) })).await;
        assert!(results.iter().enumerate().all(|(i, r)| r.as_ref().is_ok_and(|v| *v == i)));
    }

    /// A database error with SQLSTATE 54000 (program limit exceeded: an index row too large).
    fn data_error() -> StoreError {
        #[derive(Debug)]
        struct TooBig;
        impl std::fmt::Display for TooBig {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("index row size exceeds the maximum")
            }
        }
        impl std::error::Error for TooBig {}
        impl sqlx::error::DatabaseError for TooBig {
            fn message(&self) -> &str {
                "index row size exceeds the maximum"
            }
            fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
                Some("54000".into())
            }
            fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
                self
            }
            fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
                self
            }
            fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
                self
            }
            fn kind(&self) -> sqlx::error::ErrorKind {
                sqlx::error::ErrorKind::Other
            }
        }
        StoreError::Db(sqlx::Error::Database(Box::new(TooBig)))
    }

    /// Delivery status has one writer, `store::tracking` (the status machine is applied there):
    /// no other module of `src/` updates `notifications.status`. Rows are created with their
    /// first status by `ingest`; every later change goes through `tracking`.
    #[test]
    fn only_tracking_updates_notification_status() {
        // Spelt in two parts so that this file does not match itself.
        let needle = format!("{} {}", "update", "notifications");
        fn walk(dir: &Path, needle: &str, found: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).expect("read src") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    if !path.ends_with("store/tracking") {
                        walk(&path, needle, found);
                    }
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).expect("read");
                    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
                    if flat.contains(needle) {
                        found.push(path.display().to_string());
                    }
                }
            }
        }
        let mut found = Vec::new();
        walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &needle, &mut found);
        assert!(found.is_empty(), "notifications updated outside store::tracking: {found:?}");
    }
}
