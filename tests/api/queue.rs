//! Queue and status correctness in the cases a review found: jobs whose notification is gone,
//! claims of notifications that may not be sent, recording after a rescue or through a
//! database hiccup, and retention racing new work.

use std::time::Duration;

use herald::store::keys::Scope;
use herald::store::retention;

use crate::helpers::{TestApp, email};

const SEND_READ: &[Scope] = &[Scope::Send, Scope::Read];

async fn orphan(t: &TestApp, state: &str) -> uuid::Uuid {
    let id = uuid::Uuid::now_v7();
    let leased = if state == "running" { "now() - interval '1 second'" } else { "NULL" };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO jobs (notification_id, tenant_id, kind, queue, priority, run_at, max_attempts, state, leased_until)
         VALUES ($1, gen_random_uuid(), 'send', 'email', 1, now(), 5, '{state}', {leased})"
    )))
    .bind(id)
    .execute(t.pool())
    .await
    .expect("orphan");
    id
}

async fn jobs_of(t: &TestApp, id: uuid::Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE notification_id = $1")
        .bind(id)
        .fetch_one(t.pool())
        .await
        .expect("count")
}

/// The claim deletes a due job whose notification is gone instead of leasing it (it would be
/// leased, dropped, rescued and leased again, for ever).
#[tokio::test]
async fn the_claim_removes_orphaned_jobs() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let gone = orphan(&t, "available").await;
    let id = t.post(&key, email("real@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();
    let s = t.dispatch_until_idle().await;
    assert_eq!((s.claimed, s.sent), (1, 1), "{s:?}");
    assert_eq!(jobs_of(&t, gone).await, 0);
    assert_eq!(t.job_count().await, 0);
    assert_eq!(t.notification(&key, &id).await["status"], "sent");
}

/// The claim writes `sending` only from a status the status machine allows: a job left behind
/// for a finished notification (a manual repair, a bug) cannot resurrect it and send again.
#[tokio::test]
async fn the_claim_never_revives_a_finished_notification() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let id = t.post(&key, email("done@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();
    sqlx::query("UPDATE notifications SET status = 'delivered'").execute(t.pool()).await.expect("finish");
    let s = t.dispatch_until_idle().await;
    assert_eq!((s.claimed, s.sent), (0, 0), "{s:?}");
    assert_eq!(t.smtp.attempts(), 0, "nothing was sent");
    assert_eq!(t.notification(&key, &id).await["status"], "delivered");
    assert_eq!(t.job_count().await, 0, "the stray job is removed");
}

/// After the provider accepted a message, a completion that cannot be written is retried
/// until shortly before the lease ends, not abandoned after a second (which meant a rescue and
/// a second send). The database "fails" here by missing a table the completion statement reads.
#[tokio::test]
async fn an_outcome_is_recorded_through_a_database_hiccup_of_seconds() {
    let t = TestApp::spawn().await; // lease_secs = 5
    let key = t.key("acme", SEND_READ).await;
    let id = t.post(&key, email("hiccup@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();
    // Neither the rescue nor the claim reads `tenants`; every completion does (callbacks).
    sqlx::query("ALTER TABLE tenants RENAME TO tenants_away").execute(t.pool()).await.expect("rename");
    let pool = t.pool().clone();
    let restore = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        sqlx::query("ALTER TABLE tenants_away RENAME TO tenants").execute(&pool).await.expect("restore");
    });
    let s = t.dispatcher().run_once().await.expect("run");
    restore.await.expect("restore");
    assert_eq!((s.claimed, s.sent), (1, 1), "{s:?}");
    assert_eq!(t.smtp.to("hiccup@example.com").len(), 1);
    let n = t.notification(&key, &id).await;
    assert_eq!(n["status"], "sent", "{n}");
    assert_eq!(t.job_count().await, 0);
}

/// Retention never deletes a notification that a receipt is changing at that moment (the
/// receipt would queue a callback job for a notification about to vanish): locked rows are
/// skipped, not waited for, and its neighbours are pruned.
#[tokio::test]
async fn retention_skips_notifications_that_are_gaining_work() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let busy = t.post(&key, email("busy@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();
    let idle = t.post(&key, email("idle@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();
    t.dispatch_until_idle().await;
    let (busy, idle) = (t.age(&busy, 40).await, t.age(&idle, 40).await);

    // A receipt is being applied: it holds the notification's row lock.
    let mut receipt = t.pool().begin().await.expect("tx");
    sqlx::query("SELECT 1 FROM notifications WHERE id = $1::uuid FOR UPDATE")
        .bind(&busy)
        .execute(&mut *receipt)
        .await
        .expect("lock");
    let pruned = tokio::time::timeout(Duration::from_secs(5), retention::prune(t.pool(), 30, 24))
        .await
        .expect("retention does not wait for the lock")
        .expect("prune");
    assert_eq!(pruned.notifications, 1, "only the idle one");
    assert_eq!(t.get(&key, &format!("/v1/notifications/{idle}")).await.status, reqwest::StatusCode::NOT_FOUND);
    sqlx::query("UPDATE notifications SET status = 'delivered', updated_at = now() WHERE id = $1::uuid")
        .bind(&busy)
        .execute(&mut *receipt)
        .await
        .expect("receipt");
    receipt.commit().await.expect("commit");
    assert_eq!(t.notification(&key, &busy).await["status"], "delivered");
}

/// Receipts that matched no notification are pruned after the retention time too.
#[tokio::test]
async fn retention_prunes_old_unmatched_receipts() {
    let t = TestApp::spawn().await;
    for (key, age) in [("old", 40), ("new", 1)] {
        sqlx::query(
            "INSERT INTO receipts (provider, dedupe_key, provider_status, payload, received_at)
             VALUES ('twilio', $1, 'delivered', '{}', now() - make_interval(days => $2))",
        )
        .bind(key)
        .bind(age)
        .execute(t.pool())
        .await
        .expect("receipt");
    }
    let pruned = retention::prune(t.pool(), 30, 24).await.expect("prune");
    assert_eq!(pruned.unmatched_receipts, 1);
    let left: Vec<String> =
        sqlx::query_scalar("SELECT dedupe_key FROM receipts").fetch_all(t.pool()).await.expect("left");
    assert_eq!(left, ["new"]);
}

/// Dashboard sign-in links and the session keys they made are pruned a day after they expire;
/// live ones, and keys that never expire, stay.
#[tokio::test]
async fn retention_prunes_expired_sign_in_links_and_session_keys() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let mut conn = t.pool().acquire().await.expect("conn");
    for (hours, name) in [(-30, "old"), (1, "live")] {
        let link = herald::store::ops_links::create(&mut conn, "acme", time::Duration::hours(hours))
            .await
            .expect("link")
            .expect("tenant");
        let until = time::OffsetDateTime::now_utc() + time::Duration::hours(hours);
        let (id, _) = herald::store::keys::create_key_until(&mut conn, link.tenant_id, &[Scope::Read], Some(until))
            .await
            .expect("session key");
        sqlx::query("UPDATE api_keys SET prefix = $1 WHERE id = $2")
            .bind(name)
            .bind(id.as_uuid())
            .execute(&mut *conn)
            .await
            .expect("name it");
    }
    drop(conn);
    retention::prune(t.pool(), 30, 24).await.expect("prune");
    let links: i64 = sqlx::query_scalar("SELECT count(*) FROM ops_links WHERE expires_at > now()")
        .fetch_one(t.pool())
        .await
        .expect("links");
    let all_links: i64 = sqlx::query_scalar("SELECT count(*) FROM ops_links").fetch_one(t.pool()).await.expect("links");
    assert_eq!((links, all_links), (1, 1), "the expired link went, the live one stayed");
    let keys: Vec<String> = sqlx::query_scalar("SELECT prefix FROM api_keys WHERE expires_at IS NOT NULL")
        .fetch_all(t.pool())
        .await
        .expect("keys");
    assert_eq!(keys, ["live"]);
    assert_eq!(t.get(&key, "/v1/notifications").await.status, reqwest::StatusCode::OK, "a key without expiry stays");
}
