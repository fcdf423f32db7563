//! A restarted Envoy has no snapshot until it loads one: it holds requests for a while
//! (`first_snapshot_wait_ms`) rather than refusing them, then decides.

use std::thread;
use std::time::Duration;

use keygate_e2e::api::{assert_error, client, create_key, until_synced, CHAT};
use keygate_e2e::stack::Stack;
use serde_json::json;

fn chat(envoy_url: &str, secret: &str) -> reqwest::blocking::Response {
    client()
        .post(format!("{envoy_url}{CHAT}"))
        .bearer_auth(secret)
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .expect("chat call")
}

#[test]
fn a_restarted_envoy_holds_requests_until_its_first_snapshot_then_decides() {
    let mut stack = Stack::builder().concurrency(2).start();
    let key = create_key(&stack, json!({"name": "restart"}));
    assert_eq!(
        until_synced(|| chat(&stack.envoy_url, &key.secret)).status(),
        200
    );

    // Envoy restarts while the key-service is away: no snapshot anywhere. The key-service
    // is back 700 ms later; the requests made meanwhile wait for the snapshot and pass.
    stack.kill("key-service");
    stack.restart_envoy();
    let envoy_url = stack.envoy_url.clone();
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let (url, secret) = (envoy_url.clone(), key.secret.clone());
            thread::spawn(move || chat(&url, &secret))
        })
        .collect();
    thread::sleep(Duration::from_millis(700));
    stack.restart_key_service();
    for call in waiting {
        let res = call.join().expect("call");
        assert_eq!(res.status(), 200, "{:?}", res.text());
    }
    // Without a key-service the hold ends, with the same 503 as before.
    stack.kill("key-service");
    stack.restart_envoy();
    let res = chat(&stack.envoy_url, &key.secret);
    assert_error(res, 503, "key_service_unavailable");
}
