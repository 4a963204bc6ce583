//! Fake HTTP providers on 127.0.0.1, each checking what the real provider checks (auth,
//! content type, required fields) and answering with the provider's real success and error
//! bodies. Every request is recorded; `plan` queues answers to give instead of success.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

#[derive(Clone, Debug)]
pub struct Recorded {
    pub version: axum::http::Version,
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(&self.body).into_owned().collect()
    }

    pub fn field(&self, name: &str) -> Option<String> {
        self.form().into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// An answer: status, headers, body.
pub type Answer = (u16, Vec<(&'static str, String)>, String);

#[derive(Default)]
struct Inner {
    requests: Vec<Recorded>,
    plan: VecDeque<Answer>,
    in_flight: usize,
    max_in_flight: usize,
    delay: Duration,
}

type Check = fn(&Recorded) -> Result<(), Answer>;
type Success = fn(&Recorded, usize) -> Answer;

#[derive(Clone)]
pub struct FakeHttp {
    pub origin: String,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Clone)]
struct Ctx {
    inner: Arc<Mutex<Inner>>,
    check: Check,
    success: Success,
}

impl FakeHttp {
    async fn start(check: Check, success: Success) -> FakeHttp {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let ctx = Ctx { inner: inner.clone(), check, success };
        let app = Router::new().fallback(handle).with_state(ctx);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let origin = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeHttp { origin, inner }
    }

    pub fn plan(&self, answers: Vec<Answer>) {
        self.inner.lock().expect("lock").plan = answers.into();
    }

    /// Hold every answer this long (to observe concurrency).
    pub fn delay(&self, d: Duration) {
        self.inner.lock().expect("lock").delay = d;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().expect("lock").requests.clone()
    }

    pub fn max_in_flight(&self) -> usize {
        self.inner.lock().expect("lock").max_in_flight
    }

    pub async fn sendgrid() -> FakeHttp {
        FakeHttp::start(sendgrid_check, |_, n| (202, vec![("X-Message-Id", format!("sgmsg{n}"))], String::new())).await
    }

    pub async fn ses() -> FakeHttp {
        FakeHttp::start(ses_check, |_, n| {
            (
                200,
                vec![("content-type", "application/json".into())],
                json!({"MessageId": format!("0100018c-ses-{n}")}).to_string(),
            )
        })
        .await
    }

    pub async fn mailgun() -> FakeHttp {
        FakeHttp::start(mailgun_check, |_, n| {
            (
                200,
                vec![("content-type", "application/json".into())],
                json!({"id": format!("<2026112614.{n}@mg.example.com>"), "message": "Queued. Thank you."}).to_string(),
            )
        })
        .await
    }

    pub async fn twilio() -> FakeHttp {
        FakeHttp::start(twilio_check, |r, n| {
            let body = json!({
                "sid": format!("SM{n:032x}"), "status": "queued", "to": r.field("To"), "from": r.field("From"),
                "messaging_service_sid": r.field("MessagingServiceSid"), "body": r.field("Body"),
                "account_sid": TWILIO_SID, "api_version": "2010-04-01", "direction": "outbound-api",
                "error_code": null, "error_message": null, "num_segments": "1", "price": null,
            });
            (201, vec![("content-type", "application/json".into())], body.to_string())
        })
        .await
    }

    /// Google's token endpoint (`/token`) and FCM v1 (`/v1/projects/…/messages:send`) in one.
    pub async fn fcm() -> FakeHttp {
        FakeHttp::start(fcm_check, |r, n| {
            if r.path == "/token" {
                json_answer(
                    200,
                    &json!({"access_token": format!("ya29.fake-{n}"), "expires_in": 3599, "token_type": "Bearer"}),
                )
            } else {
                json_answer(200, &json!({"name": format!("projects/{FCM_PROJECT}/messages/{n}")}))
            }
        })
        .await
    }

    /// APNs over HTTP/2 (h2c on 127.0.0.1).
    pub async fn apns() -> FakeHttp {
        FakeHttp::start(apns_check, |r, _| {
            let id = header(r, "apns-id").to_owned();
            (200, vec![("apns-id", id)], String::new())
        })
        .await
    }

    /// A push service: `POST /push/{subscription}`.
    pub async fn push_service() -> FakeHttp {
        FakeHttp::start(web_push_check, |r, n| (201, vec![("location", format!("{}/msg/{n}", r.path))], String::new()))
            .await
    }

    /// A status-callback receiver (or any endpoint): records, answers 200 unless planned otherwise.
    pub async fn receiver() -> FakeHttp {
        FakeHttp::start(|_| Ok(()), |_, _| (200, vec![], "ok".into())).await
    }

    pub async fn vonage() -> FakeHttp {
        FakeHttp::start(vonage_check, |r, n| {
            let body = json!({"message-count": "1", "messages": [{
                "to": r.field("to"), "message-id": format!("0C00000{n:09X}"), "status": "0",
                "remaining-balance": "15.53590000", "message-price": "0.03330000", "network": "23410"}]});
            (200, vec![("content-type", "application/json".into())], body.to_string())
        })
        .await
    }
}

async fn handle(State(ctx): State<Ctx>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 10 << 20).await.unwrap_or_default();
    let rec = Recorded {
        version: parts.version,
        method: parts.method.to_string(),
        path: parts.uri.path_and_query().map(std::string::ToString::to_string).unwrap_or_default(),
        headers: parts.headers,
        body,
        at: Instant::now(),
    };
    let (planned, delay, n) = {
        let mut inner = ctx.inner.lock().expect("lock");
        inner.requests.push(rec.clone());
        inner.in_flight += 1;
        inner.max_in_flight = inner.max_in_flight.max(inner.in_flight);
        (inner.plan.pop_front(), inner.delay, inner.requests.len())
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let answer = match (ctx.check)(&rec) {
        Err(refusal) => refusal,
        Ok(()) => planned.unwrap_or_else(|| (ctx.success)(&rec, n)),
    };
    ctx.inner.lock().expect("lock").in_flight -= 1;
    let (status, headers, body) = answer;
    let mut resp = (StatusCode::from_u16(status).expect("status"), body).into_response();
    for (k, v) in headers {
        resp.headers_mut().insert(k, v.parse().expect("header"));
    }
    resp
}

fn header<'a>(r: &'a Recorded, name: &str) -> &'a str {
    r.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn basic_auth(r: &Recorded) -> Option<(String, String)> {
    let raw = header(r, "authorization").strip_prefix("Basic ")?;
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(raw).ok()?).ok()?;
    let (u, p) = decoded.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

fn json_answer(status: u16, body: &Value) -> Answer {
    (status, vec![("content-type", "application/json".into())], body.to_string())
}

pub const SENDGRID_KEY: &str = "SG.test-key";

fn sendgrid_check(r: &Recorded) -> Result<(), Answer> {
    if r.method != "POST" || r.path != "/v3/mail/send" {
        return Err(json_answer(404, &json!({"errors": [{"message": "Not found"}]})));
    }
    if header(r, "authorization") != format!("Bearer {SENDGRID_KEY}") {
        return Err(json_answer(
            401,
            &json!({"errors": [{"field": null, "message": "The provided authorization grant is invalid, expired, or revoked"}]}),
        ));
    }
    if !header(r, "content-type").starts_with("application/json") {
        return Err(json_answer(415, &json!({"errors": [{"message": "Content-Type should be application/json."}]})));
    }
    let b = r.json();
    let mut errors = Vec::new();
    if b["personalizations"][0]["to"][0]["email"].as_str().is_none() {
        errors.push(json!({"field": "personalizations.0.to", "message": "The to array is required for all personalization objects, and must have at least one email object with a valid email address."}));
    }
    if b["from"]["email"].as_str().is_none() {
        errors
            .push(json!({"field": "from.email", "message": "The from object must be provided for every email send."}));
    }
    if b["subject"].as_str().is_none_or(str::is_empty) {
        errors.push(json!({"field": "subject", "message": "The subject is required."}));
    }
    if b["content"].as_array().is_none_or(std::vec::Vec::is_empty) {
        errors.push(json!({"field": "content", "message": "Unless a valid template_id is provided, the content parameter is required."}));
    }
    if errors.is_empty() { Ok(()) } else { Err(json_answer(400, &json!({ "errors": errors }))) }
}

pub const SES_KEY_ID: &str = "AKIDEXAMPLE";
pub const SES_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

/// Recompute the SigV4 signature of the request as received (method, URL, the headers it
/// says it signed, the exact body) with AWS's signer, and compare.
fn ses_check(r: &Recorded) -> Result<(), Answer> {
    let deny = |msg: &str| {
        (
            403,
            vec![
                (
                    "x-amzn-ErrorType",
                    "SignatureDoesNotMatch:http://internal.amazon.com/coral/com.amazon.coral.service/".into(),
                ),
                ("content-type", "application/json".into()),
            ],
            json!({"message": msg}).to_string(),
        )
    };
    if r.method != "POST" || r.path != "/v2/email/outbound-emails" {
        return Err(json_answer(404, &json!({"message": "Not found"})));
    }
    let auth = header(r, "authorization");
    let Some(rest) = auth.strip_prefix("AWS4-HMAC-SHA256 Credential=") else {
        return Err(deny("Missing Authentication Token"));
    };
    let credential = rest.split(',').next().unwrap_or("");
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5 || scope[0] != SES_KEY_ID || scope[3] != "ses" || scope[4] != "aws4_request" {
        return Err(deny(&format!(
            "Credential should be scoped to a valid region and to the ses service, not {credential}"
        )));
    }
    let signed_headers: Vec<&str> =
        auth.split("SignedHeaders=").nth(1).unwrap_or("").split(',').next().unwrap_or("").split(';').collect();
    let amz_date = header(r, "x-amz-date");
    let time = time::PrimitiveDateTime::parse(
        amz_date,
        time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"),
    )
    .map_err(|_| deny("missing or bad X-Amz-Date"))?
    .assume_utc();
    let host = header(r, "host").to_owned();
    let url = format!("http://{host}{}", r.path);
    let headers: Vec<(&str, &str)> =
        signed_headers.iter().filter(|h| **h != "host").map(|h| (*h, header(r, h))).collect();
    let creds = aws_credential_types::Credentials::new(SES_KEY_ID, SES_SECRET, None, None, "fake");
    let identity = creds.into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(scope[2])
        .name("ses")
        .time(time.into())
        .settings(aws_sigv4::http_request::SigningSettings::default())
        .build()
        .expect("params")
        .into();
    let signable = aws_sigv4::http_request::SignableRequest::new(
        "POST",
        url,
        headers.into_iter(),
        aws_sigv4::http_request::SignableBody::Bytes(&r.body),
    )
    .expect("signable");
    let (_, expected) = aws_sigv4::http_request::sign(signable, &params).expect("sign").into_parts();
    if !auth.ends_with(&format!("Signature={expected}")) {
        return Err(deny("The request signature we calculated does not match the signature you provided."));
    }
    let b = r.json();
    if b["FromEmailAddress"].as_str().is_none() || b["Destination"]["ToAddresses"][0].as_str().is_none() {
        return Err((
            400,
            vec![("x-amzn-ErrorType", "BadRequestException:".into())],
            json!({"message": "Missing required field"}).to_string(),
        ));
    }
    Ok(())
}

pub const MAILGUN_KEY: &str = "key-mailgun-test";
pub const MAILGUN_DOMAIN: &str = "mg.example.com";

fn mailgun_check(r: &Recorded) -> Result<(), Answer> {
    if r.method != "POST" || r.path != format!("/v3/{MAILGUN_DOMAIN}/messages") {
        return Err(json_answer(404, &json!({"message": "Domain not found"})));
    }
    if basic_auth(r) != Some(("api".into(), MAILGUN_KEY.into())) {
        return Err((401, vec![], "Forbidden".into()));
    }
    if !header(r, "content-type").starts_with("application/x-www-form-urlencoded") {
        return Err(json_answer(400, &json!({"message": "unsupported content type"})));
    }
    for field in ["from", "to", "subject"] {
        if r.field(field).is_none() {
            return Err(json_answer(400, &json!({"message": format!("'{field}' parameter is missing")})));
        }
    }
    if r.field("text").is_none() && r.field("html").is_none() {
        return Err(json_answer(
            400,
            &json!({"message": "Need at least one of 'text', 'html', 'amp-html' or 'template' parameters specified"}),
        ));
    }
    Ok(())
}

pub const TWILIO_SID: &str = "AC00000000000000000000000000000001";
pub const TWILIO_TOKEN: &str = "twilio-auth-token";

fn twilio_check(r: &Recorded) -> Result<(), Answer> {
    let auth_error = json_answer(
        401,
        &json!({"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401}),
    );
    if r.method != "POST" || r.path != format!("/2010-04-01/Accounts/{TWILIO_SID}/Messages.json") {
        return Err(json_answer(
            404,
            &json!({"code": 20404, "message": "The requested resource was not found", "status": 404}),
        ));
    }
    if basic_auth(r) != Some((TWILIO_SID.into(), TWILIO_TOKEN.into())) {
        return Err(auth_error);
    }
    if !header(r, "content-type").starts_with("application/x-www-form-urlencoded") {
        return Err(json_answer(400, &json!({"code": 20001, "message": "Content-Type must be form", "status": 400})));
    }
    let missing = |m: &str, code: i64| {
        Err(json_answer(
            400,
            &json!({"code": code, "message": m, "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": 400}),
        ))
    };
    if r.field("To").is_none() {
        return missing("A 'To' phone number is required.", 21604);
    }
    if r.field("From").is_none() && r.field("MessagingServiceSid").is_none() {
        return missing("A 'From' phone number is required.", 21603);
    }
    if r.field("Body").is_none_or(|b| b.is_empty()) {
        return missing("A text message body or media urls must be specified.", 21602);
    }
    Ok(())
}

pub const VONAGE_KEY: &str = "abcd1234";
pub const VONAGE_SECRET: &str = "vonage-secret";

fn vonage_check(r: &Recorded) -> Result<(), Answer> {
    if r.method != "POST" || r.path != "/sms/json" {
        return Err((404, vec![], String::new()));
    }
    // Vonage reports even auth and parameter errors as HTTP 200 with a status code.
    let refuse = |status: &str, text: &str| {
        Err(json_answer(200, &json!({"message-count": "1", "messages": [{"status": status, "error-text": text}]})))
    };
    if r.field("api_key").as_deref() != Some(VONAGE_KEY) || r.field("api_secret").as_deref() != Some(VONAGE_SECRET) {
        return refuse("4", "Bad Credentials");
    }
    for field in ["from", "to", "text"] {
        if r.field(field).is_none() {
            return refuse("2", &format!("Missing {field} param"));
        }
    }
    if r.field("to").is_some_and(|t| t.starts_with('+')) {
        return refuse("3", "Invalid to param");
    }
    Ok(())
}

pub const FCM_PROJECT: &str = "test-project";
pub const FCM_CLIENT_EMAIL: &str = "herald@test-project.iam.gserviceaccount.com";
pub const FCM_PUBLIC_KEY: &str = include_str!("../fixtures/fcm-test-key.pub.pem");

/// The token endpoint verifies the RS256 assertion with the service account's public key and
/// its claims; the FCM endpoint checks the bearer token it issued and the message.
fn fcm_check(r: &Recorded) -> Result<(), Answer> {
    if r.path == "/token" {
        let oauth_error = |d: &str| Err(json_answer(400, &json!({"error": "invalid_grant", "error_description": d})));
        if r.field("grant_type").as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
            return oauth_error("bad grant_type");
        }
        let Some(assertion) = r.field("assertion") else { return oauth_error("no assertion") };
        let token_uri = format!("http://{}/token", header(r, "host"));
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_audience(&[token_uri]);
        v.set_issuer(&[FCM_CLIENT_EMAIL]);
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(FCM_PUBLIC_KEY.as_bytes()).expect("public key");
        return match jsonwebtoken::decode::<Value>(&assertion, &key, &v) {
            Ok(data) if data.claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging" => Ok(()),
            Ok(_) => oauth_error("wrong scope"),
            Err(e) => oauth_error(&format!("Invalid JWT Signature or claims: {e}")),
        };
    }
    let unauthenticated = json_answer(
        401,
        &json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}}),
    );
    if r.path != format!("/v1/projects/{FCM_PROJECT}/messages:send") {
        return Err(json_answer(404, &json!({"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}})));
    }
    if !header(r, "authorization").starts_with("Bearer ya29.fake-") {
        return Err(unauthenticated);
    }
    let m = &r.json()["message"];
    if m["token"].as_str().is_none() || m["data"].as_object().is_some_and(|d| d.values().any(|v| !v.is_string())) {
        return Err(json_answer(
            400,
            &json!({"error": {"code": 400, "message": "Invalid message", "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"}]}}),
        ));
    }
    Ok(())
}

pub const APNS_TEAM: &str = "TEAM123456";
pub const APNS_KEY_ID: &str = "KEY1234567";
pub const APNS_TOPIC: &str = "com.acme.app";
pub const APNS_PUBLIC_KEY: &str = include_str!("../fixtures/apns-test-key.pub.pem");

/// HTTP/2 only; the provider token is an ES256 JWT with our key id and team; the headers
/// APNs requires are present.
fn apns_check(r: &Recorded) -> Result<(), Answer> {
    let reason = |status: u16, reason: &str| Err(json_answer(status, &json!({"reason": reason})));
    if r.version != axum::http::Version::HTTP_2 {
        return reason(405, "HTTP/2 required");
    }
    let Some(device) = r.path.strip_prefix("/3/device/") else { return reason(404, "BadPath") };
    if device.len() < 64 || !device.bytes().all(|b| b.is_ascii_hexdigit()) {
        return reason(400, "BadDeviceToken");
    }
    let Some(token) = header(r, "authorization").strip_prefix("bearer ") else {
        return reason(403, "MissingProviderToken");
    };
    let key = jsonwebtoken::DecodingKey::from_ec_pem(APNS_PUBLIC_KEY.as_bytes()).expect("public key");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_issuer(&[APNS_TEAM]);
    v.required_spec_claims = ["iss".to_string()].into_iter().collect();
    v.validate_exp = false;
    let Ok(head) = jsonwebtoken::decode_header(token) else { return reason(403, "InvalidProviderToken") };
    match jsonwebtoken::decode::<Value>(token, &key, &v) {
        Ok(data) if head.kid.as_deref() == Some(APNS_KEY_ID) && data.claims["iat"].is_u64() => {}
        _ => return reason(403, "InvalidProviderToken"),
    }
    if header(r, "apns-topic") != APNS_TOPIC {
        return reason(400, "BadTopic");
    }
    if header(r, "apns-push-type").is_empty() {
        return reason(400, "InvalidPushType");
    }
    if r.json()["aps"].is_null() {
        return reason(400, "PayloadEmpty");
    }
    Ok(())
}

/// VAPID (RFC 8292): `Authorization: vapid t=<ES256 JWT>, k=<public key>`, verified with `k`;
/// `aud` must be this service's origin, port included; `exp` at most 24 hours ahead.
fn web_push_check(r: &Recorded) -> Result<(), Answer> {
    let refuse = |status: u16, why: &str| Err((status, vec![], why.to_owned()));
    if !r.path.starts_with("/push/") {
        return refuse(404, "no such subscription");
    }
    if header(r, "content-encoding") != "aes128gcm" || header(r, "ttl").parse::<u64>().is_err() {
        return refuse(400, "aes128gcm and TTL required");
    }
    let auth = header(r, "authorization");
    let Some(rest) = auth.strip_prefix("vapid t=") else { return refuse(401, "VAPID required") };
    let Some((token, k)) = rest.split_once(", k=") else {
        return refuse(401, "VAPID k missing");
    };
    let point = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(k).unwrap_or_default();
    if point.len() != 65 || point[0] != 4 {
        return refuse(401, "bad VAPID key");
    }
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let key = jsonwebtoken::DecodingKey::from_ec_components(&b64(&point[1..33]), &b64(&point[33..65])).expect("key");
    let origin = format!("http://{}", header(r, "host"));
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&[origin]);
    match jsonwebtoken::decode::<Value>(token, &key, &v) {
        Ok(data) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs();
            if data.claims["exp"].as_u64().is_none_or(|e| e > now + 24 * 3600) || data.claims["sub"].as_str().is_none()
            {
                return refuse(403, "bad VAPID claims");
            }
            Ok(())
        }
        Err(e) => refuse(403, &format!("VAPID rejected: {e}")),
    }
}
