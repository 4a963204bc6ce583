//! Accepting under batching: group commit of concurrent single POSTs and the batch API keep
//! idempotency exact and isolate one item's failure from its neighbours.

use std::collections::HashMap;
use std::sync::Arc;

use herald::store::keys::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::helpers::{TestApp, is_problem};

const SEND_READ: &[Scope] = &[Scope::Send, Scope::Read];

fn sms(text: &str) -> Value {
    json!({"channel": "sms", "to": "+14155550100", "content": {"text": text}})
}

/// 5,000 concurrent POSTs over 64 connections, with a random mix of fresh keys, repeated keys
/// (same body) and repeated keys with another body. Afterwards: one notification per distinct
/// key; every 202/200 names the key's one notification; every 409 had a body other than the
/// one that created it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_posts_keep_idempotency_exact_across_groups() {
    let t = Arc::new(TestApp::spawn_with(|s| s.database.max_connections = 10).await);
    let key = t.key("acme", SEND_READ).await;
    const REQUESTS: usize = 5_000;
    const KEYS: usize = 1_500;
    // Deterministic "random" mix: each request picks a key and a body variant.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let plan: Vec<(usize, u8)> = (0..REQUESTS)
        .map(|_| {
            let k = (next() % KEYS as u64) as usize;
            let variant = u8::from(next() % 10 == 0); // one in ten: another body
            (k, variant)
        })
        .collect();
    let slots = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::with_capacity(REQUESTS);
    for (k, variant) in plan {
        let (t, key, slots) = (t.clone(), key.clone(), slots.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire().await.expect("slot");
            let body = sms(&format!("key {k} body {variant}"));
            let r = t.post_with_key(&key, &format!("k-{k}"), body).await;
            (k, variant, r.status, r.body["id"].as_str().map(str::to_owned))
        }));
    }
    let mut by_key: HashMap<usize, Vec<(u8, StatusCode, Option<String>)>> = HashMap::new();
    for task in tasks {
        let (k, variant, status, id) = task.await.expect("task");
        by_key.entry(k).or_default().push((variant, status, id));
    }

    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifications").fetch_one(t.pool()).await.expect("count");
    assert_eq!(stored as usize, by_key.len(), "exactly one notification per distinct key");
    let rows: Vec<(String, uuid::Uuid)> =
        sqlx::query_as("SELECT key, notification_id FROM idempotency_keys").fetch_all(t.pool()).await.expect("keys");
    let stored_ids: HashMap<String, String> = rows.into_iter().map(|(k, id)| (k, id.to_string())).collect();
    for (k, answers) in &by_key {
        let created: Vec<_> = answers.iter().filter(|a| a.1 == StatusCode::ACCEPTED).collect();
        assert_eq!(created.len(), 1, "key {k}: one 202, the others replays or conflicts: {answers:?}");
        let (winner, _, winner_id) = created[0];
        let id = stored_ids.get(&format!("k-{k}")).expect("stored key");
        assert_eq!(winner_id.as_ref(), Some(id), "key {k}: the 202 names the committed notification");
        for (variant, status, got) in answers {
            match *status {
                StatusCode::ACCEPTED => {}
                StatusCode::OK => {
                    assert_eq!(variant, winner, "key {k}: a replay had the creating body");
                    assert_eq!(got.as_ref(), Some(id), "key {k}: a replay names the committed notification");
                }
                StatusCode::CONFLICT => assert_ne!(variant, winner, "key {k}: a 409 had another body"),
                other => panic!("key {k}: unexpected {other}"),
            }
        }
    }
}

#[tokio::test]
async fn batch_answers_per_item_and_commits_the_valid_ones() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let body = json!({"notifications": [
        sms("first"),
        {"channel": "sms", "to": "not a number", "content": {"text": "bad"}},
        {"channel": "email", "to": "bob@example.com", "content": {"subject": "Hi", "text": "Hello"}, "tags": ["t1"]},
        // PostgreSQL cannot store a NUL: the item is refused at its pointer, its neighbours are not.
        {"channel": "sms", "to": "+14155550101", "content": {"text": "nul \u{0000} here"}},
    ]});
    let r = t.request("POST", "/v1/notifications/batch", Some(&key), Some(body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let results = r.body["results"].as_array().expect("results");
    assert_eq!(results.len(), 4);
    for (i, res) in results.iter().enumerate() {
        assert_eq!(res["index"], i);
    }
    assert_eq!(results[0]["status"], "queued");
    assert_eq!(results[2]["status"], "queued");
    let problem = &results[1]["problem"];
    assert_eq!(problem["status"], 422);
    assert_eq!(problem["errors"][0]["pointer"], "/notifications/1/to", "{problem}");
    assert_eq!(results[3]["problem"]["status"], 422, "{}", results[3]);
    assert_eq!(results[3]["problem"]["errors"][0]["pointer"], "/notifications/3/content/text", "{}", results[3]);

    for i in [0, 2] {
        let id = results[i]["id"].as_str().expect("id");
        let n = t.notification(&key, id).await;
        assert_eq!(n["events"][0]["type"], "accepted");
    }
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifications").fetch_one(t.pool()).await.expect("count");
    assert_eq!(stored, 2);
    assert_eq!(t.job_count().await, 2);
    let listed = t.get(&key, "/v1/notifications?tag=t1").await;
    assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(1), "{}", listed.body);
    let summary = t.dispatch_until_idle().await;
    assert_eq!(summary.sent, 2);
}

#[tokio::test]
async fn batch_idempotency_inside_a_batch_and_across_retries() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let with_key = |k: &str, text: &str| {
        let mut n = sms(text);
        n["idempotency_key"] = json!(k);
        n
    };
    let body = json!({"notifications": [
        with_key("a", "one"),
        with_key("a", "one"),       // same key, same body: the same notification
        with_key("a", "changed"),   // same key, another body: a conflict
        with_key("b", "two"),
        sms("no key"),
    ]});
    let r = t.request("POST", "/v1/notifications/batch", Some(&key), Some(body.clone())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let first = r.body["results"].as_array().expect("results").clone();
    assert_eq!(first[0]["id"], first[1]["id"]);
    assert_eq!(first[1]["replayed"], true);
    assert_eq!(first[2]["problem"]["status"], 409);
    assert_ne!(first[3]["id"], first[0]["id"]);

    // Retried whole: the keyed items answer with the same ids; the unkeyed one is new.
    let r = t.request("POST", "/v1/notifications/batch", Some(&key), Some(body)).await;
    let again = r.body["results"].as_array().expect("results");
    for i in [0, 1, 3] {
        assert_eq!(again[i]["id"], first[i]["id"], "item {i}");
        assert_eq!(again[i]["replayed"], true);
    }
    assert_eq!(again[2]["problem"]["status"], 409);
    assert_ne!(again[4]["id"], first[4]["id"]);
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifications").fetch_one(t.pool()).await.expect("count");
    assert_eq!(stored, 4, "a, b and two unkeyed notifications");

    // A batch Idempotency-Key keys every item by its index.
    let batch = json!({"notifications": [sms("x"), sms("y")]});
    let send = || async {
        let req = t
            .client
            .post(format!("{}/v1/notifications/batch", t.addr))
            .bearer_auth(&key)
            .header("Idempotency-Key", "nightly-2026-12-01")
            .json(&batch);
        req.send().await.expect("send").json::<Value>().await.expect("json")
    };
    let (one, two) = (send().await, send().await);
    assert_eq!(one["results"][0]["id"], two["results"][0]["id"]);
    assert_eq!(one["results"][1]["id"], two["results"][1]["id"]);
    assert_ne!(one["results"][0]["id"], one["results"][1]["id"]);
}

#[tokio::test]
async fn batch_limits_are_problems() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let too_many: Vec<Value> = (0..1001).map(|i| sms(&format!("n{i}"))).collect();
    let r = t.request("POST", "/v1/notifications/batch", Some(&key), Some(json!({"notifications": too_many}))).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    assert!(is_problem(&r));

    // 1,000 items are accepted although their body is over server.max_body_bytes (1 MiB).
    let long = "x".repeat(1200);
    let full: Vec<Value> = (0..1000).map(|i| sms(&format!("{i} {long}"))).collect();
    let r = t.request("POST", "/v1/notifications/batch", Some(&key), Some(json!({"notifications": full}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let results = r.body["results"].as_array().expect("results");
    assert!(results.iter().all(|x| x["status"] == "queued"), "every item accepted");

    for bad in [json!({}), json!({"notifications": []}), json!({"notifications": "x"}), json!([1])] {
        let r = t.request("POST", "/v1/notifications/batch", Some(&key), Some(bad.clone())).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {}", r.body);
        assert!(is_problem(&r));
    }
    let read_only = t.key("acme", &[Scope::Read]).await;
    let r = t
        .request("POST", "/v1/notifications/batch", Some(&read_only), Some(json!({"notifications": [sms("x")]})))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

/// A retried request whose body no longer validates (its `expires_at` has passed since)
/// still gets the original notification, single and in a batch; a changed body is a 409.
#[tokio::test]
async fn a_retry_that_no_longer_validates_gets_its_original_answer() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::seconds(2))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("time");
    let body = json!({"channel": "sms", "to": "+14155550100", "content": {"text": "soon"}, "expires_at": soon});
    let first = t.post_with_key(&key, "k-expiring", body.clone()).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    let mut item = body.clone();
    item["idempotency_key"] = json!("item-expiring");
    let batch = json!({"notifications": [item]});
    let first_batch = t.request("POST", "/v1/notifications/batch", Some(&key), Some(batch.clone())).await;
    let first_item = first_batch.body["results"][0]["id"].clone();
    assert!(first_item.is_string(), "{}", first_batch.body);

    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    // Without the key, the same body is now invalid: expires_at is in the past.
    assert_eq!(t.post(&key, body.clone()).await.status, StatusCode::UNPROCESSABLE_ENTITY);
    let retry = t.post_with_key(&key, "k-expiring", body.clone()).await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.body);
    assert_eq!(retry.body["id"], first.body["id"]);
    let mut changed = body.clone();
    changed["content"]["text"] = json!("other");
    assert_eq!(t.post_with_key(&key, "k-expiring", changed).await.status, StatusCode::CONFLICT);

    let again = t.request("POST", "/v1/notifications/batch", Some(&key), Some(batch)).await;
    assert_eq!(again.body["results"][0]["id"], first_item, "{}", again.body);
    assert_eq!(again.body["results"][0]["replayed"], true);
}
