//! A restarted Envoy has no snapshot until it loads one: it holds requests for a while
//! (`first_snapshot_wait_ms`) rather than refusing them, then decides. A killed Envoy
//! loses only the usage records it had not flushed yet.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use keygate_e2e::api::{
    assert_error, billed_calls, client, create_key, until_synced, until_usage_delivered, CHAT,
};
use keygate_e2e::stack::Stack;
use serde_json::json;

/// The tests of this file take turns: the loss measured below is a few hundred
/// milliseconds of a loaded machine's timers, and the other test's restarts (two Envoys
/// and two key-services starting) would be in it.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn chat(envoy_url: &str, secret: &str) -> reqwest::blocking::Response {
    client()
        .post(format!("{envoy_url}{CHAT}"))
        .bearer_auth(secret)
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .expect("chat call")
}

#[test]
fn a_restarted_envoy_holds_requests_until_its_first_snapshot_then_decides() {
    let _turn = one_at_a_time();
    let mut stack = Stack::builder().concurrency(2).start();
    let key = create_key(&stack, json!({"name": "restart"}));
    assert_eq!(
        until_synced(|| chat(&stack.envoy_url, &key.secret)).status(),
        200
    );

    // Envoy restarts while the key-service is away: no snapshot anywhere. The key-service
    // is back 700 ms later; the requests made meanwhile wait for the snapshot and pass.
    stack.kill("key-service");
    stack.restart_envoy();
    let envoy_url = stack.envoy_url.clone();
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let (url, secret) = (envoy_url.clone(), key.secret.clone());
            thread::spawn(move || chat(&url, &secret))
        })
        .collect();
    thread::sleep(Duration::from_millis(700));
    stack.restart_key_service();
    for call in waiting {
        let res = call.join().expect("call");
        assert_eq!(res.status(), 200, "{:?}", res.text());
    }
    // Without a key-service the hold ends, with the same 503 as before.
    stack.kill("key-service");
    stack.restart_envoy();
    let res = chat(&stack.envoy_url, &key.secret);
    assert_error(res, 503, "key_service_unavailable");
}

/// Envoy is killed (SIGKILL) and started again under steady traffic. Once it is back no
/// call is refused (the first ones wait for its first snapshot), and the usage records
/// that died with it (answered calls never billed) are at most what a tenth of a second
/// of traffic leaves unflushed, plus a batch in flight.
#[test]
fn envoy_killed_under_load_refuses_no_one_after_and_loses_little_usage() {
    let _turn = one_at_a_time();
    let mut stack = Stack::builder().concurrency(2).start();
    let key = create_key(&stack, json!({"name": "crash"}));
    assert_eq!(
        until_synced(|| chat(&stack.envoy_url, &key.secret)).status(),
        200
    );
    let url = Arc::new(RwLock::new(stack.envoy_url.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    // (when, status) of every answered call; failed connections are not answers.
    let answers = Arc::new(Mutex::new(Vec::<(Instant, u16)>::new()));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop, answers) = (url.clone(), stop.clone(), answers.clone());
            let secret = key.secret.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let to = url.read().expect("url").clone();
                    let sent = client()
                        .post(format!("{to}{CHAT}"))
                        .bearer_auth(&secret)
                        .json(&json!({"model": "gpt-4o-mini", "messages": []}))
                        .send();
                    if let Ok(res) = sent {
                        let status = res.status().as_u16();
                        answers
                            .lock()
                            .expect("answers")
                            .push((Instant::now(), status));
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    thread::sleep(Duration::from_secs(2));
    let killed = Instant::now();
    stack.restart_envoy();
    *url.write().expect("url") = stack.envoy_url.clone();
    let restarted = Instant::now();
    thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("worker");
    }

    let answers = answers.lock().expect("answers").clone();
    let after: Vec<u16> = answers
        .iter()
        .filter(|(at, _)| *at > restarted)
        .map(|(_, status)| *status)
        .collect();
    assert!(
        after.len() > 10,
        "too few calls after the restart: {}",
        after.len()
    );
    assert!(
        after.iter().all(|&s| s == 200),
        "refused after the restart: {after:?}"
    );
    let answered = answers.iter().filter(|(_, s)| *s == 200).count() as u64 + 1;
    let before = answers.iter().filter(|(at, _)| *at <= killed).count();
    let rate = before as f64 / (killed - started).as_secs_f64();
    // Every record of the new Envoy delivered (the old one's unflushed ones never come).
    until_usage_delivered(&stack);
    let billed = billed_calls(&stack, &key.id);
    let lost = answered.saturating_sub(billed);
    eprintln!(
        "{answered} calls answered 200, {billed} billed: {lost} records lost with the killed \
         Envoy, {:.0} ms of traffic at {rate:.0} calls/s",
        lost as f64 / rate * 1000.0
    );
    assert!(
        billed <= answered,
        "billed more than answered: {billed} > {answered}"
    );
    // Records leave every 100 ms; the bound is half a second of traffic, which a flush
    // of once a second (what this guards against) exceeds at any rate, while a loaded
    // 2-core machine, whose timers slip (seen: 24 lost at 60 calls/s, 400 ms, when the
    // CI ran Chromium suites), stays within it.
    assert!(
        lost as f64 <= rate * 0.5 + 5.0,
        "{lost} records lost at {rate:.0} calls/s"
    );
}
