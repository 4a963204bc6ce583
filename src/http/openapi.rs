//! The OpenAPI 3.1 document (`GET /openapi.json`) and its docs page (`GET /docs`, Swagger UI
//! served from files built into the binary). The document is generated: each handler carries
//! its `#[utoipa::path]` beside its code, response types derive `ToSchema`, and the request
//! bodies the handlers validate by hand (`NewNotification::parse` reads raw JSON to name every
//! bad field) are described by the types in `schemas.rs`. A snapshot test (`openapi.json` under
//! `src/http/snapshots/`) shows every change to the API in review.

use std::sync::LazyLock;

use serde_json::{Value, json};
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

/// The security schemes: API keys, and the optional token of `/metrics`.
struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme("api_key", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        components.add_security_scheme("metrics_token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The document, built once: what the handlers' attributes say, with the conventions every
/// operation shares applied (`conventions`). `herald openapi` prints it; `/openapi.json`
/// serves it. It depends on no configuration, so both are the same document.
pub fn document() -> &'static Value {
    static DOC: LazyLock<Value> = LazyLock::new(|| {
        // The document's own parts (info, tags, security schemes), then every route's path.
        let mut api = ApiDoc::openapi();
        api.merge(super::routes::documented(0).into_openapi());
        let mut doc = serde_json::to_value(api).expect("the document serializes");
        conventions(&mut doc);
        doc
    });
    &DOC
}

/// The default `limit` of each list, by operation (the attributes can bound a parameter but
/// not give its default).
const LIST_DEFAULTS: [(&str, i64); 3] = [
    ("listNotifications", super::notifications::DEFAULT_LIMIT),
    ("listTemplates", super::templates::DEFAULT_LIMIT),
    ("listSuppressions", super::suppressions::DEFAULT_LIMIT),
];

/// What every operation shares, applied once rather than written into each attribute:
/// - one `Problem` schema that every error response refers to (generators then make one
///   problem type, not one per operation and status);
/// - on every operation an API key calls: `401`, `403`, `503`, and `429` with `Retry-After` (a
///   tenant's request rate, `limits.requests_per_second`); `Retry-After` on every `503`;
/// - `security: []` on the operations that take no API key (public, or checked by a
///   provider's own signature), so that no operation leaves its security unsaid;
/// - the default of each list's `limit`;
/// - a batch's items: a `NotificationRequest` with its own `idempotency_key`;
/// - `413` and `415` on every operation that takes a JSON body (the body limit and the
///   content-type check apply to each), and receipts in a form as well as JSON;
/// - a notification's `to` and `content` as the request's `To` and `ContentRequest` (the view
///   carries them as the JSON they were stored as), its `metadata` an object;
/// - the stats windows, from the list the handler takes;
/// - one server, relative: wherever the document was fetched from (a generated client takes
///   its base URL when it is built).
fn conventions(doc: &mut Value) {
    doc["servers"] = json!([{"url": "/", "description": "The Herald that serves this document"}]);
    let problem_ref = json!({"$ref": "#/components/schemas/Problem"});
    let components = &mut doc["components"];
    let inline = std::mem::replace(
        &mut components["responses"]["Problem"]["content"]["application/problem+json"]["schema"],
        problem_ref.clone(),
    );
    if components["schemas"].get("Problem").is_none() {
        components["schemas"]["Problem"] = inline;
    }
    let retry_after = json!({"Retry-After": {
        "description": "Seconds to wait before trying again",
        "required": true,
        "schema": {"type": "integer", "minimum": 0}}});
    let with_retry_after = |description: &str| {
        json!({"description": description, "headers": retry_after,
               "content": {"application/problem+json": {"schema": problem_ref}}})
    };
    components["responses"]["RateLimited"] = with_retry_after(
        "The tenant's request rate is used up (`limits.requests_per_second`): try again after `Retry-After` seconds",
    );
    components["responses"]["Unavailable"] =
        with_retry_after("The database is away or busy: nothing was stored; try again after `Retry-After` seconds");
    let schemas = &mut components["schemas"];
    let mut item = schemas["NotificationRequest"].clone();
    item["description"] = json!("A notification of a batch: as a single POST's body, with its own idempotency key.");
    item["properties"][super::batch::ITEM_KEY] = json!({"type": ["string", "null"], "minLength": 1, "maxLength": 255,
        "description": "As the `Idempotency-Key` header of a single POST; else the batch header's key as `{key}/{index}`"});
    schemas["BatchNotification"] = item;
    let view = &mut schemas["NotificationView"]["properties"];
    view["to"] = json!({"$ref": "#/components/schemas/To"});
    view["content"] = json!({"$ref": "#/components/schemas/ContentRequest"});
    view["metadata"] = json!({"type": "object", "description": "As given when the notification was sent"});
    schemas["BatchRequest"]["properties"][super::batch::FIELDS[0]]["items"] =
        json!({"$ref": "#/components/schemas/BatchNotification"});
    let Some(paths) = doc["paths"].as_object_mut() else { return };
    for op in paths.values_mut().filter_map(Value::as_object_mut).flat_map(|item| item.values_mut()) {
        let keyed = op["security"].as_array().is_some_and(|s| s.iter().any(|r| r.get("api_key").is_some()));
        if op.get("security").is_none_or(Value::is_null) {
            op["security"] = json!([]);
        }
        // Receipts come in each provider's format (Twilio's is a form), so they take any type.
        if op["operationId"] == "receiveReceipt" {
            op["requestBody"]["content"]["application/x-www-form-urlencoded"] = json!({"schema": {"type": "object"}});
        }
        let json_body = op
            .get("requestBody")
            .and_then(|b| b["content"].as_object())
            .is_some_and(|c| c.len() == 1 && c.contains_key("application/json"));
        let responses = &mut op["responses"];
        if keyed {
            // Every keyed call can meet a bad key, a key without the scope, and the database away.
            for status in ["401", "403"] {
                responses[status] = json!({"$ref": "#/components/responses/Problem"});
            }
            responses["429"] = json!({"$ref": "#/components/responses/RateLimited"});
        }
        if json_body {
            for status in ["413", "415"] {
                responses[status] = json!({"$ref": "#/components/responses/Problem"});
            }
        }
        if keyed || responses.get("503").is_some() {
            responses["503"] = json!({"$ref": "#/components/responses/Unavailable"});
        }
        let id = op["operationId"].as_str().unwrap_or_default().to_owned();
        if id == "getStats"
            && let Some(schema) = param_schema(op, "window")
        {
            schema["enum"] = json!(super::stats::WINDOWS.map(|(name, _)| name));
            schema["default"] = json!(super::stats::DEFAULT_WINDOW);
        }
        if let Some((_, default)) = LIST_DEFAULTS.iter().find(|(o, _)| *o == id)
            && let Some(schema) = param_schema(op, "limit")
        {
            schema["default"] = json!(default);
        }
    }
}

/// The schema of operation `op`'s parameter `name`, if it has one.
fn param_schema<'a>(op: &'a mut Value, name: &str) -> Option<&'a mut Value> {
    let params = op.get_mut("parameters")?.as_array_mut()?;
    params.iter_mut().find(|p| p["name"] == name).map(|p| &mut p["schema"])
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::document;
    use crate::domain::{Channel, content, notification};

    /// The API as a reviewer sees it: a change to a route, a parameter or a schema changes
    /// this snapshot (`cargo insta review` to accept).
    #[test]
    fn the_openapi_document_is_as_reviewed() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        insta::assert_json_snapshot!("openapi", doc);
    }

    fn schema(name: &str) -> &'static Value {
        let s = &document()["components"]["schemas"][name];
        assert!(s.is_object(), "no schema {name}");
        s
    }

    /// The request bodies the handlers parse by hand cannot drift from their schemas: each
    /// schema has exactly the fields its parser accepts, and refuses any other
    /// (`additionalProperties: false`), as the parser does. Every request body of the
    /// document is one of these, or a type the handler deserializes itself.
    #[test]
    fn each_request_schema_has_exactly_its_parsers_fields() {
        let with_key: Vec<&str> = notification::FIELDS.iter().copied().chain([super::super::batch::ITEM_KEY]).collect();
        let parsed: [(&str, &[&str]); 9] = [
            ("NotificationRequest", &notification::FIELDS),
            ("BatchNotification", &with_key),
            ("BatchRequest", &super::super::batch::FIELDS),
            ("EmailContent", content::fields(Channel::Email)),
            ("SmsContent", content::fields(Channel::Sms)),
            ("PushContent", content::fields(Channel::Push)),
            ("TemplateRef", &notification::TEMPLATE_FIELDS),
            ("PreviewRequest", &super::super::templates::PREVIEW_FIELDS),
            ("SuppressionRequest", &super::super::suppressions::FIELDS),
        ];
        for (name, fields) in parsed {
            let s = schema(name);
            let props: BTreeSet<&str> =
                s["properties"].as_object().expect("properties").keys().map(String::as_str).collect();
            assert_eq!(props, fields.iter().copied().collect(), "{name}: the schema's fields and the parser's");
            assert_eq!(s["additionalProperties"], false, "{name} refuses unknown fields, as its parser does");
        }
        // Deserialized by serde with `deny_unknown_fields`: the types are the schemas.
        assert_eq!(schema("TemplateBody")["additionalProperties"], false);
        assert_eq!(schema("SessionRequest")["additionalProperties"], false);
        let known: BTreeSet<&str> = parsed.iter().map(|(n, _)| *n).chain(["TemplateBody", "SessionRequest"]).collect();
        for (path, item) in document()["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let Some(body) = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].as_str() else {
                    continue;
                };
                let name = body.trim_start_matches("#/components/schemas/");
                assert!(known.contains(name), "{method} {path}: its body {name} is checked against its parser here");
            }
        }
    }

    /// What generators and linters require of every operation: a unique `operationId`, a
    /// description on every response, security said (`[]` when there is none), and `429`
    /// wherever an API key's request rate applies.
    #[test]
    fn every_operation_is_named_once_described_and_secured() {
        let mut ids = BTreeSet::new();
        for (path, item) in document()["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let id = op["operationId"].as_str().unwrap_or_default();
                assert!(!id.is_empty() && ids.insert(id), "{method} {path}: operationId {id:?} unique");
                let security = op["security"].as_array().unwrap_or_else(|| panic!("{method} {path}: security"));
                for (status, r) in op["responses"].as_object().expect("responses") {
                    assert!(
                        r["description"].is_string() || r["$ref"].is_string(),
                        "{method} {path} {status}: a description"
                    );
                }
                if security.iter().any(|r| r.get("api_key").is_some()) {
                    assert!(op["responses"]["429"].is_object(), "{method} {path}: 429 documented");
                }
            }
        }
        assert!(ids.contains("createNotification") && ids.contains("createNotificationBatch"));
    }
}
