//! `/filter/v1/check`: the filter's decision over HTTP, for ext_authz-style proxies.

use reqwest::Method;
use serde_json::json;

use crate::{Service, ADMIN, FILTER};

impl Service {
    fn check(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.request(method, &format!("/filter/v1/check{path}"), None)
            .header("x-keygate-token", FILTER)
    }
}

#[tokio::test]
async fn the_check_decides_as_the_filter_does() {
    let service = Service::start().await;
    let open = service.create_ok(json!({"name": "open"})).await.remove(0);
    let narrow = service
        .create_ok(
            json!({"name": "narrow", "models": ["gpt-4o-mini", "gemini-pro"],
            "ip_allowlist": ["10.0.0.0/8"]}),
        )
        .await
        .remove(0);
    let secret = |k: &serde_json::Value| k["key"].as_str().unwrap().to_owned();

    let ok = service
        .send(
            service
                .check(Method::GET, "/v1/models")
                .bearer_auth(secret(&open)),
        )
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.headers["x-keygate-key-id"], open["id"].as_str().unwrap());
    assert_eq!(ok.headers["x-keygate-key-name"], "open");
    assert_eq!(ok.headers["x-keygate-account"], "default");
    let by_query = service
        .send(service.check(
            Method::POST,
            &format!(
                "/v1beta/models/gemini-pro:generateContent?key={}",
                secret(&open)
            ),
        ))
        .await;
    assert_eq!(by_query.status, 200);
    assert_eq!(by_query.headers["x-keygate-model"], "gemini-pro");

    let (status, code, _) = service
        .send(service.check(Method::POST, "/v1/chat/completions"))
        .await
        .error();
    assert_eq!((status, code.as_str()), (401, "missing_api_key"));
    let typo = format!("{}x", &secret(&open)[..50]);
    let (status, code, _) = service
        .send(service.check(Method::GET, "/").header("x-api-key", typo))
        .await
        .error();
    assert_eq!((status, code.as_str()), (401, "invalid_api_key"));

    // The narrow key: source address from the proxy's X-Forwarded-For entry, model from
    // the path or the JSON body.
    let narrow_req = |body: serde_json::Value, xff: &str| {
        service
            .check(Method::POST, "/v1/chat/completions")
            .bearer_auth(secret(&narrow))
            .header("x-forwarded-for", xff)
            .json(&body)
    };
    let mini = json!({"model": "gpt-4o-mini", "messages": []});
    let big = json!({"model": "gpt-4o", "messages": []});
    assert_eq!(
        service
            .send(narrow_req(mini.clone(), "6.6.6.6, 10.1.2.3"))
            .await
            .status,
        200
    );
    let (status, code, _) = service
        .send(narrow_req(mini, "10.1.2.3, 6.6.6.6"))
        .await
        .error();
    assert_eq!((status, code.as_str()), (403, "ip_not_allowed"));
    let (status, code, _) = service.send(narrow_req(big, "10.1.2.3")).await.error();
    assert_eq!((status, code.as_str()), (403, "model_not_allowed"));

    // A change is enforced at once: no snapshot in between.
    let id = open["id"].as_str().unwrap();
    let patch = service
        .request(Method::PATCH, &format!("/api/v1/keys/{id}"), Some(ADMIN))
        .json(&json!({"enabled": false}));
    assert_eq!(service.send(patch).await.status, 200);
    let (status, code, _) = service
        .send(
            service
                .check(Method::GET, "/v1/models")
                .bearer_auth(secret(&open)),
        )
        .await
        .error();
    assert_eq!((status, code.as_str()), (401, "key_disabled"));
}

#[tokio::test]
async fn the_check_needs_the_filter_token_in_its_own_header() {
    let service = Service::start().await;
    let key = service.create_ok(json!({"name": "k"})).await.remove(0);
    let secret = key["key"].as_str().unwrap();
    for token in [None, Some(ADMIN), Some("wrong")] {
        let mut req = service
            .request(Method::GET, "/filter/v1/check/v1/models", None)
            .bearer_auth(secret);
        if let Some(token) = token {
            req = req.header("x-keygate-token", token);
        }
        let (status, code, _) = service.send(req).await.error();
        assert_eq!(
            (status, code.as_str()),
            (401, "invalid_filter_token"),
            "{token:?}"
        );
    }
}
