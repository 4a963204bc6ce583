//! A semaphore that serves its waiters round robin by key (a tenant) instead of first come,
//! first served. With a FIFO semaphore, a tenant whose backlog fills the queue of waiters
//! (600 SMS waiting for a paced provider) makes every other tenant's message wait behind all of
//! it; here each key with waiters gets the next free permit in turn, so a tenant's lone message
//! waits for at most one permit per other tenant with waiters.
//!
//! Cancel-safe: a waiter that gives up (its future dropped, e.g. by a timeout) leaves the queue,
//! and a permit granted to it at that moment goes to the next waiter.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

pub struct FairGate<K> {
    state: Arc<Mutex<State<K>>>,
}

struct State<K> {
    /// Permits nobody holds or waits for.
    free: usize,
    /// Waiters by key, oldest first.
    queues: HashMap<K, VecDeque<Waiter>>,
    /// Keys with waiters, in the order they are served: the front key's oldest waiter is next,
    /// then that key goes to the back.
    turns: VecDeque<K>,
    next_id: u64,
}

struct Waiter {
    id: u64,
    grant: oneshot::Sender<()>,
}

/// A permit; returned to the gate (and handed to the next waiter in turn) when dropped.
pub struct FairPermit<K: Eq + Hash + Clone> {
    state: Arc<Mutex<State<K>>>,
}

impl<K: Eq + Hash + Clone> FairGate<K> {
    pub fn new(permits: usize) -> Self {
        FairGate {
            state: Arc::new(Mutex::new(State {
                free: permits,
                queues: HashMap::new(),
                turns: VecDeque::new(),
                next_id: 0,
            })),
        }
    }

    /// Wait for a permit, in `key`'s turn.
    pub async fn acquire(&self, key: K) -> FairPermit<K> {
        let (id, granted) = {
            let mut st = lock(&self.state);
            if st.free > 0 && st.turns.is_empty() {
                st.free -= 1;
                return FairPermit { state: self.state.clone() };
            }
            let id = st.next_id;
            st.next_id += 1;
            let (grant, granted) = oneshot::channel();
            let queue = st.queues.entry(key.clone()).or_default();
            let first = queue.is_empty();
            queue.push_back(Waiter { id, grant });
            if first {
                st.turns.push_back(key.clone());
            }
            (id, granted)
        };
        // Declared after `granted`, so dropped before it if this future is dropped.
        let mut waiting = Waiting { state: &self.state, key, id, done: false };
        // The sender lives in the queue until it is used: an error cannot happen while the gate
        // is alive (this future holds it), and either way the permit is ours to give back.
        let _ = granted.await;
        waiting.done = true;
        FairPermit { state: self.state.clone() }
    }

    /// Permits free right now.
    pub fn available(&self) -> usize {
        lock(&self.state).free
    }
}

fn lock<K>(state: &Mutex<State<K>>) -> MutexGuard<'_, State<K>> {
    // Every change under the lock leaves the state whole: a panic elsewhere cannot tear it.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Hand a returned permit to the next waiter in turn, or keep it free.
fn release<K: Eq + Hash + Clone>(state: &Mutex<State<K>>) {
    let mut st = lock(state);
    while let Some(key) = st.turns.pop_front() {
        let Some(queue) = st.queues.get_mut(&key) else { continue };
        let waiter = queue.pop_front();
        if queue.is_empty() {
            st.queues.remove(&key);
        } else {
            st.turns.push_back(key);
        }
        // A waiter is removed from its queue before its receiver is dropped (`Waiting`), so
        // this send finds it listening.
        if let Some(w) = waiter
            && w.grant.send(()).is_ok()
        {
            return;
        }
    }
    st.free += 1;
}

impl<K: Eq + Hash + Clone> Drop for FairPermit<K> {
    fn drop(&mut self) {
        release(&self.state);
    }
}

/// A waiter's claim on its place in the queue while `acquire` awaits its grant.
struct Waiting<'a, K: Eq + Hash + Clone> {
    state: &'a Mutex<State<K>>,
    key: K,
    id: u64,
    done: bool,
}

impl<K: Eq + Hash + Clone> Drop for Waiting<'_, K> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Given up: leave the queue; a permit granted in the meantime goes to the next waiter.
        let granted = {
            let mut st = lock(self.state);
            let mut found = false;
            if let Some(queue) = st.queues.get_mut(&self.key)
                && let Some(pos) = queue.iter().position(|w| w.id == self.id)
            {
                queue.remove(pos);
                found = true;
                if queue.is_empty() {
                    st.queues.remove(&self.key);
                    st.turns.retain(|k| *k != self.key);
                }
            }
            !found
        };
        if granted {
            release(self.state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_lone_waiter_is_served_before_a_backlog_of_another_key() {
        let gate = Arc::new(FairGate::new(1));
        let held = gate.acquire("a").await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..50 {
            let (g, o) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _p = g.acquire("a").await;
                o.lock().expect("order").push(format!("a{i}"));
            }));
            tokio::task::yield_now().await;
        }
        let (g, o) = (gate.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let _p = g.acquire("b").await;
            o.lock().expect("order").push("b".to_owned());
        }));
        tokio::task::yield_now().await;
        drop(held);
        for t in tasks {
            t.await.expect("task");
        }
        let order = order.lock().expect("order").clone();
        assert_eq!(order.len(), 51);
        let b = order.iter().position(|s| s == "b").expect("b served");
        assert!(b <= 1, "b waited behind {b} of a's 50: {order:?}");
        assert_eq!(gate.available(), 1);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_no_permit_behind() {
        let gate = FairGate::new(1);
        let held = gate.acquire(1).await;
        let gave_up = tokio::time::timeout(Duration::from_millis(10), gate.acquire(2)).await;
        assert!(gave_up.is_err());
        drop(held);
        assert_eq!(gate.available(), 1, "the permit is free again");
        let _p = gate.acquire(3).await;
        assert_eq!(gate.available(), 0);
    }

    #[tokio::test]
    async fn permits_bound_holders_and_keys_take_turns() {
        let gate = Arc::new(FairGate::new(2));
        let in_use = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..40 {
            let (g, u, m) = (gate.clone(), in_use.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                let _p = g.acquire(i % 3).await;
                let now = u.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                m.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
                u.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert!(most.load(std::sync::atomic::Ordering::SeqCst) <= 2);
        assert_eq!(gate.available(), 2);
    }
}
