//! Queries that must stay cheap on a big table, checked on 1,000,000 notifications with
//! EXPLAIN (ANALYZE, BUFFERS): a retention pass with nothing to prune, and list pages bounded
//! by creation time. Pages read, not times, so the machine's noise does not matter.

use herald::domain::{NotificationId, Status};
use herald::store::keys::Scope;
use herald::store::{notifications, retention};
use serde_json::Value;
use time::OffsetDateTime;

use crate::helpers::TestApp;

const ROWS: i64 = 1_000_000;

/// Two tenants' notifications, evenly spread over the last 29 days (UUIDv7 ids of their time),
/// one in fifty failed, with a receipt for one in five.
async fn seed(t: &TestApp) -> (uuid::Uuid, uuid::Uuid) {
    t.key("acme", &[Scope::Read]).await;
    t.key("globex", &[Scope::Read]).await;
    let tenants: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM tenants ORDER BY name").fetch_all(t.pool()).await.expect("tenants");
    sqlx::query(
        "INSERT INTO notifications (id, tenant_id, channel, recipient, recipient_key, content, status, priority,
                                    attempts, provider, provider_message_id, created_at, updated_at)
         SELECT (lpad(to_hex((extract(epoch FROM ts) * 1000)::bigint), 12, '0') || '7' || substr(h, 1, 3) || '8'
                 || substr(h, 4, 15))::uuid,
                CASE WHEN i % 2 = 0 THEN $1 ELSE $2 END, 'email', to_jsonb('u' || i || '@example.com'),
                'u' || i || '@example.com', '{\"subject\": \"s\", \"text\": \"t\"}',
                CASE WHEN i % 50 = 0 THEN 'failed' ELSE 'delivered' END, 'normal', 1, 'mail', 'm' || i,
                ts, ts + interval '1 minute'
         FROM (SELECT i, now() - interval '29 days' + i * (interval '29 days' / $3) AS ts, md5(i::text) AS h
               FROM generate_series(1, $3) AS i) s",
    )
    .bind(tenants[0])
    .bind(tenants[1])
    .bind(ROWS)
    .execute(t.pool())
    .await
    .expect("seed notifications");
    sqlx::query(
        "INSERT INTO receipts (provider, dedupe_key, notification_id, provider_message_id, provider_status, payload)
         SELECT 'mail', 'r' || n.id, n.id, n.provider_message_id, 'delivered', '{}'
         FROM notifications n WHERE n.attempts = 1 AND right(n.provider_message_id, 1) IN ('0', '5')",
    )
    .execute(t.pool())
    .await
    .expect("seed receipts");
    sqlx::query("VACUUM ANALYZE notifications").execute(t.pool()).await.expect("analyze");
    sqlx::query("VACUUM ANALYZE receipts").execute(t.pool()).await.expect("analyze");
    (tenants[0], tenants[1])
}

/// Shared pages read or hit by the whole plan, and every sequential scan in it.
struct Cost {
    pages: i64,
    seq_scans: Vec<String>,
    rows_removed: i64,
}

fn cost(plan: &Value) -> Cost {
    fn walk(node: &Value, c: &mut Cost) {
        if node["Node Type"] == "Seq Scan" {
            c.seq_scans.push(node["Relation Name"].as_str().unwrap_or("?").to_owned());
        }
        c.rows_removed += node["Rows Removed by Filter"].as_i64().unwrap_or(0);
        for child in node["Plans"].as_array().into_iter().flatten() {
            walk(child, c);
        }
    }
    let top = &plan[0]["Plan"];
    let mut c = Cost {
        pages: top["Shared Hit Blocks"].as_i64().unwrap_or(0) + top["Shared Read Blocks"].as_i64().unwrap_or(0),
        seq_scans: Vec::new(),
        rows_removed: 0,
    };
    walk(top, &mut c);
    c
}

fn explain(sql: &str) -> String {
    format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}")
}

#[tokio::test]
async fn retention_and_time_bounded_lists_read_few_pages_of_a_million_rows() {
    let t = TestApp::spawn().await;
    let (acme, _) = seed(&t).await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications").fetch_one(t.pool()).await.expect("n");
    assert_eq!(count, ROWS);

    // A retention pass with nothing to prune (everything is younger than 30 days).
    let cutoff = OffsetDateTime::now_utc() - time::Duration::days(30);
    let plan: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(explain(retention::PRUNE_NOTIFICATIONS)))
        .bind(uuid::Uuid::nil())
        .bind(NotificationId::floor_at(cutoff))
        .bind(cutoff)
        .bind(1000_i64)
        .bind(retention::finished())
        .fetch_one(t.pool())
        .await
        .expect("explain");
    let c = cost(&plan);
    println!("retention, nothing to prune: {} pages, seq scans {:?}", c.pages, c.seq_scans);
    assert!(c.seq_scans.is_empty(), "{:?}\n{plan:#}", c.seq_scans);
    assert!(c.pages < 50, "{} pages\n{plan:#}", c.pages);
    let plan: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(explain(retention::PRUNE_UNMATCHED_RECEIPTS)))
        .bind(cutoff)
        .bind(1000_i64)
        .fetch_one(t.pool())
        .await
        .expect("explain");
    let c = cost(&plan);
    assert!(c.seq_scans.is_empty() && c.pages < 50, "{} pages, {:?}\n{plan:#}", c.pages, c.seq_scans);
    // The whole pass, for real.
    let pruned = retention::prune(t.pool(), 30, 24).await.expect("prune");
    assert_eq!(pruned, retention::Pruned::default());

    // One tenant's page of 50 created before a time 19 days back, with and without a status.
    let before = OffsetDateTime::now_utc() - time::Duration::days(19);
    // `queued` has no row here: found through the (empty) queue, not by reading the history.
    for (status, expected) in
        [(None, 51), (Some(Status::Failed), 51), (Some(Status::Delivered), 51), (Some(Status::Queued), 0)]
    {
        let (from_id, to_id) = notifications::id_bounds(None, Some(before));
        let (by_status, by_indexed_status, through_jobs) = notifications::status_binds(status);
        let plan: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(explain(&notifications::list_sql())))
            .bind(acme)
            .bind(by_status)
            .bind(None::<&str>)
            .bind(None::<&str>)
            .bind(None::<&str>)
            .bind(None::<OffsetDateTime>)
            .bind(Some(before))
            .bind(None::<uuid::Uuid>)
            .bind(51_i64)
            .bind(from_id)
            .bind(to_id)
            .bind(4_i64 * 1024 * 1024)
            .bind(by_indexed_status)
            .bind(through_jobs)
            .bind(None::<&str>)
            .fetch_one(t.pool())
            .await
            .expect("explain");
        let c = cost(&plan);
        let rows = plan[0]["Plan"]["Actual Rows"].as_i64().unwrap_or(0);
        println!("list {status:?} created_before: {} pages, {} rows removed, {rows} rows", c.pages, c.rows_removed);
        assert_eq!(rows, expected);
        assert!(c.seq_scans.is_empty(), "{:?}\n{plan:#}", c.seq_scans);
        assert!(c.rows_removed < 1000, "{} rows removed\n{plan:#}", c.rows_removed);
        assert!(c.pages < 500, "{} pages\n{plan:#}", c.pages);
    }
}

/// What the dashboard and `GET /v1/stats` read on a million notifications (29 days of them,
/// about 34,500 a day) and a million events: each query's pages for the last hour and the
/// last day, for every tenant and for one, with no sequential scan of the big tables. The
/// pages of one refresh are printed (the README quotes them).
#[tokio::test]
async fn stats_read_the_window_not_the_table() {
    use herald::store::stats;
    let t = TestApp::spawn().await;
    let (acme, _) = seed(&t).await;
    // One attempt event per notification, a second after it was created, in time order (as
    // they are written); a delivery receipt for one in five.
    sqlx::query(
        "INSERT INTO notification_events (notification_id, at, type, status, provider, detail)
         SELECT id, created_at + interval '1 second', 'attempt', CASE WHEN status = 'failed' THEN 'failed' ELSE 'sent' END,
                'mail', CASE WHEN status = 'failed' THEN '{\"error_class\": \"permanent\"}'::jsonb ELSE '{}'::jsonb END
         FROM notifications ORDER BY id",
    )
    .execute(t.pool())
    .await
    .expect("seed events");
    sqlx::query(
        "INSERT INTO notification_events (notification_id, at, type, status, provider)
         SELECT id, created_at + interval '30 seconds', 'receipt', 'delivered', 'mail'
         FROM notifications WHERE status = 'delivered' AND right(provider_message_id, 1) IN ('0', '5') ORDER BY id",
    )
    .execute(t.pool())
    .await
    .expect("seed receipts");
    sqlx::query("VACUUM ANALYZE notification_events").execute(t.pool()).await.expect("analyze");

    let now = OffsetDateTime::now_utc();
    let mut refresh_pages = 0;
    // Every tenant's: the window's rows and little else. One tenant's: its own notifications of
    // the window and their events, by index, never the other tenant's (so no more pages than
    // every tenant's, though the other half of the rows is another tenant's).
    for (window, max_pages, max_tenant_pages) in
        [(time::Duration::hours(1), 2_000, 2_000), (time::Duration::hours(24), 20_000, 20_000)]
    {
        let since = now - window;
        let floor = NotificationId::floor_at(since);
        for tenant in [None, Some(acme)] {
            let width = sqlx::postgres::types::PgInterval {
                months: 0,
                days: 0,
                microseconds: stats::bucket_for(window).whole_microseconds() as i64,
            };
            let (queues, priorities) = stats::lane_keys();
            let (q, p) = (queues.clone(), priorities.clone());
            let lanes = explain_with(&t, stats::LANES_SQL, move |x| x.bind(q).bind(p).bind(tenant)).await;
            let plans: Vec<(&str, Value)> = match tenant {
                None => vec![
                    (
                        "counts",
                        explain_with(&t, stats::COUNTS_SQL, |q| q.bind(floor).bind(tenant).bind(None::<&str>)).await,
                    ),
                    ("latency", explain_with(&t, stats::LATENCY_SQL, |q| q.bind(since)).await),
                    ("attempts", explain_with(&t, stats::ATTEMPTS_SQL, |q| q.bind(since)).await),
                    (
                        "throughput",
                        explain_with(&t, stats::THROUGHPUT_SQL, |q| {
                            q.bind(since).bind(tenant).bind(width).bind(now).bind(floor).bind(None::<&str>)
                        })
                        .await,
                    ),
                    ("failures", explain_with(&t, stats::FAILURES_SQL, |q| q.bind(tenant).bind(None::<&str>)).await),
                    ("queue", lanes),
                    ("stuck", explain_with(&t, stats::STUCK_SQL, |q| q.bind(tenant)).await),
                ],
                Some(_) => vec![
                    (
                        "counts",
                        explain_with(&t, stats::COUNTS_SQL, |q| q.bind(floor).bind(tenant).bind(None::<&str>)).await,
                    ),
                    (
                        "latency",
                        explain_with(&t, stats::TENANT_LATENCY_SQL, |q| q.bind(since).bind(tenant).bind(floor)).await,
                    ),
                    (
                        "attempts",
                        explain_with(&t, stats::TENANT_ATTEMPTS_SQL, |q| q.bind(since).bind(tenant).bind(floor)).await,
                    ),
                    (
                        "throughput",
                        explain_with(&t, stats::TENANT_THROUGHPUT_SQL, |q| {
                            q.bind(since).bind(tenant).bind(width).bind(now).bind(floor).bind(None::<&str>)
                        })
                        .await,
                    ),
                    ("failures", explain_with(&t, stats::FAILURES_SQL, |q| q.bind(tenant).bind(None::<&str>)).await),
                    ("queue", lanes),
                    ("stuck", explain_with(&t, stats::STUCK_SQL, |q| q.bind(tenant)).await),
                ],
            };
            let mut total = 0;
            for (name, plan) in &plans {
                let c = cost(plan);
                let big = c.seq_scans.iter().any(|r| r == "notifications" || r == "notification_events");
                assert!(!big, "{name}: seq scan of {:?}\n{plan:#}", c.seq_scans);
                let limit = if tenant.is_some() { max_tenant_pages } else { max_pages };
                assert!(c.pages < limit, "{name}: {} pages over {window}\n{plan:#}", c.pages);
                total += c.pages;
            }
            let whose = if tenant.is_some() { "one tenant" } else { "every tenant" };
            println!("stats over {window} for {whose}: {total} pages");
            if tenant.is_none() {
                refresh_pages += total;
            }
        }
    }
    // The dashboard reads the last hour, the last day and its selected window (1h by default).
    let started = std::time::Instant::now();
    for window in [time::Duration::hours(1), time::Duration::hours(24), time::Duration::hours(1)] {
        let s =
            stats::snapshot(t.pool(), window, None, None, std::time::Duration::from_secs(60)).await.expect("snapshot");
        assert!(s.counts.iter().map(|c| c.count).sum::<i64>() > 0);
    }
    println!("one dashboard refresh (admin): about {} pages, {:?} here", refresh_pages, started.elapsed());
    let started = std::time::Instant::now();
    let tenant = Some(herald::domain::TenantId::from_uuid(acme));
    stats::snapshot(t.pool(), time::Duration::hours(24), tenant, None, std::time::Duration::from_secs(60))
        .await
        .expect("snapshot");
    println!("one tenant's last day: {:?} here", started.elapsed());
}

async fn explain_with<'q>(
    t: &TestApp,
    sql: &'q str,
    bind: impl FnOnce(
        sqlx::query::QueryScalar<'q, sqlx::Postgres, Value, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, Value, sqlx::postgres::PgArguments>,
) -> Value {
    let text: &'q str = Box::leak(explain(sql).into_boxed_str());
    bind(sqlx::query_scalar(sqlx::AssertSqlSafe(text))).fetch_one(t.pool()).await.expect("explain")
}
