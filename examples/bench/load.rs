//! The load generator, the same for Herald and the naive server so that ratios are fair:
//! reqwest over HTTP/1.1 keep-alive.
//!
//! - `closed_loop`: a fixed number of connections (one client with one pooled connection per
//!   task), each sending its next request when the previous answer is in. Throughput and
//!   latency count the requests that complete inside the measured window (after a warm-up);
//!   a run may also stop after a number of requests (then the window ends at the last answer).
//! - `open_loop`: requests scheduled on a timer at a fixed rate, each on its own task, so a
//!   slow answer never delays the next request (no coordinated omission).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinSet;

use crate::Result;
use crate::fake::unix_micros;

/// What one request achieved: items accepted and refused (1 for a single POST, up to 1,000
/// for a batch), and a description of the first failure.
#[derive(Default)]
pub struct Outcome {
    pub ok: u64,
    pub err: u64,
    pub error: Option<String>,
}

impl Outcome {
    fn failed(items: u64, error: String) -> Outcome {
        Outcome { ok: 0, err: items, error: Some(error) }
    }
}

pub struct Plan {
    pub connections: usize,
    pub warmup: Duration,
    /// The measured window; also the bound on a run limited by `max_requests`.
    pub duration: Duration,
    pub max_requests: Option<u64>,
}

pub struct Stats {
    pub requests: u64,
    pub ok: u64,
    pub err: u64,
    pub secs: f64,
    /// Per request, sorted.
    pub latencies: Vec<Duration>,
    pub first_error: Option<String>,
}

impl Stats {
    /// Accepted items per second.
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 { self.ok as f64 / self.secs } else { 0.0 }
    }

    pub fn pct_ms(&self, q: f64) -> f64 {
        percentile(&self.latencies, q).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    }

    /// ", 3 errors: first: …" or nothing.
    pub fn errors_note(&self) -> String {
        match (self.err, &self.first_error) {
            (0, _) => String::new(),
            (n, Some(e)) => format!("; {n} errors, first: {e}"),
            (n, None) => format!("; {n} errors"),
        }
    }
}

pub fn percentile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// A client holding one keep-alive HTTP/1.1 connection.
pub fn connection() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(30))
        .build()?)
}

struct Sample {
    done: Instant,
    latency: Duration,
    outcome: Outcome,
}

pub async fn closed_loop<F, Fut>(plan: Plan, job: F) -> Result<Stats>
where
    F: Fn(reqwest::Client, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let warm_end = start + plan.warmup;
    let end = warm_end + plan.duration;
    let mut tasks = JoinSet::new();
    for _ in 0..plan.connections {
        let (client, job, next, max) = (connection()?, job.clone(), next.clone(), plan.max_requests);
        tasks.spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < end {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if max.is_some_and(|m| i >= m) {
                    break;
                }
                let t0 = Instant::now();
                let outcome = job(client.clone(), i).await;
                let done = Instant::now();
                samples.push(Sample { done, latency: done - t0, outcome });
            }
            samples
        });
    }
    let mut samples = Vec::new();
    while let Some(task) = tasks.join_next().await {
        samples.extend(task?);
    }
    let last = samples.iter().map(|s| s.done).max().unwrap_or(end);
    let window_end = last.min(end);
    let mut stats = Stats { requests: 0, ok: 0, err: 0, secs: 0.0, latencies: Vec::new(), first_error: None };
    for s in samples.into_iter().filter(|s| s.done >= warm_end && s.done <= window_end) {
        stats.requests += 1;
        stats.ok += s.outcome.ok;
        stats.err += s.outcome.err;
        stats.latencies.push(s.latency);
        if stats.first_error.is_none() {
            stats.first_error = s.outcome.error;
        }
    }
    stats.secs = window_end.saturating_duration_since(warm_end).as_secs_f64();
    stats.latencies.sort_unstable();
    Ok(stats)
}

pub struct OpenStats {
    pub scheduled: u64,
    pub ok: u64,
    pub err: u64,
    pub first_error: Option<String>,
    /// Request → answer, sorted.
    pub latencies: Vec<Duration>,
}

/// `rate` requests per second for `duration`. `job(i, t)` gets the request's scheduled time
/// in unix microseconds. Waits up to 30 s for the last answers.
pub async fn open_loop<F, Fut>(rate: f64, duration: Duration, job: F) -> Result<OpenStats>
where
    F: Fn(u64, u64) -> Fut,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let mut stats = OpenStats { scheduled: total, ok: 0, err: 0, first_error: None, latencies: Vec::new() };
    let mut tally = |r: std::result::Result<(Duration, Outcome), tokio::task::JoinError>| match r {
        Ok((latency, o)) => {
            stats.ok += o.ok;
            stats.err += o.err;
            stats.latencies.push(latency);
            if stats.first_error.is_none() {
                stats.first_error = o.error;
            }
        }
        Err(e) => {
            stats.err += 1;
            stats.first_error.get_or_insert_with(|| e.to_string());
        }
    };
    let (t0, unix0) = (tokio::time::Instant::now(), unix_micros());
    let mut tasks = JoinSet::new();
    for i in 0..total {
        let offset = Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(t0 + offset).await;
        let fut = job(i, unix0 + offset.as_micros() as u64);
        tasks.spawn(async move {
            let sent = Instant::now();
            let o = fut.await;
            (sent.elapsed(), o)
        });
        while let Some(r) = tasks.try_join_next() {
            tally(r);
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !tasks.is_empty() {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(r)) => tally(r),
            Ok(None) => break,
            Err(_) => {
                let n = tasks.len() as u64;
                tasks.abort_all();
                stats.err += n;
                stats.first_error.get_or_insert_with(|| format!("{n} requests unanswered after 30 s"));
                break;
            }
        }
    }
    stats.latencies.sort_unstable();
    Ok(stats)
}

/// One notification for channel sms, as the benchmark sends it.
pub fn notification(text: &str) -> String {
    format!(r#"{{"channel":"sms","to":"+14155550100","content":{{"text":"{text}"}}}}"#)
}

/// `{"notifications": [...]}` with `count` items numbered from `first`.
pub fn batch_body(first: u64, count: u64) -> String {
    let mut body = String::with_capacity(count as usize * 80 + 24);
    body.push_str(r#"{"notifications":["#);
    for j in 0..count {
        if j > 0 {
            body.push(',');
        }
        body.push_str(&notification(&format!("bench {}", first + j)));
    }
    body.push_str("]}");
    body
}

/// Send one POST and read the whole answer (so the connection is reused); 2xx = one item ok.
pub async fn send_single(req: reqwest::RequestBuilder) -> Outcome {
    match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            let body = resp.bytes().await.unwrap_or_default();
            if status.is_success() {
                Outcome { ok: 1, err: 0, error: None }
            } else {
                Outcome::failed(1, format!("HTTP {status}: {}", snippet(&body)))
            }
        }
        Err(e) => Outcome::failed(1, format!("request failed: {e}")),
    }
}

/// Send one batch of `items` and count the per-item results: an item with a `problem` (or
/// missing from `results`) is an error.
pub async fn send_batch(req: reqwest::RequestBuilder, items: u64) -> Outcome {
    let resp = match req.send().await {
        Ok(resp) => resp,
        Err(e) => return Outcome::failed(items, format!("request failed: {e}")),
    };
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    if status != reqwest::StatusCode::OK {
        return Outcome::failed(items, format!("HTTP {status}: {}", snippet(&body)));
    }
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(results) = parsed["results"].as_array() else {
        return Outcome::failed(items, format!("no `results` array in: {}", snippet(&body)));
    };
    let mut out = Outcome::default();
    for r in results {
        if r.get("id").is_some_and(Value::is_string) && r.get("problem").is_none() {
            out.ok += 1;
        } else {
            out.err += 1;
            out.error.get_or_insert_with(|| format!("item {}: {}", r["index"], snippet(r.to_string().as_bytes())));
        }
    }
    let missing = items.saturating_sub(out.ok + out.err);
    if missing > 0 {
        out.err += missing;
        out.error.get_or_insert_with(|| format!("{missing} items missing from `results`"));
    }
    out
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}
