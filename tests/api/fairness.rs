//! Claims are shared between lanes: a backlog in one lane never starves another lane, and
//! status callbacks keep their share while sends drain.

use std::time::Duration;

use herald::config::Secret;
use herald::domain::notification::ParseOptions;
use herald::domain::{NewNotification, TenantId};
use herald::store::ingest::{self, Submission};
use herald::store::keys::Scope;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::fake_http::FakeHttp;
use crate::helpers::TestApp;

const SEND_READ: &[Scope] = &[Scope::Send, Scope::Read];

async fn tenant_of(t: &TestApp, key: &str) -> TenantId {
    let mut conn = t.pool().acquire().await.expect("conn");
    herald::store::keys::authenticate(&mut conn, key).await.expect("auth").expect("caller").tenant_id
}

/// Queue `n` notifications like `body` straight through the store, 1,000 per transaction.
async fn queue(t: &TestApp, tenant: TenantId, n: usize, body: &Value) {
    let (book, budget) =
        (herald::domain::template::Book::default(), herald::domain::template::RenderBudget::per_request());
    let opts = ParseOptions { allow_private_callbacks: true, ..ParseOptions::new(&book, &budget) };
    let one = NewNotification::parse(body, opts).expect("valid");
    let mut left = n;
    while left > 0 {
        let k = left.min(1000);
        let batch: Vec<Submission> = (0..k).map(|_| Submission::new(tenant, one.clone(), 5, None)).collect();
        for r in ingest::accept_batch(t.pool(), &batch, false).await {
            r.expect("accepted");
        }
        left -= k;
    }
}

async fn send_jobs_left(t: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'send'").fetch_one(t.pool()).await.expect("count")
}

async fn status(t: &TestApp, key: &str, id: &str) -> String {
    t.notification(key, id).await["status"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_priority_backlog_does_not_hold_back_high_priority_or_other_channels() {
    let t = TestApp::spawn_with(|s| {
        s.channels.email.providers = vec!["console".into()];
        s.dispatch.concurrency = 32;
        s.dispatch.batch_size = 32;
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    let tenant = tenant_of(&t, &key).await;
    const BACKLOG: usize = 100_000;
    let low = json!({"channel": "email", "to": "bulk@example.com", "priority": "low",
                     "content": {"subject": "Newsletter", "text": "Hi"}});
    queue(&t, tenant, BACKLOG, &low).await;

    let urgent = t
        .post(
            &key,
            json!({"channel": "email", "to": "ops@example.com", "priority": "high",
                           "content": {"subject": "Your code", "text": "123456"}}),
        )
        .await;
    // The same priority as the backlog, on another channel: every channel gets its share.
    let sms = t
        .post(&key, json!({"channel": "sms", "to": "+14155550100", "priority": "low", "content": {"text": "Hi"}}))
        .await;
    let normal = t
        .post(&key, json!({"channel": "email", "to": "a@example.com", "content": {"subject": "S", "text": "T"}}))
        .await;
    let (urgent, sms) = (urgent.body["id"].as_str().expect("id"), sms.body["id"].as_str().expect("id"));
    let normal = normal.body["id"].as_str().expect("id");

    let cancel = CancellationToken::new();
    let d = t.dispatcher();
    let c = cancel.clone();
    let worker = tokio::spawn(async move { d.run(c).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while status(&t, &key, urgent).await != "sent"
        || status(&t, &key, sms).await != "sent"
        || status(&t, &key, normal).await != "sent"
    {
        assert!(tokio::time::Instant::now() < deadline, "the high and normal emails and the SMS were not all sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both went out while the backlog had barely started draining: they did not wait for it.
    let left = send_jobs_left(&t).await;
    cancel.cancel();
    worker.await.expect("worker");
    assert!(left as usize > BACKLOG * 9 / 10, "sent while {left} of {BACKLOG} low-priority jobs were still queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_callbacks_are_delivered_while_a_send_backlog_drains() {
    let receiver = FakeHttp::receiver().await;
    let t = TestApp::spawn_with(|s| {
        s.callbacks.signing_secret = Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        s.dispatch.concurrency = 32;
        s.dispatch.batch_size = 32;
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    let tenant = tenant_of(&t, &key).await;
    const BACKLOG: usize = 20_000;
    let body = json!({"channel": "sms", "to": "+14155550100", "content": {"text": "hi"},
                      "callback_url": format!("{}/hooks/herald", receiver.origin)});
    queue(&t, tenant, BACKLOG, &body).await;

    let cancel = CancellationToken::new();
    let d = t.dispatcher();
    let c = cancel.clone();
    let worker = tokio::spawn(async move { d.run(c).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while receiver.requests().len() < 10 {
        assert!(tokio::time::Instant::now() < deadline, "no status callbacks were delivered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = send_jobs_left(&t).await;
    cancel.cancel();
    worker.await.expect("worker");
    assert!(left as usize > BACKLOG / 2, "callbacks went out while {left} of {BACKLOG} sends were still queued");
}

/// A channel whose provider is paced is not handed more jobs than the pacer admits within a
/// lease: the rest stay queued for other workers (or later claims) instead of lapsing.
#[tokio::test]
async fn a_paced_channel_is_claimed_no_faster_than_its_provider_admits() {
    let t = TestApp::spawn_with(|s| {
        // 20 sends/s and a 1 s lease: 8 fit in the 0.4 s a send may wait for its turn (half of
        // the 0.8 s it may use of a lease).
        let mut paced = herald::config::ProviderSettings::from(herald::providers::log::Config::default());
        paced.common.max_per_second = Some(20.0);
        s.providers.insert("paced".into(), paced);
        s.channels.sms.providers = vec!["paced".into()];
        s.dispatch.lease_secs = 1;
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    let tenant = tenant_of(&t, &key).await;
    queue(&t, tenant, 50, &json!({"channel": "sms", "to": "+14155550100", "content": {"text": "hi"}})).await;
    let s = t.dispatcher().run_once().await.expect("run");
    assert_eq!(s.claimed, 8, "{s:?}");
    // Each was sent, or (on a slow machine, past its turn) put back without an attempt.
    assert_eq!((s.sent + s.deferred, s.failed, s.retried), (8, 0, 0), "{s:?}");
    assert_eq!(t.job_count().await as u64, 50 - s.sent);
}

/// On shutdown, jobs not yet handed to a provider (here: waiting for a slow pacer) are given
/// back at once, without an attempt counted, instead of staying leased until a rescue.
#[tokio::test]
async fn stopping_gives_back_jobs_not_yet_handed_to_a_provider() {
    let t = TestApp::spawn_with(|s| {
        let mut paced = herald::config::ProviderSettings::from(herald::providers::log::Config::default());
        paced.common.max_per_second = Some(1.0);
        s.providers.insert("slow".into(), paced);
        s.channels.sms.providers = vec!["slow".into()];
        s.dispatch.lease_secs = 60;
        s.dispatch.shutdown_grace_ms = 500;
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    let tenant = tenant_of(&t, &key).await;
    queue(&t, tenant, 10, &json!({"channel": "sms", "to": "+14155550100", "content": {"text": "hi"}})).await;
    let cancel = CancellationToken::new();
    let d = t.dispatcher();
    let c = cancel.clone();
    let worker = tokio::spawn(async move { d.run(c).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cancel.cancel();
    worker.await.expect("worker");

    let jobs: Vec<(String, i32)> =
        sqlx::query_as("SELECT state, attempt FROM jobs").fetch_all(t.pool()).await.expect("jobs");
    assert!(!jobs.is_empty() && jobs.len() < 10, "some were sent before the stop: {jobs:?}");
    assert!(jobs.iter().all(|(state, attempt)| state == "available" && *attempt == 0), "{jobs:?}");
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications WHERE status = 'queued'")
        .fetch_one(t.pool())
        .await
        .expect("count");
    assert_eq!(queued as usize, jobs.len());
}
