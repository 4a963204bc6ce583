//! Property tests (proptest) of everything that parses what others send: notification bodies,
//! recipients, trace context, and every provider's receipt verifier. Whatever the input, no
//! panic; a parse that succeeds is stable; a receipt with a made-up signature never verifies.
//! `PROPTEST_CASES` sets the number of cases (256 by default; the README gives a longer run).

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use herald::domain::notification::ParseOptions;
use herald::domain::recipient::{EmailAddress, PhoneNumber, recipient_key};
use herald::domain::trace::TraceParent;
use herald::domain::{Channel, NewNotification, Recipient};
use herald::providers::{mailgun, sendgrid, twilio, vonage};
use herald::receipts::Incoming;
use proptest::prelude::*;
use serde_json::{Value, json};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        prop_oneof![Just("email"), Just("sms"), Just("push"), Just("+14155550100"), Just("a@b.cd")]
            .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("channel".to_owned()),
                    Just("to".to_owned()),
                    Just("content".to_owned()),
                    Just("subject".to_owned()),
                    Just("text".to_owned()),
                    Just("send_at".to_owned()),
                    Just("fcm".to_owned()),
                    Just("web_push".to_owned()),
                    ".{0,12}",
                ],
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

static NO_TEMPLATES: std::sync::LazyLock<herald::domain::template::Book> = std::sync::LazyLock::new(Default::default);

fn opts() -> ParseOptions<'static> {
    ParseOptions::new(&NO_TEMPLATES, Box::leak(Box::new(herald::domain::template::RenderBudget::per_request())))
}

fn headers(pairs: &[(String, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v.as_str())) {
            h.append(k, v);
        }
    }
    h
}

fn header_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(
        (
            prop_oneof![
                Just("x-twilio-signature".to_owned()),
                Just("x-twilio-email-event-webhook-signature".to_owned()),
                Just("x-twilio-email-event-webhook-timestamp".to_owned()),
                Just("content-type".to_owned()),
                "[a-z-]{1,20}",
            ],
            "[ -~]{0,60}",
        ),
        0..5,
    )
}

proptest! {
    #[test]
    fn a_notification_body_never_panics(body in json_value()) {
        let _ = NewNotification::parse(&body, opts());
        for channel in Channel::ALL {
            let _ = Recipient::parse(channel, &body, false);
        }
    }

    #[test]
    fn a_nearly_valid_notification_never_panics(
        channel in prop_oneof![Just("email".to_owned()), Just("sms".to_owned()), Just("push".to_owned()), ".{0,8}"],
        to in json_value(),
        content in json_value(),
        extra in json_value(),
    ) {
        let mut body = json!({"channel": channel, "to": to, "content": content});
        if let Value::Object(m) = extra {
            for (k, v) in m { body[k] = v; }
        }
        let _ = NewNotification::parse(&body, opts());
    }

    #[test]
    fn recipients_parse_stably(raw in ".{0,64}") {
        for channel in Channel::ALL {
            if let Ok(key) = recipient_key(Some(channel), &raw) {
                let again = recipient_key(Some(channel), &key);
                prop_assert_eq!(again, Ok(key.clone()), "{}", channel);
            }
        }
        let _ = recipient_key(None, &raw);
        if let Ok(p) = PhoneNumber::parse(&raw) {
            prop_assert_eq!(PhoneNumber::parse(p.as_str()).map(|q| q.as_str().to_owned()), Ok(p.as_str().to_owned()));
        }
        if let Ok(e) = EmailAddress::parse(&raw) {
            prop_assert_eq!(EmailAddress::parse(e.as_str()).map(|q| q.as_str().to_owned()), Ok(e.as_str().to_owned()));
        }
    }

    #[test]
    fn trace_context_parses_stably(raw in prop_oneof![".{0,80}", "00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}"]) {
        if let Some(t) = TraceParent::parse(&raw) {
            prop_assert_eq!(TraceParent::parse(&t.to_string()), Some(t.clone()));
            let child = t.child();
            prop_assert_eq!(child.trace_id(), t.trace_id());
        }
    }

    /// Every verifier, on whatever arrives: no panic, and a made-up signature never passes.
    #[test]
    fn receipts_with_made_up_signatures_never_verify(
        body in prop::collection::vec(any::<u8>(), 0..512),
        json_body in json_value(),
        query in "[ -~]{0,120}",
        pairs in header_pairs(),
        post in any::<bool>(),
    ) {
        let h = headers(&pairs);
        let method = if post { "POST" } else { "GET" };
        let max_age = Duration::from_secs(300);
        for body in [Bytes::from(body), Bytes::from(json_body.to_string())] {
            let incoming = Incoming { method, query: &query, headers: &h, body: &body };
            prop_assert!(mailgun::receipts::verify(&incoming, "mailgun-key", max_age).is_err());
            let key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).expect("key");
            prop_assert!(sendgrid::receipts::verify(&incoming, Some(key.verifying_key()), max_age).is_err());
            prop_assert!(twilio::receipts::verify(&incoming, "auth-token", "https://herald.example", "/webhooks/tw").is_err());
            for m in ["md5hash", "md5", "sha1", "sha256", "sha512"] {
                prop_assert!(vonage::receipts::verify(&incoming, Some("secret"), m, max_age).is_err());
            }
        }
    }
}
