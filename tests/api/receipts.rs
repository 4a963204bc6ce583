//! Receipts in, status callbacks out, and suppressions: each provider's receipt signed by a
//! key the test owns (or the provider's published vector scheme), end to end through the API.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use herald::config::{ProviderSettings, Secret};
use herald::store::keys::Scope;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fake_http::{self, FakeHttp};
use crate::helpers::{TestApp, email};
use crate::provider_settings;

const SEND_READ: &[Scope] = &[Scope::Send, Scope::Read];
const PUBLIC: &str = "https://herald.acme.test";
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// An independent X-Twilio-Signature: HMAC-SHA1 over the URL and the sorted parameters.
fn twilio_signature(url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut data = url.to_owned();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(fake_http::TWILIO_TOKEN.as_bytes()).expect("key");
    mac.update(data.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

async fn post_twilio(t: &TestApp, name: &str, params: &[(&str, &str)], signature: &str) -> (StatusCode, Value) {
    let body: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    let r = t
        .client
        .post(format!("{}/webhooks/{name}", t.addr))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature)
        .body(body)
        .send()
        .await
        .expect("post");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A Standard Webhooks verification written from the spec, independent of Herald's signer.
fn verify_standard_webhook(headers: &reqwest::header::HeaderMap, body: &[u8]) -> bool {
    verify_with(WHSEC, headers, body)
}

pub(crate) fn verify_with(secret: &str, headers: &reqwest::header::HeaderMap, body: &[u8]) -> bool {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let key = STANDARD.decode(secret.trim_start_matches("whsec_")).expect("secret");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{}.{}.", h("webhook-id"), h("webhook-timestamp")).as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    h("webhook-signature").split(' ').any(|s| s == expected)
}

async fn twilio_app(callbacks: Option<&FakeHttp>) -> (TestApp, FakeHttp, String) {
    let fake = FakeHttp::twilio().await;
    let origin = fake.origin.clone();
    let t = TestApp::spawn_with(move |s| {
        s.providers.insert("twilio".into(), provider_settings::twilio(&origin).into());
        s.channels.sms.providers = vec!["twilio".into()];
        s.server.public_base_url = PUBLIC.into();
        s.callbacks.signing_secret = Secret::new(WHSEC);
        s.callbacks.max_attempts = 3;
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    let mut body = json!({"channel": "sms", "to": "+14155550100", "content": {"text": "Your code is 123456"}});
    if let Some(cb) = callbacks {
        body["callback_url"] = json!(format!("{}/hooks/herald", cb.origin));
    }
    let r = t.post(&key, body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    t.dispatch_until_idle().await;
    (t, fake, key)
}

#[tokio::test]
async fn a_signed_twilio_receipt_delivers_and_the_caller_gets_a_signed_callback() {
    let receiver = FakeHttp::receiver().await;
    let (t, _fake, key) = twilio_app(Some(&receiver)).await;
    let n = &t.get(&key, "/v1/notifications").await.body["items"][0];
    let (id, sid) =
        (n["id"].as_str().expect("id").to_owned(), n["provider_message_id"].as_str().expect("sid").to_owned());
    assert_eq!(n["status"], "sent");

    let params = [
        ("MessageSid", sid.as_str()),
        ("MessageStatus", "delivered"),
        ("AccountSid", fake_http::TWILIO_SID),
        ("To", "+14155550100"),
    ];
    let sig = twilio_signature(&format!("{PUBLIC}/webhooks/twilio"), &params);
    let (status, body) = post_twilio(&t, "twilio", &params, &sig).await;
    assert_eq!((status, body["applied"].as_i64()), (StatusCode::OK, Some(1)), "{body}");
    // A duplicate is acknowledged and recorded once.
    let (status, body) = post_twilio(&t, "twilio", &params, &sig).await;
    assert_eq!((status, body["duplicates"].as_i64()), (StatusCode::OK, Some(1)));

    t.dispatch_until_idle().await; // delivers the queued callbacks
    let n = t.notification(&key, &id).await;
    assert_eq!(n["status"], "delivered");
    let kinds: Vec<_> =
        n["events"].as_array().expect("events").iter().map(|e| e["type"].as_str().unwrap_or("").to_owned()).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "receipt").count(), 1);
    assert_eq!(kinds.iter().filter(|k| *k == "callback").count(), 2, "{kinds:?}");
    let receipt = n["events"].as_array().expect("events").iter().find(|e| e["type"] == "receipt").expect("receipt");
    assert_eq!(receipt["status"], "delivered");
    assert_eq!(receipt["detail"]["provider_status"], "delivered");

    let calls = receiver.requests();
    assert_eq!(calls.len(), 2, "one callback per status change: sent, delivered");
    let types: Vec<Value> = calls.iter().map(|c| c.json()["type"].clone()).collect();
    assert_eq!(types, vec![json!("notification.sent"), json!("notification.delivered")]);
    for c in &calls {
        assert!(verify_standard_webhook(&c.headers, &c.body), "signature");
        let b = c.json();
        assert_eq!(b["data"]["id"], id.as_str());
        assert!(b["data"].get("events").is_none());
        assert!(b["timestamp"].is_string());
    }
    assert_eq!(calls[1].json()["data"]["status"], "delivered");
    let cb_event = n["events"].as_array().expect("events").iter().rfind(|e| e["type"] == "callback").expect("callback");
    assert_eq!(cb_event["detail"]["response_status"], 200);
}

#[tokio::test]
async fn a_bad_signature_is_refused_and_changes_nothing() {
    let (t, _fake, key) = twilio_app(None).await;
    let n = &t.get(&key, "/v1/notifications").await.body["items"][0];
    let (id, sid) =
        (n["id"].as_str().expect("id").to_owned(), n["provider_message_id"].as_str().expect("sid").to_owned());
    let params = [("MessageSid", sid.as_str()), ("MessageStatus", "delivered")];
    let forged = twilio_signature("https://attacker.test/webhooks/twilio", &params);
    let (status, body) = post_twilio(&t, "twilio", &params, &forged).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["status"], 401);
    let (status, _) = post_twilio(&t, "twilio", &params, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let n = t.notification(&key, &id).await;
    assert_eq!(n["status"], "sent");
    assert!(n["events"].as_array().expect("events").iter().all(|e| e["type"] != "receipt"));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM receipts").fetch_one(t.pool()).await.expect("count");
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn receipts_out_of_order_never_move_a_status_backwards() {
    let (t, _fake, key) = twilio_app(None).await;
    let n = &t.get(&key, "/v1/notifications").await.body["items"][0];
    let (id, sid) =
        (n["id"].as_str().expect("id").to_owned(), n["provider_message_id"].as_str().expect("sid").to_owned());
    for state in ["delivered", "sent", "queued", "undelivered"] {
        let params = [("MessageSid", sid.as_str()), ("MessageStatus", state)];
        let sig = twilio_signature(&format!("{PUBLIC}/webhooks/twilio"), &params);
        assert_eq!(post_twilio(&t, "twilio", &params, &sig).await.0, StatusCode::OK);
    }
    let n = t.notification(&key, &id).await;
    assert_eq!(n["status"], "delivered");
    let receipts: Vec<&Value> =
        n["events"].as_array().expect("events").iter().filter(|e| e["type"] == "receipt").collect();
    assert_eq!(receipts.len(), 4, "each distinct receipt is recorded once");
    assert_eq!(receipts[1]["detail"]["status_unchanged"], true);
}

#[tokio::test]
async fn a_receipt_for_an_unknown_message_is_acknowledged_and_kept() {
    let (t, _fake, _key) = twilio_app(None).await;
    let params = [("MessageSid", "SMdoesnotexist"), ("MessageStatus", "delivered")];
    let sig = twilio_signature(&format!("{PUBLIC}/webhooks/twilio"), &params);
    let (status, body) = post_twilio(&t, "twilio", &params, &sig).await;
    assert_eq!((status, body["unmatched"].as_i64()), (StatusCode::OK, Some(1)));
    assert_eq!(herald::store::receipts::unmatched(t.pool(), "twilio").await.expect("unmatched").len(), 1);
}

#[tokio::test]
async fn an_opt_out_reported_by_twilio_suppresses_the_number() {
    let (t, fake, key) = twilio_app(None).await;
    let sid = t.get(&key, "/v1/notifications").await.body["items"][0]["provider_message_id"]
        .as_str()
        .expect("sid")
        .to_owned();
    let params = [("MessageSid", sid.as_str()), ("MessageStatus", "undelivered"), ("ErrorCode", "21610")];
    let sig = twilio_signature(&format!("{PUBLIC}/webhooks/twilio"), &params);
    assert_eq!(post_twilio(&t, "twilio", &params, &sig).await.0, StatusCode::OK);
    let list = t.get(&key, "/v1/suppressions?channel=sms").await;
    assert_eq!(list.body["items"][0]["recipient"], "+14155550100", "{}", list.body);
    assert_eq!(list.body["items"][0]["source"], "twilio");
    let r = t.post(&key, json!({"channel": "sms", "to": "+14155550100", "content": {"text": "again"}})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.body["status"], "suppressed");
    t.dispatch_until_idle().await;
    assert_eq!(fake.requests().len(), 1, "no provider is called for a suppressed recipient");
}

#[tokio::test]
async fn status_callbacks_are_retried_until_the_receiver_answers() {
    let receiver = FakeHttp::receiver().await;
    receiver.plan(vec![(503, vec![], "down".into()), (500, vec![], "still down".into())]);
    let (t, _fake, key) = twilio_app(Some(&receiver)).await;
    let id = t.get(&key, "/v1/notifications").await.body["items"][0]["id"].as_str().expect("id").to_owned();
    let n = t.notification(&key, &id).await;
    let attempts: Vec<&Value> =
        n["events"].as_array().expect("events").iter().filter(|e| e["type"] == "callback").collect();
    assert_eq!(attempts.len(), 3, "{n}");
    assert_eq!(attempts[0]["detail"]["response_status"], 503);
    assert_eq!(attempts[2]["detail"]["response_status"], 200);
    let calls = receiver.requests();
    assert_eq!(calls.len(), 3);
    // The same event each time: the webhook-id is stable across retries.
    assert_eq!(calls[0].headers["webhook-id"], calls[2].headers["webhook-id"]);
}

#[tokio::test]
async fn a_tenant_default_callback_url_and_secret_are_used() {
    let receiver = FakeHttp::receiver().await;
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let mut conn = t.pool().acquire().await.expect("conn");
    let url = format!("{}/tenant-hook", receiver.origin);
    let changes = herald::store::keys::TenantChanges {
        callback_url: Some(&url),
        signing_secret: Some(secret),
        ..Default::default()
    };
    herald::store::keys::set_tenant(&mut conn, "acme", &changes).await.expect("set");
    drop(conn);
    let later = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("t");
    let mut body = email("x@example.com", "x");
    body["send_at"] = json!(later);
    let id = t.post(&key, body).await.body["id"].as_str().expect("id").to_owned();
    assert_eq!(
        t.request("POST", &format!("/v1/notifications/{id}/cancel"), Some(&key), None).await.status,
        StatusCode::OK
    );
    t.dispatch_until_idle().await;
    let calls = receiver.requests();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].path, "/tenant-hook");
    assert_eq!(calls[0].json()["type"], "notification.cancelled");
    let h = |n: &str| calls[0].headers[n].to_str().expect("h").to_owned();
    let key_bytes = STANDARD.decode(secret.trim_start_matches("whsec_")).expect("b64");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key_bytes).expect("key");
    mac.update(format!("{}.{}.", h("webhook-id"), h("webhook-timestamp")).as_bytes());
    mac.update(&calls[0].body);
    assert_eq!(h("webhook-signature"), format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())));
}

#[tokio::test]
async fn a_private_callback_url_is_refused_at_request_time_and_again_at_delivery() {
    let receiver = FakeHttp::receiver().await;
    let t = TestApp::spawn_with(|s| s.callbacks.signing_secret = Secret::new(WHSEC)).await;
    let key = t.key("acme", SEND_READ).await;
    // Accepted while private networks are allowed (the test configuration)...
    let mut body = email("y@example.com", "x");
    body["callback_url"] = json!(format!("{}/hook", receiver.origin));
    let id = t.post(&key, body.clone()).await.body["id"].as_str().expect("id").to_owned();
    // ...a worker whose configuration forbids them refuses at delivery, and says why.
    let mut strict = (*t.app.settings).clone();
    strict.callbacks.allow_private_networks = false;
    let worker = herald::dispatch::Dispatcher::new(t.pool().clone(), t.app.registry.clone(), &strict);
    for _ in 0..3 {
        worker.run_once().await.expect("run");
    }
    assert!(receiver.requests().is_empty());
    let n = t.notification(&key, &id).await;
    let cb = n["events"].as_array().expect("events").iter().find(|e| e["type"] == "callback").expect("callback event");
    let error = cb["detail"]["error"].as_str().expect("error");
    assert!(error.contains("https") || error.contains("private"), "{cb}");
    assert_eq!(cb["detail"]["gave_up"], true);

    // And an API with the guard on refuses the URL at request time.
    let guarded = TestApp::spawn_with(|s| s.callbacks.allow_private_networks = false).await;
    let r = guarded.post(&guarded.key("acme", SEND_READ).await, body).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["errors"][0]["pointer"], "/callback_url");
}

/// A callback URL whose name resolves only to private addresses at delivery time (DNS changed,
/// or a rebinding name) is refused by the resolver the connection uses: no connection is
/// tried, so the timeline says "refused" and tells nothing about the address.
#[tokio::test]
async fn a_callback_to_a_name_that_resolves_to_a_private_address_is_refused_unprobed() {
    use herald::providers::public_net::{PublicOnly, client_with};
    let receiver = FakeHttp::receiver().await;
    let port = receiver.origin.rsplit(':').next().expect("port").to_owned();
    let t = TestApp::spawn_with(|s| s.callbacks.signing_secret = Secret::new(WHSEC)).await;
    let key = t.key("acme", SEND_READ).await;
    let mut body = email("z@example.com", "x");
    body["callback_url"] = json!(format!("https://hooks.example.test:{port}/hook"));
    let id = t.post(&key, body).await.body["id"].as_str().expect("id").to_owned();
    let mut strict = (*t.app.settings).clone();
    strict.callbacks.allow_private_networks = false;
    // The name answers with the receiver's own address, 127.0.0.1.
    let resolver = PublicOnly::with_lookup(|_| Box::pin(async { Ok(vec!["127.0.0.1".parse().expect("ip")]) }));
    let http = client_with(Some(resolver)).expect("client");
    let worker =
        herald::dispatch::Dispatcher::with_callback_client(t.pool().clone(), t.app.registry.clone(), &strict, http);
    for _ in 0..3 {
        worker.run_once().await.expect("run");
    }
    assert!(receiver.requests().is_empty(), "nothing reached the address");
    let n = t.notification(&key, &id).await;
    let cb = n["events"].as_array().expect("events").iter().find(|e| e["type"] == "callback").expect("callback event");
    let error = cb["detail"]["error"].as_str().expect("error");
    assert!(error.starts_with("refused: hooks.example.test resolves only to private"), "{cb}");
    assert!(cb["detail"].get("response_status").is_none(), "{cb}");
    assert_eq!(cb["detail"]["gave_up"], true, "refused for good, not retried: {cb}");
}

#[tokio::test]
async fn suppressions_can_be_listed_added_and_removed_per_tenant() {
    let t = TestApp::spawn().await;
    let a = t.key("tenant-a", SEND_READ).await;
    let b = t.key("tenant-b", SEND_READ).await;
    let r = t
        .request(
            "POST",
            "/v1/suppressions",
            Some(&a),
            Some(json!({"channel": "email", "recipient": "Bob@Example.com", "reason": "asked us"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["recipient"], "bob@example.com");
    let again = t
        .request(
            "POST",
            "/v1/suppressions",
            Some(&a),
            Some(json!({"channel": "email", "recipient": "BOB@example.com"})),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    let bad = t.request("POST", "/v1/suppressions", Some(&a), Some(json!({"channel": "sms", "recipient": "12"}))).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.body["errors"][0]["pointer"], "/recipient");
    for (channel, recipient) in [("sms", "+14155550100"), ("push", "fcm-token-1")] {
        let r = t
            .request("POST", "/v1/suppressions", Some(&a), Some(json!({"channel": channel, "recipient": recipient})))
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    assert_eq!(t.get(&a, "/v1/suppressions").await.body["items"].as_array().expect("items").len(), 3);
    assert_eq!(t.get(&b, "/v1/suppressions").await.body["items"], json!([]), "tenant scoped");

    // A suppressed recipient on each channel: accepted, suppressed, no provider call.
    for body in [
        email("bob@example.com", "x"),
        json!({"channel": "sms", "to": "+14155550100", "content": {"text": "x"}}),
        json!({"channel": "push", "to": {"fcm": "fcm-token-1"}, "content": {"title": "x"}}),
    ] {
        let r = t.post(&a, body).await;
        assert_eq!((r.status, r.body["status"].as_str()), (StatusCode::ACCEPTED, Some("suppressed")), "{}", r.body);
        assert_eq!(r.body["events"][0]["type"], "accepted");
        assert_eq!(r.body["events"][1]["type"], "suppressed");
    }
    assert_eq!(
        t.post(&b, email("bob@example.com", "x")).await.body["status"],
        "queued",
        "another tenant is not suppressed"
    );
    t.dispatch_until_idle().await;
    assert_eq!(t.smtp.to("bob@example.com").len(), 1, "only tenant b's message was sent");

    let del = t.request("DELETE", &format!("/v1/suppressions/sms/{}", "%2B14155550100"), Some(&a), None).await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    let del = t.request("DELETE", "/v1/suppressions/sms/%2B14155550100", Some(&a), None).await;
    assert_eq!(del.status, StatusCode::NOT_FOUND);
    assert_eq!(
        t.post(&a, json!({"channel": "sms", "to": "+14155550100", "content": {"text": "x"}})).await.body["status"],
        "queued"
    );
}

#[tokio::test]
async fn a_suppression_added_after_acceptance_stops_the_send() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let id = t.post(&key, email("late@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();
    let r = t
        .request(
            "POST",
            "/v1/suppressions",
            Some(&key),
            Some(json!({"channel": "email", "recipient": "late@example.com"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    t.dispatch_until_idle().await;
    assert_eq!(t.notification(&key, &id).await["status"], "suppressed");
    assert!(t.smtp.messages().is_empty());
}

#[tokio::test]
async fn a_hard_smtp_rejection_suppresses_the_address() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    t.smtp.plan(&["550 5.1.1 no such user"]);
    t.post(&key, email("gone@example.com", "x")).await;
    t.dispatch_until_idle().await;
    let list = t.get(&key, "/v1/suppressions").await;
    assert_eq!(list.body["items"][0]["recipient"], "gone@example.com");
    assert_eq!(list.body["items"][0]["source"], "mail");
    assert_eq!(t.post(&key, email("gone@example.com", "x")).await.body["status"], "suppressed");
}

// ---------- Vonage, SendGrid, Mailgun, SES via SNS ----------

fn vonage_sig(params: &[(&str, &str)], secret: &str) -> String {
    let mut sorted: Vec<_> = params.to_vec();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let s: String = sorted.iter().map(|(k, v)| format!("&{k}={}", v.replace(['&', '='], "_"))).collect();
    use md5::Digest;
    hex::encode(md5::Md5::digest(format!("{s}{secret}").as_bytes()))
}

#[tokio::test]
async fn a_signed_vonage_dlr_by_get_delivers_and_a_stale_one_is_refused() {
    let fake = FakeHttp::vonage().await;
    let origin = fake.origin.clone();
    let t = TestApp::spawn_with(move |s| {
        let mut p = provider_settings::vonage(&origin);
        p.signature_secret = Some(Secret::new("dlr-secret"));
        s.providers.insert("vonage".into(), p.into());
        s.channels.sms.providers = vec!["vonage".into()];
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    let id = t.post(&key, json!({"channel": "sms", "to": "+447911123456", "content": {"text": "hi"}})).await.body["id"]
        .as_str()
        .expect("id")
        .to_owned();
    t.dispatch_until_idle().await;
    let mid = t.notification(&key, &id).await["provider_message_id"].as_str().expect("mid").to_owned();
    let now = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
    let dlr = |ts: &str| {
        let params = vec![
            ("msisdn", "447911123456"),
            ("to", "Acme"),
            ("messageId", mid.as_str()),
            ("status", "delivered"),
            ("err-code", "0"),
            ("client-ref", id.as_str()),
            ("message-timestamp", "2026-11-26 12:00:00"),
            ("timestamp", ts),
            ("nonce", "n-1"),
        ];
        let sig = vonage_sig(&params, "dlr-secret");
        let mut all: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        all.push(("sig".into(), sig));
        url::form_urlencoded::Serializer::new(String::new()).extend_pairs(all).finish()
    };
    let stale = t.client.get(format!("{}/webhooks/vonage?{}", t.addr, dlr("1385047698"))).send().await.expect("get");
    assert_eq!(stale.status(), StatusCode::UNAUTHORIZED);
    let ok = t.client.get(format!("{}/webhooks/vonage?{}", t.addr, dlr(&now))).send().await.expect("get");
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(t.notification(&key, &id).await["status"], "delivered");
}

#[tokio::test]
async fn a_sendgrid_bounce_signed_with_ecdsa_bounces_and_suppresses() {
    use p256::ecdsa::{SigningKey, signature::Signer};
    use p256::pkcs8::EncodePublicKey;
    let signing = SigningKey::from_slice(&[7u8; 32]).expect("key");
    let public = STANDARD.encode(signing.verifying_key().to_public_key_der().expect("der").as_bytes());
    let fake = FakeHttp::sendgrid().await;
    let origin = fake.origin.clone();
    let t = TestApp::spawn_with(move |s| {
        let mut p = provider_settings::sendgrid(&origin);
        p.webhook_public_key = Some(public);
        s.providers.insert("sg".into(), p.into());
        s.channels.email.providers = vec!["sg".into()];
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    let id = t.post(&key, email("bounce@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();
    t.dispatch_until_idle().await;
    let events = json!([
        {"email": "bounce@example.com", "timestamp": 1, "event": "processed", "sg_event_id": "ev-1", "sg_message_id": "sgmsg1.filter-1", "herald_id": id},
        {"email": "bounce@example.com", "timestamp": 2, "event": "bounce", "type": "bounce", "reason": "550 5.1.1 unknown user", "sg_event_id": "ev-2", "sg_message_id": "sgmsg1.filter-1"}
    ])
    .to_string();
    let ts = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
    let sign = |body: &str| {
        let sig: p256::ecdsa::Signature = signing.sign(format!("{ts}{body}").as_bytes());
        STANDARD.encode(sig.to_der().as_bytes())
    };
    let post = |sig: String| {
        t.client
            .post(format!("{}/webhooks/sg", t.addr))
            .header("content-type", "application/json")
            .header("x-twilio-email-event-webhook-signature", sig)
            .header("x-twilio-email-event-webhook-timestamp", ts.clone())
            .body(events.clone())
            .send()
    };
    let tampered = sign(&events.replace("bounce", "delivered"));
    assert_eq!(post(tampered).await.expect("post").status(), StatusCode::UNAUTHORIZED);
    let r = post(sign(&events)).await.expect("post");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.expect("json")["applied"], 2);
    assert_eq!(t.notification(&key, &id).await["status"], "bounced");
    assert_eq!(t.get(&key, "/v1/suppressions").await.body["items"][0]["recipient"], "bounce@example.com");
}

/// Email through a fake Mailgun whose receipts are signed with `mailgun-signing-key`.
async fn mailgun_app() -> (TestApp, FakeHttp) {
    let fake = FakeHttp::mailgun().await;
    let origin = fake.origin.clone();
    let t = TestApp::spawn_with(move |s| {
        let mut p = provider_settings::mailgun(&origin);
        p.webhook_signing_key = Some(Secret::new("mailgun-signing-key"));
        s.providers.insert("mg".into(), p.into());
        s.channels.email.providers = vec!["mg".into()];
    })
    .await;
    (t, fake)
}

#[tokio::test]
async fn a_mailgun_complaint_signed_with_hmac_complains_and_suppresses() {
    let (t, _fake) = mailgun_app().await;
    let key = t.key("acme", SEND_READ).await;
    let id = t.post(&key, email("carol@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();
    t.dispatch_until_idle().await;
    let post = |event: &str, token: &str| {
        let ts = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"mailgun-signing-key").expect("key");
        mac.update(format!("{ts}{token}").as_bytes());
        let body = json!({
            "signature": {"timestamp": ts, "token": token, "signature": hex::encode(mac.finalize().into_bytes())},
            "event-data": {"event": event, "id": format!("evt-{token}"), "recipient": "carol@example.com",
                           "message": {"headers": {"message-id": "2026112614.1@mg.example.com"}}}
        });
        t.client.post(format!("{}/webhooks/mg", t.addr)).json(&body).send()
    };
    assert_eq!(post("delivered", "tok-1").await.expect("post").status(), StatusCode::OK);
    assert_eq!(post("complained", "tok-2").await.expect("post").status(), StatusCode::OK);
    assert_eq!(t.notification(&key, &id).await["status"], "complained");
    assert_eq!(t.get(&key, "/v1/suppressions").await.body["items"][0]["reason"], "spam complaint");
}

/// Mailgun's signature covers only timestamp and token: a captured signature replayed with
/// forged event data must be refused, while a redelivery of the same event is acknowledged.
#[tokio::test]
async fn a_replayed_mailgun_signature_with_other_event_data_is_refused() {
    let (t, _fake) = mailgun_app().await;
    let key = t.key("acme", SEND_READ).await;
    let id = t.post(&key, email("dave@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();
    t.dispatch_until_idle().await;
    // One captured signature (timestamp, token, HMAC), sent with two different events.
    let ts = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"mailgun-signing-key").expect("key");
    mac.update(format!("{ts}tok-captured").as_bytes());
    let signature =
        json!({"timestamp": ts, "token": "tok-captured", "signature": hex::encode(mac.finalize().into_bytes())});
    let body = |event: &str, event_id: &str| {
        json!({"signature": signature, "event-data": {"event": event, "id": event_id, "recipient": "dave@example.com",
                                                      "user-variables": {"herald_id": id}}})
    };
    let post = |b: Value| t.client.post(format!("{}/webhooks/mg", t.addr)).json(&b).send();
    let genuine = body("delivered", "evt-genuine");
    assert_eq!(post(genuine.clone()).await.expect("post").status(), StatusCode::OK);
    assert_eq!(t.notification(&key, &id).await["status"], "delivered");

    let forged = post(body("complained", "evt-forged")).await.expect("post");
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED, "the token was used for another event");
    assert_eq!(t.notification(&key, &id).await["status"], "delivered", "the forged complaint changed nothing");
    let suppressions = t.get(&key, "/v1/suppressions").await;
    assert_eq!(suppressions.body["items"].as_array().map(Vec::len), Some(0), "{}", suppressions.body);

    // Mailgun redelivering the genuine event (same token, same event) is acknowledged once.
    let again = post(genuine).await.expect("post");
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<Value>().await.expect("json")["duplicates"], 1);
}

fn sns_sign(msg: &mut Value) {
    let key = aws_lc_rs::rsa::KeyPair::from_pkcs8(include_bytes!("../fixtures/sns-test-key.pk8")).expect("key");
    let to_sign = herald::providers::ses::receipts::string_to_sign(msg);
    let mut sig = vec![0u8; key.public_modulus_len()];
    key.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        to_sign.as_bytes(),
        &mut sig,
    )
    .expect("sign");
    msg["Signature"] = json!(STANDARD.encode(sig));
}

#[tokio::test]
async fn ses_events_via_sns_are_verified_with_the_topic_certificate() {
    const TOPIC: &str = "arn:aws:sns:eu-west-1:123456789012:herald-ses";
    // The fake SNS serves its certificate and records the subscription confirmation.
    let sns = FakeHttp::receiver().await;
    sns.plan(vec![]);
    let cert_host = sns.origin.trim_start_matches("http://").to_owned();
    let ses_fake = FakeHttp::ses().await;
    let (ses_origin, host) = (ses_fake.origin.clone(), cert_host.clone());
    let t = TestApp::spawn_with(move |s| {
        let mut p = provider_settings::ses(&ses_origin);
        p.sns_topic_arns = vec![TOPIC.into()];
        p.sns_cert_hosts = vec![host];
        let mut p = ProviderSettings::from(p);
        p.common.allow_private_networks = true;
        s.providers.insert("ses".into(), p);
        s.channels.email.providers = vec!["ses".into()];
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    let id = t.post(&key, email("dave@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();
    t.dispatch_until_idle().await;
    let ses_message_id = t.notification(&key, &id).await["provider_message_id"].as_str().expect("id").to_owned();

    let cert = std::fs::read_to_string(format!("{}/tests/fixtures/sns-test-cert.pem", env!("CARGO_MANIFEST_DIR")))
        .expect("cert");
    // Every GET to the fake SNS (certificate, SubscribeURL) is answered with the certificate.
    sns.plan(vec![(200, vec![], cert.clone()); 5]);
    let now = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).expect("t");
    let post = |mut msg: Value, sign: bool| {
        if sign {
            sns_sign(&mut msg);
        }
        t.client
            .post(format!("{}/webhooks/ses", t.addr))
            .header("content-type", "text/plain; charset=UTF-8")
            .header("x-amz-sns-message-type", msg["Type"].as_str().unwrap_or("").to_owned())
            .body(msg.to_string())
            .send()
    };
    let base = |ty: &str| {
        json!({"Type": ty, "MessageId": format!("sns-{ty}"), "TopicArn": TOPIC, "Timestamp": now,
        "SignatureVersion": "2", "SigningCertURL": format!("{}/SimpleNotificationService-test.pem", sns.origin)})
    };

    let mut confirm = base("SubscriptionConfirmation");
    confirm["Message"] = json!("You have chosen to subscribe");
    confirm["Token"] = json!("tok");
    confirm["SubscribeURL"] = json!(format!("{}/?Action=ConfirmSubscription&Token=tok", sns.origin));
    assert_eq!(post(confirm, true).await.expect("post").status(), StatusCode::OK);
    assert!(sns.requests().iter().any(|r| r.path.contains("ConfirmSubscription")), "the subscription was confirmed");

    let ses_event = json!({"eventType": "Delivery", "mail": {"messageId": ses_message_id, "destination": ["dave@example.com"],
        "tags": {"herald_id": [id]}}, "delivery": {"recipients": ["dave@example.com"], "smtpResponse": "250 ok"}});
    let mut notification = base("Notification");
    notification["Message"] = json!(ses_event.to_string());
    let mut forged = notification.clone();
    sns_sign(&mut forged);
    forged["Message"] = json!(ses_event.to_string().replace("Delivery", "Bounce"));
    assert_eq!(post(forged, false).await.expect("post").status(), StatusCode::UNAUTHORIZED);
    let mut wrong_topic = notification.clone();
    wrong_topic["TopicArn"] = json!("arn:aws:sns:eu-west-1:999999999999:other");
    assert_eq!(post(wrong_topic, true).await.expect("post").status(), StatusCode::UNAUTHORIZED);
    assert_eq!(post(notification, true).await.expect("post").status(), StatusCode::OK);
    assert_eq!(t.notification(&key, &id).await["status"], "delivered");
    let cert_fetches = sns.requests().iter().filter(|r| r.path.to_ascii_lowercase().ends_with(".pem")).count();
    assert_eq!(cert_fetches, 1, "the certificate is cached");
}

#[tokio::test]
async fn a_receipt_for_a_send_not_yet_recorded_waits_for_it() {
    let fake = FakeHttp::mailgun().await;
    let origin = fake.origin.clone();
    let t = TestApp::spawn_with(move |s| {
        let mut p = provider_settings::mailgun(&origin);
        p.webhook_signing_key = Some(Secret::new("k"));
        s.providers.insert("mg".into(), p.into());
        s.channels.email.providers = vec!["mg".into()];
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    let id = t.post(&key, email("early@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();
    let ts = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"k").expect("key");
    mac.update(format!("{ts}tok").as_bytes());
    let body = json!({"signature": {"timestamp": ts, "token": "tok", "signature": hex::encode(mac.finalize().into_bytes())},
        "event-data": {"event": "rejected", "id": "e1", "user-variables": {"herald_id": id}}});
    let r = t.client.post(format!("{}/webhooks/mg", t.addr)).json(&body).send().await.expect("post");
    assert_eq!(r.status(), StatusCode::OK);
    let counts: Value = r.json().await.expect("json");
    assert_eq!((&counts["held"], &counts["applied"]), (&json!(1), &json!(0)), "{counts}");
    let n = t.notification(&key, &id).await;
    assert_eq!(n["status"], "queued", "held, not applied, while the send job is live");
    assert!(!n["events"].as_array().expect("events").iter().any(|e| e["type"] == "receipt"));
    t.dispatch_until_idle().await;
    assert_eq!(fake.requests().len(), 1, "the send went ahead");
    // Once the send is recorded, the receipt that came first is applied after it.
    let n = t.notification(&key, &id).await;
    assert_eq!(n["status"], "failed");
    let events: Vec<_> =
        n["events"].as_array().expect("events").iter().map(|e| (e["type"].clone(), e["status"].clone())).collect();
    assert_eq!(events[1..], [(json!("attempt"), json!("sent")), (json!("receipt"), json!("failed"))], "{n}");
}

/// Tenants with secrets of their own: each tenant's callbacks verify with its secret only, so
/// no tenant can forge another's.
#[tokio::test]
async fn each_tenant_signs_its_callbacks_with_its_own_secret() {
    use herald::domain::webhook::new_signing_secret as new_secret;
    let receiver = FakeHttp::receiver().await;
    let t = TestApp::spawn().await; // no shared callbacks.signing_secret
    let mut secrets = Vec::new();
    for tenant in ["acme", "globex"] {
        let secret = new_secret();
        let mut conn = t.pool().acquire().await.expect("conn");
        assert!(herald::store::keys::create_tenant(&mut conn, tenant, Some(&secret)).await.expect("tenant"));
        let key = t.key(tenant, SEND_READ).await;
        let mut body = email(&format!("{tenant}@example.com"), "x");
        body["callback_url"] = json!(format!("{}/hook/{tenant}", receiver.origin));
        assert_eq!(t.post(&key, body).await.status, StatusCode::ACCEPTED);
        secrets.push((tenant, secret));
    }
    t.dispatch_until_idle().await;
    let calls = receiver.requests();
    assert_eq!(calls.len(), 2);
    for c in &calls {
        let (tenant, own) = secrets.iter().find(|(t, _)| c.path.ends_with(t)).expect("tenant");
        let (_, other) = secrets.iter().find(|(t, _)| t != tenant).expect("other");
        assert!(verify_with(own, &c.headers, &c.body), "{tenant}'s callback verifies with its secret");
        assert!(!verify_with(other, &c.headers, &c.body), "and not with another tenant's");
    }
}
