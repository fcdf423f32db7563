//! A key's IP allowlist, enforced by the filter in the real Envoy against the connection's
//! peer address (these tests connect from 127.0.0.1).

use keygate_e2e::api::{assert_error, chat, chat_request, create_key, until_synced};
use keygate_e2e::stack::Stack;
use serde_json::json;

#[test]
fn a_key_is_admitted_only_from_its_allowlisted_sources() {
    let stack = Stack::start();
    let loopback = create_key(
        &stack,
        json!({"name": "loopback-only", "ip_allowlist": ["127.0.0.0/8", "2001:db8::/32"]}),
    );
    let elsewhere = create_key(
        &stack,
        json!({"name": "lan-only", "ip_allowlist": ["10.0.0.0/8"]}),
    );
    let open = create_key(&stack, json!({"name": "anywhere"}));

    let res = until_synced(|| chat(&stack, Some(&loopback.secret)));
    assert_eq!(res.status(), 200);
    assert_eq!(chat(&stack, Some(&open.secret)).status(), 200);
    assert_error(chat(&stack, Some(&elsewhere.secret)), 403, "ip_not_allowed");

    // With no trusted hops configured, a client's X-Forwarded-For claims nothing.
    let forged = chat_request(&stack, Some(&elsewhere.secret))
        .header("x-forwarded-for", "10.1.2.3")
        .send()
        .unwrap();
    assert_error(forged, 403, "ip_not_allowed");
}
