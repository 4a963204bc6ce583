//! The table: one row per figure, Herald's figure beside its baseline from the same run, the
//! ratio, the target and whether it is met. A failed scenario's error goes in its cells.

use crate::scenarios::{self, BATCH_CONNECTIONS, BATCH_SIZE, LATENCY_RATE, SINGLE_CONNECTIONS};
use crate::{Outcome, Sizes, load, peer, pooler};

/// Every scenario's outcome.
pub struct Results {
    pub graphile: Outcome<Outcome<peer::Graphile>>,
    pub naive: Outcome<load::Stats>,
    pub single: Outcome<(load::Stats, load::Stats)>,
    pub batch: Outcome<load::Stats>,
    pub log: Outcome<scenarios::Dispatch>,
    pub fake: Outcome<scenarios::Dispatch>,
    pub serve: Outcome<(Outcome<scenarios::Latency>, Outcome<scenarios::Memory>)>,
    pub small: Outcome<scenarios::Drain>,
    pub big: Outcome<scenarios::Drain>,
    pub big_messages: Outcome<scenarios::BigMemory>,
    pub pooled_single: Outcome<pooler::Single>,
    pub pooled_drains: Outcome<pooler::Drains>,
    pub cold_starts: Outcome<Vec<std::time::Duration>>,
}

impl Results {
    /// Scenarios that failed (a peer that cannot be measured here, or a scenario left out
    /// with `--only`, is not a failure).
    pub fn failures(&self) -> usize {
        fn bad<T>(r: &Outcome<T>) -> bool {
            r.as_ref().is_err_and(|e| !e.starts_with("not run") && !e.starts_with("not measured"))
        }
        let serve = match &self.serve {
            Ok((l, m)) => usize::from(bad(l)) + usize::from(bad(m)),
            Err(e) => usize::from(!e.starts_with("not run")),
        };
        [bad(&self.graphile), bad(&self.naive), bad(&self.single), bad(&self.batch), bad(&self.log), bad(&self.fake)]
            .into_iter()
            .chain([bad(&self.small), bad(&self.big), bad(&self.big_messages)])
            .chain([bad(&self.pooled_single), bad(&self.pooled_drains), bad(&self.cold_starts)])
            .chain([self.pooled_drains.as_ref().is_ok_and(|d| bad(&d.lambda))])
            .filter(|failed| *failed)
            .count()
            + serve
    }
}

pub const HEADER: &str = "| figure | Herald | baseline, same run | Herald ÷ baseline | target | met |\n| --- | --- | --- | --- | --- | --- |";

pub fn rows(results: Results, s: &Sizes) -> Vec<[String; 6]> {
    let Results {
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
    } = results;
    let (latency, memory) = match serve {
        Ok((l, m)) => (l, m),
        Err(e) => (Err(e.clone()), Err(e)),
    };
    let mut rows = Vec::new();
    let graphile = graphile.and_then(|g| g);

    // Ingest, single.
    let naive_cell = |n: &load::Stats| {
        format!(
            "naive axum + sqlx, one INSERT per request, pool 16: {} req/s (p50 {}, p99 {}){}",
            int(n.rate()),
            ms(n.pct_ms(0.5)),
            ms(n.pct_ms(0.99)),
            n.errors_note()
        )
    };
    let single_cell = |h: &load::Stats| {
        format!("{} req/s (p50 {}, p99 {}){}", int(h.rate()), ms(h.pct_ms(0.5)), ms(h.pct_ms(0.99)), h.errors_note())
    };
    let (plain, idempotent) = match &single {
        Ok((p, i)) => (Ok(p), Ok(i)),
        Err(e) => (Err(e.clone()), Err(e.clone())),
    };
    rows.push(ratio_row(
        format!("ingest: single `POST /v1/notifications`, {SINGLE_CONNECTIONS} connections, `herald api`"),
        plain.map(|h| (single_cell(h), h.rate(), h.err)),
        naive.as_ref().map(|n| (naive_cell(n), n.rate())).map_err(Clone::clone),
        Some(2.0),
    ));
    rows.push(ratio_row(
        "… with an `Idempotency-Key` per request".into(),
        idempotent.map(|h| (single_cell(h), h.rate(), h.err)),
        naive.as_ref().map(|n| ("naive, as above".to_owned(), n.rate())).map_err(Clone::clone),
        None,
    ));

    // Ingest, batch.
    rows.push(ratio_row(
        format!(
            "ingest: `POST /v1/notifications/batch`, {} per request, {BATCH_CONNECTIONS} connections",
            int(BATCH_SIZE as f64)
        ),
        batch.as_ref().map_err(Clone::clone).map(|b| {
            let cell = format!(
                "{} notifications/s ({} requests; p50 {}, p99 {} each){}",
                int(b.rate()),
                int(b.requests as f64),
                ms(b.pct_ms(0.5)),
                ms(b.pct_ms(0.99)),
                b.errors_note()
            );
            (cell, b.rate(), b.err)
        }),
        graphile.as_ref().map_err(Clone::clone).map(|g| {
            let cell = format!(
                "graphile-worker 0.18.0 `addJobs`, batches of 1,000, {} jobs: {} jobs/s",
                int(g.jobs as f64),
                int(g.enqueue_per_s)
            );
            (cell, g.enqueue_per_s)
        }),
        Some(1.5),
    ));

    // Dispatch.
    let dispatch_cell = |d: &scenarios::Dispatch| {
        let mut cell = format!("{} jobs/s ({}", int(d.timing.rate), d.timing.progress(d.jobs));
        if let Some(r) = d.received {
            cell.push_str(&format!("; {} received by the fake", int(r as f64)));
        }
        cell.push(')');
        if d.sent != d.jobs as i64 && !d.timing.timed_out {
            cell.push_str(&format!("; only {} sent", d.sent));
        }
        cell
    };
    // Notifications not sent, or not received by the fake, once every job is done.
    let dispatch_errors = |d: &scenarios::Dispatch| {
        if d.timing.timed_out {
            return 0;
        }
        let missing = (d.jobs as i64 - d.sent).max(0) as u64;
        missing.max(d.received.map_or(0, |r| d.jobs.saturating_sub(r)))
    };
    rows.push(ratio_row(
        format!("dispatch: `log` provider, one `herald worker`, {} queued", int(s.dispatch_jobs as f64)),
        log.as_ref().map_err(Clone::clone).map(|d| (dispatch_cell(d), d.timing.rate, dispatch_errors(d))),
        graphile.as_ref().map_err(Clone::clone).map(|g| {
            (format!("graphile-worker 0.18.0, no-op jobs, concurrency 24: {} jobs/s", int(g.work_per_s)), g.work_per_s)
        }),
        Some(1.0),
    ));
    rows.push(ratio_row(
        format!(
            "… against graphile-worker doing Herald's bookkeeping per job (a status row updated, an event appended), {} queued",
            int(s.dispatch_jobs as f64)
        ),
        log.as_ref().map_err(Clone::clone).map(|d| (dispatch_cell(d), d.timing.rate, dispatch_errors(d))),
        graphile.as_ref().map_err(Clone::clone).map(|g| {
            (
                format!("graphile-worker 0.18.0, bookkeeping jobs, concurrency 24: {} jobs/s", int(g.bookkeeping_per_s)),
                g.bookkeeping_per_s,
            )
        }),
        None,
    ));
    let mut fake_row = ratio_row(
        format!("dispatch: fake Twilio over HTTP, one `herald worker`, {} queued", int(s.dispatch_jobs as f64)),
        fake.as_ref().map_err(Clone::clone).map(|d| (dispatch_cell(d), d.timing.rate, dispatch_errors(d))),
        log.as_ref()
            .map_err(Clone::clone)
            .map(|d| (format!("Herald through `log` (row above): {} jobs/s", int(d.timing.rate)), d.timing.rate)),
        None,
    );
    fake_row[4] = "≥ 20,000 jobs/s".into();
    fake_row[5] = match &fake {
        Ok(d) => verdict(d.timing.rate >= 20_000.0, dispatch_errors(d)),
        Err(_) => "—".into(),
    };
    rows.push(fake_row);
    let (cell, met) = match &log {
        Ok(d) if d.sent > 0 => {
            let per = |n: i64| n as f64 / d.sent as f64;
            let (rows, hot) = (per(d.writes.rows), per(d.writes.hot));
            (format!("{rows:.2} ({hot:.2} of them HOT updates)"), verdict(rows <= 3.0, 0))
        }
        Ok(_) => ("nothing sent".into(), "—".into()),
        Err(e) => (failed(e), "—".into()),
    };
    rows.push([
        "row writes per dispatched notification, `log` row above (`pg_stat_user_tables`: inserts + updates + deletes)"
            .into(),
        cell,
        "—".into(),
        "—".into(),
        "≤ 3".into(),
        met,
    ]);

    // Latency.
    let (cell, met) = match &latency {
        Ok(l) => {
            let p = |q| load::percentile(&l.delivered_us, q).map_or(f64::NAN, |us| us as f64 / 1e3);
            let http99 = load::percentile(&l.http.latencies, 0.99).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
            let errors = match (&l.http.first_error, l.http.err) {
                (_, 0) => String::new(),
                (Some(e), n) => format!("; {n} errors, first: {e}"),
                (None, n) => format!("; {n} errors"),
            };
            let cell = format!(
                "p50 {}, p99 {}, max {} ({} of {} delivered; HTTP 202 p99 {}){errors}",
                ms(p(0.5)),
                ms(p(0.99)),
                ms(p(1.0)),
                int(l.delivered_us.len() as f64),
                int(l.http.scheduled as f64),
                ms(http99)
            );
            let lost = l.http.scheduled.saturating_sub(l.delivered_us.len() as u64);
            (cell, verdict(p(0.99) <= 50.0, lost))
        }
        Err(e) => (failed(e), "—".into()),
    };
    rows.push([
        format!(
            "latency: accept → provider received, {} single POSTs/s open loop for {} s, `herald serve`, sms → fake",
            int(LATENCY_RATE),
            s.latency.as_secs()
        ),
        cell,
        "—".into(),
        "—".into(),
        "p99 ≤ 50 ms".into(),
        met,
    ]);

    // Drain.
    rows.push(ratio_row(
        format!(
            "drain: `log` dispatch of the first {} jobs of a {} backlog vs of a {} one",
            int(s.drain_measured as f64),
            int(s.drain_big as f64),
            int(s.drain_small as f64)
        ),
        big.as_ref().map_err(Clone::clone).map(|d| (drain_cell(d), d.timing.rate, 0)),
        small.as_ref().map_err(Clone::clone).map(|d| (drain_cell(d), d.timing.rate)),
        Some(0.9),
    ));

    // Memory.
    let (idle, peak) = match &memory {
        Ok(m) => (
            (mib(m.idle_kib), verdict(m.idle_kib <= 64 * 1024, 0)),
            (format!("{} ({})", mib(m.peak_kib), m.load), verdict(m.peak_kib <= 256 * 1024, 0)),
        ),
        Err(e) => ((failed(e), "—".into()), (failed(e), "—".into())),
    };
    rows.push([
        "memory: `herald serve` RSS at idle, 1 s after ready".into(),
        idle.0,
        "—".into(),
        "—".into(),
        "≤ 64 MiB".into(),
        idle.1,
    ]);
    rows.push([
        "memory: `herald serve` peak RSS (VmHWM)".into(),
        peak.0,
        "—".into(),
        "—".into(),
        "≤ 256 MiB".into(),
        peak.1,
    ]);
    let emails = format!("{} emails of {} KiB", scenarios::BIG_EMAILS, scenarios::BIG_EMAIL_BYTES / 1024);
    let (worker, api) = match &big_messages {
        Ok(b) => (
            (mib(b.worker_peak_kib), verdict(b.worker_peak_kib <= 256 * 1024, 0)),
            (
                format!(
                    "{} (a list page of `limit=500` held {} of them{})",
                    mib(b.api_peak_kib),
                    b.page_items,
                    if b.page_more { " and a next_cursor" } else { "" }
                ),
                verdict(b.api_peak_kib <= 256 * 1024, 0),
            ),
        ),
        Err(e) => ((failed(e), "—".into()), (failed(e), "—".into())),
    };
    rows.push([
        format!("memory: `herald worker` peak RSS sending {emails} (`log` provider)"),
        worker.0,
        "—".into(),
        "—".into(),
        "≤ 256 MiB".into(),
        worker.1,
    ]);
    rows.push([
        format!("memory: `herald api` peak RSS accepting the {emails} (batches of 30) and listing them"),
        api.0,
        "—".into(),
        "—".into(),
        "≤ 256 MiB".into(),
        api.1,
    ]);
    rows.extend(serverless_rows(&pooled_single, &pooled_drains, &cold_starts));
    rows
}

/// Through PgBouncer in transaction mode, `transaction_pooler` on a direct connection, and the
/// Lambda roles under cargo-lambda's emulator.
fn serverless_rows(
    single: &Outcome<pooler::Single>,
    drains: &Outcome<pooler::Drains>,
    cold_starts: &Outcome<Vec<std::time::Duration>>,
) -> Vec<[String; 6]> {
    let mut rows = Vec::new();
    let stats = |h: &load::Stats| {
        (
            format!(
                "{} req/s (p50 {}, p99 {}){}",
                int(h.rate()),
                ms(h.pct_ms(0.5)),
                ms(h.pct_ms(0.99)),
                h.errors_note()
            ),
            h.rate(),
            h.err,
        )
    };
    let direct_single = |s: &pooler::Single| {
        let (cell, rate, _) = stats(&s.direct);
        (format!("direct, default settings: {cell}"), rate)
    };
    let pick = |f: fn(&pooler::Single) -> &load::Stats| single.as_ref().map(|s| stats(f(s))).map_err(Clone::clone);
    let baseline = single.as_ref().map(direct_single).map_err(Clone::clone);
    rows.push(ratio_row(
        format!("pooler: single POSTs through PgBouncer (transaction mode, `transaction_pooler = true`), {SINGLE_CONNECTIONS} connections, median of 3 rounds taken in turn with the direct runs"),
        pick(|s| &s.bouncer),
        baseline.clone(),
        Some(0.9),
    ));
    rows.push(ratio_row(
        "pooler: single POSTs on the direct connection with `transaction_pooler = true` (no cached prepared statements)".into(),
        pick(|s| &s.unprepared),
        baseline,
        None,
    ));

    let timing = |t: &scenarios::Timing, jobs: u64| (format!("{} jobs/s ({})", int(t.rate), t.progress(jobs)), t.rate);
    let drain = |f: fn(&pooler::Drains) -> &scenarios::Timing| {
        drains.as_ref().map(|d| {
            let (cell, rate) = timing(f(d), d.jobs);
            (cell, rate, 0)
        })
    };
    let jobs =
        drains.as_ref().map_or(String::new(), |d| format!(", {} queued, median of 3 drains", int(d.jobs as f64)));
    let direct_drain = drains.as_ref().map(|d| {
        let (cell, rate) = timing(&d.direct, d.jobs);
        (format!("direct, default settings: {cell}"), rate)
    });
    rows.push(ratio_row(
        format!("pooler: `log` dispatch, one `herald worker` on the direct connection with `transaction_pooler = true`{jobs}"),
        drain(|d| &d.unprepared).map_err(Clone::clone),
        direct_drain.clone().map_err(Clone::clone),
        None,
    ));
    rows.push(ratio_row(
        format!("pooler: `log` dispatch, one `herald worker` through PgBouncer{jobs}"),
        drain(|d| &d.bouncer).map_err(Clone::clone),
        direct_drain.map_err(Clone::clone),
        None,
    ));
    let lambda = match drains {
        Ok(d) => d
            .lambda
            .as_ref()
            .map(|t| {
                let (cell, rate) = timing(t, d.jobs);
                (format!("{cell}; schedule events back to back"), rate, 0)
            })
            .map_err(Clone::clone),
        Err(e) => Err(e.clone()),
    };
    rows.push(ratio_row(
        format!("Lambda: `worker` role drain under cargo-lambda's emulator, through PgBouncer{jobs}"),
        lambda,
        drains
            .as_ref()
            .map(|d| {
                let (cell, rate) = timing(&d.bouncer, d.jobs);
                (format!("container `herald worker` through PgBouncer: {cell}"), rate)
            })
            .map_err(Clone::clone),
        Some(0.8),
    ));

    let (cell, met) = match cold_starts {
        Ok(samples) if !samples.is_empty() => {
            let mut sorted: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
            sorted.sort_by(f64::total_cmp);
            let median = sorted[sorted.len() / 2];
            let each = sorted.iter().map(|&x| ms(x)).collect::<Vec<_>>().join(", ");
            (format!("median {} (each: {each})", ms(median)), verdict(median <= 250.0, 0))
        }
        Ok(_) => (failed("no sample"), "—".into()),
        Err(e) => (failed(e), "—".into()),
    };
    rows.push([
        format!(
            "Lambda: `api` role cold start, process spawned → first answer (a Function URL POST), `dist` build, through PgBouncer, {} starts",
            pooler::COLD_STARTS
        ),
        cell,
        "—".into(),
        "—".into(),
        "median ≤ 250 ms".into(),
        met,
    ]);
    rows
}

fn drain_cell(d: &scenarios::Drain) -> String {
    let progress = d.timing.progress(d.measured);
    let progress = if d.timing.timed_out { progress } else { format!("first {progress}") };
    format!("{} jobs/s ({progress}; backlog {})", int(d.timing.rate), int(d.backlog as f64))
}

/// A row with a measured baseline: Herald's cell, rate and error count; the baseline's cell
/// and rate; the target as a minimum ratio.
fn ratio_row(
    figure: String,
    herald: Outcome<(String, f64, u64)>,
    baseline: Outcome<(String, f64)>,
    min_ratio: Option<f64>,
) -> [String; 6] {
    let target = min_ratio.map_or_else(|| "—".into(), |r| format!("≥ {r:.1}×"));
    let (ratio, met) = match (&herald, &baseline) {
        (Ok((_, h, errors)), Ok((_, b))) if *b > 0.0 => {
            let ratio = h / b;
            (format!("{ratio:.2}×"), min_ratio.map_or_else(|| "—".into(), |m| verdict(ratio >= m, *errors)))
        }
        _ => ("—".into(), "—".into()),
    };
    let herald = herald.map_or_else(|e| failed(&e), |h| h.0);
    let baseline = baseline.map_or_else(|e| failed(&e), |b| b.0);
    [figure, herald, baseline, ratio, target, met]
}

fn verdict(ok: bool, errors: u64) -> String {
    match (ok, errors) {
        (_, e) if e > 0 => "no (errors)".into(),
        (true, _) => "yes".into(),
        (false, _) => "no".into(),
    }
}

/// A markdown table cell: one line, no column breaks.
pub fn cell(text: &str) -> String {
    text.replace('\n', " ").replace('|', "\\|")
}

/// 12,345
pub fn int(x: f64) -> String {
    if !x.is_finite() {
        return "—".into();
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 { format!("-{out}") } else { out }
}

fn ms(x: f64) -> String {
    if !x.is_finite() {
        "—".into()
    } else if x < 10.0 {
        format!("{x:.2} ms")
    } else {
        format!("{x:.1} ms")
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// A cell for a figure that was not had: why, and "failed" unless it was simply not run.
fn failed(e: &str) -> String {
    if e.starts_with("not measured") || e.starts_with("not run") { e.to_owned() } else { format!("failed: {e}") }
}
