//! The operators' API: `POST /v1/notifications/{id}/retry` and `GET /v1/stats`.

use herald::providers::chaos;
use herald::store::keys::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fake_http::FakeHttp;
use crate::helpers::{TestApp, email, is_problem};

const SEND_READ: &[Scope] = &[Scope::Send, Scope::Read];

fn sms(text: &str) -> Value {
    json!({"channel": "sms", "to": "+14155550100", "content": {"text": text}})
}

/// A failed notification is requeued by an admin with a fresh attempt budget and a `retried`
/// event, and is then sent; a key without `admin` may not, and a sent one cannot be retried.
#[tokio::test]
async fn an_admin_retries_a_failed_notification_and_it_is_sent() {
    let (t, fake) = TestApp::with_gateway().await;
    fake.plan(vec![(400, vec![], "bad number".into())]);
    let key = t.key("acme", SEND_READ).await;
    let admin = t.key("ops", &[Scope::Admin]).await;
    let id = t.post(&key, sms("hi")).await.body["id"].as_str().expect("id").to_owned();
    t.dispatch_until_idle().await;
    let n = t.notification(&key, &id).await;
    assert_eq!((n["status"].as_str(), n["attempts"].as_i64()), (Some("failed"), Some(1)), "{n}");

    let path = format!("/v1/notifications/{id}/retry");
    let r = t.request("POST", &path, Some(&key), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = t.request("POST", &path, Some(&admin), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!((r.body["status"].as_str(), r.body["attempts"].as_i64()), (Some("queued"), Some(0)), "{}", r.body);
    let retried = r.body["events"].as_array().expect("events").iter().find(|e| e["type"] == "retried").cloned();
    let retried = retried.expect("a retried event");
    assert_eq!((retried["status"].as_str(), retried["detail"]["from"].as_str()), (Some("queued"), Some("failed")));
    assert!(retried["detail"]["by"].as_str().is_some_and(|b| b.starts_with("api key ")), "{retried}");

    let s = t.dispatch_until_idle().await;
    assert_eq!(s.sent, 1, "{s:?}");
    let n = t.notification(&key, &id).await;
    assert_eq!((n["status"].as_str(), n["attempts"].as_i64()), (Some("sent"), Some(1)), "{n}");
    assert_eq!(fake.requests().len(), 2);

    let r = t.request("POST", &path, Some(&admin), None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(is_problem(&r) && r.body["type"].as_str().is_some_and(|k| k.ends_with("/not-retryable")), "{}", r.body);
    let r = t.request("POST", "/v1/notifications/0193a5b2-0000-7000-8000-000000000000/retry", Some(&admin), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
}

/// Stats of a window: counts by status, channel and provider, latency from acceptance to
/// sending, attempts and failure rate per provider, the queue by lane, the latest failures,
/// the throughput chart; a tenant sees only its own, an admin every tenant's.
#[tokio::test]
async fn stats_show_a_tenants_window_and_an_admin_sees_all() {
    let t = TestApp::spawn_with(|s| {
        let p = chaos::Config { failure_rate: 1.0, error_class: chaos::ChaosClass::Permanent, ..Default::default() };
        s.providers.insert("flaky".into(), p.into());
        s.channels.sms.providers = vec!["flaky".into()];
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    let other = t.key("globex", SEND_READ).await;
    let admin = t.key("ops", &[Scope::Admin]).await;
    for i in 0..3 {
        assert_eq!(t.post(&key, email(&format!("u{i}@example.com"), "hi")).await.status, StatusCode::ACCEPTED);
    }
    let failed = t.post(&key, sms("x")).await.body["id"].as_str().expect("id").to_owned();
    let mut later = email("later@example.com", "later");
    later["send_at"] = json!("2099-01-01T00:00:00Z");
    assert_eq!(t.post(&key, later).await.status, StatusCode::ACCEPTED);
    t.dispatch_until_idle().await;

    let r = t.get(&key, "/v1/stats?window=1h").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let s = &r.body;
    assert_eq!((s["window"].as_str(), s["tenant"].as_str()), (Some("1h"), Some("acme")), "{s}");
    let n = &s["notifications"];
    assert_eq!(n["total"], 5, "{s}");
    assert_eq!((n["by_status"]["sent"].as_i64(), n["by_status"]["failed"].as_i64()), (Some(3), Some(1)), "{s}");
    assert_eq!(n["by_status"]["scheduled"], 1);
    assert_eq!(
        (n["by_channel"]["email"]["sent"].as_i64(), n["by_channel"]["sms"]["failed"].as_i64()),
        (Some(3), Some(1))
    );
    assert_eq!(n["by_provider"]["mail"]["sent"], 3);

    let sent = &s["latency_seconds"]["accepted_to_sent"];
    assert_eq!(sent["count"], 3, "{s}");
    let (p50, p99) = (sent["p50"].as_f64().expect("p50"), sent["p99"].as_f64().expect("p99"));
    assert!((0.0..60.0).contains(&p50) && p50 <= p99, "{sent}");

    let attempts = s["attempts"].as_array().expect("attempts");
    let of = |name: &str| attempts.iter().find(|a| a["provider"] == name).cloned().expect(name);
    assert_eq!((of("mail")["attempts"].as_i64(), of("mail")["failed"].as_i64()), (Some(3), Some(0)), "{s}");
    assert_eq!((of("flaky")["attempts"].as_i64(), of("flaky")["failure_rate"].as_f64()), (Some(1), Some(1.0)), "{s}");

    let lane = s["queue"].as_array().expect("queue").iter().find(|l| l["channel"] == "email").cloned().expect("email");
    assert_eq!(
        (lane["waiting"].as_i64(), lane["due"].as_i64(), lane["priority"].as_str()),
        (Some(1), Some(0), Some("normal"))
    );
    assert_eq!(s["stuck"], 0);
    let failure = &s["recent_failures"][0];
    assert_eq!(failure["id"].as_str(), Some(failed.as_str()), "{s}");
    assert!(failure["to"].as_str().is_some_and(|to| to.contains('*') && !to.contains("4155550100")), "{failure}");
    assert!(failure["error"].as_str().is_some_and(|e| e.contains("chaos")), "{failure}");

    let buckets = s["throughput"]["buckets"].as_array().expect("buckets");
    let sum = |k: &str| buckets.iter().map(|b| b[k].as_i64().unwrap_or(0)).sum::<i64>();
    assert_eq!((sum("accepted"), sum("sent"), sum("failed")), (5, 3, 1), "{s}");
    assert_eq!(s["throughput"]["bucket_seconds"], 60);
    assert!((55..=62).contains(&buckets.len()), "{} buckets", buckets.len());
    let flaky = s["providers"].as_array().expect("providers").iter().find(|p| p["name"] == "flaky").cloned();
    assert_eq!(flaky.expect("flaky")["breaker"], "closed");

    // Another tenant sees none of it; an admin sees every tenant's.
    let theirs = t.get(&other, "/v1/stats?window=5m").await;
    assert_eq!(theirs.body["notifications"]["total"], 0, "{}", theirs.body);
    assert!(theirs.body["recent_failures"].as_array().is_some_and(Vec::is_empty));
    let all = t.get(&admin, "/v1/stats?window=24h").await;
    assert_eq!((all.body["notifications"]["total"].as_i64(), all.body["tenant"].is_null()), (Some(5), true));

    let bad = t.get(&key, "/v1/stats?window=2h").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    assert!(is_problem(&bad) && bad.body["detail"].as_str().is_some_and(|d| d.contains("5m, 1h, 24h or 7d")));
}

/// `GET /metrics`: behind its token when one is set, Prometheus text with the counters and
/// histograms of what happened (accepted, attempts, send and accept-to-sent durations, HTTP
/// requests by route, refused receipts) and the gauges refreshed from the database.
#[tokio::test]
async fn metrics_count_what_happened_behind_their_token() {
    let mailgun = FakeHttp::mailgun().await;
    let origin = mailgun.origin.clone();
    let t = TestApp::spawn_with(move |s| {
        s.metrics.token = herald::config::Secret::new("scrape-token");
        s.providers.insert("mg-metrics".into(), crate::provider_settings::mailgun(&origin).into());
    })
    .await;
    let key = t.key("acme", SEND_READ).await;
    for i in 0..2 {
        assert_eq!(t.post(&key, email(&format!("m{i}@example.com"), "hi")).await.status, StatusCode::ACCEPTED);
    }
    let mut later = email("later@example.com", "later");
    later["send_at"] = json!("2099-01-01T00:00:00Z");
    t.post(&key, later).await;
    t.dispatch_until_idle().await;
    let forged = json!({"signature": {"timestamp": "1", "token": "t", "signature": "00"}, "event-data": {}});
    let r = t.client.post(format!("{}/webhooks/mg-metrics", t.addr)).json(&forged).send().await.expect("post");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    herald::app::refresh_gauges_once(t.pool(), &t.app.registry).await.expect("gauges");

    let r = t.client.get(format!("{}/metrics", t.addr)).send().await.expect("scrape");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = t.client.get(format!("{}/metrics", t.addr)).bearer_auth("scrape-token").send().await.expect("scrape");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"].to_str().is_ok_and(|c| c.starts_with("text/plain; version=0.0.4")));
    let text = r.text().await.expect("text");
    // Counters are per process and other tests run beside this one: at least ours.
    let value = |series: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '));
        line.and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert!(value(r#"herald_notifications_accepted_total{channel="email"}"#) >= 3.0);
    assert!(value(r#"herald_attempts_total{channel="email",provider="mail",outcome="sent"}"#) >= 2.0);
    assert!(value(r#"herald_send_duration_seconds_count{provider="mail"}"#) >= 2.0);
    assert!(value(r#"herald_accept_to_sent_seconds_count{channel="email"}"#) >= 2.0);
    assert!(value(r#"herald_http_requests_total{route="/v1/notifications",status="202"}"#) >= 3.0);
    assert!(value(r#"herald_http_request_duration_seconds_count{route="/v1/notifications"}"#) >= 3.0);
    assert!(value(r#"herald_receipts_total{provider="mg-metrics",result="bad_signature"}"#) >= 1.0);
    assert_eq!(value(r#"herald_queue_depth{channel="email",priority="normal"}"#), 1.0, "the scheduled one");
    assert_eq!(value(r#"herald_queue_due{channel="email",priority="normal"}"#), 0.0);
    assert_eq!(value(r#"herald_provider_circuit_open{provider="mail"}"#), 0.0);
    assert!(text.contains("# TYPE herald_send_duration_seconds histogram"), "{text}");
    assert!(text.contains(r#"herald_send_duration_seconds_bucket{provider="mail",le="0.005"}"#), "{text}");
    // Route patterns, not paths: no ids or recipients in label values.
    assert!(!text.contains("example.com") && !text.contains("/v1/notifications/0"), "{text}");
}

/// `/ops` is one self-contained page: its script and style come from Herald itself, a strict
/// Content-Security-Policy allows nothing else, and the page holds no data (the browser test,
/// `tests/browser/run`, drives it).
#[tokio::test]
async fn the_dashboard_is_served_self_contained() {
    let t = TestApp::spawn().await;
    let page = t.client.get(format!("{}/ops", t.addr)).send().await.expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"].to_str().expect("csp").to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert!(page.headers()["content-type"].to_str().is_ok_and(|c| c.starts_with("text/html")));
    let html = page.text().await.expect("html");
    assert!(html.contains(r#"<input id="key" name="key" type="password""#), "{html}");
    assert!(!html.contains("http://") && !html.contains("https://"), "no outside address: {html}");
    for (path, kind) in
        [("/ops/app.js", "text/javascript"), ("/ops/app.css", "text/css"), ("/ops/icon.svg", "image/svg+xml")]
    {
        let r = t.client.get(format!("{}{path}", t.addr)).send().await.expect("asset");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert!(r.headers()["content-type"].to_str().is_ok_and(|c| c.starts_with(kind)), "{path}");
        // The SVG namespace is a name, not an address that is loaded.
        let body = r.text().await.expect("body").replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        assert!(!body.contains("https://") && !body.contains("http://"), "{path} loads nothing from elsewhere");
    }
}

/// The OpenAPI document is served, lists every API route, and `/docs` renders it from files
/// Herald serves itself.
#[tokio::test]
async fn the_openapi_document_and_its_docs_page_are_served() {
    let t = TestApp::spawn().await;
    let r = t.client.get(format!("{}/openapi.json", t.addr)).send().await.expect("openapi");
    assert_eq!(r.status(), StatusCode::OK);
    let doc: Value = r.json().await.expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    for (path, method) in [
        ("/v1/notifications", "post"),
        ("/v1/notifications", "get"),
        ("/v1/notifications/batch", "post"),
        ("/v1/notifications/{id}", "get"),
        ("/v1/notifications/{id}/cancel", "post"),
        ("/v1/notifications/{id}/retry", "post"),
        ("/v1/stats", "get"),
        ("/v1/suppressions", "post"),
        ("/v1/suppressions/{channel}/{recipient}", "delete"),
        ("/webhooks/{provider}", "get"),
        ("/metrics", "get"),
        ("/readyz", "get"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} is documented");
    }
    let problem = &doc["paths"]["/v1/notifications"]["post"]["responses"]["422"];
    assert!(problem.to_string().contains("Problem"), "{problem}");
    let page = t.client.get(format!("{}/docs/", t.addr)).send().await.expect("docs");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("html");
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(!html.contains("unpkg.com") && !html.contains("cdn"), "assets are Herald's own: {html}");
}

/// A W3C `traceparent` on `POST /v1/notifications` is kept with the notification and
/// continued by dispatch: the `webhook` provider's call carries the same trace id with a span
/// Answers are compressed for clients that accept it (br or gzip): the OpenAPI document, the
/// dashboard's script, a list; a single POST's small answer is not (compressing it costs more
/// than it saves), and a client that accepts nothing gets the plain bytes.
#[tokio::test]
async fn answers_are_compressed_for_clients_that_accept_it() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", &[Scope::Send, Scope::Read]).await;
    let fetch = |path: &'static str, encoding: Option<&'static str>| {
        let mut req = t.client.get(format!("{}{path}", t.addr)).bearer_auth(&key);
        if let Some(e) = encoding {
            req = req.header("accept-encoding", e);
        }
        async move {
            let r = req.send().await.expect("get");
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            let enc = r.headers().get("content-encoding").map(|v| v.to_str().expect("ascii").to_owned());
            (enc, r.bytes().await.expect("body"))
        }
    };
    let (plain_enc, plain) = fetch("/openapi.json", None).await;
    assert_eq!(plain_enc, None);
    let (enc, gz) = fetch("/openapi.json", Some("gzip")).await;
    assert_eq!(enc.as_deref(), Some("gzip"));
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "a gzip stream");
    assert!(gz.len() * 4 < plain.len(), "{} bytes of {}", gz.len(), plain.len());
    let (enc, br) = fetch("/openapi.json", Some("br;q=1.0, gzip;q=0.5")).await;
    assert_eq!(enc.as_deref(), Some("br"));
    assert!(br.len() * 4 < plain.len(), "{} bytes of {}", br.len(), plain.len());
    let (enc, _) = fetch("/ops/app.js", Some("gzip")).await;
    assert_eq!(enc.as_deref(), Some("gzip"), "the dashboard's script");
    for i in 0..20 {
        assert_eq!(t.post(&key, email(&format!("a{i}@example.com"), "hello")).await.status, StatusCode::ACCEPTED);
    }
    let (enc, _) = fetch("/v1/notifications?limit=20", Some("gzip")).await;
    assert_eq!(enc.as_deref(), Some("gzip"), "a list");
    let r = t
        .client
        .post(format!("{}/v1/notifications", t.addr))
        .bearer_auth(&key)
        .header("accept-encoding", "gzip")
        .json(&email("small@example.com", "hi"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(r.headers().get("content-encoding").is_none(), "a 202 under 1 KiB is sent as it is");
}

/// of its own. An invalid one is ignored, as the spec asks, and the request still succeeds.
#[tokio::test]
async fn a_traceparent_is_kept_and_continued_into_the_provider_call() {
    let (t, fake) = TestApp::with_gateway().await;
    let key = t.key("acme", SEND_READ).await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let post = |traceparent: &'static str| {
        t.client
            .post(format!("{}/v1/notifications", t.addr))
            .bearer_auth(&key)
            .header("traceparent", traceparent)
            .json(&sms("traced"))
            .send()
    };
    let r = post(parent).await.expect("post");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let traced: Value = r.json().await.expect("json");
    let r = post("00-not-a-trace-01").await.expect("post");
    assert_eq!(r.status(), StatusCode::ACCEPTED, "a bad traceparent is ignored, not refused");
    let untraced: Value = r.json().await.expect("json");
    t.dispatch_until_idle().await;

    let stored = |id: &Value| {
        let id = uuid::Uuid::parse_str(id["id"].as_str().expect("id")).expect("uuid");
        sqlx::query_scalar::<_, Option<String>>("SELECT traceparent FROM notifications WHERE id = $1")
            .bind(id)
            .fetch_one(t.pool())
    };
    assert_eq!(stored(&traced).await.expect("row").as_deref(), Some(parent));
    assert_eq!(stored(&untraced).await.expect("row"), None);

    let calls = fake.requests();
    assert_eq!(calls.len(), 2);
    let sent: Vec<Option<String>> =
        calls.iter().map(|c| c.headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned)).collect();
    let continued = sent.iter().flatten().next().expect("one call carries a traceparent");
    assert_eq!(sent.iter().flatten().count(), 1, "{sent:?}");
    let parts: Vec<&str> = continued.split('-').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01"), "{continued}");
    assert_ne!(parts[2], "00f067aa0ba902b7", "a span of its own");
}

/// One tenant's key sees nothing of another's, on every endpoint that takes an id or lists:
/// reading, listing (also when asking for the other tenant by name), cancelling, suppressions
/// and stats; retry is for admins only.
#[tokio::test]
async fn a_tenant_sees_nothing_of_another_on_any_endpoint() {
    let t = TestApp::spawn().await;
    let mine = t.key("acme", &[Scope::Send, Scope::Read]).await;
    let theirs = t.key("globex", &[Scope::Send, Scope::Read]).await;
    let mut later = email("private@example.com", "private");
    later["send_at"] = json!("2099-01-01T00:00:00Z");
    let id = t.post(&mine, later).await.body["id"].as_str().expect("id").to_owned();
    let r = t
        .request(
            "POST",
            "/v1/suppressions",
            Some(&mine),
            Some(json!({"channel": "email", "recipient": "hidden@example.com"})),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.body);

    let get = t.get(&theirs, &format!("/v1/notifications/{id}")).await;
    assert_eq!(get.status, StatusCode::NOT_FOUND, "{}", get.body);
    let cancel = t.request("POST", &format!("/v1/notifications/{id}/cancel"), Some(&theirs), None).await;
    assert_eq!(cancel.status, StatusCode::NOT_FOUND, "{}", cancel.body);
    let retry = t.request("POST", &format!("/v1/notifications/{id}/retry"), Some(&theirs), None).await;
    assert_eq!(retry.status, StatusCode::FORBIDDEN, "{}", retry.body);
    let list = t.get(&theirs, "/v1/notifications?to=private@example.com").await;
    assert_eq!(list.body["items"].as_array().map(Vec::len), Some(0), "{}", list.body);
    let named = t.get(&theirs, "/v1/notifications?tenant=acme").await;
    assert!(
        named.status.is_client_error() || named.body["items"].as_array().is_some_and(Vec::is_empty),
        "{} {}",
        named.status,
        named.body
    );
    let sups = t.get(&theirs, "/v1/suppressions").await;
    assert_eq!(sups.body["items"].as_array().map(Vec::len), Some(0), "{}", sups.body);
    let del = t.request("DELETE", "/v1/suppressions/email/hidden@example.com", Some(&theirs), None).await;
    assert_eq!(del.status, StatusCode::NOT_FOUND, "{}", del.body);
    let stats = t.get(&theirs, "/v1/stats?window=1h").await;
    assert_eq!(
        (stats.body["notifications"]["total"].as_i64(), stats.body["queue"].as_array().map(Vec::len)),
        (Some(0), Some(0))
    );

    // And the owner still sees all of it: the refusals above changed nothing.
    assert_eq!(t.notification(&mine, &id).await["status"], "scheduled");
    assert_eq!(t.get(&mine, "/v1/suppressions").await.body["items"].as_array().map(Vec::len), Some(1));
}

/// A tenant's request limit holds across replicas (the count is in PostgreSQL): two API
/// processes' worth of state (two apps, one database) share it. Over the limit a request is
/// a 429 problem with `Retry-After`; another tenant is not affected, and a tenant's own limit
/// (0: none) overrides the default.
#[tokio::test]
async fn request_limits_hold_across_replicas() {
    let t = TestApp::spawn_with(|s| s.limits.requests_per_second = 5).await;
    // A second replica: its own pools, key cache and router, on the same database.
    let other = herald::app::App::build(t.app.settings.as_ref().clone()).expect("second app");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let other_addr = format!("http://{}", listener.local_addr().expect("addr"));
    let router = herald::http::router(other.state());
    tokio::spawn(async move { axum::serve(listener, router).await });

    let key = t.key("acme", &[Scope::Send, Scope::Read]).await;
    let (mut statuses, mut seconds) = (Vec::new(), std::collections::BTreeSet::new());
    for i in 0..16 {
        let base = if i % 2 == 0 { &t.addr } else { &other_addr };
        seconds.insert(time::OffsetDateTime::now_utc().unix_timestamp());
        let r = t.client.get(format!("{base}/v1/notifications?limit=1")).bearer_auth(&key).send().await.expect("get");
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.headers()["retry-after"], "1");
            let body: Value = r.json().await.expect("problem");
            assert!(body["type"].as_str().is_some_and(|k| k.ends_with("/rate-limited")), "{body}");
            statuses.push(429);
        } else {
            assert_eq!(r.status(), StatusCode::OK);
            statuses.push(200);
        }
        seconds.insert(time::OffsetDateTime::now_utc().unix_timestamp());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!(ok <= 5 * seconds.len(), "{ok} allowed over {} second(s): {statuses:?}", seconds.len());
    assert!(statuses.contains(&429), "{statuses:?}");

    // Another tenant has its own count; a tenant of its own limit 0 has none.
    let theirs = t.key("globex", &[Scope::Read]).await;
    let mut conn = t.pool().acquire().await.expect("conn");
    let changes = herald::store::keys::TenantChanges { requests_per_second: Some(0), ..Default::default() };
    herald::store::keys::set_tenant(&mut conn, "globex", &changes).await.expect("set");
    drop(conn);
    for _ in 0..12 {
        assert_eq!(t.get(&theirs, "/v1/notifications?limit=1").await.status, StatusCode::OK);
    }
}

/// A dashboard sign-in link (`herald ops-link`): signed by the server, it carries no API key,
/// works once, only before it expires, and only as it was made; it gives a key with its
/// tenant's `read` scope and nothing more.
#[tokio::test]
async fn a_sign_in_link_works_once_before_it_expires_and_only_as_made() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", SEND_READ).await;
    assert_eq!(t.post(&key, email("a@example.com", "hi")).await.status, StatusCode::ACCEPTED);
    let url = t.app.ops_link("acme", 15, &t.addr).await.expect("link").expect("tenant acme");
    let token = url.split_once("#link=").expect("a token in the fragment").1.to_owned();
    assert!(url.starts_with(&format!("{}/ops#link=", t.addr)), "{url}");
    assert!(!url.contains("hrld_"), "no API key in a link: {url}");
    assert!(t.app.ops_link("nobody", 15, &t.addr).await.expect("link").is_none(), "no such tenant");

    let redeem = |link: String| {
        let (client, addr) = (t.client.clone(), t.addr.clone());
        async move {
            let r = client.post(format!("{addr}/ops/session")).json(&json!({"link": link})).send().await.expect("post");
            let status = r.status();
            (status, r.json::<Value>().await.expect("json"))
        }
    };
    // A changed character anywhere is refused, and spends nothing: the link still works after.
    let mut altered = token.clone().into_bytes();
    let last = altered.len() - 1;
    altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
    let (status, body) = redeem(String::from_utf8(altered).expect("ascii")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["type"], "/problems/link-refused");
    let mut other_id = token.clone();
    other_id.replace_range(0..1, if token.starts_with('0') { "1" } else { "0" });
    assert_eq!(redeem(other_id).await.0, StatusCode::UNAUTHORIZED);

    let (status, session) = redeem(token.clone()).await;
    assert_eq!(status, StatusCode::OK, "{session}");
    assert_eq!(session["tenant"], "acme");
    let read_key = session["key"].as_str().expect("key").to_owned();
    let list = t.get(&read_key, "/v1/notifications").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    assert_eq!(list.body["items"].as_array().expect("items").len(), 1, "acme's notification");
    assert_eq!(t.post(&read_key, email("b@example.com", "x")).await.status, StatusCode::FORBIDDEN, "read only");

    let (status, body) = redeem(token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "used once already: {body}");

    // Expired: a link made with a lifetime already over.
    let mut conn = t.pool().acquire().await.expect("conn");
    let key_bytes =
        herald::store::ops_links::signing_key(&mut conn, herald::domain::ops_link::KEY_PURPOSE).await.expect("key");
    let old = herald::store::ops_links::create(&mut conn, "acme", time::Duration::seconds(-1))
        .await
        .expect("create")
        .expect("tenant");
    drop(conn);
    let expired = herald::domain::ops_link::token(&key_bytes, old.id, old.tenant_id, old.expires_at);
    let (status, body) = redeem(expired).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "expired: {body}");
}
