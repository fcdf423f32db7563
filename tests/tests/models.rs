//! Model restrictions in the real Envoy: the model comes from the path where the provider
//! puts it there, otherwise from the JSON body, which is read only for keys that need it.

use keygate_e2e::api::{
    assert_error, chat, chat_request, client, create_key, header, until_synced, upstream_requests,
    CHAT,
};
use keygate_e2e::stack::Stack;
use serde_json::json;

#[test]
fn a_key_restricted_to_models_passes_only_those() {
    let stack = Stack::start();
    let mini = create_key(
        &stack,
        json!({"name": "mini", "models": ["gpt-4o-mini", "gemini-flash"]}),
    );
    let open = create_key(&stack, json!({"name": "open"}));
    let res = until_synced(|| chat(&stack, Some(&mini.secret)));
    assert_eq!(res.status(), 200, "chat_body() asks for gpt-4o-mini");
    let seen = upstream_requests(&stack).pop().unwrap();
    assert_eq!(header(&seen, "x-keygate-model"), Some("gpt-4o-mini"));
    assert!(
        seen["body"].as_str().unwrap().contains("say hi to me"),
        "body reaches upstream whole"
    );

    let other = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    let url = format!("{}{CHAT}", stack.envoy_url);
    let send = |secret: &str, body: &serde_json::Value| {
        client()
            .post(&url)
            .bearer_auth(secret)
            .json(body)
            .send()
            .unwrap()
    };
    let before = upstream_requests(&stack).len();
    assert_error(send(&mini.secret, &other), 403, "model_not_allowed");
    assert_eq!(
        upstream_requests(&stack).len(),
        before,
        "a refused request reached upstream"
    );
    assert_eq!(send(&open.secret, &other).status(), 200);
    assert_error(
        send(&mini.secret, &json!({"messages": []})),
        403,
        "model_not_allowed",
    );

    // Gemini names the model in the path: no body needed.
    let gemini = |model: &str| {
        client()
            .post(format!(
                "{}/v1beta/models/{model}:generateContent",
                stack.envoy_url
            ))
            .header("x-goog-api-key", &mini.secret)
            .body("not even json")
            .send()
            .unwrap()
    };
    assert_ne!(gemini("gemini-flash").status(), 403);
    assert_error(gemini("gemini-pro"), 403, "model_not_allowed");
}

#[test]
fn a_body_read_for_the_model_must_be_json_and_within_the_limit() {
    let stack = Stack::start();
    let mini = create_key(&stack, json!({"name": "mini", "models": ["gpt-4o-mini"]}));
    let open = create_key(&stack, json!({"name": "open"}));
    until_synced(|| chat(&stack, Some(&mini.secret)));

    let raw = |secret: &str, body: Vec<u8>| {
        client()
            .post(format!("{}{CHAT}", stack.envoy_url))
            .bearer_auth(secret)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap()
    };
    assert_error(
        raw(&mini.secret, b"{not json".to_vec()),
        400,
        "invalid_request_body",
    );
    // A key with no model rule never has its body read: the upstream judges it.
    assert_eq!(raw(&open.secret, b"{not json".to_vec()).status(), 400);
    let seen = upstream_requests(&stack).pop().unwrap();
    assert_eq!(seen["body"], "{not json");

    // Past the max_body_bytes of envoy/envoy.yaml (8 MiB): keygate's JSON 413.
    let mut big = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":""#.to_vec();
    big.resize(big.len() + (8 << 20), b'a');
    big.extend_from_slice(br#""}]}"#);
    assert_error(raw(&mini.secret, big), 413, "request_too_large");
    assert_eq!(
        chat_request(&stack, Some(&mini.secret))
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn group_and_account_changes_through_the_api_reach_the_filter() {
    let stack = Stack::start();
    // Keys of an account with a balance may only call priced models.
    keygate_e2e::api::price_model(&stack, "gpt-4o-mini", 1, 1);
    keygate_e2e::api::price_model(&stack, "gpt-4o", 1, 1);
    let (status, _) = keygate_e2e::api::admin(
        &stack,
        reqwest::Method::PUT,
        "/api/v1/groups/cheap",
        Some(json!({"models": ["gpt-4o-mini"]})),
    );
    assert_eq!(status, 201);
    let (status, _) = keygate_e2e::api::admin(
        &stack,
        reqwest::Method::POST,
        "/api/v1/accounts",
        Some(json!({"name": "team", "balance": 100})),
    );
    assert_eq!(status, 201);
    let key = create_key(
        &stack,
        json!({"name": "grouped", "group": "cheap", "account": "team"}),
    );
    let big = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    let send = |body: &serde_json::Value| {
        client()
            .post(format!("{}{CHAT}", stack.envoy_url))
            .bearer_auth(&key.secret)
            .json(body)
            .send()
            .unwrap()
    };
    assert_eq!(
        until_synced(|| chat(&stack, Some(&key.secret))).status(),
        200
    );
    assert_error(send(&big), 403, "model_not_allowed");

    // The group opens up: the filter learns it with its next delta.
    keygate_e2e::api::admin(
        &stack,
        reqwest::Method::PUT,
        "/api/v1/groups/cheap",
        Some(json!({"models": ["*"]})),
    );
    let res = keygate_e2e::api::until_status(200, || send(&big));
    assert_eq!(res.status(), 200);

    // The account runs dry.
    keygate_e2e::api::admin(
        &stack,
        reqwest::Method::PATCH,
        "/api/v1/accounts/team",
        Some(json!({"balance": 0})),
    );
    let res = keygate_e2e::api::until_status(429, || send(&big));
    assert_error(res, 429, "insufficient_quota");
}
