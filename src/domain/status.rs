//! The notification status machine. This module is the only place that says which status may
//! follow which; `store::tracking` turns these rules into SQL guards so that concurrent writers
//! (workers, receipts, operators) can never move a notification backwards.
//!
//! ```text
//! scheduled ─┐
//! queued ────┴─> sending ──> sent ──> delivered
//!     ^             │  │        └──> bounced / complained / failed (late receipts)
//!     └─ rescued ───┘  └──> retrying ──> sending …
//! queued ──> sent / retrying: a rescued worker's attempt, recorded before any re-claim
//! side exits: failed, cancelled, expired, suppressed
//! ```

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Scheduled,
    Queued,
    Sending,
    Sent,
    Delivered,
    Retrying,
    Failed,
    Bounced,
    Complained,
    Cancelled,
    Expired,
    Suppressed,
}

impl Status {
    pub const ALL: [Status; 12] = [
        Status::Scheduled,
        Status::Queued,
        Status::Sending,
        Status::Sent,
        Status::Delivered,
        Status::Retrying,
        Status::Failed,
        Status::Bounced,
        Status::Complained,
        Status::Cancelled,
        Status::Expired,
        Status::Suppressed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Scheduled => "scheduled",
            Status::Queued => "queued",
            Status::Sending => "sending",
            Status::Sent => "sent",
            Status::Delivered => "delivered",
            Status::Retrying => "retrying",
            Status::Failed => "failed",
            Status::Bounced => "bounced",
            Status::Complained => "complained",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
            Status::Suppressed => "suppressed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Waiting for (or in) a dispatch attempt: the states a job row exists for.
    pub fn is_pending(self) -> bool {
        matches!(self, Status::Scheduled | Status::Queued | Status::Sending | Status::Retrying)
    }

    /// The statuses of the send path (`queued → sending → sent`), left out of the list indexes
    /// so that a send's status changes are HOT updates: the column `indexed_status` is NULL for
    /// them (migration 0016 holds the same list). Lists find them by walking a tenant's
    /// newest rows instead.
    pub const SEND_PATH: [Status; 3] = [Status::Queued, Status::Sending, Status::Sent];

    /// Whether lists find this status through the index on `indexed_status`.
    pub fn is_indexed(self) -> bool {
        !Status::SEND_PATH.contains(&self)
    }

    /// The states an operator or caller may cancel from: not yet handed to a provider call.
    pub fn is_cancellable(self) -> bool {
        matches!(self, Status::Scheduled | Status::Queued | Status::Retrying)
    }

    /// Whether `self → next` is a legal move. Anything not listed is refused, which is what
    /// keeps a late or duplicated event from undoing a later one.
    pub fn can_move_to(self, next: Status) -> bool {
        use Status::*;
        match self {
            Scheduled => matches!(next, Sending | Cancelled | Expired | Suppressed | Failed),
            // `Sent` and `Retrying` from `Queued`: the worker whose lease was rescued finished
            // after all, before anyone claimed the job again (its fencing token still holds),
            // and its attempt is recorded rather than repeated.
            Queued => matches!(next, Sending | Cancelled | Expired | Suppressed | Failed | Sent | Retrying),
            // `Queued` from `Sending` is the lease rescue: the worker died mid-attempt.
            Sending => matches!(next, Sent | Retrying | Failed | Expired | Queued | Suppressed),
            Retrying => matches!(next, Sending | Cancelled | Expired | Failed | Suppressed),
            Sent => matches!(next, Delivered | Bounced | Complained | Failed),
            Delivered => matches!(next, Complained),
            Bounced => matches!(next, Complained),
            Failed | Complained | Cancelled | Expired | Suppressed => false,
        }
    }

    /// The statuses a caller hears of by status callback: every change after acceptance but
    /// the internal steps (`queued`, `sending`, `retrying`, `scheduled`).
    pub const ANNOUNCED: [Status; 8] = [
        Status::Sent,
        Status::Delivered,
        Status::Bounced,
        Status::Complained,
        Status::Failed,
        Status::Expired,
        Status::Cancelled,
        Status::Suppressed,
    ];

    /// What an operator may requeue (`POST /v1/notifications/{id}/retry`): the finished
    /// statuses that mean "not delivered", where another try may help.
    pub const RETRYABLE: [Status; 3] = [Status::Failed, Status::Expired, Status::Bounced];

    /// Finished: no dispatch work is left (a later receipt may still move `sent`,
    /// `delivered` or `bounced`).
    pub const FINISHED: [Status; 8] = Status::ANNOUNCED;

    /// What a provider's receipt reporting `reported` does to a notification in `self`: the
    /// status it moves to, if any. Receipts speak about messages a provider accepted, so they
    /// move only statuses from `sent` on, and only forward (a late `sent` never undoes
    /// `delivered`; `delivered` after `bounced` changes nothing).
    pub fn after_receipt(self, reported: Status) -> Option<Status> {
        (matches!(self, Status::Sent | Status::Delivered | Status::Bounced) && self.can_move_to(reported))
            .then_some(reported)
    }

    /// Whether a receipt reporting a status must wait for the send to be recorded: the
    /// notification is still queued, being sent or retrying (the receipt came first).
    pub fn receipt_waits(self) -> bool {
        self.is_pending()
    }

    /// SQL-ready names of `statuses`, to bind as a `text[]`.
    pub fn names(statuses: &[Status]) -> Vec<&'static str> {
        statuses.iter().map(|s| s.as_str()).collect()
    }

    /// Every status from which `next` may be reached, as SQL-ready names.
    pub fn sources_of(next: Status) -> Vec<String> {
        Status::ALL.into_iter().filter(|from| from.can_move_to(next)).map(|from| from.as_str().to_owned()).collect()
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_round_trip() {
        for st in Status::ALL {
            assert_eq!(Status::parse(st.as_str()), Some(st));
        }
        assert_eq!(Status::parse("sending "), None);
    }

    #[test]
    fn a_late_sent_never_undoes_delivered() {
        assert!(!Status::Delivered.can_move_to(Status::Sent));
        assert!(!Status::Delivered.can_move_to(Status::Sending));
        assert!(Status::Sent.can_move_to(Status::Delivered));
    }

    #[test]
    fn only_unstarted_work_is_cancellable() {
        let cancellable: Vec<_> = Status::ALL.into_iter().filter(|s| s.is_cancellable()).collect();
        assert_eq!(cancellable, vec![Status::Scheduled, Status::Queued, Status::Retrying]);
        for st in cancellable {
            assert!(st.can_move_to(Status::Cancelled));
        }
    }

    /// Delivery progress, used to show that no sequence of legal moves goes backwards once a
    /// provider has accepted the message.
    fn progress(st: Status) -> u8 {
        match st {
            Status::Scheduled | Status::Queued | Status::Retrying | Status::Sending => 0,
            Status::Sent => 1,
            Status::Delivered | Status::Bounced => 2,
            _ => 3,
        }
    }

    proptest! {
        #[test]
        fn no_path_of_legal_moves_regresses_after_sent(steps in proptest::collection::vec(0usize..12, 0..40)) {
            let mut st = Status::Queued;
            let mut best = progress(st);
            for i in steps {
                let next = Status::ALL[i];
                if st.can_move_to(next) {
                    st = next;
                    if best >= 1 {
                        prop_assert!(progress(st) >= best, "{st} after progress {best}");
                    }
                    best = best.max(progress(st));
                }
            }
        }

        #[test]
        fn terminal_states_accept_no_dispatch_moves(i in 0usize..12) {
            let next = Status::ALL[i];
            for from in [Status::Failed, Status::Cancelled, Status::Expired, Status::Suppressed] {
                prop_assert!(!from.can_move_to(next));
            }
        }
    }
}
