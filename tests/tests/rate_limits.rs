//! RPM, TPM and parallel-request limits in the real Envoy with two workers: the windows
//! live in shared data, so a key's limit holds for the whole Envoy, whichever worker
//! each connection lands on.

use std::thread;
use std::time::{Duration, Instant};

use keygate_e2e::api::{
    admin, assert_error, client, create_key, envoy_stats, until_synced, upstream_requests, CHAT,
};
use keygate_e2e::stack::Stack;
use reqwest::blocking::Response;
use reqwest::Method;
use serde_json::{json, Value};

/// A chat call on a new connection (so that calls spread over Envoy's workers).
fn send(stack: &Stack, secret: &str, max_tokens: u64, delay_ms: u64) -> Response {
    client()
        .post(format!("{}{CHAT}", stack.envoy_url))
        .bearer_auth(secret)
        .header("x-mock-delay-ms", delay_ms.to_string())
        .json(&json!({"model": "gpt-4o-mini", "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "two words"}]}))
        .send()
        .expect("chat call")
}

fn header(res: &Response, name: &str) -> Option<u64> {
    res.headers().get(name)?.to_str().ok()?.parse().ok()
}

/// Connections each Envoy worker has accepted on the listener.
fn worker_connections(stack: &Stack) -> Vec<u64> {
    let text = envoy_stats(stack, "downstream_cx_total");
    text.lines()
        .filter(|l| l.starts_with("listener.127.0.0.1_") && l.contains(".worker_"))
        .filter_map(|l| l.rsplit_once(": ")?.1.trim().parse().ok())
        .collect()
}

fn put_group(stack: &Stack, name: &str, fields: Value) {
    let (status, body) = admin(
        stack,
        Method::PUT,
        &format!("/api/v1/groups/{name}"),
        Some(fields),
    );
    assert!(
        status == 200 || status == 201,
        "group {name}: {status} {body}"
    );
}

/// `n` calls at once, each on its own connection; their statuses and responses.
fn burst(stack: &Stack, secret: &str, n: usize) -> Vec<Response> {
    thread::scope(|s| {
        let calls: Vec<_> = (0..n)
            .map(|_| s.spawn(move || send(stack, secret, 1, 0)))
            .collect();
        calls.into_iter().map(|c| c.join().expect("call")).collect()
    })
}

#[test]
fn limits_hold_across_workers_and_say_when_to_come_back() {
    let stack = Stack::builder().concurrency(2).start();
    const RPM: usize = 12;

    // A key's own RPM: a burst of 40 calls over both workers lets exactly RPM through.
    // (Stated error: a key's windows are created by its first request, and if its first
    // requests reach both workers at the same instant one count may be lost, so RPM + 1
    // at most. The first call below, alone, creates them here.)
    let key = create_key(&stack, json!({"name": "rpm", "rpm": RPM}));
    let first = until_synced(|| send(&stack, &key.secret, 1, 0));
    assert_eq!(first.status(), 200);
    assert_eq!(
        header(&first, "x-ratelimit-limit-requests"),
        Some(RPM as u64)
    );
    assert_eq!(
        header(&first, "x-ratelimit-remaining-requests"),
        Some(RPM as u64 - 1)
    );
    assert_eq!(
        header(&first, "x-ratelimit-limit-tokens"),
        None,
        "no TPM set"
    );
    let before = worker_connections(&stack);
    let answers = burst(&stack, &key.secret, 40);
    let after = worker_connections(&stack);
    assert_eq!(after.len(), 2, "two workers: {after:?}");
    assert!(
        after.iter().zip(&before).all(|(a, b)| a > b),
        "the burst reached both workers: {before:?} -> {after:?}"
    );
    let admitted = answers.iter().filter(|r| r.status() == 200).count();
    assert_eq!(admitted + 1, RPM, "the first call and the burst's admitted");
    let mut remaining: Vec<u64> = answers
        .iter()
        .filter(|r| r.status() == 200)
        .filter_map(|r| header(r, "x-ratelimit-remaining-requests"))
        .collect();
    remaining.sort_unstable();
    assert_eq!(
        remaining,
        (0..RPM as u64 - 1).collect::<Vec<_>>(),
        "each admitted call saw its own count"
    );
    for res in answers.into_iter().filter(|r| r.status() != 200) {
        assert_eq!(header(&res, "x-ratelimit-limit-requests"), Some(RPM as u64));
        assert_eq!(header(&res, "x-ratelimit-remaining-requests"), Some(0));
        let retry = header(&res, "retry-after").expect("retry-after");
        assert!((1..=62).contains(&retry), "retry-after {retry}");
        assert_error(res, 429, "rate_limit_exceeded");
    }

    // The group's limit applies to each of its keys, and the stricter one wins.
    put_group(
        &stack,
        "tight",
        json!({"models": ["*"], "rpm": 3, "tpm": 50}),
    );
    let grouped = create_key(
        &stack,
        json!({"name": "grouped", "group": "tight", "rpm": 100}),
    );
    // Made a moment after its group, the key works at once on every worker (a worker
    // whose tables predate the group rereads them rather than refusing the model).
    let first = until_synced(|| send(&stack, &grouped.secret, 1, 0));
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-ratelimit-limit-requests"), Some(3));
    assert_eq!(header(&first, "x-ratelimit-limit-tokens"), Some(50));
    assert_eq!(header(&first, "x-ratelimit-remaining-tokens"), Some(50));

    // TPM counts what responses used: 2 words in and 40 out is 42 tokens, under 50, so
    // the next call is let in; after it, the key is over and the third is refused.
    let tpm = create_key(&stack, json!({"name": "tpm", "tpm": 50}));
    let first = until_synced(|| send(&stack, &tpm.secret, 40, 0));
    assert_eq!(first.status(), 200);
    // The usage of a response counts once the stream has ended in Envoy.
    thread::sleep(Duration::from_millis(500));
    let second = send(&stack, &tpm.secret, 40, 0);
    assert_eq!(second.status(), 200);
    assert_eq!(header(&second, "x-ratelimit-remaining-tokens"), Some(8));
    thread::sleep(Duration::from_millis(500));
    let third = send(&stack, &tpm.secret, 40, 0);
    assert_eq!(header(&third, "x-ratelimit-remaining-tokens"), Some(0));
    assert!(header(&third, "retry-after").is_some_and(|s| (55..=62).contains(&s)));
    assert_error(third, 429, "rate_limit_exceeded");

    // Parallel requests: one slow call in flight holds the only place; the next is
    // refused with retry-after 1 until it ends.
    let single = create_key(&stack, json!({"name": "single", "max_parallel": 1}));
    assert_eq!(
        until_synced(|| send(&stack, &single.secret, 1, 0)).status(),
        200
    );
    let upstream_seen = upstream_requests(&stack).len();
    thread::scope(|s| {
        let slow = s.spawn(|| send(&stack, &single.secret, 1, 2_000));
        // Once the slow call has reached the upstream, it is in flight.
        let deadline = Instant::now() + Duration::from_secs(10);
        while upstream_requests(&stack).len() == upstream_seen {
            assert!(
                Instant::now() < deadline,
                "the slow call never reached the upstream"
            );
            thread::sleep(Duration::from_millis(20));
        }
        let refused = send(&stack, &single.secret, 1, 0);
        assert_eq!(header(&refused, "retry-after"), Some(1));
        assert_error(refused, 429, "rate_limit_exceeded");
        assert_eq!(slow.join().expect("slow call").status(), 200);
    });
    thread::sleep(Duration::from_millis(200));
    assert_eq!(send(&stack, &single.secret, 1, 0).status(), 200);

    // A key without limits gets no rate-limit headers.
    let open = create_key(&stack, json!({"name": "open"}));
    let res = until_synced(|| send(&stack, &open.secret, 1, 0));
    assert_eq!(res.status(), 200);
    assert!(res
        .headers()
        .keys()
        .all(|h| !h.as_str().starts_with("x-ratelimit-")));

    // A model-restricted key's model list counts too: refused, it stays a refusal (the
    // filter once turned the 429 into the key's own list, with status 200).
    let lister = create_key(
        &stack,
        json!({"name": "lister", "models": ["gpt-4o-mini"], "rpm": 1}),
    );
    let list = |secret: &str| {
        client()
            .get(format!("{}/v1/models", stack.envoy_url))
            .bearer_auth(secret)
            .send()
            .expect("model list")
    };
    let first = until_synced(|| list(&lister.secret));
    assert_eq!(first.status(), 200);
    let listed: Value = first.json().expect("a list");
    assert_eq!(listed["data"][0]["id"], "gpt-4o-mini", "{listed}");
    let second = list(&lister.secret);
    assert!(header(&second, "retry-after").is_some());
    assert_error(second, 429, "rate_limit_exceeded");
}

/// Without credit leases (which share each limit out among the Envoys by what each
/// uses, `tests/tests/fleet.rs`), the `replicas` setting divides it.
#[test]
fn without_leases_replicas_share_each_limit() {
    let stack = Stack::builder()
        .concurrency(2)
        .filter_setting("credit_lease_ttl_ms", "0")
        .filter_setting("replicas", "4")
        .start();
    let key = create_key(&stack, json!({"name": "shared", "rpm": 20}));
    let first = until_synced(|| send(&stack, &key.secret, 1, 0));
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-ratelimit-limit-requests"), Some(5));
    let answers = burst(&stack, &key.secret, 12);
    let admitted = answers.iter().filter(|r| r.status() == 200).count();
    assert_eq!(
        admitted, 4,
        "a quarter of 20 a minute, the first call included"
    );
}
