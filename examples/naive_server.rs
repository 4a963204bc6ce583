//! The naive baseline for `examples/bench`: what a team writes first for "accept a
//! notification over HTTP and keep it in PostgreSQL". axum 0.8 + sqlx, a pool of 16 (what a
//! team tuning its first server would set), no auth,
//! no validation beyond "the body is JSON", and ONE `INSERT` (one commit) per request:
//!
//!     DATABASE_URL=postgres://… cargo run --release --example naive_server -- --listen 127.0.0.1:0
//!
//! `POST /v1/notifications` answers `202 {"id": "…"}`. The server creates its table
//! (`naive_notifications`) at start, prints the address it bound as the first line of stdout
//! (so `--listen 127.0.0.1:0` can be used), and stops on SIGTERM or ctrl-c. `NAIVE_LISTEN`
//! may stand in for `--listen`; the default is `127.0.0.1:8090`.
//!
//! Ids are UUIDv7 (time-ordered), as Herald's are, so the baseline is naive in its commit
//! pattern, not handicapped by random primary-key inserts.

use std::io::Write;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is required")?;
    let listen = listen_arg()?;
    let pool = PgPoolOptions::new().max_connections(16).acquire_timeout(Duration::from_secs(10)).connect(&url).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS naive_notifications (
             id         uuid        PRIMARY KEY,
             body       jsonb       NOT NULL,
             created_at timestamptz NOT NULL
         )",
    )
    .execute(&pool)
    .await?;

    let app = Router::new().route("/v1/notifications", post(create)).with_state(pool);
    let listener = tokio::net::TcpListener::bind(&listen).await.map_err(|e| format!("cannot bind {listen}: {e}"))?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", listener.local_addr()?)?;
    stdout.flush()?;
    axum::serve(listener, app).with_graceful_shutdown(shutdown()).await?;
    Ok(())
}

async fn create(State(pool): State<PgPool>, Json(body): Json<Value>) -> Result<(StatusCode, Json<Value>), StatusCode> {
    let id = uuid::Uuid::now_v7();
    sqlx::query("INSERT INTO naive_notifications (id, body, created_at) VALUES ($1, $2, now())")
        .bind(id)
        .bind(&body)
        .execute(&pool)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": id }))))
}

/// `--listen ADDR`, else `NAIVE_LISTEN`, else 127.0.0.1:8090.
fn listen_arg() -> Result<String, BoxError> {
    let mut args = std::env::args().skip(1);
    let mut listen = std::env::var("NAIVE_LISTEN").unwrap_or_else(|_| "127.0.0.1:8090".into());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs an address")?,
            other => return Err(format!("unknown argument `{other}` (usage: naive_server [--listen ADDR])").into()),
        }
    }
    Ok(listen)
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
