//! Dispatcher wake-ups by `LISTEN/NOTIFY`. `LISTEN` is session state, which a transaction
//! pooler does not keep: behind one it goes to `database.direct_url`, or is off (polling).

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tracing::warn;

use crate::store::WAKE_CHANNEL;

/// Wake-ups from `LISTEN`. Only a hint: when the listener is off or lost, polling carries on.
/// The listener has a connection of its own (a one-connection pool), so it never holds one of
/// the connections that claims and completions need.
pub(super) struct Wake {
    listener: Option<PgListener>,
    pool: PgPool,
    enabled: bool,
}

impl Wake {
    /// Listen on a connection made with `options`; `None`: no wake-ups, polling only.
    pub(super) async fn new(options: Option<PgConnectOptions>) -> Self {
        let enabled = options.is_some();
        let options = options.unwrap_or_default();
        let own = PgPoolOptions::new().max_connections(1).connect_lazy_with(options);
        let mut w = Wake { listener: None, pool: own, enabled };
        w.reconnect_if_lost().await;
        w
    }

    pub(super) async fn reconnect_if_lost(&mut self) {
        if !self.enabled || self.listener.is_some() {
            return;
        }
        match PgListener::connect_with(&self.pool).await {
            Ok(mut l) => match l.listen(WAKE_CHANNEL).await {
                Ok(()) => self.listener = Some(l),
                Err(e) => warn!(error = %e, "LISTEN failed; polling only"),
            },
            Err(e) => warn!(error = %e, "LISTEN connection failed; polling only"),
        }
    }

    /// Wait for a wake-up, then take every other one already received: one claim answers
    /// them all (accepting sends at most one per commit, but many commits may be waiting).
    pub(super) async fn notified(&mut self) {
        match &mut self.listener {
            Some(l) => {
                if let Err(e) = l.recv().await {
                    warn!(error = %e, "LISTEN connection lost; polling until it is back");
                    self.listener = None;
                    return;
                }
                while l.next_buffered().is_some() {}
            }
            None => std::future::pending().await,
        }
    }
}
