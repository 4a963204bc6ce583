//! The serverless rows: Herald through Debian's PgBouncer in transaction mode, and the Lambda
//! roles under a real Runtime API emulator (`cargo lambda watch --only-lambda-apis`, from the
//! `cargo-lambda` package on PyPI). Without `pgbouncer` or `cargo-lambda` on the PATH these
//! rows say "not measured".
//!
//! - single POSTs to `herald api` on the direct connection with default settings, then with
//!   `database.transaction_pooler = true` (no cached prepared statements: what the setting
//!   costs), then through PgBouncer with it.
//! - one backlog, copied (`CREATE DATABASE … TEMPLATE`) for each drain: `herald worker` direct,
//!   direct with `transaction_pooler`, through PgBouncer, and the Lambda `worker` role through
//!   PgBouncer invoked with schedule events back to back.
//! - the Lambda `api` role's cold start: from spawning the process (a `dist` build, through
//!   PgBouncer) to the answer of its first request, a Function URL `POST`, five times, each
//!   under an emulator of its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::CONTENT_TYPE;

use crate::load::{self, Stats};
use crate::procs::{self, Herald, Proc};
use crate::scenarios::{self, Timing};
use crate::{Ctx, Result};

/// Server connections PgBouncer keeps per database and user: more than one Herald process
/// opens (10 API + 3 reads, or a dispatcher's 5), so the pooler is never what is waited for.
const POOL_SIZE: u32 = 20;
/// Cold starts measured; the row gives their median.
pub const COLD_STARTS: usize = 5;

fn installed(program: &str, arg: &str) -> bool {
    Command::new(program).arg(arg).output().is_ok_and(|o| o.status.success())
}

/// A PgBouncer in transaction mode in front of the bench's PostgreSQL.
pub struct Bouncer {
    /// Stopped when the bouncer is dropped.
    _proc: Proc,
    port: u16,
}

impl Bouncer {
    pub fn start(direct_url: &str, dir: &Path) -> Result<Bouncer> {
        if !installed("pgbouncer", "--version") {
            return Err("not measured: pgbouncer is not installed (apt-get install pgbouncer)".into());
        }
        let url = url::Url::parse(direct_url)?;
        let (host, pg_port, user) = (url.host_str().unwrap_or("127.0.0.1"), url.port().unwrap_or(5432), url.username());
        let dir = dir.join("pgbouncer");
        std::fs::create_dir_all(&dir)?;
        let port = procs::free_port()?;
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host={host} port={pg_port}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
                 listen_port = {port}\nauth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
                 default_pool_size = {POOL_SIZE}\nmax_client_conn = 1000\n\
                 ignore_startup_parameters = extra_float_digits\nunix_socket_dir =\nlogfile = {log}\n",
                users = dir.join("users.txt").display(),
                log = dir.join("pgbouncer.log").display(),
            ),
        )?;
        std::fs::write(dir.join("users.txt"), format!("\"{user}\" \"\"\n"))?;
        let mut cmd = Command::new("pgbouncer");
        // PgBouncer will not run as root: as root it drops to `postgres`, which must be able to
        // write its log in the folder.
        if whoami() == "root" {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
            cmd.args(["-u", "postgres"]);
        }
        cmd.arg(&ini);
        let mut proc = Proc::spawn_logged("pgbouncer", cmd, &dir)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            proc.check_alive()?;
            if Instant::now() > deadline {
                return Err(format!("pgbouncer did not listen on {port} within 10 s").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Bouncer { _proc: proc, port })
    }

    /// `direct_url` with PgBouncer's address in place of PostgreSQL's.
    pub fn url(&self, direct_url: &str) -> Result<String> {
        let mut u = url::Url::parse(direct_url)?;
        u.set_host(Some("127.0.0.1"))?;
        u.set_port(Some(self.port)).map_err(|()| "cannot set the port")?;
        u.query_pairs_mut().append_pair("sslmode", "disable");
        Ok(u.to_string())
    }
}

fn whoami() -> String {
    Command::new("id")
        .arg("-un")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// `cargo lambda watch --only-lambda-apis`: the Runtime API, invocations and Function URLs.
struct Emulator {
    proc: Proc,
    base: String,
}

impl Emulator {
    async fn start(dir: &Path) -> Result<Emulator> {
        let port = procs::free_port()?;
        let mut cmd = Command::new("cargo-lambda");
        cmd.args(["lambda", "watch", "--only-lambda-apis", "-P", &port.to_string()])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        let mut proc = Proc::spawn_logged("cargo lambda watch", cmd, dir)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            proc.check_alive()?;
            if Instant::now() > deadline {
                return Err(format!("cargo lambda watch did not listen on {port} within 30 s").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Emulator { proc, base: format!("http://127.0.0.1:{port}") })
    }

    /// `bin` as this emulator's function (named `_`, as the emulator expects), in `role`.
    fn function(&self, bin: &Path, role: &str, db_url: &str, config: &Path, logs: &Path) -> Result<Proc> {
        let mut cmd = Command::new(bin);
        procs::clean_env(&mut cmd);
        cmd.env("AWS_LAMBDA_RUNTIME_API", format!("{}/.rt", self.base))
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("HERALD_LAMBDA_ROLE", role)
            .env("HERALD_CONFIG", config)
            .env("DATABASE_URL", db_url)
            .env("HERALD__DATABASE__TRANSACTION_POOLER", "true")
            .env("HERALD__LOG__LEVEL", "warn");
        Proc::spawn_logged(&format!("herald (lambda {role})"), cmd, logs)
    }

    fn invocations(&self) -> String {
        format!("{}/2015-03-31/functions/_/invocations", self.base)
    }
}

fn cargo_lambda() -> Result<()> {
    if Command::new("cargo-lambda").args(["lambda", "--version"]).output().is_ok_and(|o| o.status.success()) {
        Ok(())
    } else {
        Err("not measured: cargo-lambda is not installed (pip install cargo-lambda)".into())
    }
}

/// A scenario's database with PgBouncer in front of it, and Herald on it three ways.
struct Pooled {
    db: String,
    url: String,
    /// On PostgreSQL itself, default settings.
    direct: Herald,
    /// Through PgBouncer, `transaction_pooler = true`, `direct_url` for migrations and `LISTEN`.
    pooled: Herald,
    key: String,
    bouncer: Bouncer,
}

impl Pooled {
    /// On PostgreSQL itself, with `transaction_pooler = true`: what the setting alone costs.
    fn unprepared(&self) -> Herald {
        Herald { db_url: self.url.clone(), ..self.pooled.clone() }
    }
}

impl Ctx {
    /// PgBouncer in front of `db` (a fresh database when `None`), Herald's config files, a key.
    async fn pooled(&self, scenario: &str, db: Option<(String, String)>) -> Result<Pooled> {
        let (db, url) = match db {
            Some(existing) => existing,
            None => self.dbs.create(scenario).await?,
        };
        let bouncer = Bouncer::start(&url, &self.tmp.join(scenario))?;
        let config = |name: &str, database: &str| -> Result<PathBuf> {
            let path = self.tmp.join(format!("{scenario}-{name}.toml"));
            std::fs::write(&path, format!("{}\n{database}", scenarios::config_toml(&self.fake.base_url, "console")))?;
            Ok(path)
        };
        let bin = self.bins.herald.clone();
        let direct =
            Herald { bin: bin.clone(), db_url: url.clone(), config: config("direct", "")?, logs: self.tmp.clone() };
        let pooled = Herald {
            bin,
            db_url: bouncer.url(&url)?,
            config: config("pooled", &format!("[database]\ntransaction_pooler = true\ndirect_url = \"{url}\"\n"))?,
            logs: self.tmp.clone(),
        };
        let key = direct.prepare().await?;
        Ok(Pooled { db, url, direct, pooled, key, bouncer })
    }
}

pub struct Single {
    pub direct: Stats,
    /// Direct, with `transaction_pooler = true`.
    pub unprepared: Stats,
    pub bouncer: Stats,
}

/// Rounds of the single-POST comparison: the three are taken in turn, in an order that
/// alternates between rounds, so that neither the table growing nor the machine's noise
/// favours one; each figure is the median of its rounds.
const ROUNDS: usize = 3;

/// Single POSTs from 64 connections: direct, direct with `transaction_pooler`, through PgBouncer.
pub async fn single(ctx: &Ctx) -> Result<Single> {
    let p = ctx.pooled("pooler_single", None).await?;
    let configs = [p.direct.clone(), p.unprepared(), p.pooled.clone()];
    let mut runs: [Vec<Stats>; 3] = Default::default();
    for round in 0..ROUNDS {
        let mut order = [0, 1, 2];
        if round % 2 == 1 {
            order.reverse();
        }
        for which in order {
            let api = configs[which].start("api").await?;
            ctx.dbs.checkpoint().await;
            let (url, key) = (format!("{}/v1/notifications", api.base), p.key.clone());
            let pid = api.proc.pid();
            let before = procs::cpu_ticks(pid);
            let commits_before = commits(&p.url).await?;
            let stats = load::closed_loop(scenarios::single_plan(ctx), move |client, i| {
                let req = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header(CONTENT_TYPE, "application/json")
                    .body(load::notification(&format!("bench {i}")));
                load::send_single(req)
            })
            .await?;
            let after = procs::cpu_ticks(pid);
            let commits = commits(&p.url).await? - commits_before;
            // CPU over the whole run (warm-up included) per measured request: comparable
            // between the three, a little above the true figure.
            let per = |b: u64, a: u64| (a - b) as f64 * 10_000.0 / (stats.requests as f64).max(1.0);
            eprintln!(
                "bench:   {}: {} req/s; CPU µs per request: herald {:.0}, PostgreSQL and PgBouncer {:.0}; {} transactions",
                ["direct", "direct, transaction_pooler", "through PgBouncer"][which],
                stats.rate() as u64,
                per(before.0, after.0),
                per(before.1, after.1),
                commits,
            );
            api.proc.stop().await?;
            runs[which].push(stats);
        }
    }
    drop(p.bouncer);
    ctx.dbs.drop_database(&p.db).await?;
    let [direct, unprepared, bouncer] = runs.map(median_run);
    Ok(Single { direct, unprepared, bouncer })
}

/// Transactions committed in the database so far (PostgreSQL's statistics, which lag by up to
/// a second).
async fn commits(url: &str) -> Result<i64> {
    let pool = crate::db::pool(url).await?;
    let n: i64 = sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(n)
}

/// The run with the median rate.
fn median_run(mut runs: Vec<Stats>) -> Stats {
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    runs.swap_remove(runs.len() / 2)
}

pub struct Drains {
    pub jobs: u64,
    pub direct: Timing,
    pub unprepared: Timing,
    pub bouncer: Timing,
    pub lambda: std::result::Result<Timing, String>,
}

/// One backlog, queued once and copied for each drain: `herald worker` direct, direct with
/// `transaction_pooler`, through PgBouncer; the Lambda worker through PgBouncer.
pub async fn drains(ctx: &Ctx) -> Result<Drains> {
    let n = ctx.sizes.dispatch_jobs;
    let template = ctx.pooled("pooler_backlog", None).await?;
    let api = template.direct.start("api").await?;
    scenarios::preload(&api.base, &template.key, n).await?;
    api.proc.stop().await?;
    drop(template.bouncer);

    // Each drain on its own copy of the backlog, the four taken in turn (the order alternating
    // between rounds, as for single POSTs); each figure is the median of its rounds.
    let lambda_ready = cargo_lambda().map_err(|e| e.to_string());
    let mut timings: [Vec<Timing>; 4] = Default::default();
    let mut lambda_error = None;
    for round in 0..ROUNDS {
        let mut order = [0, 1, 2, 3];
        if round % 2 == 1 {
            order.reverse();
        }
        for which in order {
            if which == 3 && (lambda_ready.is_err() || lambda_error.is_some()) {
                continue;
            }
            let name = ["pooler_direct", "pooler_unprepared", "pooler_bouncer", "pooler_lambda"][which];
            let p = ctx.pooled(name, Some(ctx.dbs.copy(&template.db, name).await?)).await?;
            let timing = match which {
                3 => match lambda_drain(ctx, &p, n).await {
                    Ok(t) => Some(t),
                    Err(e) => {
                        lambda_error = Some(e.to_string());
                        None
                    }
                },
                _ => {
                    let herald = match which {
                        0 => p.direct.clone(),
                        1 => p.unprepared(),
                        _ => p.pooled.clone(),
                    };
                    let pool = crate::db::pool(&p.url).await?;
                    ctx.dbs.checkpoint().await;
                    let mut worker = herald.start("worker").await?;
                    let timing = scenarios::time_sends(&pool, &mut worker.proc, n, ctx.sizes.drain_timeout).await;
                    worker.proc.stop().await?;
                    pool.close().await;
                    Some(timing?)
                }
            };
            drop(p.bouncer);
            ctx.dbs.drop_database(&p.db).await?;
            timings[which].extend(timing);
        }
    }
    ctx.dbs.drop_database(&template.db).await?;
    let [direct, unprepared, bouncer, lambda] = timings.map(median_timing);
    let lambda = match (lambda_ready, lambda_error) {
        (Err(e), _) | (_, Some(e)) => Err(e),
        _ => lambda.ok_or_else(|| "no Lambda drain".to_owned()),
    };
    let missing = || "a drain did not run".to_owned();
    Ok(Drains {
        jobs: n,
        direct: direct.ok_or_else(missing)?,
        unprepared: unprepared.ok_or_else(missing)?,
        bouncer: bouncer.ok_or_else(missing)?,
        lambda,
    })
}

/// The drain with the median rate.
fn median_timing(mut runs: Vec<Timing>) -> Option<Timing> {
    runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    (!runs.is_empty()).then(|| runs.swap_remove(runs.len() / 2))
}

/// The Lambda `worker` role through PgBouncer, invoked with EventBridge schedule events back to
/// back (each drains until nothing is due or its budget ends) until the backlog is sent.
async fn lambda_drain(ctx: &Ctx, p: &Pooled, n: u64) -> Result<Timing> {
    let emulator = Emulator::start(&ctx.tmp).await?;
    let config = &p.pooled.config;
    let mut function = emulator.function(&ctx.bins.herald, "worker", &p.pooled.db_url, config, &ctx.tmp)?;
    let pool = crate::db::pool(&p.url).await?;
    ctx.dbs.checkpoint().await;
    let stop = Arc::new(AtomicBool::new(false));
    let invoker = {
        let (url, stop) = (emulator.invocations(), stop.clone());
        let schedule = serde_json::json!({"version": "0", "id": "bench", "detail-type": "Scheduled Event",
            "source": "aws.events", "account": "123456789012", "time": "2026-12-07T00:00:00Z",
            "region": "eu-west-1", "resources": [], "detail": {}});
        tokio::spawn(async move {
            let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(120)).build()?;
            while !stop.load(Ordering::Relaxed) {
                let answer = client.post(&url).json(&schedule).send().await?;
                if !answer.status().is_success() {
                    return Err(format!("invocation answered {}: {}", answer.status(), answer.text().await?).into());
                }
            }
            Ok::<(), crate::BoxError>(())
        })
    };
    let timing = scenarios::time_sends(&pool, &mut function, n, ctx.sizes.drain_timeout).await;
    // The invocation under way ends as soon as it finds nothing due.
    stop.store(true, Ordering::Relaxed);
    let mut invoker = invoker;
    let invoked = tokio::time::timeout(Duration::from_secs(40), &mut invoker).await;
    invoker.abort();
    if let Ok(Ok(Err(e))) = invoked {
        return Err(e);
    }
    function.stop().await?;
    emulator.proc.stop().await?;
    pool.close().await;
    timing
}

/// From spawning the Lambda `api` role (a `dist` build, through PgBouncer) to the answer of
/// its first request, a `POST /v1/notifications` through the emulator's Function URL; each
/// start under an emulator of its own, already listening.
pub async fn cold_starts(ctx: &Ctx) -> Result<Vec<Duration>> {
    cargo_lambda()?;
    let bin = procs::build_dist()?;
    let p = ctx.pooled("pooler_cold", None).await?;
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build()?;
    let mut samples = Vec::new();
    for i in 0..COLD_STARTS {
        let emulator = Emulator::start(&ctx.tmp).await?;
        let started = Instant::now();
        let mut function = emulator.function(&bin, "api", &p.pooled.db_url, &p.pooled.config, &ctx.tmp)?;
        let answer = client
            .post(format!("{}/lambda-url/_/v1/notifications", emulator.base))
            .bearer_auth(&p.key)
            .header(CONTENT_TYPE, "application/json")
            .body(load::notification(&format!("cold start {i}")))
            .send()
            .await?;
        let took = started.elapsed();
        function.check_alive()?;
        if answer.status() != reqwest::StatusCode::ACCEPTED {
            return Err(format!("the first request was answered {}: {}", answer.status(), answer.text().await?).into());
        }
        samples.push(took);
        function.stop().await?;
        emulator.proc.stop().await?;
    }
    drop(p.bouncer);
    ctx.dbs.drop_database(&p.db).await?;
    Ok(samples)
}
