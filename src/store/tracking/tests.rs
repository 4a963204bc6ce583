//! The fenced job writes on a real database: claims, rescues, completions one by one and in
//! batches, and what a lost lease may no longer change.

use std::time::Duration;

use serde_json::{Value, json};

use super::receipt::{self, Recorded};
use super::{Applied, Bounds, Claimed, Completion, Lane, Lease, Outcome};
use crate::domain::Status;
use crate::store::notifications::{self as store, ListFilter};
use crate::testing::{TestDb, email};

const LEASE: Duration = Duration::from_secs(60);

async fn claim(t: &TestDb, worker: &str) -> Vec<Claimed> {
    let mut conn = t.pool().acquire().await.expect("conn");
    super::claim(&mut conn, &Lane::all(10), 10, LEASE, worker).await.expect("claim")
}

/// Every running job's lease ends now, as if its worker had died.
async fn lapse(t: &TestDb) {
    sqlx::query("UPDATE jobs SET leased_until = now() - interval '1 second' WHERE state = 'running'")
        .execute(t.pool())
        .await
        .expect("lapse");
}

async fn complete_one(t: &TestDb, lease: Lease, outcome: Outcome) -> Applied {
    let mut conn = t.pool().acquire().await.expect("conn");
    let c = Completion { lease, outcome, detail: json!({"attempt": 1}) };
    let applied = super::complete(&mut conn, std::slice::from_ref(&c)).await.expect("complete");
    applied[0]
}

fn sent(id: &str) -> Outcome {
    Outcome::Sent { provider: "mail".into(), provider_message_id: Some(id.into()) }
}

async fn job_count(t: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs").fetch_one(t.pool()).await.expect("count")
}

async fn dispatch_until_idle(t: &TestDb) {
    let d = t.app.dispatcher();
    for _ in 0..20 {
        let s = d.run_once().await.expect("dispatch");
        if s.claimed == 0 && s.rescued == 0 {
            return;
        }
    }
    panic!("dispatch never went idle");
}

/// A job whose notification is gone does not stop the rescue of its neighbours, is not rescued
/// into an endless loop of claims, and leaves no event behind: it is deleted.
#[tokio::test]
async fn rescue_removes_orphaned_jobs_and_rescues_the_rest() {
    let t = TestDb::new().await;
    let acme = t.caller("acme").await;
    let id = t.accept(&acme, email("real@example.com")).await;
    assert_eq!(claim(&t, "w").await.len(), 1);
    lapse(&t).await;
    let gone = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO jobs (notification_id, tenant_id, kind, queue, priority, run_at, max_attempts, state, leased_until)
         VALUES ($1, gen_random_uuid(), 'send', 'email', 1, now(), 5, 'running', now() - interval '1 second')",
    )
    .bind(gone)
    .execute(t.pool())
    .await
    .expect("orphan");

    assert_eq!(super::rescue_expired(t.pool(), 100).await.expect("rescue"), 1, "only the real job is rescued");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE notification_id = $1")
        .bind(gone)
        .fetch_one(t.pool())
        .await
        .expect("count");
    assert_eq!(left, 0, "the orphan is deleted");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM notification_events WHERE notification_id = $1")
        .bind(gone)
        .fetch_one(t.pool())
        .await
        .expect("count");
    assert_eq!(events, 0);
    assert_eq!(t.notification(id).await["status"], "queued");
    dispatch_until_idle(&t).await;
    assert_eq!(t.notification(id).await["status"], "sent");
}

/// A worker that finishes after its lease was rescued, but before anyone claimed the job
/// again, still holds the job's token: its send is recorded, not repeated.
#[tokio::test]
async fn a_send_finished_after_a_rescue_but_before_a_reclaim_is_recorded() {
    let t = TestDb::new().await;
    let acme = t.caller("acme").await;
    let id = t.accept(&acme, email("slow@example.com")).await;
    let claimed = claim(&t, "w").await;
    let Some(Claimed::Send(job)) = claimed.first() else { panic!("nothing claimed") };
    lapse(&t).await;
    assert_eq!(super::rescue_expired(t.pool(), 100).await.expect("rescue"), 1);
    assert_eq!(t.notification(id).await["status"], "queued");

    assert_eq!(complete_one(&t, job.lease(), sent("<m1>")).await, Applied::Yes);
    let n = t.notification(id).await;
    assert_eq!((&n["status"], &n["provider_message_id"]), (&json!("sent"), &json!("<m1>")), "{n}");
    assert_eq!(job_count(&t).await, 0);
    assert_eq!(t.app.dispatcher().run_once().await.expect("run").claimed, 0, "nothing is sent again");
}

/// A completion that arrives after the job was rescued and claimed again (a new token) is
/// refused, and kept in the timeline marked `fenced`; the new claim's completion applies.
#[tokio::test]
async fn a_late_completion_after_a_new_claim_is_fenced_and_kept_in_the_timeline() {
    let t = TestDb::new().await;
    let acme = t.caller("acme").await;
    let id = t.accept(&acme, email("kim@example.com")).await;
    let first = claim(&t, "a").await;
    lapse(&t).await;
    assert_eq!(super::rescue_expired(t.pool(), 100).await.expect("rescue"), 1);
    let second = claim(&t, "b").await;
    assert_eq!(second[0].lease().token, first[0].lease().token + 1);
    assert_eq!(complete_one(&t, second[0].lease(), sent("<new>")).await, Applied::Yes);

    assert_eq!(complete_one(&t, first[0].lease(), sent("<late>")).await, Applied::Fenced);
    let n = t.notification(id).await;
    assert_eq!((&n["status"], &n["provider_message_id"]), (&json!("sent"), &json!("<new>")), "{n}");
    assert_eq!(n["events"].as_array().expect("events").last().expect("an event")["detail"]["fenced"], true, "{n}");
}

/// Neither a retry nor a failure with a lost lease can touch the newer claim's job.
#[tokio::test]
async fn a_fenced_retry_cannot_requeue_a_newer_claim() {
    let t = TestDb::new().await;
    let acme = t.caller("acme").await;
    let id = t.accept(&acme, email("x@example.com")).await;
    let first = claim(&t, "a").await;
    assert_eq!(first.len(), 1);
    lapse(&t).await;
    assert_eq!(super::rescue_expired(t.pool(), 100).await.expect("rescue"), 1);
    let second = claim(&t, "b").await;
    let stale = first[0].lease();
    let retry = Outcome::Retrying {
        provider: Some("mail".into()),
        delay: Duration::from_millis(1),
        next_route: 0,
        error: "late".into(),
    };
    assert_eq!(complete_one(&t, stale, retry).await, Applied::Fenced);
    let failed = Outcome::finished(Status::Failed, "attempt", None, "late");
    assert_eq!(complete_one(&t, stale, failed).await, Applied::Fenced);
    let (state, token): (String, i64) =
        sqlx::query_as("SELECT state, lease_token FROM jobs").fetch_one(t.pool()).await.expect("job");
    assert_eq!((state.as_str(), token), ("running", second[0].lease().token));
    let done = Outcome::Sent { provider: "mail".into(), provider_message_id: None };
    assert_eq!(complete_one(&t, second[0].lease(), done).await, Applied::Yes);
    assert_eq!(t.notification(id).await["status"], "sent");
}

/// The send path's two status changes (`queued → sending` by the claim, `sending → sent` by the
/// completion) are HOT updates: they change no indexed column, so they write no index entry
/// (migration 0016). Counted by PostgreSQL itself for this transaction; the send's message id
/// still finds the notification for a receipt, through the `attempt` event.
#[tokio::test]
async fn a_sends_status_changes_are_hot_updates() {
    let t = TestDb::new().await;
    let acme = t.caller("acme").await;
    let id = t.accept(&acme, email("hot@example.com")).await;
    let mut tx = t.pool().begin().await.expect("begin");
    let claimed = super::claim(&mut tx, &Lane::all(10), 10, LEASE, "a").await.expect("claim");
    assert_eq!(claimed.len(), 1);
    let c = Completion { lease: claimed[0].lease(), outcome: sent("<hot-1>"), detail: json!({"attempt": 1}) };
    assert_eq!(super::complete(&mut tx, &[c]).await.expect("complete"), vec![Applied::Yes]);
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
    assert_eq!(found, Some(id.as_uuid()));
    assert_eq!(t.notification(id).await["status"], "sent");
}

/// Lists by status find each status however it is indexed (migration 0016): `queued` and
/// `sending` through the send jobs, `sent` by the tenant's newest rows, `failed` by
/// `indexed_status`; and only the tenant's own.
#[tokio::test]
async fn lists_by_status_find_the_send_path_and_the_indexed_statuses() {
    let t = TestDb::new().await;
    let (acme, globex) = (t.caller("acme").await, t.caller("globex").await);
    let mut ours = Vec::new();
    for i in 0..3 {
        ours.push(t.accept(&acme, email(&format!("a{i}@example.com"))).await);
    }
    t.accept(&globex, email("g@example.com")).await;
    let count = |tenant: crate::domain::TenantId, status: Status| {
        let pool = t.pool().clone();
        async move {
            let f = ListFilter {
                tenant: Some(tenant),
                status: Some(status),
                channel: None,
                to: None,
                tag: None,
                category: None,
                created_after: None,
                created_before: None,
                before_id: None,
                limit: 50,
                max_bytes: i64::MAX,
            };
            let mut conn = pool.acquire().await.expect("conn");
            store::list(&mut conn, &f).await.expect("list").0.len()
        }
    };
    let (a, g) = (acme.tenant_id, globex.tenant_id);
    assert_eq!((count(a, Status::Queued).await, count(g, Status::Queued).await), (3, 1));
    let claimed = claim(&t, "a").await;
    assert_eq!(claimed.len(), 4);
    assert_eq!((count(a, Status::Queued).await, count(a, Status::Sending).await), (0, 3));
    let leases: Vec<Lease> = claimed.iter().map(Claimed::lease).filter(|l| ours.contains(&l.notification_id)).collect();
    assert_eq!(leases.len(), 3);
    assert_eq!(complete_one(&t, leases[0], sent("<s>")).await, Applied::Yes);
    let failed = Outcome::finished(Status::Failed, "attempt", Some("mail"), "550");
    assert_eq!(complete_one(&t, leases[1], failed).await, Applied::Yes);
    let counts = [
        count(a, Status::Sending).await,
        count(a, Status::Sent).await,
        count(a, Status::Failed).await,
        count(g, Status::Failed).await,
    ];
    assert_eq!(counts, [1, 1, 1, 0]);
}

/// One statement records many outcomes, each fenced on its own row: a stale lease in the batch
/// changes nothing of its job while its neighbours are applied.
#[tokio::test]
async fn batched_completions_are_fenced_row_by_row() {
    let t = TestDb::new().await;
    let acme = t.caller("acme").await;
    for i in 0..4 {
        t.accept(&acme, email(&format!("b{i}@example.com"))).await;
    }
    let claimed = claim(&t, "a").await;
    assert_eq!(claimed.len(), 4);
    let leases: Vec<Lease> = claimed.iter().map(Claimed::lease).collect();
    let stale = Lease { token: leases[3].token - 1, ..leases[3] };
    let retrying = Outcome::Retrying {
        provider: Some("mail".into()),
        delay: Duration::from_secs(30),
        next_route: 0,
        error: "busy".into(),
    };
    let failed = Outcome::Finished {
        status: Status::Failed,
        event: "attempt".into(),
        provider: Some("mail".into()),
        error: "550".into(),
    };
    let batch = vec![
        Completion { lease: leases[0], outcome: sent("<m0>"), detail: json!({"attempt": 1}) },
        Completion { lease: leases[1], outcome: retrying, detail: json!({"attempt": 1, "error_class": "transient"}) },
        Completion { lease: leases[2], outcome: failed, detail: json!({"attempt": 1, "error_class": "permanent"}) },
        Completion { lease: stale, outcome: sent("<stale>"), detail: json!({"attempt": 1}) },
    ];
    let mut conn = t.pool().acquire().await.expect("conn");
    let applied = super::complete(&mut conn, &batch).await.expect("complete");
    assert_eq!(applied, vec![Applied::Yes, Applied::Yes, Applied::Yes, Applied::Fenced]);
    let n0 = t.notification(leases[0].notification_id).await;
    assert_eq!((n0["status"].as_str(), n0["provider_message_id"].as_str()), (Some("sent"), Some("<m0>")));
    let n1 = t.notification(leases[1].notification_id).await;
    assert_eq!(n1["status"], "retrying");
    assert!(n1["next_attempt_at"].is_string());
    assert!(n1["events"][1]["detail"]["next_attempt_at"].is_string(), "{n1}");
    assert_eq!(t.notification(leases[2].notification_id).await["status"], "failed");
    let n3 = t.notification(leases[3].notification_id).await;
    assert_eq!(n3["status"], "sending", "the stale lease changed nothing");
    assert_eq!(n3["events"][1]["detail"]["fenced"], true);
    // Jobs: the sent and failed ones are gone, the retrying one waits, the fenced one is held.
    let jobs: Vec<(String,)> =
        sqlx::query_as("SELECT state FROM jobs ORDER BY id").fetch_all(&mut *conn).await.expect("jobs");
    assert_eq!(jobs, vec![("available".to_owned(),), ("running".to_owned(),)]);
}

/// What a tenant holds of a lane counts against that lane's per-tenant cap only: a tenant with
/// callbacks in flight still has its sends claimed in full, and its callbacks in flight fill
/// the callbacks' cap for it.
#[tokio::test]
async fn what_a_tenant_holds_counts_against_that_lane_only() {
    let t = TestDb::new().await;
    let acme = t.caller("acme").await;
    for i in 0..3 {
        t.accept(&acme, email(&format!("u{i}@example.com"))).await;
    }
    // Each send lane takes 3, as many as there are sends: holding 2 callbacks must not cut that.
    let mut lanes = Lane::all(3);
    lanes.pop();
    lanes.push(Lane::callbacks(10, 2));
    let busy = [(super::claim::CALLBACK_QUEUE, acme.tenant_id, 2)];
    let bounds = Bounds { limit: 10, bytes: i64::MAX, busy: &busy };
    let mut conn = t.pool().acquire().await.expect("conn");
    let claimed = super::claim_within(&mut conn, &lanes, bounds, LEASE, "w").await.expect("claim");
    assert_eq!(claimed.iter().filter(|c| matches!(c, Claimed::Send(_))).count(), 3);
}

/// A receipt that came before its send was recorded (Twilio can call back that fast) is kept
/// unmatched; once the send is recorded, `apply_early` applies it to the notification, links
/// it, and queues the caller's callbacks for both changes.
#[tokio::test]
async fn a_receipt_that_beats_the_record_of_its_send_is_applied_after_it() {
    let secret = crate::domain::webhook::new_signing_secret();
    let t = TestDb::with(|s| s.callbacks.signing_secret = crate::config::Secret::new(secret)).await;
    let acme = t.caller("acme").await;
    let mut body = email("early@example.com");
    body["callback_url"] = json!("https://hooks.example.com/herald");
    let id = t.accept(&acme, body).await;
    let claimed = claim(&t, "w").await;
    let receipt = crate::receipts::Receipt {
        dedupe_key: "SMearly:undelivered".into(),
        target: crate::receipts::Target::ProviderMessageId("SMearly".into()),
        provider_message_id: Some("SMearly".into()),
        provider_status: "undelivered".into(),
        status: Some(Status::Failed),
        suppress: None,
        detail: json!({}),
        replay_token: None,
    };
    let outcome = crate::store::receipts::apply(t.pool(), "mail", &receipt).await.expect("apply");
    assert!(matches!(outcome, crate::store::receipts::ReceiptOutcome::Unmatched), "{outcome:?}");
    assert_eq!(t.notification(id).await["status"], "sending");

    let c = Completion { lease: claimed[0].lease(), outcome: sent("SMearly"), detail: json!({}) };
    let mut conn = t.pool().acquire().await.expect("conn");
    assert_eq!(super::complete(&mut conn, std::slice::from_ref(&c)).await.expect("complete"), vec![Applied::Yes]);
    let recorded: Recorded = super::recorded_send(&c).expect("a send");
    receipt::apply_early(&mut conn, &[recorded]).await.expect("apply early");
    let n = t.notification(id).await;
    assert_eq!(n["status"], "failed", "the early `undelivered` applies once the send is recorded: {n}");
    let events: Vec<&Value> = n["events"].as_array().expect("events").iter().collect();
    let early = events.iter().find(|e| e["type"] == "receipt").expect("the receipt's event");
    assert_eq!((&early["status"], &early["detail"]["early"]), (&json!("failed"), &json!(true)));
    let unmatched: i64 = sqlx::query_scalar("SELECT count(*) FROM receipts WHERE notification_id IS NULL")
        .fetch_one(t.pool())
        .await
        .expect("count");
    assert_eq!(unmatched, 0, "the receipt is linked to its notification");
    let mut callbacks: Vec<String> =
        sqlx::query_scalar("SELECT payload->>'type' FROM jobs WHERE kind = 'callback' AND notification_id = $1")
            .bind(id.as_uuid())
            .fetch_all(t.pool())
            .await
            .expect("callbacks");
    callbacks.sort();
    assert_eq!(callbacks, ["notification.failed", "notification.sent"]);
}

/// How many pages a plan read, and which tables it scanned whole.
fn plan_cost(plan: &Value) -> (i64, Vec<String>) {
    fn seq_scans(node: &Value, out: &mut Vec<String>) {
        if node["Node Type"] == "Seq Scan" {
            out.push(node["Relation Name"].as_str().unwrap_or("?").to_owned());
        }
        for child in node["Plans"].as_array().into_iter().flatten() {
            seq_scans(child, out);
        }
    }
    let top = &plan[0]["Plan"];
    let pages = top["Shared Hit Blocks"].as_i64().unwrap_or(0) + top["Shared Read Blocks"].as_i64().unwrap_or(0);
    let mut scans = Vec::new();
    seq_scans(top, &mut scans);
    (pages, scans)
}

/// The claim with 1,000,000 jobs queued by one tenant and one by another: it stays on the claim
/// index (no sequential scan, a bounded number of pages), and the other tenant's lone job is in
/// the first claim of 256, whatever the backlog before it.
#[tokio::test]
async fn a_claim_stays_on_the_index_behind_a_million_jobs_and_deals_tenants_round_robin() {
    const ROWS: i64 = 1_000_000;
    let t = TestDb::new().await;
    let (bulk, otp) = (t.caller("bulk").await.tenant_id, t.caller("otp").await.tenant_id);
    // The backlog is older than the lone job: FIFO alone would send it last.
    sqlx::query(
        "INSERT INTO notifications (id, tenant_id, channel, recipient, recipient_key, content, status, priority,
                                    created_at, updated_at, size_bytes)
         SELECT gen_random_uuid(), CASE WHEN i = 0 THEN $2 ELSE $1 END, 'sms', '\"+14155550100\"', '+14155550100',
                '{\"text\": \"hi\"}', 'queued', 'normal', now(), now(), 14
         FROM generate_series(0, $3) AS i",
    )
    .bind(bulk.as_uuid())
    .bind(otp.as_uuid())
    .bind(ROWS)
    .execute(t.pool())
    .await
    .expect("seed notifications");
    sqlx::query(
        "INSERT INTO jobs (notification_id, tenant_id, queue, priority, run_at, max_attempts)
         SELECT id, tenant_id, 'sms', 1, now() - CASE WHEN tenant_id = $1 THEN interval '1 hour' ELSE interval '1 second' END, 5
         FROM notifications",
    )
    .bind(bulk.as_uuid())
    .execute(t.pool())
    .await
    .expect("seed jobs");
    sqlx::query("VACUUM ANALYZE jobs").execute(t.pool()).await.expect("analyze");
    sqlx::query("VACUUM ANALYZE notifications").execute(t.pool()).await.expect("analyze");

    let lanes = Lane::all(256);
    let sending = Status::sources_of(Status::Sending);
    // EXPLAIN ANALYZE runs the claim: in a transaction that is rolled back.
    let mut tx = t.pool().begin().await.expect("tx");
    let explain = format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}", super::claim::CLAIM_SQL);
    let plan: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
        .bind(lanes.iter().map(|l| l.queue).collect::<Vec<_>>())
        .bind(lanes.iter().map(|l| l.priority).collect::<Vec<_>>())
        .bind(lanes.iter().map(|l| l.weight).collect::<Vec<_>>())
        .bind(lanes.iter().map(|l| l.cap).collect::<Vec<_>>())
        .bind(lanes.iter().map(|l| l.tenant_cap).collect::<Vec<_>>())
        .bind(256_i64)
        .bind(60.0_f64)
        .bind("explain")
        .bind(&sending)
        .bind(Vec::<String>::new())
        .bind(Vec::<uuid::Uuid>::new())
        .bind(Vec::<i64>::new())
        .bind(i64::MAX)
        .fetch_one(&mut *tx)
        .await
        .expect("explain");
    tx.rollback().await.expect("rollback");
    let (pages, scans) = plan_cost(&plan);
    println!("claim of 256 behind 1,000,000 queued: {pages} pages, {} rows", plan[0]["Plan"]["Actual Rows"]);
    assert!(!scans.iter().any(|r| r == "jobs" || r == "notifications"), "{scans:?}\n{plan:#}");
    // About 40 pages a job, nearly all of them the writes (the job and its notification, and
    // their indexes), as before tenants were dealt round robin; reading the lane is a few.
    assert!(pages < 20_000, "{pages} pages\n{plan:#}");

    let mut tx = t.pool().begin().await.expect("tx");
    let claimed = super::claim_within(&mut tx, &lanes, Bounds::jobs(256), LEASE, "w").await.expect("claim");
    tx.rollback().await.expect("rollback");
    assert_eq!(claimed.len(), 256);
    let otp_jobs = claimed.iter().filter(|c| matches!(c, Claimed::Send(j) if j.tenant_id == otp)).count();
    assert_eq!(otp_jobs, 1, "the other tenant's one job is in the first claim");
}
