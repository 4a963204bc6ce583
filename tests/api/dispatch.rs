//! The dispatcher against real PostgreSQL and a real SMTP socket: retries, permanent failures,
//! expiry, lease rescue with fencing, and racing dispatchers.

use std::collections::HashMap;
use std::time::Duration;

use herald::domain::notification::ParseOptions;
use herald::domain::{NewNotification, Status};
use herald::store::ingest::{self, Accepted, Submission};
use herald::store::keys::Scope;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestApp, email};

const SEND_READ: &[Scope] = &[Scope::Send, Scope::Read];

fn event_kinds(n: &serde_json::Value) -> Vec<(String, String)> {
    n["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| (e["type"].as_str().unwrap_or("").to_owned(), e["status"].as_str().unwrap_or("").to_owned()))
        .collect()
}

#[tokio::test]
async fn a_transient_smtp_failure_is_retried_then_sent() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    t.smtp.plan(&["451 4.3.0 try again later"]);
    let id = t.post(&key, email("dave@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();
    let s = t.dispatch_until_idle().await;
    assert_eq!((s.retried, s.sent), (1, 1));
    assert_eq!(t.smtp.plan_left(), 0);
    assert_eq!(t.smtp.attempts(), 2);
    assert_eq!(t.smtp.to("dave@example.com").len(), 1);
    let n = t.notification(&key, &id).await;
    assert_eq!(n["status"], "sent");
    assert_eq!(n["attempts"], 2);
    let kinds = event_kinds(&n);
    assert_eq!(kinds[1], ("attempt".into(), "retrying".into()));
    assert_eq!(kinds[2], ("attempt".into(), "sent".into()));
    assert_eq!(n["events"][1]["detail"]["error_class"], "transient");
    assert!(n["events"][1]["detail"]["next_attempt_at"].is_string());
}

#[tokio::test]
async fn a_permanent_smtp_failure_fails_at_once() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    t.smtp.plan(&["550 5.1.1 no such user"; 5]);
    let id = t.post(&key, email("erin@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();
    let s = t.dispatch_until_idle().await;
    assert_eq!((s.failed, s.retried), (1, 0));
    assert_eq!(t.smtp.attempts(), 1, "not retried");
    let n = t.notification(&key, &id).await;
    assert_eq!(n["status"], "failed");
    assert!(n["error"].as_str().expect("error").contains("550"));
    assert_eq!(n["events"][1]["detail"]["error_class"], "recipient_invalid");
    assert_eq!(t.job_count().await, 0);
}

#[tokio::test]
async fn attempts_are_bounded_by_max_attempts() {
    let t = TestApp::spawn_with(|s| s.channels.email.max_attempts = Some(3)).await;
    let key = t.key("acme", SEND_READ).await;
    t.smtp.plan(&["451 4.3.0 busy"; 10]);
    let id = t.post(&key, email("busy@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();
    t.dispatch_until_idle().await;
    assert_eq!(t.smtp.attempts(), 3);
    let n = t.notification(&key, &id).await;
    assert_eq!(n["status"], "failed");
    assert_eq!(n["attempts"], 3);
    assert!(n["error"].as_str().expect("error").contains("attempts exhausted"));
}

#[tokio::test]
async fn an_expired_notification_is_never_sent() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::milliseconds(300))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("fmt");
    let mut body = email("late@example.com", "OTP");
    body["expires_at"] = json!(soon);
    let id = t.post(&key, body).await.body["id"].as_str().expect("id").to_owned();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let s = t.dispatch_until_idle().await;
    assert_eq!(s.expired, 1);
    assert_eq!(t.smtp.attempts(), 0);
    let n = t.notification(&key, &id).await;
    assert_eq!(n["status"], "expired");
    assert_eq!(event_kinds(&n).last().expect("event"), &("expired".to_owned(), "expired".to_owned()));
}

#[tokio::test]
async fn a_retry_that_would_land_after_expiry_expires_instead() {
    let t = TestApp::spawn_with(|s| {
        s.dispatch.retry_base_ms = 5_000;
        s.dispatch.retry_max_ms = 5_000;
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    t.smtp.plan(&["451 4.3.0 later"]);
    let exp = (time::OffsetDateTime::now_utc() + time::Duration::seconds(2))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("fmt");
    let mut body = email("otp@example.com", "OTP");
    body["expires_at"] = json!(exp);
    let id = t.post(&key, body).await.body["id"].as_str().expect("id").to_owned();
    let s = t.dispatcher().run_once().await.expect("run");
    assert_eq!(s.expired, 1);
    assert_eq!(t.notification(&key, &id).await["status"], "expired");
}

#[tokio::test]
async fn a_worker_killed_mid_send_is_rescued_after_its_lease() {
    let t = TestApp::spawn_with(|s| {
        s.dispatch.lease_secs = 1;
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    t.smtp.hang_next_data();
    let id = t.post(&key, email("kim@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();

    // Worker A claims and stalls inside the provider call; then it is killed.
    let a = t.dispatcher();
    let worker_a = tokio::spawn(async move { a.run_once().await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while t.smtp.hanging() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "worker A never reached DATA");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker_a.abort();
    assert_eq!(t.notification(&key, &id).await["status"], "sending");

    // Worker B rescues the job once the lease has expired, and sends it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let b = t.dispatcher();
    let s = b.run_once().await.expect("run");
    assert_eq!((s.rescued, s.claimed, s.sent), (1, 1, 1), "{s:?} {}", t.notification(&key, &id).await);
    let n = t.notification(&key, &id).await;
    assert_eq!(n["status"], "sent");
    assert_eq!(n["attempts"], 2);
    assert!(event_kinds(&n).contains(&("rescued".into(), "queued".into())));
    assert_eq!(t.smtp.to("kim@example.com").len(), 1);
    // Worker A's completion, had it come late with its old lease, is fenced: see
    // `store::tracking::tests::a_late_completion_after_a_new_claim_is_fenced_and_kept_in_the_timeline`.
}

/// `indexed_status` (migration 0016) leaves out exactly the statuses `Status::SEND_PATH` names,
/// which lists look for by `status` alone.
#[tokio::test]
async fn the_list_index_leaves_out_exactly_the_send_path() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let id: uuid::Uuid =
        t.post(&key, email("ix@example.com", "x")).await.body["id"].as_str().expect("id").parse().expect("uuid");
    let mut tx = t.pool().begin().await.expect("begin");
    for status in Status::ALL {
        let indexed: Option<String> =
            sqlx::query_scalar("UPDATE notifications SET status = $1 WHERE id = $2 RETURNING indexed_status")
                .bind(status.as_str())
                .bind(id)
                .fetch_one(&mut *tx)
                .await
                .expect("update");
        assert_eq!(indexed.as_deref(), status.is_indexed().then_some(status.as_str()), "{status:?}");
    }
    tx.rollback().await.expect("rollback");
}

#[tokio::test]
async fn two_dispatchers_racing_on_1000_jobs_send_each_exactly_once() {
    let t = TestApp::spawn_with(|s| {
        s.dispatch.concurrency = 16;
        s.dispatch.batch_size = 16;
        s.dispatch.poll_interval_ms = 20;
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    let tenant = {
        let mut conn = t.pool().acquire().await.expect("conn");
        herald::store::keys::authenticate(&mut conn, &key).await.expect("auth").expect("caller").tenant_id
    };
    let (book, budget) =
        (herald::domain::template::Book::default(), herald::domain::template::RenderBudget::per_request());
    let opts = ParseOptions::new(&book, &budget);
    let batch: Vec<Submission> = (0..1000)
        .map(|i| {
            let n = NewNotification::parse(&email(&format!("r{i}@example.com"), "race"), opts).expect("valid");
            Submission::new(tenant, n, 5, None)
        })
        .collect();
    for res in ingest::accept_batch(t.pool(), &batch, false).await {
        assert!(matches!(res, Ok(Accepted::Created { .. })));
    }

    let cancel = CancellationToken::new();
    let (d1, d2) = (t.dispatcher(), t.dispatcher());
    let (c1, c2) = (cancel.clone(), cancel.clone());
    let h1 = tokio::spawn(async move { d1.run(c1).await });
    let h2 = tokio::spawn(async move { d2.run(c2).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications WHERE status = 'sent'")
            .fetch_one(t.pool())
            .await
            .expect("count");
        if sent == 1000 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {sent} sent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
    h1.await.expect("d1");
    h2.await.expect("d2");

    let mut per_recipient: HashMap<String, usize> = HashMap::new();
    for m in t.smtp.messages() {
        *per_recipient.entry(m.to[0].clone()).or_default() += 1;
    }
    assert_eq!(per_recipient.len(), 1000);
    assert!(per_recipient.values().all(|&c| c == 1), "a message was sent twice");
    assert_eq!(t.smtp.attempts(), 1000);
    assert_eq!(t.job_count().await, 0);
    let workers: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT detail->>'attempt') FROM notification_events WHERE type = 'attempt'")
            .fetch_one(t.pool())
            .await
            .expect("count");
    assert_eq!(workers, 1, "every send was a first attempt");
}

#[tokio::test]
async fn finished_notifications_and_old_idempotency_keys_are_pruned_after_retention() {
    let t = TestApp::spawn_with(|s| {
        s.retention.notifications_days = 30;
        s.retention.idempotency_hours = 24;
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    let old_sent =
        t.post_with_key(&key, "k-old", email("old@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();
    let recent = t.post(&key, email("recent@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();
    t.dispatch_until_idle().await;
    let later = (time::OffsetDateTime::now_utc() + time::Duration::days(60))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("fmt");
    let mut scheduled = email("future@example.com", "x");
    scheduled["send_at"] = json!(later);
    let waiting = t.post(&key, scheduled).await.body["id"].as_str().expect("id").to_owned();
    // Age two of them past retention: one finished, one still waiting for its send time.
    let old_sent = t.age(&old_sent, 40).await;
    let waiting = t.age(&waiting, 40).await;
    // Retention goes by the time of the last update: a recent receipt keeps an old one.
    let old_but_updated =
        t.post(&key, email("bounced@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();
    t.dispatch_until_idle().await;
    let old_but_updated = t.age(&old_but_updated, 40).await;
    sqlx::query("UPDATE notifications SET updated_at = now() WHERE id = $1::uuid")
        .bind(&old_but_updated)
        .execute(t.pool())
        .await
        .expect("touch");
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '2 days'")
        .execute(t.pool())
        .await
        .expect("age");

    t.dispatcher().prune().await;
    assert_eq!(t.get(&key, &format!("/v1/notifications/{old_sent}")).await.status, reqwest::StatusCode::NOT_FOUND);
    assert_eq!(t.notification(&key, &recent).await["status"], "sent", "recent history stays");
    assert_eq!(t.notification(&key, &waiting).await["status"], "scheduled", "live work is never pruned");
    assert_eq!(t.notification(&key, &old_but_updated).await["status"], "sent");
    let keys: i64 =
        sqlx::query_scalar("SELECT count(*) FROM idempotency_keys").fetch_one(t.pool()).await.expect("count");
    assert_eq!(keys, 0);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM notification_events WHERE notification_id = $1")
        .bind(old_sent.parse::<uuid::Uuid>().expect("id"))
        .fetch_one(t.pool())
        .await
        .expect("count");
    assert_eq!(events, 0, "the timeline goes with it");
}
