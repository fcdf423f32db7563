//! The native build is loaded by the installed Envoy with the ABI it expects: Envoy says
//! the module's ABI version matched (a mismatch would only be a warning, so this is
//! checked here), and a key synced through the module's own root lets a call through.
//! A panic in the module (a bug) is contained at the hook's edge. Runs on every `make
//! test`, whichever build the rest of the suite runs on.

use std::time::{Duration, Instant};

use keygate_e2e::api::{
    assert_error, chat, chat_request, create_key, filter_prometheus_stat, filter_stat,
    metered_body, price_model, until_synced, until_usage_delivered, usage_rows,
};
use keygate_e2e::stack::{filter_panic_probe, Build, Stack};
use serde_json::json;

#[test]
fn the_installed_envoy_loads_the_native_module_with_a_matching_abi() {
    let stack = Stack::builder().build(Build::Native).start();
    let log = stack.log("envoy");
    assert!(
        log.contains("Dynamic module ABI version v0.2.0 matched."),
        "Envoy did not confirm the module's ABI version:\n{log}"
    );
    assert!(
        !log.contains("is deprecated"),
        "ABI version mismatch:\n{log}"
    );

    assert_error(chat(&stack, None), 401, "missing_api_key");
    let key = create_key(&stack, json!({"name": "native"}));
    let res = until_synced(|| chat(&stack, Some(&key.secret)));
    assert_eq!(res.status(), 200);
    assert!(
        !stack.log("envoy").contains(&key.secret),
        "the secret appeared in Envoy's log"
    );
}

/// Dashboards read `/stats/prometheus`: both builds' stats have the same names there
/// (`keygate_requests_allowed`). Envoy strips Wasm's stat namespace by itself, and a
/// dynamic module's only with the runtime flag `envoy/native.yaml` sets; without it the
/// native names would be `envoy_dynamicmodulescustom_keygate_...`.
#[test]
fn both_builds_have_the_same_prometheus_names() {
    for build in [Build::Wasm, Build::Native] {
        let stack = Stack::builder().build(build).start();
        let key = create_key(&stack, json!({"name": "prometheus"}));
        let res = until_synced(|| chat(&stack, Some(&key.secret)));
        assert_eq!(res.status(), 200);
        // Wasm adds its request counters on its tick.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while filter_stat(&stack, "keygate.requests_allowed").unwrap_or(0) == 0 {
            assert!(std::time::Instant::now() < deadline, "{build:?}: no count");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let allowed = filter_prometheus_stat(&stack, "keygate.requests_allowed");
        assert!(
            allowed.is_some_and(|n| n >= 1),
            "{build:?}: no keygate_requests_allowed in /stats/prometheus ({allowed:?})"
        );
        assert_eq!(
            filter_prometheus_stat(&stack, "keygate.keys_loaded"),
            Some(1),
            "{build:?}: keygate.keys_loaded"
        );
    }
}

/// A panic in the native module would abort Envoy with every request it holds: each hook
/// contains one instead. The `panic-probe` build (`make build-panic-probe`) panics on
/// demand: in the hook an `x-panic-probe` header names, and (`KEYGATE_PANIC_PROBE`) on
/// its root's first answer, the one that would leave its sync waiting forever. Envoy
/// lives on; the root starts over and syncs; a request not yet passed on is refused with
/// `internal_error` and billed nothing; one already upstream goes through and is billed;
/// a request whose stream could not be made (`next_stream`) is refused.
#[test]
fn a_panic_in_the_native_module_is_contained_and_envoy_lives_on() {
    let stack = Stack::builder()
        .native_module(filter_panic_probe())
        .envoy_env("KEYGATE_PANIC_PROBE", "answered")
        .start();
    price_model(&stack, "gpt-4o-mini", 1_000_000, 1_000_000);
    let key = create_key(
        &stack,
        json!({"name": "panics", "unlimited_quota": false, "quota": 1_000_000}),
    );
    let send = |probe: Option<&str>| {
        let request = chat_request(&stack, Some(&key.secret)).json(&metered_body());
        match probe {
            Some(hook) => request.header("x-panic-probe", hook),
            None => request,
        }
        .send()
        .expect("chat request")
    };
    // The root's first answer panicked: it started over, under its lease, and synced.
    let deadline = Instant::now() + Duration::from_secs(30);
    while send(None).status() != 200 {
        assert!(
            Instant::now() < deadline,
            "the key never synced after the root's panic:\n{}",
            stack.log("envoy")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = stack.log("envoy");
    assert!(log.contains("panic-probe: answered"), "{log}");
    assert!(log.contains("the root starts over"), "{log}");

    assert_error(send(Some("request_headers")), 500, "internal_error");
    let passed = send(Some("response_headers"));
    assert_eq!(passed.status(), 200);
    // Envoy is still the same process (the stack never restarts it by itself).
    assert_eq!(send(None).status(), 200);
    assert_eq!(
        filter_stat(&stack, "keygate.requests_denied.internal_error"),
        Some(1)
    );

    // A stream whose making panicked (Envoy has none of ours for it) is refused, not
    // let through unchecked: Envoy 1.40 answers it 500 itself (no body), and it is not
    // billed (below).
    assert_eq!(send(Some("next_stream")).status(), 200);
    assert_eq!(send(None).status(), 500);
    assert_eq!(send(None).status(), 200);
    let log = stack.log("envoy");
    for hook in ["request_headers", "response_headers", "new_stream"] {
        assert!(log.contains(&format!("panic-probe: {hook}")), "{log}");
    }

    // Billed: the five calls that reached the upstream, not the two refused.
    until_usage_delivered(&stack);
    let rows = usage_rows(&stack, &key, 5);
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(
        !stack.log("envoy").contains(&key.secret),
        "the secret appeared in Envoy's log"
    );
}
