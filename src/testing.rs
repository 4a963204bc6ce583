//! For the crate's white-box tests (`#[cfg(test)]` only): Herald on a fresh PostgreSQL database
//! that is dropped when the test ends, accepting notifications as the API does (`Intake`), with
//! the `log` provider (named `mail`) on every channel. The server is `HERALD_TEST_DATABASE_URL`,
//! else a PostgreSQL on localhost:5432, as for the black-box tests in `tests/`.

use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};

use crate::app::App;
use crate::config::{Secret, Settings};
use crate::domain::NotificationId;
use crate::providers::log;
use crate::store::keys::{self, Caller, Scope};
use crate::store::notifications as store;
use crate::views::NotificationView;

pub(crate) struct TestDb {
    pub(crate) app: App,
    name: String,
    admin_url: String,
}

impl TestDb {
    pub(crate) async fn new() -> TestDb {
        Self::with(|_| {}).await
    }

    /// A database for settings changed by `configure`.
    pub(crate) async fn with(configure: impl FnOnce(&mut Settings)) -> TestDb {
        let admin_url = match std::env::var("HERALD_TEST_DATABASE_URL") {
            Ok(url) => url,
            Err(_) => crate::dev::local_postgres(false).await.ok().filter(|pg| !pg.is_throwaway()).map_or_else(
                || panic!("tests need PostgreSQL on localhost:5432; {}", crate::dev::INSTALL_HINT),
                |pg| pg.admin_url.clone(),
            ),
        };
        let name = format!("herald_unit_{}", uuid::Uuid::new_v4().simple());
        crate::dev::ensure_database(&admin_url, &name).await.expect("create the test database");
        let mut url = url::Url::parse(&admin_url).expect("a database URL");
        url.set_path(&format!("/{name}"));
        let mut settings = Settings::from_figment(&Settings::figment(None)).expect("default settings");
        settings.database.url = Secret::new(url.to_string());
        settings.dispatch.retry_base_ms = 10;
        settings.dispatch.retry_max_ms = 40;
        settings.dispatch.lease_secs = 5;
        settings.providers.insert("mail".into(), log::Config::default().into());
        for channel in crate::domain::Channel::ALL {
            settings.channels.get_mut(channel).providers = vec!["mail".into()];
        }
        configure(&mut settings);
        let app = App::build(settings).expect("build the app");
        app.migrate().await.expect("migrate");
        TestDb { app, name, admin_url }
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.app.pool
    }

    /// A caller of `tenant` (created if new) with every scope.
    pub(crate) async fn caller(&self, tenant: &str) -> Caller {
        let mut conn = self.pool().acquire().await.expect("a connection");
        let (_, key) = keys::create_key(&mut conn, tenant, &[Scope::Admin]).await.expect("a key");
        keys::authenticate(&mut conn, &key).await.expect("authenticate").expect("the key's caller")
    }

    /// Accept `body` as `caller`'s notification, as `POST /v1/notifications` does.
    pub(crate) async fn accept(&self, caller: &Caller, body: Value) -> NotificationId {
        let request = crate::accept::Request { body, key: None, traceparent: None };
        match self.app.intake().one(caller, request, || {}).await {
            Ok(crate::accept::Accepted::Created { record, .. }) => record.id,
            other => panic!("not created: {other:?}"),
        }
    }

    /// The notification with its timeline, as `GET /v1/notifications/{id}` answers it.
    pub(crate) async fn notification(&self, id: NotificationId) -> Value {
        let mut conn = self.pool().acquire().await.expect("a connection");
        let record = store::get(&mut conn, id, None).await.expect("read").expect("the notification");
        let events = store::events(&mut conn, &record).await.expect("its events");
        serde_json::to_value(NotificationView::new(record, Some(events))).expect("a view")
    }
}

/// An email to `to`.
pub(crate) fn email(to: &str) -> Value {
    serde_json::json!({"channel": "email", "to": to, "content": {"subject": "hi", "text": "hello"}})
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // From a thread of its own: Drop cannot await, and the test's runtime may be stopping.
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}
