//! Quota that cannot be raced, in the real Envoy with two workers: requests in flight
//! reserve what they may cost in a ledger all workers share, so concurrent requests
//! cannot overdraw a key between its check and its billing, and the key-service never
//! bills more than the quota.

use std::thread;
use std::time::{Duration, Instant};

use keygate_e2e::api::{
    admin, billed, client, create_key, metered_body as body, metered_cost as actual,
    metered_estimate as estimate, send_metered, until_synced, METERED_MAX_TOKENS,
};
use keygate_e2e::stack::Stack;
use reqwest::blocking::Response;
use reqwest::Method;
use serde_json::{json, Value};

const QUOTA: u64 = 1_000;
const MAX_TOKENS: u64 = METERED_MAX_TOKENS;

fn send(stack: &Stack, secret: &str, delay_ms: u64) -> Response {
    send_metered(&stack.envoy_url, secret, delay_ms)
}

#[test]
fn concurrent_requests_cannot_overdraw_a_key() {
    let stack = Stack::builder().concurrency(2).start();
    // One credit per token, in and out.
    let (status, _) = admin(
        &stack,
        Method::PUT,
        "/api/v1/models/gpt-4o-mini",
        Some(json!({"input": 1_000_000, "output": 1_000_000})),
    );
    assert_eq!(status, 201);
    let key = create_key(
        &stack,
        json!({"name": "metered", "unlimited_quota": false, "quota": QUOTA}),
    );
    // The first call also proves the price reached the filter (the estimate needs it).
    let first = until_synced(|| send(&stack, &key.secret, 0));
    assert_eq!(first.status(), 200);
    let spent = actual();

    // A burst of slow calls, all in flight at once: only as many as the quota left
    // covers at their estimate get through; the others are refused before any upstream
    // call, as OpenAI refuses a key out of quota.
    let fits = (QUOTA - spent) / estimate();
    let burst = fits as usize + 4;
    let stack_ref = &stack;
    let secret = key.secret.as_str();
    let statuses: Vec<(u16, Value)> = thread::scope(|s| {
        let calls: Vec<_> = (0..burst)
            .map(|_| {
                s.spawn(move || {
                    let res = send(stack_ref, secret, 1_500);
                    let status = res.status().as_u16();
                    (status, res.json::<Value>().unwrap_or(Value::Null))
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let admitted = statuses.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<&Value> = statuses
        .iter()
        .filter(|(s, _)| *s == 429)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(
        admitted,
        fits as usize,
        "{fits} fit in the quota at {} each: {statuses:?}",
        estimate()
    );
    assert_eq!(refused.len(), burst - admitted, "{statuses:?}");
    assert!(refused
        .iter()
        .all(|b| b["error"]["code"] == "insufficient_quota"));

    // Then one at a time until refused: settled costs count at once, so what passes never
    // adds up to more than the quota, even before the key-service has billed it.
    let mut sequential = 0;
    loop {
        let res = send(&stack, &key.secret, 0);
        match res.status().as_u16() {
            200 => sequential += 1,
            429 => break,
            other => panic!("unexpected {other}"),
        }
        assert!(sequential < 20, "never refused");
    }
    let calls = 1 + admitted + sequential;

    // Everything admitted is billed, exactly once, and the sum stays within the quota.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut bill = billed(&stack, &key.id);
    while bill.1 < calls as u64 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
        bill = billed(&stack, &key.id);
    }
    assert_eq!(
        bill.1, calls as u64,
        "every admitted call is in the usage log"
    );
    assert_eq!(bill.0, calls as u64 * actual());
    assert!(bill.0 <= QUOTA, "billed {} of a {QUOTA} quota", bill.0);
    // And the last refusal was right: another call might have cost more than was left.
    assert!(
        QUOTA - bill.0 < estimate(),
        "refused with {} left",
        QUOTA - bill.0
    );
}

#[test]
fn a_client_that_goes_away_gives_its_reservation_back() {
    let stack = Stack::start();
    let (status, _) = admin(
        &stack,
        Method::PUT,
        "/api/v1/models/gpt-4o-mini",
        Some(json!({"input": 1_000_000, "output": 1_000_000})),
    );
    assert_eq!(status, 201);
    // Room for one call in flight, not two; and for one more once the first has gone,
    // billed its prompt (the provider had it), about a token per 4 bytes of body.
    let prompt = estimate() - MAX_TOKENS;
    let key = create_key(
        &stack,
        json!({"name": "one-at-a-time", "unlimited_quota": false,
            "quota": estimate() + prompt + 10}),
    );
    until_synced(|| {
        client()
            .get(format!("{}/v1/models", stack.envoy_url))
            .bearer_auth(&key.secret)
            .send()
            .unwrap()
    });
    let slow = thread::spawn({
        let url = format!("{}/v1/chat/completions", stack.envoy_url);
        let secret = key.secret.clone();
        move || {
            // The upstream would answer in 10 s; the client gives up after 0.5 s.
            reqwest::blocking::Client::builder()
                .timeout(Duration::from_millis(500))
                .build()
                .unwrap()
                .post(url)
                .bearer_auth(secret)
                .header("x-mock-delay-ms", "10000")
                .json(&body())
                .send()
        }
    });
    thread::sleep(Duration::from_millis(250));
    let while_in_flight = send(&stack, &key.secret, 0);
    assert_eq!(
        while_in_flight.status(),
        429,
        "the slow call holds the room"
    );
    assert!(slow.join().unwrap().is_err(), "the client timed out");
    // Long before the upstream would have answered, the room is back.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut after = send(&stack, &key.secret, 0);
    while after.status() != 200 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        after = send(&stack, &key.secret, 0);
    }
    assert_eq!(after.status(), 200, "the reservation was released");
}

#[test]
fn an_account_balance_is_shared_by_its_keys_in_flight() {
    let stack = Stack::builder().concurrency(2).start();
    let (status, _) = admin(
        &stack,
        Method::PUT,
        "/api/v1/models/gpt-4o-mini",
        Some(json!({"input": 1_000_000, "output": 1_000_000})),
    );
    assert_eq!(status, 201);
    let balance = 3 * estimate() + 10;
    let (status, _) = admin(
        &stack,
        Method::POST,
        "/api/v1/accounts",
        Some(json!({"name": "team", "balance": balance})),
    );
    assert_eq!(status, 201);
    // Two keys without quotas of their own, drawing on one balance.
    let keys: Vec<_> = ["a", "b"]
        .iter()
        .map(|n| create_key(&stack, json!({"name": n, "account": "team"})))
        .collect();
    for key in &keys {
        until_synced(|| {
            client()
                .get(format!("{}/v1/models", stack.envoy_url))
                .bearer_auth(&key.secret)
                .send()
                .unwrap()
        });
    }
    let stack_ref = &stack;
    let statuses: Vec<u16> = thread::scope(|s| {
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let secret = keys[i % 2].secret.as_str();
                s.spawn(move || send(stack_ref, secret, 1_500).status().as_u16())
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        admitted, 3,
        "three estimates fit in the balance: {statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 5);
}
