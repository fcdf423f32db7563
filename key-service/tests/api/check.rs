//! `/filter/v1/check`: the filter's decision over HTTP, for ext_authz-style proxies.

use key_service::api::check::ForwardingTrust;
use reqwest::Method;
use serde_json::json;

use crate::{Service, ADMIN, FILTER};

impl Service {
    /// A service whose check believes forwarding headers as `trust` says.
    async fn trusting(trust: ForwardingTrust) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let database = key_service::store::test_database(dir.path()).await.unwrap();
        Service::configured(&database, dir, |state| state.with_check_trust(trust)).await
    }

    fn check(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.request(method, &format!("/filter/v1/check{path}"), None)
            .header("x-keygate-token", FILTER)
    }
}

#[tokio::test]
async fn the_check_decides_as_the_filter_does() {
    // Behind one proxy that appends to X-Forwarded-For.
    let service = Service::trusting(ForwardingTrust::TRUST_ONE_PROXY).await;
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
    // The last character changed (to one it is not: a secret ending in 'x' stayed valid).
    let last = if secret(&open).ends_with('x') {
        'y'
    } else {
        'x'
    };
    let typo = format!("{}{last}", &secret(&open)[..50]);
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
async fn forwarding_headers_pass_an_allowlist_only_when_trusted() {
    let allowlisted = json!({"name": "lan", "ip_allowlist": ["10.0.0.0/8"]});
    let ask = |service: &Service, secret: &str, headers: &[(&str, &str)]| {
        let mut request = service.check(Method::GET, "/v1/models").bearer_auth(secret);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request
    };

    // By default: a client that reaches the proxy directly claims a LAN address in
    // either header, and is refused, as is any key with an allowlist (no address known).
    let service = Service::start().await;
    let key = service.create_ok(allowlisted.clone()).await.remove(0);
    let secret = key["key"].as_str().unwrap();
    for headers in [
        &[("x-forwarded-for", "10.1.2.3")][..],
        &[("x-forwarded-for", "6.6.6.6, 10.1.2.3")],
        &[("x-envoy-external-address", "10.1.2.3")],
        &[],
    ] {
        let (status, code, _) = service.send(ask(&service, secret, headers)).await.error();
        assert_eq!(
            (status, code.as_str()),
            (403, "ip_not_allowed"),
            "{headers:?}"
        );
    }
    // A key without an allowlist does not need an address.
    let open = service.create_ok(json!({"name": "open"})).await.remove(0);
    let reply = service
        .send(ask(&service, open["key"].as_str().unwrap(), &[]))
        .await;
    assert_eq!(reply.status, 200);

    // Two proxies in front: the entry two from the right is the client's.
    let service = Service::trusting(ForwardingTrust {
        xff_hops: 2,
        envoy_external_address: false,
    })
    .await;
    let key = service.create_ok(allowlisted.clone()).await.remove(0);
    let secret = key["key"].as_str().unwrap();
    let through = [("x-forwarded-for", "6.6.6.6, 10.1.2.3, 192.168.0.1")];
    assert_eq!(
        service.send(ask(&service, secret, &through)).await.status,
        200
    );
    let forged = [
        ("x-forwarded-for", "10.1.2.3, 6.6.6.6, 192.168.0.1"),
        ("x-envoy-external-address", "10.1.2.3"),
    ];
    let (status, code, _) = service.send(ask(&service, secret, &forged)).await.error();
    assert_eq!((status, code.as_str()), (403, "ip_not_allowed"));

    // Envoy's header, when trusted, is taken first.
    let service = Service::trusting(ForwardingTrust {
        xff_hops: 0,
        envoy_external_address: true,
    })
    .await;
    let key = service.create_ok(allowlisted).await.remove(0);
    let secret = key["key"].as_str().unwrap();
    let envoy = [
        ("x-envoy-external-address", "10.1.2.3"),
        ("x-forwarded-for", "6.6.6.6"),
    ];
    assert_eq!(
        service.send(ask(&service, secret, &envoy)).await.status,
        200
    );
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
