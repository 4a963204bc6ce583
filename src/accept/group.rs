//! Group commit of single POSTs: the requests being accepted at the same moment are written
//! with one statement and one commit (`batching::Coalescer`), and each is answered only after
//! that commit.

use std::time::Duration;

use sqlx::PgPool;

use crate::batching::{Coalescer, Limits, Lost};
use crate::config::Settings;
use crate::store::StoreResult;
use crate::store::ingest::{self, Accepted, Submission};

/// Single POSTs are accepted through this: many requests, one statement.
pub(crate) type Committer = Coalescer<Submission, Written>;

/// A single POST's result from the group committer.
pub(crate) enum Written {
    /// Known when its group's write ended.
    Known(StoreResult<Accepted>),
    /// Its group's connection was lost after the write went out, so it may have committed: it
    /// is being settled (`store::ingest::settle_unknown`) in a task of its own, so that writes
    /// caught by an outage hold none of the committer's writers, and the requests that arrive
    /// during the outage get their 503 at once instead of waiting behind them.
    Settling(tokio::sync::oneshot::Receiver<StoreResult<Accepted>>),
}

impl Written {
    /// The write's outcome, once it is known (or known to be unknown).
    pub(crate) async fn outcome(self) -> Result<StoreResult<Accepted>, Lost> {
        match self {
            Written::Known(r) => Ok(r),
            Written::Settling(rx) => rx.await.map_err(|_| Lost),
        }
    }
}

/// The group committer of `POST /v1/notifications`.
pub(crate) fn committer(pool: PgPool, settings: &Settings) -> Committer {
    let notify = settings.dispatch.listen_notify;
    let limits = Limits {
        max_items: settings.server.group_commit_max_items,
        // Two writers: one gathers and writes while the other waits for its commit; more would
        // only take connections from the rest of the API.
        max_writers: 2.min(settings.database.max_connections as usize),
        linger: Duration::from_micros(settings.server.group_commit_linger_us),
    };
    Coalescer::new(limits, move |items: Vec<Submission>| {
        let pool = pool.clone();
        async move { write_group(&pool, items, notify).await }
    })
}

/// Write one group; the items whose write's outcome is unknown are settled in a task of their
/// own (`Written::Settling`).
async fn write_group(pool: &PgPool, items: Vec<Submission>, notify: bool) -> Vec<Written> {
    let results = ingest::write_batch(pool, &items, notify).await;
    if !results.iter().any(ingest::is_unknown) {
        return results.into_iter().map(Written::Known).collect();
    }
    let mut answers = Vec::with_capacity(items.len());
    let (mut unsettled, mut replies) = (Vec::new(), Vec::new());
    for (item, result) in items.into_iter().zip(results) {
        if ingest::is_unknown(&result) {
            let (tx, rx) = tokio::sync::oneshot::channel();
            unsettled.push((item, result));
            replies.push(tx);
            answers.push(Written::Settling(rx));
        } else {
            answers.push(Written::Known(result));
        }
    }
    let pool = pool.clone();
    tokio::spawn(async move {
        let (items, mut results): (Vec<Submission>, Vec<_>) = unsettled.into_iter().unzip();
        ingest::settle_unknown(&pool, &items, &mut results).await;
        for (reply, result) in replies.into_iter().zip(results) {
            // The caller may have gone (client hung up); the settle was for the log too.
            let _ = reply.send(result);
        }
    });
    answers
}
