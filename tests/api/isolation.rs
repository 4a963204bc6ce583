//! One tenant must not hold another back (issue 21): a hanging callback receiver, a backlog
//! on a paced provider, templates that render slowly, expensive stats and big messages each
//! cost their own tenant only. Every check compares with what the other tenant got in the same
//! run, and asserts counts or order, never a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use herald::config::ProviderSettings;
use herald::providers::log;
use herald::store::keys::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::fake_http::FakeHttp;
use crate::helpers::TestApp;

const SEND_READ: &[Scope] = &[Scope::Send, Scope::Read];

fn sms(text: &str) -> Value {
    json!({"channel": "sms", "to": "+14155550100", "content": {"text": text}})
}

/// Run the dispatcher loop in the background until the token is cancelled.
fn run_dispatcher(t: &TestApp) -> CancellationToken {
    let cancel = CancellationToken::new();
    let d = t.dispatcher();
    let c = cancel.clone();
    tokio::spawn(async move { d.run(c).await });
    cancel
}

/// Poll `check` until it holds, failing the test after `patience` (a bound far above what
/// the check needs when Herald is right; never the assertion itself).
async fn eventually<F, Fut>(what: &str, patience: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let give_up = tokio::time::Instant::now() + patience;
    while !check().await {
        assert!(tokio::time::Instant::now() < give_up, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn count(t: &TestApp, sql: &'static str, tenant: &str) -> i64 {
    sqlx::query_scalar(sql).bind(tenant).fetch_one(t.pool()).await.expect("count")
}

/// A callback receiver that takes connections and never answers, counting them.
#[derive(Clone)]
struct Tarpit {
    url: String,
    open: Arc<AtomicUsize>,
    most_open: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl Tarpit {
    async fn start() -> Tarpit {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let pit = Tarpit { url, open: Arc::default(), most_open: Arc::default(), closed: Arc::default() };
        let p = pit.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let now = p.open.fetch_add(1, Ordering::SeqCst) + 1;
                p.most_open.fetch_max(now, Ordering::SeqCst);
                let p = p.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
                    p.open.fetch_sub(1, Ordering::SeqCst);
                    p.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        pit
    }
}

/// Tenant A's callback receiver takes connections and never answers. Its callbacks hold at
/// most `callbacks.per_tenant_concurrency` (4) connections, and no send permit: tenant B's
/// sends (with four send permits in all, as many as A's hanging callbacks) and B's own
/// callbacks all complete while every one of A's callbacks is still hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_callback_receiver_holds_back_only_its_own_tenant() {
    let pit = Tarpit::start().await;
    let receiver = FakeHttp::receiver().await;
    let t = TestApp::spawn_with(|s| {
        s.dispatch.concurrency = 4;
        s.dispatch.lease_secs = 120;
        s.dispatch.shutdown_grace_ms = 100;
        s.callbacks.timeout_ms = 60_000;
        s.callbacks.concurrency = 6;
        s.callbacks.per_tenant_concurrency = 4;
        s.callbacks.signing_secret = herald::config::Secret::new(herald::domain::webhook::new_signing_secret());
    })
    .await;
    let a = t.key("a", SEND_READ).await;
    let b = t.key("b", SEND_READ).await;
    for i in 0..20 {
        let mut n = sms(&format!("a{i}"));
        n["callback_url"] = json!(pit.url);
        assert_eq!(t.post(&a, n).await.status, StatusCode::ACCEPTED);
    }
    let stop = run_dispatcher(&t);
    eventually("A's callbacks reach the tarpit", Duration::from_secs(20), || async {
        pit.open.load(Ordering::SeqCst) >= 4
    })
    .await;

    let hook = format!("{}/hook", receiver.origin);
    let mut ids = Vec::new();
    for i in 0..10 {
        let mut n = sms(&format!("b{i}"));
        n["callback_url"] = json!(hook);
        ids.push(t.post(&b, n).await.body["id"].as_str().expect("id").to_owned());
    }
    eventually("B's sends and callbacks", Duration::from_secs(30), || async { receiver.requests().len() >= 10 }).await;
    for id in &ids {
        assert_eq!(t.notification(&b, id).await["status"], "sent");
    }
    // All of that while A's callbacks were hanging, never more than A's own budget of them.
    assert_eq!(pit.closed.load(Ordering::SeqCst), 0, "none of A's callbacks has ended");
    assert_eq!(pit.most_open.load(Ordering::SeqCst), 4, "A holds callbacks.per_tenant_concurrency connections");
    stop.cancel();
}

/// Tenant A has 600 SMS on a provider paced to 100 a second when tenant B sends one. B's is
/// sent after only a handful more of A's (one claim's worth at most), not after the whole
/// backlog nor after what the worker already holds for the pacer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_backlog_delays_another_tenants_message_by_at_most_a_claim() {
    let t = TestApp::spawn_with(|s| {
        let mut paced: ProviderSettings = log::Config::default().into();
        paced.common.max_per_second = Some(100.0);
        s.providers.insert("paced".into(), paced);
        s.channels.sms.providers = vec!["paced".into()];
        s.dispatch.shutdown_grace_ms = 100;
    })
    .await;
    let a = t.key("a", SEND_READ).await;
    let b = t.key("b", SEND_READ).await;
    let batch: Vec<Value> = (0..600).map(|i| sms(&format!("a{i}"))).collect();
    let r = t.request("POST", "/v1/notifications/batch", Some(&a), Some(json!({"notifications": batch}))).await;
    assert_eq!(r.status, StatusCode::OK);
    let stop = run_dispatcher(&t);
    const SENT: &str = "SELECT count(*) FROM notifications n JOIN tenants t ON t.id = n.tenant_id
                        WHERE t.name = $1 AND n.status = 'sent'";
    eventually("A's backlog is being sent", Duration::from_secs(20), || async { count(&t, SENT, "a").await >= 50 })
        .await;
    let before = count(&t, SENT, "a").await;
    let id = t.post(&b, sms("your code is 123456")).await.body["id"].as_str().expect("id").to_owned();
    eventually("B's message is sent", Duration::from_secs(20), || async {
        t.notification(&b, &id).await["status"] == "sent"
    })
    .await;
    // A's sends recorded before B's, by the order of their attempt events.
    let ahead: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notification_events e JOIN notifications n ON n.id = e.notification_id
         JOIN tenants t ON t.id = n.tenant_id
         WHERE t.name = 'a' AND e.type = 'attempt'
           AND e.id < (SELECT id FROM notification_events WHERE notification_id = $1::uuid AND type = 'attempt')",
    )
    .bind(&id)
    .fetch_one(t.pool())
    .await
    .expect("count");
    stop.cancel();
    let behind = ahead - before;
    println!("B posted after {before} of A's were sent; sent after {ahead} ({behind} more)");
    // Without fairness B waits for the ~200 A jobs held for the pacer (or the whole backlog).
    assert!(behind <= 64, "B's message waited for {behind} of A's");
}

/// A batch whose template spends most of its fuel on every text renders within its request's
/// budget (its later items are refused, not rendered), and off the runtime's threads: served by
/// a runtime of a single thread, `/healthz` keeps answering while the batch renders (rendering
/// on that thread, it would answer none until the renders are done). The batch is small (60
/// items) so that rendering is most of its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_heavy_templates_renders_within_a_budget_and_off_the_runtime() {
    let t = TestApp::spawn_with(|s| s.server.request_timeout_ms = 120_000).await;
    let key = t.key("heavy", SEND_READ).await;
    let heavy = "{% for i in range(12000) %}{% endfor %}x";
    let r = t
        .request(
            "PUT",
            "/v1/templates/heavy",
            Some(&key),
            Some(json!({"email": {"subject": heavy, "text": heavy, "html": heavy}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    // The same Herald, served by a runtime with one thread.
    let settings = (*t.app.settings).clone();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let app = herald::app::App::build(settings).expect("app");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            addr_tx.send(listener.local_addr().expect("addr")).expect("send");
            let limits = herald::http::serve::Limits::of(&app.settings);
            herald::http::serve::serve(listener, herald::http::router(app.state()), limits, stopped).await;
        });
    });
    let addr = format!("http://{}", addr_rx.recv().expect("addr"));

    let item = json!({"channel": "email", "to": "a@example.com", "template": {"name": "heavy"}});
    let body = json!({"notifications": vec![item; 60]});
    // A first batch warms the key cache and the pools: the second is almost all rendering.
    let warm = t.client.post(format!("{addr}/v1/notifications/batch")).bearer_auth(&key).json(&body).send().await;
    assert_eq!(warm.expect("batch").status(), StatusCode::OK);
    let done = Arc::new(AtomicBool::new(false));
    let batch = {
        let (client, url, key, done) =
            (t.client.clone(), format!("{addr}/v1/notifications/batch"), key.clone(), done.clone());
        tokio::spawn(async move {
            let r = client.post(url).bearer_auth(key).json(&body).send().await.expect("batch");
            let v: Value = r.json().await.expect("json");
            done.store(true, Ordering::SeqCst);
            v
        })
    };
    let mut answered_while_rendering = 0;
    while !done.load(Ordering::SeqCst) {
        let r = t.client.get(format!("{addr}/healthz")).send().await.expect("healthz");
        assert_eq!(r.status(), StatusCode::OK);
        if !done.load(Ordering::SeqCst) {
            answered_while_rendering += 1;
        }
    }
    let v = batch.await.expect("batch");
    stop.cancel();
    server.join().expect("server");
    let results = v["results"].as_array().expect("results");
    let rendered = results.iter().filter(|r| r.get("id").is_some()).count();
    let over_budget = results
        .iter()
        .filter(|r| r["problem"]["detail"].as_str().is_some_and(|d| d.contains("rendering budget")))
        .count();
    println!(
        "the batch rendered {rendered} items, refused {over_budget} over its budget; /healthz answered {answered_while_rendering} times meanwhile"
    );
    assert!((1..60).contains(&rendered) && over_budget > 0, "{rendered} rendered");
    assert_eq!(rendered + over_budget, 60);
    assert!(answered_while_rendering >= 20, "/healthz answered {answered_while_rendering} times during the batch");
}

/// Expensive stats from twelve keys at once (three tenants, four windows, no two alike) never
/// take the connections accepts need: the API pool has three connections and waits half a
/// second for one, and another tenant's 30 POSTs sent at the same time are all accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expensive_stats_never_take_the_connections_accepts_need() {
    let t = TestApp::spawn_with(|s| {
        s.database.max_connections = 3;
        s.database.read_max_connections = 2;
        s.database.acquire_timeout_ms = 500;
    })
    .await;
    let admin = t.key("ops", &[Scope::Admin]).await;
    let big = t.key("big", &[Scope::Read]).await;
    let small_read = t.key("small-read", &[Scope::Read]).await;
    let sender = t.key("sender", &[Scope::Send]).await;
    // 200,000 notifications of the last hour with an attempt each: seconds of stats work.
    sqlx::query(
        "INSERT INTO notifications (id, tenant_id, channel, recipient, recipient_key, content, status, priority,
                                    provider, created_at, updated_at)
         SELECT gen_random_uuid(), (SELECT id FROM tenants WHERE name = 'big'), 'sms', '\"+14155550100\"',
                '+14155550100', '{\"text\": \"x\"}', 'sent', 'normal', 'console', now() - i * interval '15 ms', now()
         FROM generate_series(1, 200000) AS i",
    )
    .execute(t.pool())
    .await
    .expect("seed");
    sqlx::query(
        "INSERT INTO notification_events (notification_id, at, type, status, provider, detail)
         SELECT id, created_at + interval '1 second', 'attempt', 'sent', 'console', '{}' FROM notifications",
    )
    .execute(t.pool())
    .await
    .expect("seed events");
    sqlx::query("ANALYZE").execute(t.pool()).await.expect("analyze");

    let mut stats = Vec::new();
    for key in [&admin, &big, &small_read] {
        for window in ["5m", "1h", "24h", "7d"] {
            let (client, url, key) = (t.client.clone(), format!("{}/v1/stats?window={window}", t.addr), key.clone());
            stats.push(tokio::spawn(
                async move { client.get(url).bearer_auth(key).send().await.expect("stats").status() },
            ));
        }
    }
    let mut posts = Vec::new();
    for i in 0..30 {
        let (client, url, key) = (t.client.clone(), format!("{}/v1/notifications", t.addr), sender.clone());
        posts.push(tokio::spawn(async move {
            client.post(url).bearer_auth(key).json(&sms(&format!("p{i}"))).send().await.expect("post").status()
        }));
    }
    let mut accepted = 0;
    for p in posts {
        if p.await.expect("post") == StatusCode::ACCEPTED {
            accepted += 1;
        }
    }
    let mut stats_ok = 0;
    for s in stats {
        let status = s.await.expect("stats");
        assert!(status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE, "{status}");
        if status == StatusCode::OK {
            stats_ok += 1;
        }
    }
    println!("{accepted} of 30 POSTs accepted; {stats_ok} of 12 stats answered");
    assert_eq!(accepted, 30, "stats took the accepts' connections");
    assert!(stats_ok >= 1);
}

/// Big messages are held and listed by bytes: with `dispatch.max_held_bytes` at 1 MB a worker
/// claims four emails of 300 KB, not all ten; a list page of 500 KB emails ends early, with a
/// cursor that leads to the rest.
#[tokio::test]
async fn big_messages_are_claimed_and_listed_by_bytes() {
    let t = TestApp::spawn_with(|s| {
        s.channels.email.providers = vec!["console".into()];
        s.dispatch.max_held_bytes = 1_000_000;
    })
    .await;
    let key = t.key("big", SEND_READ).await;
    let email = |size: usize| json!({"channel": "email", "to": "a@example.com", "content": {"subject": "s", "html": "x".repeat(size)}});
    for _ in 0..10 {
        assert_eq!(t.post(&key, email(300_000)).await.status, StatusCode::ACCEPTED);
    }
    let s = t.dispatcher().run_once().await.expect("run");
    assert_eq!(s.claimed, 4, "claims stop at the byte budget: {s:?}");
    t.dispatch_until_idle().await;
    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications WHERE status = 'sent'")
        .fetch_one(t.pool())
        .await
        .expect("count");
    assert_eq!(sent, 10);

    let other = t.key("list", SEND_READ).await;
    for _ in 0..12 {
        assert_eq!(t.post(&other, email(500_000)).await.status, StatusCode::ACCEPTED);
    }
    let first = t.get(&other, "/v1/notifications?limit=50").await;
    let items = first.body["items"].as_array().expect("items").len();
    assert!(items < 12, "a page of {items} items of 500 KB");
    let mut seen = items;
    let mut cursor = first.body["next_cursor"].as_str().map(str::to_owned);
    while let Some(c) = cursor {
        let page = t.get(&other, &format!("/v1/notifications?limit=50&cursor={c}")).await;
        seen += page.body["items"].as_array().expect("items").len();
        cursor = page.body["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, 12, "every notification is on some page");
}

/// A tenant's sender domains (its own list, else `channels.email.sender_domains`): a `from`
/// outside them is a 422 at `/content/from`, subdomains are in, and a template's rendered
/// `from` is checked the same way. Without a list any `from` is allowed.
#[tokio::test]
async fn a_tenant_sends_only_from_its_sender_domains() {
    let t = TestApp::spawn_with(|s| {
        s.channels.email.providers = vec!["console".into()];
        s.channels.email.sender_domains = Some(vec!["operator.example".into()]);
    })
    .await;
    let a = t.key("a", SEND_READ).await;
    let from = |f: &str| json!({"channel": "email", "to": "x@example.com", "content": {"subject": "s", "text": "t", "from": f}});
    // The configured list applies to a tenant without its own.
    assert_eq!(t.post(&a, from("Ops <ops@operator.example>")).await.status, StatusCode::ACCEPTED);
    let r = t.post(&a, from("billing@tenant-b.example")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["errors"][0]["pointer"], "/content/from", "{}", r.body);
    // Its own list replaces it.
    let mut conn = t.pool().acquire().await.expect("conn");
    let changes = herald::store::keys::TenantChanges {
        sender_domains: Some(Some(vec!["tenant-a.example".into()])),
        ..Default::default()
    };
    herald::store::keys::set_tenant(&mut conn, "a", &changes).await.expect("set");
    drop(conn);
    let a = t.key("a", SEND_READ).await; // a new key: not in the key cache
    assert_eq!(t.post(&a, from("billing@mail.tenant-a.example")).await.status, StatusCode::ACCEPTED);
    assert_eq!(t.post(&a, from("ops@operator.example")).await.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = t
        .request(
            "PUT",
            "/v1/templates/spoof",
            Some(&a),
            Some(json!({"email": {"subject": "s", "text": "t", "from": "{{ who }}@tenant-b.example"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = t
        .post(
            &a,
            json!({"channel": "email", "to": "x@example.com", "template": {"name": "spoof", "data": {"who": "ceo"}}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["errors"][0]["pointer"], "/template", "{}", r.body);
    // No list at all: any `from`.
    let open = TestApp::spawn_with(|s| s.channels.email.providers = vec!["console".into()]).await;
    let k = open.key("a", SEND_READ).await;
    assert_eq!(open.post(&k, from("anyone@anywhere.example")).await.status, StatusCode::ACCEPTED);
}
