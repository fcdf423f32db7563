//! The first path through the whole stack: a key created through the key-service API is
//! synced into the filter in the real Envoy and lets a request reach the mock upstream;
//! requests without a valid key get the contract's OpenAI-style errors.

use std::thread::sleep;
use std::time::Duration;

use keygate_e2e::api::{
    assert_error, chat, chat_body, client, create_key, filter_stat, header, until_synced,
    upstream_requests, usage_rows, CHAT,
};
use keygate_e2e::stack::Stack;
use serde_json::{json, Value};

#[test]
fn a_created_key_reaches_the_upstream_and_no_key_gets_401() {
    let stack = Stack::start();

    assert_error(chat(&stack, None), 401, "missing_api_key");

    let key = create_key(&stack, json!({"name": "thin-slice"}));
    let (id, secret) = (key.id, key.secret);
    let res = until_synced(|| chat(&stack, Some(&secret)));
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
    let unknown = keygate_core::keys::secret::from_random(&"A".repeat(42)).unwrap();
    assert_error(chat(&stack, Some(&unknown)), 401, "invalid_api_key");
    let last = if secret.ends_with('x') { 'y' } else { 'x' };
    let typo = format!("{}{last}", &secret[..secret.len() - 1]);
    assert_error(chat(&stack, Some(&typo)), 401, "invalid_api_key");

    assert!(
        !stack.log("envoy").contains(&secret),
        "the secret appeared in Envoy's log"
    );

    // Envoy's stats count every decision; the gauges follow each VM's snapshot (Envoy
    // flushes them to the admin view on its own schedule, so wait for it).
    let stat = |name: &str| filter_stat(&stack, name).unwrap_or_else(|| panic!("no stat {name}"));
    // Request counters reach Envoy on the VMs' next tick.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let flushed = || {
        stat("keygate.keys_loaded") == 1
            && stat("keygate.requests_allowed") >= 1
            && stat("keygate.requests_denied.missing_api_key") == 1
            && stat("keygate.requests_denied.invalid_api_key") >= 2
    };
    while !flushed() && std::time::Instant::now() < deadline {
        sleep(Duration::from_millis(100));
    }
    assert!(stat("keygate.requests_allowed") >= 1);
    assert_eq!(stat("keygate.requests_denied.missing_api_key"), 1);
    // Two here, plus any while the new key was still syncing.
    assert!(stat("keygate.requests_denied.invalid_api_key") >= 2);
    assert_eq!(stat("keygate.requests_denied.key_disabled"), 0);
    assert_eq!(stat("keygate.keys_loaded"), 1);
    assert_eq!(stat("keygate.snapshot_version"), 1);
    assert_eq!(stat("keygate.sync_failures"), 0);
}

#[test]
fn every_client_style_is_accepted_and_stripped() {
    let stack = Stack::start();
    let key = create_key(&stack, json!({"name": "styles"}));
    let (id, secret) = (key.id, key.secret);
    until_synced(|| chat(&stack, Some(&secret)));

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
        // The filter's own, once: the client's is gone, not kept beside it.
        let ids = seen["headers"].as_array().map_or(0, |headers| {
            let named = |pair: &&Value| pair[0] == "x-keygate-key-id";
            headers.iter().filter(named).count()
        });
        assert_eq!(ids, 1, "{seen}");
    }
}

#[test]
fn a_filter_the_key_service_refuses_answers_503_for_well_formed_keys() {
    let stack = Stack::builder()
        .envoy_filter_token("not-the-filter-token")
        .start();
    let secret = create_key(&stack, json!({"name": "unsynced"})).secret;
    // Give the filter time for several sync attempts, all refused.
    sleep(Duration::from_millis(1500));
    assert_error(chat(&stack, Some(&secret)), 503, "key_service_unavailable");
    assert_error(chat(&stack, None), 401, "missing_api_key");
    assert_error(chat(&stack, Some("sk-made-up")), 401, "invalid_api_key");
}

/// During a filter-token rotation the key-service takes the next token too: an Envoy
/// already moved to it syncs and reports usage with no failed call.
#[test]
fn an_envoy_with_the_next_filter_token_syncs_during_a_rotation() {
    let next = "next-filter-token-0123456789";
    let stack = Stack::builder()
        .key_service_env("KEYGATE_FILTER_TOKEN_NEXT", next)
        .envoy_filter_token(next)
        .start();
    let key = create_key(&stack, json!({"name": "rotation"}));
    assert_eq!(
        until_synced(|| chat(&stack, Some(&key.secret))).status(),
        200
    );
    assert_eq!(usage_rows(&stack, &key, 1).len(), 1);
    assert!(!stack.log("envoy").contains("401"), "a sync was refused");
}

#[test]
fn keys_keep_working_from_the_last_snapshot_while_the_key_service_is_down() {
    let mut stack = Stack::start();
    let key = create_key(&stack, json!({"name": "survivor"}));
    assert_eq!(
        until_synced(|| chat(&stack, Some(&key.secret))).status(),
        200
    );

    stack.kill("key-service");
    // Several failed sync attempts later, the last snapshot still answers.
    sleep(Duration::from_millis(2500));
    assert_eq!(chat(&stack, Some(&key.secret)).status(), 200);
    assert_error(chat(&stack, None), 401, "missing_api_key");
    let unknown = keygate_core::keys::secret::from_random(&"B".repeat(42)).unwrap();
    assert_error(chat(&stack, Some(&unknown)), 401, "invalid_api_key");
}

#[test]
fn past_the_maximum_snapshot_age_the_filter_fails_closed() {
    let mut stack = Stack::builder()
        .filter_setting("max_snapshot_age_ms", "3000")
        .start();
    let key = create_key(&stack, json!({"name": "stale"}));
    assert_eq!(
        until_synced(|| chat(&stack, Some(&key.secret))).status(),
        200
    );
    // Confirmed every second while the key-service answers (304s count).
    sleep(Duration::from_millis(3500));
    assert_eq!(chat(&stack, Some(&key.secret)).status(), 200);

    stack.kill("key-service");
    sleep(Duration::from_millis(3500));
    assert_error(
        chat(&stack, Some(&key.secret)),
        503,
        "key_service_unavailable",
    );
    // One warning per VM (Envoy's main thread and two workers) when failures start, not
    // one per attempt (which would be about a dozen by now).
    let warnings = stack.log("envoy").matches("snapshot sync failing").count();
    assert!((1..=3).contains(&warnings), "{warnings} sync warnings");
}

#[test]
fn identity_headers_can_be_renamed_or_left_out() {
    let stack = Stack::builder()
        .filter_setting(
            "identity_headers",
            r#"{"key_name": null, "account": "x-tenant"}"#,
        )
        .start();
    let key = create_key(&stack, json!({"name": "renamed"}));
    assert_eq!(
        until_synced(|| chat(&stack, Some(&key.secret))).status(),
        200
    );
    // A client cannot set the renamed header either.
    let res = client()
        .post(format!("{}{CHAT}", stack.envoy_url))
        .bearer_auth(&key.secret)
        .header("x-tenant", "forged-by-client")
        .header("x-keygate-key-name", "forged-by-client")
        .json(&chat_body())
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen = upstream_requests(&stack).pop().unwrap();
    assert_eq!(header(&seen, "x-tenant"), Some("default"));
    assert_eq!(header(&seen, "x-keygate-account"), None);
    assert_eq!(header(&seen, "x-keygate-key-name"), None);
    assert_eq!(header(&seen, "x-keygate-key-id"), Some(key.id.as_str()));
}
