//! The peer queue, graphile-worker 0.18.0 (Node + PostgreSQL), run from `bench/peers/` on a
//! database of its own: `bench/peers/graphile-worker.js` enqueues N no-op jobs with
//! `addJobs` in batches of 1,000, then works them off with the throughput settings its docs
//! advise, then N jobs that each update a status row and append an event (the bookkeeping a
//! team would add for a notification), and prints one JSON line with `enqueue_per_s`,
//! `work_per_s` and `bookkeeping_per_s`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

use crate::Result;
use crate::db::Databases;

pub struct Graphile {
    pub jobs: u64,
    pub enqueue_per_s: f64,
    pub work_per_s: f64,
    /// Jobs per second that update a status row and append an event each.
    pub bookkeeping_per_s: f64,
}

/// `Ok(Err(reason))` when the peer cannot be measured here (no node).
pub async fn graphile(dbs: &Databases, jobs: u64) -> Result<std::result::Result<Graphile, String>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench").join("peers");
    match Command::new("node").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().await {
        Ok(s) if s.success() => {}
        _ => return Ok(Err("not measured (node not found)".into())),
    }
    if !dir.join("node_modules").join("graphile-worker").is_dir() {
        eprintln!("bench: npm install in {}", dir.display());
        let mut npm = Command::new("npm");
        npm.args(["install", "--no-audit", "--no-fund"]).current_dir(&dir).stdout(Stdio::null()).kill_on_drop(true);
        match tokio::time::timeout(Duration::from_secs(300), npm.status()).await {
            Ok(Ok(s)) if s.success() => {}
            Ok(Ok(s)) => return Err(format!("npm install in {} failed ({s})", dir.display()).into()),
            Ok(Err(e)) => return Ok(Err(format!("not measured (npm: {e})"))),
            Err(_) => return Err("npm install did not finish within 300 s".into()),
        }
    }
    let (name, url) = dbs.create("graphile").await?;
    dbs.checkpoint().await;
    let mut node = Command::new("node");
    node.arg("graphile-worker.js")
        .current_dir(&dir)
        .env("DATABASE_URL", &url)
        .env("N", jobs.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(300), node.output()).await;
    dbs.drop_database(&name).await?;
    let out = out.map_err(|_| "graphile-worker.js did not finish within 300 s")??;
    if !out.status.success() {
        return Err(format!(
            "graphile-worker.js failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rfind(|l| l.trim_start().starts_with('{')).ok_or("graphile-worker.js printed no JSON")?;
    let v: Value = serde_json::from_str(line)?;
    let num = |k: &str| v[k].as_f64().ok_or_else(|| format!("graphile-worker.js: no `{k}` in {line}"));
    Ok(Ok(Graphile {
        jobs,
        enqueue_per_s: num("enqueue_per_s")?,
        work_per_s: num("work_per_s")?,
        bookkeeping_per_s: num("bookkeeping_per_s")?,
    }))
}
