//! Integration tests: one binary (link once), real PostgreSQL, real sockets.

mod consent;
mod dispatch;
mod fairness;
mod fake_http;
mod fake_smtp;
mod faults;
mod first_hour;
mod helpers;
mod hostile;
mod ingest;
mod isolation;
mod lambda_emulator;
mod notifications;
mod ops;
mod pooler;
mod process;
mod props;
mod provider_settings;
mod providers;
mod push;
mod queue;
mod receipts;
mod scale;
mod send_limits;
mod sms;
mod templates;
