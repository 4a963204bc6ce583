//! Prometheus metrics (`GET /metrics`). Code records through the `metrics` facade with the
//! functions below, one per fact, so every name and label set is written once; the
//! Prometheus exporter renders them. Names follow Prometheus conventions: `herald_` prefix,
//! `_total` counters, base units (`_seconds`). Gauges that come from the database (queue depth,
//! oldest due age, stuck leases) are refreshed by `refresh` on a timer, never per scrape.
//!
//! A leaf: it imports nothing of Herald, so any layer may record.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Seconds: from a fast provider call to a slow queue.
const BUCKETS: [f64; 15] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];

/// The process's recorder, installed on first use. A process that already has another
/// recorder keeps it; this handle then renders nothing of Herald's.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
            .map_or_else(|_| PrometheusBuilder::new().build_recorder(), PrometheusBuilder::build_recorder);
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_ok() {
            describe();
        }
        handle
    })
}

/// The text exposition of every metric.
pub fn render() -> String {
    handle().render()
}

fn describe() {
    describe_counter!("herald_notifications_accepted_total", "Notifications accepted (committed), by channel.");
    describe_counter!(
        "herald_attempts_total",
        "Provider calls, by channel, provider and outcome (sent or the error class)."
    );
    describe_histogram!("herald_send_duration_seconds", "Duration of one provider call, by provider.");
    describe_histogram!(
        "herald_accept_to_sent_seconds",
        "From acceptance to the provider accepting the message, by channel."
    );
    describe_gauge!("herald_queue_depth", "Send jobs waiting, by channel and priority (lane).");
    describe_gauge!("herald_queue_due", "Send jobs waiting and due now, by lane.");
    describe_gauge!("herald_queue_oldest_due_age_seconds", "How long the oldest due send job of a lane has waited.");
    describe_gauge!(
        "herald_leases_stuck",
        "Send jobs whose lease expired without an outcome (waiting for the rescuer)."
    );
    describe_counter!("herald_leases_rescued_total", "Expired leases taken back for another attempt.");
    describe_counter!(
        "herald_sends_deferred_total",
        "Sends held back by a full throttle or quota, by channel and reason."
    );
    describe_counter!(
        "herald_receipts_total",
        "Provider receipt requests, by provider and result (applied, held, duplicate, unmatched, or why they were refused)."
    );
    describe_counter!(
        "herald_callbacks_total",
        "Status callback deliveries, by outcome (delivered, retrying, given_up)."
    );
    describe_gauge!(
        "herald_provider_circuit_open",
        "1 while a provider's circuit breaker is open or half-open, else 0."
    );
    describe_counter!("herald_http_requests_total", "HTTP requests, by route and status.");
    describe_histogram!("herald_http_request_duration_seconds", "HTTP request duration, by route.");
}

/// The outcomes of a status callback delivery (`callback`).
pub const CALLBACK_OUTCOMES: [&str; 3] = ["delivered", "retrying", "given_up"];

/// Register every series of the README's table at zero, so that a dashboard or an alert reads
/// 0 before the first event instead of no data: by channel (`channels`: each with its
/// providers), by provider, attempt outcome (`outcomes`), deferral reason (`reasons`) and
/// callback outcome; and the HTTP series of the route that matters most, `POST
/// /v1/notifications` answered 202. Series whose labels come from traffic (other routes and
/// statuses, receipt results other than `applied`) appear with it.
pub fn prime(channels: &[(&'static str, Vec<String>)], outcomes: &[&'static str], reasons: &[&'static str]) {
    handle();
    for (channel, providers) in channels {
        counter!("herald_notifications_accepted_total", "channel" => *channel).increment(0);
        let _ = histogram!("herald_accept_to_sent_seconds", "channel" => *channel);
        for reason in reasons {
            counter!("herald_sends_deferred_total", "channel" => *channel, "reason" => *reason).increment(0);
        }
        for provider in providers {
            for outcome in outcomes {
                counter!("herald_attempts_total", "channel" => *channel, "provider" => provider.clone(), "outcome" => *outcome)
                    .increment(0);
            }
            let _ = histogram!("herald_send_duration_seconds", "provider" => provider.clone());
            counter!("herald_receipts_total", "provider" => provider.clone(), "result" => "applied").increment(0);
            gauge!("herald_provider_circuit_open", "provider" => provider.clone()).set(0.0);
        }
    }
    counter!("herald_http_requests_total", "route" => "/v1/notifications", "status" => "202").increment(0);
    let _ = histogram!("herald_http_request_duration_seconds", "route" => "/v1/notifications");
    counter!("herald_leases_rescued_total").increment(0);
    gauge!("herald_leases_stuck").set(0.0);
    for outcome in CALLBACK_OUTCOMES {
        counter!("herald_callbacks_total", "outcome" => outcome).increment(0);
    }
}

pub fn accepted(channel: &'static str, n: u64) {
    counter!("herald_notifications_accepted_total", "channel" => channel).increment(n);
}

/// One provider call: `outcome` is `sent` or the error class.
pub fn attempt(channel: &'static str, provider: &str, outcome: &'static str, took: Duration) {
    counter!("herald_attempts_total", "channel" => channel, "provider" => provider.to_owned(), "outcome" => outcome)
        .increment(1);
    histogram!("herald_send_duration_seconds", "provider" => provider.to_owned()).record(took.as_secs_f64());
}

pub fn accept_to_sent(channel: &'static str, took: Duration) {
    histogram!("herald_accept_to_sent_seconds", "channel" => channel).record(took.as_secs_f64());
}

pub fn rescued(n: u64) {
    counter!("herald_leases_rescued_total").increment(n);
}

pub fn deferred(channel: &'static str, reason: &'static str) {
    counter!("herald_sends_deferred_total", "channel" => channel, "reason" => reason).increment(1);
}

pub fn receipt(provider: &str, result: &'static str, n: u64) {
    counter!("herald_receipts_total", "provider" => provider.to_owned(), "result" => result).increment(n);
}

pub fn callback(outcome: &'static str) {
    counter!("herald_callbacks_total", "outcome" => outcome).increment(1);
}

pub fn http(route: String, status: u16, took: Duration) {
    histogram!("herald_http_request_duration_seconds", "route" => route.clone()).record(took.as_secs_f64());
    counter!("herald_http_requests_total", "route" => route, "status" => status.to_string()).increment(1);
}

/// One lane's queue, as last read from the database.
pub fn lane(channel: &str, priority: &str, waiting: i64, due: i64, oldest_due: Option<f64>) {
    let labels = [("channel", channel.to_owned()), ("priority", priority.to_owned())];
    gauge!("herald_queue_depth", &labels).set(waiting as f64);
    gauge!("herald_queue_due", &labels).set(due as f64);
    gauge!("herald_queue_oldest_due_age_seconds", &labels).set(oldest_due.unwrap_or(0.0));
}

pub fn stuck(n: i64) {
    gauge!("herald_leases_stuck").set(n as f64);
}

pub fn circuit(provider: &str, open: bool) {
    gauge!("herald_provider_circuit_open", "provider" => provider.to_owned()).set(if open { 1.0 } else { 0.0 });
}

/// Housekeeping the exporter needs now and then (drains histogram samples).
pub fn upkeep() {
    handle().run_upkeep();
}
