//! Push end to end: FCM (service-account OAuth), APNs (HTTP/2, ES256) and Web Push (VAPID,
//! aes128gcm) through fakes that verify what the real services verify.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald::config::{ProviderSettings, Secret};
use herald::providers::{apns, fcm, web_push};
use herald::store::keys::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fake_http::{self, FakeHttp};
use crate::helpers::TestApp;

const SEND_READ: &[Scope] = &[Scope::Send, Scope::Read];
const APNS_DEVICE: &str = "b5f8e1c2d3a4f5e6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0";
/// A subscriber's key pair and auth secret (test values).
const UA_PRIVATE: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";
const UA_AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
const VAPID_PRIVATE: &str = "RS0WdYWWo1HajXg3NZR1olzCf31i-ZBGDkFyCs7j1jw";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn fcm(origin: &str) -> ProviderSettings {
    let account = json!({
        "type": "service_account", "project_id": fake_http::FCM_PROJECT, "private_key_id": "k1",
        "private_key": std::fs::read_to_string(fixture("fcm-test-key.pem")).expect("key"),
        "client_email": fake_http::FCM_CLIENT_EMAIL, "token_uri": format!("{origin}/token"),
    });
    fcm::Config {
        service_account_json: Secret::new(account.to_string()),
        base_url: Some(origin.parse().expect("origin")),
    }
    .into()
}

fn apns(origin: &str) -> apns::Config {
    apns::Config {
        team_id: fake_http::APNS_TEAM.into(),
        key_id: fake_http::APNS_KEY_ID.into(),
        private_key_file: fixture("apns-test-key.p8").into(),
        topic: fake_http::APNS_TOPIC.into(),
        environment: apns::ApnsEnvironment::Production,
        base_url: Some(origin.parse().expect("origin")),
    }
}

fn web_push() -> ProviderSettings {
    let mut p = ProviderSettings::from(web_push::Config {
        vapid_private_key: Secret::new(VAPID_PRIVATE),
        vapid_subject: "mailto:ops@acme.test".into(),
    });
    p.common.allow_private_networks = true;
    p
}

fn subscription(endpoint: &str) -> Value {
    let secret = p256::SecretKey::from_slice(&URL_SAFE_NO_PAD.decode(UA_PRIVATE).expect("b64")).expect("key");
    let public = p256::EncodedPoint::from(secret.public_key());
    json!({"endpoint": endpoint, "keys": {"p256dh": URL_SAFE_NO_PAD.encode(public.as_bytes()), "auth": UA_AUTH}})
}

async fn spawn(providers: Vec<(&'static str, ProviderSettings)>) -> TestApp {
    TestApp::spawn_with(move |s| {
        s.channels.push.providers = providers.iter().map(|(n, _)| n.to_string()).collect();
        for (n, p) in providers {
            s.providers.insert(n.into(), p);
        }
    })
    .await
}

async fn send(t: &TestApp, key: &str, to: Value) -> Value {
    let r = t.post(key, json!({"channel": "push", "to": to, "content": {"title": "Hi", "body": "Your order shipped", "data": {"order": "A-17"}}})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    t.dispatch_until_idle().await;
    t.notification(key, r.body["id"].as_str().expect("id")).await
}

#[tokio::test]
async fn fcm_exchanges_a_signed_jwt_for_a_token_caches_it_and_sends() {
    let fake = FakeHttp::fcm().await;
    let t = spawn(vec![("fcm", fcm(&fake.origin))]).await;
    let key = t.key("acme", SEND_READ).await;
    let n1 = send(&t, &key, json!({"fcm": "device-token-1"})).await;
    let n2 = send(&t, &key, json!({"fcm": "device-token-2"})).await;
    assert_eq!(n1["status"], "sent", "{n1}");
    assert_eq!(n2["status"], "sent");
    assert!(n1["provider_message_id"].as_str().expect("id").starts_with("projects/test-project/messages/"));
    let reqs = fake.requests();
    assert_eq!(reqs.iter().filter(|r| r.path == "/token").count(), 1, "the token is cached");
    let sends: Vec<_> = reqs.iter().filter(|r| r.path.ends_with("messages:send")).collect();
    assert_eq!(sends.len(), 2);
    let m = &sends[0].json()["message"];
    assert_eq!(m["token"], "device-token-1");
    assert_eq!(m["notification"], json!({"title": "Hi", "body": "Your order shipped"}));
    assert_eq!(m["data"], json!({"order": "A-17"}));
}

#[tokio::test]
async fn an_unregistered_fcm_token_is_recipient_invalid_and_not_retried() {
    let fake = FakeHttp::fcm().await;
    fake.plan(vec![(200, vec![("content-type", "application/json".into())], json!({"access_token": "ya29.fake-x", "expires_in": 3599}).to_string()),
        (404, vec![("content-type", "application/json".into())], json!({"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND",
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}}).to_string())]);
    let t = spawn(vec![("fcm", fcm(&fake.origin))]).await;
    let key = t.key("acme", SEND_READ).await;
    let n = send(&t, &key, json!({"fcm": "stale-token"})).await;
    assert_eq!(n["status"], "failed");
    assert_eq!(n["events"][1]["detail"]["error_class"], "recipient_invalid");
    assert_eq!(fake.requests().iter().filter(|r| r.path.ends_with("messages:send")).count(), 1);
}

#[tokio::test]
async fn apns_sends_over_http2_with_a_verified_provider_token() {
    let fake = FakeHttp::apns().await;
    let t = spawn(vec![("apns", apns(&fake.origin).into())]).await;
    let key = t.key("acme", SEND_READ).await;
    let n = send(&t, &key, json!({"apns": APNS_DEVICE})).await;
    assert_eq!(n["status"], "sent", "{n}");
    assert_eq!(n["provider_message_id"], n["id"], "APNs echoes our apns-id");
    let r = &fake.requests()[0];
    assert_eq!(r.version, axum::http::Version::HTTP_2);
    assert_eq!(r.path, format!("/3/device/{APNS_DEVICE}"));
    assert_eq!(r.headers["apns-push-type"], "alert");
    assert_eq!(r.headers["apns-priority"], "10");
    assert_eq!(r.headers["apns-collapse-id"], n["id"].as_str().expect("id"));
    let payload = r.json();
    assert_eq!(payload["aps"]["alert"], json!({"title": "Hi", "body": "Your order shipped"}));
    assert_eq!(payload["order"], "A-17");
}

#[tokio::test]
async fn an_unregistered_apns_device_is_recipient_invalid() {
    let fake = FakeHttp::apns().await;
    fake.plan(vec![(
        410,
        vec![("content-type", "application/json".into())],
        json!({"reason": "Unregistered", "timestamp": 1700000000000u64}).to_string(),
    )]);
    let t = spawn(vec![("apns", apns(&fake.origin).into())]).await;
    let key = t.key("acme", SEND_READ).await;
    let n = send(&t, &key, json!({"apns": APNS_DEVICE})).await;
    assert_eq!(n["status"], "failed");
    assert_eq!(n["events"][1]["detail"]["error_class"], "recipient_invalid");
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn web_push_is_vapid_signed_for_the_origin_with_port_and_decrypts_for_the_subscriber() {
    let fake = FakeHttp::push_service().await;
    let t = spawn(vec![("webpush", web_push())]).await;
    let key = t.key("acme", SEND_READ).await;
    let endpoint = format!("{}/push/sub-1", fake.origin);
    let n = send(&t, &key, json!({"web_push": subscription(&endpoint)})).await;
    assert_eq!(n["status"], "sent", "{n}");
    assert_eq!(n["provider_message_id"], "/push/sub-1/msg/1");
    let r = &fake.requests()[0];
    assert_eq!(r.headers["urgency"], "normal");
    assert_eq!(r.headers["topic"].to_str().expect("topic").len(), 32);
    let ua = p256::SecretKey::from_slice(&URL_SAFE_NO_PAD.decode(UA_PRIVATE).expect("b64")).expect("key");
    let mut auth = web_push_native::Auth::default();
    auth.copy_from_slice(&URL_SAFE_NO_PAD.decode(UA_AUTH).expect("b64"));
    let plain = web_push_native::decrypt(r.body.to_vec(), &ua, &auth).expect("the subscriber can decrypt");
    let payload: Value = serde_json::from_slice(&plain).expect("json");
    assert_eq!(payload["title"], "Hi");
    assert_eq!(payload["data"]["order"], "A-17");
    assert_eq!(payload["id"], n["id"]);
}

#[tokio::test]
async fn a_gone_web_push_subscription_is_recipient_invalid() {
    let fake = FakeHttp::push_service().await;
    fake.plan(vec![(410, vec![], "subscription expired".into())]);
    let t = spawn(vec![("webpush", web_push())]).await;
    let key = t.key("acme", SEND_READ).await;
    let n = send(&t, &key, json!({"web_push": subscription(&format!("{}/push/old", fake.origin))})).await;
    assert_eq!(n["status"], "failed");
    assert_eq!(n["events"][1]["detail"]["error_class"], "recipient_invalid");
}

#[tokio::test]
async fn private_web_push_endpoints_are_refused_unless_allowed() {
    let fake = FakeHttp::push_service().await;
    let mut strict = web_push();
    strict.common.allow_private_networks = false;
    let t = spawn(vec![("webpush", strict)]).await;
    let key = t.key("acme", SEND_READ).await;
    let r = t.post(&key, json!({"channel": "push", "to": {"web_push": subscription(&format!("{}/push/x", fake.origin))}, "content": {"title": "x"}})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["errors"][0]["pointer"], "/to/web_push/endpoint");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn push_goes_to_the_first_provider_of_the_recipients_kind() {
    let fcm_fake = FakeHttp::fcm().await;
    let apns_fake = FakeHttp::apns().await;
    let t =
        spawn(vec![("apns", apns(&apns_fake.origin).into()), ("fcm", fcm(&fcm_fake.origin)), ("webpush", web_push())])
            .await;
    let key = t.key("acme", SEND_READ).await;
    assert_eq!(send(&t, &key, json!({"fcm": "tok"})).await["provider"], "fcm");
    assert_eq!(send(&t, &key, json!({"apns": APNS_DEVICE})).await["provider"], "apns");
    assert_eq!(apns_fake.requests().len(), 1);
    assert_eq!(fcm_fake.requests().iter().filter(|r| r.path.ends_with("messages:send")).count(), 1);
}

#[tokio::test]
async fn the_fake_apns_refuses_a_token_from_another_team() {
    let fake = FakeHttp::apns().await;
    let mut p = apns(&fake.origin);
    p.team_id = "OTHERTEAM1".into();
    let t = TestApp::spawn_with(move |s| {
        s.channels.push.providers = vec!["apns".into()];
        s.providers.insert("apns".into(), p.into());
        s.dispatch.max_attempts = 1;
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    let n = send(&t, &key, json!({"apns": APNS_DEVICE})).await;
    assert_eq!(n["status"], "failed");
    assert!(n["error"].as_str().expect("error").contains("InvalidProviderToken"), "{n}");
}

/// A Web Push endpoint comes from the caller: a redirect it answers is never followed (it
/// could point anywhere, a private address included, past the guard that checked the first).
#[tokio::test]
async fn a_web_push_redirect_is_not_followed() {
    let fake = FakeHttp::push_service().await;
    let elsewhere = FakeHttp::receiver().await;
    fake.plan(vec![(307, vec![("location", format!("{}/steal", elsewhere.origin))], "moved".into()); 8]);
    let t = spawn(vec![("webpush", web_push())]).await;
    let key = t.key("acme", SEND_READ).await;
    let n = send(&t, &key, json!({"web_push": subscription(&format!("{}/push/x", fake.origin))})).await;
    assert_ne!(n["status"], "sent", "{n}");
    assert!(elsewhere.requests().is_empty(), "the redirect was followed");
}
