//! The money path against a hostile key holder (issue 16), in the real Envoy against the
//! real key-service, on SQLite and on PostgreSQL: each case is a request sequence a tenant
//! with one valid key and a socket could send, and what must hold afterwards.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread::sleep;
use std::time::{Duration, Instant};

use keygate_e2e::api::{admin, client, create_key, filter_stat, until_synced, CreatedKey};
use keygate_e2e::stack::Stack;
use reqwest::Method;
use serde_json::{json, Value};

const GEMINI: &str = "/v1beta/models/gemini-2.0-flash:generateContent";

/// Prices a model at `credits` per token, in and out.
fn price(stack: &Stack, model: &str, credits: u64) {
    let (status, body) = admin(
        stack,
        Method::PUT,
        &format!("/api/v1/models/{model}"),
        Some(json!({"input": credits * 1_000_000, "output": credits * 1_000_000})),
    );
    assert_eq!(status, 201, "{body}");
}

/// Sends `head` and `body` on a new connection, then closes its sending side and reads
/// whatever Envoy answers (possibly nothing) until it closes too or 5 s pass.
fn raw(stack: &Stack, head: &str, body: &[u8]) -> String {
    let addr = stack.envoy_url.trim_start_matches("http://");
    let mut conn = TcpStream::connect(addr).expect("connect to Envoy");
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(body).unwrap();
    // Long enough for Envoy to have decided on the headers and passed the bytes on.
    sleep(Duration::from_millis(300));
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// The usage log's rows for one key, waiting until there are at least `n` (at most 15 s).
fn usage_rows(stack: &Stack, key: &CreatedKey, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, page) = admin(
            stack,
            Method::GET,
            &format!("/api/v1/usage?key_id={}&per_page=100", key.id),
            None,
        );
        let rows = page["usage"].as_array().cloned().unwrap_or_default();
        if status == 200 && rows.len() >= n || Instant::now() > deadline {
            assert_eq!(status, 200, "{page}");
            return rows;
        }
        sleep(Duration::from_millis(200));
    }
}

fn gemini_body() -> Value {
    json!({"contents": [{"parts": [{"text": "two words"}]}]})
}

fn gemini(stack: &Stack, secret: &str) -> reqwest::blocking::Response {
    client()
        .post(format!("{}{GEMINI}", stack.envoy_url))
        .header("x-goog-api-key", secret)
        .json(&gemini_body())
        .send()
        .expect("gemini request")
}

/// A request that says its body is 2^62 bytes long (the largest the upstream takes without
/// answering at once), sends ten, and is abandoned, three times, at 4 credits a token:
/// it is billed for the ten bytes that arrived, never from the header; the key-service's
/// numbers stay whole; keys made afterwards still reach Envoy. (2^64 - 1 is answered by
/// the mock upstream at once, 431, so nothing is estimated from it.)
fn a_lying_length_wedges_nothing(stack: Stack) {
    price(&stack, "gemini-2.0-flash", 4);
    let key = create_key(&stack, json!({"name": "liar"}));
    assert_eq!(until_synced(|| gemini(&stack, &key.secret)).status(), 200);
    let failures_before = filter_stat(&stack, "keygate.sync_failures").unwrap_or(0);

    let head = format!(
        "POST {GEMINI} HTTP/1.1\r\nhost: gateway\r\nx-goog-api-key: {}\r\n\
         content-type: application/json\r\ncontent-length: 4611686018427387904\r\n\r\n",
        key.secret
    );
    for _ in 0..3 {
        raw(&stack, &head, b"{\"contents");
    }
    let rows = usage_rows(&stack, &key, 4);
    assert_eq!(rows.len(), 4, "{rows:#?}");
    let abandoned: Vec<&Value> = rows.iter().filter(|r| r["status"] == 499).collect();
    assert_eq!(abandoned.len(), 3, "{rows:#?}");
    for row in abandoned {
        // Ten bytes arrived: a token per 4 bytes, rounded up.
        assert_eq!(row["input_tokens"], 3, "{row}");
        assert_eq!(row["estimated"], true, "{row}");
    }

    let (status, keys) = admin(&stack, Method::GET, "/api/v1/keys", None);
    assert_eq!(status, 200, "{keys}");
    for shown in keys["keys"].as_array().unwrap() {
        assert!(shown["used_quota"].is_i64(), "{shown}");
    }
    // A key made afterwards is admitted: the snapshot still syncs.
    let later = create_key(&stack, json!({"name": "later"}));
    assert_eq!(until_synced(|| gemini(&stack, &later.secret)).status(), 200);
    assert_eq!(
        filter_stat(&stack, "keygate.sync_failures").unwrap_or(0),
        failures_before
    );
}

#[test]
fn a_lying_length_wedges_nothing_on_sqlite() {
    a_lying_length_wedges_nothing(Stack::start());
}

#[test]
fn a_lying_length_wedges_nothing_on_postgres() {
    a_lying_length_wedges_nothing(Stack::builder().postgres().start());
}

/// Key A makes a normal call, then key B, on the same connection (so the same worker and
/// the same usage report), sends `{"model": ""}`: B's odd record is normalised and billed,
/// and A's record is never dropped with it.
fn an_odd_record_voids_no_other_bill(stack: Stack) {
    price(&stack, "gpt-4o-mini", 1);
    let a = create_key(&stack, json!({"name": "a"}));
    let b = create_key(&stack, json!({"name": "b"}));
    let chat = |http: &reqwest::blocking::Client, secret: &str, model: &str| {
        http.post(format!("{}/v1/chat/completions", stack.envoy_url))
            .bearer_auth(secret)
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi there"}]}))
            .send()
            .expect("chat request")
    };
    let http = client();
    assert_eq!(
        until_synced(|| chat(&http, &a.secret, "gpt-4o-mini")).status(),
        200
    );
    assert_eq!(
        until_synced(|| chat(&http, &b.secret, "gpt-4o-mini")).status(),
        200
    );
    // Let the syncing calls' usage go out first.
    usage_rows(&stack, &a, 1);
    usage_rows(&stack, &b, 1);
    let a_before = usage_rows(&stack, &a, 1).len();
    let b_before = usage_rows(&stack, &b, 1).len();

    assert_eq!(chat(&http, &a.secret, "gpt-4o-mini").status(), 200);
    let odd = chat(&http, &b.secret, "");
    assert!(odd.status().is_success(), "{}", odd.status());
    let a_rows = usage_rows(&stack, &a, a_before + 1);
    assert_eq!(
        a_rows.len(),
        a_before + 1,
        "A's call is billed: {a_rows:#?}"
    );
    let b_rows = usage_rows(&stack, &b, b_before + 1);
    assert_eq!(
        b_rows.len(),
        b_before + 1,
        "B's call is billed: {b_rows:#?}"
    );
    assert_eq!(b_rows[0]["model"], "unknown", "{b_rows:#?}");
    assert_eq!(filter_stat(&stack, "keygate.usage_dropped").unwrap_or(0), 0);
}

#[test]
fn an_odd_record_voids_no_other_bill_on_sqlite() {
    an_odd_record_voids_no_other_bill(Stack::start());
}

#[test]
fn an_odd_record_voids_no_other_bill_on_postgres() {
    an_odd_record_voids_no_other_bill(Stack::builder().postgres().start());
}
