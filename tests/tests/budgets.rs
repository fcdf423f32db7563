//! Budgets that start afresh (issue 20), in the real Envoy with credit leases: a key with
//! a quota per short period is refused once the period's quota is spent, is served again
//! from the first request after the boundary (the filter moves on by itself, before any
//! snapshot tells it), and each call is billed once, to the period it was made in.

use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keygate_e2e::api::{admin, billed, create_key, metered_cost, send_metered, until_synced};
use keygate_e2e::stack::Stack;
use reqwest::Method;
use serde_json::{json, Value};

/// A period long enough for a handful of calls on a slow machine, short enough to wait.
const PERIOD_SECS: u64 = 12;

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn unix(rfc3339: &Value) -> f64 {
    let text = rfc3339.as_str().expect("an RFC 3339 time");
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339");
    parsed.unix_timestamp() as f64
}

fn key_view(stack: &Stack, id: &str) -> Value {
    let (status, key) = admin(stack, Method::GET, &format!("/api/v1/keys/{id}"), None);
    assert_eq!(status, 200, "{key}");
    key
}

fn a_spent_quota_starts_afresh_at_the_period_boundary(stack: Stack) {
    let (status, body) = admin(
        &stack,
        Method::PUT,
        "/api/v1/models/gpt-4o-mini",
        Some(json!({"input": 1_000_000, "output": 1_000_000})),
    );
    assert_eq!(status, 201, "{body}");
    // Room for exactly two calls per period.
    let quota = 2 * metered_cost() + metered_cost() / 2;
    let key = create_key(
        &stack,
        json!({"name": "monthly", "unlimited_quota": false, "quota": quota,
            "quota_period": format!("{PERIOD_SECS}s")}),
    );
    let view = key_view(&stack, &key.id);
    assert_eq!(view["quota_period"], "12s");
    let mut resets_at = unix(&view["resets_at"]);
    // Start early in a period, so that its calls and the refusal all fall inside it.
    if resets_at - now_secs() < PERIOD_SECS as f64 * 0.6 {
        thread::sleep(Duration::from_secs_f64(
            (resets_at - now_secs()).max(0.0) + 0.2,
        ));
        resets_at = unix(&key_view(&stack, &key.id)["resets_at"]);
    }

    let first = until_synced(|| send_metered(&stack.envoy_url, &key.secret, 0));
    assert_eq!(first.status(), 200);
    let mut statuses = vec![];
    for _ in 0..3 {
        statuses.push(
            send_metered(&stack.envoy_url, &key.secret, 0)
                .status()
                .as_u16(),
        );
    }
    assert!(
        now_secs() < resets_at,
        "the calls took longer than the period"
    );
    assert_eq!(statuses, [200, 429, 429], "two calls fit in a period");

    // The first call after the boundary is served: nothing refuses it on the way.
    thread::sleep(Duration::from_secs_f64(resets_at - now_secs() + 0.05));
    let after = send_metered(&stack.envoy_url, &key.secret, 0);
    assert_eq!(after.status(), 200, "the first call of the new period");
    let second = send_metered(&stack.envoy_url, &key.secret, 0);
    assert_eq!(second.status(), 200);

    // Billed once each, to its own period: the new period has used two calls, the log
    // holds all four.
    let cost = metered_cost();
    let mut view = key_view(&stack, &key.id);
    for _ in 0..100 {
        if view["used_quota"] == 2 * cost && billed(&stack, &key.id).1 == 4 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
        view = key_view(&stack, &key.id);
    }
    assert_eq!(view["used_quota"], 2 * cost, "{view}");
    assert_eq!(view["status"], "active", "{view}");
    assert_eq!(unix(&view["period_start"]), resets_at);
    assert_eq!(billed(&stack, &key.id), (4 * cost, 4));
}

#[test]
fn a_spent_quota_starts_afresh_at_the_period_boundary_on_sqlite() {
    a_spent_quota_starts_afresh_at_the_period_boundary(Stack::builder().concurrency(2).start());
}

#[test]
fn a_spent_quota_starts_afresh_at_the_period_boundary_on_postgres() {
    a_spent_quota_starts_afresh_at_the_period_boundary(
        Stack::builder().concurrency(2).postgres().start(),
    );
}
