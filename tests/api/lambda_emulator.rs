//! Lambda under a real Runtime API emulator (issue 22): `cargo lambda watch
//! --only-lambda-apis` (the `cargo-lambda` package from PyPI, which `.ci/run` installs,
//! pinned), with Herald behind PgBouncer in transaction mode. The `api` role answers a
//! Function URL request (through the emulator's HTTP passthrough) and API Gateway REST, HTTP and
//! ALB events; the `worker` role drains on an EventBridge schedule event and on an SQS event.
//! The emulator sends a deadline no Lambda would (its timeout, as if it were a time), so the
//! worker drains for `lambda.fallback_budget_ms` instead of nothing.
//!
//! Without `cargo-lambda` these tests say so and pass, unless `HERALD_REQUIRE_CARGO_LAMBDA`
//! is set, as CI sets it.

use std::process::Stdio;
use std::time::Duration;

use herald::store::keys::Scope;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::helpers::TestApp;
use crate::pooler::{Bouncer, herald_behind};

const BIN: &str = env!("CARGO_BIN_EXE_herald");

/// A `cargo lambda watch --only-lambda-apis` on a port of its own.
struct Emulator {
    /// Killed when the emulator is dropped.
    _child: Child,
    port: u16,
}

impl Emulator {
    async fn start() -> Option<Emulator> {
        let installed = std::process::Command::new("cargo-lambda")
            .args(["lambda", "--version"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !installed {
            assert!(
                std::env::var_os("HERALD_REQUIRE_CARGO_LAMBDA").is_none(),
                "HERALD_REQUIRE_CARGO_LAMBDA is set but cargo-lambda is not installed (pip install cargo-lambda)"
            );
            eprintln!("skipped: cargo-lambda is not installed (pip install cargo-lambda)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let child = Command::new("cargo-lambda")
            .args(["lambda", "watch", "--only-lambda-apis", "-P", &port.to_string()])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("cargo lambda watch");
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Some(Emulator { _child: child, port });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("cargo lambda watch did not listen on {port}");
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Start `herald` as the function behind this emulator, in `role`, on `t`'s database (through
    /// the pooler, as `t` is configured).
    fn function(&self, t: &TestApp, role: &str) -> Child {
        let s = &t.app.settings;
        Command::new(BIN)
            .env("AWS_LAMBDA_RUNTIME_API", format!("{}/.rt", self.base()))
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("HERALD_LAMBDA_ROLE", role)
            .env("DATABASE_URL", s.database.url.expose())
            .env("HERALD__DATABASE__TRANSACTION_POOLER", "true")
            .env("HERALD__PROVIDERS__CONSOLE__KIND", "log")
            .env("HERALD__CHANNELS__SMS__PROVIDERS", "[\"console\"]")
            .env("HERALD__LAMBDA__FALLBACK_BUDGET_MS", "3000")
            .env("RUST_LOG", "warn")
            .env_remove("HERALD_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn herald")
    }

    /// Invoke the function with `event`; its answer.
    async fn invoke(&self, event: &Value) -> Value {
        let r = reqwest::Client::new()
            .post(format!("{}/2015-03-31/functions/_/invocations", self.base()))
            .json(event)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("invoke");
        r.json().await.expect("json")
    }
}

fn sms(text: &str) -> Value {
    json!({"channel": "sms", "to": "+14155550100", "content": {"text": text}})
}

fn apigw_rest(path: &str, key: &str) -> Value {
    json!({"resource": "/{proxy+}", "path": path, "httpMethod": "GET",
           "headers": {"Host": "abc.execute-api.eu-west-1.amazonaws.com", "Authorization": format!("Bearer {key}")},
           "multiValueHeaders": {"Authorization": [format!("Bearer {key}")]},
           "queryStringParameters": null, "pathParameters": {"proxy": path.trim_start_matches('/')},
           "requestContext": {"accountId": "123456789012", "resourceId": "r", "stage": "prod", "requestId": "req-rest",
                              "identity": {"sourceIp": "127.0.0.1"}, "resourcePath": "/{proxy+}", "httpMethod": "GET",
                              "apiId": "abc"},
           "body": null, "isBase64Encoded": false})
}

fn apigw_http(path: &str, key: &str) -> Value {
    json!({"version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
           "headers": {"host": "abc.execute-api.eu-west-1.amazonaws.com", "authorization": format!("Bearer {key}")},
           "requestContext": {"accountId": "123456789012", "apiId": "abc", "domainName": "abc.execute-api.eu-west-1.amazonaws.com",
                              "domainPrefix": "abc", "http": {"method": "GET", "path": path, "protocol": "HTTP/1.1",
                              "sourceIp": "127.0.0.1", "userAgent": "test"}, "requestId": "req-http", "routeKey": "$default",
                              "stage": "$default", "time": "07/Dec/2026:00:00:00 +0000", "timeEpoch": 1796601600000u64},
           "isBase64Encoded": false})
}

fn alb(path: &str, key: &str) -> Value {
    json!({"requestContext": {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/herald/6d0ecf831eec9f09"}},
           "httpMethod": "GET", "path": path, "queryStringParameters": {},
           "headers": {"host": "herald.example.com", "authorization": format!("Bearer {key}")},
           "isBase64Encoded": false, "body": ""})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_roles_answer_under_the_cargo_lambda_emulator_through_a_pooler() {
    let Some(api_emulator) = Emulator::start().await else { return };
    let Some(bouncer) = Bouncer::start() else { return };
    let (t, _replica) = herald_behind(&bouncer).await;
    let key = t.key("acme", &[Scope::Send, Scope::Read]).await;

    // The api role: a Function URL request through the emulator's HTTP passthrough.
    let mut api = api_emulator.function(&t, "api");
    let created: Value = reqwest::Client::new()
        .post(format!("{}/lambda-url/_/v1/notifications", api_emulator.base()))
        .bearer_auth(&key)
        .json(&sms("from a function"))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("function url")
        .json()
        .await
        .expect("json");
    let id = created["id"].as_str().unwrap_or_else(|| panic!("{created}")).to_owned();
    assert_eq!(created["status"], "queued", "{created}");
    // API Gateway (REST and HTTP) and ALB events.
    let path = format!("/v1/notifications/{id}");
    for (kind, event) in
        [("rest", apigw_rest(&path, &key)), ("http", apigw_http(&path, &key)), ("alb", alb(&path, &key))]
    {
        let answer = api_emulator.invoke(&event).await;
        assert_eq!(answer["statusCode"], 200, "{kind}: {answer}");
        let body: Value = serde_json::from_str(answer["body"].as_str().unwrap_or("null")).expect("body");
        assert_eq!(body["id"], id.as_str(), "{kind}: {body}");
    }
    api.kill().await.expect("kill");

    // The worker role, on an emulator of its own: a schedule drains what is due.
    let Some(worker_emulator) = Emulator::start().await else { return };
    let mut worker = worker_emulator.function(&t, "worker");
    let schedule = json!({"version": "0", "id": "e1", "detail-type": "Scheduled Event", "source": "aws.events",
                          "account": "123456789012", "time": "2026-12-07T00:00:00Z", "region": "eu-west-1",
                          "resources": [], "detail": {}});
    let summary = worker_emulator.invoke(&schedule).await;
    assert_eq!((summary["claimed"].as_u64(), summary["sent"].as_u64()), (Some(1), Some(1)), "{summary}");
    assert_eq!(t.notification(&key, &id).await["status"], "sent");
    // An SQS batch is a wake-up: it drains too, and answers SQS's partial-batch shape.
    let second = t.post(&key, sms("woken by SQS")).await.body["id"].as_str().expect("id").to_owned();
    let sqs = json!({"Records": [{"messageId": "m-1", "receiptHandle": "h", "body": "wake", "attributes": {},
                                  "messageAttributes": {}, "md5OfBody": "x", "eventSource": "aws:sqs",
                                  "eventSourceARN": "arn:aws:sqs:eu-west-1:123456789012:herald-wake", "awsRegion": "eu-west-1"}]});
    assert_eq!(worker_emulator.invoke(&sqs).await, json!({"batchItemFailures": []}));
    assert_eq!(t.notification(&key, &second).await["status"], "sent");
    worker.kill().await.expect("kill");
    drop(api_emulator);
}
