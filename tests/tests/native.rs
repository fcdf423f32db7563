//! The native build is loaded by the installed Envoy with the ABI it expects: Envoy says
//! the module's ABI version matched (a mismatch would only be a warning, so this is
//! checked here), and a key synced through the module's own root lets a call through.
//! Runs on every `make test`, whichever build the rest of the suite runs on.

use keygate_e2e::api::{
    assert_error, chat, create_key, filter_prometheus_stat, filter_stat, until_synced,
};
use keygate_e2e::stack::{Build, Stack};
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
