//! Herald behind a real transaction pooler (issue 22): Debian's PgBouncer 1.18 with
//! `pool_mode = transaction` and few server connections, so clients share them. Two API
//! replicas and a dispatcher take concurrent POSTs through it, with keyed retries, while the
//! pooler's server connections are reconnected, killed and the pooler itself restarted. Every
//! answer must be true: no 500, every 202 stored exactly once and sent, nothing stored for any
//! other answer.
//!
//! PgBouncer comes from Debian (`.ci/run` installs it). Without it these tests say so and pass
//! on a developer's machine, unless `HERALD_REQUIRE_PGBOUNCER` is set, as CI sets it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herald::store::keys::Scope;
use reqwest::StatusCode;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::TestApp;

/// A PgBouncer in transaction mode in front of the test PostgreSQL, on a port of its own.
pub(crate) struct Bouncer {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    ini: PathBuf,
    run_as: Option<&'static str>,
}

impl Bouncer {
    /// Start one, or `None` (with a note) when PgBouncer is not installed and not required.
    pub(crate) fn start() -> Option<Bouncer> {
        let installed = Command::new("pgbouncer").arg("--version").output().is_ok_and(|o| o.status.success());
        if !installed {
            assert!(
                std::env::var_os("HERALD_REQUIRE_PGBOUNCER").is_none(),
                "HERALD_REQUIRE_PGBOUNCER is set but pgbouncer is not installed (apt-get install pgbouncer)"
            );
            eprintln!("skipped: pgbouncer is not installed (apt-get install pgbouncer)");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("herald-pgbouncer-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let (pg_host, pg_port) = upstream();
        let user = whoami();
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host={pg_host} port={pg_port}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
                 listen_port = {port}\nauth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
                 default_pool_size = 4\nmax_client_conn = 500\nadmin_users = {user}\n\
                 ignore_startup_parameters = extra_float_digits\nunix_socket_dir =\nlogfile = {log}\n\
                 pidfile = {pid}\n",
                users = dir.join("users.txt").display(),
                log = dir.join("pgbouncer.log").display(),
                pid = dir.join("pgbouncer.pid").display(),
            ),
        )
        .expect("ini");
        std::fs::write(dir.join("users.txt"), format!("\"{user}\" \"\"\n\"postgres\" \"\"\n")).expect("users");
        // PgBouncer will not run as root: as root, it drops to `postgres`, which must read and
        // write its files.
        let run_as = (user == "root").then_some("postgres");
        if run_as.is_some() {
            let _ = Command::new("chmod").args(["-R", "a+rwX"]).arg(&dir).status();
        }
        let mut b = Bouncer { child: None, dir, port, ini, run_as };
        b.spawn();
        Some(b)
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("pgbouncer");
        if let Some(u) = self.run_as {
            cmd.args(["-u", u]);
        }
        cmd.arg(&self.ini).stdout(Stdio::null()).stderr(Stdio::null());
        self.child = Some(cmd.spawn().expect("start pgbouncer"));
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("pgbouncer did not listen on {}: {}", self.port, self.log());
    }

    /// Stop and start it again, on the same port (connections through it are cut).
    fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn();
    }

    /// A command on PgBouncer's admin console (`RECONNECT`, `KILL db`, `RESUME db`).
    fn admin(&self, command: &str) {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", &whoami(), "-d", "pgbouncer", "-c", command])
            .output()
            .expect("psql");
        assert!(out.status.success(), "{command}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn whoami() -> String {
    std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| {
        let out = Command::new("id").arg("-un").output().expect("id");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    })
}

/// Where the tests' PostgreSQL listens.
fn upstream() -> (String, u16) {
    std::env::var("HERALD_TEST_DATABASE_URL")
        .ok()
        .and_then(|u| url::Url::parse(&u).ok())
        .map_or(("127.0.0.1".to_owned(), 5432), |u| {
            (u.host_str().unwrap_or("127.0.0.1").to_owned(), u.port().unwrap_or(5432))
        })
}

/// Herald on a fresh database, reached through `bouncer` in transaction-pooler mode, with the
/// direct URL for migrations and `LISTEN`; and a second API replica on the same database.
pub(crate) async fn herald_behind(bouncer: &Bouncer) -> (TestApp, String) {
    let port = bouncer.port;
    let t = TestApp::spawn_with(move |s| {
        let direct = s.database.url.expose().to_owned();
        let mut u = url::Url::parse(&direct).expect("url");
        u.set_host(Some("127.0.0.1")).expect("host");
        u.set_port(Some(port)).expect("port");
        u.query_pairs_mut().append_pair("sslmode", "disable");
        s.database.url = herald::config::Secret::new(u.to_string());
        s.database.direct_url = herald::config::Secret::new(direct);
        s.database.transaction_pooler = true;
        s.database.max_connections = 8;
        s.database.acquire_timeout_ms = 1000;
        s.channels.email.providers = vec!["console".into()];
    })
    .await;
    let replica = herald::app::App::build((*t.app.settings).clone()).expect("replica");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = format!("http://{}", listener.local_addr().expect("addr"));
    let limits = herald::http::serve::Limits::of(&replica.settings);
    tokio::spawn(herald::http::serve::serve(
        listener,
        herald::http::router(replica.state()),
        limits,
        CancellationToken::new(),
    ));
    (t, addr)
}

/// What each request was answered.
struct Ledger {
    answers: Vec<(String, StatusCode)>,
}

/// `clients` clients post `each` SMS each, without pause, alternately to the two replicas;
/// every third request carries an Idempotency-Key and is sent twice, once to each replica (a
/// client's retry).
async fn load(t: &TestApp, replica: &str, key: &str, clients: usize, each: usize) -> Ledger {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, bases, key) = (t.client.clone(), [t.addr.clone(), replica.to_owned()], key.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for i in 0..each {
                let marker = format!("c{c}-{i}");
                let body = json!({"channel": "sms", "to": "+14155550100", "content": {"text": marker}});
                let keyed = i % 3 == 0;
                let tries = if keyed { 2 } else { 1 };
                for attempt in 0..tries {
                    let mut req =
                        client.post(format!("{}/v1/notifications", bases[(i + attempt) % 2])).bearer_auth(&key);
                    if keyed {
                        req = req.header("Idempotency-Key", &marker);
                    }
                    let status = match req.json(&body).send().await {
                        Ok(r) => r.status(),
                        Err(_) => StatusCode::BAD_GATEWAY, // no answer at all: counted apart
                    };
                    answers.push((marker.clone(), status));
                }
            }
            answers
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.extend(t.await.expect("client"));
    }
    Ledger { answers }
}

/// The ledger against the database: no 500, every accepted marker stored once (keyed retries
/// included), no marker stored that was never accepted, and every stored one sent.
async fn check(t: &TestApp, ledger: &Ledger) -> (usize, usize) {
    // Read on PostgreSQL itself: the app's pool goes through the pooler, where a statement
    // outside a transaction may be prepared on one server connection and run on another.
    let direct = sqlx::PgPool::connect(t.app.settings.database.direct_url.expose()).await.expect("direct");
    let stored: Vec<(String, String)> =
        sqlx::query_as("SELECT content->>'text', status FROM notifications").fetch_all(&direct).await.expect("stored");
    direct.close().await;
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for (m, _) in &stored {
        *copies.entry(m.as_str()).or_default() += 1;
    }
    let mut accepted: HashMap<&str, bool> = HashMap::new();
    let mut refused = 0;
    for (m, status) in &ledger.answers {
        assert_ne!(*status, StatusCode::INTERNAL_SERVER_ERROR, "{m} was answered 500");
        let ok = status.is_success();
        *accepted.entry(m.as_str()).or_default() |= ok;
        if !ok {
            refused += 1;
            assert!(*status == StatusCode::SERVICE_UNAVAILABLE || *status == StatusCode::BAD_GATEWAY, "{m}: {status}");
        }
    }
    for (m, ok) in &accepted {
        let n = copies.get(m).copied().unwrap_or(0);
        if *ok {
            assert_eq!(n, 1, "{m} was accepted and is stored {n} times");
        } else {
            // Answered only with errors: stored at most once (a 503 says nothing was stored, and
            // a request that got no answer at all may or may not have been).
            assert!(n <= 1, "{m} is stored {n} times");
        }
    }
    for (m, _) in &stored {
        assert!(accepted.contains_key(m.as_str()), "{m} is stored but was never sent");
    }
    for (m, status) in &stored {
        assert_eq!(status, "sent", "{m} is {status}");
    }
    (accepted.values().filter(|ok| **ok).count(), refused)
}

/// Drive the dispatcher until every stored notification is sent.
async fn dispatch_all(t: &TestApp) {
    t.dispatch_until_idle().await;
}

/// 16 clients post without pause through PgBouncer in transaction mode to two API replicas,
/// a third of them retrying with the same Idempotency-Key, then a dispatcher sends everything:
/// no 500, every accepted notification stored once and sent, keyed retries answered with the
/// original.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_behind_a_transaction_pooler_answer_true() {
    let Some(bouncer) = Bouncer::start() else { return };
    let (t, replica) = herald_behind(&bouncer).await;
    let key = t.key("acme", &[Scope::Send, Scope::Read]).await;
    let ledger = load(&t, &replica, &key, 16, 30).await;
    dispatch_all(&t).await;
    let (accepted, refused) = check(&t, &ledger).await;
    println!("{accepted} accepted, {refused} answers refused, of {} answers", ledger.answers.len());
    assert_eq!(refused, 0, "a healthy pooler refused nothing:\n{}", bouncer.log());
    assert_eq!(accepted, 16 * 30);
}

/// The same load while the pooler's server connections are reconnected and killed, and the
/// pooler itself restarted: some requests are refused (503, or no answer while it is down),
/// none is answered 500, every accepted one is stored once and sent, and nothing refused with
/// a 503 is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooler_faults_during_load_leave_every_answer_true() {
    let Some(bouncer) = Bouncer::start() else { return };
    let (t, replica) = herald_behind(&bouncer).await;
    let key = t.key("acme", &[Scope::Send, Scope::Read]).await;
    let direct = t.app.settings.database.direct_url.expose().to_owned();
    let db = url::Url::parse(&direct).expect("url").path().trim_start_matches('/').to_owned();
    // The faults, from a thread of their own (they wait on psql and on restarting PgBouncer),
    // while the load runs.
    let faulting = std::thread::spawn(move || {
        let mut b = bouncer;
        std::thread::sleep(Duration::from_millis(300));
        b.admin("RECONNECT");
        std::thread::sleep(Duration::from_millis(300));
        b.admin(&format!("KILL \"{db}\""));
        std::thread::sleep(Duration::from_millis(300));
        b.admin(&format!("RESUME \"{db}\""));
        std::thread::sleep(Duration::from_millis(300));
        b.restart();
        b
    });
    let ledger = load(&t, &replica, &key, 16, 60).await;
    let bouncer = faulting.join().expect("faults");
    dispatch_all(&t).await;
    let (accepted, refused) = check(&t, &ledger).await;
    println!(
        "{accepted} accepted, {refused} answers refused, of {} answers, through RECONNECT, KILL and a restart",
        ledger.answers.len()
    );
    assert!(accepted > 0, "{}", bouncer.log());
}
