//! The measured scenarios. Each runs on a fresh database with Herald (or the naive server)
//! started as its own process with default settings, the channel `sms` routed to the
//! `console` (`log`) provider or to the fake Twilio.

use std::time::{Duration, Instant};

use reqwest::header::CONTENT_TYPE;
use sqlx::PgPool;

use crate::load::{self, OpenStats, Plan, Stats};
use crate::procs::{self, Herald, Proc};
use crate::{Ctx, Result};

pub const SINGLE_CONNECTIONS: usize = 64;
pub const BATCH_CONNECTIONS: usize = 4;
pub const BATCH_SIZE: u64 = 1000;
pub const LATENCY_RATE: f64 = 2000.0;
const JSON: &str = "application/json";

const JOBS_LEFT: &str = "SELECT count(*) FROM jobs WHERE kind = 'send'";
const SENT: &str = "SELECT count(*) FROM notifications WHERE status = 'sent'";
/// Sends recorded so far, counted on the timeline, which holds only what this run sent: a
/// count on `notifications` scans the whole backlog (a million rows) at every poll.
const SENT_ATTEMPTS: &str = "SELECT count(*) FROM notification_events WHERE type = 'attempt' AND status = 'sent'";

/// Which provider the `sms` channel uses.
#[derive(Clone, Copy, PartialEq)]
pub enum Sms {
    /// `kind = "log"`: no I/O, so dispatch figures are Herald's own cost.
    Console,
    /// `kind = "twilio"` pointed at the fake in this process.
    Fake,
}

/// A fresh database, migrated, with an API key, and the Herald that runs on it.
struct Setup {
    db: String,
    url: String,
    herald: Herald,
    key: String,
}

impl Ctx {
    async fn setup(&self, scenario: &str, sms: Sms) -> Result<Setup> {
        let (db, url) = self.dbs.create(scenario).await?;
        let config = self.tmp.join(format!("{scenario}.toml"));
        let provider = if sms == Sms::Fake { "fake" } else { "console" };
        std::fs::write(&config, config_toml(&self.fake.base_url, provider))?;
        let herald = Herald { bin: self.bins.herald.clone(), db_url: url.clone(), config, logs: self.tmp.clone() };
        let key = herald.prepare().await?;
        Ok(Setup { db, url, herald, key })
    }
}

pub fn config_toml(fake_base_url: &str, sms_provider: &str) -> String {
    format!(
        r#"# Written by examples/bench: everything else is Herald's default.
[providers.console]
kind = "log"

[providers.fake]
kind = "twilio"
base_url = "{fake_base_url}"
account_sid = "AC00000000000000000000000000000000"
auth_token = "bench-token"
from = "+14155550100"

[channels.sms]
providers = ["{sms_provider}"]

[channels.email]
providers = ["console"]
"#
    )
}

/// Single POSTs from `SINGLE_CONNECTIONS` connections for the run's duration.
pub fn single_plan(ctx: &Ctx) -> Plan {
    Plan { connections: SINGLE_CONNECTIONS, warmup: ctx.sizes.warmup, duration: ctx.sizes.run, max_requests: None }
}

/// The naive server: one INSERT per request.
pub async fn naive(ctx: &Ctx) -> Result<Stats> {
    let (db, url) = ctx.dbs.create("naive").await?;
    let (proc, base) = procs::start_naive(&ctx.bins.naive, &url, &ctx.tmp).await?;
    ctx.dbs.checkpoint().await;
    let url = format!("{base}/v1/notifications");
    let stats = load::closed_loop(single_plan(ctx), move |client, i| {
        let req = client.post(&url).header(CONTENT_TYPE, JSON).body(load::notification(&format!("bench {i}")));
        load::send_single(req)
    })
    .await?;
    proc.stop().await?;
    ctx.dbs.drop_database(&db).await?;
    Ok(stats)
}

/// `POST /v1/notifications` on `herald api`: plain, then with an `Idempotency-Key` each.
pub async fn single(ctx: &Ctx) -> Result<(Stats, Stats)> {
    let s = ctx.setup("single", Sms::Console).await?;
    let api = s.herald.start("api").await?;
    ctx.dbs.checkpoint().await;
    let job = |idempotent: bool| {
        let (url, key) = (format!("{}/v1/notifications", api.base), s.key.clone());
        move |client: reqwest::Client, i: u64| {
            let mut req = client
                .post(&url)
                .bearer_auth(&key)
                .header(CONTENT_TYPE, JSON)
                .body(load::notification(&format!("bench {i}")));
            if idempotent {
                req = req.header("Idempotency-Key", format!("bench-{i}"));
            }
            load::send_single(req)
        }
    };
    let plain = load::closed_loop(single_plan(ctx), job(false)).await?;
    let idempotent = load::closed_loop(single_plan(ctx), job(true)).await?;
    api.proc.stop().await?;
    ctx.dbs.drop_database(&s.db).await?;
    Ok((plain, idempotent))
}

/// `items` notifications through `POST /v1/notifications/batch`, `BATCH_SIZE` per request,
/// from `BATCH_CONNECTIONS` connections.
async fn ingest_batches(base: &str, key: &str, items: u64) -> Result<Stats> {
    let url = format!("{base}/v1/notifications/batch");
    let key = key.to_owned();
    let plan = Plan {
        connections: BATCH_CONNECTIONS,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(900),
        max_requests: Some(items.div_ceil(BATCH_SIZE)),
    };
    load::closed_loop(plan, move |client, i| {
        let first = i * BATCH_SIZE;
        let count = BATCH_SIZE.min(items - first);
        let req = client.post(&url).bearer_auth(&key).header(CONTENT_TYPE, JSON).body(load::batch_body(first, count));
        load::send_batch(req, count)
    })
    .await
}

/// Queue `n` notifications through the batch API; every one must be accepted.
pub async fn preload(base: &str, key: &str, n: u64) -> Result<()> {
    eprintln!("bench:   queueing {} notifications through the batch API", crate::report::int(n as f64));
    let stats = ingest_batches(base, key, n).await?;
    if stats.ok != n {
        return Err(format!("preload: {} of {n} accepted{}", stats.ok, stats.errors_note()).into());
    }
    Ok(())
}

pub async fn batch(ctx: &Ctx) -> Result<Stats> {
    let s = ctx.setup("batch", Sms::Console).await?;
    let api = s.herald.start("api").await?;
    ctx.dbs.checkpoint().await;
    let stats = ingest_batches(&api.base, &s.key, ctx.sizes.batch_items).await?;
    api.proc.stop().await?;
    ctx.dbs.drop_database(&s.db).await?;
    Ok(stats)
}

/// A drain timed between the first poll (every 20 ms) that saw progress and the one that saw
/// the target reached, so process start-up is not counted. A drain that runs out of time
/// still has a rate: the progress made until then.
pub struct Timing {
    pub rate: f64,
    pub secs: f64,
    pub done: i64,
    pub timed_out: bool,
}

impl Timing {
    /// A drain that began at `started`, first showed progress (`done` so far) at `first`, and
    /// was seen at `done` of `target` at `end`: the rate from the first progress on, so that
    /// process start-up is not counted (from `started` if progress came only once).
    fn measured(started: Instant, first: Option<(Instant, i64)>, end: Instant, done: i64, target: i64) -> Timing {
        let timed_out = done < target;
        match first {
            Some((t1, d1)) if end > t1 && done > d1 => {
                let secs = (end - t1).as_secs_f64();
                Timing { rate: (done - d1) as f64 / secs, secs, done, timed_out }
            }
            _ => {
                let secs = (end - started).as_secs_f64();
                Timing { rate: done as f64 / secs, secs, done, timed_out }
            }
        }
    }

    /// "10,000 in 2.31 s", or "timed out: 7,500 of 10,000 in 60 s".
    pub fn progress(&self, target: u64) -> String {
        if self.timed_out {
            format!(
                "timed out: {} of {} in {:.0} s",
                crate::report::int(self.done as f64),
                crate::report::int(target as f64),
                self.secs
            )
        } else {
            format!("{} in {:.2} s", crate::report::int(target as f64), self.secs)
        }
    }
}

async fn time_progress(
    pool: &PgPool,
    proc: &mut Proc,
    sql: &'static str,
    done: impl Fn(i64) -> i64,
    target: i64,
    timeout: Duration,
) -> Result<Timing> {
    let started = Instant::now();
    let mut first: Option<(Instant, i64)> = None;
    loop {
        proc.check_alive()?;
        let d = done(crate::db::count(pool, sql).await?);
        let now = Instant::now();
        let timed_out = now - started > timeout;
        if d >= target || timed_out {
            return Ok(Timing::measured(started, first, now, d, target));
        }
        if first.is_none() && d > 0 {
            first = Some((now, d));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The lowest send job id left: an index probe, where counting the jobs left scans the queue.
const LOWEST_JOB_LEFT: &str = "SELECT min(id) FROM jobs WHERE kind = 'send'";

/// Time a worker sending the `n` jobs queued, until none is left: from the first poll that saw
/// the lowest job id move (when the jobs left are counted once, exactly) to the poll that saw
/// none left. Polling by counting the jobs left (a scan of the queue every 20 ms) took 10–20% of
/// a core of PostgreSQL's CPU from the worker being measured, a cost graphile-worker's rows,
/// timed inside its process, do not pay.
pub async fn time_sends(pool: &PgPool, proc: &mut Proc, n: u64, timeout: Duration) -> Result<Timing> {
    let lowest = || async {
        Ok::<_, crate::BoxError>(sqlx::query_scalar::<_, Option<i64>>(LOWEST_JOB_LEFT).fetch_one(pool).await?)
    };
    let started = Instant::now();
    let at_start = lowest().await?;
    let mut first: Option<(Instant, i64)> = None;
    loop {
        proc.check_alive()?;
        let before = Instant::now();
        let now_lowest = lowest().await?;
        let timed_out = before - started > timeout;
        if now_lowest.is_none() || timed_out {
            let done = n as i64 - crate::db::count(pool, JOBS_LEFT).await?;
            return Ok(Timing::measured(started, first, before, done, n as i64));
        }
        if first.is_none() && now_lowest != at_start {
            let t1 = Instant::now();
            first = Some((t1, n as i64 - crate::db::count(pool, JOBS_LEFT).await?));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub struct Dispatch {
    pub jobs: u64,
    pub timing: Timing,
    pub sent: i64,
    /// Messages the fake provider received (fake only).
    pub received: Option<u64>,
    /// Rows the dispatch wrote, from PostgreSQL's statistics.
    pub writes: RowWrites,
}

/// Rows written (inserted, updated, deleted), and the updates among them that were HOT.
#[derive(Clone, Copy, Default)]
pub struct RowWrites {
    pub rows: i64,
    pub hot: i64,
}

impl RowWrites {
    /// So far, in every table of the database `pool` is on. The statistics of a backend are
    /// flushed when it ends (and each second while busy), so read after its process stopped.
    pub async fn so_far(pool: &PgPool) -> Result<RowWrites> {
        let (rows, hot): (i64, i64) = sqlx::query_as(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint,
                    coalesce(sum(n_tup_hot_upd), 0)::bigint
             FROM pg_stat_user_tables",
        )
        .fetch_one(pool)
        .await?;
        Ok(RowWrites { rows, hot })
    }

    pub fn since(self, before: RowWrites) -> RowWrites {
        RowWrites { rows: self.rows - before.rows, hot: self.hot - before.hot }
    }
}

/// Queue N notifications with `herald api`, stop it, then time one `herald worker` until no
/// send job is left.
pub async fn dispatch(ctx: &Ctx, sms: Sms) -> Result<Dispatch> {
    let n = ctx.sizes.dispatch_jobs;
    let s = ctx.setup(if sms == Sms::Fake { "dispatch_fake" } else { "dispatch_log" }, sms).await?;
    let api = s.herald.start("api").await?;
    preload(&api.base, &s.key, n).await?;
    api.proc.stop().await?;
    let pool = crate::db::pool(&s.url).await?;
    let queued = crate::db::count(&pool, JOBS_LEFT).await?;
    if queued != n as i64 {
        return Err(format!("{queued} send jobs queued, expected {n}").into());
    }
    ctx.dbs.checkpoint().await;
    ctx.fake.reset();
    let before = RowWrites::so_far(&pool).await?;
    let mut worker = s.herald.start("worker").await?;
    let timing = time_sends(&pool, &mut worker.proc, n, ctx.sizes.drain_timeout).await?;
    worker.proc.stop().await?;
    let writes = RowWrites::so_far(&pool).await?.since(before);
    let sent = crate::db::count(&pool, SENT).await?;
    pool.close().await;
    ctx.dbs.drop_database(&s.db).await?;
    Ok(Dispatch { jobs: n, timing, sent, received: (sms == Sms::Fake).then(|| ctx.fake.received()), writes })
}

pub struct Drain {
    pub backlog: u64,
    pub measured: u64,
    pub timing: Timing,
}

/// Queue `backlog` notifications, then time the `log` dispatch of the first
/// `sizes.drain_measured` by one `herald worker`. The backlog is vacuumed and analyzed first
/// (both sizes alike), so the figure is the claim path's scaling, not autovacuum's timing.
pub async fn drain(ctx: &Ctx, backlog: u64) -> Result<Drain> {
    let measured = ctx.sizes.drain_measured.min(backlog);
    let s = ctx.setup(&format!("drain_{backlog}"), Sms::Console).await?;
    let api = s.herald.start("api").await?;
    preload(&api.base, &s.key, backlog).await?;
    api.proc.stop().await?;
    let pool = crate::db::pool(&s.url).await?;
    eprintln!("bench:   VACUUM ANALYZE");
    sqlx::raw_sql("VACUUM (ANALYZE)").execute(&pool).await?;
    ctx.dbs.checkpoint().await;
    let mut worker = s.herald.start("worker").await?;
    let timing =
        time_progress(&pool, &mut worker.proc, SENT_ATTEMPTS, |sent| sent, measured as i64, ctx.sizes.drain_timeout)
            .await?;
    worker.proc.stop().await?;
    pool.close().await;
    ctx.dbs.drop_database(&s.db).await?;
    Ok(Drain { backlog, measured, timing })
}

pub struct Latency {
    pub http: OpenStats,
    /// Accept → provider received, microseconds, sorted.
    pub delivered_us: Vec<u64>,
}

pub struct Memory {
    pub idle_kib: u64,
    pub peak_kib: u64,
    pub load: String,
}

/// `herald serve` with sms → fake: idle RSS, then open-loop latency at `LATENCY_RATE`, then
/// a burst of single and batch ingest (dispatched as it arrives), then the peak RSS.
pub async fn serve(ctx: &Ctx) -> Result<(std::result::Result<Latency, String>, std::result::Result<Memory, String>)> {
    let s = ctx.setup("serve", Sms::Fake).await?;
    let mut serve = s.herald.start("serve").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = serve.proc.pid();
    let idle_kib = procs::proc_status_kib(pid, "VmRSS").ok_or("cannot read VmRSS of herald serve")?;

    ctx.dbs.checkpoint().await;
    ctx.fake.reset();
    eprintln!("bench:   open loop at {LATENCY_RATE}/s for {} s", ctx.sizes.latency.as_secs());
    let latency = latency(ctx, &serve.base, &s.key, &mut serve.proc).await.map_err(|e| e.to_string());

    let stress = ctx.sizes.stress;
    eprintln!(
        "bench:   load burst: single POSTs for {} s, then {} in batches",
        stress.as_secs(),
        ctx.sizes.stress_items
    );
    let url = format!("{}/v1/notifications", serve.base);
    let key = s.key.clone();
    let plan = Plan { connections: SINGLE_CONNECTIONS, warmup: Duration::ZERO, duration: stress, max_requests: None };
    let singles = load::closed_loop(plan, move |client, i| {
        let req = client
            .post(&url)
            .bearer_auth(&key)
            .header(CONTENT_TYPE, JSON)
            .body(load::notification(&format!("bench {i}")));
        load::send_single(req)
    })
    .await?;
    let batches = ingest_batches(&serve.base, &s.key, ctx.sizes.stress_items).await?;
    let memory = match procs::proc_status_kib(pid, "VmHWM") {
        Some(peak_kib) => Ok(Memory {
            idle_kib,
            peak_kib,
            load: format!(
                "after the latency run, {} single POSTs from {SINGLE_CONNECTIONS} connections and {} batched{}{}",
                crate::report::int(singles.ok as f64),
                crate::report::int(batches.ok as f64),
                singles.errors_note(),
                batches.errors_note()
            ),
        }),
        None => Err("cannot read VmHWM of herald serve".to_owned()),
    };
    serve.proc.stop().await?;
    ctx.dbs.drop_database(&s.db).await?;
    Ok((latency, memory))
}

async fn latency(ctx: &Ctx, base: &str, key: &str, proc: &mut Proc) -> Result<Latency> {
    let client = reqwest::Client::builder().http1_only().no_proxy().timeout(Duration::from_secs(30)).build()?;
    let (url, key) = (format!("{base}/v1/notifications"), key.to_owned());
    let run = |duration: Duration| {
        load::open_loop(LATENCY_RATE, duration, |_, scheduled_us| {
            let req = client
                .post(&url)
                .bearer_auth(&key)
                .header(CONTENT_TYPE, JSON)
                .body(load::notification(&format!("bench t={scheduled_us}")));
            load::send_single(req)
        })
    };
    // Warm up at the same rate first (connections to Herald and from Herald to PostgreSQL and
    // the provider are opened on demand): a steady state is what is measured.
    let warm = run(Duration::from_secs(1)).await?;
    wait_delivered(ctx, warm.ok, proc).await?;
    ctx.fake.take_latencies();
    let before = ctx.fake.received();
    let http = run(ctx.sizes.latency).await?;
    wait_delivered(ctx, before + http.ok, proc).await?;
    Ok(Latency { http, delivered_us: ctx.fake.take_latencies() })
}

/// Wait until the fake provider has received `total` messages in all.
async fn wait_delivered(ctx: &Ctx, total: u64, proc: &mut Proc) -> Result<()> {
    // Every accepted notification must reach the provider; wait for the last ones.
    let deadline = Instant::now() + Duration::from_secs(30);
    while ctx.fake.received() < total {
        proc.check_alive()?;
        if Instant::now() > deadline {
            return Err(
                format!("only {} of {} accepted reached the provider within 30 s", ctx.fake.received(), total).into()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// How many emails of `BIG_EMAIL_BYTES` the big-messages scenario sends.
pub const BIG_EMAILS: u64 = 600;
/// The default cap of an email's subject, text and html together
/// (`channels.email.max_content_bytes`): the biggest email a tenant may send.
pub const BIG_EMAIL_BYTES: usize = 512 * 1024;

pub struct BigMemory {
    pub worker_peak_kib: u64,
    pub api_peak_kib: u64,
    /// Items on the first page of `GET /v1/notifications?limit=500`, and whether it said more.
    pub page_items: usize,
    pub page_more: bool,
}

/// Memory with the biggest messages a tenant may send: `BIG_EMAILS` emails of
/// `BIG_EMAIL_BYTES` accepted by `herald api` (the batch API, 30 a request: its body limit is
/// 16 MiB) while one `herald worker` sends them through the `log` provider; then one list page
/// of up to 500 of them. The peaks (VmHWM) of both processes.
pub async fn big_messages(ctx: &Ctx) -> Result<BigMemory> {
    let s = ctx.setup("big", Sms::Console).await?;
    let api = s.herald.start("api").await?;
    let mut worker = s.herald.start("worker").await?;
    let pool = crate::db::pool(&s.url).await?;
    let client = load::connection()?;
    let html = "x".repeat(BIG_EMAIL_BYTES - 3);
    let item =
        serde_json::json!({"channel": "email", "to": "big@example.com", "content": {"subject": "big", "html": html}});
    let per_request = 30;
    eprintln!("bench:   {BIG_EMAILS} emails of {} KiB, {per_request} a request", BIG_EMAIL_BYTES / 1024);
    for first in (0..BIG_EMAILS).step_by(per_request) {
        let n = per_request.min(usize::try_from(BIG_EMAILS - first).unwrap_or(0));
        let body = serde_json::json!({"notifications": vec![item.clone(); n]}).to_string();
        let resp = client
            .post(format!("{}/v1/notifications/batch", api.base))
            .bearer_auth(&s.key)
            .header(CONTENT_TYPE, JSON)
            .body(body)
            .send()
            .await?;
        let status = resp.status();
        let v: serde_json::Value = resp.json().await?;
        let ok = v["results"].as_array().map_or(0, |r| r.iter().filter(|i| i.get("id").is_some()).count());
        if !status.is_success() || ok != n {
            return Err(format!("a batch of big emails: {status}, {ok} of {n} accepted: {v:.300}").into());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while crate::db::count(&pool, SENT).await? < i64::try_from(BIG_EMAILS)? {
        worker.proc.check_alive()?;
        if Instant::now() > deadline {
            return Err("the big emails were not all sent within 300 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let worker_peak_kib =
        procs::proc_status_kib(worker.proc.pid(), "VmHWM").ok_or("cannot read VmHWM of herald worker")?;
    let page: serde_json::Value =
        client.get(format!("{}/v1/notifications?limit=500", api.base)).bearer_auth(&s.key).send().await?.json().await?;
    let api_peak_kib = procs::proc_status_kib(api.proc.pid(), "VmHWM").ok_or("cannot read VmHWM of herald api")?;
    let page_items = page["items"].as_array().map_or(0, Vec::len);
    let page_more = page["next_cursor"].is_string();
    worker.proc.stop().await?;
    api.proc.stop().await?;
    pool.close().await;
    ctx.dbs.drop_database(&s.db).await?;
    Ok(BigMemory { worker_peak_kib, api_peak_kib, page_items, page_more })
}
