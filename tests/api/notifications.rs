//! The HTTP API: create, read, list, cancel; auth, validation, idempotency, tenant isolation.

use std::time::Duration;

use herald::store::keys::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, email, is_problem};

const SEND_READ: &[Scope] = &[Scope::Send, Scope::Read];

#[tokio::test]
async fn an_email_goes_through_smtp_and_is_sent_with_a_timeline() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let r = t.post(&key, email("alice@example.com", "Welcome Alice")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let id = r.body["id"].as_str().expect("id").to_owned();
    assert_eq!(r.headers["location"], format!("/v1/notifications/{id}").as_str());
    assert_eq!(r.body["status"], "queued");

    let s = t.dispatch_until_idle().await;
    assert_eq!((s.claimed, s.sent), (1, 1));
    let msgs = t.smtp.to("alice@example.com");
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].data.contains("Subject: Welcome Alice"), "{}", msgs[0].data);
    assert_eq!(msgs[0].from, "herald@example.test");

    let n = t.notification(&key, &id).await;
    assert_eq!(n["status"], "sent");
    assert_eq!(n["attempts"], 1);
    assert_eq!(n["provider"], "mail");
    let pmid = n["provider_message_id"].as_str().expect("message id");
    assert!(msgs[0].data.contains(&format!("Message-ID: {pmid}")), "the provider message id is our Message-ID header");
    let events = n["events"].as_array().expect("events");
    let kinds: Vec<_> = events.iter().map(|e| (e["type"].as_str(), e["status"].as_str())).collect();
    assert_eq!(kinds, vec![(Some("accepted"), Some("queued")), (Some("attempt"), Some("sent"))]);
    assert_eq!(events[1]["provider"], "mail");
    assert_eq!(events[1]["detail"]["provider_message_id"], pmid);
    assert_eq!(t.job_count().await, 0, "finished work leaves the hot table");
}

#[tokio::test]
async fn sms_and_push_go_through_the_log_provider() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let sms = t.post(&key, json!({"channel": "sms", "to": "+14155550100", "content": {"text": "Code 123456"}})).await;
    let push = t
        .post(
            &key,
            json!({"channel": "push", "to": {"fcm": "tok:123"}, "content": {"title": "Hi", "data": {"k": "v"}}}),
        )
        .await;
    assert_eq!((sms.status, push.status), (StatusCode::ACCEPTED, StatusCode::ACCEPTED), "{} {}", sms.body, push.body);
    t.dispatch_until_idle().await;
    for r in [sms, push] {
        let n = t.notification(&key, r.body["id"].as_str().expect("id")).await;
        assert_eq!(n["status"], "sent");
        assert_eq!(n["provider"], "console");
    }
}

#[tokio::test]
async fn invalid_requests_get_problems_with_pointers() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;

    let r = t.post(&key, email("not-an-email", "x")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(is_problem(&r), "{}", r.body);
    assert_eq!(r.body["errors"][0]["pointer"], "/to");

    let r = t.post(&key, json!({"channel": "sms", "to": "12345", "content": {"text": "x"}})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["errors"][0]["pointer"], "/to");

    let r = t
        .post(
            &key,
            json!({"channel": "email", "to": "a@example.com", "content": {"text": "no subject"}, "priority": "asap"}),
        )
        .await;
    let pointers: Vec<_> = r.body["errors"].as_array().expect("errors").iter().map(|e| e["pointer"].clone()).collect();
    assert_eq!(pointers, vec![json!("/content/subject"), json!("/priority")]);

    let raw = t
        .client
        .post(format!("{}/v1/notifications", t.addr))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    assert!(raw.headers()["content-type"].to_str().expect("ct").starts_with("application/problem+json"));

    let huge = "x".repeat(2 * 1024 * 1024);
    let r = t.post(&key, json!({"channel": "sms", "to": "+14155550100", "content": {"text": huge}})).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(is_problem(&r), "{}", r.body);

    let r = t
        .post(
            &key,
            json!({"channel": "email", "to": "a@example.com", "content": {"subject": "nul \u{0} here", "text": "x"}}),
        )
        .await;
    assert!(r.status.is_client_error(), "a NUL character is the client's problem: {}", r.status);
    assert!(is_problem(&r), "{}", r.body);

    let r = t.request("GET", "/v1/nothing-here", Some(&key), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(is_problem(&r));

    let r = t.get(&key, "/v1/notifications?limit=0").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["errors"][0]["parameter"], "limit");
    assert_eq!(t.job_count().await, 0, "nothing invalid was queued");
}

#[tokio::test]
async fn a_channel_without_providers_is_refused_at_request_time() {
    let t = TestApp::spawn_with(|s| s.channels.push.providers.clear()).await;
    let key = t.key("acme", SEND_READ).await;
    let r = t.post(&key, json!({"channel": "push", "to": {"fcm": "tok"}, "content": {"title": "x"}})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["errors"][0]["pointer"], "/channel");
}

#[tokio::test]
async fn api_keys_are_required_and_scoped() {
    // Verified keys are cached for server.key_cache_ms: a revocation takes effect within it.
    let t = TestApp::spawn_with(|s| s.server.key_cache_ms = 300).await;
    let r = t.request("POST", "/v1/notifications", None, Some(email("a@example.com", "x"))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(is_problem(&r));
    assert_eq!(r.headers["www-authenticate"], "Bearer");

    let r = t.post("hrld_not-a-real-key", email("a@example.com", "x")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let read_only = t.key("acme", &[Scope::Read]).await;
    let r = t.post(&read_only, email("a@example.com", "x")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(is_problem(&r));

    let send_only = t.key("acme", &[Scope::Send]).await;
    let r = t.get(&send_only, "/v1/notifications").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let mut conn = t.pool().acquire().await.expect("conn");
    let keys = herald::store::keys::list_keys(&mut conn, Some("acme")).await.expect("list");
    let ro = keys.iter().find(|k| k.scopes == ["read"]).expect("read-only key");
    assert!(herald::store::keys::revoke_key(&mut conn, ro.id).await.expect("revoke"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = t.get(&read_only, "/v1/notifications").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "a revoked key stops working once its cache entry lapses");
}

#[tokio::test]
async fn tenants_see_only_their_own_notifications_and_admins_see_all() {
    let t = TestApp::spawn().await;
    let a = t.key("tenant-a", SEND_READ).await;
    let b = t.key("tenant-b", SEND_READ).await;
    let admin = t.key("ops", &[Scope::Admin]).await;
    let id = t.post(&a, email("alice@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();

    let r = t.get(&b, &format!("/v1/notifications/{id}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = t.request("POST", &format!("/v1/notifications/{id}/cancel"), Some(&b), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = t.get(&b, "/v1/notifications").await;
    assert_eq!(r.body["items"], json!([]));

    assert_eq!(t.get(&admin, &format!("/v1/notifications/{id}")).await.status, StatusCode::OK);
    let r = t.get(&admin, "/v1/notifications").await;
    assert_eq!(r.body["items"].as_array().expect("items").len(), 1);
}

#[tokio::test]
async fn an_idempotent_retry_returns_the_original_and_a_changed_body_conflicts() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let first = t.post_with_key(&key, "order-17", email("bob@example.com", "Receipt")).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let again = t.post_with_key(&key, "order-17", email("bob@example.com", "Receipt")).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(again.headers["idempotent-replayed"], "true");

    let changed = t.post_with_key(&key, "order-17", email("carol@example.com", "Receipt")).await;
    assert_eq!(changed.status, StatusCode::CONFLICT);
    assert!(is_problem(&changed));

    // The same key in another tenant is another key.
    let other = t.key("other", SEND_READ).await;
    assert_eq!(
        t.post_with_key(&other, "order-17", email("bob@example.com", "Receipt")).await.status,
        StatusCode::ACCEPTED
    );

    t.dispatch_until_idle().await;
    assert_eq!(t.smtp.to("bob@example.com").len(), 2, "one per tenant, none for the replay");
    assert!(t.smtp.to("carol@example.com").is_empty());
}

#[tokio::test]
async fn concurrent_requests_with_one_idempotency_key_make_one_notification() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let mut handles = Vec::new();
    for _ in 0..20 {
        let (client, addr, key) = (t.client.clone(), t.addr.clone(), key.clone());
        handles.push(tokio::spawn(async move {
            let r = client
                .post(format!("{addr}/v1/notifications"))
                .bearer_auth(key)
                .header("Idempotency-Key", "race-1")
                .json(&email("race@example.com", "once"))
                .send()
                .await
                .expect("send");
            let status = r.status();
            let body: Value = r.json().await.expect("json");
            (status, body["id"].as_str().map(str::to_owned))
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for h in handles {
        let (status, id) = h.await.expect("join");
        assert!(status == StatusCode::ACCEPTED || status == StatusCode::OK, "{status}");
        ids.insert(id.expect("id"));
    }
    assert_eq!(ids.len(), 1);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications").fetch_one(t.pool()).await.expect("count");
    assert_eq!(count, 1);
}

#[tokio::test]
async fn a_scheduled_notification_waits_for_send_at_and_can_be_cancelled() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let later = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("fmt");
    let mut body = email("frank@example.com", "Later");
    body["send_at"] = json!(later);
    let r = t.post(&key, body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.body["status"], "scheduled");
    assert_eq!(r.body["events"][0]["type"], "scheduled");
    let id = r.body["id"].as_str().expect("id").to_owned();

    assert_eq!(t.dispatch_until_idle().await.claimed, 0, "not due yet");
    let r = t.request("POST", &format!("/v1/notifications/{id}/cancel"), Some(&key), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"], "cancelled");
    assert_eq!(r.body["events"].as_array().expect("events").last().expect("event")["type"], "cancelled");
    assert_eq!(t.job_count().await, 0);

    let again = t.request("POST", &format!("/v1/notifications/{id}/cancel"), Some(&key), None).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(is_problem(&again));
    assert!(t.smtp.messages().is_empty());
}

#[tokio::test]
async fn a_scheduled_notification_is_sent_once_due() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::milliseconds(1200))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("fmt");
    let mut body = email("soon@example.com", "Soon");
    body["send_at"] = json!(soon);
    let id = t.post(&key, body).await.body["id"].as_str().expect("id").to_owned();
    let d = t.dispatcher();
    assert_eq!(d.run_once().await.expect("run").claimed, 0);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while d.run_once().await.expect("run").sent == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let n = t.notification(&key, &id).await;
    assert_eq!(n["status"], "sent");
    let sent_at = time::OffsetDateTime::parse(
        n["updated_at"].as_str().expect("t"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("parse");
    let due = time::OffsetDateTime::parse(&soon, &time::format_description::well_known::Rfc3339).expect("parse");
    assert!(sent_at >= due, "not sent before send_at");
}

#[tokio::test]
async fn a_sent_notification_cannot_be_cancelled() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let id = t.post(&key, email("gina@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();
    t.dispatch_until_idle().await;
    let r = t.request("POST", &format!("/v1/notifications/{id}/cancel"), Some(&key), None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(t.notification(&key, &id).await["status"], "sent");
}

#[tokio::test]
async fn listing_filters_and_pages_with_a_cursor() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    for i in 0..5 {
        let mut b = email(&format!("user{i}@example.com"), "x");
        b["tags"] = json!(if i % 2 == 0 { vec!["even"] } else { vec!["odd"] });
        t.post(&key, b).await;
    }
    t.post(&key, json!({"channel": "sms", "to": "+14155550100", "content": {"text": "x"}})).await;
    t.dispatch_until_idle().await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/notifications?channel=email&status=sent&limit=2&cursor={c}"),
            None => "/v1/notifications?channel=email&status=sent&limit=2".into(),
        };
        let r = t.get(&key, &path).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        for item in r.body["items"].as_array().expect("items") {
            assert_eq!(item["channel"], "email");
            assert!(item.get("events").is_none());
            seen.push(item["to"].as_str().expect("to").to_owned());
        }
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec!["user4@example.com", "user3@example.com", "user2@example.com", "user1@example.com", "user0@example.com"]
    );

    let r = t.get(&key, "/v1/notifications?tag=odd").await;
    assert_eq!(r.body["items"].as_array().expect("items").len(), 2);
    let r = t.get(&key, "/v1/notifications?to=user3@EXAMPLE.com").await;
    assert_eq!(r.body["items"].as_array().expect("items").len(), 1);
    let r = t.get(&key, "/v1/notifications?created_after=2999-01-01T00:00:00Z").await;
    assert_eq!(r.body["items"], json!([]));
    let r = t.get(&key, "/v1/notifications?status=bogus").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn health_and_readiness() {
    let t = TestApp::spawn().await;
    let r = t.request("GET", "/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = t.request("GET", "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "ready");
    sqlx::query("DELETE FROM _sqlx_migrations").execute(t.pool()).await.expect("delete");
    let r = t.request("GET", "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(is_problem(&r));
}

/// One recipient key everywhere: the stored key, the list's `to` filter and the suppression
/// list agree on case, whichever form each was given in.
#[tokio::test]
async fn the_to_filter_and_suppressions_use_the_stored_recipient_key() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let id = t.post(&key, email("alice@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();
    for filter in ["Alice@Example.com", "alice@EXAMPLE.com", "alice@example.com"] {
        let page = t.get(&key, &format!("/v1/notifications?to={filter}")).await;
        assert_eq!(page.body["items"].as_array().map(Vec::len), Some(1), "{filter}: {}", page.body);
        assert_eq!(page.body["items"][0]["id"], id.as_str());
    }
    let page = t.get(&key, "/v1/notifications?channel=email&to=ALICE@example.com").await;
    assert_eq!(page.body["items"].as_array().map(Vec::len), Some(1), "{}", page.body);

    // An APNs token suppressed in upper case stops sends to it in lower case, and back.
    let token = "AB".repeat(32);
    let r =
        t.request("POST", "/v1/suppressions", Some(&key), Some(json!({"channel": "push", "recipient": token}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let push = json!({"channel": "push", "to": {"apns": token.to_lowercase()}, "content": {"title": "t", "body": "b"}});
    let r = t.post(&key, push).await;
    assert_eq!(r.body["status"], "suppressed", "{}", r.body);
    let page = t.get(&key, &format!("/v1/notifications?to={token}")).await;
    assert_eq!(page.body["items"].as_array().map(Vec::len), Some(1), "{}", page.body);
    let r = t.request("DELETE", &format!("/v1/suppressions/push/{}", token.to_lowercase()), Some(&key), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);

    // The same for an email suppressed with another case than it is sent with.
    let r = t
        .request(
            "POST",
            "/v1/suppressions",
            Some(&key),
            Some(json!({"channel": "email", "recipient": "Bob@Example.COM"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(t.post(&key, email("bob@example.com", "x")).await.body["status"], "suppressed");
}

/// Migration 0007 lower-cases APNs tokens that older versions stored in suppressions as given,
/// keeping one row where both forms exist.
#[tokio::test]
async fn stored_push_suppressions_are_lower_cased_once() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let tenant: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tenants").fetch_one(t.pool()).await.expect("tenant");
    let (upper, both) = ("AB".repeat(32), "CD".repeat(32));
    for token in [upper.clone(), both.clone(), both.to_lowercase(), "fcm:Token-Case".to_owned()] {
        sqlx::query("INSERT INTO suppressions (tenant_id, channel, recipient, reason, source) VALUES ($1, 'push', $2, 'x', 'api')")
            .bind(tenant)
            .bind(token)
            .execute(t.pool())
            .await
            .expect("insert");
    }
    sqlx::raw_sql(include_str!("../../migrations/0007_push_token_keys.sql")).execute(t.pool()).await.expect("migrate");
    let mut left: Vec<String> =
        sqlx::query_scalar("SELECT recipient FROM suppressions").fetch_all(t.pool()).await.expect("rows");
    left.sort();
    assert_eq!(left, vec![upper.to_lowercase(), both.to_lowercase(), "fcm:Token-Case".to_owned()]);
    let push = json!({"channel": "push", "to": {"apns": upper}, "content": {"title": "t"}});
    assert_eq!(t.post(&key, push).await.body["status"], "suppressed");
}
