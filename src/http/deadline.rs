//! `server.request_timeout_ms`, without answers that lie. A request still working past the
//! timeout is answered `503` (try again) and its work dropped, unless it has started a write
//! whose outcome the answer must tell (`Committing::begin`, just before the write): an accept
//! whose statement went out may commit after any timeout, so its answer waits for the outcome
//! instead of saying "nothing was stored" about a notification that was.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Put in every request's extensions by `limit`; a handler calls `begin` before a write.
#[derive(Clone, Debug, Default)]
pub(crate) struct Committing(Arc<AtomicBool>);

impl Committing {
    /// From here on the request is answered with the write's outcome, however long it takes.
    pub(crate) fn begin(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn begun(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Middleware: the request timeout (`server.request_timeout_ms`) for requests that have not
/// begun a write. The check and the drop happen in this task, between polls of the handler, so
/// a handler cannot begin a write after the timeout was decided.
pub(crate) async fn limit(State(timeout): State<Duration>, mut req: Request, next: Next) -> Response {
    let committing = Committing::default();
    req.extensions_mut().insert(committing.clone());
    let answer = next.run(req);
    tokio::pin!(answer);
    tokio::select! {
        resp = &mut answer => resp,
        () = tokio::time::sleep(timeout) => {
            if committing.begun() {
                answer.await
            } else {
                // Shaped into a problem ("took too long; try again") by `problem_context`.
                StatusCode::SERVICE_UNAVAILABLE.into_response()
            }
        }
    }
}
