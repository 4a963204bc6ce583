//! The dispatcher against real PostgreSQL and a real SMTP socket: retries, permanent failures,
//! expiry, lease rescue with fencing, and racing dispatchers.

use std::collections::HashMap;
use std::time::Duration;

use herald::domain::NotificationId;
use herald::domain::notification::ParseOptions;
use herald::domain::{NewNotification, Status};
use herald::store::ingest::{self, Accepted, Submission};
use herald::store::keys::Scope;
use herald::store::tracking::{self, Applied, Completion, Lane, Lease, Outcome};
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
async fn a_worker_killed_mid_send_is_rescued_after_its_lease_and_its_late_completion_is_fenced() {
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
    let (job_id, token): (i64, i64) =
        sqlx::query_as("SELECT id, lease_token FROM jobs").fetch_one(t.pool()).await.expect("job");
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

    // Worker A's completion arrives late with its old lease: refused, recorded as fenced.
    let nid: NotificationId = id.parse().expect("id");
    let stale = Lease { job_id, token, notification_id: nid, until: std::time::Instant::now() };
    let mut conn = t.pool().acquire().await.expect("conn");
    let applied = tracking::mark_sent(&mut conn, stale, "mail", Some("<late>"), json!({})).await.expect("mark");
    assert_eq!(applied, Applied::Fenced);
    let n = t.notification(&key, &id).await;
    assert_eq!(n["status"], "sent");
    assert_ne!(n["provider_message_id"], "<late>");
    assert_eq!(n["events"].as_array().expect("events").last().expect("e")["detail"]["fenced"], true);
}

#[tokio::test]
async fn a_fenced_retry_cannot_requeue_a_newer_claim() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let id: NotificationId =
        t.post(&key, email("x@example.com", "x")).await.body["id"].as_str().expect("id").parse().expect("id");
    let mut conn = t.pool().acquire().await.expect("conn");
    let first = tracking::claim(&mut conn, &Lane::all(10), 10, Duration::from_secs(60), "a").await.expect("claim");
    assert_eq!(first.len(), 1);
    // Force the lease to lapse, rescue, and claim again with a new token.
    sqlx::query("UPDATE jobs SET leased_until = now() - interval '1 second'")
        .execute(&mut *conn)
        .await
        .expect("expire");
    assert_eq!(tracking::rescue_expired(t.pool(), 100).await.expect("rescue"), 1);
    let second = tracking::claim(&mut conn, &Lane::all(10), 10, Duration::from_secs(60), "b").await.expect("claim");
    assert_eq!(second[0].lease().token, first[0].lease().token + 1);
    let stale = first[0].lease();
    let r = tracking::mark_retrying(&mut conn, stale, Some("mail"), Duration::from_millis(1), 0, "late", json!({}))
        .await
        .expect("retry");
    assert_eq!(r, Applied::Fenced);
    let r = tracking::mark_finished(&mut conn, stale, Status::Failed, "attempt", None, "late", json!({}))
        .await
        .expect("fail");
    assert_eq!(r, Applied::Fenced);
    let (state, token): (String, i64) =
        sqlx::query_as("SELECT state, lease_token FROM jobs").fetch_one(&mut *conn).await.expect("job");
    assert_eq!((state.as_str(), token), ("running", second[0].lease().token));
    let current = tracking::mark_sent(&mut conn, second[0].lease(), "mail", None, json!({})).await.expect("sent");
    assert_eq!(current, Applied::Yes);
    assert_eq!(t.notification(&key, &id.to_string()).await["status"], "sent");
}

/// The send path's two status changes (`queued → sending` by the claim, `sending → sent` by the
/// completion) are HOT updates: they change no indexed column, so they write no index entry
/// (migration 0016). Counted by PostgreSQL itself for this transaction; the send's message id
/// still finds the notification for a receipt, through the `attempt` event.
#[tokio::test]
async fn a_sends_status_changes_are_hot_updates() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let id = t.post(&key, email("hot@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();
    let mut tx = t.pool().begin().await.expect("begin");
    let claimed = tracking::claim(&mut tx, &Lane::all(10), 10, Duration::from_secs(60), "a").await.expect("claim");
    assert_eq!(claimed.len(), 1);
    let applied = tracking::complete(
        &mut tx,
        &[Completion {
            lease: claimed[0].lease(),
            outcome: Outcome::Sent { provider: "mail".into(), provider_message_id: Some("<hot-1>".into()) },
            detail: json!({"attempt": 1}),
        }],
    )
    .await
    .expect("complete");
    assert_eq!(applied, vec![Applied::Yes]);
    let (updated, hot): (i64, i64) = sqlx::query_as(
        "SELECT pg_stat_get_xact_tuples_updated('notifications'::regclass),
                pg_stat_get_xact_tuples_hot_updated('notifications'::regclass)",
    )
    .fetch_one(&mut *tx)
    .await
    .expect("stats");
    assert_eq!((updated, hot), (2, 2), "both status changes are HOT");
    tx.commit().await.expect("commit");
    let found: Option<uuid::Uuid> = sqlx::query_scalar(
        "SELECT notification_id FROM notification_events WHERE provider = 'mail' AND provider_message_id = '<hot-1>'",
    )
    .fetch_optional(t.pool())
    .await
    .expect("by message id");
    assert_eq!(found.map(|u| u.to_string()), Some(id.clone()));
    assert_eq!(t.notification(&key, &id).await["status"], "sent");
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

/// Lists by status find each status however it is indexed (migration 0016): `queued` and
/// `sending` through the send jobs, `sent` by the tenant's newest rows, `failed` by
/// `indexed_status`; and only the caller's tenant's.
#[tokio::test]
async fn lists_by_status_find_the_send_path_and_the_indexed_statuses() {
    let t = TestApp::spawn().await;
    let acme = t.key("acme", SEND_READ).await;
    let globex = t.key("globex", SEND_READ).await;
    for i in 0..3 {
        t.post(&acme, email(&format!("a{i}@example.com"), "x")).await;
    }
    t.post(&globex, email("g@example.com", "x")).await;
    let count = |key: String, status: &'static str| {
        let t = &t;
        async move {
            let r = t.get(&key, &format!("/v1/notifications?status={status}")).await;
            assert_eq!(r.status, 200, "{}", r.body);
            r.body["items"].as_array().expect("items").len()
        }
    };
    assert_eq!((count(acme.clone(), "queued").await, count(globex.clone(), "queued").await), (3, 1));
    let mut conn = t.pool().acquire().await.expect("conn");
    let claimed = tracking::claim(&mut conn, &Lane::all(10), 10, Duration::from_secs(60), "a").await.expect("claim");
    assert_eq!(claimed.len(), 4);
    assert_eq!((count(acme.clone(), "queued").await, count(acme.clone(), "sending").await), (0, 3));
    let ours: Vec<Lease> = claimed.iter().map(herald::store::tracking::Claimed::lease).collect();
    let mut acme_ids = Vec::new();
    for l in &ours {
        if t.get(&acme, &format!("/v1/notifications/{}", l.notification_id)).await.status == 200 {
            acme_ids.push(*l);
        }
    }
    assert_eq!(acme_ids.len(), 3);
    let sent = Outcome::Sent { provider: "mail".into(), provider_message_id: None };
    let failed = Outcome::finished(Status::Failed, "attempt", Some("mail"), "550");
    let batch = [(acme_ids[0], sent), (acme_ids[1], failed)].map(|(lease, outcome)| Completion {
        lease,
        outcome,
        detail: json!({"attempt": 1}),
    });
    tracking::complete(&mut conn, &batch).await.expect("complete");
    let counts = [
        count(acme.clone(), "sending").await,
        count(acme.clone(), "sent").await,
        count(acme.clone(), "failed").await,
        count(globex.clone(), "failed").await,
    ];
    assert_eq!(counts, [1, 1, 1, 0]);
}

/// One statement records many outcomes, each fenced on its own row: a stale lease in the batch
/// changes nothing of its job while its neighbours are applied.
#[tokio::test]
async fn batched_completions_are_fenced_row_by_row() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            t.post(&key, email(&format!("b{i}@example.com"), "x")).await.body["id"].as_str().expect("id").to_owned(),
        );
    }
    let mut conn = t.pool().acquire().await.expect("conn");
    let claimed = tracking::claim(&mut conn, &Lane::all(10), 10, Duration::from_secs(60), "a").await.expect("claim");
    assert_eq!(claimed.len(), 4);
    let leases: Vec<Lease> = claimed.iter().map(herald::store::tracking::Claimed::lease).collect();
    let stale = Lease { token: leases[3].token - 1, ..leases[3] };
    let batch = vec![
        Completion {
            lease: leases[0],
            outcome: Outcome::Sent { provider: "mail".into(), provider_message_id: Some("<m0>".into()) },
            detail: json!({"attempt": 1}),
        },
        Completion {
            lease: leases[1],
            outcome: Outcome::Retrying {
                provider: Some("mail".into()),
                delay: Duration::from_secs(30),
                next_route: 0,
                error: "busy".into(),
            },
            detail: json!({"attempt": 1, "error_class": "transient"}),
        },
        Completion {
            lease: leases[2],
            outcome: Outcome::Finished {
                status: Status::Failed,
                event: "attempt".into(),
                provider: Some("mail".into()),
                error: "550".into(),
            },
            detail: json!({"attempt": 1, "error_class": "permanent"}),
        },
        Completion {
            lease: stale,
            outcome: Outcome::Sent { provider: "mail".into(), provider_message_id: None },
            detail: json!({"attempt": 1}),
        },
    ];
    let applied = tracking::complete(&mut conn, &batch).await.expect("complete");
    assert_eq!(applied, vec![Applied::Yes, Applied::Yes, Applied::Yes, Applied::Fenced]);
    // Claim order is not post order: name each notification by its lease.
    let by_id = |i: usize| leases[i].notification_id.to_string();
    assert!((0..4).all(|i| ids.contains(&by_id(i))));
    let n0 = t.notification(&key, &by_id(0)).await;
    assert_eq!((n0["status"].as_str(), n0["provider_message_id"].as_str()), (Some("sent"), Some("<m0>")));
    let n1 = t.notification(&key, &by_id(1)).await;
    assert_eq!(n1["status"], "retrying");
    assert!(n1["next_attempt_at"].is_string());
    assert!(n1["events"][1]["detail"]["next_attempt_at"].is_string(), "{n1}");
    assert_eq!(t.notification(&key, &by_id(2)).await["status"], "failed");
    let n3 = t.notification(&key, &by_id(3)).await;
    assert_eq!(n3["status"], "sending", "the stale lease changed nothing");
    assert_eq!(n3["events"][1]["detail"]["fenced"], true);
    // Jobs: the sent and failed ones are gone, the retrying one waits, the fenced one is held.
    let jobs: Vec<(String,)> =
        sqlx::query_as("SELECT state FROM jobs ORDER BY id").fetch_all(&mut *conn).await.expect("jobs");
    assert_eq!(jobs, vec![("available".to_owned(),), ("running".to_owned(),)]);
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
