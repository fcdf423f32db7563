//! A fleet of Envoys on one key-service (issue 19): each spends a limited key's quota only
//! from its credit lease, which the key-service grants out of what no other Envoy's lease
//! and no billed usage covers, so two Envoys together cannot overdraw a key, nor its cap
//! on a model. A lease an Envoy cannot give back (it was killed) lapses and its credit
//! comes back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use keygate_e2e::api::{
    admin, billed, create_key, metered_cost as actual, metered_estimate as estimate, send_metered,
    until_synced,
};
use keygate_e2e::stack::{Stack, StackBuilder};
use reqwest::blocking::Response;
use reqwest::Method;
use serde_json::json;

fn send(url: &str, secret: &str, delay_ms: u64) -> Response {
    send_metered(url, secret, delay_ms)
}

/// The first call of a key on an Envoy, once the key and its model's price have reached
/// it (each VM reads prices on its tick).
fn first_call(url: &str, secret: &str) -> Response {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let res = until_synced(|| send(url, secret, 0));
        if res.status() != 403 || std::time::Instant::now() > deadline {
            return res;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (at most 30 s) until `calls` calls of the key are billed; what they cost.
fn until_billed(stack: &Stack, key_id: &str, calls: u64) -> (u64, u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (spent, billed_calls) = billed(stack, key_id);
        if billed_calls >= calls || std::time::Instant::now() > deadline {
            assert_eq!(billed_calls, calls, "calls answered and billed differ");
            return (spent, billed_calls);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// One credit per token, in and out.
fn price(stack: &Stack) {
    let (status, _) = admin(
        stack,
        Method::PUT,
        "/api/v1/models/gpt-4o-mini",
        Some(json!({"input": 1_000_000, "output": 1_000_000})),
    );
    assert_eq!(status, 201);
}

/// The case: a key with 1,000 credits, 240 calls spread over two Envoys, 40 in
/// flight at a time (without leases this spent 1,661 credits); then the same against a
/// key whose quota is unlimited but whose model has a cap of 1,000 credits (without
/// leases on caps this spent 1,836).
fn two_envoys_cannot_overdraw(builder: StackBuilder) {
    const LIMIT: u64 = 1_000;
    let mut stack = builder.start();
    let (second, _) = stack.add_envoy();
    price(&stack);
    let quota = json!({"name": "fleet", "unlimited_quota": false, "quota": LIMIT});
    spend_from_two_envoys(&stack, &second, quota, LIMIT);
    let cap = json!({"name": "fleet-cap", "model_caps": {"gpt-4o-mini": {"budget": LIMIT}}});
    spend_from_two_envoys(&stack, &second, cap, LIMIT);
}

/// Makes a key (`key`, which limits it to `limit` credits) and spends it from both Envoys
/// at once until they refuse it; they must not spend more than `limit`, and must let
/// nearly all of it be spent.
fn spend_from_two_envoys(stack: &Stack, second: &str, key: serde_json::Value, limit: u64) {
    let name = key["name"].as_str().unwrap_or_default().to_owned();
    let key = create_key(stack, key);
    // Both Envoys know the key and its price (a call each; they cost what they cost).
    for url in [stack.envoy_url.as_str(), second] {
        let first = first_call(url, &key.secret);
        assert_eq!(first.status(), 200, "{}", first.text().unwrap_or_default());
    }
    let statuses = Arc::new([(); 6].map(|_| AtomicU64::new(0)));
    let workers: Vec<_> = (0..40)
        .map(|i| {
            let url = if i % 2 == 0 {
                stack.envoy_url.clone()
            } else {
                second.to_owned()
            };
            let (secret, statuses) = (key.secret.clone(), statuses.clone());
            thread::spawn(move || {
                for _ in 0..6 {
                    let res = send(&url, &secret, 30);
                    let status = res.status().as_u16();
                    let slot = match status {
                        200 => 0,
                        429 => 1,
                        503 => 2,
                        _ => 3,
                    };
                    if slot > 1 {
                        eprintln!("{status}: {}", res.text().unwrap_or_default());
                    }
                    statuses[slot].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a worker failed");
    }
    let count = |slot: usize| statuses[slot].load(Ordering::Relaxed);
    // Every answered call is billed once (the two first calls too).
    let (spent, calls) = until_billed(stack, &key.id, count(0) + 2);
    eprintln!(
        "{name}, limit {limit}: spent {spent} in {calls} calls; 200: {}, 429: {}, 503: {}, \
         other: {} (estimate {}, actual {})",
        count(0),
        count(1),
        count(2),
        count(3),
        estimate(),
        actual()
    );
    assert_eq!((count(2), count(3)), (0, 0), "{name}: only 200 and 429");
    // Each call costs less than its estimate: nothing may go over.
    assert!(
        spent <= limit,
        "{name}: the fleet overdrew: {spent} > {limit}"
    );
    // And most of it was usable: what is left is less than three calls' estimates (the
    // last crumbs of two leases, each too small for one more call).
    assert!(
        limit - spent < 3 * estimate(),
        "{name}: too much left unspent: {spent} of {limit}"
    );
}

#[test]
fn two_envoys_cannot_overdraw_a_key_on_sqlite() {
    two_envoys_cannot_overdraw(Stack::builder());
}

/// On PostgreSQL, with two key-service replicas behind each Envoy's cluster: asks and
/// usage reports reach either, and the advisory lock has them take turns.
#[test]
fn two_envoys_cannot_overdraw_a_key_on_postgres_with_two_key_services() {
    two_envoys_cannot_overdraw(Stack::builder().postgres().key_service_pair());
}

#[test]
fn a_killed_envoys_lease_lapses_and_its_credit_comes_back() {
    const TTL_MS: u64 = 2_000;
    let mut stack = Stack::builder()
        .filter_setting("credit_lease_ttl_ms", &TTL_MS.to_string())
        .start();
    let (second, _) = stack.add_envoy();
    price(&stack);
    // Room for four calls' estimates.
    let quota = 4 * estimate();
    let key = create_key(
        &stack,
        json!({"name": "lapsing", "unlimited_quota": false, "quota": quota}),
    );
    // The first Envoy calls once, taking a lease of two estimates (spending one call's
    // cost of it), and is killed: it never gives the rest back.
    let first = first_call(&stack.envoy_url, &key.secret);
    assert_eq!(first.status(), 200, "{}", first.text().unwrap_or_default());
    until_billed(&stack, &key.id, 1);
    stack.kill("envoy");
    // The second spends what is left beside that lease, then is refused.
    let mut admitted = 0;
    let mut took = Vec::new();
    loop {
        let started = std::time::Instant::now();
        let res = send(&second, &key.secret, 0);
        took.push(started.elapsed());
        match res.status().as_u16() {
            200 => admitted += 1,
            429 => break,
            other => panic!(
                "unexpected {other} after {took:?}: {}",
                res.text().unwrap_or_default()
            ),
        }
        assert!(admitted < 10, "never refused");
    }
    // The lease lapses (two TTLs after its last renewal): its credit comes back.
    thread::sleep(Duration::from_millis(2 * TTL_MS + 1_000));
    let after = send(&second, &key.secret, 0);
    assert_eq!(
        after.status(),
        200,
        "the lapsed lease's credit did not come back"
    );
    // The first call on this Envoy waited for its first lease; the next had it.
    eprintln!(
        "admitted {admitted} beside the dead Envoy's lease, one more after it lapsed; \
         calls took {took:?}"
    );
    let (spent, _) = until_billed(&stack, &key.id, admitted + 2);
    assert!(spent <= quota, "overdrew: {spent} > {quota}");
}

/// RPM across the fleet: each Envoy holds a share of the key's limit that the key-service
/// grants out of what the other Envoys' shares leave, and never gives away a share its
/// window still counts, so the fleet admits at most the key's RPM in a minute (without
/// shares, each Envoy admitted the whole RPM: 20 of 40 calls here).
#[test]
fn two_envoys_hold_a_keys_rpm_together() {
    const RPM: u64 = 10;
    let mut stack = Stack::builder().start();
    let (second, _) = stack.add_envoy();
    let key = create_key(&stack, json!({"name": "paced", "rpm": RPM}));
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..40 {
        let url = if i % 2 == 0 {
            &stack.envoy_url
        } else {
            &second
        };
        // (The first call of each Envoy may come before the key: those are retried.)
        let res = until_synced(|| send(url, &key.secret, 0));
        *statuses.entry(res.status().as_u16()).or_insert(0u64) += 1;
    }
    eprintln!("rpm {RPM}: {statuses:?}");
    let admitted = statuses.get(&200).copied().unwrap_or(0);
    assert!(
        admitted <= RPM,
        "the fleet admitted {admitted} > {RPM} in a minute"
    );
    // Nearly all of it usable: a share one Envoy holds unused is not lent to the other
    // within the minute.
    assert!(admitted >= RPM - 2, "only {admitted} of {RPM} admitted");
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        [200, 429],
        "only 200 and 429"
    );
}
