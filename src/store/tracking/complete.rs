//! Recording the outcomes of sends, many in one statement. Each outcome is fenced on its own
//! row: it applies only while its job still carries the lease token it was claimed with (every
//! claim bumps the token; a rescue does not, so a worker that finishes after its lease was
//! rescued but before anyone claimed the job again still records its send instead of having it
//! repeated), and its status change only from the statuses the status machine allows. A fenced
//! outcome changes nothing but is still kept in the timeline, marked `fenced`.
//!
//! Recording a send must also apply the receipts that came before it
//! (`receipt::apply_early`), in a statement after the record's commit: the dispatcher gathers
//! those reads from many sends into one, off the path of the records (a read after every batch
//! of records cost a third of dispatch throughput).
//!
//! The dispatcher gathers the outcomes of concurrent sends (`batching`) and writes them with
//! `complete`.

use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::Duration;

use serde_json::Value;
use sqlx::PgConnection;

use super::receipt::Recorded;
use super::{Applied, Lease, announced, queue_callback};
use crate::domain::Status;
use crate::store::{StoreResult, clean};

/// What became of one claimed send.
#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    /// The provider accepted the message.
    Sent { provider: String, provider_message_id: Option<String> },
    /// A transient failure: due again after `delay`, the next attempt starting from provider
    /// `next_route` of the channel's list (failover).
    Retrying { provider: Option<String>, delay: Duration, next_route: i32, error: String },
    /// The end without a send: `failed`, `expired` or `suppressed`; `event` is the timeline
    /// entry (`attempt` when a provider was called).
    Finished { status: Status, event: String, provider: Option<String>, error: String },
}

impl Outcome {
    /// `Finished` with `status` (`failed`, `expired` or `suppressed`).
    pub(crate) fn finished(status: Status, event: &str, provider: Option<&str>, error: &str) -> Outcome {
        debug_assert!(matches!(status, Status::Failed | Status::Expired | Status::Suppressed));
        Outcome::Finished {
            status,
            event: event.to_owned(),
            provider: provider.map(str::to_owned),
            error: error.to_owned(),
        }
    }
}

/// One outcome with its lease and the detail of its timeline event.
#[derive(Clone, Debug)]
pub(crate) struct Completion {
    pub(crate) lease: Lease,
    pub(crate) outcome: Outcome,
    pub(crate) detail: Value,
}

/// Write `items` in one statement; one `Applied` per item, in order.
#[tracing::instrument(name = "store.tracking.complete", skip_all, fields(items = items.len()))]
pub(crate) async fn complete(conn: &mut PgConnection, items: &[Completion]) -> StoreResult<Vec<Applied>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH input AS (
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::uuid[], $4::text[], $5::text[], $6::text[],
                                      $7::text[], $8::text[], $9::float8[], $10::int[], $11::jsonb[], $12::text[])
                     AS i(job_id, token, nid, status, event, provider, pmid, error, delay, next_route, detail, sources)
             ), done AS (
                 DELETE FROM jobs j USING input i
                 WHERE j.id = ANY(ARRAY(SELECT job_id FROM input WHERE status <> 'retrying'))
                   AND i.status <> 'retrying' AND j.id = i.job_id AND j.lease_token = i.token
                 RETURNING j.id, j.notification_id, j.attempt, NULL::timestamptz AS run_at
             ), again AS (
                 UPDATE jobs j
                 SET state = 'available', run_at = now() + make_interval(secs => i.delay), leased_until = NULL,
                     locked_by = NULL, route_index = i.next_route
                 FROM input i
                 WHERE j.id = ANY(ARRAY(SELECT job_id FROM input WHERE status = 'retrying'))
                   AND i.status = 'retrying' AND j.id = i.job_id AND j.lease_token = i.token
                 RETURNING j.id, j.notification_id, j.attempt, j.run_at
             ), ended AS (
                 SELECT * FROM done UNION ALL SELECT * FROM again
             ), upd AS (
                 UPDATE notifications n
                 SET status = i.status, provider = coalesce(i.provider, n.provider),
                     provider_message_id = CASE WHEN i.status = 'sent' THEN i.pmid ELSE n.provider_message_id END,
                     attempts = e.attempt, last_error = i.error, next_attempt_at = e.run_at, updated_at = now()
                 FROM ended e JOIN input i ON i.job_id = e.id
                 WHERE n.id = e.notification_id AND n.status = ANY(string_to_array(i.sources, ','))
                 RETURNING n.id, n.tenant_id, n.status, n.callback_url, n.next_attempt_at
             ), ev AS (
                 INSERT INTO notification_events (notification_id, type, status, provider, provider_message_id, detail)
                 SELECT i.nid, i.event, u.status, i.provider, CASE WHEN u.status = 'sent' THEN i.pmid END,
                        CASE WHEN u.id IS NOT NULL AND i.status = 'retrying'
                                 THEN i.detail || jsonb_build_object('next_attempt_at',
                                     to_char(u.next_attempt_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))
                             WHEN e.id IS NOT NULL THEN i.detail
                             ELSE i.detail || '{{\"fenced\": true}}' END
                 FROM input i LEFT JOIN ended e ON e.id = i.job_id LEFT JOIN upd u ON u.id = i.nid
                 ORDER BY i.job_id
             ){}
             SELECT id FROM ended",
            queue_callback(13)
        )
    });
    // The `= ANY(ARRAY(…))` conditions drive each job statement by the primary key from just
    // its own rows (a plain join walked every running job once per input row). Rows are
    // locked in job order, so two writers never wait on each other in a cycle.
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| items[i].lease.job_id);
    let mut cols = Columns::default();
    for &i in &order {
        cols.push(&items[i]);
    }
    let ended: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(SQL.as_str()))
        // Planned for each batch's size: a cached generic plan joined the batch to the jobs by
        // nested loops (36 ms for 256 outcomes where a custom plan takes 7 ms).
        .persistent(false)
        .bind(cols.job_id)
        .bind(cols.token)
        .bind(cols.nid)
        .bind(cols.status)
        .bind(cols.event)
        .bind(cols.provider)
        .bind(cols.pmid)
        .bind(cols.error)
        .bind(cols.delay)
        .bind(cols.next_route)
        .bind(cols.detail)
        .bind(cols.sources)
        .bind(announced())
        .fetch_all(&mut *conn)
        .await?;
    // The lease decides: a job we still held is ours to finish, whatever the status did.
    let ended: HashSet<i64> = ended.into_iter().collect();
    Ok(items.iter().map(|c| if ended.contains(&c.lease.job_id) { Applied::Yes } else { Applied::Fenced }).collect())
}

impl Completion {
    /// This outcome without what came from the provider beyond its class (its message id, its
    /// answer and error text), for an outcome the database refused as it was: the job still
    /// ends as it should (sent, retrying or failed) instead of being sent again when its lease
    /// runs out, and the timeline says why the details are missing.
    pub(crate) fn plain(&self, why: &str) -> Completion {
        let note = format!("the provider's answer could not be stored ({why})");
        let outcome = match &self.outcome {
            Outcome::Sent { provider, .. } => Outcome::Sent { provider: provider.clone(), provider_message_id: None },
            Outcome::Retrying { provider, delay, next_route, .. } => Outcome::Retrying {
                provider: provider.clone(),
                delay: *delay,
                next_route: *next_route,
                error: note.clone(),
            },
            Outcome::Finished { status, event, provider, .. } => Outcome::Finished {
                status: *status,
                event: event.clone(),
                provider: provider.clone(),
                error: note.clone(),
            },
        };
        let mut detail = serde_json::Map::new();
        for key in ["attempt", "error_class"] {
            if let Some(v) = self.detail.get(key) {
                detail.insert(key.into(), v.clone());
            }
        }
        detail.insert("unstorable".into(), Value::String(note));
        Completion { lease: self.lease, outcome, detail: Value::Object(detail) }
    }
}

/// The send `c` recorded, for `receipt::apply_early`; `None` for other outcomes.
pub(crate) fn recorded_send(c: &Completion) -> Option<Recorded> {
    match &c.outcome {
        Outcome::Sent { provider, provider_message_id } => Some(Recorded {
            notification_id: c.lease.notification_id,
            provider: provider.clone(),
            provider_message_id: provider_message_id.clone(),
        }),
        _ => None,
    }
}

#[derive(Default)]
struct Columns {
    job_id: Vec<i64>,
    token: Vec<i64>,
    nid: Vec<uuid::Uuid>,
    status: Vec<&'static str>,
    event: Vec<String>,
    provider: Vec<Option<String>>,
    pmid: Vec<Option<String>>,
    error: Vec<Option<String>>,
    delay: Vec<f64>,
    next_route: Vec<i32>,
    detail: Vec<Value>,
    sources: Vec<String>,
}

impl Columns {
    fn push(&mut self, c: &Completion) {
        let (status, event, provider, pmid, error, delay, next_route) = match &c.outcome {
            Outcome::Sent { provider, provider_message_id } => {
                (Status::Sent, "attempt", Some(provider.clone()), provider_message_id.clone(), None, 0.0, 0)
            }
            Outcome::Retrying { provider, delay, next_route, error } => (
                Status::Retrying,
                "attempt",
                provider.clone(),
                None,
                Some(error.clone()),
                delay.as_secs_f64(),
                *next_route,
            ),
            Outcome::Finished { status, event, provider, error } => {
                (*status, event.as_str(), provider.clone(), None, Some(error.clone()), 0.0, 0)
            }
        };
        // Provider answers and their errors come from outside: made storable (`clean`).
        self.job_id.push(c.lease.job_id);
        self.token.push(c.lease.token);
        self.nid.push(c.lease.notification_id.as_uuid());
        self.status.push(status.as_str());
        self.event.push(event.to_owned());
        self.provider.push(provider);
        self.pmid.push(pmid.map(|p| clean::text(&p).into_owned()));
        self.error.push(error.map(|e| clean::text(&e).into_owned()));
        self.delay.push(delay);
        self.next_route.push(next_route);
        self.detail.push(clean::json(&c.detail).into_owned());
        self.sources
            .push(Status::sources_of(status).iter().map(std::string::String::as_str).collect::<Vec<_>>().join(","));
    }
}
