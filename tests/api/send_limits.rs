//! Send limits that defer: a per-recipient throttle and per-tenant quotas hold sends back to
//! the next window with a `deferred` event (never dropping or failing them), and hold across
//! replicas because they are counted in PostgreSQL.

use herald::store::keys::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::helpers::TestApp;

const SEND_READ: &[Scope] = &[Scope::Send, Scope::Read];

fn sms(to: &str) -> Value {
    json!({"channel": "sms", "to": to, "content": {"text": "Your code is 123456"}})
}

async fn send(t: &TestApp, key: &str, body: Value) -> String {
    let r = t.post(key, body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    r.body["id"].as_str().expect("id").to_owned()
}

async fn statuses(t: &TestApp, key: &str, ids: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    for id in ids {
        out.push(t.notification(key, id).await);
    }
    out
}

fn count(ns: &[Value], status: &str) -> usize {
    ns.iter().filter(|n| n["status"] == status).count()
}

/// The start of the window of `secs` after the current one, `n` windows on.
fn window_start(secs: i64, n: i64) -> String {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let start = (now / secs + n) * secs;
    OffsetDateTime::from_unix_timestamp(start).expect("time").format(&Rfc3339).expect("format")
}

/// Pretend the windows counted so far have ended, and make the held-back sends due.
async fn next_window(t: &TestApp) {
    sqlx::query("DELETE FROM send_windows").execute(t.pool()).await.expect("windows");
    sqlx::query("UPDATE jobs SET run_at = now()").execute(t.pool()).await.expect("due");
}

#[tokio::test]
async fn a_recipient_over_its_throttle_is_deferred_to_the_next_window_not_dropped() {
    let t = TestApp::spawn_with(|s| {
        s.channels.sms.recipient_max = 2;
        s.channels.sms.recipient_window_secs = 3600;
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(send(&t, &key, sms("+14155550100")).await);
    }
    let other = send(&t, &key, sms("+14155550101")).await;
    let summary = t.dispatcher().run_once().await.expect("dispatch");
    assert_eq!((summary.sent, summary.deferred), (3, 2), "{summary:?}");

    let ns = statuses(&t, &key, &ids).await;
    assert_eq!((count(&ns, "sent"), count(&ns, "queued")), (2, 2), "{ns:?}");
    assert_eq!(t.notification(&key, &other).await["status"], "sent");
    let next_hour = window_start(3600, 1);
    for n in ns.iter().filter(|n| n["status"] == "queued") {
        let deferred =
            n["events"].as_array().expect("events").iter().find(|e| e["type"] == "deferred").expect("deferred");
        assert_eq!(deferred["status"], "queued");
        assert_eq!(deferred["detail"]["reason"], "recipient_throttle", "{deferred}");
        assert_eq!(
            deferred["detail"]["limit"],
            json!({"key": "channels.sms.recipient_max", "max": 2, "window_secs": 3600})
        );
        assert_eq!(deferred["detail"]["until"], next_hour);
        assert_eq!(n["next_attempt_at"], next_hour);
        assert_eq!(n["attempts"], 0, "a deferral is not an attempt");
    }
    // Not due before then.
    assert_eq!(t.dispatcher().run_once().await.expect("dispatch").claimed, 0);

    next_window(&t).await;
    let summary = t.dispatcher().run_once().await.expect("dispatch");
    assert_eq!((summary.sent, summary.deferred), (2, 0), "{summary:?}");
    let ns = statuses(&t, &key, &ids).await;
    assert_eq!(count(&ns, "sent"), 4, "{ns:?}");
}

#[tokio::test]
async fn a_tenant_over_its_quota_is_deferred_and_a_backlog_is_spread_over_the_next_windows() {
    let t = TestApp::spawn_with(|s| s.channels.email.tenant_per_minute = 3).await;
    let key = t.key("acme", SEND_READ).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(send(&t, &key, crate::helpers::email(&format!("r{i}@example.com"), "hi")).await);
    }
    // Another tenant has its own quota; another channel has none.
    let globex = t.key("globex", SEND_READ).await;
    let theirs = send(&t, &globex, crate::helpers::email("g@example.com", "hi")).await;
    let sms_id = send(&t, &key, sms("+14155550100")).await;

    // All in one minute's window (a run across a minute's edge would count in two).
    let second = OffsetDateTime::now_utc().second();
    if second >= 58 {
        tokio::time::sleep(std::time::Duration::from_secs(u64::from(61 - second))).await;
    }
    let started = OffsetDateTime::now_utc();
    let summary = t.dispatcher().run_once().await.expect("dispatch");
    assert_eq!((summary.sent, summary.deferred), (5, 4), "{summary:?}");
    assert_eq!(t.notification(&globex, &theirs).await["status"], "sent");
    assert_eq!(t.notification(&key, &sms_id).await["status"], "sent");
    let ns = statuses(&t, &key, &ids).await;
    assert_eq!(count(&ns, "sent"), 3);
    // The 4th to 6th over the quota come back next minute; the 7th the minute after.
    let mut untils: Vec<String> = ns
        .iter()
        .flat_map(|n| n["events"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["type"] == "deferred")
        .map(|e| {
            assert_eq!(e["detail"]["reason"], "tenant_quota_minute");
            e["detail"]["until"].as_str().expect("until").to_owned()
        })
        .collect();
    untils.sort();
    assert_eq!(untils, [1, 1, 1, 2].map(|n| window_start(60, n)), "started at {started}");

    next_window(&t).await;
    t.dispatch_until_idle().await;
    let ns = statuses(&t, &key, &ids).await;
    assert!(count(&ns, "sent") >= 6, "{ns:?}");
    assert_eq!(count(&ns, "failed"), 0);
    assert_eq!(count(&ns, "sent") + count(&ns, "queued"), 7, "none dropped: {ns:?}");
}

#[tokio::test]
async fn a_daily_quota_defers_to_the_next_utc_day() {
    let t = TestApp::spawn_with(|s| s.channels.push.tenant_per_day = 1).await;
    let key = t.key("acme", SEND_READ).await;
    let push = json!({"channel": "push", "to": {"fcm": "tok-1"}, "content": {"title": "Hi"}});
    let a = send(&t, &key, push.clone()).await;
    let b = send(&t, &key, push).await;
    t.dispatcher().run_once().await.expect("dispatch");
    let ns = statuses(&t, &key, &[a, b]).await;
    assert_eq!(count(&ns, "sent"), 1);
    let held = ns.iter().find(|n| n["status"] == "queued").expect("held back");
    let deferred =
        held["events"].as_array().expect("events").iter().find(|e| e["type"] == "deferred").expect("deferred");
    assert_eq!(deferred["detail"]["reason"], "tenant_quota_day");
    assert!(deferred["detail"]["until"].as_str().is_some_and(|u| u.ends_with("T00:00:00Z")), "{deferred}");
}

#[tokio::test]
async fn throttles_hold_across_replicas_dispatching_at_once() {
    let t = TestApp::spawn_with(|s| {
        s.channels.sms.recipient_max = 5;
        s.dispatch.concurrency = 16;
        s.dispatch.batch_size = 16;
    })
    .await;
    // A second replica: its own pools and dispatcher, on the same database.
    let other = herald::app::App::build(t.app.settings.as_ref().clone()).expect("second app");
    let key = t.key("acme", SEND_READ).await;
    let mut ids = Vec::new();
    for _ in 0..24 {
        ids.push(send(&t, &key, sms("+14155550100")).await);
    }
    let (d1, d2) = (t.dispatcher(), other.dispatcher());
    let (a, b) = tokio::join!(d1.run_once(), d2.run_once());
    let (a, b) = (a.expect("dispatch"), b.expect("dispatch"));
    assert_eq!(a.claimed + b.claimed, 24, "{a:?} {b:?}");
    assert!(a.claimed > 0 && b.claimed > 0, "both replicas took a share: {a:?} {b:?}");
    assert_eq!(a.sent + b.sent, 5, "{a:?} {b:?}");
    assert_eq!(a.deferred + b.deferred, 19);
    let counted: i32 =
        sqlx::query_scalar("SELECT sum(sends)::int FROM send_windows").fetch_one(t.pool()).await.expect("sum");
    assert_eq!(counted, 24, "every send counted once: 5 made, 19 queued behind them");
    let deferred: i64 = sqlx::query_scalar("SELECT count(*) FROM notification_events WHERE type = 'deferred'")
        .fetch_one(t.pool())
        .await
        .expect("count");
    assert_eq!(deferred, 19, "each held back with a deferred event");
}

#[tokio::test]
async fn a_tenants_own_quota_replaces_the_configured_one() {
    let t = TestApp::spawn_with(|s| s.channels.email.tenant_per_minute = 2).await;
    let keys = [
        ("acme", t.key("acme", SEND_READ).await),       // its own: 1 per minute
        ("globex", t.key("globex", SEND_READ).await),   // its own: none
        ("initech", t.key("initech", SEND_READ).await), // the configured 2
    ];
    let mut conn = t.pool().acquire().await.expect("conn");
    for (tenant, quota) in [("acme", Some(1)), ("globex", Some(0))] {
        let changes = herald::store::keys::TenantChanges {
            quotas: vec![("email.per_minute".into(), quota), ("sms.per_day".into(), Some(9))],
            ..Default::default()
        };
        herald::store::keys::set_tenant(&mut conn, tenant, &changes).await.expect("set");
    }
    // Back to the configured one for sms (and the other key stays).
    let changes =
        herald::store::keys::TenantChanges { quotas: vec![("sms.per_day".into(), None)], ..Default::default() };
    let own = herald::store::keys::set_tenant(&mut conn, "acme", &changes).await.expect("set").own_quotas;
    assert_eq!(own, json!({"email.per_minute": 1}));
    drop(conn);

    // All in one minute's window.
    let second = OffsetDateTime::now_utc().second();
    if second >= 58 {
        tokio::time::sleep(std::time::Duration::from_secs(u64::from(61 - second))).await;
    }
    let mut ids = Vec::new();
    for (tenant, key) in &keys {
        for i in 0..3 {
            ids.push((
                *tenant,
                key.clone(),
                send(&t, key, crate::helpers::email(&format!("{tenant}{i}@example.com"), "hi")).await,
            ));
        }
    }
    t.dispatcher().run_once().await.expect("dispatch");
    let mut sent = std::collections::BTreeMap::new();
    for (tenant, key, id) in &ids {
        if t.notification(key, id).await["status"] == "sent" {
            *sent.entry(*tenant).or_insert(0) += 1;
        }
    }
    assert_eq!(sent, std::collections::BTreeMap::from([("acme", 1), ("globex", 3), ("initech", 2)]));
}

#[tokio::test]
async fn a_send_is_counted_once_across_retries() {
    let t = TestApp::spawn_with(|s| {
        s.channels.email.recipient_max = 1;
    })
    .await;
    let key = t.key("acme", SEND_READ).await;

    // A transient failure and a retry: counted at the first attempt only.
    t.smtp.plan(&["451 4.3.0 try again later"]);
    let a = send(&t, &key, crate::helpers::email("ann@example.com", "hi")).await;
    t.dispatch_until_idle().await;
    let n = t.notification(&key, &a).await;
    assert_eq!((n["status"].clone(), n["attempts"].clone()), (json!("sent"), json!(2)), "{n}");
    assert!(!n["events"].as_array().expect("events").iter().any(|e| e["type"] == "deferred"), "{n}");
    let b = send(&t, &key, crate::helpers::email("ann@example.com", "again")).await;
    t.dispatcher().run_once().await.expect("dispatch");
    assert_eq!(t.notification(&key, &b).await["status"], "queued", "the one slot went to the first");

    // A worker that claims and dies before taking a slot: see
    // `dispatch::send::limits::tests::a_send_whose_worker_died_before_its_slot_is_counted_once`.
    let counted: i32 = sqlx::query_scalar("SELECT sum(sends)::int FROM send_windows WHERE scope = 'recipient'")
        .fetch_one(t.pool())
        .await
        .expect("sum");
    assert_eq!(counted, 2, "a and b (over): each once");
}

#[tokio::test]
async fn a_send_held_past_its_expiry_expires_at_once() {
    // A month-long window: its end is weeks away, far past the expiry.
    let t = TestApp::spawn_with(|s| {
        s.channels.sms.recipient_max = 1;
        s.channels.sms.recipient_window_secs = 31 * 86_400;
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    let first = send(&t, &key, sms("+14155550100")).await;
    t.dispatcher().run_once().await.expect("dispatch");
    let expires = (OffsetDateTime::now_utc() + time::Duration::minutes(10)).format(&Rfc3339).expect("format");
    let mut body = sms("+14155550100");
    body["expires_at"] = json!(expires);
    let second = send(&t, &key, body).await;
    t.dispatcher().run_once().await.expect("dispatch");
    assert_eq!(t.notification(&key, &first).await["status"], "sent");
    let n = t.notification(&key, &second).await;
    assert_eq!(n["status"], "expired", "{n}");
    let expired = n["events"].as_array().expect("events").iter().find(|e| e["type"] == "expired").expect("expired");
    assert_eq!(expired["detail"]["reason"], "recipient_throttle", "{expired}");
    assert!(n["error"].as_str().is_some_and(|e| e.contains("after its expires_at")), "{n}");
    assert_eq!(t.job_count().await, 0, "nothing left queued");
}
