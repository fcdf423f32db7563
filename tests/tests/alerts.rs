//! Alerts end to end (issue 20): calls through the real Envoy spend a key's monthly budget,
//! and a webhook receiver on loopback gets the key's 50 % and 80 % crossings, then its
//! disabling, each once, each signed as docs/alerts.md says. The signature is checked
//! here with the HMAC crates directly, not with the key-service's own code.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use keygate_e2e::api::{admin, create_key, metered_cost, send_metered, until_synced};
use keygate_e2e::stack::Stack;
use reqwest::Method;
use serde_json::{json, Value};

/// One delivery as the receiver read it: lower-case header names, and the body.
type Delivery = (HashMap<String, String>, Vec<u8>);

/// A receiver on loopback that answers every POST 200 and keeps what came.
fn receiver() -> (String, Arc<Mutex<Vec<Delivery>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&seen);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = HashMap::new();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap(); // The request line.
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                let Some((name, value)) = line.trim_end().split_once(':') else {
                    break;
                };
                headers.insert(name.to_ascii_lowercase(), value.trim().to_owned());
            }
            let length = headers["content-length"].parse().unwrap();
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            kept.lock().unwrap().push((headers, body));
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, seen)
}

/// `sha256=` and the hex HMAC-SHA256 of `"{timestamp}.{body}"` under `secret`.
fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[test]
fn spending_through_envoy_alerts_each_threshold_once_signed() {
    let stack = Stack::builder()
        .key_service_env("KEYGATE_WEBHOOK_POLL_MS", "100")
        .start();
    let (url, seen) = receiver();
    let (status, hook) = admin(
        &stack,
        Method::POST,
        "/api/v1/webhooks",
        Some(json!({"url": url})),
    );
    assert_eq!(status, 201, "{hook}");
    let secret = hook["secret"]
        .as_str()
        .expect("the secret, shown once")
        .to_owned();
    let (status, body) = admin(
        &stack,
        Method::PUT,
        "/api/v1/models/gpt-4o-mini",
        Some(json!({"input": 1_000_000, "output": 1_000_000})),
    );
    assert_eq!(status, 201, "{body}");
    // Four calls spend 80 % of the month's quota, and of the day's cap on the model.
    let cost = metered_cost();
    let key = create_key(
        &stack,
        json!({"name": "alerted", "unlimited_quota": false, "quota": 5 * cost,
            "quota_period": "month",
            "model_caps": {"gpt-4o-*": {"budget": 5 * cost, "period": "day"}}}),
    );
    let first = until_synced(|| send_metered(&stack.envoy_url, &key.secret, 0));
    assert_eq!(first.status(), 200);
    for _ in 0..3 {
        assert_eq!(send_metered(&stack.envoy_url, &key.secret, 0).status(), 200);
    }
    let (status, _) = admin(
        &stack,
        Method::PATCH,
        &format!("/api/v1/keys/{}", key.id),
        Some(json!({"enabled": false})),
    );
    assert_eq!(status, 200);

    let wanted = [
        "key.threshold",
        "key.threshold",
        "model_cap.threshold",
        "model_cap.threshold",
        "key.disabled",
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().len() < wanted.len() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    // A moment more: nothing else may come.
    thread::sleep(Duration::from_millis(1_500));
    let deliveries = seen.lock().unwrap().clone();
    let mut events: Vec<Value> = Vec::new();
    for (headers, body) in &deliveries {
        let timestamp = &headers["x-keygate-timestamp"];
        assert_eq!(
            headers["x-keygate-signature"],
            signature(&secret, timestamp, body),
            "a delivery's signature"
        );
        let event: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(headers["x-keygate-event-id"], event["id"].as_str().unwrap());
        assert!(!String::from_utf8_lossy(body).contains(&key.secret));
        events.push(event);
    }
    let mut kinds: Vec<(String, Value)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["data"]["threshold"].clone(),
            )
        })
        .collect();
    kinds.sort_by_key(|(kind, threshold)| (kind.clone(), threshold.to_string()));
    assert_eq!(
        kinds,
        [
            ("key.disabled".to_owned(), Value::Null),
            ("key.threshold".to_owned(), json!(50)),
            ("key.threshold".to_owned(), json!(80)),
            ("model_cap.threshold".to_owned(), json!(50)),
            ("model_cap.threshold".to_owned(), json!(80)),
        ],
        "each alert once: {events:#?}"
    );
    let cap = events
        .iter()
        .find(|e| e["type"] == "model_cap.threshold" && e["data"]["threshold"] == 80)
        .unwrap();
    let data = &cap["data"];
    assert_eq!(
        (
            &data["model"],
            &data["unit"],
            &data["budget"],
            &data["used"]
        ),
        (
            &json!("gpt-4o-*"),
            &json!("credits"),
            &json!(5 * cost),
            &json!(4 * cost)
        ),
        "{cap}"
    );
    assert_eq!(data["key"]["id"], key.id.as_str());
    let crossing = events
        .iter()
        .find(|e| e["type"] == "key.threshold" && e["data"]["threshold"] == 80)
        .unwrap();
    assert_eq!(crossing["data"]["budget"], 5 * cost, "{crossing}");
    assert!(
        crossing["data"]["period_start"].is_string()
            || crossing["data"]["period_start"].is_number(),
        "{crossing}"
    );
}
