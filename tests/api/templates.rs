//! Templates: versions, locales with fallback, strict rendering at acceptance, previews with the
//! SMS encoding and a GSM-7-safe offer, and what an accepted notification keeps.

use herald::store::keys::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fake_http::FakeHttp;
use crate::helpers::TestApp;
use crate::provider_settings::twilio;

const SEND_READ: &[Scope] = &[Scope::Send, Scope::Read];

fn welcome() -> Value {
    json!({
        "default_locale": "en",
        "email": {"subject": "Welcome, {{ first_name }}", "text": "Hi {{ first_name }}",
                  "html": "<p>Hi {{ first_name }}</p>"},
        "sms": {"text": "Hi {{ first_name }}, your code is {{ code }}"},
        "push": {"title": "Welcome", "body": "Hi {{ first_name }}", "data": {"screen": "home"}},
        "locales": {
            "pt": {"sms": {"text": "Olá {{ first_name }}, o seu código é {{ code }}"},
                   "email": {"subject": "Bem-vindo, {{ first_name }}", "text": "Olá {{ first_name }}"}},
            "pt-BR": {"sms": {"text": "Oi {{ first_name }}, seu código é {{ code }}"}}
        }
    })
}

async fn put(t: &TestApp, key: &str, name: &str, body: Value) -> crate::helpers::Response {
    t.request("PUT", &format!("/v1/templates/{name}"), Some(key), Some(body)).await
}

fn sms_from(template: Value, locale: Option<&str>) -> Value {
    let mut n = json!({"channel": "sms", "to": "+14155550100"});
    n["template"] = template;
    if let Some(l) = locale {
        n["locale"] = json!(l);
    }
    n
}

#[tokio::test]
async fn every_put_is_a_new_immutable_version_and_get_reads_any() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let r = put(&t, &key, "welcome", welcome()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!((r.body["name"].clone(), r.body["version"].clone()), (json!("welcome"), json!(1)));
    assert_eq!(r.body["channels"], json!(["email", "sms", "push"]));
    assert_eq!(r.headers.get("location").and_then(|v| v.to_str().ok()), Some("/v1/templates/welcome?version=1"));
    let r = put(&t, &key, "welcome", json!({"sms": {"text": "v2 {{ first_name }}"}})).await;
    assert_eq!(r.body["version"], 2, "{}", r.body);

    let latest = t.get(&key, "/v1/templates/welcome").await;
    assert_eq!(
        (latest.body["version"].clone(), latest.body["sms"]["text"].clone()),
        (json!(2), json!("v2 {{ first_name }}"))
    );
    let first = t.get(&key, "/v1/templates/welcome?version=1").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body["locales"]["pt-BR"]["sms"]["text"], welcome()["locales"]["pt-BR"]["sms"]["text"]);
    assert_eq!(first.body["default_locale"], "en");

    let r = t.get(&key, "/v1/templates/welcome?version=7").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body["detail"].as_str().is_some_and(|d| d.contains("welcome") && d.contains('7')), "{}", r.body);
    assert_eq!(t.get(&key, "/v1/templates/nope").await.status, StatusCode::NOT_FOUND);
    assert_eq!(t.get(&key, "/v1/templates/welcome?version=zero").await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn templates_are_listed_by_name_in_pages_and_belong_to_their_tenant() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    for name in ["c-reset", "a-welcome", "b-receipt"] {
        assert_eq!(put(&t, &key, name, json!({"sms": {"text": "x"}})).await.status, StatusCode::CREATED);
    }
    put(
        &t,
        &key,
        "a-welcome",
        json!({"email": {"subject": "s", "text": "t"}, "locales": {"de": {"email": {"subject": "d", "text": "t"}}}}),
    )
    .await;
    let page = t.get(&key, "/v1/templates?limit=2").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let names: Vec<&str> =
        page.body["items"].as_array().expect("items").iter().filter_map(|i| i["name"].as_str()).collect();
    assert_eq!(names, ["a-welcome", "b-receipt"]);
    assert_eq!(page.body["items"][0]["version"], 2);
    assert_eq!(page.body["items"][0]["channels"], json!(["email"]));
    assert_eq!(page.body["items"][0]["locales"], json!(["de"]));
    let cursor = page.body["next_cursor"].as_str().expect("a next page");
    let next = t.get(&key, &format!("/v1/templates?limit=2&cursor={cursor}")).await;
    assert_eq!(next.body["items"][0]["name"], "c-reset");
    assert_eq!(next.body["next_cursor"], Value::Null);

    // Another tenant sees none of them and cannot send with them.
    let other = t.key("globex", SEND_READ).await;
    assert_eq!(t.get(&other, "/v1/templates").await.body["items"], json!([]));
    assert_eq!(t.get(&other, "/v1/templates/a-welcome").await.status, StatusCode::NOT_FOUND);
    let r = t.post(&other, sms_from(json!({"name": "c-reset"}), None)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["errors"][0]["pointer"], "/template/name");
    // Reading needs `read`; writing needs `send`.
    let reader = t.key("acme", &[Scope::Read]).await;
    assert_eq!(put(&t, &reader, "x", json!({"sms": {"text": "x"}})).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn bad_templates_are_refused_at_put_naming_the_place() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    let r = put(&t, &key, "broken", json!({"email": {"subject": "Hi", "html": "<p>\n{% if x %}open</p>"}})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["errors"][0]["pointer"], "/email/html");
    let detail = r.body["errors"][0]["detail"].as_str().expect("detail");
    assert!(detail.contains("does not compile") && detail.contains("line 2"), "{detail}");
    assert!(detail.contains("column"), "{detail}");

    let r = put(&t, &key, "broken", json!({"sms": {"text": "x", "colour": "red"}})).await;
    assert_eq!(r.body["errors"][0]["pointer"], "/sms/colour", "{}", r.body);
    let r =
        put(&t, &key, "broken", json!({"sms": {"text": "x"}, "locales": {"bad tag!": {"sms": {"text": "y"}}}})).await;
    assert_eq!(r.body["errors"][0]["pointer"], "/locales/bad tag!", "{}", r.body);
    let r = put(&t, &key, "bad%20name", json!({"sms": {"text": "x"}})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    // Nothing was stored.
    assert_eq!(t.get(&key, "/v1/templates/broken").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_send_renders_at_acceptance_with_the_best_locale_and_keeps_what_it_rendered() {
    let fake = FakeHttp::twilio().await;
    let origin = fake.origin.clone();
    let t = TestApp::spawn_with(move |s| {
        s.providers.insert("twilio".into(), twilio(&origin).into());
        s.channels.sms.providers = vec!["twilio".into()];
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    put(&t, &key, "welcome", welcome()).await;
    let data = json!({"first_name": "Ana", "code": 4321});

    let cases = [
        (Some("pt-BR"), "Oi Ana, seu código é 4321", json!("pt-BR")),
        (Some("pt-PT"), "Olá Ana, o seu código é 4321", json!("pt")),
        (Some("de"), "Hi Ana, your code is 4321", json!("en")),
        (None, "Hi Ana, your code is 4321", json!("en")),
    ];
    let mut ids = Vec::new();
    for (locale, text, used) in &cases {
        let r = t.post(&key, sms_from(json!({"name": "welcome", "data": data}), *locale)).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
        assert_eq!(r.body["content"]["text"], *text);
        assert_eq!(r.body["template"], json!({"name": "welcome", "version": 1, "locale": used}));
        assert_eq!(r.body["sms"]["encoding"], if text.contains('ó') { "UCS-2" } else { "GSM-7" });
        ids.push(r.body["id"].as_str().expect("id").to_owned());
    }
    // pt-BR has no email part: the default's is used, and said so.
    let r = t
        .post(
            &key,
            json!({"channel": "email", "to": "ana@example.com", "locale": "pt-BR",
                           "template": {"name": "welcome", "data": {"first_name": "<Ana>"}}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.body["content"]["subject"], "Bem-vindo, <Ana>");
    assert_eq!(r.body["template"]["locale"], "pt");

    // A new version changes nothing already accepted; the send carries the rendered text.
    put(&t, &key, "welcome", json!({"sms": {"text": "changed"}})).await;
    t.dispatch_until_idle().await;
    let n = t.notification(&key, &ids[0]).await;
    assert_eq!(n["status"], "sent", "{n}");
    assert_eq!(n["content"]["text"], "Oi Ana, seu código é 4321");
    assert_eq!(n["template"]["version"], 1);
    let bodies: Vec<String> = fake.requests().iter().filter_map(|r| r.field("Body")).collect();
    assert!(bodies.contains(&"Oi Ana, seu código é 4321".to_owned()), "{bodies:?}");
    assert!(!bodies.iter().any(|b| b == "changed"));
    // A pinned version still renders the old text.
    let r = t.post(&key, sms_from(json!({"name": "welcome", "version": 1, "data": data}), None)).await;
    assert_eq!(r.body["content"]["text"], "Hi Ana, your code is 4321");
    let r = t.post(&key, sms_from(json!({"name": "welcome", "data": data}), None)).await;
    assert_eq!(r.body["content"]["text"], "changed");
}

#[tokio::test]
async fn a_missing_variable_is_a_422_at_request_time_naming_it() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    put(&t, &key, "welcome", welcome()).await;
    let r = t.post(&key, sms_from(json!({"name": "welcome", "data": {"first_name": "Ana"}}), None)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["errors"][0]["pointer"], "/template/data/code");
    let detail = r.body["errors"][0]["detail"].as_str().expect("detail");
    assert_eq!(detail, "sms.text uses `code`, which data does not have (line 1, column 38)");

    // In a batch, the item alone is refused, with its index in the pointer.
    let r = t
        .request(
            "POST",
            "/v1/notifications/batch",
            Some(&key),
            Some(json!({"notifications": [
                sms_from(json!({"name": "welcome", "data": {"first_name": "A", "code": 1}}), None),
                sms_from(json!({"name": "welcome", "data": {}}), None),
                sms_from(json!({"name": "welcome", "version": 9}), None),
                sms_from(json!({"name": "nope"}), None),
            ]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let results = r.body["results"].as_array().expect("results");
    assert_eq!(results[0]["status"], "queued", "{}", r.body);
    assert_eq!(results[1]["problem"]["errors"][0]["pointer"], "/notifications/1/template/data/first_name");
    assert_eq!(results[2]["problem"]["errors"][0]["pointer"], "/notifications/2/template/version");
    assert!(results[2]["problem"]["errors"][0]["detail"].as_str().is_some_and(|d| d.contains("no version 9")));
    assert_eq!(results[3]["problem"]["errors"][0]["pointer"], "/notifications/3/template/name");

    // Content and template together, a channel the template lacks, rendered content that breaks
    // the channel's rules: each a 422 pointing at the template.
    put(&t, &key, "sms-only", json!({"sms": {"text": "{{ text }}"}})).await;
    let r = t.post(&key, json!({"channel": "push", "to": {"fcm": "tok"}, "template": {"name": "sms-only"}})).await;
    assert_eq!(r.body["errors"][0]["pointer"], "/template", "{}", r.body);
    let r = t.post(&key, sms_from(json!({"name": "sms-only", "data": {"text": "  "}}), None)).await;
    assert_eq!(r.body["errors"][0]["pointer"], "/template", "{}", r.body);
    assert!(r.body["errors"][0]["detail"].as_str().is_some_and(|d| d.contains("rendered sms text")), "{}", r.body);
    let r = t.post(&key, sms_from(json!({"name": "sms-only", "data": {"text": "x"}}), Some("not a locale"))).await;
    assert_eq!(r.body["errors"][0]["pointer"], "/locale", "{}", r.body);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications").fetch_one(t.pool()).await.expect("count");
    assert_eq!(count, 1, "only the valid batch item was stored");
}

#[tokio::test]
async fn a_preview_renders_every_part_says_the_variant_and_offers_gsm7() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    put(&t, &key, "welcome", welcome()).await;
    put(&t, &key, "quotes", json!({"sms": {"text": "It’s {{ first_name }}’s day — enjoy"}})).await;

    let preview = |name: &str, body: Value| {
        let path = format!("/v1/templates/{name}/preview");
        let (t, key) = (&t, &key);
        async move { t.request("POST", &path, Some(key), Some(body)).await }
    };
    let r = preview("welcome", json!({"data": {"first_name": "<Ana>", "code": 7}, "locale": "pt-BR"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["locale"], "pt-BR");
    assert_eq!(r.body["requested_locale"], "pt-BR");
    assert_eq!(r.body["sms"]["locale"], "pt-BR");
    assert_eq!(r.body["sms"]["content"]["text"], "Oi <Ana>, seu código é 7");
    assert_eq!(r.body["email"]["locale"], "pt");
    assert_eq!(r.body["push"]["locale"], "en");
    assert_eq!(r.body["push"]["content"]["data"], json!({"screen": "home"}));
    let r = preview("welcome", json!({"data": {"first_name": "<Ana>"}, "channel": "email"})).await;
    assert_eq!(r.body["email"]["content"]["html"], "<p>Hi &lt;Ana&gt;</p>", "{}", r.body);
    assert_eq!(r.body["email"]["content"]["text"], "Hi <Ana>");
    assert!(r.body.get("sms").is_none());

    // Any part of the content may be a template, the unsubscribe link too, and is checked.
    put(
        &t,
        &key,
        "digest",
        json!({"email": {"subject": "Digest", "text": "…",
        "unsubscribe_url": "{{ site }}/u/{{ user_id }}"}}),
    )
    .await;
    let r = preview("digest", json!({"data": {"site": "https://acme.example", "user_id": 17}})).await;
    assert_eq!(r.body["email"]["content"]["unsubscribe_url"], "https://acme.example/u/17", "{}", r.body);
    let r = t
        .post(
            &key,
            json!({"channel": "email", "to": "a@example.com",
                                "template": {"name": "digest", "data": {"site": "acme", "user_id": 1}}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(
        r.body["errors"][0]["detail"].as_str().is_some_and(|d| d.contains("rendered email unsubscribe_url")),
        "{}",
        r.body
    );

    let r = preview("quotes", json!({"data": {"first_name": "Ana"}})).await;
    assert_eq!(
        r.body["sms"]["sms"],
        json!({"encoding": "UCS-2", "segments": 1, "ucs2_characters": ["’", "—"]}),
        "{}",
        r.body
    );
    assert_eq!(r.body["sms"]["gsm7_safe"]["text"], "It's Ana's day - enjoy");
    assert_eq!(r.body["sms"]["gsm7_safe"]["sms"], json!({"encoding": "GSM-7", "segments": 1}));

    let r = preview("welcome", json!({"data": {"first_name": "Ana"}, "channel": "sms"})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body["errors"][0]["detail"].as_str().is_some_and(|d| d.contains("`code`")), "{}", r.body);
    assert_eq!(preview("nope", json!({})).await.status, StatusCode::NOT_FOUND);
    assert_eq!(preview("welcome", json!({"version": 3})).await.status, StatusCode::NOT_FOUND);
    let r = preview("welcome", json!({"colour": 1, "channel": "fax"})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let pointers: Vec<&str> =
        r.body["errors"].as_array().expect("errors").iter().filter_map(|e| e["pointer"].as_str()).collect();
    assert_eq!(pointers, ["/colour", "/channel"]);
}
