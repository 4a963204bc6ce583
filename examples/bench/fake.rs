//! A fake Twilio in the bench process, on 127.0.0.1: `POST
//! /2010-04-01/Accounts/{sid}/Messages.json` with a form body (`To`, `From`, `Body`) answers
//! `201` and a message resource (`sid` `SM` + 32 hex, `status` `queued`), as Twilio does.
//! It counts the messages it receives and, when a `Body` carries `t=<unix micros>` (the
//! time the bench scheduled the request that created it), records accept → received latency.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::Result;

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

pub struct Fake {
    /// The origin to configure as the provider's `base_url`.
    pub base_url: String,
    counters: Arc<Counters>,
}

impl Fake {
    pub async fn start() -> Result<Fake> {
        let counters = Arc::new(Counters::default());
        let app = Router::new()
            .route("/2010-04-01/Accounts/{sid}/Messages.json", post(messages))
            .with_state(counters.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("bench: fake provider stopped: {e}");
            }
        });
        Ok(Fake { base_url, counters })
    }

    pub fn reset(&self) {
        self.counters.received.store(0, Ordering::SeqCst);
        self.lock().clear();
    }

    pub fn received(&self) -> u64 {
        self.counters.received.load(Ordering::SeqCst)
    }

    /// Latencies recorded since the last reset, in microseconds, sorted.
    pub fn take_latencies(&self) -> Vec<u64> {
        let mut v = std::mem::take(&mut *self.lock());
        v.sort_unstable();
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.counters.latencies_us.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

async fn messages(
    State(counters): State<Arc<Counters>>,
    Path(account_sid): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let now = unix_micros();
    let body = form.get("Body").cloned().unwrap_or_default();
    if let Some(sent) = body.split("t=").nth(1).and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok()) {
        let mut latencies = counters.latencies_us.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        latencies.push(now.saturating_sub(sent));
    }
    counters.received.fetch_add(1, Ordering::SeqCst);
    let sid = format!("SM{}", uuid::Uuid::new_v4().simple());
    let reply = json!({
        "sid": sid,
        "account_sid": account_sid,
        "status": "queued",
        "to": form.get("To"),
        "from": form.get("From"),
        "body": body,
        "num_segments": "1",
        "direction": "outbound-api",
        "api_version": "2010-04-01",
        "uri": format!("/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json"),
    });
    (StatusCode::CREATED, Json(reply))
}
