//! Wiring: settings → pool, providers, state → the roles this process runs (API, dispatcher
//! or both), with graceful shutdown on SIGTERM or ctrl-c.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{ConfigError, Settings};
use crate::dispatch::Dispatcher;
use crate::domain::{Channel, Priority};
use crate::http::{self, AppState, KeyCache};
use crate::providers::{BuildError, Registry};
use crate::store::{self, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Provider(#[from] BuildError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The database cannot be used: which server, database and role, and what to do.
    #[error("{0}")]
    Database(String),
    /// The API's address cannot be bound.
    #[error("cannot listen on {addr} (server.listen): {source}{}", listen_hint(source))]
    Listen { addr: String, source: std::io::Error },
    /// A command-line argument or value is wrong; the message names it.
    #[error("{0}")]
    Usage(String),
    /// `herald dev` could not find or start a PostgreSQL.
    #[error("{0}")]
    LocalPostgres(String),
    /// The Lambda runtime failed or was misconfigured.
    #[error("{0}")]
    Lambda(String),
    /// A task of the process stopped abnormally.
    #[error("{0}")]
    Task(String),
}

/// What to do about a taken address.
fn listen_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        "; another process listens there: pick another address with --listen 127.0.0.1:8081 \
         (or server.listen, HERALD__SERVER__LISTEN), or stop the other process"
    } else {
        ""
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        AppError::Store(StoreError::Db(e))
    }
}

/// Which roles a process runs.
#[derive(Clone, Copy, Debug)]
pub struct Roles {
    pub api: bool,
    pub worker: bool,
}

#[derive(Clone)]
pub struct App {
    /// The API's pool (`database.max_connections`).
    pub pool: PgPool,
    /// The dispatcher's pool, so a busy API and a busy dispatcher never starve each other.
    pub dispatch_pool: PgPool,
    /// Slow reads (stats, lists, the queue gauges), so they never take the accepts' connections.
    pub read_pool: PgPool,
    pub settings: Arc<Settings>,
    pub registry: Arc<Registry>,
    /// Status callbacks' client: no redirects, public addresses only (unless allowed).
    callbacks_http: reqwest::Client,
    keys: Arc<KeyCache>,
    /// Acceptance (`accept`), with its group committer: shared by every request.
    intake: crate::accept::Intake,
    stats: Arc<http::StatsCache>,
    cpu: crate::cpu::CpuPool,
}

impl App {
    pub fn build(settings: Settings) -> Result<App, AppError> {
        if settings.database.url.is_empty() {
            return Err(ConfigError::Invalid {
                key: "database.url".into(),
                message: "is required: set DATABASE_URL or database.url (or use `herald dev`)".into(),
            }
            .into());
        }
        let db = &settings.database;
        let acquire_timeout = Duration::from_millis(db.acquire_timeout_ms);
        let invalid_url = |e: sqlx::Error| ConfigError::Invalid { key: "database.url".into(), message: e.to_string() };
        let pooler = db.transaction_pooler;
        let pool = store::pool(db.url.expose(), db.max_connections, acquire_timeout, pooler).map_err(invalid_url)?;
        let dispatch_size = db.dispatch_pool_size(settings.dispatch.concurrency);
        let dispatch_pool =
            store::pool(db.url.expose(), dispatch_size, acquire_timeout, pooler).map_err(invalid_url)?;
        let read_pool =
            store::pool(db.url.expose(), db.read_max_connections, acquire_timeout, pooler).map_err(invalid_url)?;
        let registry = Arc::new(settings.registry()?);
        prime_metrics(&registry);
        let callbacks_http = crate::providers::public_net::client(settings.callbacks.allow_private_networks)
            .map_err(|e| AppError::Task(format!("cannot build the HTTP client for status callbacks: {e}")))?;
        let keys = Arc::new(KeyCache::new(Duration::from_millis(settings.server.key_cache_ms)));
        let cpu = crate::cpu::CpuPool::new();
        let intake = crate::accept::Intake::new(pool.clone(), registry.clone(), cpu.clone(), &settings);
        let stats = Arc::default();
        crate::metrics::handle();
        Ok(App {
            pool,
            dispatch_pool,
            read_pool,
            settings: Arc::new(settings),
            registry,
            callbacks_http,
            keys,
            intake,
            stats,
            cpu,
        })
    }

    pub fn state(&self) -> AppState {
        AppState {
            pool: self.pool.clone(),
            reads: self.read_pool.clone(),
            cpu: self.cpu.clone(),
            settings: self.settings.clone(),
            registry: self.registry.clone(),
            intake: self.intake.clone(),
            keys: self.keys.clone(),
            stats: self.stats.clone(),
        }
    }

    /// Acceptance, as the API runs it: for embedders and tests that accept without HTTP.
    pub fn intake(&self) -> &crate::accept::Intake {
        &self.intake
    }

    pub fn dispatcher(&self) -> Dispatcher {
        Dispatcher::with_callback_client(
            self.dispatch_pool.clone(),
            self.registry.clone(),
            &self.settings,
            self.callbacks_http.clone(),
        )
    }

    /// Run `roles` until `cancel` fires. The API stops accepting at once and finishes in-flight
    /// requests; the dispatcher stops claiming and finishes in-flight sends within its grace.
    pub async fn run(&self, roles: Roles, cancel: CancellationToken) -> Result<(), AppError> {
        let listener = if roles.api { Some(self.bind().await?) } else { None };
        self.run_on(listener, roles, cancel).await
    }

    /// Bind `server.listen`, saying what to do when the address is taken.
    pub async fn bind(&self) -> Result<tokio::net::TcpListener, AppError> {
        let addr = &self.settings.server.listen;
        tokio::net::TcpListener::bind(addr).await.map_err(|source| AppError::Listen { addr: addr.clone(), source })
    }

    /// A dashboard sign-in link for `tenant`, good once for `minutes` (at most
    /// `ops_link::MAX_MINUTES`), pointing at `base`; `None` when there is no such tenant.
    pub async fn ops_link(&self, tenant: &str, minutes: u32, base: &str) -> Result<Option<String>, AppError> {
        use crate::domain::ops_link;
        let minutes = minutes.clamp(1, ops_link::MAX_MINUTES);
        let mut conn = store::session(&self.pool).await?;
        let key = store::ops_links::signing_key(&mut conn, ops_link::KEY_PURPOSE).await?;
        let link = store::ops_links::create(&mut conn, tenant, time::Duration::minutes(i64::from(minutes))).await?;
        conn.finish().await?;
        Ok(link.map(|l| ops_link::url(base, &ops_link::token(&key, l.id, l.tenant_id, l.expires_at))))
    }

    /// Where this server is reached: `server.public_base_url`, else its listen address (a
    /// wildcard read as this machine).
    pub fn base_url(&self) -> String {
        let public = self.settings.server.public_base_url.trim_end_matches('/');
        if !public.is_empty() {
            return public.to_owned();
        }
        let addr = self.settings.server.listen.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]");
        format!("http://{addr}")
    }

    /// Apply the migrations. They take a session-level advisory lock, which a transaction
    /// pooler does not keep: behind one they go through `database.direct_url`, and without it
    /// they are refused, saying how to run them.
    pub async fn migrate(&self) -> Result<(), AppError> {
        let db = &self.settings.database;
        if !db.transaction_pooler {
            return Ok(store::migrate(&self.pool).await?);
        }
        if db.direct_url.is_empty() {
            return Err(ConfigError::Invalid {
                key: "database.direct_url".into(),
                message: "migrations need a direct connection to PostgreSQL, and database.url goes through a \
                          transaction pooler (database.transaction_pooler): set database.direct_url, or set \
                          database.migrate_on_start = false and run `herald migrate` with DATABASE_URL pointing at \
                          PostgreSQL itself and HERALD__DATABASE__TRANSACTION_POOLER=false"
                    .into(),
            }
            .into());
        }
        let timeout = Duration::from_millis(db.acquire_timeout_ms);
        let direct = store::pool(db.direct_url.expose(), 1, timeout, false)
            .map_err(|e| ConfigError::Invalid { key: "database.direct_url".into(), message: e.to_string() })?;
        let done = store::migrate(&direct).await;
        direct.close().await;
        Ok(done?)
    }

    /// Check that the database answers, before doing anything with it: a failure names the
    /// server, database and role that were tried (never the password) and what to do.
    pub async fn check_database(&self) -> Result<(), AppError> {
        // One connection of its own rather than the pool's: a pool that cannot connect says
        // only that it timed out, where a connection says why (refused, no such role, …).
        let url = self.settings.database.url.expose();
        let timeout = Duration::from_millis(self.settings.database.acquire_timeout_ms);
        let attempt = tokio::time::timeout(timeout, <sqlx::PgConnection as sqlx::Connection>::connect(url)).await;
        let e = match attempt {
            Ok(Ok(conn)) => {
                let _ = sqlx::Connection::close(conn).await;
                return Ok(());
            }
            Ok(Err(e)) => e,
            Err(_) => sqlx::Error::PoolTimedOut,
        };
        Err(match store::connect_problem(url, &e) {
            Some(why) => AppError::Database(why),
            None => e.into(),
        })
    }

    /// `run` with the API on `listener` (bound by `bind`, so a caller can print the address
    /// only once it is really listening).
    pub async fn run_on(
        &self,
        listener: Option<tokio::net::TcpListener>,
        roles: Roles,
        cancel: CancellationToken,
    ) -> Result<(), AppError> {
        if self.settings.database.migrate_on_start {
            self.check_database().await?;
            self.migrate().await?;
        }
        // Which providers serve which channel, in failover order, as `herald dev`'s banner says.
        for channel in Channel::ALL {
            let names: Vec<&str> = self.registry.route(channel).iter().map(|r| r.name.as_str()).collect();
            if names.is_empty() {
                info!(channel = channel.as_str(), "no provider configured: this channel's notifications are refused");
            } else {
                info!(channel = channel.as_str(), providers = %names.join(", "), "channel served");
            }
        }
        let api = if let Some(listener) = listener.filter(|_| roles.api) {
            info!(addr = %local_addr(&listener), "api listening");
            tokio::spawn(refresh_gauges(
                self.read_pool.clone(),
                self.registry.clone(),
                self.settings.clone(),
                cancel.clone(),
            ));
            let router = http::router(self.state());
            let limits = http::serve::Limits::of(&self.settings);
            if let Some(files) = http::serve::raise_open_files_limit()
                && files < limits.max_connections as u64 + 64
            {
                warn!(
                    open_files = files,
                    max_connections = limits.max_connections,
                    "the open-files limit is below server.max_connections: connections past it fail to be accepted"
                );
            }
            let grace = Duration::from_millis(self.settings.server.shutdown_grace_ms);
            let token = cancel.clone();
            Some(tokio::spawn(async move {
                let server = http::serve::serve(listener, router, limits, token.clone());
                tokio::select! {
                    () = server => {}
                    () = async { cancel_then(grace, &token).await } => {
                        warn!("in-flight requests did not finish within server.shutdown_grace_ms");
                    }
                }
            }))
        } else {
            None
        };
        if roles.worker {
            self.dispatcher().run(cancel.clone()).await;
        }
        if let Some(handle) = api {
            handle.await.map_err(|e| AppError::Task(format!("the API stopped: {e}")))?;
        }
        Ok(())
    }
}

/// Every series the README's metrics table lists, at zero from the start, for each channel
/// that has providers and each of its providers (`metrics::prime`).
fn prime_metrics(registry: &Registry) {
    let channels: Vec<(&'static str, Vec<String>)> = Channel::ALL
        .into_iter()
        .map(|c| (c.as_str(), registry.route(c).iter().map(|r| r.name.clone()).collect::<Vec<_>>()))
        .filter(|(_, providers)| !providers.is_empty())
        .collect();
    let reasons = crate::domain::send_limit::LimitScope::ALL.map(crate::domain::send_limit::LimitScope::reason);
    crate::metrics::prime(&channels, &crate::providers::ATTEMPT_OUTCOMES, &reasons);
}

/// Keep the gauges `/metrics` shows that come from the database (and the breakers) fresh,
/// every `metrics.refresh_ms`, until `cancel`.
async fn refresh_gauges(pool: PgPool, registry: Arc<Registry>, settings: Arc<Settings>, cancel: CancellationToken) {
    let every = Duration::from_millis(settings.metrics.refresh_ms);
    loop {
        if let Err(e) = refresh_gauges_once(&pool, &registry).await {
            warn!(error = %e, "could not refresh the queue gauges");
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// One refresh of the gauges from the database and the breakers. A failed read leaves the
/// last queue values.
pub async fn refresh_gauges_once(pool: &PgPool, registry: &Registry) -> Result<(), StoreError> {
    for route in registry.routes() {
        crate::metrics::circuit(&route.name, route.breaker.is_open());
    }
    crate::metrics::upkeep();
    let mut conn = store::session(pool).await?;
    let lanes = store::stats::lanes(&mut conn, None).await?;
    let stuck = store::stats::stuck(&mut conn, None).await?;
    // Every lane, so that one that emptied reads 0 rather than its last depth.
    for channel in Channel::ALL {
        for priority in Priority::ALL {
            let row = lanes.iter().find(|l| l.channel == channel.as_str() && l.priority == priority.as_str());
            let (waiting, due, oldest) = row.map_or((0, 0, None), |l| (l.waiting, l.due, l.oldest_due_age_seconds));
            crate::metrics::lane(channel.as_str(), priority.as_str(), waiting, due, oldest);
        }
    }
    crate::metrics::stuck(stuck);
    Ok(())
}

async fn cancel_then(grace: Duration, token: &CancellationToken) {
    token.cancelled().await;
    tokio::time::sleep(grace).await;
}

fn local_addr(l: &tokio::net::TcpListener) -> String {
    l.local_addr().map(|a: SocketAddr| a.to_string()).unwrap_or_default()
}

/// A token cancelled by SIGTERM or ctrl-c.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => info!("ctrl-c: shutting down"),
            () = term => info!("SIGTERM: shutting down"),
        }
        t.cancel();
    });
    token
}
