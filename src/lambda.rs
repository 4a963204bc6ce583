//! Lambda mode: the same binary as a function, when `AWS_LAMBDA_RUNTIME_API` is set and it is
//! started with no arguments (as Lambda starts a custom runtime). `HERALD_LAMBDA_ROLE`:
//!
//! * `api` (default): the one `http::router`, served through `lambda_http` (API Gateway HTTP
//!   and REST, Function URLs, ALB). It never calls providers and starts no background work:
//!   Lambda freezes the sandbox after each response, so spawned work would stall.
//! * `worker`: each (scheduled) invocation drains due work with `Dispatcher::drain`, stops
//!   claiming when less than `lambda.deadline_margin_ms` remains, bounds each send by the time
//!   left, and answers a JSON summary before the deadline.
//!
//! Neither role runs migrations (run `herald migrate` as a deploy step); the pool is small and
//! connects lazily, once per cold start.

use std::time::{Duration, SystemTime};

use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::info;

use crate::app::{App, AppError};
use crate::config::Settings;
use crate::http;

pub fn is_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
}

pub async fn run(mut settings: Settings) -> Result<(), AppError> {
    let role = std::env::var("HERALD_LAMBDA_ROLE").unwrap_or_else(|_| "api".into());
    // Each execution environment has its own pool: keep it small (connections add up with
    // concurrency), and never migrate from a function.
    settings.database.max_connections = settings.database.max_connections.min(2);
    settings.database.migrate_on_start = false;
    let margin = Duration::from_millis(settings.lambda.deadline_margin_ms);
    let app = App::build(settings)?;
    info!(role = %role, "starting as a Lambda function");
    let result = match role.as_str() {
        "api" => lambda_http::run(http::router(app.state())).await,
        "worker" => {
            let dispatcher = app.dispatcher();
            lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
                let dispatcher = dispatcher.clone();
                async move {
                    let left = event.context.deadline().duration_since(SystemTime::now()).unwrap_or_default();
                    let summary = dispatcher.drain(Instant::now() + left, margin).await.map_err(|e| e.to_string())?;
                    info!(?summary, "drained");
                    Ok::<Value, lambda_runtime::Error>(json!({
                        "claimed": summary.claimed,
                        "sent": summary.sent,
                        "retried": summary.retried,
                        "failed": summary.failed,
                        "expired": summary.expired,
                        "deferred": summary.deferred,
                        "rescued": summary.rescued,
                        "callbacks_delivered": summary.callbacks_delivered,
                    }))
                }
            }))
            .await
        }
        other => {
            return Err(AppError::Lambda(format!("HERALD_LAMBDA_ROLE `{other}`: use api or worker")));
        }
    };
    result.map_err(|e| AppError::Lambda(format!("lambda runtime: {e}")))
}
