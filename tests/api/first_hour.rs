//! What a new user meets in the first hour, through the API: problems that say what to do,
//! pages behind problem types, an index and a version, JSON only, callbacks that can be signed,
//! and an admin's view across tenants.

use herald::config::Secret;
use herald::store::keys::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, email, is_problem};

const SEND_READ: &[Scope] = &[Scope::Send, Scope::Read];

#[tokio::test]
async fn json_bodies_must_be_sent_as_json() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let body = email("a@example.com", "x").to_string();
    let send = |ct: Option<&'static str>| {
        let mut req = t.client.post(format!("{}/v1/notifications", t.addr)).bearer_auth(&key).body(body.clone());
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        req.send()
    };
    let r = send(Some("application/x-www-form-urlencoded")).await.expect("post");
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: Value = r.json().await.expect("json");
    assert_eq!(p["type"], "/problems/unsupported-media-type");
    assert!(p["detail"].as_str().expect("detail").contains("application/x-www-form-urlencoded"), "{p}");
    for ok in [Some("application/json"), Some("application/json; charset=utf-8"), None] {
        assert_eq!(send(ok).await.expect("post").status(), StatusCode::ACCEPTED, "{ok:?}");
    }
}

#[tokio::test]
async fn problem_types_index_and_version_are_served() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let r = t.post(&key, json!({"channel": "email", "to": "not an address", "content": {"subject": "x"}})).await;
    assert!(is_problem(&r));
    let page = t.client.get(format!("{}{}", t.addr, r.body["type"].as_str().expect("type"))).send().await.expect("get");
    assert_eq!(page.status(), StatusCode::OK, "the problem's type URI is a page");
    assert!(page.headers()["content-type"].to_str().expect("ct").starts_with("text/html"));
    assert!(page.text().await.expect("text").contains("Invalid request"));
    let missing = t.request("GET", "/problems/no-such-problem", None, None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(is_problem(&missing));

    let index = t.request("GET", "/", None, None).await;
    assert_eq!(index.status, StatusCode::OK);
    assert_eq!(index.body["name"], "herald");
    assert_eq!(index.body["links"]["health"], "/healthz");
    assert_eq!(index.body["version"], herald::VERSION);
    let version = t.request("GET", "/version", None, None).await;
    assert_eq!(version.body["version"], env!("CARGO_PKG_VERSION"));
    assert!(version.body.get("git_revision").is_some());
}

#[tokio::test]
async fn a_bad_header_is_named_as_a_header() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let r = t.post_with_key(&key, "bad key with spaces", email("a@example.com", "x")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["errors"][0]["header"], "Idempotency-Key", "{}", r.body);
    assert!(r.body["errors"][0].get("pointer").is_none(), "{}", r.body);
    assert!(r.body["detail"].as_str().expect("detail").starts_with("Idempotency-Key: "), "{}", r.body);
}

/// Outside dev, a callback that could not be signed is refused at request time, saying how to
/// give the tenant a secret, instead of failing later where only the timeline shows it.
#[tokio::test]
async fn a_callback_that_cannot_be_signed_is_refused_at_request_time() {
    let t = TestApp::spawn().await; // no callbacks.signing_secret; acme has no secret of its own
    let key = t.key("acme", SEND_READ).await;
    let mut body = email("a@example.com", "x");
    body["callback_url"] = json!("https://hooks.example.com/herald");
    let r = t.post(&key, body.clone()).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["errors"][0]["pointer"], "/callback_url");
    let detail = r.body["errors"][0]["detail"].as_str().expect("detail");
    assert!(detail.contains("herald tenants set acme --rotate-signing-secret"), "{detail}");
    // Without a callback the same request is fine.
    assert_eq!(t.post(&key, email("a@example.com", "x")).await.status, StatusCode::ACCEPTED);

    // A tenant with a secret of its own, or a shared secret, can call back.
    let mut conn = t.pool().acquire().await.expect("conn");
    let secret = herald::domain::webhook::new_signing_secret();
    herald::store::keys::create_tenant(&mut conn, "globex", Some(&secret)).await.expect("tenant");
    let globex = t.key("globex", SEND_READ).await;
    assert_eq!(t.post(&globex, body.clone()).await.status, StatusCode::ACCEPTED);
    let shared = TestApp::spawn_with(|s| {
        s.callbacks.signing_secret = Secret::new(herald::domain::webhook::new_signing_secret());
    })
    .await;
    let k = shared.key("acme", SEND_READ).await;
    assert_eq!(shared.post(&k, body).await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn an_admin_sees_each_notifications_tenant_and_can_filter_by_it() {
    let t = TestApp::spawn().await;
    let acme = t.key("acme", SEND_READ).await;
    let globex = t.key("globex", SEND_READ).await;
    let admin = t.key("ops", &[Scope::Admin]).await;
    let a = t.post(&acme, email("a@example.com", "x")).await;
    assert_eq!(a.body["tenant"], "acme");
    t.post(&globex, email("g@example.com", "x")).await;

    let all = t.get(&admin, "/v1/notifications").await;
    let tenants: Vec<&str> =
        all.body["items"].as_array().expect("items").iter().filter_map(|n| n["tenant"].as_str()).collect();
    assert_eq!(tenants, ["globex", "acme"], "{}", all.body);
    let only = t.get(&admin, "/v1/notifications?tenant=acme").await;
    assert_eq!(only.body["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(only.body["items"][0]["tenant"], "acme");
    let none = t.get(&admin, "/v1/notifications?tenant=nobody").await;
    assert_eq!(none.body["items"].as_array().map(Vec::len), Some(0));
    let one = t.get(&admin, &format!("/v1/notifications/{}", a.body["id"].as_str().expect("id"))).await;
    assert_eq!(one.body["tenant"], "acme");

    // A tenant's key may name only its own tenant.
    assert_eq!(t.get(&acme, "/v1/notifications?tenant=acme").await.body["items"].as_array().map(Vec::len), Some(1));
    let other = t.get(&acme, "/v1/notifications?tenant=globex").await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    assert!(is_problem(&other));
}

#[tokio::test]
async fn every_timestamp_in_a_timeline_is_utc_with_z() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    t.smtp.plan(&["451 4.3.0 try again later"]);
    let id = t.post(&key, email("z@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();
    t.dispatch_until_idle().await;
    let n = t.notification(&key, &id).await;
    let retry = n["events"].as_array().expect("events").iter().find(|e| e["status"] == "retrying").expect("retry");
    let next = retry["detail"]["next_attempt_at"].as_str().expect("next_attempt_at");
    assert!(
        next.ends_with('Z')
            && time::OffsetDateTime::parse(next, &time::format_description::well_known::Rfc3339).is_ok(),
        "{next}"
    );
    for e in n["events"].as_array().expect("events") {
        assert!(e["at"].as_str().expect("at").ends_with('Z'), "{e}");
    }
}

/// The answer to a POST shows the same instants a later GET does (microseconds, as stored):
/// a client that compares or keeps the first sees no change.
#[tokio::test]
async fn the_post_answer_and_a_later_get_show_the_same_times() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let mut body = email("same@example.com", "x");
    body["send_at"] = serde_json::json!("2099-01-01T09:00:00.123456789Z");
    body["expires_at"] = serde_json::json!("2099-01-02T09:00:00.987654321+02:00");
    let posted = t.post(&key, body).await.body;
    let got = t.notification(&key, posted["id"].as_str().expect("id")).await;
    for field in ["created_at", "updated_at", "send_at", "expires_at"] {
        assert_eq!(posted[field], got[field], "{field}");
    }
    assert_eq!(got["send_at"], "2099-01-01T09:00:00.123456Z");
    assert_eq!(posted["events"][0]["at"], got["events"][0]["at"], "the accepted event");
}

/// Every list and stats read its parameters into a struct: an unknown parameter is a 400
/// naming it and the known ones, a repeated one a 400 naming it, whatever the route.
#[tokio::test]
async fn unknown_and_repeated_query_parameters_are_named() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    for (path, known) in [
        (
            "/v1/notifications?colour=red",
            "status, channel, to, tag, category, tenant, created_after, created_before, limit, cursor",
        ),
        ("/v1/templates?colour=red", "limit, cursor"),
        ("/v1/templates/welcome?colour=red", "version"),
        ("/v1/suppressions?colour=red", "channel, category, limit, cursor"),
        ("/v1/stats?colour=red", "window, category"),
    ] {
        let r = t.get(&key, path).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.body);
        assert_eq!(r.body["errors"][0]["parameter"], "colour", "{path}: {}", r.body);
        assert_eq!(r.body["errors"][0]["detail"], format!("unknown parameter; known: {known}"), "{path}");
    }
    let r = t.get(&key, "/v1/notifications?status=sent&status=failed").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(r.body["errors"][0]["parameter"], "status");
    assert_eq!(r.body["errors"][0]["detail"], "given more than once");
    let r = t.get(&key, "/v1/notifications?status=sent&limit=2").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}
