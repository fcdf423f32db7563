//! The shipped multi-provider config (`envoy/multi-provider.yaml`) in the real Envoy, its
//! providers pointed at the mock upstream: routing by path and by the model keygate reads,
//! each provider's own credential injected by Envoy, and the client's key never passed on.

use keygate_e2e::api::{assert_error, client, create_key, header, until_synced, upstream_requests};
use keygate_e2e::stack::{Stack, PROVIDER_CREDENTIALS};
use reqwest::blocking::Response;
use serde_json::{json, Value};

fn credential(provider: &str) -> &'static str {
    PROVIDER_CREDENTIALS
        .iter()
        .find(|(name, _)| *name == provider)
        .map(|(_, credential)| *credential)
        .unwrap()
}

fn send(stack: &Stack, path: &str, key_header: (&str, String), body: Value) -> Response {
    client()
        .post(format!("{}{path}", stack.envoy_url))
        .header(key_header.0, key_header.1)
        .json(&body)
        .send()
        .expect("request through Envoy")
}

/// The request the mock received last, which must carry no trace of the client's key.
fn last_upstream_request(stack: &Stack, secret: &str) -> Value {
    let request = upstream_requests(stack)
        .pop()
        .expect("a request reached the upstream");
    assert!(
        !request["headers"].to_string().contains(secret),
        "the client's key went upstream: {request}"
    );
    request
}

#[test]
fn each_provider_gets_its_routes_its_models_and_its_own_credential() {
    let stack = Stack::builder().multi_provider().start();
    let key = create_key(&stack, json!({"name": "multi"}));
    let bearer = || ("authorization", format!("Bearer {}", key.secret));
    let chat =
        |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});

    // OpenAI by path.
    let res = until_synced(|| {
        send(
            &stack,
            "/v1/chat/completions",
            bearer(),
            chat("gpt-4o-mini"),
        )
    });
    assert_eq!(res.status(), 200);
    let request = last_upstream_request(&stack, &key.secret);
    assert_eq!(header(&request, "host"), Some("api.openai.com"));
    assert_eq!(
        header(&request, "authorization"),
        Some(credential("openai"))
    );
    assert_eq!(header(&request, "x-api-key"), None);

    // A claude-* model on an OpenAI-style path goes to Anthropic, by the model keygate read
    // from the body (x-keygate-model, with the route picked again after the filter).
    let res = send(
        &stack,
        "/v1/chat/completions",
        bearer(),
        chat("claude-sonnet-4"),
    );
    assert_eq!(res.status(), 200);
    let request = last_upstream_request(&stack, &key.secret);
    assert_eq!(header(&request, "host"), Some("api.anthropic.com"));
    assert_eq!(header(&request, "x-keygate-model"), Some("claude-sonnet-4"));
    assert_eq!(header(&request, "x-api-key"), Some(credential("anthropic")));
    assert_eq!(header(&request, "authorization"), None);

    // Anthropic by path, the key sent Anthropic-style.
    let messages = json!({"model": "claude-sonnet-4", "max_tokens": 16,
                          "messages": [{"role": "user", "content": "hi"}]});
    let res = send(
        &stack,
        "/v1/messages",
        ("x-api-key", key.secret.clone()),
        messages,
    );
    assert_eq!(res.status(), 200);
    let request = last_upstream_request(&stack, &key.secret);
    assert_eq!(header(&request, "host"), Some("api.anthropic.com"));
    assert_eq!(header(&request, "x-api-key"), Some(credential("anthropic")));

    // Gemini by path, the key sent Gemini-style.
    let contents = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
    let path = "/v1beta/models/gemini-2.0-flash:generateContent";
    let res = send(
        &stack,
        path,
        ("x-goog-api-key", key.secret.clone()),
        contents,
    );
    assert_eq!(res.status(), 200);
    let request = last_upstream_request(&stack, &key.secret);
    assert_eq!(
        header(&request, "host"),
        Some("generativelanguage.googleapis.com")
    );
    assert_eq!(
        header(&request, "x-goog-api-key"),
        Some(credential("gemini"))
    );
    assert_eq!(
        header(&request, "x-keygate-model"),
        Some("gemini-2.0-flash")
    );

    // Refusals still come from keygate, before any provider is chosen.
    let before = upstream_requests(&stack).len();
    let res = send(
        &stack,
        "/v1/messages",
        ("x-api-key", "sk-wrong".into()),
        json!({}),
    );
    assert_error(res, 401, "invalid_api_key");
    assert_eq!(upstream_requests(&stack).len(), before);
}
