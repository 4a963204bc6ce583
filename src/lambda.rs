//! Lambda mode: the same binary as a function, when `AWS_LAMBDA_RUNTIME_API` is set and it is
//! started with no arguments (as Lambda starts a custom runtime). `HERALD_LAMBDA_ROLE`:
//!
//! * `api` (default): the one `http::router`, served through `lambda_http` (API Gateway HTTP
//!   and REST, Function URLs, ALB). It never calls providers and starts no background work:
//!   Lambda freezes the sandbox after each response, so spawned work would stall.
//! * `worker`: each invocation (an EventBridge schedule, or an SQS batch: each record is only
//!   a wake-up hint, PostgreSQL stays the truth) drains due work with `Dispatcher::drain`, stops
//!   claiming when less than `lambda.deadline_margin_ms` remains, bounds each send by the time
//!   left, and answers before the deadline: a JSON summary, or to SQS
//!   `{"batchItemFailures": []}` (every record's id when the drain could not run, so SQS
//!   delivers them again). A deadline that cannot be right is replaced by
//!   `lambda.fallback_budget_ms`.
//!
//! Neither role runs migrations (run `herald migrate` as a deploy step); the pool is small and
//! connects lazily, once per cold start.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::{info, warn};

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
    settings.database.read_max_connections = settings.database.read_max_connections.min(1);
    settings.database.dispatch_max_connections = match settings.database.dispatch_max_connections {
        0 => 3,
        n => n.min(3),
    };
    settings.database.migrate_on_start = false;
    let margin = Duration::from_millis(settings.lambda.deadline_margin_ms);
    let fallback = Duration::from_millis(settings.lambda.fallback_budget_ms);
    let app = App::build(settings)?;
    info!(role = %role, "starting as a Lambda function");
    let result = match role.as_str() {
        "api" => {
            use tower::ServiceExt;
            lambda_http::run(http::router(app.state()).map_request(without_stage)).await
        }
        "worker" => {
            let dispatcher = app.dispatcher();
            let warned = Arc::new(AtomicBool::new(false));
            lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
                let dispatcher = dispatcher.clone();
                let budget = budget(event.context.deadline, SystemTime::now(), fallback, &warned);
                let sqs = sqs_message_ids(&event.payload);
                async move {
                    // Boxed: nested in the runtime's service futures, its state machine is deep enough
                    // to pass the compiler's layout depth limit in release builds.
                    let drained = Box::pin(dispatcher.drain(Instant::now() + budget, margin)).await;
                    match (drained, sqs) {
                        (Ok(summary), None) => {
                            info!(?summary, "drained");
                            // The summary is the invocation's answer, as `Summary` serializes.
                            Ok::<Value, lambda_runtime::Error>(serde_json::to_value(summary)?)
                        }
                        (Ok(summary), Some(_)) => {
                            info!(?summary, "drained on an SQS wake-up");
                            Ok(json!({"batchItemFailures": []}))
                        }
                        // The records are hints: give them back, to wake a later invocation.
                        (Err(e), Some(ids)) => {
                            warn!(error = %e, "could not drain; SQS will deliver the wake-ups again");
                            let failures: Vec<Value> = ids.iter().map(|id| json!({"itemIdentifier": id})).collect();
                            Ok(json!({"batchItemFailures": failures}))
                        }
                        (Err(e), None) => Err(e.to_string().into()),
                    }
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

/// API Gateway REST events carry the stage in front of the path (`/prod/v1/notifications`,
/// as the caller's URL has it): Herald's routes start at `/`, so the stage is taken off, as
/// lambda_http does when told by `AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH` (an environment
/// variable this process does not set for itself).
/// Done before routing.
fn without_stage(mut req: lambda_http::Request) -> lambda_http::Request {
    use lambda_http::RequestExt;
    use lambda_http::request::RequestContext;
    let stage = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV1(ctx)) => ctx.stage.clone(),
        _ => None,
    };
    if let Some(stage) = stage.filter(|s| s != "$default") {
        let prefix = format!("/{stage}");
        let path_and_query = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
        if let Some(rest) = path_and_query.strip_prefix(&prefix)
            && (rest.starts_with('/') || rest.starts_with('?') || rest.is_empty())
        {
            let rest = if rest.starts_with('/') { rest.to_owned() } else { format!("/{rest}") };
            if let Ok(uri) = rest.parse() {
                *req.uri_mut() = uri;
            }
        }
    }
    req
}

/// The time an invocation may drain for: until its deadline (milliseconds since the epoch),
/// or `fallback` when the deadline cannot be right (absent, already past, or more than the 15
/// minutes Lambda allows ahead), warning once.
fn budget(deadline_ms: u64, now: SystemTime, fallback: Duration, warned: &AtomicBool) -> Duration {
    const LONGEST: Duration = Duration::from_secs(15 * 60);
    let now_ms = u64::try_from(now.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX);
    match deadline_ms.checked_sub(now_ms).map(Duration::from_millis) {
        Some(left) if !left.is_zero() && left <= LONGEST => left,
        _ => {
            if !warned.swap(true, Ordering::Relaxed) {
                warn!(
                    deadline_ms,
                    fallback_ms = fallback.as_millis() as u64,
                    "the invocation's deadline cannot be right (absent, past or over 15 minutes ahead, as local emulators \
                     send); draining for lambda.fallback_budget_ms instead"
                );
            }
            fallback
        }
    }
}

/// The message ids of an SQS event (`{"Records": [{"eventSource": "aws:sqs", "messageId"}…]}`);
/// `None` for any other event.
fn sqs_message_ids(event: &Value) -> Option<Vec<String>> {
    let records = event.get("Records")?.as_array()?;
    if records.is_empty() || !records.iter().all(|r| r["eventSource"] == "aws:sqs") {
        return None;
    }
    Some(records.iter().filter_map(|r| r["messageId"].as_str().map(str::to_owned)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_that_cannot_be_right_get_the_fallback_budget() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let now_ms = 1_800_000_000_000;
        let fallback = Duration::from_secs(30);
        let warned = AtomicBool::new(false);
        assert_eq!(budget(now_ms + 20_000, now, fallback, &warned), Duration::from_secs(20));
        assert!(!warned.load(Ordering::Relaxed));
        // cargo-lambda's emulator: its timeout, 600000, as if it were an epoch time (1970).
        assert_eq!(budget(600_000, now, fallback, &warned), fallback);
        assert!(warned.load(Ordering::Relaxed));
        assert_eq!(budget(0, now, fallback, &warned), fallback, "absent");
        assert_eq!(budget(now_ms - 1, now, fallback, &warned), fallback, "past");
        assert_eq!(budget(now_ms + 16 * 60 * 1000, now, fallback, &warned), fallback, "over 15 minutes");
    }

    #[test]
    fn sqs_events_are_told_from_others() {
        let sqs = serde_json::json!({"Records": [{"messageId": "m1", "eventSource": "aws:sqs", "body": "wake"},
                                                 {"messageId": "m2", "eventSource": "aws:sqs", "body": "wake"}]});
        assert_eq!(sqs_message_ids(&sqs), Some(vec!["m1".to_owned(), "m2".to_owned()]));
        assert_eq!(sqs_message_ids(&serde_json::json!({"detail-type": "Scheduled Event"})), None);
        assert_eq!(sqs_message_ids(&serde_json::json!({"Records": [{"eventSource": "aws:s3"}]})), None);
    }
}
