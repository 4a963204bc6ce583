//! The real binary as a process: Lambda mode against a fake Lambda Runtime API, and graceful
//! shutdown on SIGTERM under load.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use herald::store::keys::Scope;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::helpers::TestApp;

const BIN: &str = env!("CARGO_BIN_EXE_herald");

#[derive(Clone)]
struct FakeRuntime {
    events: Arc<Mutex<VecDeque<Value>>>,
    done: mpsc::UnboundedSender<(String, Value)>,
}

async fn next(State(f): State<FakeRuntime>) -> impl IntoResponse {
    // Real Lambda blocks /next until an event arrives.
    let event = loop {
        if let Some(ev) = f.events.lock().expect("lock").pop_front() {
            break ev;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let deadline = SystemTime::now().duration_since(UNIX_EPOCH).expect("time").as_millis() + 20_000;
    (
        [
            ("lambda-runtime-aws-request-id", uuid::Uuid::new_v4().to_string()),
            ("lambda-runtime-deadline-ms", deadline.to_string()),
            ("lambda-runtime-invoked-function-arn", "arn:aws:lambda:eu-west-1:123456789012:function:herald".into()),
            ("content-type", "application/json".into()),
        ],
        event.to_string(),
    )
}

async fn finish(
    State(f): State<FakeRuntime>,
    Path((_id, kind)): Path<(String, String)>,
    body: Bytes,
) -> axum::http::StatusCode {
    let _ = f.done.send((kind, serde_json::from_slice(&body).unwrap_or(Value::Null)));
    axum::http::StatusCode::ACCEPTED
}

/// A fake Runtime API on 127.0.0.1; returns its address, the event queue and the results.
async fn fake_runtime() -> (String, Arc<Mutex<VecDeque<Value>>>, mpsc::UnboundedReceiver<(String, Value)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let events = Arc::new(Mutex::new(VecDeque::new()));
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route("/2018-06-01/runtime/invocation/{id}/{kind}", post(finish))
        .with_state(FakeRuntime { events: events.clone(), done: tx });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, events, rx)
}

fn herald_env(cmd: &mut Command, t: &TestApp) {
    let settings = &t.app.settings;
    cmd.env("DATABASE_URL", settings.database.url.expose())
        .env("HERALD__PROVIDERS__MAIL__KIND", "smtp")
        .env("HERALD__PROVIDERS__MAIL__HOST", "127.0.0.1")
        .env("HERALD__PROVIDERS__MAIL__PORT", t.smtp.port.to_string())
        .env("HERALD__PROVIDERS__MAIL__TLS", "none")
        .env("HERALD__PROVIDERS__MAIL__FROM", "herald@example.test")
        .env("HERALD__CHANNELS__EMAIL__PROVIDERS", "[\"mail\"]")
        .env("RUST_LOG", "warn")
        .env_remove("HERALD_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
}

fn lambda(t: &TestApp, runtime: &str, role: &str) -> Child {
    let mut cmd = Command::new(BIN);
    herald_env(&mut cmd, t);
    cmd.env("AWS_LAMBDA_RUNTIME_API", runtime)
        .env("AWS_LAMBDA_FUNCTION_NAME", format!("herald-{role}"))
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("HERALD_LAMBDA_ROLE", role)
        .spawn()
        .expect("spawn herald")
}

fn function_url_event(method: &str, path: &str, key: &str, body: Option<Value>) -> Value {
    json!({
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
        "headers": {"content-type": "application/json", "host": "abc.lambda-url.eu-west-1.on.aws", "authorization": format!("Bearer {key}")},
        "requestContext": {"accountId": "anonymous", "apiId": "abc", "domainName": "abc.lambda-url.eu-west-1.on.aws", "domainPrefix": "abc",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "test"},
            "requestId": "req", "routeKey": "$default", "stage": "$default", "time": "26/Nov/2026:00:00:00 +0000", "timeEpoch": 1795000000000u64},
        "body": body.map(|b| b.to_string()), "isBase64Encoded": false
    })
}

async fn result(rx: &mut mpsc::UnboundedReceiver<(String, Value)>) -> (String, Value) {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("the function answered in time")
        .expect("result")
}

#[tokio::test]
async fn lambda_api_and_worker_roles_serve_events_and_drain_work() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", &[Scope::Send, Scope::Read]).await;
    let (runtime, events, mut results) = fake_runtime().await;

    let mut api = lambda(&t, &runtime, "api");
    let body =
        json!({"channel": "email", "to": "lambda@example.com", "content": {"subject": "From Lambda", "text": "hi"}});
    events.lock().expect("lock").push_back(function_url_event("POST", "/v1/notifications", &key, Some(body)));
    let (kind, resp) = result(&mut results).await;
    assert_eq!(kind, "response", "{resp}");
    assert_eq!(resp["statusCode"], 202, "{resp}");
    let created: Value = serde_json::from_str(resp["body"].as_str().expect("body")).expect("json");
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["status"], "queued");

    events.lock().expect("lock").push_back(function_url_event("GET", &format!("/v1/notifications/{id}"), &key, None));
    let (_, resp) = result(&mut results).await;
    assert_eq!(resp["statusCode"], 200);
    // The api role never sends: nothing reached the SMTP server.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(t.smtp.messages().is_empty());
    api.kill().await.expect("kill");

    let mut worker = lambda(&t, &runtime, "worker");
    events.lock().expect("lock").push_back(json!({"version": "0", "id": "e1", "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "123456789012", "time": "2026-11-26T00:00:00Z", "region": "eu-west-1", "resources": [], "detail": {}}));
    let (kind, summary) = result(&mut results).await;
    assert_eq!(kind, "response", "{summary}");
    assert_eq!((summary["claimed"].as_u64(), summary["sent"].as_u64()), (Some(1), Some(1)), "{summary}");
    assert_eq!(summary["failed"], 0);
    assert_eq!(t.smtp.to("lambda@example.com").len(), 1);
    assert_eq!(t.notification(&key, &id).await["status"], "sent");

    // An empty drain answers at once with zeros.
    events.lock().expect("lock").push_back(json!({"detail-type": "Scheduled Event"}));
    let (_, summary) = result(&mut results).await;
    assert_eq!(summary["claimed"], 0);
    worker.kill().await.expect("kill");
}

#[tokio::test]
async fn sigterm_mid_load_loses_nothing_and_leaves_nothing_leased() {
    let t = TestApp::spawn().await;
    let key = t.key("acme", &[Scope::Send, Scope::Read]).await;
    for i in 0..40 {
        t.post(&key, json!({"channel": "sms", "to": "+14155550100", "content": {"text": format!("message {i}")}}))
            .await;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let mut cmd = Command::new(BIN);
    herald_env(&mut cmd, &t);
    // A slow provider, so that sends are in flight when SIGTERM arrives.
    cmd.env("HERALD__PROVIDERS__SLOW__KIND", "log")
        .env("HERALD__PROVIDERS__SLOW__LATENCY_MS", "300")
        .env("HERALD__CHANNELS__SMS__PROVIDERS", "[\"slow\"]")
        .env("HERALD__DISPATCH__CONCURRENCY", "4")
        .env("HERALD__DISPATCH__SHUTDOWN_GRACE_MS", "10000")
        .env("HERALD__SERVER__LISTEN", format!("127.0.0.1:{port}"));
    let mut child = cmd.arg("serve").spawn().expect("spawn");
    let sent = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM notifications WHERE status = 'sent'")
            .fetch_one(t.pool())
            .await
            .expect("count")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sent().await < 4 {
        assert!(tokio::time::Instant::now() < deadline, "nothing was sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(status.success());
    let exit =
        tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("exited in time").expect("wait");
    assert!(exit.success(), "exit 0 after SIGTERM: {exit}");

    let running: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'running'")
        .fetch_one(t.pool())
        .await
        .expect("count");
    assert_eq!(running, 0, "in-flight sends finished; nothing is left leased");
    let (sent_now, waiting): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'sent'), count(*) FILTER (WHERE status = 'queued') FROM notifications",
    )
    .fetch_one(t.pool())
    .await
    .expect("count");
    assert!(sent_now < 40, "stopped mid-load");
    assert_eq!(sent_now + waiting, 40, "nothing lost: every notification is sent or still queued");

    // Another worker finishes the rest, each exactly once.
    let mut settings = (*t.app.settings).clone();
    settings.providers.insert("slow".into(), herald::providers::log::Config::default().into());
    settings.channels.sms.providers = vec!["slow".into()];
    let registry = std::sync::Arc::new(settings.registry().expect("registry"));
    let d = herald::dispatch::Dispatcher::new(t.pool().clone(), registry, &settings);
    while d.run_once().await.expect("run").claimed > 0 {}
    let per_message: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM notification_events WHERE type = 'attempt' AND status = 'sent' GROUP BY notification_id",
    )
    .fetch_all(t.pool())
    .await
    .expect("counts");
    assert_eq!(per_message.len(), 40);
    assert!(per_message.iter().all(|&c| c == 1));
}

/// The first scrape of a process that has done nothing yet already has every counter and
/// histogram of the README's metrics table, at zero, with a series for each configured
/// channel and provider: an alert or a dashboard reads 0, not "no data", before the first send.
#[tokio::test]
async fn every_metric_the_readme_lists_is_there_from_the_start() {
    let t = TestApp::spawn().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let mut cmd = Command::new(BIN);
    herald_env(&mut cmd, &t);
    cmd.env("HERALD__PROVIDERS__TEXTS__KIND", "log")
        .env("HERALD__CHANNELS__SMS__PROVIDERS", "[\"texts\"]")
        .env("HERALD__SERVER__LISTEN", format!("127.0.0.1:{port}"));
    let _child = cmd.arg("serve").spawn().expect("spawn");
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        if let Ok(r) = t.client.get(&url).send().await
            && r.status().is_success()
        {
            break r.text().await.expect("text");
        }
        assert!(tokio::time::Instant::now() < deadline, "herald did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let listed: Vec<(&str, &str)> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `herald_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once('`')?;
            let kind = rest.split('|').nth(1)?.trim();
            Some((name, kind))
        })
        .collect();
    assert!(listed.len() >= 14, "the README's metrics table: {listed:?}");
    // Gauges read from the database (the queue's) come with the first refresh, which this
    // first scrape may precede; counters and histograms must all be there.
    for (name, kind) in listed.into_iter().filter(|(_, kind)| *kind != "gauge") {
        let series = if kind == "histogram" { format!("herald_{name}_count") } else { format!("herald_{name}") };
        let found: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{series}{{")) || l.starts_with(&format!("{series} ")))
            .collect();
        assert!(!found.is_empty(), "{series} ({kind}) is exposed before anything happened:\n{text}");
        assert!(found.iter().all(|l| l.ends_with(" 0")), "{series} starts at zero: {found:?}");
    }
    for series in [
        r#"herald_notifications_accepted_total{channel="email"} 0"#,
        r#"herald_notifications_accepted_total{channel="sms"} 0"#,
        r#"herald_attempts_total{channel="email",provider="mail",outcome="sent"} 0"#,
        r#"herald_attempts_total{channel="sms",provider="texts",outcome="unknown"} 0"#,
        r#"herald_send_duration_seconds_count{provider="texts"} 0"#,
        r#"herald_sends_deferred_total{channel="sms",reason="tenant_quota_day"} 0"#,
        r#"herald_provider_circuit_open{provider="mail"} 0"#,
    ] {
        assert!(text.lines().any(|l| l == series), "{series} in\n{text}");
    }
    assert!(!text.contains(r#"channel="push""#), "a channel with no provider has no series");
}

/// `herald ops-link --tenant T` prints a sign-in link to the server's dashboard; a tenant that
/// does not exist, or a lifetime over 15 minutes, is refused with a message that says why.
#[tokio::test]
async fn ops_link_prints_a_link_for_a_tenant() {
    let t = TestApp::spawn().await;
    t.key("acme", &[Scope::Read]).await;
    let base = [("HERALD__SERVER__PUBLIC_BASE_URL", "https://herald.example.com/")];
    let out = cli(&t, &base, &["ops-link", "--tenant", "acme", "--minutes", "5"]).await;
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(out[0].starts_with("https://herald.example.com/ops#link="), "{out:?}");
    let run = |args: &'static [&'static str]| {
        let mut cmd = Command::new(BIN);
        herald_env(&mut cmd, &t);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).args(args);
        async move { cmd.output().await.expect("run herald") }
    };
    let out = run(&["ops-link", "--tenant", "nobody"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no tenant named nobody"), "{err}");
    let out = run(&["ops-link", "--tenant", "acme", "--minutes", "16"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("16"), "{err}");
}

/// Run `herald ARGS` against the test database; its stdout lines.
async fn cli(t: &TestApp, env: &[(&str, &str)], args: &[&str]) -> Vec<String> {
    let mut cmd = Command::new(BIN);
    herald_env(&mut cmd, t);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).envs(env.iter().copied()).args(args);
    let out = cmd.output().await.expect("run herald");
    assert!(out.status.success(), "herald {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

async fn tenant_secret(t: &TestApp, tenant: &str) -> Option<String> {
    sqlx::query_scalar("SELECT signing_secret FROM tenants WHERE name = $1")
        .bind(tenant)
        .fetch_one(t.pool())
        .await
        .expect("tenant")
}

/// Every tenant signs its callbacks with a secret of its own, generated when the tenant is
/// created, shown once, and rotatable; unless the operator configured one shared secret.
#[tokio::test]
async fn each_tenant_gets_its_own_callback_secret_shown_once_and_rotatable() {
    let t = TestApp::spawn().await;
    let out = cli(&t, &[], &["keys", "create", "--tenant", "acme", "--scopes", "send,read"]).await;
    let secret = out.iter().find(|l| l.starts_with("whsec_")).expect("a secret is shown").clone();
    assert!(herald::domain::webhook::signing_key(&secret).is_ok_and(|k| k.len() == 32), "{secret}");
    assert!(out.last().expect("line").starts_with("hrld_"), "the key stays the last line: {out:?}");
    assert_eq!(tenant_secret(&t, "acme").await.as_deref(), Some(secret.as_str()));

    // Another tenant's is another secret; a second key for acme shows none and keeps it.
    let other = cli(&t, &[], &["keys", "create", "--tenant", "globex", "--scopes", "send"]).await;
    let other_secret = other.iter().find(|l| l.starts_with("whsec_")).expect("secret").clone();
    assert_ne!(other_secret, secret);
    let again = cli(&t, &[], &["keys", "create", "--tenant", "acme", "--scopes", "read"]).await;
    assert!(!again.iter().any(|l| l.contains("whsec_")), "{again:?}");
    assert_eq!(tenant_secret(&t, "acme").await.as_deref(), Some(secret.as_str()));

    // Rotation prints the new secret once, and it is the one used from then on.
    let rotated = cli(&t, &[], &["tenants", "set", "acme", "--rotate-signing-secret"]).await;
    let new_secret = rotated.iter().find(|l| l.starts_with("whsec_")).expect("rotated").clone();
    assert_ne!(new_secret, secret);
    assert_eq!(tenant_secret(&t, "acme").await.as_deref(), Some(new_secret.as_str()));
    let new_tenant = cli(&t, &[], &["tenants", "set", "initech"]).await;
    assert!(new_tenant.iter().any(|l| l.starts_with("whsec_")), "a tenant made by `tenants set` gets one too");

    // A tenant's own send quotas: set, shown, and back to the configured one with `default`.
    let out =
        cli(&t, &[], &["tenants", "set", "acme", "--quota", "sms.per_day=1000", "--quota", "email.per_minute=0"]).await;
    assert!(out.iter().any(|l| l == r#"its own send quotas: {"email.per_minute":0,"sms.per_day":1000}"#), "{out:?}");
    let out = cli(&t, &[], &["tenants", "set", "acme", "--quota", "email.per_minute=default"]).await;
    assert!(out.iter().any(|l| l == r#"its own send quotas: {"sms.per_day":1000}"#), "{out:?}");

    // With a shared secret configured, new tenants get none of their own: they sign with it.
    let shared = [("HERALD__CALLBACKS__SIGNING_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")];
    let out = cli(&t, &shared, &["keys", "create", "--tenant", "umbrella", "--scopes", "send"]).await;
    assert!(!out.iter().any(|l| l.contains("whsec_")), "{out:?}");
    assert_eq!(tenant_secret(&t, "umbrella").await, None);
}

/// A folder of the test's own under the system's temporary folder.
fn scratch_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// A running `herald dev`, its banner, and where its logs go.
struct Dev {
    child: Child,
    banner: Vec<String>,
    log: std::path::PathBuf,
    /// Kept open: a closed pipe would make the process's next write to stdout fail.
    _stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Dev {
    /// The banner line after the one containing `heading`.
    fn after(&self, heading: &str) -> String {
        let i = self
            .banner
            .iter()
            .position(|l| l.contains(heading))
            .unwrap_or_else(|| panic!("{heading}: {:?}", self.banner));
        self.banner[i + 1].trim().to_owned()
    }

    fn base(&self) -> String {
        let first = &self.banner[0];
        let start = first.find("http://").expect("base");
        first[start..].split_whitespace().next().expect("base").to_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Start `herald dev --listen 127.0.0.1:0` on the test's database, keeping its key under
/// `data`; read its banner.
async fn start_dev(t: &TestApp, data: &std::path::Path, args: &[&str]) -> Dev {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let log = data.join(format!("dev-{}.log", uuid::Uuid::new_v4().simple()));
    let mut cmd = Command::new(BIN);
    herald_env(&mut cmd, t);
    cmd.env("XDG_DATA_HOME", data)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .arg("dev")
        .args(["--listen", "127.0.0.1:0"])
        .args(args);
    let mut child = cmd.spawn().expect("spawn dev");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut banner = Vec::new();
    let read = async {
        while let Some(line) = lines.next_line().await.expect("read") {
            let last = line.starts_with("The API's documentation:");
            banner.push(line);
            if last {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read).await.expect("the banner in time");
    assert!(banner.first().is_some_and(|l| l.starts_with("Herald dev is running on http://127.0.0.1:")), "{banner:?}");
    Dev { child, banner, log, _stdout: lines }
}

/// `herald dev` binds before it prints, prints the DATABASE_URL and the providers each channel
/// really uses, keeps one dev key across starts, logs what it "sends" (without colour codes
/// or migration notices), and lets a local receiver get signed callbacks.
#[tokio::test]
async fn dev_prints_what_the_other_commands_need_and_keeps_its_key() {
    let t = TestApp::spawn().await;
    let data = scratch_dir();
    let mut dev = start_dev(&t, &data, &[]).await;
    let url = t.app.settings.database.url.expose();
    assert!(dev.after("For the other commands").contains(&format!("DATABASE_URL={url}")), "{:?}", dev.banner);
    // The test's environment sends email to its SMTP provider: the banner says so.
    assert!(dev.banner.iter().any(|l| l.trim() == "email -> mail"), "{:?}", dev.banner);
    assert!(dev.banner.iter().any(|l| l.trim() == "sms   -> log"), "{:?}", dev.banner);
    let key = dev.after("Dev API key");
    let secret = dev.after("signing secret").split_whitespace().next().expect("secret").to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    let base = dev.base();
    // The banner names the dashboard and the docs, and signs a browser in with a link.
    let ops = dev.after("it works once, for 15 minutes");
    assert!(ops.starts_with(&format!("{base}/ops#link=")) && !ops.contains("hrld_"), "{ops}");
    assert!(dev.banner.iter().any(|l| l.contains(&format!("{base}/ops:"))), "{:?}", dev.banner);
    assert!(dev.banner.last().is_some_and(|l| l.contains(&format!("{base}/docs"))), "{:?}", dev.banner);
    let token = ops.split_once("#link=").expect("token").1;
    let r = t
        .client
        .post(format!("{base}/ops/session"))
        .json(&serde_json::json!({"link": token}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), reqwest::StatusCode::OK, "the banner's link signs in");

    // The key works; an SMS shows in the log with its text; a local receiver gets a callback
    // signed with the printed secret.
    let receiver = crate::fake_http::FakeHttp::receiver().await;
    let client = reqwest::Client::new();
    let body = json!({"channel": "sms", "to": "+14155550100", "content": {"text": "hello from dev"},
        "callback_url": format!("{}/hook", receiver.origin)});
    let r = client
        .post(format!("{base}/v1/notifications"))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("post: {e}; log:\n{}", dev.log()));
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED, "{}", r.text().await.unwrap_or_default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while receiver.requests().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no callback; log:\n{}", dev.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let call = &receiver.requests()[0];
    assert!(crate::receipts::verify_with(&secret, &call.headers, &call.body), "signed with the printed secret");
    let log = dev.log();
    assert!(log.contains("sent: text=\"hello from dev\""), "{log}");
    assert!(!log.contains('\u{1b}'), "no colour codes in a file: {log}");
    assert!(!log.contains("_sqlx_migrations"), "{log}");
    dev.child.kill().await.expect("kill");

    // The next start prints the same key, and the database holds one dev key (besides the
    // dashboard session the banner's link made, which expires).
    let mut again = start_dev(&t, &data, &[]).await;
    assert_eq!(again.after("Dev API key"), key);
    assert_eq!(again.after("signing secret").split_whitespace().next(), Some(secret.as_str()));
    let active: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE t.name = 'dev' AND k.revoked_at IS NULL \
         AND k.expires_at IS NULL",
    )
    .fetch_one(t.pool())
    .await
    .expect("count");
    assert_eq!(active, 1);

    // A taken port: an error that says what to do, and no banner.
    let taken = again.base().trim_start_matches("http://").to_owned();
    let mut cmd = Command::new(BIN);
    herald_env(&mut cmd, &t);
    cmd.env("XDG_DATA_HOME", &data).stdout(Stdio::piped()).stderr(Stdio::piped()).args(["dev", "--listen", &taken]);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output()).await.expect("in time").expect("run");
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Herald dev is running"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {taken}")) && err.contains("--listen"), "{err}");
    again.child.kill().await.expect("kill");
}

/// A dev overlay can use the provider dev sets up by its printed name, and send a channel
/// elsewhere; the banner shows each channel's real providers.
#[tokio::test]
async fn a_dev_overlay_can_name_the_log_provider() {
    let t = TestApp::spawn().await;
    let data = scratch_dir();
    let overlay = data.join("dev.toml");
    std::fs::write(
        &overlay,
        "[providers.loud]\nkind = \"log\"\n[channels.sms]\nproviders = [\"loud\", \"log\"]\n[channels.push]\nproviders = [\"log\"]\n",
    )
    .expect("write");
    let mut dev = start_dev(&t, &data, &["--config", overlay.to_str().expect("path")]).await;
    assert!(dev.banner.iter().any(|l| l.trim() == "sms   -> loud, log"), "{:?}", dev.banner);
    assert!(dev.banner.iter().any(|l| l.trim() == "push  -> log"), "{:?}", dev.banner);
    dev.child.kill().await.expect("kill");
}

/// The CLI's small courtesies: a version with the revision, a header row, names and secrets
/// checked by one rule, help that mentions DATABASE_URL, connection errors that say what was tried.
#[tokio::test]
async fn the_cli_checks_names_and_secrets_and_explains_itself() {
    let t = TestApp::spawn().await;
    let version = cli(&t, &[], &["--version"]).await;
    assert!(version[0].starts_with(&format!("herald {}", env!("CARGO_PKG_VERSION"))), "{version:?}");
    assert_eq!(version[0], format!("herald {}", herald::VERSION));
    let help = cli(&t, &[], &["--help"]).await.join("\n");
    assert!(help.contains("DATABASE_URL"), "{help}");
    let keys_help = cli(&t, &[], &["keys", "create", "--help"]).await.join("\n");
    assert!(keys_help.contains("The tenant the key acts for"), "{keys_help}");
    cli(&t, &[], &["keys", "create", "--tenant", "acme"]).await;
    let list = cli(&t, &[], &["keys", "list"]).await;
    assert_eq!(list[0], "id\ttenant\tprefix\tscopes\tstate");
    assert!(list[1].contains("\tacme\t"), "{list:?}");

    let fails = |args: &'static [&'static str], env: &'static [(&'static str, &'static str)]| {
        let mut cmd = Command::new(BIN);
        herald_env(&mut cmd, &t);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).envs(env.iter().copied()).args(args);
        async move {
            let out = cmd.output().await.expect("run");
            assert!(!out.status.success(), "{args:?} must fail");
            String::from_utf8_lossy(&out.stderr).into_owned()
        }
    };
    let err = fails(&["keys", "create", "--tenant", "bad tenant!"], &[]).await;
    assert!(err.contains("is not a tenant name"), "{err}");
    let err = fails(&["tenants", "set", "acme", "--signing-secret", "notwhsec"], &[]).await;
    assert!(err.contains("--signing-secret: must be a Standard Webhooks secret"), "{err}");
    let err = fails(&["tenants", "set", "acme", "--signing-secret", "whsec_notbase64!!"], &[]).await;
    assert!(err.contains("--signing-secret: must be a Standard Webhooks secret"), "{err}");
    let err = fails(&["tenants", "set", "acme", "--quota", "fax.per_day=3"], &[]).await;
    assert!(err.contains("--quota fax.per_day=3") && err.contains("not a channel"), "{err}");
    let err = fails(&["tenants", "set", "acme", "--quota", "sms.per_day=lots"], &[]).await;
    assert!(err.contains("`lots` is not a count of sends"), "{err}");
    let err =
        fails(&["keys", "list"], &[("DATABASE_URL", "postgres://nobody-here@127.0.0.1:5432/herald_nowhere")]).await;
    assert!(
        err.contains("as role `nobody-here`") && err.contains("herald_nowhere") && !err.contains(" at line "),
        "{err}"
    );
    assert!(err.contains("DATABASE_URL"), "{err}");
}

/// With `tracing.otlp_endpoint` set, Herald exports its spans over OTLP/HTTP (protobuf): the
/// request that created a notification, the store calls it made and the dispatch that sent it
/// are in the trace of the request's `traceparent`, and what is buffered is sent when the
/// process stops.
#[tokio::test]
async fn spans_are_exported_over_otlp_in_the_trace_of_the_request() {
    let t = TestApp::spawn().await;
    let collector = crate::fake_http::FakeHttp::receiver().await;
    let key = t.key("acme", &[Scope::Send, Scope::Read]).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let mut cmd = Command::new(BIN);
    herald_env(&mut cmd, &t);
    cmd.env("HERALD__TRACING__OTLP_ENDPOINT", format!("{}/v1/traces", collector.origin))
        .env("HERALD__TRACING__SERVICE_NAME", "herald-under-test")
        .env("HERALD__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .stderr(Stdio::null());
    let mut child = cmd.arg("serve").spawn().expect("spawn");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !client.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(tokio::time::Instant::now() < deadline, "herald did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = client
        .post(format!("{base}/v1/notifications"))
        .bearer_auth(&key)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({"channel": "email", "to": "traced@example.com", "content": {"subject": "s", "text": "t"}}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
    while t.smtp.messages().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "nothing was sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = child.id().expect("pid").to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("exited in time").expect("wait");

    let exports: Vec<_> = collector.requests().into_iter().filter(|r| r.path == "/v1/traces").collect();
    assert!(!exports.is_empty(), "spans were exported");
    assert!(exports.iter().all(|r| r.headers["content-type"] == "application/x-protobuf"));
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let mut spans = Vec::new();
    for export in &exports {
        let req = ExportTraceServiceRequest::decode(export.body.clone()).expect("OTLP protobuf");
        for rs in req.resource_spans {
            let service = rs.resource.iter().flat_map(|r| &r.attributes).find(|a| a.key == "service.name");
            let service = service.and_then(|a| a.value.as_ref()).map(|v| format!("{:?}", v.value));
            assert!(service.as_ref().is_some_and(|s| s.contains("herald-under-test")), "{service:?}");
            spans.extend(rs.scope_spans.into_iter().flat_map(|s| s.spans));
        }
    }
    let raw_id = hex::decode(trace_id).expect("hex");
    let find = |name: &str| spans.iter().find(|s| s.name == name && s.trace_id == raw_id).cloned();
    let request = find("request").expect("the request span, in the caller's trace");
    let dispatch = find("dispatch").expect("the dispatch span, in the same trace");
    assert_eq!(
        request.parent_span_id,
        hex::decode("00f067aa0ba902b7").expect("hex"),
        "the caller's span is its parent"
    );
    assert_eq!(dispatch.parent_span_id, request.span_id, "dispatch continues the request");
    // Store calls have spans of their own: in the request's trace when the request makes them,
    // and for the writes gathered from many requests or sends, spans of their own.
    let templates = find("store.templates.book").expect("the request's template lookup, in its trace");
    assert_eq!(templates.parent_span_id, request.span_id);
    for name in ["store.ingest.write", "store.tracking.claim", "store.tracking.complete"] {
        assert!(spans.iter().any(|s| s.name == name), "a {name} span was exported");
    }
}

/// Secrets never reach the logs, even at `RUST_LOG=trace`: a whole flow (email by SendGrid,
/// SMS by Twilio with a signed receipt, push by a webhook gateway, a signed status callback,
/// with every other kind configured besides: SMTP with a password, Mailgun, Vonage, SES, FCM,
/// APNs, Web Push) with every line Herald writes scanned for each configured secret, the API
/// key, the database password and the raw recipients.
#[tokio::test]
async fn secrets_and_recipients_stay_out_of_trace_logs() {
    use crate::fake_http::{self, FakeHttp};
    let t = TestApp::spawn().await;
    let (sg, tw, gateway, receiver) =
        (FakeHttp::sendgrid().await, FakeHttp::twilio().await, FakeHttp::receiver().await, FakeHttp::receiver().await);
    let key = t.key("acme", &[Scope::Send, Scope::Read]).await;
    let (gateway_secret, callback_secret) =
        (herald::domain::webhook::new_signing_secret(), herald::domain::webhook::new_signing_secret());
    let db_password = "db-pass-never-logged";
    let db_url = t.app.settings.database.url.expose().replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{db_password}@"),
        1,
    );
    assert!(db_url.contains(db_password), "{db_url}");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let public = format!("http://127.0.0.1:{port}");
    let log_path = std::env::temp_dir().join(format!("herald-trace-{port}.log"));
    let fixtures = format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    let fcm_key = std::fs::read_to_string(format!("{fixtures}/fcm-test-key.pem")).expect("fcm key");
    let fcm_private = fcm_key.lines().nth(1).expect("a line of the key").to_owned();
    let account_path = std::env::temp_dir().join(format!("herald-trace-{port}-fcm.json"));
    let account = json!({"type": "service_account", "project_id": "p", "private_key_id": "k1", "private_key": fcm_key,
                         "client_email": "h@p.iam.gserviceaccount.com", "token_uri": "http://127.0.0.1:9/token"});
    std::fs::write(&account_path, account.to_string()).expect("account file");
    let apns_key = std::fs::read_to_string(format!("{fixtures}/apns-test-key.p8")).expect("apns key");
    let apns_private = apns_key.lines().nth(1).expect("a line of the key").to_owned();
    let (smtp_password, vapid_key) = ("smtp-password-never-logged", "RS0WdYWWo1HajXg3NZR1olzCf31i-ZBGDkFyCs7j1jw");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut cmd = Command::new(BIN);
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", db_url.as_str()),
        ("RUST_LOG", "trace"),
        ("HERALD__SERVER__LISTEN", &format!("127.0.0.1:{port}")),
        ("HERALD__SERVER__PUBLIC_BASE_URL", &public),
        ("HERALD__CALLBACKS__SIGNING_SECRET", &callback_secret),
        ("HERALD__CALLBACKS__ALLOW_PRIVATE_NETWORKS", "true"),
        ("HERALD__PROVIDERS__SG__KIND", "sendgrid"),
        ("HERALD__PROVIDERS__SG__API_KEY", fake_http::SENDGRID_KEY),
        ("HERALD__PROVIDERS__SG__FROM", "noreply@acme.test"),
        ("HERALD__PROVIDERS__SG__BASE_URL", &sg.origin),
        ("HERALD__PROVIDERS__TW__KIND", "twilio"),
        ("HERALD__PROVIDERS__TW__ACCOUNT_SID", fake_http::TWILIO_SID),
        ("HERALD__PROVIDERS__TW__AUTH_TOKEN", fake_http::TWILIO_TOKEN),
        ("HERALD__PROVIDERS__TW__FROM", "+15005550006"),
        ("HERALD__PROVIDERS__TW__BASE_URL", &tw.origin),
        ("HERALD__PROVIDERS__GW__KIND", "webhook"),
        ("HERALD__PROVIDERS__GW__URL", &format!("{}/push", gateway.origin)),
        ("HERALD__PROVIDERS__GW__SIGNING_SECRET", &gateway_secret),
        ("HERALD__PROVIDERS__MG__KIND", "mailgun"),
        ("HERALD__PROVIDERS__MG__API_KEY", fake_http::MAILGUN_KEY),
        ("HERALD__PROVIDERS__MG__DOMAIN", fake_http::MAILGUN_DOMAIN),
        ("HERALD__PROVIDERS__MG__FROM", "noreply@acme.test"),
        ("HERALD__PROVIDERS__VO__KIND", "vonage"),
        ("HERALD__PROVIDERS__VO__API_KEY", fake_http::VONAGE_KEY),
        ("HERALD__PROVIDERS__VO__API_SECRET", fake_http::VONAGE_SECRET),
        ("HERALD__PROVIDERS__VO__FROM", "Acme"),
        ("HERALD__PROVIDERS__SES__KIND", "ses"),
        ("HERALD__PROVIDERS__SES__REGION", "eu-west-1"),
        ("HERALD__PROVIDERS__SES__ACCESS_KEY_ID", fake_http::SES_KEY_ID),
        ("HERALD__PROVIDERS__SES__SECRET_ACCESS_KEY", fake_http::SES_SECRET),
        ("HERALD__PROVIDERS__SES__FROM", "noreply@acme.test"),
        ("HERALD__PROVIDERS__MAIL__KIND", "smtp"),
        ("HERALD__PROVIDERS__MAIL__HOST", "127.0.0.1"),
        ("HERALD__PROVIDERS__MAIL__PORT", &t.smtp.port.to_string()),
        ("HERALD__PROVIDERS__MAIL__TLS", "none"),
        ("HERALD__PROVIDERS__MAIL__USERNAME", "herald"),
        ("HERALD__PROVIDERS__MAIL__PASSWORD", smtp_password),
        ("HERALD__PROVIDERS__MAIL__FROM", "noreply@acme.test"),
        ("HERALD__PROVIDERS__FCM__KIND", "fcm"),
        ("HERALD__PROVIDERS__FCM__SERVICE_ACCOUNT_FILE", account_path.to_str().expect("path")),
        ("HERALD__PROVIDERS__APNS__KIND", "apns"),
        ("HERALD__PROVIDERS__APNS__TEAM_ID", fake_http::APNS_TEAM),
        ("HERALD__PROVIDERS__APNS__KEY_ID", fake_http::APNS_KEY_ID),
        ("HERALD__PROVIDERS__APNS__TOPIC", fake_http::APNS_TOPIC),
        ("HERALD__PROVIDERS__APNS__PRIVATE_KEY_FILE", &format!("{fixtures}/apns-test-key.p8")),
        ("HERALD__PROVIDERS__WP__KIND", "web_push"),
        ("HERALD__PROVIDERS__WP__VAPID_PRIVATE_KEY", vapid_key),
        ("HERALD__PROVIDERS__WP__VAPID_SUBJECT", "mailto:ops@acme.test"),
        ("HERALD__CHANNELS__EMAIL__PROVIDERS", "[\"sg\"]"),
        ("HERALD__CHANNELS__SMS__PROVIDERS", "[\"tw\"]"),
        ("HERALD__CHANNELS__PUSH__PROVIDERS", "[\"gw\"]"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    cmd.envs(env).env_remove("HERALD_CONFIG").arg("serve").stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    let mut child = cmd.kill_on_drop(true).spawn().expect("spawn");
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !client.get(format!("{public}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(tokio::time::Instant::now() < deadline, "herald did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (email_to, phone, token) = ("alice.private@example.com", "+14155550123", "fcm-token-private-123");
    let callback = format!("{}/hooks", receiver.origin);
    for body in [
        json!({"channel": "email", "to": email_to, "content": {"subject": "s", "text": "t"}, "callback_url": callback}),
        json!({"channel": "sms", "to": phone, "content": {"text": "Your code is 123456"}, "callback_url": callback}),
        json!({"channel": "push", "to": {"fcm": token}, "content": {"title": "Hi"}, "callback_url": callback}),
    ] {
        let r =
            client.post(format!("{public}/v1/notifications")).bearer_auth(&key).json(&body).send().await.expect("post");
        assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
    }
    let sent = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM notifications WHERE status = 'sent'")
            .fetch_one(t.pool())
            .await
            .expect("count")
    };
    while sent().await < 3 {
        assert!(tokio::time::Instant::now() < deadline, "not all sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A signed Twilio receipt for the SMS.
    let sid: String = sqlx::query_scalar("SELECT provider_message_id FROM notifications WHERE channel = 'sms'")
        .fetch_one(t.pool())
        .await
        .expect("sid");
    let params = vec![
        ("MessageSid".to_owned(), sid.clone()),
        ("MessageStatus".to_owned(), "delivered".to_owned()),
        ("AccountSid".to_owned(), fake_http::TWILIO_SID.to_owned()),
        ("To".to_owned(), phone.to_owned()),
    ];
    let url = format!("{public}/webhooks/tw");
    let sig = herald::providers::twilio::receipts::signature(fake_http::TWILIO_TOKEN, &url, &params);
    let r = client.post(&url).header("x-twilio-signature", sig).form(&params).send().await.expect("receipt");
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    while receiver.requests().len() < 4 {
        assert!(tokio::time::Instant::now() < deadline, "callbacks: {}", receiver.requests().len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = child.id().expect("pid").to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("exited").expect("wait");

    let text = std::fs::read_to_string(&log_path).expect("log");
    let _ = std::fs::remove_file(&log_path);
    let _ = std::fs::remove_file(&account_path);
    assert!(
        text.lines().count() > 100 && text.contains("TRACE"),
        "trace logging was on: {} lines",
        text.lines().count()
    );
    let secrets = [
        ("the SendGrid key", fake_http::SENDGRID_KEY),
        ("the Twilio token", fake_http::TWILIO_TOKEN),
        ("the Mailgun key", fake_http::MAILGUN_KEY),
        ("the Vonage secret", fake_http::VONAGE_SECRET),
        ("the SES secret", fake_http::SES_SECRET),
        ("the gateway's signing secret", gateway_secret.as_str()),
        ("the callback signing secret", callback_secret.as_str()),
        ("the API key", key.as_str()),
        ("the database password", db_password),
        ("the SMTP password", smtp_password),
        ("the FCM service account's key", fcm_private.as_str()),
        ("the VAPID key", vapid_key),
        ("the APNs key", apns_private.as_str()),
        ("an email address", email_to),
        ("a phone number", "4155550123"),
        ("a push token", token),
    ];
    for (what, secret) in secrets {
        let at = text.lines().find(|l| l.contains(secret));
        assert!(at.is_none(), "{what} is in the log: {}", at.unwrap_or_default());
    }
}
