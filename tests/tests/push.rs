//! Pushed changes (issue 19): the syncing VM of each Envoy waits at the key-service for
//! the next change (`sync_wait_ms`), so a change reaches Envoy as soon as it commits; the
//! poll every `sync_interval_ms` is only the fallback.

use std::thread::sleep;
use std::time::{Duration, Instant};

use keygate_e2e::api::{admin, chat, create_key, until_synced};
use keygate_e2e::stack::Stack;
use reqwest::Method;
use serde_json::json;

/// Calls until one answers `status` (at most `within`); how long that took.
fn until_status(stack: &Stack, secret: &str, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if chat(stack, Some(secret)).status().as_u16() == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "no {status} within {within:?}: the change was not pushed"
        );
        sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_change_reaches_envoy_as_soon_as_it_commits_not_at_the_next_poll() {
    // Polls 30 s apart: only a pushed change arrives within seconds.
    let stack = Stack::builder()
        .envoy_edit("\"sync_interval_ms\": 1000", "\"sync_interval_ms\": 30000")
        .start();
    let key = create_key(&stack, json!({"name": "pushed"}));
    assert_eq!(
        until_synced(|| chat(&stack, Some(&key.secret))).status(),
        200
    );
    let path = format!("/api/v1/keys/{}", key.id);
    for (enabled, status) in [(false, 401), (true, 200), (false, 401)] {
        // Whatever the moment of the change.
        sleep(Duration::from_millis(300));
        let (code, body) = admin(
            &stack,
            Method::PATCH,
            &path,
            Some(json!({"enabled": enabled})),
        );
        assert_eq!(code, 200, "{body}");
        let took = until_status(&stack, &key.secret, status, Duration::from_secs(5));
        eprintln!("enabled={enabled}: {status} after {took:?}");
    }
}
