//! Usage reports from the filter: priced, billed once, logged, and visible to people.

use reqwest::Method;
use serde_json::{json, Value};

use crate::{Service, ADMIN, FILTER};

impl Service {
    async fn report(&self, records: Value, token: &str) -> crate::Reply {
        self.send(
            self.request(Method::POST, "/filter/v1/usage", Some(token))
                .json(&json!({ "records": records })),
        )
        .await
    }
}

fn record(request_id: &str, key_id: &str, input: u64, output: u64) -> Value {
    json!({"request_id": request_id, "key_id": key_id, "model": "gpt-4o",
        "input_tokens": input, "cached_input_tokens": 0, "output_tokens": output,
        "status": 200, "ts": 1_800_000_000})
}

#[tokio::test]
async fn reported_usage_is_billed_once_and_exhausts_the_key() {
    let service = Service::start().await;
    let put = service
        .request(Method::PUT, "/api/v1/models/gpt-4o", Some(ADMIN))
        .json(&json!({"input": 1_000_000, "output": 2_000_000}));
    assert_eq!(service.send(put).await.status, 201);
    let key = service
        .create_ok(json!({"name": "metered", "unlimited_quota": false, "quota": 100}))
        .await
        .remove(0);
    let id = key["id"].as_str().unwrap();

    // 10 in + 20 out = 10 * 1 + 20 * 2 = 50 credits.
    let first = service
        .report(json!([record("req-1", id, 10, 20)]), FILTER)
        .await;
    assert_eq!(first.status, 200);
    let version = service.snapshot().await.body["version"].clone();
    assert_eq!(
        first.body,
        json!({"accepted": 1, "duplicates": 0, "refused": 0, "version": version,
            "results": [{"request_id": "req-1", "result": "accepted"}]}),
        "the version that carries the billing"
    );
    let retried = service
        .report(json!([record("req-1", id, 10, 20)]), FILTER)
        .await;
    assert_eq!(
        retried.body,
        json!({"accepted": 0, "duplicates": 1, "refused": 0, "version": version,
            "results": [{"request_id": "req-1", "result": "duplicate"}]})
    );
    let shown = service.admin_get(&format!("/api/v1/keys/{id}")).await.body;
    assert_eq!(
        (
            shown["used_quota"].clone(),
            shown["remaining_quota"].clone()
        ),
        (json!(50), json!(50))
    );
    assert_eq!(shown["status"], "active");

    service
        .report(
            json!([
                record("req-2", id, 10, 20),
                record("req-3", "no-such-key", 1, 1)
            ]),
            FILTER,
        )
        .await;
    let shown = service.admin_get(&format!("/api/v1/keys/{id}")).await.body;
    assert_eq!(shown["status"], "exhausted");

    // The filter's next snapshot carries what is left.
    let snapshot = service.snapshot().await.body;
    let rec = snapshot["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap()
        .clone();
    assert_eq!(rec["remaining_quota"], 0);

    let log = service
        .admin_get(&format!("/api/v1/usage?key_id={id}"))
        .await;
    assert_eq!(log.status, 200);
    assert_eq!(log.body["total"], 2);
    let row = &log.body["usage"][0];
    assert_eq!(row["key_name"], "metered");
    assert_eq!(row["cost"], 50);
    assert_eq!(row["priced"], true);
    assert_eq!(row["ts"], "2027-01-15T08:00:00Z");
    let all = service
        .admin_get("/api/v1/usage?from=2027-01-15T08:00:00Z")
        .await;
    assert_eq!(all.body["total"], 3);
    let none = service
        .admin_get("/api/v1/usage?to=2027-01-15T08:00:00Z")
        .await;
    assert_eq!(none.body["total"], 0);
}

#[tokio::test]
async fn usage_needs_the_filter_token_and_good_records() {
    let service = Service::start().await;
    let with_admin = service.report(json!([record("r", "k", 1, 1)]), ADMIN).await;
    assert_eq!(with_admin.status, 401);
    let not_a_report = service
        .send(
            service
                .request(Method::POST, "/filter/v1/usage", Some(FILTER))
                .json(&json!({"records": 5})),
        )
        .await;
    assert_eq!(not_a_report.error().0, 400);
    let too_many: Vec<Value> = (0..1001)
        .map(|i| record(&format!("r{i}"), "k", 1, 1))
        .collect();
    let (status, _, param) = service.report(json!(too_many), FILTER).await.error();
    assert_eq!((status, param.as_deref()), (400, Some("records")));
    let (status, _, param) = service
        .admin_get("/api/v1/usage?from=yesterday")
        .await
        .error();
    assert_eq!((status, param.as_deref()), (400, Some("from")));
}

/// A record that cannot be billed safely is refused alone, with its reason; the records
/// beside it are billed; odd but billable values are normalised (issue 16's poison batch).
#[tokio::test]
async fn a_bad_record_is_refused_alone() {
    let service = Service::start().await;
    let key = service.create_ok(json!({"name": "k"})).await.remove(0);
    let id = key["id"].as_str().unwrap();
    let mut negative = record("neg", id, 1, 1);
    negative["output_tokens"] = json!(-1);
    let mut no_id = record("", id, 1, 1);
    no_id["request_id"] = json!("");
    let mut empty_model = record("empty-model", id, 5, 5);
    empty_model["model"] = json!("");
    let mut newer = record("newer", id, 1, 1);
    newer["colour"] = json!("red");
    let reply = service
        .report(
            json!([
                record("good", id, 1, 1),
                negative,
                no_id,
                empty_model,
                newer,
                7
            ]),
            FILTER,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let results = reply.body["results"].as_array().unwrap();
    let outcome: Vec<&str> = results
        .iter()
        .map(|r| r["result"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcome,
        ["accepted", "refused", "refused", "accepted", "accepted", "refused"],
        "{}",
        reply.body
    );
    assert_eq!(results[1]["request_id"], "neg");
    assert_eq!(results[1]["reason"], "output_tokens cannot be read");
    assert_eq!(
        (
            reply.body["accepted"].clone(),
            reply.body["refused"].clone()
        ),
        (json!(3), json!(3))
    );
    let log = service
        .admin_get(&format!("/api/v1/usage?key_id={id}"))
        .await
        .body;
    let models: Vec<&str> = log["usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["model"].as_str().unwrap())
        .collect();
    assert_eq!(models.len(), 3);
    assert!(models.contains(&"unknown"), "{models:?}");
    let metrics = service.admin_get("/metrics").await.text;
    assert!(
        metrics.contains("keygate_usage_records_total{result=\"refused\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_summary_adds_usage_up_per_hour_or_day_and_model() {
    let service = Service::start().await;
    let put = service
        .request(Method::PUT, "/api/v1/models/gpt-4o", Some(ADMIN))
        .json(&json!({"input": 1_000_000, "output": 1_000_000}));
    assert_eq!(service.send(put).await.status, 201);
    let key = service
        .create_ok(json!({"name": "charted"}))
        .await
        .remove(0);
    let id = key["id"].as_str().unwrap();
    // 1_800_000_000 is 2027-01-15T08:00:00Z.
    let at = |request_id: &str, ts: i64, model: &str| {
        let mut r = record(request_id, id, 10, 20);
        r["ts"] = json!(ts);
        r["model"] = json!(model);
        r
    };
    let records = json!([
        at("a", 1_800_000_000, "gpt-4o"),
        at("b", 1_800_003_599, "gpt-4o"),
        at("c", 1_800_003_600, "gpt-4o"),
        at("d", 1_800_000_100, "other")
    ]);
    assert_eq!(service.report(records, FILTER).await.status, 200);

    let window = "from=2027-01-15T00:00:00Z&to=2027-01-16T00:00:00Z";
    let hourly = service
        .admin_get(&format!("/api/v1/usage/summary?{window}&key_id={id}"))
        .await;
    assert_eq!(hourly.status, 200, "{}", hourly.body);
    assert_eq!(hourly.body["bucket"], "hour");
    let rows: Vec<_> = hourly.body["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["ts"].as_str().unwrap().to_owned(),
                b["model"].as_str().unwrap().to_owned(),
                b["requests"].as_i64().unwrap(),
                b["output_tokens"].as_i64().unwrap(),
                b["cost"].as_i64().unwrap(),
            )
        })
        .collect();
    let row = |ts: &str, model: &str, n, out, cost| (ts.to_owned(), model.to_owned(), n, out, cost);
    assert_eq!(
        rows,
        [
            row("2027-01-15T08:00:00Z", "gpt-4o", 2, 40, 60),
            row("2027-01-15T08:00:00Z", "other", 1, 20, 0),
            row("2027-01-15T09:00:00Z", "gpt-4o", 1, 20, 30),
        ]
    );
    let daily = service
        .admin_get(&format!(
            "/api/v1/usage/summary?{window}&bucket=day&model=gpt-4o"
        ))
        .await;
    assert_eq!(daily.body["buckets"][0]["requests"], 3, "{}", daily.body);
    assert_eq!(daily.body["buckets"].as_array().unwrap().len(), 1);

    for (query, param) in [
        ("bucket=week", "bucket"),
        ("from=2027-01-16T00:00:00Z&to=2027-01-15T00:00:00Z", "from"),
        ("from=2020-01-01T00:00:00Z&to=2027-01-01T00:00:00Z", "from"),
        ("from=yesterday", "from"),
        ("page=2", "page"),
    ] {
        let reply = service
            .admin_get(&format!("/api/v1/usage/summary?{query}"))
            .await;
        assert_eq!(
            reply.error(),
            (400, reply.error().1.clone(), Some(param.into())),
            "{query}"
        );
    }
    let anonymous = service
        .send(service.request(Method::GET, "/api/v1/usage/summary", None))
        .await;
    assert_eq!(anonymous.status, 401);
}

/// Counts at `u64::MAX`, in 10,000 records at a price that makes each cost the most one
/// record may (1e15 credits, so together more than `i64::MAX`):
/// every number stays a whole number within its bound on both engines, and the key list
/// and the snapshot still answer.
#[tokio::test]
async fn counts_at_the_extremes_are_bounded_and_sums_saturate() {
    use key_service::pricing::{MAX_RECORD_COST, MAX_RECORD_TOKENS};
    let service = Service::start().await;
    let put = service
        .request(Method::PUT, "/api/v1/models/gpt-4o", Some(ADMIN))
        .json(&json!({"input": 1e15, "output": 1e15}));
    assert_eq!(service.send(put).await.status, 201);
    let account = service
        .request(Method::POST, "/api/v1/accounts", Some(ADMIN))
        .json(&json!({"name": "team", "balance": 5}));
    assert_eq!(service.send(account).await.status, 201);
    let key = service
        .create_ok(
            json!({"name": "huge", "account": "team", "unlimited_quota": false,
            "quota": 10}),
        )
        .await
        .remove(0);
    let id = key["id"].as_str().unwrap();
    for batch in 0..10 {
        let records: Vec<Value> = (0..1000)
            .map(|n| record(&format!("huge-{batch}-{n}"), id, u64::MAX, u64::MAX))
            .collect();
        let reply = service.report(json!(records), FILTER).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let shown = service.admin_get(&format!("/api/v1/keys/{id}")).await.body;
    // 10,000 records at the most a record costs would pass i64::MAX: it saturates.
    assert_eq!(shown["used_quota"], json!(i64::MAX), "{shown}");
    assert_eq!(shown["status"], "exhausted");
    let list = service.admin_get("/api/v1/keys").await;
    assert_eq!(list.status, 200, "{}", list.body);
    let accounts = service.admin_get("/api/v1/accounts").await.body;
    let team = accounts["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "team")
        .unwrap()
        .clone();
    assert_eq!(team["balance"], json!(-i64::MAX), "{team}");
    let log = service
        .admin_get(&format!("/api/v1/usage?key_id={id}&per_page=1"))
        .await
        .body;
    let row = &log["usage"][0];
    assert_eq!(row["input_tokens"], json!(MAX_RECORD_TOKENS), "{row}");
    assert_eq!(row["output_tokens"], json!(MAX_RECORD_TOKENS), "{row}");
    assert_eq!(row["cost"], json!(MAX_RECORD_COST), "{row}");
    assert_eq!(row["estimated"], true, "not what was reported: {row}");
    let snapshot = service.snapshot().await;
    assert_eq!(snapshot.status, 200);
    // The records' hour (ts 1,800,000,000) adds up to more than i64::MAX credits.
    let summary = service
        .admin_get("/api/v1/usage/summary?from=2027-01-15T00:00:00Z&to=2027-01-16T00:00:00Z")
        .await;
    assert_eq!(summary.status, 200, "{}", summary.body);
    let bucket = &summary.body["buckets"][0];
    assert_eq!(bucket["requests"], 10_000, "{bucket}");
    assert_eq!(bucket["cost"], json!(i64::MAX), "{bucket}");
    assert_eq!(
        bucket["input_tokens"],
        json!(10_000 * MAX_RECORD_TOKENS),
        "{bucket}"
    );
}

/// A model priced by a pattern (`gpt-4o-*`) is billed at the most specific one: dated
/// aliases are priced without listing each.
#[tokio::test]
async fn patterns_price_dated_aliases_most_specific_first() {
    let service = Service::start().await;
    for (name, credits) in [("gpt-4o-*", 1_000_000), ("gpt-4o-mini", 2_000_000)] {
        let put = service
            .request(Method::PUT, &format!("/api/v1/models/{name}"), Some(ADMIN))
            .json(&json!({"input": credits, "output": credits}));
        assert_eq!(service.send(put).await.status, 201);
    }
    let key = service.create_ok(json!({"name": "k"})).await.remove(0);
    let id = key["id"].as_str().unwrap();
    let at = |request_id: &str, model: &str| {
        let mut r = record(request_id, id, 10, 10);
        r["model"] = json!(model);
        r
    };
    let reply = service
        .report(
            json!([
                at("dated", "gpt-4o-2024-11-20"),
                at("exact", "gpt-4o-mini"),
                at("other", "o3")
            ]),
            FILTER,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let log = service
        .admin_get(&format!("/api/v1/usage?key_id={id}"))
        .await
        .body;
    let cost = |request_id: &str| {
        log["usage"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["request_id"] == request_id)
            .map(|r| (r["cost"].clone(), r["priced"].clone()))
            .unwrap()
    };
    assert_eq!(cost("dated"), (json!(20), json!(true)));
    assert_eq!(cost("exact"), (json!(40), json!(true)));
    assert_eq!(cost("other"), (json!(0), json!(false)));
}

/// Prompt-cache writes are billed at their own price, and shown in the log.
#[tokio::test]
async fn cache_writes_are_billed_at_their_own_price() {
    let service = Service::start().await;
    let put = service
        .request(Method::PUT, "/api/v1/models/claude", Some(ADMIN))
        .json(
            &json!({"input": 1_000_000, "output": 1_000_000, "cached_input": 100_000,
            "cache_write": 2_000_000}),
        );
    assert_eq!(service.send(put).await.status, 201);
    let key = service.create_ok(json!({"name": "k"})).await.remove(0);
    let id = key["id"].as_str().unwrap();
    // 1,000 in: 100 read from the cache, 300 written to it, 600 plain; 10 out.
    let mut r = record("cw", id, 1000, 10);
    r["model"] = json!("claude");
    r["cached_input_tokens"] = json!(100);
    r["cache_write_tokens"] = json!(300);
    assert_eq!(service.report(json!([r]), FILTER).await.status, 200);
    let log = service
        .admin_get(&format!("/api/v1/usage?key_id={id}"))
        .await
        .body;
    let row = &log["usage"][0];
    // 600 + 100 * 0.1 + 300 * 2 + 10 = 1220.
    assert_eq!(row["cost"], 1220, "{row}");
    assert_eq!(row["cache_write_tokens"], 300, "{row}");
}
