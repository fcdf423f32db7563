//! The native build is loaded by the installed Envoy with the ABI it expects: Envoy says
//! the module's ABI version matched (a mismatch would only be a warning, so this is
//! checked here), and a key synced through the module's own root lets a call through.
//! Runs on every `make test`, whichever build the rest of the suite runs on.

use keygate_e2e::api::{assert_error, chat, create_key, until_synced};
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
