//! Group commit: many concurrent callers, one statement. Callers `submit` an item and wait for
//! its own result; writer tasks take whatever has queued up (at most `max_items`) and hand it
//! to the flush function as one batch, so the database sees one statement and one commit for
//! many requests. Under light load a batch is one item and nobody waits for company; under
//! load, items queue while a flush is in flight and the next flush takes them all.
//!
//! Writers are spawned on demand (at most `max_writers` at once) and exit when the queue is
//! empty, so there is no background task to start or stop, and a caller whose own future is
//! dropped (a client that hung up) never cancels a flush that carries other callers' items.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

type Flush<I, O> = Arc<dyn Fn(Vec<I>) -> Pin<Box<dyn Future<Output = Vec<O>> + Send>> + Send + Sync>;

/// How batches are formed.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most items in one flush.
    pub max_items: usize,
    /// Flushes in flight at once (each holds one database connection).
    pub max_writers: usize,
    /// A writer that finds fewer than `max_items` queued waits this long for more; zero takes
    /// what is there.
    pub linger: Duration,
}

pub struct Coalescer<I, O> {
    shared: Arc<Shared<I, O>>,
}

impl<I, O> Clone for Coalescer<I, O> {
    fn clone(&self) -> Self {
        Coalescer { shared: self.shared.clone() }
    }
}

struct Shared<I, O> {
    state: Mutex<State<I, O>>,
    flush: Flush<I, O>,
    limits: Limits,
}

struct State<I, O> {
    queue: VecDeque<(I, oneshot::Sender<O>)>,
    writers: usize,
}

/// The writer of a batch went away without answering (its task panicked or the runtime is
/// shutting down). The item may or may not have been written.
#[derive(Debug, thiserror::Error)]
#[error("the batch writer stopped before answering")]
pub struct Lost;

impl<I: Send + 'static, O: Send + 'static> Coalescer<I, O> {
    /// `flush` must return one output per input, in input order.
    pub fn new<F, Fut>(limits: Limits, flush: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let limits = Limits { max_items: limits.max_items.max(1), max_writers: limits.max_writers.max(1), ..limits };
        let flush: Flush<I, O> = Arc::new(move |items| Box::pin(flush(items)));
        Coalescer {
            shared: Arc::new(Shared { state: Mutex::new(State { queue: VecDeque::new(), writers: 0 }), flush, limits }),
        }
    }

    /// Queue `item` for the next flush and wait for its result. Must be called within a
    /// tokio runtime (writers are spawned on it).
    pub async fn submit(&self, item: I) -> Result<O, Lost> {
        let (tx, rx) = oneshot::channel();
        let spawn = {
            let mut st = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            st.queue.push_back((item, tx));
            // Another writer while there is room for one: it gathers while the others commit.
            let spawn = st.writers < self.shared.limits.max_writers;
            if spawn {
                st.writers += 1;
            }
            spawn
        };
        if spawn {
            tokio::spawn(write_loop(self.shared.clone()));
        }
        rx.await.map_err(|_| Lost)
    }
}

async fn write_loop<I: Send + 'static, O: Send + 'static>(shared: Arc<Shared<I, O>>) {
    let Limits { max_items, linger, .. } = shared.limits;
    loop {
        if !linger.is_zero() && queued(&shared) < max_items {
            tokio::time::sleep(linger).await;
        }
        let batch: Vec<(I, oneshot::Sender<O>)> = {
            let mut st = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            if st.queue.is_empty() {
                // Decided under the lock: a submit after this sees `writers` lowered and spawns.
                st.writers -= 1;
                return;
            }
            let n = st.queue.len().min(max_items);
            st.queue.drain(..n).collect()
        };
        let (items, replies): (Vec<I>, Vec<oneshot::Sender<O>>) = batch.into_iter().unzip();
        let outputs = (shared.flush)(items).await;
        debug_assert_eq!(outputs.len(), replies.len(), "flush must answer every item");
        for (reply, out) in replies.into_iter().zip(outputs) {
            // The caller may have gone (client hung up); its item was written all the same.
            let _ = reply.send(out);
        }
    }
}

fn queued<I, O>(shared: &Shared<I, O>) -> usize {
    shared.state.lock().unwrap_or_else(PoisonError::into_inner).queue.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_caller_gets_its_own_answer_and_batches_form_under_load() {
        let flushes = Arc::new(AtomicUsize::new(0));
        let f = flushes.clone();
        let c =
            Coalescer::new(Limits { max_items: 50, max_writers: 2, linger: Duration::ZERO }, move |items: Vec<u32>| {
                let f = f.clone();
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    items.into_iter().map(|i| i * 2).collect()
                }
            });
        let tasks: Vec<_> = (0..1000u32)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { (i, c.submit(i).await.expect("answered")) })
            })
            .collect();
        for t in tasks {
            let (i, out) = t.await.expect("task");
            assert_eq!(out, i * 2);
        }
        let n = flushes.load(Ordering::SeqCst);
        assert!(n >= 20, "at most 50 items a flush: {n} flushes for 1000 items");
        assert!(n < 1000, "items were grouped: {n} flushes for 1000 items");
        // Idle again: a later single submit still gets a writer.
        assert_eq!(c.submit(7).await.expect("answered"), 14);
    }

    #[tokio::test]
    async fn a_dropped_caller_does_not_cancel_the_flush() {
        let written = Arc::new(AtomicUsize::new(0));
        let w = written.clone();
        let c =
            Coalescer::new(Limits { max_items: 10, max_writers: 1, linger: Duration::ZERO }, move |items: Vec<u32>| {
                let w = w.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    w.fetch_add(items.len(), Ordering::SeqCst);
                    items
                }
            });
        let dropped = tokio::time::timeout(Duration::from_millis(5), c.submit(1)).await;
        assert!(dropped.is_err(), "the caller gave up first");
        assert_eq!(c.submit(2).await.expect("answered"), 2);
        assert_eq!(written.load(Ordering::SeqCst), 2, "the abandoned item was written too");
    }
}
