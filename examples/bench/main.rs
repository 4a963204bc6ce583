//! Herald's side-by-side benchmark, run by hand (never in CI):
//!
//!     cargo run --release --example bench            # full run, a few minutes
//!     cargo run --release --example bench -- --quick # smaller sizes, under a minute
//!     cargo run --release --example bench -- --quick --only log,drain  # some scenarios
//!
//! It starts everything it needs: it builds `herald` and `examples/naive_server` in its own
//! profile (a no-op when current), finds the local PostgreSQL as `herald dev` does (a fresh
//! database per scenario, all dropped at the end), runs a fake Twilio and the load generator
//! in this process, and starts Herald as separate processes (`herald api`, `worker`,
//! `serve`) with default settings except the database, the listen address, `log.level =
//! warn` and a config file declaring the providers. Progress goes to stderr; stdout gets one
//! markdown table, each Herald figure beside a baseline measured in the same run:
//!
//! - ingest, single: `POST /v1/notifications` from 64 keep-alive connections (closed loop)
//!   against `herald api`, req/s with p50/p99, vs the naive server (axum + sqlx, one INSERT
//!   and commit per request, pool 16) driven by the same generator; also with an
//!   `Idempotency-Key` per request.
//! - ingest, batch: `POST /v1/notifications/batch`, 1,000 per request, 4 connections,
//!   notifications/s (per-item problems count as errors) vs graphile-worker 0.18.0 `addJobs`
//!   in batches of 1,000 (`bench/peers/graphile-worker.js`; `npm install` runs there when
//!   needed; without node the peer is "not measured").
//! - dispatch: N queued via the batch API, then one `herald worker` until no send job is
//!   left (polled every 20 ms), through the `log` provider vs graphile-worker's no-op work
//!   rate and vs graphile-worker jobs that each do the bookkeeping a team would add (update a
//!   status row, append an event), and through the fake Twilio over HTTP (checking it got
//!   every message); and the rows the `log` dispatch wrote per notification (inserts, updates
//!   and deletes in `pg_stat_user_tables`, HOT updates among them).
//! - latency: accept → provider received, at an open-loop 2,000 single POSTs/s to `herald
//!   serve` (sms → fake): measured from the time each request was scheduled to the time the
//!   fake received the SMS (the time travels in the SMS text).
//! - drain: the `log` dispatch rate of the first 10,000 jobs of a 1,000,000 backlog vs of a
//!   10,000 backlog (quick: 100,000 vs 10,000).
//! - memory: `herald serve` RSS at idle, and its peak (VmHWM) after the latency run and a
//!   burst of single and batch ingest; and with the biggest messages a tenant may send (600
//!   emails of 512 KiB), the peaks of `herald worker` sending them and of `herald api`
//!   accepting them and answering a list page of `limit=500`.
//! - pooler (needs Debian's `pgbouncer`): single POSTs through PgBouncer in transaction mode
//!   (`database.transaction_pooler = true`) and directly with the setting on, each vs
//!   directly with default settings, three rounds taken in turn (median); `log` dispatch by a
//!   `herald worker` the same ways, and by the Lambda `worker` role under cargo-lambda's
//!   Runtime API emulator (`pip install cargo-lambda`) invoked with schedule events back to
//!   back, each on a copy of one backlog, three drains each (median).
//! - cold: the Lambda `api` role (a `dist` build) under the emulator, through PgBouncer, from
//!   spawning the process to the answer of its first request, five starts.
//!
//! Rates of drains are timed from the first poll that saw progress to the poll that saw the
//! end, so process start-up is not counted. A scenario that fails shows its error in its row
//! and the run goes on; child processes are stopped (SIGTERM) on every exit path, ctrl-c
//! included. The children's logs are kept in a temporary folder when something failed.

mod db;
mod fake;
mod load;
mod peer;
mod pooler;
mod procs;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use scenarios::Sms;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T, E = BoxError> = std::result::Result<T, E>;

/// How much work each scenario does.
pub struct Sizes {
    pub warmup: Duration,
    /// Measured window of each closed-loop single-POST run.
    pub run: Duration,
    pub graphile_jobs: u64,
    pub batch_items: u64,
    pub dispatch_jobs: u64,
    pub latency: Duration,
    pub stress: Duration,
    pub stress_items: u64,
    pub drain_big: u64,
    pub drain_small: u64,
    pub drain_measured: u64,
    /// The longest a dispatch or drain is timed; a slower one reports the rate it reached.
    pub drain_timeout: Duration,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                warmup: Duration::from_millis(500),
                run: Duration::from_secs(2),
                graphile_jobs: 20_000,
                batch_items: 30_000,
                dispatch_jobs: 10_000,
                latency: Duration::from_secs(3),
                stress: Duration::from_secs(1),
                stress_items: 10_000,
                drain_big: 100_000,
                drain_small: 10_000,
                drain_measured: 10_000,
                drain_timeout: Duration::from_secs(10),
            }
        } else {
            Sizes {
                warmup: Duration::from_secs(1),
                run: Duration::from_secs(10),
                graphile_jobs: 50_000,
                batch_items: 200_000,
                dispatch_jobs: 50_000,
                latency: Duration::from_secs(10),
                stress: Duration::from_secs(3),
                stress_items: 100_000,
                drain_big: 1_000_000,
                drain_small: 10_000,
                drain_measured: 10_000,
                drain_timeout: Duration::from_secs(120),
            }
        }
    }
}

/// What every scenario shares.
pub struct Ctx {
    pub dbs: db::Databases,
    pub bins: procs::Binaries,
    pub fake: fake::Fake,
    /// Config files and the children's logs.
    pub tmp: PathBuf,
    pub sizes: Sizes,
    /// `--only`: the scenarios to run (all when `None`).
    pub only: Option<Vec<String>>,
}

#[tokio::main]
async fn main() -> ExitCode {
    const USAGE: &str = "usage: cargo run --release --example bench -- [--quick] [--only SCENARIO,…]
scenarios: graphile, naive, single, batch, log, fake, serve, drain, big, pooler, cold (default: all)";
    let mut quick = false;
    let mut only: Option<Vec<String>> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--only" => match args.next() {
                Some(list) => only = Some(list.split(',').map(|s| s.trim().to_owned()).collect()),
                None => {
                    eprintln!("--only needs a list of scenarios\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument `{other}`\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    match run(quick, only).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(quick: bool, only: Option<Vec<String>>) -> Result<()> {
    let bins = procs::build()?;
    let started = Instant::now();
    let dbs = db::Databases::connect().await?;
    let pg_version = dbs.server_version().await?;
    let fake = fake::Fake::start().await?;
    let tmp = std::env::temp_dir().join(format!("herald-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let ctx = Ctx { dbs, bins, fake, tmp, sizes: Sizes::new(quick), only };

    let measured = tokio::select! {
        results = measure(&ctx) => Some(results),
        _ = tokio::signal::ctrl_c() => None,
    };
    // The scenario future is dropped by now: its children got SIGTERM. Drop the databases.
    ctx.dbs.drop_all().await;
    let Some(results) = measured else {
        return Err(format!("interrupted; logs in {}", ctx.tmp.display()).into());
    };
    match results.failures() {
        0 => {
            let _ = std::fs::remove_dir_all(&ctx.tmp);
        }
        n => eprintln!("bench: {n} scenario(s) failed; the children's logs are in {}", ctx.tmp.display()),
    }

    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let date = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC"))
        .unwrap_or_default();
    println!(
        "Herald benchmark ({}): {cores} cores (nproc), {date}, {pg_version}; took {:.0} s\n",
        if quick { "--quick" } else { "full run" },
        started.elapsed().as_secs_f64()
    );
    println!("{}", report::HEADER);
    for row in report::rows(results, &ctx.sizes) {
        println!("| {} |", row.iter().map(|c| report::cell(c)).collect::<Vec<_>>().join(" | "));
    }
    Ok(())
}

pub type Outcome<T> = std::result::Result<T, String>;

/// Run one scenario, turning its error into text for its row.
async fn step<T>(ctx: &Ctx, name: &str, what: &str, fut: impl std::future::Future<Output = Result<T>>) -> Outcome<T> {
    if ctx.only.as_ref().is_some_and(|o| !o.iter().any(|n| n == name)) {
        return Err("not run (--only)".into());
    }
    eprintln!("bench: {what}");
    let t0 = Instant::now();
    let out = fut.await.map_err(|e| e.to_string());
    match &out {
        Ok(_) => eprintln!("bench:   done in {:.1} s", t0.elapsed().as_secs_f64()),
        Err(e) => eprintln!("bench:   FAILED: {e}"),
    }
    out
}

async fn measure(ctx: &Ctx) -> report::Results {
    let s = &ctx.sizes;
    let graphile = step(
        ctx,
        "graphile",
        &format!("graphile-worker 0.18.0, {} jobs", s.graphile_jobs),
        peer::graphile(&ctx.dbs, s.graphile_jobs),
    )
    .await;
    let naive = step(ctx, "naive", "naive server, single POSTs", scenarios::naive(ctx)).await;
    let single =
        step(ctx, "single", "herald api, single POSTs (plain, then with Idempotency-Key)", scenarios::single(ctx))
            .await;
    let batch =
        step(ctx, "batch", &format!("herald api, {} through the batch API", s.batch_items), scenarios::batch(ctx))
            .await;
    let log = step(
        ctx,
        "log",
        &format!("herald worker, {} jobs through the log provider", s.dispatch_jobs),
        scenarios::dispatch(ctx, Sms::Console),
    )
    .await;
    let fake = step(
        ctx,
        "fake",
        &format!("herald worker, {} jobs through the fake Twilio", s.dispatch_jobs),
        scenarios::dispatch(ctx, Sms::Fake),
    )
    .await;
    let serve =
        step(ctx, "serve", "herald serve: idle memory, latency, load burst, peak memory", scenarios::serve(ctx)).await;
    let small =
        step(ctx, "drain", &format!("drain from a {} backlog", s.drain_small), scenarios::drain(ctx, s.drain_small))
            .await;
    let big =
        step(ctx, "drain", &format!("drain from a {} backlog", s.drain_big), scenarios::drain(ctx, s.drain_big)).await;

    let big_messages = step(
        ctx,
        "big",
        "herald api and worker with the biggest emails a tenant may send: peak memory",
        scenarios::big_messages(ctx),
    )
    .await;

    let pooled_single = step(
        ctx,
        "pooler",
        "herald api, single POSTs: direct, direct with transaction_pooler, through PgBouncer",
        pooler::single(ctx),
    )
    .await;
    let pooled_drains = step(
        ctx,
        "pooler",
        &format!(
            "{} jobs drained: herald worker direct, with transaction_pooler, through PgBouncer; Lambda worker",
            s.dispatch_jobs
        ),
        pooler::drains(ctx),
    )
    .await;
    let cold_starts =
        step(ctx, "cold", "Lambda api role cold starts under cargo-lambda's emulator", pooler::cold_starts(ctx)).await;

    report::Results {
        graphile,
        naive,
        single,
        batch,
        log,
        fake,
        serve,
        small,
        big,
        big_messages,
        pooled_single,
        pooled_drains,
        cold_starts,
    }
}
