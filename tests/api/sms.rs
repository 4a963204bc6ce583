//! SMS that is right: numbers that can exist, national numbers in a configured region stored
//! as E.164, and the encoding and segments every returned SMS carries, with
//! `channels.sms.max_segments` refusing longer texts.

use herald::store::keys::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::TestApp;

fn sms(to: &str, text: &str) -> Value {
    json!({"channel": "sms", "to": to, "content": {"text": text}})
}

#[tokio::test]
async fn numbers_are_validated_and_stored_in_e164() {
    let t = TestApp::spawn_with(|s| s.channels.sms.default_region = Some("GB".into())).await;
    let key = t.key("acme", &[Scope::Send, Scope::Read]).await;
    let r = t.post(&key, sms("07911 123456", "hi")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.body["to"], "+447911123456");
    let id = r.body["id"].as_str().expect("id").to_owned();
    assert_eq!(t.notification(&key, &id).await["to"], "+447911123456");
    // E.164 from anywhere still works; a number that cannot exist does not.
    assert_eq!(t.post(&key, sms("+14155550100", "hi")).await.status, StatusCode::ACCEPTED);
    let r = t.post(&key, sms("+1415555010", "hi")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["errors"][0]["pointer"], "/to");
    assert!(r.body["errors"][0]["detail"].as_str().is_some_and(|d| d.contains("+1415555010")), "{}", r.body);

    let t = TestApp::spawn().await;
    let key = t.key("acme", &[Scope::Send]).await;
    let r = t.post(&key, sms("07911 123456", "hi")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body["errors"][0]["detail"].as_str().is_some_and(|d| d.contains("default_region")), "{}", r.body);
}

#[tokio::test]
async fn every_sms_says_its_encoding_and_segments() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", &[Scope::Send, Scope::Read]).await;
    let post = |text: String| {
        let (t, key) = (&t, &key);
        async move { t.post(key, sms("+14155550100", &text)).await.body["sms"].clone() }
    };
    assert_eq!(post("Your code is 123456".into()).await, json!({"encoding": "GSM-7", "segments": 1}));
    assert_eq!(post("a".repeat(161)).await["segments"], 2);
    assert_eq!(post(format!("{}€", "a".repeat(158))).await, json!({"encoding": "GSM-7", "segments": 1}));
    assert_eq!(post(format!("{}€", "a".repeat(159))).await["segments"], 2);
    assert_eq!(post("It’s here".into()).await, json!({"encoding": "UCS-2", "segments": 1, "ucs2_characters": ["’"]}));
    assert_eq!(post("😀".repeat(36)).await["segments"], 2);
    // And on the notification as read back.
    let r = t.post(&key, sms("+14155550100", "^{}[]~\\|")).await;
    let n = t.notification(&key, r.body["id"].as_str().expect("id")).await;
    assert_eq!(n["sms"], json!({"encoding": "GSM-7", "segments": 1}));
    let email = t.post(&key, crate::helpers::email("a@example.com", "x")).await;
    assert!(email.body.get("sms").is_none(), "only SMS carry it");
}

#[tokio::test]
async fn max_segments_refuses_longer_texts() {
    let t = TestApp::spawn_with(|s| s.channels.sms.max_segments = Some(1)).await;
    let key = t.key("acme", &[Scope::Send]).await;
    assert_eq!(t.post(&key, sms("+14155550100", &"a".repeat(160))).await.status, StatusCode::ACCEPTED);
    let r = t.post(&key, sms("+14155550100", &"a".repeat(161))).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["errors"][0]["pointer"], "/content/text");
    let r = t.post(&key, sms("+14155550100", &format!("{}“quoted”", "a".repeat(63)))).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let detail = r.body["errors"][0]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("UCS-2") && detail.contains('“'), "names what forced UCS-2: {detail}");
}
