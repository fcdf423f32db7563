//! The first path through the whole stack: a key created through the key-service API is
//! synced into the filter in the real Envoy and lets a request reach the mock upstream;
//! requests without a valid key get the contract's OpenAI-style errors.

use std::thread::sleep;
use std::time::{Duration, Instant};

use keygate_e2e::stack::Stack;
use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};

const CHAT: &str = "/v1/chat/completions";

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn chat_body() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "say hi to me"}]})
}

/// Creates a key through the management API and returns `(id, secret)`.
fn create_key(stack: &Stack, name: &str) -> (String, String) {
    let res = client()
        .post(format!("{}/api/v1/keys", stack.key_service_url))
        .bearer_auth(&stack.admin_token)
        .json(&json!({ "name": name }))
        .send()
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().unwrap();
    let key = &body["keys"][0];
    (
        key["id"].as_str().unwrap().to_string(),
        key["key"].as_str().unwrap().to_string(),
    )
}

fn chat(stack: &Stack, auth: Option<&str>) -> Response {
    let mut req = client()
        .post(format!("{}{CHAT}", stack.envoy_url))
        .json(&chat_body());
    if let Some(secret) = auth {
        req = req.bearer_auth(secret);
    }
    req.send().unwrap()
}

/// Sends the request until it stops being refused (the snapshot syncs on an interval).
fn until_admitted(mut send: impl FnMut() -> Response) -> Response {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let res = send();
        if res.status() != 401 && res.status() != 503 || Instant::now() > deadline {
            return res;
        }
        sleep(Duration::from_millis(100));
    }
}

fn assert_error(res: Response, status: u16, code: &str) {
    assert_eq!(res.status(), status);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let body: Value = res.json().unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string());
    assert!(body["error"]["type"].is_string());
}

fn upstream_requests(stack: &Stack) -> Vec<Value> {
    let body: Value = client()
        .get(format!("{}/mock/requests", stack.upstream_url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    body["requests"].as_array().unwrap().clone()
}

fn header<'a>(request: &'a Value, name: &str) -> Option<&'a str> {
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

#[test]
fn a_created_key_reaches_the_upstream_and_no_key_gets_401() {
    let stack = Stack::start();

    assert_error(chat(&stack, None), 401, "missing_api_key");

    let (id, secret) = create_key(&stack, "thin-slice");
    let res = until_admitted(|| chat(&stack, Some(&secret)));
    assert_eq!(res.status(), 200);
    let body: Value = res.json().unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["usage"]["prompt_tokens"], 4);

    // What the upstream saw: our headers, no client credential.
    let requests = upstream_requests(&stack);
    let seen = requests.last().unwrap();
    assert_eq!(seen["path"], CHAT);
    assert_eq!(header(seen, "authorization"), None);
    assert_eq!(header(seen, "x-keygate-key-id"), Some(id.as_str()));
    assert_eq!(header(seen, "x-keygate-key-name"), Some("thin-slice"));
    assert_eq!(header(seen, "x-keygate-group"), Some("default"));
    assert_eq!(header(seen, "x-keygate-account"), Some("default"));
    assert!(
        !seen.to_string().contains(&secret),
        "the secret reached the upstream"
    );

    // A well-formed key the service never issued, and a mistyped one.
    let unknown = keygate::secret::from_random(&"A".repeat(42)).unwrap();
    assert_error(chat(&stack, Some(&unknown)), 401, "invalid_api_key");
    let last = if secret.ends_with('x') { 'y' } else { 'x' };
    let typo = format!("{}{last}", &secret[..secret.len() - 1]);
    assert_error(chat(&stack, Some(&typo)), 401, "invalid_api_key");

    assert!(
        !stack.log("envoy").contains(&secret),
        "the secret appeared in Envoy's log"
    );
}

#[test]
fn every_client_style_is_accepted_and_stripped() {
    let stack = Stack::start();
    let (id, secret) = create_key(&stack, "styles");
    until_admitted(|| chat(&stack, Some(&secret)));

    let c = client();
    let anthropic = json!({"model": "claude-x", "max_tokens": 5,
        "messages": [{"role": "user", "content": "one two"}]});
    let gemini = json!({"contents": [{"parts": [{"text": "one two three"}]}]});
    let cases = [
        (
            c.post(format!("{}/v1/messages", stack.envoy_url))
                .header("x-api-key", &secret)
                .json(&anthropic),
            "/v1/messages",
        ),
        (
            c.post(format!(
                "{}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
                stack.envoy_url
            ))
            .header("api-key", &secret)
            .json(&chat_body()),
            "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        ),
        (
            c.post(format!(
                "{}/v1beta/models/gemini-2.0-flash:generateContent",
                stack.envoy_url
            ))
            .header("x-goog-api-key", &secret)
            .json(&gemini),
            "/v1beta/models/gemini-2.0-flash:generateContent",
        ),
        (
            c.post(format!(
                "{}/v1beta/models/gemini-2.0-flash:generateContent?key={secret}",
                stack.envoy_url
            ))
            .json(&gemini),
            "/v1beta/models/gemini-2.0-flash:generateContent",
        ),
    ];
    for (req, upstream_path) in cases {
        let res = req
            .header("x-keygate-key-id", "forged-by-client")
            .send()
            .unwrap();
        assert_eq!(res.status(), 200, "{upstream_path}");
        let seen = upstream_requests(&stack).pop().unwrap();
        assert_eq!(seen["path"], upstream_path);
        assert!(
            !seen.to_string().contains(&secret),
            "secret leaked upstream: {seen}"
        );
        assert_eq!(header(&seen, "x-keygate-key-id"), Some(id.as_str()));
    }
}

#[test]
fn a_filter_the_key_service_refuses_answers_503_for_well_formed_keys() {
    let stack = Stack::builder()
        .envoy_filter_token("not-the-filter-token")
        .start();
    let (_, secret) = create_key(&stack, "unsynced");
    // Give the filter time for several sync attempts, all refused.
    sleep(Duration::from_millis(1500));
    assert_error(chat(&stack, Some(&secret)), 503, "key_service_unavailable");
    assert_error(chat(&stack, None), 401, "missing_api_key");
    assert_error(chat(&stack, Some("sk-made-up")), 401, "invalid_api_key");
}
