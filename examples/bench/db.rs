//! Databases on the local PostgreSQL (found as `herald dev` finds it): a fresh database per
//! scenario, named `herald_bench_<pid>_<scenario>`, each dropped `WITH (FORCE)` when its
//! scenario ends and, whatever happened, at the end of the run.

use std::sync::Mutex;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

use crate::Result;

pub struct Databases {
    pg: herald::dev::LocalPostgres,
    prefix: String,
    created: Mutex<Vec<String>>,
}

impl Databases {
    pub async fn connect() -> Result<Databases> {
        let pg = herald::dev::local_postgres(false).await?;
        Ok(Databases { pg, prefix: format!("herald_bench_{}", std::process::id()), created: Mutex::new(Vec::new()) })
    }

    /// `PostgreSQL 15.4 (Debian 15.4-1)`: `version()` up to its build details.
    pub async fn server_version(&self) -> Result<String> {
        let mut conn = self.admin().await?;
        let v: String = sqlx::query_scalar("SELECT version()").fetch_one(&mut conn).await?;
        conn.close().await?;
        Ok(v.split(" on ").next().unwrap_or(&v).to_owned())
    }

    /// A fresh, empty database for `scenario`; returns its name and URL.
    pub async fn create(&self, scenario: &str) -> Result<(String, String)> {
        let name = format!("{}_{scenario}", self.prefix);
        self.drop_database(&name).await?;
        herald::dev::ensure_database(&self.pg.admin_url, &name).await?;
        self.lock().push(name.clone());
        let url = self.pg.url_for(&name);
        Ok((name, url))
    }

    /// A copy of database `template` (which nothing may be connected to) for `scenario`.
    pub async fn copy(&self, template: &str, scenario: &str) -> Result<(String, String)> {
        let name = format!("{}_{scenario}", self.prefix);
        self.drop_database(&name).await?;
        let mut conn = self.admin().await?;
        let sql = format!("CREATE DATABASE {} TEMPLATE {}", quote(&name), quote(template));
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await?;
        conn.close().await?;
        self.lock().push(name.clone());
        let url = self.pg.url_for(&name);
        Ok((name, url))
    }

    pub async fn drop_database(&self, name: &str) -> Result<()> {
        let mut conn = self.admin().await?;
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote(name));
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await?;
        conn.close().await?;
        self.lock().retain(|n| n != name);
        Ok(())
    }

    /// Drop every database this run created and has not dropped yet.
    pub async fn drop_all(&self) {
        let names = self.lock().clone();
        for name in names {
            if let Err(e) = self.drop_database(&name).await {
                eprintln!("warning: could not drop database {name}: {e}");
            }
        }
    }

    /// Flush dirty pages before a measurement, so that a checkpoint forced by the previous
    /// scenario's writes does not land in the middle of it. Needs superuser; best effort.
    pub async fn checkpoint(&self) {
        if let Ok(mut conn) = self.admin().await {
            let _ = sqlx::query("CHECKPOINT").execute(&mut conn).await;
            let _ = conn.close().await;
        }
    }

    async fn admin(&self) -> Result<PgConnection> {
        let conn = tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(&self.pg.admin_url))
            .await
            .map_err(|_| "timed out connecting to PostgreSQL")??;
        Ok(conn)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.created.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// A small pool for the bench's own queries (progress polls).
pub async fn pool(url: &str) -> Result<PgPool> {
    Ok(PgPoolOptions::new().max_connections(2).acquire_timeout(Duration::from_secs(10)).connect(url).await?)
}

pub async fn count(pool: &PgPool, sql: &'static str) -> Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}
