//! Broken peers, slow clients and lost answers (issue 21): a NUL byte or an oversized value
//! from a provider fails one outcome alone and is recorded; one unstorable receipt does not lose
//! its batch; a client that never finishes its headers is dropped; and no answer hides a
//! commit, whether the write outlasts the request timeout or its connection is lost after it
//! committed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use herald::store::keys::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fake_http::FakeHttp;
use crate::helpers::TestApp;

const SEND_READ: &[Scope] = &[Scope::Send, Scope::Read];
const BIN: &str = env!("CARGO_BIN_EXE_herald");

fn sms(text: &str) -> Value {
    json!({"channel": "sms", "to": "+14155550100", "content": {"text": text}})
}

async fn statuses(t: &TestApp) -> Vec<String> {
    sqlx::query_scalar("SELECT status FROM notifications ORDER BY id").fetch_all(t.pool()).await.expect("statuses")
}

/// A gateway answers five sends `400 bad\0request`. Those five fail at once (a 400 is
/// permanent), each with its attempt in the timeline and the NUL replaced; the five other
/// sends of the same batches, another tenant's, are sent; the gateway is called ten times,
/// never again, and nothing is left `sending`.
#[tokio::test]
async fn a_nul_in_a_providers_answer_fails_that_send_alone_and_is_recorded() {
    let (t, gateway) = TestApp::with_gateway().await;
    gateway.plan(vec![(400, vec![], "bad\0request".into()); 5]);
    let a = t.key("a", SEND_READ).await;
    let b = t.key("b", SEND_READ).await;
    for i in 0..5 {
        assert_eq!(t.post(&a, sms(&format!("a{i}"))).await.status, StatusCode::ACCEPTED);
        assert_eq!(t.post(&b, sms(&format!("b{i}"))).await.status, StatusCode::ACCEPTED);
    }
    t.dispatch_until_idle().await;
    assert_eq!(gateway.requests().len(), 10, "no send was made twice");
    let st = statuses(&t).await;
    assert_eq!(st.iter().filter(|s| *s == "failed").count(), 5, "{st:?}");
    assert_eq!(st.iter().filter(|s| *s == "sent").count(), 5, "{st:?}");
    let errors: Vec<Value> = sqlx::query_scalar(
        "SELECT detail FROM notification_events WHERE type = 'attempt' AND status = 'failed' ORDER BY id",
    )
    .fetch_all(t.pool())
    .await
    .expect("events");
    assert_eq!(errors.len(), 5);
    for d in errors {
        assert_eq!(d["error_class"], "permanent", "{d}");
        assert!(d["error"].as_str().is_some_and(|e| e.contains("bad\u{FFFD}request")), "{d}");
    }
}

/// A gateway answers one send with a message id of 10,000 characters, more than PostgreSQL's
/// index on provider message ids can hold. That outcome is isolated from the others written
/// with it and stored without the provider's details (`sent`, no message id, the reason in
/// its attempt); every send is recorded once and none is made twice.
#[tokio::test]
async fn an_outcome_the_database_refuses_is_stored_without_the_providers_details() {
    let (t, gateway) = TestApp::with_gateway().await;
    let huge: String = (0..320).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect();
    gateway.plan(vec![(200, vec![("content-type", "application/json".into())], json!({"id": huge}).to_string())]);
    let key = t.key("a", SEND_READ).await;
    for i in 0..4 {
        assert_eq!(t.post(&key, sms(&format!("m{i}"))).await.status, StatusCode::ACCEPTED);
    }
    let s = t.dispatch_until_idle().await;
    assert_eq!(s.sent, 4, "{s:?}");
    assert_eq!(gateway.requests().len(), 4);
    assert_eq!(statuses(&t).await, vec!["sent"; 4]);
    let plain: Vec<Value> = sqlx::query_scalar(
        "SELECT e.detail FROM notification_events e JOIN notifications n ON n.id = e.notification_id
         WHERE e.type = 'attempt' AND e.detail ? 'unstorable' AND n.provider_message_id IS NULL",
    )
    .fetch_all(t.pool())
    .await
    .expect("events");
    assert_eq!(plain.len(), 1, "{plain:?}");
    assert!(plain[0]["unstorable"].as_str().is_some_and(|u| u.contains("could not be stored")), "{}", plain[0]);
}

/// A signed SendGrid batch holds a bounce whose reason has a NUL and an event whose id is too
/// big to store. The bounce is applied (and suppresses), the unstorable event is kept as
/// malformed, the events after it are applied, and the batch is acknowledged; its redelivery
/// is acknowledged too, as duplicates.
#[tokio::test]
async fn one_unstorable_receipt_does_not_lose_the_rest_of_a_signed_batch() {
    use p256::ecdsa::{SigningKey, signature::Signer};
    use p256::pkcs8::EncodePublicKey;
    let signing = SigningKey::from_slice(&[9u8; 32]).expect("key");
    let public = STANDARD.encode(signing.verifying_key().to_public_key_der().expect("der").as_bytes());
    let fake = FakeHttp::sendgrid().await;
    let origin = fake.origin.clone();
    let t = TestApp::spawn_with(move |s| {
        let mut p = crate::provider_settings::sendgrid(&origin);
        p.webhook_public_key = Some(public);
        s.providers.insert("sg".into(), p.into());
        s.channels.email.providers = vec!["sg".into()];
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    let mut ids = Vec::new();
    for to in ["n1@example.com", "n2@example.com", "n3@example.com"] {
        let r = t.post(&key, crate::helpers::email(to, "x")).await;
        ids.push(r.body["id"].as_str().expect("id").to_owned());
    }
    t.dispatch_until_idle().await;
    let huge: String = (0..320).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect();
    let events = json!([
        {"email": "n1@example.com", "timestamp": 1, "event": "delivered", "sg_event_id": "ev-1", "herald_id": ids[0]},
        {"email": "n2@example.com", "timestamp": 2, "event": "bounce", "type": "bounce",
         "reason": "550 5.1.1 unknown\u{0} user", "sg_event_id": "ev-2", "herald_id": ids[1]},
        {"email": "n3@example.com", "timestamp": 3, "event": "open", "sg_event_id": huge, "herald_id": ids[2]},
        {"email": "n3@example.com", "timestamp": 4, "event": "delivered", "sg_event_id": "ev-4", "herald_id": ids[2]}
    ])
    .to_string();
    let post = || {
        let ts = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
        let sig: p256::ecdsa::Signature = signing.sign(format!("{ts}{events}").as_bytes());
        t.client
            .post(format!("{}/webhooks/sg", t.addr))
            .header("content-type", "application/json")
            .header("x-twilio-email-event-webhook-signature", STANDARD.encode(sig.to_der().as_bytes()))
            .header("x-twilio-email-event-webhook-timestamp", ts)
            .body(events.clone())
            .send()
    };
    let r = post().await.expect("post");
    assert_eq!(r.status(), StatusCode::OK);
    let counts: Value = r.json().await.expect("json");
    assert_eq!((counts["applied"].as_i64(), counts["malformed"].as_i64()), (Some(3), Some(1)), "{counts}");
    let status = |i: usize| {
        let (t, key, id) = (&t, &key, ids[i].clone());
        async move { t.notification(key, &id).await["status"].as_str().unwrap_or_default().to_owned() }
    };
    assert_eq!(status(0).await, "delivered");
    assert_eq!(status(1).await, "bounced");
    assert_eq!(status(2).await, "delivered");
    assert_eq!(t.get(&key, "/v1/suppressions").await.body["items"][0]["recipient"], "n2@example.com");
    let again = post().await.expect("post");
    assert_eq!(again.status(), StatusCode::OK);
    let counts: Value = again.json().await.expect("json");
    assert_eq!(counts["duplicates"], 3, "{counts}");
}

/// Clients that open connections and trickle header lines, never finishing, fill every
/// connection slot (`server.max_connections` = 8). Each is dropped once
/// `server.header_read_timeout_ms` passes, and `/healthz`, waiting in the backlog meanwhile,
/// is then answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_dropped_after_the_header_timeout_and_healthz_is_answered() {
    let t = TestApp::spawn_with(|s| {
        s.server.header_read_timeout_ms = 500;
        s.server.max_connections = 8;
    })
    .await;
    let host = t.addr.trim_start_matches("http://").to_owned();
    let closed = Arc::new(AtomicUsize::new(0));
    let mut slow = Vec::new();
    for i in 0..8 {
        let mut sock = tokio::net::TcpStream::connect(&host).await.expect("connect");
        let closed = closed.clone();
        slow.push(tokio::spawn(async move {
            let _ = sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
            // A header line every 100 ms, for ever: only the server can end this.
            loop {
                let mut buf = [0u8; 256];
                tokio::select! {
                    read = sock.read(&mut buf) => {
                        if matches!(read, Ok(0) | Err(_)) {
                            closed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                    () = tokio::time::sleep(Duration::from_millis(100)) => {
                        if sock.write_all(format!("X-Slow-{i}: y\r\n").as_bytes()).await.is_err() {
                            closed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            }
        }));
    }
    // Every slot is taken: the health check waits in the backlog until slow clients are dropped.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let healthz = t.client.get(format!("{}/healthz", t.addr)).timeout(Duration::from_secs(20)).send().await;
    let closed_before_answer = closed.load(Ordering::SeqCst);
    assert_eq!(healthz.expect("healthz").status(), StatusCode::OK);
    assert!(closed_before_answer >= 1, "healthz was served while every slot was held");
    for s in slow {
        tokio::time::timeout(Duration::from_secs(20), s).await.expect("the server drops a slow client").expect("task");
    }
    assert_eq!(closed.load(Ordering::SeqCst), 8);
}

/// A write that outlasts `server.request_timeout_ms` (a table lock held for 1.5 s, as a
/// migration would) is answered with its outcome, a 202, not with a 503 that would make the
/// caller send it again: one notification, one answer that says so.
#[tokio::test]
async fn a_write_slower_than_the_request_timeout_is_answered_with_its_outcome() {
    let t = TestApp::spawn_with(|s| s.server.request_timeout_ms = 300).await;
    let key = t.key("a", SEND_READ).await;
    // Warm the key cache: the lock below must hold back the write, not the key's lookup.
    assert_eq!(t.get(&key, "/v1/notifications?limit=1").await.status, StatusCode::OK);
    let mut lock = t.pool().begin().await.expect("tx");
    sqlx::query("LOCK TABLE notifications IN EXCLUSIVE MODE").execute(&mut *lock).await.expect("lock");
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        lock.commit().await.expect("unlock");
    });
    let r = t.post(&key, sms("slow")).await;
    release.await.expect("release");
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications").fetch_one(t.pool()).await.expect("count");
    assert_eq!(n, 1);
    // A request that has not started a write still times out: its key's lookup waits.
    let fresh = t.key("b", SEND_READ).await;
    let mut lock = t.pool().begin().await.expect("tx");
    sqlx::query("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.expect("lock");
    let r = t.post(&fresh, sms("never")).await;
    lock.rollback().await.expect("unlock");
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
}

/// A TCP proxy in front of PostgreSQL that, once armed, drops the connection at the first
/// answer to carry `needle`: the statement ran (and committed), its answer never arrives.
#[derive(Clone)]
struct AnswerDropper {
    armed: Arc<AtomicBool>,
    dropped: Arc<AtomicUsize>,
    /// Once it has dropped an answer, whether the proxy closes every connection it is given
    /// until this is cleared (the database is away).
    away_after_drop: Arc<AtomicBool>,
    away: Arc<AtomicBool>,
}

impl AnswerDropper {
    /// A Herald whose database connections go through a dropper of the answers that carry
    /// `queued` (a notification's write), with `more` settings of the test's.
    async fn in_front_of(
        more: impl FnOnce(&mut herald::config::Settings) + Send + 'static,
    ) -> (AnswerDropper, TestApp) {
        let upstream = std::env::var("HERALD_TEST_DATABASE_URL")
            .ok()
            .and_then(|u| url::Url::parse(&u).ok())
            .map_or("127.0.0.1:5432".to_owned(), |u| {
                format!("{}:{}", u.host_str().unwrap_or("127.0.0.1"), u.port().unwrap_or(5432))
            });
        let (dropper, port) = AnswerDropper::start(upstream, b"queued").await;
        let t = TestApp::spawn_with(move |s| {
            let mut u = url::Url::parse(s.database.url.expose()).expect("url");
            u.set_host(Some("127.0.0.1")).expect("host");
            u.set_port(Some(port)).expect("port");
            // In clear, so that the proxy can see which answer to drop.
            u.query_pairs_mut().append_pair("sslmode", "disable");
            s.database.url = herald::config::Secret::new(u.to_string());
            more(s);
        })
        .await;
        (dropper, t)
    }

    async fn start(upstream: String, needle: &'static [u8]) -> (AnswerDropper, u16) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let d = AnswerDropper {
            armed: Arc::default(),
            dropped: Arc::default(),
            away_after_drop: Arc::default(),
            away: Arc::default(),
        };
        let dropper = d.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if dropper.away.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { continue };
                let d = dropper.clone();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let chunk = &buf[..n];
                        if d.armed.load(Ordering::SeqCst) && chunk.windows(needle.len()).any(|w| w == needle) {
                            d.armed.store(false, Ordering::SeqCst);
                            if d.away_after_drop.load(Ordering::SeqCst) {
                                d.away.store(true, Ordering::SeqCst);
                            }
                            d.dropped.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        if cw.write_all(chunk).await.is_err() {
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        (d, port)
    }
}

/// The connection of a single POST's write is lost after the statement committed, before its
/// answer arrived (a proxy drops it). Herald does not guess: it asks the database whether the
/// notification was stored, finds it, and answers 202 with it. The caller has one notification
/// and an answer that says so, not a 503 that would make it send a second.
#[tokio::test]
async fn a_write_whose_answer_is_lost_after_it_committed_is_answered_202() {
    let (dropper, t) = AnswerDropper::in_front_of(|_| {}).await;
    let key = t.key("a", SEND_READ).await;
    assert_eq!(t.post(&key, sms("first")).await.status, StatusCode::ACCEPTED, "warms the key cache");
    dropper.armed.store(true, Ordering::SeqCst);
    let r = t.post(&key, sms("second")).await;
    assert_eq!(dropper.dropped.load(Ordering::SeqCst), 1, "the proxy dropped the write's answer");
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let id = r.body["id"].as_str().expect("id");
    let stored: Vec<String> = sqlx::query_scalar("SELECT content->>'text' FROM notifications WHERE id = $1::uuid")
        .bind(id)
        .fetch_all(t.pool())
        .await
        .expect("read");
    assert_eq!(stored, vec!["second"]);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications").fetch_one(t.pool()).await.expect("count");
    assert_eq!(n, 2, "one notification per POST");
}

/// A write whose answer is lost while the database goes away is settled once it is back, and
/// until then it holds none of the group committer's writers (here its only one): a POST made
/// meanwhile is answered 503 at once, before the caught write is answered, instead of
/// queueing behind it for the whole outage.
#[tokio::test]
async fn a_write_caught_by_an_outage_does_not_hold_back_the_next_requests() {
    let (dropper, t) = AnswerDropper::in_front_of(|s| {
        // One connection, so one writer: the caught write would hold every writer there is.
        s.database.max_connections = 1;
        s.database.acquire_timeout_ms = 300;
    })
    .await;
    let t = Arc::new(t);
    let key = t.key("a", SEND_READ).await;
    assert_eq!(t.post(&key, sms("first")).await.status, StatusCode::ACCEPTED, "warms the key cache");
    dropper.away_after_drop.store(true, Ordering::SeqCst);
    dropper.armed.store(true, Ordering::SeqCst);
    let caught = {
        let (t, key) = (t.clone(), key.clone());
        tokio::spawn(async move { t.post(&key, sms("caught")).await })
    };
    while dropper.dropped.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let during = t.post(&key, sms("during")).await;
    assert_eq!(during.status, StatusCode::SERVICE_UNAVAILABLE, "{}", during.body);
    assert!(!caught.is_finished(), "the request made during the outage waited for the caught write to be settled");
    dropper.away.store(false, Ordering::SeqCst);
    let caught = caught.await.expect("caught");
    assert_eq!(caught.status, StatusCode::ACCEPTED, "settled once the database is back: {}", caught.body);
    let stored: Vec<String> = sqlx::query_scalar("SELECT content->>'text' FROM notifications ORDER BY created_at")
        .fetch_all(t.pool())
        .await
        .expect("read");
    assert_eq!(stored, vec!["first", "caught"], "the request answered 503 stored nothing");
}

/// Sends deferred by a tenant's daily quota wait for tomorrow. `herald tenants set T --quota
/// sms.per_day=0` (no quota of its own any more) brings them due at once, and they are sent.
#[tokio::test]
async fn a_changed_quota_reaches_the_sends_it_deferred() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let mut conn = t.pool().acquire().await.expect("conn");
    let changes =
        herald::store::keys::TenantChanges { quotas: vec![("sms.per_day".into(), Some(2))], ..Default::default() };
    herald::store::keys::set_tenant(&mut conn, "acme", &changes).await.expect("quota");
    drop(conn);
    for i in 0..6 {
        assert_eq!(t.post(&key, sms(&format!("m{i}"))).await.status, StatusCode::ACCEPTED);
    }
    t.dispatch_until_idle().await;
    let st = statuses(&t).await;
    assert_eq!(st.iter().filter(|s| *s == "sent").count(), 2, "{st:?}");
    assert_eq!(st.iter().filter(|s| *s == "queued").count(), 4, "{st:?}");

    let out = std::process::Command::new(BIN)
        .args(["tenants", "set", "acme", "--quota", "sms.per_day=0"])
        .env("DATABASE_URL", t.app.settings.database.url.expose())
        .env("HERALD__LOG__LEVEL", "warn")
        .output()
        .expect("herald tenants set");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("4 deferred sends are due again"), "{stdout}");
    t.dispatch_until_idle().await;
    assert_eq!(statuses(&t).await, vec!["sent"; 6]);
}

/// A NUL in a URL's path or query is refused before it reaches a handler (PostgreSQL would
/// refuse it as a parameter).
#[tokio::test]
async fn a_nul_in_a_url_is_a_bad_request() {
    let t = TestApp::spawn().await;
    let key = t.key("a", SEND_READ).await;
    for path in ["/v1/notifications?to=a%00b", "/v1/notifications?tag=%00", "/v1/suppressions/sms/%2B1%00"] {
        let r = t.get(&key, path).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.body);
    }
}
