//! A key's own state, as the filter enforces it from the snapshot: expiry (by the
//! filter's clock), quota and account balance, and changes made through the API.

use std::thread::sleep;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keygate_e2e::api::{admin, assert_error, chat, create_key, until_status, until_synced};
use keygate_e2e::stack::Stack;
use reqwest::Method;
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[test]
fn a_key_expires_on_time_by_the_filters_clock_without_a_new_snapshot() {
    let stack = Stack::start();
    // Whole seconds, enough from now for the stack to sync first, so the test knows
    // exactly when the key turns.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry = now + 8;
    let expires_at = OffsetDateTime::from_unix_timestamp(expiry as i64)
        .unwrap()
        .format(&Rfc3339)
        .unwrap();
    let key = create_key(&stack, json!({"name": "brief", "expires_at": expires_at}));
    let past = create_key(
        &stack,
        json!({"name": "past", "expires_at": "2001-01-01T00:00:00Z"}),
    );
    assert_eq!(
        until_synced(|| chat(&stack, Some(&key.secret))).status(),
        200
    );
    assert_error(chat(&stack, Some(&past.secret)), 401, "key_expired");

    let turn = UNIX_EPOCH + Duration::from_secs(expiry);
    let wait = turn.duration_since(SystemTime::now()).unwrap_or_default();
    assert!(
        wait > Duration::ZERO,
        "the stack took too long to start for this test"
    );
    sleep(wait + Duration::from_millis(100));
    assert_error(chat(&stack, Some(&key.secret)), 401, "key_expired");
}

#[test]
fn a_key_without_quota_left_gets_429_insufficient_quota() {
    let stack = Stack::start();
    // Keys with a limit may only call priced models.
    keygate_e2e::api::price_model(&stack, "gpt-4o-mini", 1, 1);
    let spent = create_key(
        &stack,
        json!({"name": "spent", "unlimited_quota": false, "quota": 0}),
    );
    let funded = create_key(
        &stack,
        json!({"name": "funded", "unlimited_quota": false, "quota": 1000}),
    );
    assert_eq!(
        until_synced(|| chat(&stack, Some(&funded.secret))).status(),
        200
    );
    assert_error(chat(&stack, Some(&spent.secret)), 429, "insufficient_quota");
}

#[test]
fn disable_enable_rotate_and_delete_through_the_api_reach_the_filter() {
    let stack = Stack::start();
    let key = create_key(&stack, json!({"name": "lifecycle"}));
    let path = format!("/api/v1/keys/{}", key.id);
    assert_eq!(
        until_synced(|| chat(&stack, Some(&key.secret))).status(),
        200
    );

    let (status, _) = admin(
        &stack,
        Method::PATCH,
        &path,
        Some(json!({"enabled": false})),
    );
    assert_eq!(status, 200);
    let res = until_status(401, || chat(&stack, Some(&key.secret)));
    assert_error(res, 401, "key_disabled");

    admin(&stack, Method::PATCH, &path, Some(json!({"enabled": true})));
    assert_eq!(
        until_status(200, || chat(&stack, Some(&key.secret))).status(),
        200
    );

    let (status, rotated) = admin(&stack, Method::POST, &format!("{path}/rotate"), None);
    assert_eq!(status, 200);
    let new_secret = rotated["key"].as_str().unwrap().to_string();
    assert_eq!(
        until_status(200, || chat(&stack, Some(&new_secret))).status(),
        200
    );
    assert_error(chat(&stack, Some(&key.secret)), 401, "invalid_api_key");

    let (status, _) = admin(&stack, Method::DELETE, &path, None);
    assert_eq!(status, 204);
    let res = until_status(401, || chat(&stack, Some(&new_secret)));
    assert_error(res, 401, "invalid_api_key");
}

#[test]
fn a_rotation_with_a_grace_period_keeps_both_secrets_working() {
    let stack = Stack::start();
    let key = create_key(&stack, json!({"name": "graceful"}));
    assert_eq!(
        until_synced(|| chat(&stack, Some(&key.secret))).status(),
        200
    );
    let path = format!("/api/v1/keys/{}/rotate", key.id);
    let (status, rotated) = admin(
        &stack,
        Method::POST,
        &path,
        Some(json!({"grace_period": "1h"})),
    );
    assert_eq!(status, 200);
    let new_secret = rotated["key"].as_str().unwrap().to_string();
    assert_eq!(
        until_synced(|| chat(&stack, Some(&new_secret))).status(),
        200
    );
    assert_eq!(
        chat(&stack, Some(&key.secret)).status(),
        200,
        "old secret in its grace"
    );
    // A rotation without one stops the secret it replaces at once.
    let (_, again) = admin(&stack, Method::POST, &path, None);
    let newest = again["key"].as_str().unwrap().to_string();
    assert_eq!(until_synced(|| chat(&stack, Some(&newest))).status(), 200);
    let res = until_status(401, || chat(&stack, Some(&new_secret)));
    assert_error(res, 401, "invalid_api_key");
    assert_eq!(
        chat(&stack, Some(&key.secret)).status(),
        200,
        "first grace still runs"
    );
    // Deleting the key ends every secret it had.
    let (status, _) = admin(
        &stack,
        Method::DELETE,
        &format!("/api/v1/keys/{}", key.id),
        None,
    );
    assert_eq!(status, 204);
    let res = until_status(401, || chat(&stack, Some(&key.secret)));
    assert_error(res, 401, "invalid_api_key");
    assert_error(chat(&stack, Some(&newest)), 401, "invalid_api_key");
}
