//! Herald's throughput benchmark, run by hand (never in CI):
//!
//!     cargo run --release --example bench -- [N] [CONCURRENCY]
//!
//! On a fresh database on the local PostgreSQL, with the `log` provider (no latency):
//! 1. ingest: N `POST /v1/notifications` over HTTP with CONCURRENCY clients, dispatcher off;
//! 2. dispatch: two dispatchers (as two replicas would) drain the N queued jobs.
//!
//! Prints requests/s with latency percentiles, and jobs/s. Results go in the README table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::app::App;
use herald::config::{ProviderKind, ProviderSettings, Settings};
use herald::store::keys::{self, Scope};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let concurrency: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(32);

    let pg = herald::dev::local_postgres(false).await?;
    let db = format!("herald_bench_{}", std::process::id());
    herald::dev::ensure_database(&pg.admin_url, &db).await?;
    let mut settings = Settings::from_figment(Settings::figment(None))?;
    settings.database.url = herald::config::Secret::new(pg.url_for(&db));
    settings.database.max_connections = 40;
    settings.providers.insert("log".into(), ProviderSettings::new(ProviderKind::Log));
    for ch in [&mut settings.channels.email, &mut settings.channels.sms, &mut settings.channels.push] {
        ch.providers = vec!["log".into()];
    }
    settings.dispatch.concurrency = 64;
    settings.dispatch.batch_size = 64;
    settings.dispatch.poll_interval_ms = 50;
    settings.log.level = "warn".into();
    herald::telemetry::init(settings.log.format, "warn");
    let app = App::build(settings)?;
    herald::store::migrate(&app.pool).await?;
    let key = {
        let mut conn = app.pool.acquire().await?;
        keys::create_key(&mut conn, "bench", &[Scope::Send, Scope::Read]).await?.1
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/notifications", listener.local_addr()?);
    let router = herald::http::router(app.state());
    tokio::spawn(async move { axum::serve(listener, router).await });

    // 1. Ingest.
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, key, next) = (client.clone(), url.clone(), key.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break latencies;
                }
                let body = serde_json::json!({"channel": "sms", "to": "+14155550100", "content": {"text": format!("bench {i}")}});
                let t0 = Instant::now();
                let resp = client.post(&url).bearer_auth(&key).json(&body).send().await;
                match resp {
                    Ok(r) if r.status().as_u16() == 202 => latencies.push(t0.elapsed()),
                    Ok(r) => panic!("unexpected {}", r.status()),
                    Err(e) => panic!("request failed: {e}"),
                }
            }
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for t in tasks {
        latencies.extend(t.await?);
    }
    let ingest = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "ingest:   {n} notifications in {:.2} s = {:.0} req/s (concurrency {concurrency}; p50 {:.1} ms, p99 {:.1} ms)",
        ingest.as_secs_f64(),
        n as f64 / ingest.as_secs_f64(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );

    // 2. Dispatch with two dispatchers, as two replicas.
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let d = app.dispatcher();
            let c = cancel.clone();
            tokio::spawn(async move { d.run(c).await })
        })
        .collect();
    loop {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'send'").fetch_one(&app.pool).await?;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dispatch = started.elapsed();
    cancel.cancel();
    for h in handles {
        h.await?;
    }
    let sent: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifications WHERE status = 'sent'").fetch_one(&app.pool).await?;
    println!(
        "dispatch: {sent} sent in {:.2} s = {:.0} jobs/s (2 dispatchers x concurrency 64, log provider)",
        dispatch.as_secs_f64(),
        sent as f64 / dispatch.as_secs_f64()
    );
    app.pool.close().await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&pg.admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)")))
        .execute(&mut conn)
        .await?;
    Ok(())
}
