//! `GET /ops`: the operators' dashboard. Three files embedded in the binary (no CDN, no build
//! step): the page, its script and its style. The page holds no data; the script reads the
//! JSON API with the key the operator pastes in, so the dashboard sees exactly what that key
//! may see. A strict Content-Security-Policy allows only these files and the API.

pub(super) mod session;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");
const ICON: &str = include_str!("icon.svg");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                   form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Small and versioned with the binary: a short cache is enough.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// The operators' dashboard (HTML; sign in with a `read` or `admin` key).
#[utoipa::path(get, path = "/ops", operation_id = "getDashboard", tag = "operators", responses((status = 200, description = "The dashboard page", body = String, content_type = "text/html")))]
pub(super) async fn page() -> Response {
    asset(PAGE, "text/html; charset=utf-8")
}

pub(super) async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

pub(super) async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

pub(super) async fn icon() -> Response {
    asset(ICON, "image/svg+xml")
}
