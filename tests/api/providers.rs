//! Every adapter end to end from `POST /v1/notifications` through its fake; failover, the
//! circuit breaker, pacing and the chaos provider.

use std::time::Duration;

use herald::config::{ProviderSettings, Secret, Settings};
use herald::providers::{chaos, webhook};
use herald::store::keys::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fake_http::FakeHttp;
use crate::helpers::{TestApp, email};
use crate::provider_settings::{mailgun, sendgrid, ses, twilio, vonage};

const SEND_READ: &[Scope] = &[Scope::Send, Scope::Read];

fn route(s: &mut Settings, channel: &str, providers: Vec<(&str, ProviderSettings)>) {
    let names: Vec<String> = providers.iter().map(|(n, _)| n.to_string()).collect();
    for (n, p) in providers {
        s.providers.insert(n.into(), p);
    }
    match channel {
        "email" => s.channels.email.providers = names,
        "sms" => s.channels.sms.providers = names,
        _ => s.channels.push.providers = names,
    }
}

fn rich_email(to: &str) -> Value {
    json!({"channel": "email", "to": to, "content": {
        "subject": "Your receipt", "text": "Thanks", "html": "<p>Thanks</p>",
        "from": "Billing <billing@acme.test>", "reply_to": "help@acme.test",
        "unsubscribe_url": "https://acme.test/u/1"}})
}

fn sms(to: &str) -> Value {
    json!({"channel": "sms", "to": to, "content": {"text": "Your code is 123456"}})
}

async fn send_and_dispatch(t: &TestApp, key: &str, body: Value) -> Value {
    let r = t.post(key, body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    t.dispatch_until_idle().await;
    t.notification(key, r.body["id"].as_str().expect("id")).await
}

#[tokio::test]
async fn sendgrid_sends_with_from_reply_to_and_one_click_unsubscribe() {
    let fake = FakeHttp::sendgrid().await;
    let origin = fake.origin.clone();
    let t = TestApp::spawn_with(move |s| route(s, "email", vec![("sg", sendgrid(&origin).into())])).await;
    let key = t.key("acme", SEND_READ).await;
    let n = send_and_dispatch(&t, &key, rich_email("alice@example.com")).await;
    assert_eq!(n["status"], "sent", "{n}");
    assert_eq!(n["provider"], "sg");
    assert_eq!(n["provider_message_id"], "sgmsg1");
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let b = reqs[0].json();
    assert_eq!(b["personalizations"][0]["to"][0]["email"], "alice@example.com");
    assert_eq!(b["personalizations"][0]["custom_args"]["herald_id"], n["id"]);
    assert_eq!(b["from"], json!({"email": "billing@acme.test", "name": "Billing"}));
    assert_eq!(b["reply_to"], json!({"email": "help@acme.test"}));
    assert_eq!(b["content"][0], json!({"type": "text/plain", "value": "Thanks"}));
    assert_eq!(b["content"][1]["type"], "text/html");
    assert_eq!(b["headers"]["List-Unsubscribe"], "<https://acme.test/u/1>");
    assert_eq!(b["headers"]["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click");
}

#[tokio::test]
async fn a_wrong_sendgrid_key_is_a_provider_problem_not_a_lost_message() {
    let fake = FakeHttp::sendgrid().await;
    let origin = fake.origin.clone();
    let t = TestApp::spawn_with(move |s| {
        let mut p = sendgrid(&origin);
        p.api_key = Secret::new("SG.wrong");
        route(s, "email", vec![("sg", p.into())]);
        s.dispatch.max_attempts = 2;
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    let n = send_and_dispatch(&t, &key, email("alice@example.com", "x")).await;
    assert_eq!(fake.requests().len(), 2, "retried: the key may be fixed");
    assert_eq!(n["status"], "failed");
    assert!(n["error"].as_str().expect("error").contains("401"), "{n}");
}

#[tokio::test]
async fn ses_sends_a_sigv4_signed_request() {
    let fake = FakeHttp::ses().await;
    let origin = fake.origin.clone();
    let t = TestApp::spawn_with(move |s| route(s, "email", vec![("ses", ses(&origin).into())])).await;
    let key = t.key("acme", SEND_READ).await;
    let n = send_and_dispatch(&t, &key, rich_email("bob@example.com")).await;
    assert_eq!(n["status"], "sent", "{n}");
    assert_eq!(n["provider_message_id"], "0100018c-ses-1");
    let b = fake.requests()[0].json();
    assert_eq!(b["FromEmailAddress"], "Billing <billing@acme.test>");
    assert_eq!(b["Destination"]["ToAddresses"], json!(["bob@example.com"]));
    assert_eq!(b["ReplyToAddresses"], json!(["help@acme.test"]));
    assert_eq!(b["Content"]["Simple"]["Subject"]["Data"], "Your receipt");
    assert_eq!(b["Content"]["Simple"]["Body"]["Html"]["Data"], "<p>Thanks</p>");
    assert_eq!(
        b["Content"]["Simple"]["Headers"][0],
        json!({"Name": "List-Unsubscribe", "Value": "<https://acme.test/u/1>"})
    );
    assert_eq!(b["ConfigurationSetName"], "herald");
    assert_eq!(b["EmailTags"][0], json!({"Name": "herald_id", "Value": n["id"]}));
}

#[tokio::test]
async fn a_bad_ses_signature_is_refused_by_the_fake() {
    let fake = FakeHttp::ses().await;
    let origin = fake.origin.clone();
    let t = TestApp::spawn_with(move |s| {
        let mut p = ses(&origin);
        p.secret_access_key = Secret::new("not-the-secret");
        route(s, "email", vec![("ses", p.into())]);
        s.dispatch.max_attempts = 1;
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    let n = send_and_dispatch(&t, &key, email("bob@example.com", "x")).await;
    assert_eq!(n["status"], "failed");
    assert!(n["error"].as_str().expect("error").contains("SignatureDoesNotMatch"), "{n}");
}

#[tokio::test]
async fn mailgun_sends_a_form_with_headers_and_our_id() {
    let fake = FakeHttp::mailgun().await;
    let origin = fake.origin.clone();
    let t = TestApp::spawn_with(move |s| route(s, "email", vec![("mg", mailgun(&origin).into())])).await;
    let key = t.key("acme", SEND_READ).await;
    let n = send_and_dispatch(&t, &key, rich_email("carol@example.com")).await;
    assert_eq!(n["status"], "sent", "{n}");
    assert_eq!(n["provider_message_id"], "2026112614.1@mg.example.com");
    let r = &fake.requests()[0];
    assert_eq!(r.field("to").as_deref(), Some("carol@example.com"));
    assert_eq!(r.field("from").as_deref(), Some("Billing <billing@acme.test>"));
    assert_eq!(r.field("h:Reply-To").as_deref(), Some("help@acme.test"));
    assert_eq!(r.field("h:List-Unsubscribe").as_deref(), Some("<https://acme.test/u/1>"));
    assert_eq!(r.field("h:List-Unsubscribe-Post").as_deref(), Some("List-Unsubscribe=One-Click"));
    assert_eq!(r.field("v:herald_id").as_deref(), n["id"].as_str());
}

#[tokio::test]
async fn twilio_sends_with_a_status_callback_on_the_public_url() {
    let fake = FakeHttp::twilio().await;
    let origin = fake.origin.clone();
    let t = TestApp::spawn_with(move |s| {
        route(s, "sms", vec![("twilio-main", twilio(&origin).into())]);
        s.server.public_base_url = "https://herald.acme.test".into();
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    let n = send_and_dispatch(&t, &key, sms("+14155550100")).await;
    assert_eq!(n["status"], "sent", "{n}");
    assert_eq!(n["provider_message_id"], format!("SM{:032x}", 1));
    assert_eq!(n["events"][1]["detail"]["provider_status"], "queued");
    let r = &fake.requests()[0];
    assert_eq!(r.field("To").as_deref(), Some("+14155550100"));
    assert_eq!(r.field("From").as_deref(), Some("+15005550006"));
    assert_eq!(r.field("Body").as_deref(), Some("Your code is 123456"));
    assert_eq!(r.field("StatusCallback").as_deref(), Some("https://herald.acme.test/webhooks/twilio-main"));
}

#[tokio::test]
async fn twilio_without_a_public_url_sends_no_status_callback_and_can_use_a_messaging_service() {
    let fake = FakeHttp::twilio().await;
    let origin = fake.origin.clone();
    let t = TestApp::spawn_with(move |s| {
        let mut p = twilio(&origin);
        p.from = None;
        p.messaging_service_sid = Some("MG00000000000000000000000000000001".into());
        route(s, "sms", vec![("twilio", p.into())]);
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    assert_eq!(send_and_dispatch(&t, &key, sms("+14155550100")).await["status"], "sent");
    let r = &fake.requests()[0];
    assert_eq!(r.field("StatusCallback"), None);
    assert_eq!(r.field("MessagingServiceSid").as_deref(), Some("MG00000000000000000000000000000001"));
}

#[tokio::test]
async fn an_invalid_number_at_twilio_fails_without_retry_or_failover() {
    let tw = FakeHttp::twilio().await;
    let vo = FakeHttp::vonage().await;
    tw.plan(vec![(400, vec![("content-type", "application/json".into())],
        json!({"code": 21211, "message": "The 'To' number +14155550199 is not a valid phone number.", "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}).to_string())]);
    let (a, b) = (tw.origin.clone(), vo.origin.clone());
    let t = TestApp::spawn_with(move |s| {
        route(s, "sms", vec![("twilio", twilio(&a).into()), ("vonage", vonage(&b).into())]);
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    let n = send_and_dispatch(&t, &key, sms("+14155550199")).await;
    assert_eq!(n["status"], "failed");
    assert_eq!(n["events"][1]["detail"]["error_class"], "recipient_invalid");
    assert_eq!(tw.requests().len(), 1);
    assert!(vo.requests().is_empty(), "a bad recipient is not another provider's problem");
}

#[tokio::test]
async fn vonage_errors_inside_http_200_are_classified_and_retried() {
    let fake = FakeHttp::vonage().await;
    fake.plan(vec![(200, vec![("content-type", "application/json".into())],
        json!({"message-count": "1", "messages": [{"status": "1", "error-text": "Throughput Rate Exceeded - please wait [ 30 ] and retry"}]}).to_string())]);
    let origin = fake.origin.clone();
    let t = TestApp::spawn_with(move |s| route(s, "sms", vec![("vonage", vonage(&origin).into())])).await;
    let key = t.key("acme", SEND_READ).await;
    let n = send_and_dispatch(&t, &key, sms("+447911123456")).await;
    assert_eq!(n["status"], "sent", "{n}");
    assert_eq!(n["events"][1]["detail"]["error_class"], "rate_limited");
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].field("to").as_deref(), Some("447911123456"));
    assert_eq!(reqs[1].field("client-ref").as_deref(), n["id"].as_str());
    assert_eq!(n["provider_message_id"], "0C00000000000002");
}

#[tokio::test]
async fn a_provider_outage_fails_over_to_the_next_provider() {
    let sg = FakeHttp::sendgrid().await;
    sg.plan(vec![(503, vec![], "upstream unavailable".into())]);
    let origin = sg.origin.clone();
    let t = TestApp::spawn_with(move |s| {
        let smtp = s.providers["mail"].clone();
        route(s, "email", vec![("sg", sendgrid(&origin).into()), ("mail", smtp)]);
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    let n = send_and_dispatch(&t, &key, email("dana@example.com", "Failover")).await;
    assert_eq!(n["status"], "sent", "{n}");
    assert_eq!(n["provider"], "mail");
    assert_eq!(n["events"][1]["provider"], "sg");
    assert_eq!(n["events"][1]["status"], "retrying");
    assert_eq!(sg.requests().len(), 1);
    assert_eq!(t.smtp.to("dana@example.com").len(), 1);
}

#[tokio::test]
async fn an_open_circuit_skips_the_failing_provider_until_its_cool_down() {
    let sg = FakeHttp::sendgrid().await;
    sg.plan(vec![(503, vec![], "down".into()); 50]);
    let origin = sg.origin.clone();
    let t = TestApp::spawn_with(move |s| {
        let smtp = s.providers["mail"].clone();
        let mut p: ProviderSettings = sendgrid(&origin).into();
        p.common.breaker_failures = 2;
        p.common.breaker_cooldown_ms = 60_000;
        route(s, "email", vec![("sg", p), ("mail", smtp)]);
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    for i in 0..6 {
        let n = send_and_dispatch(&t, &key, email(&format!("u{i}@example.com"), "x")).await;
        assert_eq!(n["status"], "sent");
        assert_eq!(n["provider"], "mail");
    }
    // Two failures opened the circuit; the four later messages went straight to SMTP.
    assert_eq!(sg.requests().len(), 2);
    assert_eq!(t.smtp.messages().len(), 6);
}

#[tokio::test]
async fn when_every_circuit_is_open_messages_wait_instead_of_failing() {
    let sg = FakeHttp::sendgrid().await;
    sg.plan(vec![(503, vec![], "down".into())]);
    let origin = sg.origin.clone();
    let t = TestApp::spawn_with(move |s| {
        let mut p: ProviderSettings = sendgrid(&origin).into();
        p.common.breaker_failures = 1;
        p.common.breaker_cooldown_ms = 700;
        route(s, "email", vec![("sg", p)]);
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    let first = t.post(&key, email("e1@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();
    let d = t.dispatcher();
    assert_eq!(d.run_once().await.expect("run").retried, 1);
    let second = t.post(&key, email("e2@example.com", "x")).await.body["id"].as_str().expect("id").to_owned();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // While every provider of the lane cools down, its jobs are not even claimed (claiming
    // them would only put them back, churning rows with no provider call).
    let s = d.run_once().await.expect("run");
    assert_eq!((s.claimed, s.deferred), (0, 0), "{s:?}");
    assert_eq!(t.notification(&key, &second).await["status"], "queued");
    assert_eq!(t.notification(&key, &second).await["attempts"], 0, "waiting is not an attempt");
    // After the cool-down the probe succeeds and both go out.
    t.dispatch_until_idle().await;
    for id in [first, second] {
        assert_eq!(t.notification(&key, &id).await["status"], "sent");
    }
}

#[tokio::test]
async fn pacing_spaces_sends_and_loses_none() {
    let sg = FakeHttp::sendgrid().await;
    let origin = sg.origin.clone();
    let t = TestApp::spawn_with(move |s| {
        let mut p: ProviderSettings = sendgrid(&origin).into();
        p.common.max_per_second = Some(20.0);
        route(s, "email", vec![("sg", p)]);
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    for i in 0..10 {
        t.post(&key, email(&format!("p{i}@example.com"), "x")).await;
    }
    let s = t.dispatch_until_idle().await;
    assert_eq!(s.sent, 10);
    assert_eq!(s.failed, 0);
    let mut at: Vec<_> = sg.requests().iter().map(|r| r.at).collect();
    at.sort();
    for pair in at.windows(2) {
        // 20/s = one every 50 ms; the fake's clock may see arrivals a little closer.
        assert!(pair[1] - pair[0] >= Duration::from_millis(40), "{:?}", pair[1] - pair[0]);
    }
}

#[tokio::test]
async fn max_in_flight_bounds_concurrent_sends() {
    let tw = FakeHttp::twilio().await;
    tw.delay(Duration::from_millis(30));
    let origin = tw.origin.clone();
    let t = TestApp::spawn_with(move |s| {
        let mut p: ProviderSettings = twilio(&origin).into();
        p.common.max_in_flight = Some(2);
        route(s, "sms", vec![("twilio", p)]);
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    for _ in 0..8 {
        t.post(&key, sms("+14155550100")).await;
    }
    let s = t.dispatch_until_idle().await;
    assert_eq!(s.sent, 8);
    assert_eq!(tw.max_in_flight(), 2);
}

#[tokio::test]
async fn the_chaos_provider_injects_the_configured_failure() {
    let t = TestApp::spawn_with(|s| {
        let p = chaos::Config { failure_rate: 1.0, error_class: chaos::ChaosClass::Permanent, ..Default::default() };
        route(s, "sms", vec![("chaos", p.into())]);
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    let n = send_and_dispatch(&t, &key, sms("+14155550100")).await;
    assert_eq!(n["status"], "failed");
    assert!(n["error"].as_str().expect("error").contains("chaos"));
}

/// Providers with a fixed origin may redirect within it, never to another origin (which would
/// get the request, credentials aside, and whatever it answers in `last_error`).
#[tokio::test]
async fn provider_redirects_are_followed_only_within_the_origin() {
    let fake = FakeHttp::sendgrid().await;
    let elsewhere = FakeHttp::receiver().await;
    let origin = fake.origin.clone();
    let t = TestApp::spawn_with(move |s| route(s, "email", vec![("sg", sendgrid(&origin).into())])).await;
    let key = t.key("acme", SEND_READ).await;
    fake.plan(vec![(307, vec![("location", format!("{}/v3/mail/send", fake.origin))], String::new())]);
    let n = send_and_dispatch(&t, &key, rich_email("a@example.com")).await;
    assert_eq!(n["status"], "sent", "{n}");
    assert_eq!(fake.requests().len(), 2, "the same-origin redirect was followed");

    fake.plan(vec![(307, vec![("location", format!("{}/v3/mail/send", elsewhere.origin))], String::new()); 8]);
    let n = send_and_dispatch(&t, &key, rich_email("b@example.com")).await;
    assert_ne!(n["status"], "sent", "{n}");
    assert!(elsewhere.requests().is_empty(), "a redirect to another origin was followed");
}

/// A provider's answer is read up to 64 KiB: a longer one fails the attempt instead of being
/// read into memory whole.
#[tokio::test]
async fn an_over_long_provider_answer_fails_the_attempt() {
    let fake = FakeHttp::sendgrid().await;
    let origin = fake.origin.clone();
    let t = TestApp::spawn_with(move |s| route(s, "email", vec![("sg", sendgrid(&origin).into())])).await;
    let key = t.key("acme", SEND_READ).await;
    fake.plan(vec![(202, vec![("x-message-id", "big".into())], "x".repeat(1 << 20)); 8]);
    let n = send_and_dispatch(&t, &key, rich_email("a@example.com")).await;
    assert_ne!(n["status"], "sent", "{n}");
    let error = n["events"][1]["detail"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("over 64 KiB"), "{n}");
}

/// The `webhook` provider: any channel, to an endpoint of the operator's, as a signed
/// Standard Webhook with the same `webhook-id` on every attempt; 2xx sent, 503 retried,
/// 400 failed.
#[tokio::test]
async fn the_webhook_provider_posts_signed_messages_to_the_operators_endpoint() {
    let fake = FakeHttp::receiver().await;
    let secret = herald::domain::webhook::new_signing_secret();
    let (url, key_secret) = (format!("{}/gateway/notify", fake.origin), secret.clone());
    let t = TestApp::spawn_with(move |s| {
        let p = webhook::Config { url: url.parse().expect("url"), signing_secret: Secret::new(key_secret) };
        route(s, "sms", vec![("gateway", p.into())]);
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    fake.plan(vec![
        (503, vec![("retry-after", "0".into())], "busy".into()),
        (200, vec![("content-type", "application/json".into())], r#"{"id": "gw-17"}"#.into()),
    ]);
    let mut body = sms("+14155550100");
    body["metadata"] = json!({"order": "A-17"});
    body["tags"] = json!(["otp"]);
    let n = send_and_dispatch(&t, &key, body).await;
    assert_eq!(
        (&n["status"], &n["provider"], &n["provider_message_id"]),
        (&json!("sent"), &json!("gateway"), &json!("gw-17")),
        "{n}"
    );
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2, "retried once after the 503");
    assert_eq!(reqs[0].path, "/gateway/notify");
    assert_eq!(reqs[0].headers["webhook-id"], reqs[1].headers["webhook-id"], "the same id on every attempt");
    for r in &reqs {
        assert!(crate::receipts::verify_with(&secret, &r.headers, &r.body), "signed with signing_secret");
    }
    let b = reqs[1].json();
    assert_eq!(b["id"], n["id"]);
    assert_eq!(
        (&b["channel"], &b["to"], &b["content"]["text"], &b["metadata"]["order"], &b["tags"][0]),
        (&json!("sms"), &json!("+14155550100"), &json!("Your code is 123456"), &json!("A-17"), &json!("otp"))
    );

    // A 4xx is the receiver's final word.
    fake.plan(vec![(400, vec![], "unknown number".into())]);
    let n = send_and_dispatch(&t, &key, sms("+14155550199")).await;
    assert_eq!(n["status"], "failed", "{n}");
    assert!(n["error"].as_str().is_some_and(|e| e.contains("webhook 400")), "{n}");
}

/// Its configuration is checked like every other kind's, naming the key.
#[test]
fn a_webhook_provider_needs_a_url_and_a_real_signing_secret() {
    let base = "[channels.sms]\nproviders = [\"gw\"]\n[providers.gw]\nkind = \"webhook\"\n";
    let load = |extra: &str| {
        let fig = Settings::figment(None)
            .merge(<figment::providers::Toml as figment::providers::Format>::string(&format!("{base}{extra}")));
        Settings::from_figment(&fig).map(|_| ()).map_err(|e| e.to_string())
    };
    let secret = herald::domain::webhook::new_signing_secret();
    assert!(load(&format!("url = \"http://10.0.0.7:9000/notify\"\nsigning_secret = \"{secret}\"\n")).is_ok());
    let e = load(&format!("signing_secret = \"{secret}\"\n")).expect_err("no url");
    assert!(e.contains("providers.gw.url"), "{e}");
    let e = load("url = \"http://gw/notify\"\nsigning_secret = \"notwhsec\"\n").expect_err("bad secret");
    assert!(e.contains("providers.gw.signing_secret") && e.contains("whsec_"), "{e}");
    let e = load(&format!("url = \"ftp://gw/notify\"\nsigning_secret = \"{secret}\"\n")).expect_err("bad url");
    assert!(e.contains("providers.gw.url"), "{e}");
}
