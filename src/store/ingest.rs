//! Accepting notifications, many at a time. A batch (a group of concurrent single POSTs, or one
//! `POST /v1/notifications/batch`) is written in one transaction with multi-row statements: the
//! idempotency keys, the notifications, their jobs and one wake-up. Per notification that is two
//! rows (notification and job; a third, the key, when one was given): the `accepted` timeline
//! event is not stored but derived from `created_at` (`notifications::first_event`).
//!
//! Idempotency is exact inside a batch and across concurrent batches: repeated keys inside a
//! batch are resolved here (the first is written, the rest answer with it), and across batches
//! the key's unique index decides, with keys inserted in index order so that two batches
//! sharing keys wait on each other instead of deadlocking.
//!
//! One item's failure does not fail its neighbours: if the batch statement fails on the data,
//! the halves are written apart down to the culprit, and only it gets the error
//! (`store::isolating`). A write whose outcome is unknown is settled before it is answered.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use super::notifications::NotificationRecord;
use super::tracking::announced;
use super::{StoreError, StoreResult, WAKE_CHANNEL};
use crate::domain::{NewNotification, NotificationId, Status, TenantId};

/// One notification to accept.
#[derive(Clone, Debug)]
pub struct Submission {
    pub id: NotificationId,
    pub tenant: TenantId,
    pub notification: NewNotification,
    pub max_attempts: u32,
    /// The idempotency key and the hash of the request it came with.
    pub idempotency: Option<(String, Vec<u8>)>,
    pub received_at: OffsetDateTime,
    /// The request's W3C `traceparent`, continued by dispatch.
    pub traceparent: Option<String>,
}

impl Submission {
    pub fn new(
        tenant: TenantId,
        notification: NewNotification,
        max_attempts: u32,
        idempotency: Option<(String, Vec<u8>)>,
    ) -> Self {
        Submission {
            id: NotificationId::new(),
            tenant,
            notification,
            max_attempts,
            idempotency,
            received_at: crate::domain::notification::stored_precision(OffsetDateTime::now_utc()),
            traceparent: None,
        }
    }

    fn scheduled(&self) -> bool {
        self.notification.send_at.is_some_and(|t| t > self.received_at)
    }

    fn record(&self, status: Status) -> StoreResult<NotificationRecord> {
        let n = &self.notification;
        Ok(NotificationRecord {
            id: self.id,
            tenant_id: self.tenant,
            channel: n.channel,
            to: n.to.to_json(),
            content: content_json(n)?,
            status,
            priority: n.priority,
            tags: n.tags.clone(),
            metadata: Value::Object(n.metadata.clone()),
            callback_url: n.callback_url.clone(),
            attempts: 0,
            provider: None,
            provider_message_id: None,
            last_error: None,
            send_at: n.send_at,
            expires_at: n.expires_at,
            next_attempt_at: None,
            created_at: self.received_at,
            updated_at: self.received_at,
            template: template_json(n)?,
            category: n.category.clone(),
        })
    }
}

fn template_json(n: &NewNotification) -> StoreResult<Option<Value>> {
    n.template.as_ref().map(|t| serde_json::to_value(t).map_err(|e| StoreError::Corrupt(e.to_string()))).transpose()
}

fn content_json(n: &NewNotification) -> StoreResult<Value> {
    serde_json::to_value(&n.content).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The outcome of one submission.
#[derive(Debug)]
pub enum Accepted {
    /// Newly stored (`status` is `queued`, `scheduled` or, for a suppressed recipient,
    /// `suppressed`; `suppressed_reason` says why).
    Created { record: Box<NotificationRecord>, suppressed_reason: Option<String> },
    /// The idempotency key was used before with the same request: the original.
    Replayed { id: NotificationId, status: Option<Status> },
    /// The idempotency key was used before with a different request.
    KeyConflict,
}

/// What a key stands for: the request hash stored with it, its notification and that
/// notification's status.
type KeyUse = (Vec<u8>, NotificationId, Option<Status>);

/// Where a submission's answer comes from.
enum Plan {
    /// Written in this batch (new, or its key's first use in the batch).
    Write,
    /// Its key was used by an earlier item of this batch: answered like that item.
    SameKeyAs(usize),
}

/// Accept `items`, all in one transaction. One result per item, in order. `notify` sends a
/// wake-up (one per commit, whatever the batch size) when any new job is due now.
///
/// An item the database refuses fails alone (`isolating`). A write whose outcome is unknown
/// (the connection was lost after the statement or `COMMIT` went out) is settled before
/// answering (`settle_unknown`), never guessed.
pub async fn accept_batch(pool: &PgPool, items: &[Submission], notify: bool) -> Vec<StoreResult<Accepted>> {
    let mut results = write_batch(pool, items, notify).await;
    settle_unknown(pool, items, &mut results).await;
    results
}

/// `accept_batch` up to the end of its write: the items whose write's outcome is unknown are
/// `StoreError::OutcomeUnknown` (`is_unknown`), for `settle_unknown`. The group committer
/// settles them apart, so that a write caught by an outage holds none of its writers.
#[tracing::instrument(name = "store.ingest.write", skip_all, fields(items = items.len()))]
pub async fn write_batch(pool: &PgPool, items: &[Submission], notify: bool) -> Vec<StoreResult<Accepted>> {
    let whole = try_batch(pool, items, notify).await;
    let results = super::isolating(items, whole, |chunk| {
        let pool = pool.clone();
        Box::pin(async move { try_batch(&pool, chunk, notify).await })
    })
    .await;
    results.into_iter().map(|r| r.and_then(|r| r)).collect()
}

/// Whether the write of this result's item may or may not have committed (`write_batch`).
pub fn is_unknown(result: &StoreResult<Accepted>) -> bool {
    matches!(result, Err(StoreError::OutcomeUnknown(_)))
}

/// Settle the results of `items` whose outcome is unknown: each notification is found
/// committed (and answered as created) or not (and answered with an error saying nothing was
/// stored). If the database stays away past `SETTLE_FOR`, they stay unknown.
#[tracing::instrument(name = "store.ingest.settle", skip_all)]
pub async fn settle_unknown(pool: &PgPool, items: &[Submission], results: &mut [StoreResult<Accepted>]) {
    let unknown: Vec<usize> = (0..items.len()).filter(|&i| is_unknown(&results[i])).collect();
    if unknown.is_empty() {
        return;
    }
    let ids: Vec<Uuid> = unknown.iter().map(|&i| items[i].id.as_uuid()).collect();
    // Boxed: this rare path's futures would otherwise make every flush's future (which the
    // group committer boxes, copying it) several kilobytes bigger.
    match Box::pin(settle(pool, &ids)).await {
        Ok(committed) => {
            for i in unknown {
                let s = &items[i];
                results[i] = match committed.get(&s.id.as_uuid()) {
                    Some(status) => {
                        s.record(*status).map(|r| Accepted::Created { record: Box::new(r), suppressed_reason: None })
                    }
                    None => Err(StoreError::Unavailable(
                        "the database connection was lost during the write; it did not commit, so nothing was \
                         stored"
                            .into(),
                    )),
                };
            }
            tracing::warn!(items = ids.len(), committed = committed.len(), "settled a write whose outcome was unknown");
        }
        Err(e) => tracing::error!(error = %e, items = ids.len(), "could not learn whether a write committed"),
    }
}

/// How long `settle` keeps trying to reach the database: a restart or a failover takes
/// seconds; past this the outcome stays unknown (and is answered so).
const SETTLE_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Which of `ids` (notifications of a write whose outcome is unknown) were committed, with their
/// status. A plain read could run before a transaction still in flight commits them, so each
/// id is first inserted again, in a transaction that is then rolled back: an insert waits for
/// any transaction in flight that wrote the same id, and conflicts if that one committed.
async fn settle(pool: &PgPool, ids: &[Uuid]) -> StoreResult<HashMap<Uuid, Status>> {
    let give_up = std::time::Instant::now() + SETTLE_FOR;
    let mut wait = std::time::Duration::from_millis(100);
    loop {
        match settle_once(pool, ids).await {
            Ok(found) => return Ok(found),
            Err(StoreError::Db(e)) if super::is_transient(&e) && std::time::Instant::now() + wait < give_up => {
                tracing::warn!(error = %e, "the database is away; will ask again whether the write committed");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

async fn settle_once(pool: &PgPool, ids: &[Uuid]) -> StoreResult<HashMap<Uuid, Status>> {
    let mut tx = super::begin(pool).await?;
    let _absent: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO notifications (id, tenant_id, channel, recipient, recipient_key, content, status, priority,
                                    created_at, updated_at)
         SELECT id, '00000000-0000-0000-0000-000000000000', 'email', 'null', '', '{}', 'cancelled', 'normal', now(), now()
         FROM unnest($1::uuid[]) AS id
         ON CONFLICT (id) DO NOTHING
         RETURNING id",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    // A new statement, so a new snapshot: it sees what committed while the insert waited. The
    // probe's own rows (tenant nil) are not ours to count.
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, status FROM notifications
         WHERE id = ANY($1) AND tenant_id <> '00000000-0000-0000-0000-000000000000'",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    tx.rollback().await?;
    rows.into_iter()
        .map(|(id, st)| Ok((id, Status::parse(&st).ok_or_else(|| StoreError::Corrupt(format!("status {st}")))?)))
        .collect()
}

fn lost() -> StoreError {
    StoreError::Corrupt("a batch result is missing".into())
}

/// A failed write whose outcome may be a commit (`is_ambiguous`), as such.
fn unknown_if_ambiguous(e: StoreError) -> StoreError {
    match e {
        StoreError::Db(db) if super::is_ambiguous(&db) => StoreError::OutcomeUnknown(super::describe(&db)),
        other => other,
    }
}

async fn try_batch(pool: &PgPool, items: &[Submission], notify: bool) -> StoreResult<Vec<StoreResult<Accepted>>> {
    // Repeated keys inside the batch: the first use is written, the others follow it.
    let mut first_use: HashMap<(Uuid, &str), usize> = HashMap::new();
    let plans: Vec<Plan> = items
        .iter()
        .enumerate()
        .map(|(i, s)| match &s.idempotency {
            Some((key, _)) => match first_use.entry((s.tenant.as_uuid(), key.as_str())) {
                std::collections::hash_map::Entry::Occupied(e) => Plan::SameKeyAs(*e.get()),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(i);
                    Plan::Write
                }
            },
            None => Plan::Write,
        })
        .collect();
    let keyed: Vec<usize> = items
        .iter()
        .enumerate()
        .filter(|(i, s)| s.idempotency.is_some() && matches!(plans[*i], Plan::Write))
        .map(|(i, _)| i)
        .collect();

    // Items to write: first uses of keys not taken before, and items without a key.
    let to_write = |earlier: &HashMap<usize, _>| -> Vec<&Submission> {
        items
            .iter()
            .enumerate()
            .filter(|(i, _)| matches!(plans[*i], Plan::Write) && !earlier.contains_key(i))
            .map(|(_, s)| s)
            .collect()
    };
    // For keys used before (by another request): (stored hash, original id, its status).
    let (earlier, written) = if keyed.is_empty() {
        // One statement is atomic on its own: no transaction needed. Once it went out, a lost
        // connection leaves its outcome unknown.
        // (Behind a pooler the session is a transaction, and its commit is the point of no return.)
        let mut conn = super::session(pool).await?;
        let earlier = HashMap::new();
        let written = insert(&mut conn, &to_write(&earlier), notify).await.map_err(unknown_if_ambiguous)?;
        conn.finish().await.map_err(unknown_if_ambiguous)?;
        (earlier, written)
    } else {
        // Before `COMMIT` a lost connection rolls the transaction back; during it, who knows.
        let mut tx = super::begin(pool).await?;
        let earlier = claim_keys(&mut tx, items, &keyed).await?;
        let written = insert(&mut tx, &to_write(&earlier), notify).await?;
        tx.commit().await.map_err(|e| unknown_if_ambiguous(e.into()))?;
        (earlier, written)
    };

    // Answers, in item order. A later use of a key answers like its first use: with the same
    // notification when the body is the same, else a conflict.
    let mut results: Vec<StoreResult<Accepted>> = Vec::with_capacity(items.len());
    // The hash a key now stands for, and its notification, by first-use index.
    let mut stands_for: HashMap<usize, KeyUse> = HashMap::new();
    for (i, s) in items.iter().enumerate() {
        let hash = s.idempotency.as_ref().map(|(_, h)| h.as_slice()).unwrap_or_default();
        let result = match plans[i] {
            Plan::Write => match earlier.get(&i) {
                Some((stored, id, status)) => {
                    stands_for.insert(i, (stored.clone(), *id, *status));
                    Ok(if stored.as_slice() == hash {
                        Accepted::Replayed { id: *id, status: *status }
                    } else {
                        Accepted::KeyConflict
                    })
                }
                None => match written.get(&s.id) {
                    Some((status, reason)) => {
                        stands_for.insert(i, (hash.to_vec(), s.id, Some(*status)));
                        s.record(*status)
                            .map(|r| Accepted::Created { record: Box::new(r), suppressed_reason: reason.clone() })
                    }
                    None => Err(lost()),
                },
            },
            Plan::SameKeyAs(first) => match stands_for.get(&first) {
                Some((stored, id, status)) if stored.as_slice() == hash => {
                    Ok(Accepted::Replayed { id: *id, status: *status })
                }
                Some(_) => Ok(Accepted::KeyConflict),
                None => Err(lost()),
            },
        };
        results.push(result);
    }
    Ok(results)
}

/// What an idempotency key was used for before, if it was: the original notification when
/// `request_hash` matches, else a conflict. For requests that no longer validate (their
/// `expires_at` has passed, a provider left the configuration): a retry still gets its
/// original answer.
#[tracing::instrument(name = "store.ingest.earlier_use", skip_all)]
pub async fn earlier_use(
    pool: &PgPool,
    tenant: TenantId,
    key: &str,
    request_hash: &[u8],
) -> StoreResult<Option<Accepted>> {
    let row: Option<(Vec<u8>, Uuid, Option<String>)> = sqlx::query_as(
        "SELECT k.request_hash, k.notification_id, n.status FROM idempotency_keys k
         LEFT JOIN notifications n ON n.id = k.notification_id
         WHERE k.tenant_id = $1 AND k.key = $2",
    )
    .bind(tenant.as_uuid())
    .bind(key)
    .fetch_optional(&mut *super::session(pool).await?)
    .await?;
    Ok(row.map(|(hash, id, status)| {
        if hash == request_hash {
            Accepted::Replayed { id: NotificationId::from_uuid(id), status: status.as_deref().and_then(Status::parse) }
        } else {
            Accepted::KeyConflict
        }
    }))
}

/// Insert the batch's first uses of keys, in index order; return, by item index, the keys
/// that were taken already (by a committed request, or one that committed while we waited).
async fn claim_keys(
    conn: &mut PgConnection,
    items: &[Submission],
    keyed: &[usize],
) -> StoreResult<HashMap<usize, KeyUse>> {
    let (mut tenants, mut keys, mut hashes, mut ids) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &i in keyed {
        let s = &items[i];
        let (key, hash) = s.idempotency.as_ref().ok_or_else(lost)?;
        tenants.push(s.tenant.as_uuid());
        keys.push(key.as_str());
        hashes.push(hash.as_slice());
        ids.push(s.id.as_uuid());
    }
    let inserted: Vec<(Uuid, String)> = sqlx::query_as(
        "INSERT INTO idempotency_keys (tenant_id, key, request_hash, notification_id)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::uuid[]) AS k(t, key, h, n)
         ORDER BY t, key
         ON CONFLICT (tenant_id, key) DO NOTHING
         RETURNING tenant_id, key",
    )
    .bind(&tenants)
    .bind(&keys)
    .bind(&hashes)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    if inserted.len() == keyed.len() {
        return Ok(HashMap::new());
    }
    let inserted: std::collections::HashSet<(Uuid, &str)> = inserted.iter().map(|(t, k)| (*t, k.as_str())).collect();
    let taken: Vec<usize> =
        keyed.iter().copied().filter(|&i| !inserted.contains(&(tenants_of(items, i), key_of(items, i)))).collect();
    // A new statement, so a new snapshot: it sees the rows that made our inserts conflict.
    let rows = sqlx::query(
        "SELECT k.tenant_id, k.key, k.request_hash, k.notification_id, n.status
         FROM unnest($1::uuid[], $2::text[]) AS q(t, key)
         JOIN idempotency_keys k ON k.tenant_id = q.t AND k.key = q.key
         LEFT JOIN notifications n ON n.id = k.notification_id",
    )
    .bind(taken.iter().map(|&i| tenants_of(items, i)).collect::<Vec<_>>())
    .bind(taken.iter().map(|&i| key_of(items, i)).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    let mut found: HashMap<(Uuid, String), KeyUse> = HashMap::new();
    for r in rows {
        let status: Option<String> = r.try_get("status")?;
        found.insert(
            (r.try_get("tenant_id")?, r.try_get("key")?),
            (
                r.try_get("request_hash")?,
                NotificationId::from_uuid(r.try_get("notification_id")?),
                status.as_deref().and_then(Status::parse),
            ),
        );
    }
    taken
        .into_iter()
        .map(|i| {
            let k = (tenants_of(items, i), key_of(items, i).to_owned());
            // Gone between the two statements (pruned): rare; the client may simply retry.
            let v = found.remove(&k).ok_or_else(|| {
                StoreError::Unavailable("an idempotency key changed while it was being used; retry".into())
            })?;
            Ok((i, v))
        })
        .collect()
}

fn tenants_of(items: &[Submission], i: usize) -> Uuid {
    items[i].tenant.as_uuid()
}

fn key_of(items: &[Submission], i: usize) -> &str {
    items[i].idempotency.as_ref().map(|(k, _)| k.as_str()).unwrap_or_default()
}

/// The multi-row write: notifications, jobs (none for suppressed recipients, whose `suppressed`
/// event and status callback are written instead), and one wake-up. Returns, by id, the
/// status each was stored with and, when suppressed, why.
async fn insert(
    conn: &mut PgConnection,
    items: &[&Submission],
    notify: bool,
) -> StoreResult<HashMap<NotificationId, (Status, Option<String>)>> {
    if items.is_empty() {
        return Ok(HashMap::new());
    }
    let len = items.len();
    let mut cols = Columns::with_capacity(len);
    for s in items {
        let n = &s.notification;
        cols.id.push(s.id.as_uuid());
        cols.tenant.push(s.tenant.as_uuid());
        cols.channel.push(n.channel.as_str());
        cols.recipient.push(n.to.to_json());
        cols.recipient_key.push(n.to.key());
        let content = content_json(n)?;
        let metadata = Value::Object(n.metadata.clone());
        cols.size_bytes.push(i32::try_from(json_len(&content) + json_len(&metadata)).unwrap_or(i32::MAX));
        cols.content.push(content);
        cols.status.push(if s.scheduled() { Status::Scheduled } else { Status::Queued }.as_str());
        cols.priority.push(n.priority.as_str());
        cols.tags.push(Value::from(n.tags.clone()));
        cols.metadata.push(metadata);
        cols.callback_url.push(n.callback_url.clone());
        cols.send_at.push(n.send_at);
        cols.expires_at.push(n.expires_at);
        cols.created_at.push(s.received_at);
        cols.lane.push(n.priority.lane());
        cols.max_attempts.push(i32::try_from(s.max_attempts).unwrap_or(i32::MAX));
        cols.traceparent.push(s.traceparent.as_deref());
        cols.template.push(template_json(n)?);
        cols.category.push(n.category.as_deref());
    }
    // The statement is in a function (migrations 0015 and 0018): through a transaction pooler nothing
    // Herald sends keeps its plan, and this one costs far more to plan than to run.
    const SQL: &str = "SELECT id, status, reason FROM herald_ingest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
                       $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)";
    let rows = sqlx::query(SQL)
        .bind(cols.id)
        .bind(cols.tenant)
        .bind(cols.channel)
        .bind(cols.recipient)
        .bind(cols.recipient_key)
        .bind(cols.content)
        .bind(cols.status)
        .bind(cols.priority)
        .bind(cols.tags)
        .bind(cols.metadata)
        .bind(cols.callback_url)
        .bind(cols.send_at)
        .bind(cols.expires_at)
        .bind(cols.created_at)
        .bind(cols.lane)
        .bind(cols.max_attempts)
        .bind(WAKE_CHANNEL)
        .bind(notify)
        .bind(announced())
        .bind(cols.traceparent)
        .bind(cols.template)
        .bind(cols.size_bytes)
        .bind(cols.category)
        .fetch_all(conn)
        .await?;
    let mut out = HashMap::with_capacity(len);
    for r in rows {
        let status: String = r.try_get("status")?;
        let status = Status::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("status {status}")))?;
        out.insert(NotificationId::from_uuid(r.try_get("id")?), (status, r.try_get("reason")?));
    }
    Ok(out)
}

/// The length of `v` as JSON, without building the text: what a claim and a list page count
/// (`notifications.size_bytes`).
pub fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    // Writing a `Value` into a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut n, v);
    n.0
}

/// The batch as columns, for `unnest`.
struct Columns<'a> {
    id: Vec<Uuid>,
    tenant: Vec<Uuid>,
    channel: Vec<&'static str>,
    recipient: Vec<Value>,
    recipient_key: Vec<String>,
    content: Vec<Value>,
    status: Vec<&'static str>,
    priority: Vec<&'static str>,
    tags: Vec<Value>,
    metadata: Vec<Value>,
    callback_url: Vec<Option<String>>,
    category: Vec<Option<&'a str>>,
    send_at: Vec<Option<OffsetDateTime>>,
    expires_at: Vec<Option<OffsetDateTime>>,
    created_at: Vec<OffsetDateTime>,
    lane: Vec<i16>,
    max_attempts: Vec<i32>,
    traceparent: Vec<Option<&'a str>>,
    template: Vec<Option<Value>>,
    size_bytes: Vec<i32>,
}

impl Columns<'_> {
    fn with_capacity(n: usize) -> Self {
        Columns {
            id: Vec::with_capacity(n),
            tenant: Vec::with_capacity(n),
            channel: Vec::with_capacity(n),
            recipient: Vec::with_capacity(n),
            recipient_key: Vec::with_capacity(n),
            content: Vec::with_capacity(n),
            status: Vec::with_capacity(n),
            priority: Vec::with_capacity(n),
            tags: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            callback_url: Vec::with_capacity(n),
            category: Vec::with_capacity(n),
            send_at: Vec::with_capacity(n),
            expires_at: Vec::with_capacity(n),
            created_at: Vec::with_capacity(n),
            lane: Vec::with_capacity(n),
            max_attempts: Vec::with_capacity(n),
            traceparent: Vec::with_capacity(n),
            template: Vec::with_capacity(n),
            size_bytes: Vec::with_capacity(n),
        }
    }
}
