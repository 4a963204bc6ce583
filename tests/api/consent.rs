//! Consent: categories of message, and suppressions that block one category or every message.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, email};
use herald::store::keys::Scope;

const SEND_READ: &[Scope] = &[Scope::Send, Scope::Read];

fn of(category: Option<&str>, to: &str) -> Value {
    let mut body = email(to, "hello");
    if let Some(c) = category {
        body["category"] = json!(c);
    }
    body
}

async fn suppress(t: &TestApp, key: &str, recipient: &str, category: Option<&str>) -> crate::helpers::Response {
    let mut body = json!({"channel": "email", "recipient": recipient});
    if let Some(c) = category {
        body["category"] = json!(c);
    }
    t.request("POST", "/v1/suppressions", Some(key), Some(body)).await
}

/// A suppression with a category blocks only notifications of that category, at acceptance
/// and at the send (one added after acceptance); one without a category blocks every
/// notification, transactional ones included; a transactional notification is never touched
/// by a category suppression.
#[tokio::test]
async fn a_category_suppression_blocks_only_its_category() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let r = suppress(&t, &key, "Ann@Example.com", Some("newsletter")).await;
    assert_eq!(
        (r.status, &r.body["category"], &r.body["recipient"]),
        (StatusCode::CREATED, &json!("newsletter"), &json!("ann@example.com")),
        "{}",
        r.body
    );
    assert_eq!(suppress(&t, &key, "ann@example.com", Some("newsletter")).await.status, StatusCode::OK, "idempotent");
    assert_eq!(suppress(&t, &key, "all@example.com", None).await.status, StatusCode::CREATED);

    let status = |r: &crate::helpers::Response| (r.status, r.body["status"].as_str().unwrap_or_default().to_owned());
    let news = t.post(&key, of(Some("newsletter"), "ann@example.com")).await;
    assert_eq!(status(&news), (StatusCode::ACCEPTED, "suppressed".to_owned()), "{}", news.body);
    assert_eq!(news.body["category"], "newsletter");
    let updates = t.post(&key, of(Some("product-updates"), "ann@example.com")).await;
    assert_eq!(status(&updates), (StatusCode::ACCEPTED, "queued".to_owned()));
    let receipt = t.post(&key, of(None, "ann@example.com")).await;
    assert_eq!(status(&receipt), (StatusCode::ACCEPTED, "queued".to_owned()));
    assert_eq!(receipt.body["category"], Value::Null, "transactional");
    for category in [Some("newsletter"), None] {
        let r = t.post(&key, of(category, "all@example.com")).await;
        assert_eq!(status(&r), (StatusCode::ACCEPTED, "suppressed".to_owned()), "{category:?}");
    }
    // Suppressed after acceptance: the send's own check stops it, for its category only.
    let later = t.post(&key, of(Some("newsletter"), "bob@example.com")).await;
    let later_other = t.post(&key, of(Some("digest"), "bob@example.com")).await;
    assert_eq!(suppress(&t, &key, "bob@example.com", Some("newsletter")).await.status, StatusCode::CREATED);
    t.dispatch_until_idle().await;
    let id = |r: &crate::helpers::Response| r.body["id"].as_str().expect("id").to_owned();
    assert_eq!(t.notification(&key, &id(&later)).await["status"], "suppressed");
    assert_eq!(t.notification(&key, &id(&later_other)).await["status"], "sent");
    assert_eq!(t.notification(&key, &id(&updates)).await["status"], "sent");
    assert_eq!(t.notification(&key, &id(&receipt)).await["status"], "sent");
    assert_eq!(t.smtp.to("ann@example.com").len(), 2, "the product update and the transactional one");
    assert_eq!(t.smtp.to("bob@example.com").len(), 1);
    assert!(t.smtp.to("all@example.com").is_empty());
}

/// Suppressions are listed with their category, by category too, and lifted one by one: a
/// category's with `?category=`, the one of every category without.
#[tokio::test]
async fn category_suppressions_are_listed_and_lifted_on_their_own() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    for category in [Some("newsletter"), Some("digest"), None] {
        assert_eq!(suppress(&t, &key, "ann@example.com", category).await.status, StatusCode::CREATED);
    }
    let all = t.get(&key, "/v1/suppressions").await;
    let categories: Vec<&Value> = all.body["items"].as_array().expect("items").iter().map(|s| &s["category"]).collect();
    assert_eq!(categories, [&Value::Null, &json!("digest"), &json!("newsletter")], "{}", all.body);
    let one = t.get(&key, "/v1/suppressions?category=digest").await;
    assert_eq!(one.body["items"].as_array().expect("items").len(), 1, "{}", one.body);
    // Pages walk (channel, recipient, category).
    let first = t.get(&key, "/v1/suppressions?limit=1").await;
    let cursor = first.body["next_cursor"].as_str().expect("a next page").to_owned();
    let second = t.get(&key, &format!("/v1/suppressions?limit=1&cursor={cursor}")).await;
    assert_eq!(second.body["items"][0]["category"], "digest", "{}", second.body);

    let delete = |path: &'static str| t.request("DELETE", path, Some(&key), None);
    assert_eq!(delete("/v1/suppressions/email/ann@example.com?category=digest").await.status, StatusCode::NO_CONTENT);
    assert_eq!(delete("/v1/suppressions/email/ann@example.com?category=digest").await.status, StatusCode::NOT_FOUND);
    assert_eq!(delete("/v1/suppressions/email/ann@example.com").await.status, StatusCode::NO_CONTENT);
    let left = t.get(&key, "/v1/suppressions").await;
    let left: Vec<&Value> = left.body["items"].as_array().expect("items").iter().map(|s| &s["category"]).collect();
    assert_eq!(left, [&json!("newsletter")]);
    // What is left still blocks its category, and only it.
    assert_eq!(t.post(&key, of(Some("newsletter"), "ann@example.com")).await.body["status"], "suppressed");
    assert_eq!(t.post(&key, of(None, "ann@example.com")).await.body["status"], "queued");
}

/// Lists filter by category; a bad category is refused where it was given.
#[tokio::test]
async fn notifications_are_listed_by_category_and_bad_categories_are_refused() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    for (category, to) in
        [(Some("newsletter"), "a@example.com"), (Some("newsletter"), "b@example.com"), (None, "c@example.com")]
    {
        assert_eq!(t.post(&key, of(category, to)).await.status, StatusCode::ACCEPTED);
    }
    let listed = t.get(&key, "/v1/notifications?category=newsletter").await;
    let mut to: Vec<&str> =
        listed.body["items"].as_array().expect("items").iter().filter_map(|n| n["to"].as_str()).collect();
    to.sort_unstable();
    assert_eq!(to, ["a@example.com", "b@example.com"], "{}", listed.body);

    for bad in [json!("News"), json!(""), json!("-x"), json!("a".repeat(65)), json!(7)] {
        let mut body = of(None, "d@example.com");
        body["category"] = bad.clone();
        let r = t.post(&key, body).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(r.body["errors"][0]["pointer"], "/category", "{}", r.body);
        let r = t
            .request(
                "POST",
                "/v1/suppressions",
                Some(&key),
                Some(json!({"channel": "email", "recipient": "d@example.com", "category": bad})),
            )
            .await;
        assert_eq!(
            (r.status, &r.body["errors"][0]["pointer"]),
            (StatusCode::UNPROCESSABLE_ENTITY, &json!("/category")),
            "{}",
            r.body
        );
    }
    assert_eq!(
        t.post(&key, of(Some(&"a".repeat(64)), "d@example.com")).await.status,
        StatusCode::ACCEPTED,
        "64 is the most"
    );
    for path in ["/v1/notifications?category=News", "/v1/suppressions?category=a%20b"] {
        let r = t.get(&key, path).await;
        assert_eq!(
            (r.status, &r.body["errors"][0]["parameter"]),
            (StatusCode::BAD_REQUEST, &json!("category")),
            "{path}: {}",
            r.body
        );
    }
}

/// Stats of one category: its notifications' counts, attempts and failures only; a bad category
/// is a 400 naming the parameter.
#[tokio::test]
async fn stats_can_be_read_for_one_category() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    for (category, to) in
        [(Some("newsletter"), "a@example.com"), (Some("digest"), "b@example.com"), (None, "c@example.com")]
    {
        assert_eq!(t.post(&key, of(category, to)).await.status, StatusCode::ACCEPTED);
    }
    t.dispatch_until_idle().await;
    let total = |body: &Value| body["notifications"]["total"].as_i64();
    let all = t.get(&key, "/v1/stats").await;
    assert_eq!(
        (all.status, total(&all.body), &all.body["category"]),
        (StatusCode::OK, Some(3), &Value::Null),
        "{}",
        all.body
    );
    let news = t.get(&key, "/v1/stats?category=newsletter").await;
    assert_eq!((total(&news.body), &news.body["category"]), (Some(1), &json!("newsletter")), "{}", news.body);
    let sent: i64 =
        news.body["attempts"].as_array().expect("attempts").iter().filter_map(|a| a["attempts"].as_i64()).sum();
    assert_eq!(sent, 1, "one attempt, the newsletter's: {}", news.body);
    let none = t.get(&key, "/v1/stats?category=product-updates").await;
    assert_eq!(total(&none.body), Some(0), "{}", none.body);
    let bad = t.get(&key, "/v1/stats?category=Bad").await;
    assert_eq!((bad.status, &bad.body["errors"][0]["parameter"]), (StatusCode::BAD_REQUEST, &json!("category")));
}
