//! The key-service as a pair (issue 19): two replicas on one PostgreSQL database, both
//! endpoints of Envoy's `key_service` cluster (health-checked on `/readyz`). One is killed
//! while calls flow: no usage is lost, and a revocation made through the other reaches
//! Envoy.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use keygate_e2e::api::{
    admin, billed_calls, chat, create_key, until_synced, until_usage_delivered,
};
use keygate_e2e::stack::Stack;
use reqwest::Method;
use serde_json::json;

#[test]
fn a_replica_killed_mid_load_loses_no_usage_and_no_revocation() {
    let mut stack = Stack::builder().postgres().key_service_pair().start();
    let key = create_key(&stack, json!({"name": "steady"}));
    let doomed = create_key(&stack, json!({"name": "doomed"}));
    for secret in [&key.secret, &doomed.secret] {
        assert_eq!(until_synced(|| chat(&stack, Some(secret))).status(), 200);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(1));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, answered) = (stop.clone(), answered.clone());
            let (url, secret) = (stack.envoy_url.clone(), key.secret.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let res = keygate_e2e::api::client()
                        .post(format!("{url}{}", keygate_e2e::api::CHAT))
                        .bearer_auth(&secret)
                        .json(&json!({"model": "gpt-4o-mini", "messages": []}))
                        .send()
                        .expect("Envoy answers");
                    assert_eq!(res.status(), 200, "a call refused");
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(1));
    stack.kill("key-service");
    stack.key_service_url = stack.second_key_service_url.clone().expect("a pair");

    // A revocation through the survivor reaches Envoy.
    let (status, body) = admin(
        &stack,
        Method::PATCH,
        &format!("/api/v1/keys/{}", doomed.id),
        Some(json!({"enabled": false})),
    );
    assert_eq!(status, 200, "{body}");
    let started = Instant::now();
    while chat(&stack, Some(&doomed.secret)).status() != 401 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the revocation never came"
        );
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "revoked through the survivor: 401 after {:?}",
        started.elapsed()
    );
    thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("worker");
    }

    // Every call billed once, through the survivor.
    let answered = answered.load(Ordering::Relaxed);
    until_usage_delivered(&stack);
    let billed = billed_calls(&stack, &key.id);
    eprintln!("{answered} calls answered, {billed} billed");
    assert_eq!(billed, answered);
}
