//! Acceptance, the first of Herald's two pipelines: a request body becomes a stored
//! notification (`Intake::one` for a single POST, `Intake::many` for a batch), the same way
//! for both routes and for tests. The HTTP handlers extract and answer; the rules (`rules`),
//! the idempotency key and request hash (`idempotency`), the checks below and the group
//! commit of single POSTs (`group`) are here, so a new acceptance rule goes here and both
//! routes get it.
//!
//! ```text
//! body ─templates_for→ Book ─prepare→ Submission ─write (group commit, or one batch)→ Accepted
//!                                 └─ refused, with a key seen before → the earlier answer
//! ```

mod group;
pub mod idempotency;
pub mod rules;

use std::sync::Arc;

use serde_json::Value;
use sqlx::PgPool;

pub use idempotency::{IdempotencyKey, request_hash};
pub use rules::AcceptRules;

use crate::config::Settings;
use crate::cpu::CpuPool;
use crate::domain::notification::ParseOptions;
use crate::domain::template::{Book, RenderBudget};
use crate::domain::{Channel, FieldError, NewNotification, NotificationId, Status};
use crate::providers::Registry;
use crate::store::ingest::{self, Submission};
use crate::store::keys::Caller;
use crate::store::{NotificationRecord, StoreError, StoreResult};

/// What became of an accepted notification.
#[derive(Debug)]
pub enum Accepted {
    /// Newly stored (`status` is `queued`, `scheduled` or, for a suppressed recipient,
    /// `suppressed`; `suppressed_reason` says why).
    Created { record: Box<NotificationRecord>, suppressed_reason: Option<String> },
    /// Its idempotency key was used before with the same request: the original.
    Replayed { id: NotificationId, status: Option<Status> },
}

/// Why a notification was not accepted.
#[derive(Debug)]
pub enum Refused {
    /// The body does not make a notification: each problem at its pointer (into the whole
    /// request: a batch item's are under `/notifications/{index}`).
    Invalid(Vec<FieldError>),
    /// A header is wrong for this item (a batch's `Idempotency-Key` too long to key it).
    Header { name: &'static str, detail: String },
    /// The idempotency key was used before with a different request.
    KeyConflict,
    /// Storage failed; nothing was stored, or (`StoreError::OutcomeUnknown`) it is not known.
    Store(StoreError),
    /// The work could not run to its end (a failed task): nothing was stored.
    Internal,
}

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Self {
        Refused::Store(e)
    }
}

impl From<crate::cpu::CpuLost> for Refused {
    fn from(_: crate::cpu::CpuLost) -> Self {
        Refused::Internal
    }
}

/// One notification to accept.
pub struct Request {
    pub body: Value,
    pub key: Option<IdempotencyKey>,
    /// The trace context to keep with it (see `telemetry`).
    pub traceparent: Option<String>,
}

/// A batch to accept: its items, the batch's `Idempotency-Key` and trace context.
pub struct Batch {
    pub items: Vec<Value>,
    pub key: Option<IdempotencyKey>,
    pub traceparent: Option<String>,
}

/// What acceptance needs, built once at start (`App::build`) and shared by every request.
#[derive(Clone)]
pub struct Intake {
    pool: PgPool,
    rules: Arc<AcceptRules>,
    registry: Arc<Registry>,
    committer: group::Committer,
    cpu: CpuPool,
    /// Wake dispatchers (`NOTIFY`) when a job is due now.
    notify: bool,
    /// `server.max_body_bytes`: the most a batch item may be (what it could be on its own).
    max_item_bytes: usize,
}

impl Intake {
    pub fn new(pool: PgPool, registry: Arc<Registry>, cpu: CpuPool, settings: &Settings) -> Intake {
        Intake {
            committer: group::committer(pool.clone(), settings),
            pool,
            rules: Arc::new(AcceptRules::new(settings)),
            registry,
            cpu,
            notify: settings.dispatch.listen_notify,
            max_item_bytes: settings.server.max_body_bytes,
        }
    }

    /// The rules acceptance applies (a template preview checks its render with them).
    pub fn rules(&self) -> &AcceptRules {
        &self.rules
    }

    /// Accept one notification: validated (a template rendered off the runtime), then written
    /// with the single POSTs being accepted at the same moment, and answered after that commit.
    /// `committing` is called just before the write: from then on, the answer is the write's
    /// outcome. A retry of a request that no longer validates gets its original answer.
    pub async fn one(&self, caller: &Caller, request: Request, committing: impl FnOnce()) -> Result<Accepted, Refused> {
        let Request { body, key, traceparent } = request;
        let templates = templates_for(&self.pool, caller, std::iter::once(&body)).await?;
        // Rendering a template is CPU work (up to its fuel): off the runtime's threads.
        let (prepared, body) = if body.get("template").is_some() {
            let (this, c, k) = (self.clone(), caller.clone(), key.clone());
            self.cpu.run(move || (this.prepare_one(&c, &body, k, &templates), body)).await?
        } else {
            (self.prepare_one(caller, &body, key.clone(), &templates), body)
        };
        let mut submission = match prepared {
            Ok(s) => s,
            Err(errors) => return self.earlier_answer(caller, key.as_ref(), &body, Refused::Invalid(errors)).await,
        };
        submission.traceparent = traceparent;
        committing();
        let written = self.committer.submit(submission).await.map_err(|_| Refused::Internal)?;
        let outcome = written.outcome().await.map_err(|_| Refused::Internal)?;
        settled(outcome)
    }

    /// Accept a batch: every item validated on its own (off the runtime, within one rendering
    /// budget), the valid ones written together in one transaction. One result per item, in
    /// order. An item without its own `idempotency_key` gets `{batch key}/{index}`.
    pub async fn many(
        &self,
        caller: &Caller,
        batch: Batch,
        committing: impl FnOnce(),
    ) -> Result<Vec<Result<Accepted, Refused>>, Refused> {
        let Batch { items, key, traceparent } = batch;
        let templates = templates_for(&self.pool, caller, items.iter()).await?;
        let (this, c) = (self.clone(), caller.clone());
        let checked = self
            .cpu
            .run(move || {
                let budget = RenderBudget::per_request();
                let opts = this.rules.parse_options(&c, &templates, &budget);
                let items = items.into_iter().enumerate();
                let checked =
                    items.map(|(i, mut item)| (this.prepare_item(&c, i, &mut item, key.as_ref(), opts), item));
                checked.collect::<Vec<CheckedItem>>()
            })
            .await?;
        let mut results: Vec<Option<Result<Accepted, Refused>>> = Vec::with_capacity(checked.len());
        let (mut indices, mut submissions) = (Vec::new(), Vec::new());
        for (index, (checked, item)) in checked.into_iter().enumerate() {
            match checked {
                Ok(mut s) => {
                    s.traceparent.clone_from(&traceparent);
                    indices.push(index);
                    submissions.push(s);
                    results.push(None);
                }
                Err((refused, key)) => match self.earlier_answer(caller, key.as_ref(), &item, refused).await {
                    // The database is away: nothing of the batch can be written either.
                    Err(Refused::Store(e)) => return Err(Refused::Store(e)),
                    answer => results.push(Some(answer)),
                },
            }
        }
        committing();
        let outcomes = ingest::accept_batch(&self.pool, &submissions, self.notify).await;
        let mut accepted = [0u64; 3];
        for (index, outcome) in indices.into_iter().zip(outcomes) {
            let outcome = settled(outcome);
            if let Ok(Accepted::Created { record, .. }) = &outcome {
                accepted[record.channel.index()] += 1;
            }
            results[index] = Some(outcome);
        }
        for (channel, n) in Channel::ALL.into_iter().zip(accepted).filter(|(_, n)| *n > 0) {
            crate::metrics::accepted(channel.as_str(), n);
        }
        Ok(results.into_iter().flatten().collect())
    }

    /// A refused request whose idempotency key was used before with the same body is
    /// answered as it was then (it validated then, under the rules of the time).
    async fn earlier_answer(
        &self,
        caller: &Caller,
        key: Option<&IdempotencyKey>,
        body: &Value,
        refused: Refused,
    ) -> Result<Accepted, Refused> {
        let Some(key) = key else { return Err(refused) };
        match ingest::earlier_use(&self.pool, caller.tenant_id, key.as_str(), &request_hash(body)).await? {
            Some(earlier) => settled(Ok(earlier)),
            None => Err(refused),
        }
    }

    /// `prepare` with this server's rules and providers, over a request's own budget.
    fn prepare_one(
        &self,
        caller: &Caller,
        body: &Value,
        key: Option<IdempotencyKey>,
        templates: &Book,
    ) -> Result<Submission, Vec<FieldError>> {
        let budget = RenderBudget::per_request();
        let opts = self.rules.parse_options(caller, templates, &budget);
        prepare(&self.rules, &self.registry, caller, body, key, opts)
    }

    /// One batch item: take out its `idempotency_key`, then validate the rest as a
    /// notification. Field pointers are into the whole request (`/notifications/3/to`). A
    /// refused item comes back with its key, if it has one.
    fn prepare_item(
        &self,
        caller: &Caller,
        index: usize,
        item: &mut Value,
        batch_key: Option<&IdempotencyKey>,
        opts: ParseOptions<'_>,
    ) -> Result<Submission, (Refused, Option<IdempotencyKey>)> {
        let at = |e: FieldError| FieldError::new(format!("/notifications/{index}{}", e.pointer), e.detail);
        let invalid = |e: FieldError| (Refused::Invalid(vec![at(e)]), None);
        // An item that could not be sent on its own (server.max_body_bytes) is not taken in a batch.
        let size = ingest::json_len(item);
        if size > self.max_item_bytes {
            let max = self.max_item_bytes;
            let detail = format!("this item is {size} bytes; an item may be at most server.max_body_bytes ({max})");
            return Err(invalid(FieldError::new("", detail)));
        }
        let own_key = match item.as_object_mut().and_then(|o| o.remove(ITEM_KEY)) {
            None => None,
            Some(k) => match k.as_str().and_then(IdempotencyKey::parse) {
                Some(k) => Some(k),
                None => {
                    return Err(invalid(FieldError::new(
                        "/idempotency_key",
                        "must be 1 to 255 visible ASCII characters",
                    )));
                }
            },
        };
        let key = match (own_key, batch_key) {
            (Some(k), _) => Some(k),
            (None, Some(b)) => match b.for_item(index) {
                Some(k) => Some(k),
                None => {
                    let detail = "too long to key 1,000 items; use at most 250 characters".to_owned();
                    return Err((Refused::Header { name: "Idempotency-Key", detail }, None));
                }
            },
            (None, None) => None,
        };
        prepare(&self.rules, &self.registry, caller, item, key.clone(), opts)
            .map_err(|errs| (Refused::Invalid(errs.into_iter().map(at).collect()), key))
    }
}

/// A batch item as validated (refused with its key, if it has one, for `earlier_answer`), and
/// the item itself.
type CheckedItem = (Result<Submission, (Refused, Option<IdempotencyKey>)>, Value);

/// The one field a batch item has beyond a notification's.
pub const ITEM_KEY: &str = "idempotency_key";

/// A store's answer as acceptance's.
fn settled(outcome: StoreResult<ingest::Accepted>) -> Result<Accepted, Refused> {
    match outcome? {
        ingest::Accepted::Created { record, suppressed_reason } => Ok(Accepted::Created { record, suppressed_reason }),
        ingest::Accepted::Replayed { id, status } => Ok(Accepted::Replayed { id, status }),
        ingest::Accepted::KeyConflict => Err(Refused::KeyConflict),
    }
}

/// Validate one notification (a request body, or an item of a batch) into a submission.
pub fn prepare(
    rules: &AcceptRules,
    registry: &Registry,
    caller: &Caller,
    value: &Value,
    key: Option<IdempotencyKey>,
    opts: ParseOptions<'_>,
) -> Result<Submission, Vec<FieldError>> {
    let n = NewNotification::parse(value, opts)?;
    // A callback that cannot be signed would fail on its first attempt, seen only in the
    // timeline: refuse the notification now instead.
    let calls_back = n.callback_url.is_some() || caller.tenant_callback;
    if calls_back && !caller.tenant_signs && !rules.shared_signing_secret {
        let whose = if n.callback_url.is_some() { "this callback_url" } else { "the tenant's default callback URL" };
        return Err(vec![FieldError::new(
            "/callback_url",
            format!(
                "{whose} cannot be signed: tenant `{}` has no callback signing secret and callbacks.signing_secret \
                 is unset; give it one with `herald tenants set {} --rotate-signing-secret`",
                caller.tenant, caller.tenant
            ),
        )]);
    }
    if !registry.can_deliver(n.channel, &n.to) {
        return Err(vec![FieldError::new(
            "/channel",
            format!("no provider in channels.{}.providers can deliver to this recipient", n.channel),
        )]);
    }
    let max_attempts = rules.max_attempts(n.channel);
    let idempotency = key.map(|k| (k.into_string(), request_hash(value)));
    Ok(Submission::new(caller.tenant_id, n, max_attempts, idempotency))
}

/// The template versions `bodies` refer to, looked up together (parsing reads no database).
pub async fn templates_for<'a>(
    pool: &PgPool,
    caller: &Caller,
    bodies: impl Iterator<Item = &'a Value>,
) -> StoreResult<Book> {
    let mut wanted: Vec<(String, Option<i32>)> = bodies.filter_map(crate::domain::template::reference).collect();
    wanted.sort();
    wanted.dedup();
    crate::store::templates::book(pool, caller.tenant_id, &wanted).await
}
