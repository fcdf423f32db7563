//! Credit leases: what `POST /filter/v1/leases` takes and answers, and how usage reported
//! with a holder bills its leases.

use reqwest::Method;
use serde_json::{json, Value};

use crate::{Service, ADMIN, FILTER};

impl Service {
    async fn ask_leases(&self, body: Value, token: Option<&str>) -> crate::Reply {
        self.send(
            self.request(Method::POST, "/filter/v1/leases", token)
                .json(&body),
        )
        .await
    }
}

fn lease(subject: &str, spent: u64, need: u64, want: u64) -> Value {
    json!({"subject": subject, "spent": spent, "need": need, "want": want})
}

#[tokio::test]
async fn leases_need_the_filter_token() {
    let service = Service::start().await;
    let body = json!({"holder": "h1", "ttl_ms": 30_000, "leases": []});
    for token in [None, Some("wrong"), Some(ADMIN)] {
        let reply = service.ask_leases(body.clone(), token).await;
        assert_eq!(
            reply.error(),
            (401, "invalid_filter_token".into(), None),
            "{token:?}"
        );
    }
    let reply = service.ask_leases(body, Some(FILTER)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, json!({"leases": [], "ttl_ms": 30_000}));
}

#[tokio::test]
async fn a_bad_ask_is_refused_naming_its_field_not_its_value() {
    let service = Service::start().await;
    let ok = lease("k:key_abc", 0, 0, 10);
    let many: Vec<Value> = (0..1001)
        .map(|i| lease(&format!("k:key{i}"), 0, 0, 1))
        .collect();
    let ask = |holder: Value, ttl_ms: Value, leases: Value| json!({"holder": holder, "ttl_ms": ttl_ms, "leases": leases});
    let (h, ttl) = (json!("h"), json!(30_000));
    let long = format!("a:{}", "x".repeat(129));
    let negative = json!({"subject": "k:a", "spent": -1, "need": 0, "want": 0});
    let missing = json!({"subject": "k:a", "need": 0, "want": 0});
    let mut unknown = ask(h.clone(), ttl.clone(), json!([ok]));
    unknown["colour"] = json!(1);
    let cases = [
        (ask(json!(""), ttl.clone(), json!([ok])), "holder"),
        (
            ask(json!("sk-secret\n"), ttl.clone(), json!([ok])),
            "holder",
        ),
        (
            ask(json!("h".repeat(65)), ttl.clone(), json!([ok])),
            "holder",
        ),
        (ask(h.clone(), json!(999), json!([ok])), "ttl_ms"),
        (ask(h.clone(), json!(600_001), json!([ok])), "ttl_ms"),
        (ask(h.clone(), json!(-1), json!([ok])), "ttl_ms"),
        (ask(h.clone(), ttl.clone(), json!(many)), "leases"),
        (ask(h.clone(), ttl.clone(), json!([ok, ok])), "leases"),
        (ask(h.clone(), ttl.clone(), json!([negative])), "leases"),
        (ask(h.clone(), ttl.clone(), json!([missing])), "leases"),
        (unknown, "colour"),
        (json!({"ttl_ms": 30_000, "leases": []}), "holder"),
    ];
    for (body, field) in cases {
        let reply = service.ask_leases(body.clone(), Some(FILTER)).await;
        let (status, _, param) = reply.error();
        assert_eq!((status, param.as_deref()), (400, Some(field)), "{body}");
        assert!(!reply.text.contains("sk-secret"), "{}", reply.text);
    }
    // A subject this service cannot take is answered on its own, with nothing beyond what
    // was spent: it does not take the other leases of the ask down with it.
    let odd = ["sk-secret", "k:", long.as_str(), "m:key_abc:dollars:gpt-4o"];
    let mut leases: Vec<Value> = odd.iter().map(|s| lease(s, 7, 1, 1)).collect();
    leases.insert(2, ok.clone());
    let reply = service
        .ask_leases(ask(h.clone(), ttl.clone(), json!(leases)), Some(FILTER))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let answers = reply.body["leases"].as_array().unwrap().clone();
    let seen: Vec<(&str, bool, u64)> = answers
        .iter()
        .map(|a| {
            let subject = a["subject"].as_str().unwrap();
            (
                subject,
                a["limited"] == true,
                a["granted"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("sk-secret", true, 7),
            ("k:", true, 7),
            ("k:key_abc", true, 0),
            (long.as_str(), true, 7),
            ("m:key_abc:dollars:gpt-4o", true, 7),
        ]
    );
    let (status, _, param) = service
        .send(
            service
                .request(Method::POST, "/filter/v1/usage", Some(FILTER))
                .json(&json!({"records": [], "holder": "a\u{7}"})),
        )
        .await
        .error();
    assert_eq!((status, param.as_deref()), (400, Some("holder")));
}

/// Two Envoys share a key: each is granted part of what is left, their usage bills their
/// leases, and what is used plus what they hold never passes the quota.
#[tokio::test]
async fn holders_share_a_key_and_their_usage_bills_their_leases() {
    let service = Service::start().await;
    let put = service
        .request(Method::PUT, "/api/v1/models/gpt-4o", Some(ADMIN))
        .json(&json!({"input": 1_000_000, "output": 0}));
    assert_eq!(service.send(put).await.status, 201);
    let account = service
        .request(Method::POST, "/api/v1/accounts", Some(ADMIN))
        .json(&json!({"name": "team", "balance": 400}));
    assert_eq!(service.send(account).await.status, 201);
    let keys = service
        .create_ok(
            json!({"name": "shared", "account": "team", "unlimited_quota": false,
            "quota": 1_000}),
        )
        .await;
    let id = keys[0]["id"].as_str().unwrap();
    let free = service.create_ok(json!({"name": "free"})).await;
    let free_id = free[0]["id"].as_str().unwrap();
    let ask = |holder: &str, spent: u64, want: u64| {
        json!({"holder": holder, "ttl_ms": 30_000, "leases": [
            lease(&format!("k:{id}"), spent, 0, want),
            lease("a:team", spent, 0, want),
            lease(&format!("k:{free_id}"), 0, 0, want),
            lease("k:no-such-key", 9, 9, 9),
        ]})
    };
    let first = service
        .ask_leases(ask("envoy-1", 0, u64::MAX), Some(FILTER))
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(
        first.body,
        json!({"ttl_ms": 30_000, "leases": [
            {"subject": format!("k:{id}"), "limited": true, "granted": 500},
            {"subject": "a:team", "limited": true, "granted": 200},
            {"subject": format!("k:{free_id}"), "limited": false, "granted": 0},
            {"subject": "k:no-such-key", "limited": true, "granted": 9},
        ]})
    );
    let second = service
        .ask_leases(ask("envoy-2", 0, u64::MAX), Some(FILTER))
        .await;
    let granted: Vec<&Value> = second.body["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["granted"])
        .collect();
    assert_eq!(granted, [&json!(250), &json!(100), &json!(0), &json!(9)]);

    // envoy-1 spends 300 and reports it with its name.
    let report = service
        .request(Method::POST, "/filter/v1/usage", Some(FILTER))
        .json(
            &json!({"holder": "envoy-1", "records": [{"request_id": "r1", "key_id": id,
            "model": "gpt-4o", "input_tokens": 300, "output_tokens": 0}]}),
        );
    let report = service.send(report).await;
    assert_eq!(report.body["accepted"], 1, "{}", report.body);
    let rows = service.store.leases_on(&format!("k:{id}")).await.unwrap();
    let held: Vec<(i64, i64)> = rows.iter().map(|r| (r.granted, r.billed)).collect();
    assert_eq!(held, [(500, 300), (250, 0)]);
    let shown = service.admin_get(&format!("/api/v1/keys/{id}")).await.body;
    let used = shown["used_quota"].as_i64().unwrap();
    let outstanding: i64 = rows.iter().map(|r| r.outstanding()).sum();
    assert_eq!((used, outstanding), (300, 450));
    // The account was billed past envoy-1's lease on it: that lease holds nothing now.
    let team = service.store.leases_on("a:team").await.unwrap();
    assert_eq!((team[0].billed, team[0].outstanding()), (300, 0));

    // envoy-1 asks again with what it spent: half of what is free beyond envoy-2's 250.
    let again = service
        .ask_leases(ask("envoy-1", 300, 10_000), Some(FILTER))
        .await;
    assert_eq!(
        again.body["leases"][0]["granted"],
        300 + (1_000 - 300 - 250) / 2
    );
    // The account has 100 left, all of it held by envoy-2.
    assert_eq!(again.body["leases"][1]["granted"], 300);
    let rows = service.store.leases_on(&format!("k:{id}")).await.unwrap();
    let outstanding: i64 = rows.iter().map(|r| r.outstanding()).sum();
    assert!(used + outstanding <= 1_000, "{used} + {outstanding}");
    let metrics = service.admin_get("/metrics").await.text;
    assert!(
        metrics.contains("keygate_lease_subjects_total{answer=\"unlimited\"} 3"),
        "{metrics}"
    );
}
