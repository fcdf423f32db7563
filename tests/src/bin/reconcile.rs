//! `keygate-reconcile`: exact billing under load. The real Envoy (two workers) with
//! keygate in front of the mock upstream, callers at full speed over several keys with
//! streamed and plain chat calls for `--seconds`, the key-service killed and started again
//! half-way. Then, per key, the tokens the upstream reported (its `GET /mock/usage`) against
//! the tokens the key-service billed (at one credit per token, the key's `used_quota`).
//! Prints both sums and fails if any key differs.

// A benchmark driver: a failed step is a failed run, said loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::thread::{self, sleep};
use std::time::{Duration, Instant};

use clap::Parser;
use keygate_e2e::api::{admin, client, create_key, filter_stat, until_synced, CreatedKey};
use keygate_e2e::stack::Stack;
use reqwest::Method;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "tokens the upstream reported against tokens the key-service billed")]
struct Args {
    /// Seconds of load.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Keys the load is spread over.
    #[arg(long, default_value_t = 8)]
    keys: usize,
    /// Callers, each with one call at a time.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds to wait after the load for billing to catch up.
    #[arg(long, default_value_t = 300)]
    catch_up: u64,
    #[arg(long, default_value = "bench/results/reconciliation.md")]
    out: PathBuf,
}

/// The `n`th call's body: every third a stream that asks for its usage, every third one
/// a stream that does not (the filter adds the request for it and takes it back out),
/// varying output lengths.
fn body(n: u64) -> Value {
    let mut body = json!({"model": "gpt-4o-mini", "max_tokens": n % 7 + 1,
        "messages": [{"role": "user", "content": "reconcile these words please"}]});
    match n % 3 {
        1 => {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        2 => body["stream"] = json!(true),
        _ => {}
    }
    body
}

/// `connections` callers, each one call at a time over its own keep-alive connection,
/// round-robin over the keys, until `until`; a call under way then is finished, never cut
/// (a cut call is billed an estimate, which could not match). Returns the calls made.
fn load(url: &str, secrets: &[String], connections: usize, until: Instant) -> u64 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..connections)
            .map(|c| {
                let url = format!("{url}/v1/chat/completions");
                let secrets = secrets.to_vec();
                tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .pool_max_idle_per_host(1)
                        .build()
                        .unwrap();
                    let mut n = c as u64;
                    let mut calls = 0u64;
                    while Instant::now() < until {
                        let secret = &secrets[n as usize % secrets.len()];
                        let res = client
                            .post(&url)
                            .bearer_auth(secret)
                            .json(&body(n))
                            .send()
                            .await
                            .expect("call");
                        assert_eq!(res.status(), 200, "a call failed under load");
                        res.bytes().await.expect("answer");
                        calls += 1;
                        n += connections as u64;
                    }
                    calls
                })
            })
            .collect();
        let mut calls = 0;
        for task in tasks {
            calls += task.await.unwrap();
        }
        calls
    })
}

fn main() {
    let args = Args::parse();
    let mut stack = Stack::builder().concurrency(2).start();
    let (status, _) = admin(
        &stack,
        Method::PUT,
        "/api/v1/models/gpt-4o-mini",
        Some(json!({"input": 1_000_000, "output": 1_000_000})),
    );
    assert_eq!(status, 201, "set the price");
    let keys: Vec<CreatedKey> = (0..args.keys)
        .map(|i| create_key(&stack, json!({"name": format!("reconcile-{i}")})))
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
    eprintln!(
        "load: {} s over {} keys, the key-service restarted half-way",
        args.seconds, args.keys
    );
    let secrets: Vec<String> = keys.iter().map(|k| k.secret.clone()).collect();
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let caller = {
        let url = stack.envoy_url.clone();
        let connections = args.connections;
        thread::spawn(move || load(&url, &secrets, connections, until))
    };
    sleep(Duration::from_secs(args.seconds / 2));
    stack.kill("key-service");
    eprintln!("key-service killed");
    sleep(Duration::from_secs(2));
    stack.restart_key_service();
    eprintln!("key-service started again");
    let requests = caller.join().unwrap();
    let elapsed = started.elapsed().as_secs_f64();

    // Every call's usage reaches the key-service: wait for the totals to agree (each VM
    // sends what it holds on its next ticks).
    let upstream = || -> Value {
        client()
            .get(format!("{}/mock/usage", stack.upstream_url))
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    let billed = |key: &CreatedKey| -> u64 {
        let (status, body) = admin(
            &stack,
            Method::GET,
            &format!("/api/v1/keys/{}", key.id),
            None,
        );
        assert_eq!(status, 200);
        body["used_quota"].as_u64().unwrap()
    };
    let tally = upstream();
    let reported = |key: &CreatedKey| -> (u64, u64) {
        let t = &tally[&key.id];
        (
            t["calls"].as_u64().unwrap_or(0),
            t["input_tokens"].as_u64().unwrap_or(0) + t["output_tokens"].as_u64().unwrap_or(0),
        )
    };
    let load_end = Instant::now();
    let deadline = load_end + Duration::from_secs(args.catch_up);
    let mut rows: Vec<(u64, u64, u64)>;
    loop {
        rows = keys
            .iter()
            .map(|k| {
                let (calls, tokens) = reported(k);
                (calls, tokens, billed(k))
            })
            .collect();
        if rows.iter().all(|(_, up, bill)| up == bill) || Instant::now() > deadline {
            break;
        }
        sleep(Duration::from_millis(500));
    }
    let caught_up = load_end.elapsed().as_secs_f64();
    let dropped = filter_stat(&stack, "keygate.usage_dropped").unwrap_or(0);
    let retried = filter_stat(&stack, "keygate.usage_report_failures").unwrap_or(0);

    let mut report = String::new();
    let _ = writeln!(
        report,
        "# Reconciliation: tokens reported upstream against tokens billed\n\n\
         `target/release/keygate-reconcile --seconds {} --keys {} --connections {}` (from \
         `make bench`): Envoy with 2 workers and keygate in front of the mock upstream, \
         {} callers at full speed for {} s over {} keys (each finishes its last call, so \
         none is cut and billed an estimate), plain and streamed chat calls (a third of \
         them streams that do not ask for their usage), the key-service killed and started \
         again half-way. One credit per token, so a key's `used_quota` is the tokens billed.\n",
        args.seconds, args.keys, args.connections, args.connections, args.seconds, args.keys
    );
    let rate = requests as f64 / elapsed;
    let _ = writeln!(
        report,
        "{requests} calls, {rate:.0} per second. Billing caught up {caught_up:.1} s after the \
         load ended; {retried} usage reports failed and were retried (the restart), \
         {dropped} records dropped.\n"
    );
    let _ = writeln!(
        report,
        "| key | calls answered upstream | tokens reported upstream | tokens billed | difference |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|");
    for (key, (calls, up, bill)) in keys.iter().zip(&rows) {
        let _ = writeln!(
            report,
            "| {} | {calls} | {up} | {bill} | {} |",
            key.id,
            i128::from(*bill) - i128::from(*up)
        );
    }
    let (calls, up, bill) = rows
        .iter()
        .fold((0, 0, 0), |(c, u, b), r| (c + r.0, u + r.1, b + r.2));
    let _ = writeln!(
        report,
        "| **all** | {calls} | {up} | {bill} | {} |",
        i128::from(bill) - i128::from(up)
    );
    print!("{report}");
    if let Some(dir) = args.out.parent() {
        fs::create_dir_all(dir).unwrap();
    }
    fs::write(&args.out, &report).unwrap();
    assert_eq!(
        calls, requests,
        "every call made was answered upstream once"
    );
    assert!(
        rows.iter().all(|(_, up, bill)| up == bill),
        "billed tokens differ from reported ones"
    );
}
