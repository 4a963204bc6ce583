//! Per-provider resilience: a circuit breaker (skip a provider that keeps failing, then probe
//! it) and pacing (`max_per_second`, `max_in_flight`: sends over the limit wait their turn,
//! and turns go round robin between tenants). Both are per process; with several replicas each
//! keeps its own view, which is what makes them safe to run without coordination.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::domain::TenantId;
use crate::fair::{FairGate, FairPermit};

/// What a send told us about the provider's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// It answered (success, or a refusal of this message: the provider itself is fine).
    Answered,
    /// A transient failure: network, timeout, 5xx, rejected credentials.
    Failed,
    /// It asked us to slow down: not a sign of an outage, but no proof of health either.
    Throttled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_since: Instant },
}

/// Whether a send may go to this provider now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Open: try again after this long (or use another provider).
    No(Duration),
}

pub struct Breaker {
    name: String,
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(name: &str, threshold: u32, cooldown: Duration) -> Self {
        Breaker { name: name.to_owned(), threshold, cooldown, state: Mutex::new(State::Closed { failures: 0 }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-written (it is Copy).
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn admit(&self) -> Admit {
        let now = Instant::now();
        let mut st = self.lock();
        match *st {
            State::Closed { .. } => Admit::Yes,
            State::Open { until } if now < until => Admit::No(until - now),
            State::Open { .. } => {
                info!(provider = %self.name, "circuit half-open: probing with one send");
                *st = State::HalfOpen { probe_since: now };
                Admit::Yes
            }
            // One probe at a time; a probe that never reported (its task died) is replaced
            // after a cool-down.
            State::HalfOpen { probe_since } if now - probe_since < self.cooldown => {
                Admit::No(self.cooldown - (now - probe_since))
            }
            State::HalfOpen { .. } => {
                *st = State::HalfOpen { probe_since: now };
                Admit::Yes
            }
        }
    }

    pub fn record(&self, health: Health) {
        let now = Instant::now();
        let mut st = self.lock();
        let next = match (*st, health) {
            (State::Closed { .. }, Health::Answered) => State::Closed { failures: 0 },
            (State::Closed { failures }, Health::Failed) if failures + 1 >= self.threshold => {
                warn!(provider = %self.name, failures = failures + 1, cooldown_ms = self.cooldown.as_millis() as u64,
                      "circuit open: skipping this provider for a cool-down");
                State::Open { until: now + self.cooldown }
            }
            (State::Closed { failures }, Health::Failed) => State::Closed { failures: failures + 1 },
            (s @ State::Closed { .. }, Health::Throttled) => s,
            (State::HalfOpen { .. }, Health::Answered) => {
                info!(provider = %self.name, "circuit closed: the probe succeeded");
                State::Closed { failures: 0 }
            }
            (State::HalfOpen { .. }, _) => {
                warn!(provider = %self.name, "circuit open again: the probe failed");
                State::Open { until: now + self.cooldown }
            }
            // A send admitted before the circuit opened: its result changes nothing.
            (s @ State::Open { .. }, _) => s,
        };
        *st = next;
    }

    pub fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }

    /// How long until this provider may be tried again when it takes no send now (open and
    /// cooling down, or half-open with its probe out); `None` when `admit` would let one
    /// through. Changes nothing.
    pub fn closed_for(&self) -> Option<Duration> {
        let now = Instant::now();
        match *self.lock() {
            State::Closed { .. } => None,
            State::Open { until } => (now < until).then(|| until - now),
            State::HalfOpen { probe_since } => {
                let elapsed = now - probe_since;
                (elapsed < self.cooldown).then(|| self.cooldown - elapsed)
            }
        }
    }

    /// `closed`, `open` or `half_open` (one probe let through), for operators.
    pub fn state_name(&self) -> &'static str {
        match *self.lock() {
            State::Closed { .. } => "closed",
            State::Open { until } if Instant::now() < until => "open",
            State::Open { .. } | State::HalfOpen { .. } => "half_open",
        }
    }
}

/// Pacing for one provider. `acquire` waits for a free slot and for the next send time, but
/// no longer than the caller's budget: a job that cannot start in time is put back, not failed.
/// Waiting sends are served round robin between tenants, so one tenant's backlog waiting here
/// does not hold back another tenant's message.
pub struct Pacer {
    in_flight: Option<FairGate<TenantId>>,
    interval: Option<Duration>,
    /// Whose turn it is to book the next send time: one booking at a time, in tenant order.
    turn: FairGate<TenantId>,
    next_slot: Mutex<Instant>,
}

pub struct PacePermit {
    _slot: Option<FairPermit<TenantId>>,
}

impl Pacer {
    pub fn new(max_per_second: Option<f64>, max_in_flight: Option<usize>) -> Self {
        Pacer {
            in_flight: max_in_flight.map(FairGate::new),
            interval: max_per_second.map(|r| Duration::from_secs_f64(1.0 / r)),
            turn: FairGate::new(1),
            next_slot: Mutex::new(Instant::now()),
        }
    }

    /// How many sends this pacer lets through in `window` when it has a rate (`None`: no rate).
    pub fn admits_within(&self, window: Duration) -> Option<usize> {
        self.interval.map(|i| (window.as_secs_f64() / i.as_secs_f64()).floor() as usize)
    }

    pub fn is_limited(&self) -> bool {
        self.in_flight.is_some() || self.interval.is_some()
    }

    /// Wait for `tenant`'s turn to send, at most `budget`.
    pub async fn acquire(&self, tenant: TenantId, budget: Duration) -> Option<PacePermit> {
        let deadline = Instant::now() + budget;
        let slot = match &self.in_flight {
            Some(gate) => Some(tokio::time::timeout_at(deadline, gate.acquire(tenant)).await.ok()?),
            None => None,
        };
        if let Some(interval) = self.interval {
            // Sends are spaced `interval` apart. The caller whose turn it is books the next free
            // instant and keeps the turn until then, so the order of sends is the order of turns
            // (round robin between tenants), not the order of arrival.
            let _turn = tokio::time::timeout_at(deadline, self.turn.acquire(tenant)).await.ok()?;
            let at = {
                let mut next = self.next_slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let at = (*next).max(Instant::now());
                if at > deadline {
                    return None;
                }
                *next = at + interval;
                at
            };
            tokio::time::sleep_until(at).await;
        }
        Some(PacePermit { _slot: slot })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> TenantId {
        TenantId::from_uuid(uuid::Uuid::nil())
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_after_n_failures_then_probes_once() {
        let b = Breaker::new("p", 3, Duration::from_secs(10));
        b.record(Health::Failed);
        b.record(Health::Failed);
        assert_eq!(b.admit(), Admit::Yes);
        b.record(Health::Failed);
        assert!(matches!(b.admit(), Admit::No(d) if d <= Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(b.admit(), Admit::Yes, "the probe");
        assert!(matches!(b.admit(), Admit::No(_)), "only one probe at a time");
        b.record(Health::Failed);
        assert!(matches!(b.admit(), Admit::No(_)), "a failed probe re-opens");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(b.admit(), Admit::Yes);
        b.record(Health::Answered);
        assert_eq!(b.admit(), Admit::Yes);
        assert!(!b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_resets_the_failure_count() {
        let b = Breaker::new("p", 2, Duration::from_secs(10));
        b.record(Health::Failed);
        b.record(Health::Answered);
        b.record(Health::Failed);
        b.record(Health::Throttled);
        assert_eq!(b.admit(), Admit::Yes);
    }

    #[tokio::test(start_paused = true)]
    async fn pacing_spaces_sends_and_respects_the_budget() {
        let p = Pacer::new(Some(10.0), None);
        let start = Instant::now();
        for _ in 0..5 {
            assert!(p.acquire(t(), Duration::from_secs(1)).await.is_some());
        }
        assert!(Instant::now() - start >= Duration::from_millis(400));
        // The next slot is 100 ms away: a 10 ms budget is not enough, and nothing is booked.
        assert!(p.acquire(t(), Duration::from_millis(10)).await.is_none());
        assert!(p.acquire(t(), Duration::from_millis(200)).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_limit_waits_for_a_free_slot() {
        let p = Pacer::new(None, Some(1));
        let first = p.acquire(t(), Duration::from_secs(1)).await.expect("first");
        assert!(p.acquire(t(), Duration::from_millis(50)).await.is_none());
        drop(first);
        assert!(p.acquire(t(), Duration::from_millis(50)).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn paced_turns_go_round_robin_between_tenants() {
        let p = std::sync::Arc::new(Pacer::new(Some(100.0), None));
        let a = TenantId::from_uuid(uuid::Uuid::from_u128(1));
        let b = TenantId::from_uuid(uuid::Uuid::from_u128(2));
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, tenant) in std::iter::repeat_n(a, 100).chain([b]).enumerate() {
            let (p, o) = (p.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                p.acquire(tenant, Duration::from_secs(60)).await.expect("a turn");
                o.lock().expect("order").push(i);
            }));
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.expect("task");
        }
        let order = order.lock().expect("order").clone();
        // Before b: the sends already booked or holding the turn when b came, and one turn of a.
        let b_at = order.iter().position(|&i| i == 100).expect("b sent");
        assert!(b_at <= 3, "b's one send waited for {b_at} of a's 100");
    }
}
