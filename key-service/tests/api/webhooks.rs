//! Webhooks: alerts reach a receiver on loopback signed, each once (by id), and a
//! receiver that was down for a while gets everything once it is back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use key_service::alerts::sign;
use key_service::alerts::{self, AlertSettings};
use reqwest::Method;
use serde_json::{json, Value};

use crate::{Service, ADMIN, FILTER};

/// What a receiver saw: every event by id (a duplicate is counted, not stored twice),
/// and how many requests came with a bad signature.
#[derive(Default)]
struct Seen {
    secret: Mutex<String>,
    events: Mutex<BTreeMap<String, Value>>,
    copies: AtomicUsize,
    bad_signatures: AtomicUsize,
    /// The status it answers with (200 when up, 500 while "down").
    answer: AtomicU16,
}

async fn receive(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let status = StatusCode::from_u16(seen.answer.load(Ordering::SeqCst)).unwrap();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let timestamp: i64 = header(sign::TIMESTAMP_HEADER).parse().unwrap_or(-1);
    let secret = seen.secret.lock().unwrap().clone();
    if !sign::verify(&secret, timestamp, &body, &header(sign::SIGNATURE_HEADER)) {
        seen.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    if !status.is_success() {
        return status;
    }
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(header(sign::EVENT_ID_HEADER), event["id"].as_str().unwrap());
    assert_eq!(
        header(sign::EVENT_TYPE_HEADER),
        event["type"].as_str().unwrap()
    );
    seen.copies.fetch_add(1, Ordering::SeqCst);
    let id = event["id"].as_str().unwrap().to_owned();
    seen.events.lock().unwrap().insert(id, event);
    status
}

/// Serves a receiver on `listener`.
fn serve(listener: tokio::net::TcpListener, seen: Arc<Seen>) {
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(seen);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
}

async fn receiver() -> (String, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    seen.answer.store(200, Ordering::SeqCst);
    serve(listener, seen.clone());
    (url, seen)
}

/// Fast retries, so a test waits tenths of a second rather than hours.
fn fast() -> Arc<AlertSettings> {
    Arc::new(AlertSettings {
        poll_every: Duration::from_millis(20),
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(150),
        timeout: Duration::from_secs(2),
        ..AlertSettings::default()
    })
}

impl Service {
    async fn post(&self, path: &str, body: Value) -> crate::Reply {
        self.send(self.request(Method::POST, path, Some(ADMIN)).json(&body))
            .await
    }

    /// A webhook to `url`; its id and secret.
    async fn webhook(&self, body: Value) -> (String, String) {
        let created = self.post("/api/v1/webhooks", body).await;
        assert_eq!(created.status, 201, "{}", created.body);
        (
            created.body["id"].as_str().unwrap().to_owned(),
            created.body["secret"].as_str().unwrap().to_owned(),
        )
    }

    async fn bill(&self, request_id: &str, key_id: &str, credits: u64) {
        let record = json!({"request_id": request_id, "key_id": key_id, "model": "m",
            "input_tokens": credits, "cached_input_tokens": 0, "output_tokens": 0,
            "status": 200, "ts": 1_800_000_000});
        let reply = self
            .send(
                self.request(Method::POST, "/filter/v1/usage", Some(FILTER))
                    .json(&json!({"records": [record]})),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
}

/// Waits (up to 10 s) until the receiver holds `n` events.
async fn wait_for(seen: &Seen, n: usize) {
    for _ in 0..500 {
        if seen.events.lock().unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{} events arrived, not {n}: {:?}",
        seen.events.lock().unwrap().len(),
        types(seen)
    );
}

/// The types seen, with the threshold where there is one, sorted.
fn types(seen: &Seen) -> Vec<String> {
    let mut types: Vec<String> = seen
        .events
        .lock()
        .unwrap()
        .values()
        .map(|e| match e["data"]["threshold"].as_u64() {
            Some(t) => format!("{} {t}", e["type"].as_str().unwrap()),
            None => e["type"].as_str().unwrap().to_owned(),
        })
        .collect();
    types.sort();
    types
}

#[tokio::test]
async fn each_alert_arrives_once_and_signed() {
    let service = Service::start().await;
    alerts::spawn(service.store.clone(), fast(), Default::default()).unwrap();
    let (url, seen) = receiver().await;
    let (_, secret) = service.webhook(json!({ "url": url })).await;
    *seen.secret.lock().unwrap() = secret;
    // One credit per input token.
    let put = service
        .request(Method::PUT, "/api/v1/models/m", Some(ADMIN))
        .json(&json!({"input": 1_000_000, "output": 0}));
    assert_eq!(service.send(put).await.status, 201);
    let key = service
        .create_ok(json!({"name": "metered", "unlimited_quota": false, "quota": 100}))
        .await
        .remove(0);
    let id = key["id"].as_str().unwrap();

    service.bill("r1", id, 49).await;
    service.bill("r2", id, 1).await; // 49 -> 50: the 50 % threshold
    service.bill("r2", id, 1).await; // a retried report: no new alert
    service.bill("r3", id, 60).await; // 50 -> 110: 80 %, 100 % and exhausted
    service.bill("r4", id, 5).await; // past everything: nothing new
    service
        .post(&format!("/api/v1/keys/{id}/rotate"), json!({}))
        .await;
    let path = format!("/api/v1/keys/{id}");
    let disable = service
        .request(Method::PATCH, &path, Some(ADMIN))
        .json(&json!({"enabled": false}));
    assert_eq!(service.send(disable).await.status, 200);
    // Disabling a disabled key again is no new event.
    let again = service
        .request(Method::PATCH, &path, Some(ADMIN))
        .json(&json!({"enabled": false}));
    assert_eq!(service.send(again).await.status, 200);

    wait_for(&seen, 6).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // room for a stray extra
    assert_eq!(
        types(&seen),
        [
            "key.disabled",
            "key.exhausted",
            "key.rotated",
            "key.threshold 100",
            "key.threshold 50",
            "key.threshold 80"
        ]
    );
    assert_eq!(seen.copies.load(Ordering::SeqCst), 6, "one copy of each");
    assert_eq!(seen.bad_signatures.load(Ordering::SeqCst), 0);
    let events = seen.events.lock().unwrap().clone();
    let eighty = events
        .values()
        .find(|e| e["data"]["threshold"] == 80)
        .unwrap();
    assert_eq!(
        eighty["data"],
        json!({"key": {"id": id, "name": "metered", "account": "default"},
            "threshold": 80, "budget": 100, "used": 110, "period_start": null})
    );
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains("sk-"), "no secret in a payload: {text}");
}

#[tokio::test]
async fn a_receiver_down_for_a_while_receives_everything_afterwards() {
    let service = Service::start().await;
    alerts::spawn(service.store.clone(), fast(), Default::default()).unwrap();
    // A port nothing listens on yet: connections are refused.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let url = format!("http://{addr}/hook");
    let (webhook, secret) = service.webhook(json!({ "url": url })).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let key = service
            .create_ok(json!({ "name": format!("k{n}") }))
            .await
            .remove(0);
        ids.push(key["id"].as_str().unwrap().to_owned());
        let patch = service
            .request(
                Method::PATCH,
                &format!("/api/v1/keys/{}", ids[n]),
                Some(ADMIN),
            )
            .json(&json!({"enabled": false}));
        assert_eq!(service.send(patch).await.status, 200);
    }
    let tested = service
        .post(&format!("/api/v1/webhooks/{webhook}/test"), json!({}))
        .await;
    assert_eq!(tested.status, 202, "{}", tested.body);

    // Refused for a while: attempts fail and are retried.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let log = service
        .admin_get(&format!(
            "/api/v1/webhooks/{webhook}/deliveries?status=pending"
        ))
        .await;
    assert_eq!(log.body["total"], 4, "{}", log.body);
    let first = &log.body["deliveries"][0];
    assert!(first["attempts"].as_i64().unwrap() >= 2, "{first}");
    assert_eq!(first["last_error"], "could not connect");

    // Then up but failing (500), then well.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let seen = Arc::new(Seen::default());
    *seen.secret.lock().unwrap() = secret;
    seen.answer.store(500, Ordering::SeqCst);
    serve(listener, seen.clone());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(seen.events.lock().unwrap().is_empty());
    let log = service
        .admin_get(&format!("/api/v1/webhooks/{webhook}/deliveries"))
        .await;
    assert_eq!(
        log.body["deliveries"][0]["last_status"], 500,
        "{}",
        log.body
    );
    seen.answer.store(200, Ordering::SeqCst);

    wait_for(&seen, 4).await;
    assert_eq!(
        types(&seen),
        ["key.disabled", "key.disabled", "key.disabled", "test"]
    );
    assert_eq!(seen.bad_signatures.load(Ordering::SeqCst), 0);
    // The receiver sees an event before the sender records its 200: the log may lag the
    // last delivery by a moment.
    let delivered = format!("/api/v1/webhooks/{webhook}/deliveries?status=delivered");
    let mut done = service.admin_get(&delivered).await;
    for _ in 0..100 {
        if done.body["total"] == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        done = service.admin_get(&delivered).await;
    }
    assert_eq!(done.body["total"], 4, "{}", done.body);
    assert_eq!(done.body["deliveries"][0]["last_status"], 200);
}

#[tokio::test]
async fn webhooks_are_managed_without_showing_their_secret_again() {
    let service = Service::start().await;
    let bad = service
        .post("/api/v1/webhooks", json!({"url": "ftp://example.com/x"}))
        .await;
    assert_eq!(
        bad.error(),
        (400, "invalid_value".into(), Some("url".into()))
    );
    let bad = service
        .post(
            "/api/v1/webhooks",
            json!({"url": "http://127.0.0.1:1/x", "events": ["key.nope"]}),
        )
        .await;
    assert_eq!(bad.error().2.as_deref(), Some("events"));
    let bad = service
        .post(
            "/api/v1/webhooks",
            json!({"url": "http://127.0.0.1:1/x", "account": "nobody"}),
        )
        .await;
    assert_eq!(bad.error().2.as_deref(), Some("account"));

    let (id, secret) = service
        .webhook(json!({"url": "http://127.0.0.1:1/x", "events": ["key.disabled"]}))
        .await;
    assert!(
        secret.starts_with("whsec_") && secret.len() == 38,
        "{secret}"
    );
    let listed = service.admin_get("/api/v1/webhooks").await;
    assert_eq!(listed.body["webhooks"][0]["id"], id.as_str());
    let shown = service.admin_get(&format!("/api/v1/webhooks/{id}")).await;
    assert_eq!(shown.body["events"], json!(["key.disabled"]));
    assert!(!listed.text.contains(&secret) && !shown.text.contains(&secret));
    assert!(shown.body.get("secret").is_none());

    let rotated = service
        .post(&format!("/api/v1/webhooks/{id}/rotate-secret"), json!({}))
        .await;
    let new = rotated.body["secret"].as_str().unwrap();
    assert!(new.starts_with("whsec_") && new != secret);

    let path = format!("/api/v1/webhooks/{id}");
    let patch = service
        .request(Method::PATCH, &path, Some(ADMIN))
        .json(&json!({"enabled": false, "events": []}));
    let patched = service.send(patch).await;
    assert_eq!(
        (&patched.body["enabled"], &patched.body["events"]),
        (&json!(false), &json!([]))
    );
    let test = service
        .post(&format!("/api/v1/webhooks/{id}/test"), json!({}))
        .await;
    assert_eq!(test.error().0, 409);
    let bad = service
        .admin_get(&format!("/api/v1/webhooks/{id}/deliveries?status=lost"))
        .await;
    assert_eq!(bad.error().2.as_deref(), Some("status"));

    let gone = service
        .send(service.request(Method::DELETE, &path, Some(ADMIN)))
        .await;
    assert_eq!(gone.status, 204);
    assert_eq!(service.admin_get(&path).await.error().0, 404);
    let unauthorised = service
        .send(service.request(Method::GET, "/api/v1/webhooks", None))
        .await;
    assert_eq!(unauthorised.status, 401);
}

#[tokio::test]
async fn an_account_webhook_hears_only_its_accounts_events_of_its_types() {
    let service = Service::start().await;
    assert_eq!(
        service
            .post("/api/v1/accounts", json!({"name": "acme"}))
            .await
            .status,
        201
    );
    let (acme, _) = service
        .webhook(json!({"url": "http://127.0.0.1:1/x", "account": "acme",
            "events": ["key.disabled"]}))
        .await;
    let (global, _) = service
        .webhook(json!({"url": "http://127.0.0.1:1/y"}))
        .await;
    for (name, account) in [("a", "acme"), ("d", "default")] {
        let key = service
            .create_ok(json!({"name": name, "account": account}))
            .await
            .remove(0);
        let id = key["id"].as_str().unwrap();
        let patch = service
            .request(Method::PATCH, &format!("/api/v1/keys/{id}"), Some(ADMIN))
            .json(&json!({"enabled": false}));
        assert_eq!(service.send(patch).await.status, 200);
        service
            .post(&format!("/api/v1/keys/{id}/rotate"), json!({}))
            .await;
    }
    let log = |id: String| {
        let service = &service;
        async move {
            let reply = service
                .admin_get(&format!("/api/v1/webhooks/{id}/deliveries"))
                .await;
            let mut kinds: Vec<String> = reply.body["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    format!(
                        "{} {}",
                        d["event_type"].as_str().unwrap(),
                        d["payload"]["data"]["key"]["account"].as_str().unwrap()
                    )
                })
                .collect();
            kinds.sort();
            kinds
        }
    };
    assert_eq!(log(acme).await, ["key.disabled acme"]);
    assert_eq!(
        log(global).await,
        [
            "key.disabled acme",
            "key.disabled default",
            "key.rotated acme",
            "key.rotated default"
        ]
    );
}

#[tokio::test]
async fn expiry_and_rotation_reminders_are_written_once_per_date() {
    let service = Service::start().await;
    let (webhook, _) = service
        .webhook(json!({"url": "http://127.0.0.1:1/x"}))
        .await;
    service
        .create_ok(json!({"name": "soon", "expires_in": "2d"}))
        .await;
    service
        .create_ok(json!({"name": "later", "expires_in": "30d"}))
        .await;
    let due = service
        .create_ok(json!({"name": "due", "rotate_by": "2001-01-01T00:00:00Z"}))
        .await
        .remove(0);
    let settings = AlertSettings::default();
    let now = key_service::expiry::now();
    let scan = alerts::scan::scan_once(&service.store, &settings, now);
    assert_eq!(scan.await.unwrap(), 2);
    let again = alerts::scan::scan_once(&service.store, &settings, now + 60);
    assert_eq!(again.await.unwrap(), 0, "each date is reminded of once");

    // A new rotation date, once passed, reminds again.
    let id = due["id"].as_str().unwrap();
    let patch = service
        .request(Method::PATCH, &format!("/api/v1/keys/{id}"), Some(ADMIN))
        .json(&json!({"rotate_by": "2002-01-01T00:00:00Z"}));
    assert_eq!(service.send(patch).await.status, 200);
    let third = alerts::scan::scan_once(&service.store, &settings, now + 120);
    assert_eq!(third.await.unwrap(), 1);

    let log = service
        .admin_get(&format!("/api/v1/webhooks/{webhook}/deliveries"))
        .await;
    let mut kinds: Vec<String> = log.body["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            format!(
                "{} {}",
                d["event_type"].as_str().unwrap(),
                d["payload"]["data"]["key"]["name"].as_str().unwrap()
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "key.expiring soon",
            "key.rotation_due due",
            "key.rotation_due due"
        ]
    );
}
