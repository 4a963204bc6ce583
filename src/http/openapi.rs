//! The OpenAPI 3.1 document (`GET /openapi.json`) and its docs page (`GET /docs`, Swagger UI
//! served from files built into the binary). The document is generated: each handler carries
//! its `#[utoipa::path]` beside its code, response types derive `ToSchema`, and the request
//! bodies the handlers validate by hand (`NewNotification::parse` reads raw JSON to name every
//! bad field) are described by the types in `schemas.rs`. A snapshot test (`openapi.json` under
//! `src/http/snapshots/`) shows every change to the API in review.

use std::sync::LazyLock;

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::schemas::Problem;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "Send email, SMS and push notifications through one API; follow each one's delivery.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        super::notifications::create,
        super::batch::create,
        super::notifications::list,
        super::notifications::get,
        super::notifications::cancel,
        super::notifications::retry,
        super::templates::put,
        super::templates::get,
        super::templates::list,
        super::templates::preview,
        super::stats::get,
        super::suppressions::list,
        super::suppressions::create,
        super::suppressions::delete,
        super::webhooks::receive,
        super::health::healthz,
        super::health::readyz,
        super::metrics::scrape,
        super::meta::index,
        super::meta::version,
        super::meta::problem_page,
        super::ops::page,
    ),
    components(responses(Problem)),
    modifiers(&BearerKey),
    tags(
        (name = "notifications", description = "Send notifications and follow them"),
        (name = "templates", description = "Versioned message texts with locale variants, rendered at acceptance"),
        (name = "operators", description = "Stats, metrics and the dashboard"),
        (name = "suppressions", description = "Recipients that must not be sent to"),
        (name = "receipts", description = "Delivery receipts from providers, checked by each provider's own signature"),
        (name = "service", description = "Health, version and this document"),
    ),
)]
pub struct ApiDoc;

/// `Authorization: Bearer <api key>`.
struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme("api_key", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(ApiDoc::openapi);
    &DOC
}

#[cfg(test)]
mod tests {
    use super::document;

    /// The API as a reviewer sees it: a change to a route, a parameter or a schema changes
    /// this snapshot (`cargo insta review` to accept).
    #[test]
    fn the_openapi_document_is_as_reviewed() {
        let doc = serde_json::to_value(document()).expect("json");
        assert_eq!(doc["openapi"], "3.1.0");
        insta::assert_json_snapshot!("openapi", doc);
    }
}
