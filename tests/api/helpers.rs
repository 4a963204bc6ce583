//! `TestApp`: Herald run as its binary runs it (`App::run_on`, the API role) on a fresh
//! PostgreSQL database, served on 127.0.0.1 with a random port, with a fake SMTP server for
//! email and the `log` provider for SMS and push. Dispatch is driven explicitly by tests.

use std::time::Duration;

use herald::app::{App, Roles};
use herald::config::{ProviderSettings, Settings};
use herald::dispatch::{Dispatcher, Summary};
use herald::providers::{log, smtp};
use herald::store::keys::{self, Scope};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::fake_smtp::FakeSmtp;

/// The server tests use: `HERALD_TEST_DATABASE_URL`, else a PostgreSQL on localhost:5432.
async fn admin_url() -> String {
    if let Ok(url) = std::env::var("HERALD_TEST_DATABASE_URL") {
        return url;
    }
    match herald::dev::local_postgres(false).await {
        Ok(pg) if !pg.is_throwaway() => pg.admin_url.clone(),
        _ => panic!(
            "tests need PostgreSQL on localhost:5432 (or HERALD_TEST_DATABASE_URL); {}",
            herald::dev::INSTALL_HINT
        ),
    }
}

pub struct TestApp {
    pub app: App,
    pub addr: String,
    pub smtp: FakeSmtp,
    pub client: reqwest::Client,
    db_name: String,
    admin_url: String,
    /// Stops the API when the test ends.
    stop: CancellationToken,
    /// The test's own connections, straight to the database: Herald's may go through a
    /// transaction pooler (`database.transaction_pooler`), where a test's plain statements
    /// would meet the prepared statements Herald's sessions leave on the server connections.
    direct: PgPool,
}

pub struct Response {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
        let admin_url = admin_url().await;
        let db_name = format!("herald_test_{}", uuid::Uuid::new_v4().simple());
        herald::dev::ensure_database(&admin_url, &db_name).await.expect("create test database");
        let smtp = FakeSmtp::start().await;

        let mut settings = Settings::from_figment(&Settings::figment(None)).expect("default settings");
        settings.database.url = herald::config::Secret::new(replace_db(&admin_url, &db_name));
        settings.database.max_connections = 20;
        settings.server.listen = "127.0.0.1:0".into();
        settings.dispatch.retry_base_ms = 10;
        settings.dispatch.retry_max_ms = 40;
        settings.dispatch.max_attempts = 5;
        settings.dispatch.poll_interval_ms = 50;
        settings.dispatch.lease_secs = 5;
        settings.callbacks.allow_private_networks = true;
        let mut relay = smtp::Config::new(
            "127.0.0.1".parse().expect("host"),
            "Herald <herald@example.test>".parse().expect("sender"),
        );
        relay.port = Some(smtp.port);
        relay.tls = smtp::SmtpTls::None;
        let mut mail = ProviderSettings::from(relay);
        mail.common.timeout_ms = 5000;
        settings.providers.insert("mail".into(), mail);
        settings.providers.insert("console".into(), log::Config::default().into());
        settings.channels.email.providers = vec!["mail".into()];
        settings.channels.sms.providers = vec!["console".into()];
        settings.channels.push.providers = vec!["console".into()];
        configure(&mut settings);

        // Migrated here rather than by `run_on`, so that the first request finds the tables.
        settings.database.migrate_on_start = false;
        let app = App::build(settings).expect("build app");
        app.migrate().await.expect("migrate");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = CancellationToken::new();
        let (running, cancel) = (app.clone(), stop.clone());
        tokio::spawn(async move {
            let roles = Roles { api: true, worker: false };
            running.run_on(Some(listener), roles, cancel).await.expect("herald runs");
        });
        let direct = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect_lazy(&replace_db(&admin_url, &db_name))
            .expect("the test's pool");
        TestApp { app, addr, smtp, client: reqwest::Client::new(), db_name, admin_url, stop, direct }
    }

    /// Herald with SMS going to a `webhook` provider whose endpoint is a fake gateway that
    /// records every call (and answers as planned).
    pub async fn with_gateway() -> (TestApp, crate::fake_http::FakeHttp) {
        let fake = crate::fake_http::FakeHttp::receiver().await;
        let url = format!("{}/gateway", fake.origin);
        let secret = herald::domain::webhook::new_signing_secret();
        let t = TestApp::spawn_with(move |s| {
            let p = herald::providers::webhook::Config {
                url: url.parse().expect("url"),
                signing_secret: herald::config::Secret::new(secret),
            };
            s.providers.insert("gateway".into(), p.into());
            s.channels.sms.providers = vec!["gateway".into()];
        })
        .await;
        (t, fake)
    }

    /// A pool straight to the test's database, for the test's own statements.
    pub fn pool(&self) -> &PgPool {
        &self.direct
    }

    pub fn dispatcher(&self) -> Dispatcher {
        self.app.dispatcher()
    }

    pub async fn key(&self, tenant: &str, scopes: &[Scope]) -> String {
        let mut conn = self.pool().acquire().await.expect("conn");
        keys::create_key(&mut conn, tenant, scopes).await.expect("create key").1
    }

    pub async fn request(&self, method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> Response {
        let mut req = self.client.request(method.parse().expect("method"), format!("{}{path}", self.addr));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        into_response(req.send().await.expect("request")).await
    }

    pub async fn post(&self, key: &str, body: Value) -> Response {
        self.request("POST", "/v1/notifications", Some(key), Some(body)).await
    }

    pub async fn post_with_key(&self, key: &str, idempotency_key: &str, body: Value) -> Response {
        let req = self
            .client
            .post(format!("{}/v1/notifications", self.addr))
            .bearer_auth(key)
            .header("Idempotency-Key", idempotency_key)
            .json(&body);
        into_response(req.send().await.expect("request")).await
    }

    pub async fn get(&self, key: &str, path: &str) -> Response {
        self.request("GET", path, Some(key), None).await
    }

    pub async fn notification(&self, key: &str, id: &str) -> Value {
        let r = self.get(key, &format!("/v1/notifications/{id}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body
    }

    /// Run the dispatcher until no job is due within the next second (retries with
    /// millisecond backoffs count as due; a send scheduled an hour ahead does not).
    pub async fn dispatch_until_idle(&self) -> Summary {
        let d = self.dispatcher();
        let mut total = Summary::default();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let s = d.run_once().await.expect("dispatch");
            total.claimed += s.claimed;
            total.sent += s.sent;
            total.retried += s.retried;
            total.failed += s.failed;
            total.expired += s.expired;
            total.fenced += s.fenced;
            total.rescued += s.rescued;
            if s.claimed == 0 {
                // In a session, as Herald's own statements: the pool may go through a pooler.
                let mut session = herald::store::session(self.pool()).await.expect("session");
                let due: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE run_at <= now() + interval '1 second'")
                        .fetch_one(&mut *session)
                        .await
                        .expect("count");
                if due == 0 {
                    return total;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(tokio::time::Instant::now() < deadline, "dispatch did not become idle");
        }
    }

    /// Make notification `id` look `days` old: created then (a new UUIDv7 id of that time,
    /// carried over to its events and jobs) and last updated then. Returns the new id.
    pub async fn age(&self, id: &str, days: u64) -> String {
        let old: uuid::Uuid = id.parse().expect("id");
        let then = std::time::SystemTime::now() - Duration::from_secs(days * 86_400);
        let secs = then.duration_since(std::time::UNIX_EPOCH).expect("time").as_secs();
        let new = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, secs, 0));
        for sql in [
            "UPDATE notifications SET id = $2, created_at = now() - make_interval(days => $3),
                                      updated_at = now() - make_interval(days => $3) WHERE id = $1",
            "UPDATE notification_events SET notification_id = $2 WHERE notification_id = $1 AND $3 >= 0",
            "UPDATE jobs SET notification_id = $2 WHERE notification_id = $1 AND $3 >= 0",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(old)
                .bind(new)
                .bind(i32::try_from(days).expect("days"))
                .execute(self.pool())
                .await
                .expect("age");
        }
        new.to_string()
    }

    pub async fn job_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM jobs").fetch_one(self.pool()).await.expect("count")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
        // Drop the database from a thread of its own: Drop cannot await, and the test's
        // runtime may be shutting down.
        let (admin, name) = (self.admin_url.clone(), self.db_name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ =
                        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
                            .execute(&mut conn)
                            .await;
                }
            });
        })
        .join();
    }
}

async fn into_response(r: reqwest::Response) -> Response {
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Response { status, headers, body }
}

fn replace_db(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).expect("url");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

pub fn email(to: &str, subject: &str) -> Value {
    serde_json::json!({"channel": "email", "to": to, "content": {"subject": subject, "text": "Hi there"}})
}

pub fn is_problem(r: &Response) -> bool {
    r.headers.get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"))
        && r.body.get("status").and_then(Value::as_u64) == Some(u64::from(r.status.as_u16()))
        && r.body.get("type").is_some()
        && r.body.get("title").is_some()
        && r.body.get("detail").is_some()
        && r.body.get("request_id").is_some()
        && r.body.get("instance").is_some()
}
