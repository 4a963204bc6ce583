//! `/v1/templates`: add a version, read one, list them, preview a rendering. Templates are
//! the caller's tenant's (an admin key included).

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::AppState;
use super::auth::require;
use super::extract::Params;
use super::extract::{json_body, refuse_nul};
use super::paging;
use super::problem::ApiError;
use super::schemas::Problem;
use crate::domain::template::{self, Body, Template, Version};
use crate::domain::{Channel, FieldError, content, sms};
use crate::store::keys::{Caller, Scope};
use crate::store::templates as store;

pub(super) const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

/// A template version as the API returns it: its body with its name, number and date.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"name": "welcome", "version": 2, "created_at": "2026-12-01T09:00:00Z",
    "channels": ["email", "sms"], "default_locale": "en",
    "email": {"subject": "Welcome, {{ first_name }}", "text": "Hi {{ first_name }}"},
    "sms": {"text": "Hi {{ first_name }}"},
    "locales": {"pt": {"sms": {"text": "Olá {{ first_name }}"}}}}))]
pub(super) struct TemplateView {
    name: String,
    version: i32,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    /// The channels of the default variant.
    channels: Vec<Channel>,
    /// The locale of the default variant (the top-level parts), if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    default_locale: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<crate::domain::content::EmailContent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sms: Option<crate::domain::content::SmsContent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    push: Option<crate::domain::content::PushContent>,
    /// Variants by BCP 47 tag.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    locales: BTreeMap<String, template::Parts>,
}

impl From<Version> for TemplateView {
    fn from(v: Version) -> Self {
        let t = v.template;
        TemplateView {
            channels: t.parts.channels(),
            name: v.name,
            version: v.version,
            created_at: v.created_at,
            default_locale: t.default_locale,
            email: t.parts.email,
            sms: t.parts.sms,
            push: t.parts.push,
            locales: t.locales,
        }
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if template::valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_parameter("name", "a template name is 1 to 100 letters, digits, `.`, `_` or `-`"))
    }
}

fn not_found(name: &str, version: Option<i32>) -> ApiError {
    match version {
        Some(v) => ApiError::not_found(format!("template `{name}` has no version {v}")),
        None => ApiError::not_found(format!("no template named `{name}`")),
    }
}

/// Add a version of a template (the first `PUT` creates it). Every text must compile.
#[utoipa::path(put, path = "/v1/templates/{name}", operation_id = "putTemplate", tag = "templates", security(("api_key" = [])),
    params(("name" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", description = "Letters, digits, `.`, `_`, `-` (1 to 100, starting with a letter or digit)")),
    request_body = Body,
    responses((status = 201, description = "The new version", body = TemplateView),
              (status = 400, response = Problem), (status = 422, response = Problem)))]
pub(super) async fn put(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Send)?;
    check_name(&name)?;
    let body = json_body(&body)?;
    refuse_nul(&body)?;
    let template = Template::parse(&body).map_err(ApiError::validation)?;
    let version = store::put(&state.pool, caller.tenant_id, &name, &template).await?;
    let location = format!("/v1/templates/{name}?version={}", version.version);
    let mut resp = (StatusCode::CREATED, Json(TemplateView::from(version))).into_response();
    if let Ok(loc) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(resp)
}

/// `GET /v1/templates/{name}`'s parameters.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VersionQuery {
    version: Option<String>,
}

/// The lists' parameters: `limit` and `cursor` (see `paging`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PageQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

fn version_param(given: Option<&str>) -> Result<Option<i32>, ApiError> {
    given
        .map(|v| {
            v.parse::<i32>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| ApiError::bad_parameter("version", "must be a positive integer"))
        })
        .transpose()
}

/// A template's latest version, or `?version=N`.
#[utoipa::path(get, path = "/v1/templates/{name}", operation_id = "getTemplate", tag = "templates", security(("api_key" = [])),
    params(("name" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", description = "Letters, digits, `.`, `_`, `-` (1 to 100, starting with a letter or digit)"), ("version" = Option<i32>, Query, minimum = 1, description = "The latest when absent")),
    responses((status = 200, description = "The template", body = TemplateView), (status = 400, response = Problem),
              (status = 404, response = Problem)))]
pub(super) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Params(q): Params<VersionQuery>,
) -> Result<Json<TemplateView>, ApiError> {
    require(&caller, Scope::Read)?;
    check_name(&name)?;
    let version = version_param(q.version.as_deref())?;
    let mut conn = crate::store::session(&state.pool).await?;
    let found =
        store::get(&mut conn, caller.tenant_id, &name, version).await?.ok_or_else(|| not_found(&name, version))?;
    Ok(Json(found.into()))
}

/// A page of templates by name, each as its latest version.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct TemplatePage {
    items: Vec<TemplateSummary>,
    next_cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct TemplateSummary {
    name: String,
    /// The latest version.
    version: i32,
    channels: Vec<Channel>,
    default_locale: Option<String>,
    /// The tags of the latest version's variants.
    locales: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    /// When the latest version was added.
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
}

/// The tenant's templates, by name.
#[utoipa::path(get, path = "/v1/templates", operation_id = "listTemplates", tag = "templates", security(("api_key" = [])),
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "1 to 500, default 50"),
           ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    responses((status = 200, description = "A page of templates", body = TemplatePage), (status = 400, response = Problem)))]
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<PageQuery>,
) -> Result<Json<TemplatePage>, ApiError> {
    require(&caller, Scope::Read)?;
    let limit = paging::limit(q.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = paging::cursor(q.cursor.as_deref(), |b| String::from_utf8(b).ok().filter(|n| template::valid_name(n)))?;
    let mut conn = crate::store::session(&state.pool).await?;
    let rows = store::list(&mut conn, caller.tenant_id, after.as_deref(), limit + 1).await?;
    let (rows, next_cursor) = paging::page(rows, limit, |r| r.latest.name.clone());
    let items = rows
        .into_iter()
        .map(|r| TemplateSummary {
            channels: r.latest.template.parts.channels(),
            default_locale: r.latest.template.default_locale.clone(),
            locales: r.latest.template.locales.keys().cloned().collect(),
            name: r.latest.name,
            version: r.latest.version,
            created_at: r.first_created_at,
            updated_at: r.latest.created_at,
        })
        .collect();
    Ok(Json(TemplatePage { items, next_cursor }))
}

/// Render a template with `data` as a send would, without sending: each part (or `channel`'s),
/// the variant used, and for SMS its encoding, segments and a GSM-7-safe rendering.
#[utoipa::path(post, path = "/v1/templates/{name}/preview", operation_id = "previewTemplate", tag = "templates", security(("api_key" = [])),
    params(("name" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", description = "Letters, digits, `.`, `_`, `-` (1 to 100, starting with a letter or digit)")),
    request_body = crate::http::schemas::PreviewRequest,
    responses((status = 200, description = "The rendered parts", body = PreviewView,
               example = json!({"name": "welcome", "version": 2, "locale": "pt", "requested_locale": "pt-BR",
                   "sms": {"locale": "pt", "content": {"text": "Olá Ana — bem-vinda"},
                           "sms": {"encoding": "UCS-2", "segments": 1, "ucs2_characters": ["—"]},
                           "gsm7_safe": {"text": "Olá Ana - bem-vinda", "sms": {"encoding": "GSM-7", "segments": 1}}}})),
              (status = 400, response = Problem), (status = 404, response = Problem),
              (status = 422, response = Problem)))]
pub(super) async fn preview(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<PreviewView>, ApiError> {
    if !caller.has(Scope::Read) {
        require(&caller, Scope::Send)?;
    }
    check_name(&name)?;
    let body = if body.is_empty() { json!({}) } else { json_body(&body)? };
    refuse_nul(&body)?;
    let request = PreviewArgs::parse(&body).map_err(ApiError::validation)?;
    let mut conn = crate::store::session(&state.pool).await?;
    let found = store::get(&mut conn, caller.tenant_id, &name, request.version)
        .await?
        .ok_or_else(|| not_found(&name, request.version))?;
    drop(conn);
    let intake = state.intake.clone();
    // Rendering is CPU work (up to the request's budget): off the runtime's threads.
    let preview = super::off_runtime(&state, move || {
        let rules = intake.rules().content_rules(&caller);
        render_preview(&found, &request, rules, &template::RenderBudget::per_request())
    })
    .await?;
    preview.map(Json).map_err(ApiError::validation)
}

/// The fields of a preview request.
pub(super) const PREVIEW_FIELDS: [&str; 4] = ["data", "locale", "channel", "version"];

struct PreviewArgs {
    data: Map<String, Value>,
    locale: Option<String>,
    channel: Option<Channel>,
    version: Option<i32>,
}

impl PreviewArgs {
    fn parse(body: &Value) -> Result<PreviewArgs, Vec<FieldError>> {
        let Some(obj) = body.as_object() else {
            return Err(vec![FieldError::new("", "the body must be a JSON object")]);
        };
        let mut errs = Vec::new();
        for key in obj.keys().filter(|k| !PREVIEW_FIELDS.contains(&k.as_str())) {
            errs.push(FieldError::new(format!("/{}", content::escape(key)), "unknown field"));
        }
        let data = match obj.get("data") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => {
                errs.push(FieldError::new("/data", "must be an object"));
                Map::new()
            }
        };
        let locale = match obj.get("locale") {
            None | Some(Value::Null) => None,
            Some(Value::String(l)) if template::valid_locale(l) => Some(l.clone()),
            Some(_) => {
                errs.push(FieldError::new("/locale", "must be a BCP 47 tag such as en or pt-BR"));
                None
            }
        };
        let channel = match obj.get("channel") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let c = v.as_str().and_then(Channel::parse);
                if c.is_none() {
                    errs.push(FieldError::new("/channel", "must be one of email, sms, push"));
                }
                c
            }
        };
        let version = match obj.get("version") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let n = template::version_number(v);
                if n.is_none() {
                    errs.push(FieldError::new("/version", "must be a positive integer"));
                }
                n
            }
        };
        if errs.is_empty() { Ok(PreviewArgs { data, locale, channel, version }) } else { Err(errs) }
    }
}

/// Each part rendered as a send would render it, and checked as its content would be.
/// `POST /v1/templates/{name}/preview`: each part rendered, and the variant used.
#[derive(Serialize, ToSchema)]
pub(super) struct PreviewView {
    name: String,
    version: i32,
    /// The variant of the template chosen for the requested locale (null: the default's).
    locale: Option<String>,
    requested_locale: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<PreviewPart>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sms: Option<PreviewPart>,
    #[serde(skip_serializing_if = "Option::is_none")]
    push: Option<PreviewPart>,
}

/// One channel's part, rendered as a send would be.
#[derive(Serialize, ToSchema)]
struct PreviewPart {
    /// The variant this part came from (a variant without this channel falls back).
    locale: Option<String>,
    #[schema(value_type = super::schemas::ContentRequest)]
    content: Value,
    /// SMS: how carriers will send and bill the text.
    #[serde(skip_serializing_if = "Option::is_none")]
    sms: Option<sms::Segments>,
    /// SMS with characters outside GSM-7: the text with each replaced by its nearest GSM-7
    /// equivalent, and what it would cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    gsm7_safe: Option<Gsm7Safe>,
}

#[derive(Serialize, ToSchema)]
struct Gsm7Safe {
    text: String,
    sms: sms::Segments,
}

fn render_preview(
    found: &Version,
    args: &PreviewArgs,
    rules: content::Rules<'_>,
    budget: &template::RenderBudget,
) -> Result<PreviewView, Vec<FieldError>> {
    let t = &found.template;
    let channels = match args.channel {
        Some(c) => vec![c],
        None => Channel::ALL.into_iter().filter(|c| t.part_for(*c, args.locale.as_deref()).is_some()).collect(),
    };
    let mut out = PreviewView {
        name: found.name.clone(),
        version: found.version,
        locale: t.variant(args.locale.as_deref()).0.map(str::to_owned),
        requested_locale: args.locale.clone(),
        email: None,
        sms: None,
        push: None,
    };
    let mut errs = Vec::new();
    for channel in channels {
        let Some((variant, parts)) = t.part_for(channel, args.locale.as_deref()) else {
            errs.push(FieldError::new(
                "/channel",
                format!("template `{}` version {} has no {channel} part", found.name, found.version),
            ));
            continue;
        };
        let rendered = match template::render_checked(parts, channel, &args.data, "/data", "/data", rules, budget) {
            Ok((rendered, _)) => rendered,
            Err(problems) => {
                errs.extend(problems);
                continue;
            }
        };
        let mut part =
            PreviewPart { locale: variant.map(str::to_owned), content: rendered, sms: None, gsm7_safe: None };
        if channel == Channel::Sms {
            let text = part.content["text"].as_str().unwrap_or_default().to_owned();
            part.sms = Some(sms::segments(&text));
            part.gsm7_safe = sms::gsm7_safe(&text).map(|safe| Gsm7Safe { sms: sms::segments(&safe), text: safe });
        }
        match channel {
            Channel::Email => out.email = Some(part),
            Channel::Sms => out.sms = Some(part),
            Channel::Push => out.push = Some(part),
        }
    }
    if errs.is_empty() { Ok(out) } else { Err(errs) }
}
