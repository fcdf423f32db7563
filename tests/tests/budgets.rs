//! Budgets that start afresh, and limits per model (issue 20), in the real Envoy with
//! credit leases: a key with a quota per short period is refused once the period's quota
//! is spent, is served again from the first request after the boundary (the filter moves
//! on by itself, before any snapshot tells it), and each call is billed once, to the
//! period it was made in. A key's cap on some models refuses those models with
//! `model_budget_exceeded` once spent, even when calls race for it, and leaves the others.

use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keygate_e2e::api::{
    admin, assert_error, billed, client, create_key, metered_cost, metered_estimate, send_metered,
    until_status, until_synced, CHAT,
};
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
    assert!(status == 201 || status == 200, "{body}");
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

/// A small call to a model no cap of these tests covers.
fn other_model(stack: &Stack, secret: &str) -> reqwest::blocking::Response {
    client()
        .post(format!("{}{CHAT}", stack.envoy_url))
        .bearer_auth(secret)
        .json(&json!({"model": "gpt-4.1-mini", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .unwrap()
}

fn a_spent_model_cap_refuses_its_models_only(stack: &Stack) {
    for model in ["gpt-4o-mini", "gpt-4.1-mini"] {
        let (status, body) = admin(
            stack,
            Method::PUT,
            &format!("/api/v1/models/{model}"),
            Some(json!({"input": 1_000_000, "output": 1_000_000})),
        );
        assert!(status == 201 || status == 200, "{body}");
    }
    let cost = metered_cost();
    // No quota of its own: only the cap limits it, to two calls of gpt-4o-*.
    let key = create_key(
        stack,
        json!({"name": "capped", "model_caps": {"gpt-4o-*": {"budget": 2 * cost + cost / 2,
            "period": "day"}}}),
    );
    let first = until_synced(|| send_metered(&stack.envoy_url, &key.secret, 0));
    assert_eq!(first.status(), 200);
    assert_eq!(send_metered(&stack.envoy_url, &key.secret, 0).status(), 200);
    let refused = send_metered(&stack.envoy_url, &key.secret, 0);
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().unwrap();
    assert_eq!(body["error"]["code"], "model_budget_exceeded", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gpt-4o-mini"),
        "{body}"
    );
    // Another model is not capped.
    assert_eq!(other_model(stack, &key.secret).status(), 200);
    // The key-service counts the cap too.
    let mut view = key_view(stack, &key.id);
    for _ in 0..100 {
        if view["model_caps"]["gpt-4o-*"]["used"] == 2 * cost {
            break;
        }
        thread::sleep(Duration::from_millis(100));
        view = key_view(stack, &key.id);
    }
    assert_eq!(view["model_caps"]["gpt-4o-*"]["used"], 2 * cost, "{view}");

    // Calls racing for a cap: only as many as it covers at their estimate get through.
    let cap = 5 * cost;
    let racing = create_key(
        stack,
        json!({"name": "raced", "model_caps": {"gpt-4o-mini": {"budget": cap}}}),
    );
    let synced = until_synced(|| other_model(stack, &racing.secret));
    assert_eq!(synced.status(), 200);
    let secret = racing.secret.as_str();
    let statuses: Vec<u16> = thread::scope(|s| {
        let calls: Vec<_> = (0..10)
            .map(|_| {
                s.spawn(move || {
                    send_metered(&stack.envoy_url, secret, 1_500)
                        .status()
                        .as_u16()
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let admitted = statuses.iter().filter(|s| **s == 200).count() as u64;
    assert_eq!(admitted, cap / metered_estimate(), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    for _ in 0..100 {
        if billed(stack, &racing.id).1 == admitted {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(billed(stack, &racing.id).0 <= cap);
}

/// An account with a spending limit and no balance: its keys stop when the limit is spent.
/// And first, an account with a balance: a key of its own without a quota may spend all of
/// it. (Until this session the filter never stopped counting what such a key had spent
/// against its account, once the key-service had it: the second of these calls was
/// refused with the balance still covering it.)
fn an_account_spending_limit_stops_its_keys(stack: &Stack) {
    let cost = metered_cost();
    let (status, body) = admin(
        stack,
        Method::POST,
        "/api/v1/accounts",
        Some(json!({"name": "funded", "balance": 2 * cost + cost / 2})),
    );
    assert_eq!(status, 201, "{body}");
    let key = create_key(stack, json!({"name": "of-funded", "account": "funded"}));
    let first = until_synced(|| send_metered(&stack.envoy_url, &key.secret, 0));
    assert_eq!(first.status(), 200);
    // Once the first call's cost is in the snapshot's balance, it counts there alone.
    thread::sleep(Duration::from_millis(1_500));
    assert_eq!(send_metered(&stack.envoy_url, &key.secret, 0).status(), 200);
    thread::sleep(Duration::from_millis(1_500));
    assert_eq!(send_metered(&stack.envoy_url, &key.secret, 0).status(), 429);

    let (status, body) = admin(
        stack,
        Method::POST,
        "/api/v1/accounts",
        Some(
            json!({"name": "limited", "spend_limit": 2 * cost + cost / 2,
            "quota_period": "month"}),
        ),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["spend_limit"], 2 * cost + cost / 2);
    assert!(body["resets_at"].is_string(), "{body}");
    let key = create_key(stack, json!({"name": "of-limited", "account": "limited"}));
    let first = until_synced(|| send_metered(&stack.envoy_url, &key.secret, 0));
    assert_eq!(first.status(), 200);
    assert_eq!(send_metered(&stack.envoy_url, &key.secret, 0).status(), 200);
    let refused = send_metered(&stack.envoy_url, &key.secret, 0);
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().unwrap();
    assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
    let limited = || {
        let (_, accounts) = admin(stack, Method::GET, "/api/v1/accounts", None);
        let accounts = accounts["accounts"].as_array().cloned().unwrap_or_default();
        accounts
            .into_iter()
            .find(|a| a["name"] == "limited")
            .unwrap()
    };
    let mut account = limited();
    for _ in 0..100 {
        if account["period_used"] == 2 * cost {
            break;
        }
        thread::sleep(Duration::from_millis(100));
        account = limited();
    }
    assert_eq!(account["period_used"], 2 * cost, "{account}");
    assert_eq!(account["balance"], Value::Null);
}

/// `GET /v1/keygate/key`: a key's own view, answered by the filter.
fn a_key_sees_its_own_budget(stack: &Stack) {
    let cost = metered_cost();
    let key = create_key(
        stack,
        json!({"name": "self-aware", "unlimited_quota": false, "quota": 10 * cost,
            "quota_period": "day", "rpm": 100,
            "model_caps": {"gpt-4o-*": {"budget": 3 * cost, "period": "day"}}}),
    );
    let own = |secret: Option<&str>| {
        let mut request = client().get(format!("{}/v1/keygate/key", stack.envoy_url));
        if let Some(secret) = secret {
            request = request.bearer_auth(secret);
        }
        request.send().unwrap()
    };
    let first = until_synced(|| own(Some(&key.secret)));
    assert_eq!(first.status(), 200);
    assert_eq!(send_metered(&stack.envoy_url, &key.secret, 0).status(), 200);
    let mut view: Value = own(Some(&key.secret)).json().unwrap();
    for _ in 0..100 {
        if view["remaining_quota"] == 9 * cost {
            break;
        }
        thread::sleep(Duration::from_millis(100));
        view = own(Some(&key.secret)).json().unwrap();
    }
    assert_eq!(view["name"], "self-aware", "{view}");
    assert_eq!(view["status"], "active");
    assert_eq!(view["remaining_quota"], 9 * cost, "{view}");
    assert_eq!(view["rpm"], 100);
    assert!(view["period"]["resets_at"].is_string(), "{view}");
    assert_eq!(view["model_caps"][0]["remaining"], 2 * cost, "{view}");
    assert!(!view.to_string().contains(&key.secret));
    assert_eq!(own(None).status(), 401);
}

/// A GET with `secret` (if any) to the Envoy's `path`.
fn own_get(stack: &Stack, path: &str, secret: Option<&str>) -> reqwest::blocking::Response {
    let mut request = client().get(format!("{}{path}", stack.envoy_url));
    if let Some(secret) = secret {
        request = request.bearer_auth(secret);
    }
    request.send().unwrap()
}

const SUBSCRIPTION: &str = "/v1/dashboard/billing/subscription";
const USAGE: &str = "/v1/dashboard/billing/usage";

/// Dollars at the filter's default `credits_per_usd` (a million).
fn usd(credits: u64) -> f64 {
    credits as f64 / 1e6
}

fn close(a: &Value, b: f64) -> bool {
    a.as_f64()
        .is_some_and(|a| (a - b).abs() <= 1e-12 * b.abs().max(1.0))
}

/// The one-api-style billing answers (issue 21): a key's limit and usage in dollars,
/// answered by the filter in one-api's shapes, leaving what the key's own view calls
/// `remaining_quota`; an exhausted key still sees them, a disabled one is refused.
fn one_api_clients_see_a_keys_limit_and_usage(stack: &Stack) {
    let (status, body) = admin(
        stack,
        Method::PUT,
        "/api/v1/models/gpt-4o-mini",
        Some(json!({"input": 1_000_000, "output": 1_000_000})),
    );
    assert!(status == 201 || status == 200, "{body}");
    let cost = metered_cost();
    // A quota that never starts afresh: the snapshot's `quota` is what tells its size.
    let key = create_key(
        stack,
        json!({"name": "one-api-client", "unlimited_quota": false, "quota": 10 * cost,
            "expires_in": "30d"}),
    );
    let first = until_synced(|| own_get(stack, SUBSCRIPTION, Some(&key.secret)));
    assert_eq!(first.status(), 200);
    let no_store = first.headers().get("cache-control").cloned();
    assert_eq!(
        no_store.as_ref().and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let sub: Value = first.json().unwrap();
    assert_eq!(sub["object"], "billing_subscription", "{sub}");
    assert_eq!(sub["has_payment_method"], true);
    for field in ["soft_limit_usd", "hard_limit_usd", "system_hard_limit_usd"] {
        assert!(close(&sub[field], usd(10 * cost)), "{field}: {sub}");
    }
    let expires_at = unix(&key_view(stack, &key.id)["expires_at"]);
    assert_eq!(sub["access_until"].as_f64(), Some(expires_at), "{sub}");
    let usage: Value = own_get(stack, USAGE, Some(&key.secret)).json().unwrap();
    assert_eq!(usage, json!({"object": "list", "total_usage": 0.0}));

    // One call: it counts as used at once, and once billed, from the snapshot.
    assert_eq!(send_metered(&stack.envoy_url, &key.secret, 0).status(), 200);
    let without_v1 = "/dashboard/billing/usage?start_date=2026-01-01&end_date=2026-02-01";
    let mut usage: Value = own_get(stack, without_v1, Some(&key.secret))
        .json()
        .unwrap();
    for _ in 0..100 {
        if close(&usage["total_usage"], usd(cost) * 100.0) && billed(stack, &key.id).1 == 1 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
        usage = own_get(stack, without_v1, Some(&key.secret))
            .json()
            .unwrap();
    }
    assert!(close(&usage["total_usage"], usd(cost) * 100.0), "{usage}");
    // What a client shows as the balance is what the key's own view says is left. (Both
    // are read again until they settle: for a moment after the snapshot brings the billed
    // call, this Envoy may still count it as its own spending too.)
    let settled = || {
        let sub: Value = own_get(stack, "/dashboard/billing/subscription", Some(&key.secret))
            .json()
            .unwrap();
        let usage: Value = own_get(stack, USAGE, Some(&key.secret)).json().unwrap();
        let own: Value = own_get(stack, "/v1/keygate/key", Some(&key.secret))
            .json()
            .unwrap();
        let balance = sub["hard_limit_usd"].as_f64().unwrap()
            - usage["total_usage"].as_f64().unwrap() / 100.0;
        (own, balance, sub, usage)
    };
    let (mut own, mut balance, mut sub, mut usage) = settled();
    for _ in 0..100 {
        if own["remaining_quota"] == 9 * cost && (balance - usd(9 * cost)).abs() < 1e-12 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
        (own, balance, sub, usage) = settled();
    }
    assert_eq!(own["remaining_quota"], 9 * cost, "{own}");
    assert!(
        (balance - usd(9 * cost)).abs() < 1e-12,
        "{balance} {sub} {usage}"
    );
    // None of these answers was billed or sent upstream: the call is the one record.
    assert_eq!(billed(stack, &key.id), (cost, 1));

    // An unlimited key: one-api's mark of no limit.
    let open = create_key(stack, json!({"name": "one-api-open"}));
    let sub: Value = until_synced(|| own_get(stack, SUBSCRIPTION, Some(&open.secret)))
        .json()
        .unwrap();
    assert_eq!(sub["hard_limit_usd"].as_f64(), Some(100_000_000.0), "{sub}");
    assert_eq!(sub["access_until"], 0);

    // Out of quota: still answered; disabled: refused as for any path.
    let spent = create_key(
        stack,
        json!({"name": "one-api-spent", "unlimited_quota": false, "quota": 0}),
    );
    let res = until_synced(|| own_get(stack, USAGE, Some(&spent.secret)));
    assert_eq!(res.status(), 200);
    let sub: Value = own_get(stack, SUBSCRIPTION, Some(&spent.secret))
        .json()
        .unwrap();
    assert_eq!(sub["hard_limit_usd"].as_f64(), Some(0.0), "{sub}");
    let (status, body) = admin(
        stack,
        Method::PATCH,
        &format!("/api/v1/keys/{}", spent.id),
        Some(json!({"enabled": false})),
    );
    assert_eq!(status, 200, "{body}");
    let refused = until_status(401, || own_get(stack, SUBSCRIPTION, Some(&spent.secret)));
    assert_error(refused, 401, "key_disabled");
    assert_error(own_get(stack, USAGE, None), 401, "missing_api_key");
}

#[test]
fn budgets_on_sqlite() {
    let stack = Stack::builder().concurrency(2).start();
    a_spent_model_cap_refuses_its_models_only(&stack);
    an_account_spending_limit_stops_its_keys(&stack);
    a_key_sees_its_own_budget(&stack);
    one_api_clients_see_a_keys_limit_and_usage(&stack);
    a_spent_quota_starts_afresh_at_the_period_boundary(stack);
}

#[test]
fn budgets_on_postgres() {
    let stack = Stack::builder().concurrency(2).postgres().start();
    a_spent_model_cap_refuses_its_models_only(&stack);
    an_account_spending_limit_stops_its_keys(&stack);
    a_key_sees_its_own_budget(&stack);
    one_api_clients_see_a_keys_limit_and_usage(&stack);
    a_spent_quota_starts_afresh_at_the_period_boundary(stack);
}
