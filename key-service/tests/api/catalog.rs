//! Groups, model prices and accounts through the API, and how their changes reach the
//! snapshot the filter syncs.

use reqwest::Method;
use serde_json::{json, Value};

use crate::{Service, ADMIN};

impl Service {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> crate::Reply {
        let mut req = self.request(method, path, Some(ADMIN));
        if let Some(body) = body {
            req = req.json(&body);
        }
        self.send(req).await
    }
}

#[tokio::test]
async fn groups_are_created_replaced_listed_and_deleted() {
    let service = Service::start().await;
    let put = |body: Value| service.call(Method::PUT, "/api/v1/groups/cheap", Some(body));
    let created = put(json!({"models": ["gpt-4o-mini"], "ratio": 0.5, "rpm": 60})).await;
    assert_eq!(created.status, 201);
    assert_eq!(
        created.body,
        json!({"name": "cheap", "models": ["gpt-4o-mini"], "ratio": 0.5, "rpm": 60, "tpm": null,
            "account": null})
    );
    // PUT replaces the whole group: absent fields take the defaults.
    let replaced = put(json!({"tpm": 1000})).await;
    assert_eq!(replaced.status, 200);
    assert_eq!(replaced.body["models"], json!(["*"]));
    assert_eq!(replaced.body["rpm"], Value::Null);

    let list = service.call(Method::GET, "/api/v1/groups", None).await;
    let names: Vec<&str> = list.body["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cheap", "default"]);
    let one = service
        .call(Method::GET, "/api/v1/groups/cheap", None)
        .await;
    assert_eq!(one.body["tpm"], 1000);

    // A group with keys cannot go; nor can the default one.
    service
        .create_ok(json!({"name": "k", "group": "cheap"}))
        .await;
    let in_use = service
        .call(Method::DELETE, "/api/v1/groups/cheap", None)
        .await;
    assert_eq!(in_use.error().0, 409);
    let default = service
        .call(Method::DELETE, "/api/v1/groups/default", None)
        .await;
    assert_eq!(default.error().0, 409);
    let spare = service
        .call(Method::PUT, "/api/v1/groups/spare", Some(json!({})))
        .await;
    assert_eq!(spare.status, 201);
    let gone = service
        .call(Method::DELETE, "/api/v1/groups/spare", None)
        .await;
    assert_eq!(gone.status, 204);
    for path in ["/api/v1/groups/spare", "/api/v1/groups/nope"] {
        assert_eq!(service.call(Method::GET, path, None).await.error().0, 404);
    }
    let missing = service
        .call(Method::DELETE, "/api/v1/groups/nope", None)
        .await;
    assert_eq!(missing.error().0, 404);
}

#[tokio::test]
async fn bad_group_prices_and_accounts_are_refused_by_field() {
    let service = Service::start().await;
    let cases = [
        (
            Method::PUT,
            "/api/v1/groups/g",
            json!({"ratio": -1}),
            "ratio",
        ),
        (Method::PUT, "/api/v1/groups/g", json!({"rpm": 0}), "rpm"),
        (
            Method::PUT,
            "/api/v1/groups/g",
            json!({"models": [""]}),
            "models",
        ),
        (
            Method::PUT,
            "/api/v1/groups/g",
            json!({"color": "red"}),
            "color",
        ),
        (Method::PUT, "/api/v1/groups/bad%20name", json!({}), "name"),
        (
            Method::PUT,
            "/api/v1/models/gpt-4o",
            json!({"input": 1}),
            "output",
        ),
        (
            Method::PUT,
            "/api/v1/models/gpt-4o",
            json!({"input": -1, "output": 1}),
            "input",
        ),
        (
            Method::POST,
            "/api/v1/accounts",
            json!({"name": ""}),
            "name",
        ),
        (
            Method::POST,
            "/api/v1/accounts",
            json!({"name": "a", "balance": "x"}),
            "balance",
        ),
        (
            Method::PATCH,
            "/api/v1/accounts/default",
            json!({}),
            "balance",
        ),
    ];
    for (method, path, body, param) in cases {
        let reply = service.call(method.clone(), path, Some(body.clone())).await;
        let (status, _, got) = reply.error();
        assert_eq!(
            (status, got.as_deref()),
            (400, Some(param)),
            "{method} {path} {body}"
        );
    }
}

#[tokio::test]
async fn model_prices_are_set_and_read() {
    let service = Service::start().await;
    let put = service
        .call(
            Method::PUT,
            "/api/v1/models/gpt-4o",
            Some(json!({"input": 2.5, "output": 10})),
        )
        .await;
    assert_eq!(put.status, 201);
    assert_eq!(
        put.body,
        json!({"name": "gpt-4o", "input": 2.5, "output": 10.0, "cached_input": 2.5,
            "cache_write": 2.5, "per_request": 0.0})
    );
    let again = service
        .call(
            Method::PUT,
            "/api/v1/models/gpt-4o",
            Some(json!({"input": 2.5, "output": 10, "cached_input": 1.25})),
        )
        .await;
    assert_eq!(again.status, 200);
    let list = service.call(Method::GET, "/api/v1/models", None).await;
    assert_eq!(list.body["models"][0]["cached_input"], 1.25);
    // A price per call, for what is not billed in tokens (dall-e, speech).
    let per_call = service
        .call(
            Method::PUT,
            "/api/v1/models/dall-e-3",
            Some(json!({"input": 0, "output": 0, "per_request": 40})),
        )
        .await;
    assert_eq!(per_call.body["per_request"], 40.0);
    let bad = service
        .call(
            Method::PUT,
            "/api/v1/models/dall-e-3",
            Some(json!({"input": 0, "output": 0, "per_request": -1})),
        )
        .await;
    assert_eq!(bad.error().2.as_deref(), Some("per_request"));
    let snapshot = service.snapshot().await.body;
    let sent = snapshot["prices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "dall-e-3")
        .cloned()
        .unwrap();
    assert_eq!(sent["per_request"], 40.0, "{sent}");
    let none = service
        .call(Method::GET, "/api/v1/models/unpriced", None)
        .await;
    assert_eq!(none.error().0, 404);
}

#[tokio::test]
async fn account_and_group_changes_reach_the_snapshot() {
    let service = Service::start().await;
    // A filter that holds a snapshot with one key in it.
    service.create_ok(json!({"name": "k"})).await;
    let v0 = service.snapshot().await.body["version"].as_u64().unwrap();
    let created = service
        .call(
            Method::POST,
            "/api/v1/accounts",
            Some(json!({"name": "team-a", "balance": 100})),
        )
        .await;
    assert_eq!(created.status, 201);
    let dup = service
        .call(
            Method::POST,
            "/api/v1/accounts",
            Some(json!({"name": "team-a"})),
        )
        .await;
    assert_eq!(dup.error().0, 409);
    let patched = service
        .call(
            Method::PATCH,
            "/api/v1/accounts/team-a",
            Some(json!({"balance": 0})),
        )
        .await;
    assert_eq!(
        patched.body,
        json!({"name": "team-a", "balance": 0, "spend_limit": null, "quota_period": "total",
            "period_used": 0, "period_start": null, "resets_at": null, "max_keys": null})
    );
    let unknown = service
        .call(
            Method::PATCH,
            "/api/v1/accounts/nobody",
            Some(json!({"balance": null})),
        )
        .await;
    assert_eq!(unknown.error().0, 404);
    service
        .call(
            Method::PUT,
            "/api/v1/groups/cheap",
            Some(json!({"models": ["gpt-4o-mini"]})),
        )
        .await;

    // A filter holding v0 gets a delta with no keys but the new tables.
    let delta = service
        .send(service.request(
            Method::GET,
            &format!("/filter/v1/snapshot?since={v0}"),
            Some(crate::FILTER),
        ))
        .await;
    let wire: keygate_core::sync::snapshot::SnapshotWire =
        serde_json::from_value(delta.body).unwrap();
    assert!(wire.delta && wire.keys.is_empty());
    assert_eq!(wire.version, v0 + 3);
    let team = wire.accounts.iter().find(|a| a.name == "team-a").unwrap();
    assert_eq!(team.balance, Some(0));
    let cheap = wire.groups.iter().find(|g| g.name == "cheap").unwrap();
    assert_eq!(cheap.models, ["gpt-4o-mini"]);

    let list = service.call(Method::GET, "/api/v1/accounts", None).await;
    let names_and_balances: Vec<_> = list.body["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].clone(), a["balance"].clone()))
        .collect();
    assert_eq!(
        names_and_balances,
        [(json!("default"), json!(null)), (json!("team-a"), json!(0))]
    );
}
