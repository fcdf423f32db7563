//! Calls the end-to-end tests make: the key-service's management API, LLM requests
//! through Envoy, and the mock upstream's request log.

use std::thread::sleep;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{json, Value};

use crate::stack::Stack;

pub const CHAT: &str = "/v1/chat/completions";

/// Output tokens a metered call asks for (`metered_body`).
pub const METERED_MAX_TOKENS: u64 = 100;

/// A chat call to `gpt-4o-mini` that, at one credit per token, may cost at most
/// `metered_estimate()` credits and costs exactly `metered_cost()` (the mock upstream
/// answers with `max_tokens` output tokens and one input token per word).
pub fn metered_body() -> Value {
    json!({"model": "gpt-4o-mini", "max_tokens": METERED_MAX_TOKENS,
        "messages": [{"role": "user", "content": "two words"}]})
}

/// The filter's estimate of `metered_body()` at one credit per token: a token per 4 body
/// bytes in, its `max_tokens` out.
pub fn metered_estimate() -> u64 {
    (metered_body().to_string().len() as u64).div_ceil(4) + METERED_MAX_TOKENS
}

pub fn metered_cost() -> u64 {
    2 + METERED_MAX_TOKENS
}

/// Sends `metered_body()` through the Envoy listening at `url`; the upstream answers
/// after `delay_ms`.
pub fn send_metered(url: &str, secret: &str, delay_ms: u64) -> Response {
    client()
        .post(format!("{url}{CHAT}"))
        .bearer_auth(secret)
        .header("x-mock-delay-ms", delay_ms.to_string())
        .json(&metered_body())
        .send()
        .expect("chat call")
}

/// What the key-service billed the key (its first 100 usage rows): credits and calls.
pub fn billed(stack: &Stack, key_id: &str) -> (u64, u64) {
    let (status, page) = admin(
        stack,
        reqwest::Method::GET,
        &format!("/api/v1/usage?key_id={key_id}&per_page=100"),
        None,
    );
    assert_eq!(status, 200, "{page}");
    let rows = page["usage"].as_array().cloned().unwrap_or_default();
    let cost = rows.iter().filter_map(|r| r["cost"].as_u64()).sum();
    (cost, rows.len() as u64)
}

pub fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// A key as the create call returned it: its id and its secret.
pub struct CreatedKey {
    pub id: String,
    pub secret: String,
}

/// Creates one key through the management API with the given fields.
pub fn create_key(stack: &Stack, fields: Value) -> CreatedKey {
    let res = client()
        .post(format!("{}/api/v1/keys", stack.key_service_url))
        .bearer_auth(&stack.admin_token)
        .json(&fields)
        .send()
        .expect("create key");
    let status = res.status();
    let body: Value = res.json().expect("create key: JSON body");
    assert_eq!(status, 201, "create key: {body}");
    let key = &body["keys"][0];
    CreatedKey {
        id: key["id"].as_str().expect("key id").to_string(),
        secret: key["key"].as_str().expect("key secret").to_string(),
    }
}

pub fn chat_body() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "say hi to me"}]})
}

/// A chat completion request to Envoy, with the secret as a bearer token if given.
pub fn chat_request(stack: &Stack, secret: Option<&str>) -> RequestBuilder {
    let req = client()
        .post(format!("{}{CHAT}", stack.envoy_url))
        .json(&chat_body());
    match secret {
        Some(secret) => req.bearer_auth(secret),
        None => req,
    }
}

pub fn chat(stack: &Stack, secret: Option<&str>) -> Response {
    chat_request(stack, secret).send().expect("chat request")
}

/// Sends the request until the filter stops answering as if the key were unknown (the
/// snapshot syncs on an interval), at most 15 s, and returns the last response.
pub fn until_synced(mut send: impl FnMut() -> Response) -> Response {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let res = send();
        let status = res.status().as_u16();
        if (status != 401 && status != 503) || Instant::now() > deadline {
            return res;
        }
        sleep(Duration::from_millis(100));
    }
}

/// Asserts an OpenAI-style error with this status and code.
pub fn assert_error(res: Response, status: u16, code: &str) {
    assert_eq!(res.status(), status);
    let content_type = res.headers().get("content-type").cloned();
    assert_eq!(
        content_type.as_ref().and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let body: Value = res.json().expect("error body is JSON");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["error"]["type"].is_string(), "{body}");
}

/// Every request the mock upstream has received, oldest first.
pub fn upstream_requests(stack: &Stack) -> Vec<Value> {
    let body: Value = client()
        .get(format!("{}/mock/requests", stack.upstream_url))
        .send()
        .and_then(Response::json)
        .expect("mock request log");
    body["requests"].as_array().cloned().unwrap_or_default()
}

/// A header of a logged upstream request, by case-insensitive name.
pub fn header<'a>(request: &'a Value, name: &str) -> Option<&'a str> {
    request["headers"]
        .as_array()?
        .iter()
        .find(|pair| {
            pair[0]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .and_then(|pair| pair[1].as_str())
}

/// Envoy's admin stats whose names match the regular expression `filter`, as text.
pub fn envoy_stats(stack: &Stack, filter: &str) -> String {
    envoy_stats_at(&stack.envoy_admin_url, filter)
}

/// The stats of the Envoy whose admin is at `admin_url` (a second Envoy of a stack).
pub fn envoy_stats_at(admin_url: &str, filter: &str) -> String {
    client()
        .get(format!("{admin_url}/stats?filter={filter}"))
        .send()
        .and_then(Response::text)
        .expect("envoy stats")
}

/// One of the filter's stats from Envoy's admin (`wasmcustom.<name>`, or
/// `dynamicmodulescustom.<name>` for the native build), if defined.
pub fn filter_stat(stack: &Stack, name: &str) -> Option<u64> {
    filter_stat_of(&stack.envoy_admin_url, stack.build, name)
}

/// As [`filter_stat`], from the Envoy whose admin is at `admin_url` (running the build
/// `KEYGATE_E2E_FILTER` names).
pub fn filter_stat_at(admin_url: &str, name: &str) -> Option<u64> {
    filter_stat_of(admin_url, crate::stack::filter_build(), name)
}

fn filter_stat_of(admin_url: &str, build: crate::stack::Build, name: &str) -> Option<u64> {
    let stat_prefix = build.stat_prefix();
    let text = envoy_stats_at(admin_url, &format!("^{}", stat_prefix.replace('.', "\\.")));
    let prefix = format!("{stat_prefix}{name}: ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// One of the filter's stats as Envoy's `/stats/prometheus` lists it: `keygate.keys_loaded`
/// as `keygate_keys_loaded`, with either build.
pub fn filter_prometheus_stat(stack: &Stack, name: &str) -> Option<u64> {
    let text = client()
        .get(format!("{}/stats/prometheus", stack.envoy_admin_url))
        .send()
        .and_then(Response::text)
        .expect("envoy prometheus stats");
    let metric = format!("{}{{}} ", name.replace('.', "_"));
    text.lines()
        .find_map(|l| l.strip_prefix(&metric))
        .and_then(|v| v.trim().parse().ok())
}

/// A management API call with the admin token; returns the status and JSON body (null
/// when empty).
pub fn admin(
    stack: &Stack,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client()
        .request(method, format!("{}{path}", stack.key_service_url))
        .bearer_auth(&stack.admin_token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().expect("management API call");
    let status = res.status().as_u16();
    let text = res.text().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Sends the request until its answer has this status (a change made through the API
/// reaches the filter with its next sync), at most 15 s; returns the last response.
pub fn until_status(status: u16, mut send: impl FnMut() -> Response) -> Response {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let res = send();
        if res.status().as_u16() == status || Instant::now() > deadline {
            return res;
        }
        sleep(Duration::from_millis(50));
    }
}

/// Prices a model (credits per 1,000,000 tokens in and out): keys with a limit may only
/// call priced models.
pub fn price_model(stack: &Stack, model: &str, input: u64, output: u64) {
    let (status, body) = admin(
        stack,
        reqwest::Method::PUT,
        &format!("/api/v1/models/{model}"),
        Some(json!({"input": input, "output": output})),
    );
    assert_eq!(status, 201, "price {model}: {body}");
}

/// The usage log's rows for one key, waiting until there are at least `n` (at most 15 s).
pub fn usage_rows(stack: &Stack, key: &CreatedKey, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, page) = admin(
            stack,
            reqwest::Method::GET,
            &format!("/api/v1/usage?key_id={}&per_page=100", key.id),
            None,
        );
        let rows = page["usage"].as_array().cloned().unwrap_or_default();
        if status == 200 && rows.len() >= n || Instant::now() > deadline {
            assert_eq!(status, 200, "{page}");
            return rows;
        }
        sleep(Duration::from_millis(200));
    }
}

/// Waits (at most 30 s) until the stack's Envoy has delivered every usage record it
/// queued (its `usage_records` and `usage_delivered` stats agree).
pub fn until_usage_delivered(stack: &Stack) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let queued = filter_stat(stack, "keygate.usage_records");
        let delivered = filter_stat(stack, "keygate.usage_delivered");
        if queued.is_some() && queued == delivered {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Envoy's usage never all went out: {queued:?} queued, {delivered:?} delivered"
        );
        sleep(Duration::from_millis(200));
    }
}

/// Calls the key-service has billed for `key_id`, from the usage summary.
pub fn billed_calls(stack: &Stack, key_id: &str) -> u64 {
    let path = format!("/api/v1/usage/summary?key_id={key_id}&bucket=day");
    let (status, summary) = admin(stack, reqwest::Method::GET, &path, None);
    assert_eq!(status, 200, "{summary}");
    let buckets = summary["buckets"].as_array().cloned().unwrap_or_default();
    buckets.iter().filter_map(|b| b["requests"].as_u64()).sum()
}
