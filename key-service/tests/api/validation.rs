use serde_json::{json, Value};

use crate::{Service, ADMIN};

/// Each body is refused with 400 and the offending field in `param`.
#[tokio::test]
async fn each_bad_field_is_refused_and_named() {
    let service = Service::start().await;
    let mut cases: Vec<(Value, &str)> = vec![
        (json!({}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": "x".repeat(65)}), "name"),
        (json!({"name": 5}), "name"),
        (json!({"name": null}), "name"),
        (json!({"name": "k", "colour": "red"}), "colour"),
        (json!({"name": "k", "quantity": 0}), "quantity"),
        (json!({"name": "k", "quantity": 101}), "quantity"),
        (json!({"name": "k", "quantity": "2"}), "quantity"),
        (json!({"name": "k", "quantity": 1e30}), "quantity"),
        (json!({"name": "k", "quota": -1}), "quota"),
        (json!({"name": "k", "quota": 1.5}), "quota"),
        (
            json!({"name": "k", "unlimited_quota": "no"}),
            "unlimited_quota",
        ),
        (json!({"name": "k", "account": "nobody"}), "account"),
        (json!({"name": "k", "group": "nobody"}), "group"),
        (
            json!({"name": "k", "expires_at": "next week"}),
            "expires_at",
        ),
        (
            json!({"name": "k", "expires_at": "2030-01-01"}),
            "expires_at",
        ),
        (json!({"name": "k", "expires_in": "5m"}), "expires_in"),
        (json!({"name": "k", "expires_in": "0d"}), "expires_in"),
        (json!({"name": "k", "expires_in": "99999y"}), "expires_in"),
        (
            json!({"name": "k", "expires_in": "1d", "expires_at": "2030-01-01T00:00:00Z"}),
            "expires_in",
        ),
        (json!({"name": "k", "models": "gpt-4o"}), "models"),
        (json!({"name": "k", "models": ["gpt-4o", ""]}), "models"),
        (json!({"name": "k", "models": [1]}), "models"),
        (
            json!({"name": "k", "ip_allowlist": ["10.0.0.0/33"]}),
            "ip_allowlist",
        ),
        (
            json!({"name": "k", "ip_allowlist": ["not-an-ip"]}),
            "ip_allowlist",
        ),
        (
            json!({"name": "k", "ip_allowlist": ["10.0.0.1", "300.1.1.1"]}),
            "ip_allowlist",
        ),
    ];
    for param in ["rpm", "tpm", "max_parallel"] {
        for bad in [json!(0), json!(-1), json!("x"), json!(1.5), json!(1e30)] {
            cases.push((json!({"name": "k", param: bad}), param));
        }
    }
    for (body, param) in cases {
        let reply = service.create(body.clone()).await;
        let (status, _, got) = reply.error();
        assert_eq!(status, 400, "{body}: {}", reply.body);
        assert_eq!(got.as_deref(), Some(param), "{body}: {}", reply.body);
        assert_eq!(reply.body["error"]["type"], "invalid_request_error");
    }
    // Nothing was created along the way.
    assert_eq!(service.admin_get("/api/v1/keys").await.body["total"], 0);
}

#[tokio::test]
async fn an_unknown_field_is_refused_by_name() {
    let service = Service::start().await;
    let reply = service.create(json!({"name": "k", "expires": "1d"})).await;
    assert_eq!(
        reply.error(),
        (400, "unknown_field".into(), Some("expires".into()))
    );
}

#[tokio::test]
async fn a_body_that_is_not_json_is_a_400_not_a_500() {
    let service = Service::start().await;
    for body in ["{\"name\":", "", "null", "[]", "{\"name\":\"k\"} trailing"] {
        let reply = service
            .send(
                service
                    .request(reqwest::Method::POST, "/api/v1/keys", Some(ADMIN))
                    .header("content-type", "application/json")
                    .body(body),
            )
            .await;
        let (status, _, _) = reply.error();
        assert_eq!(status, 400, "{body:?}: {}", reply.body);
    }
}

#[tokio::test]
async fn a_body_without_json_content_type_is_415() {
    let service = Service::start().await;
    let reply = service
        .send(
            service
                .request(reqwest::Method::POST, "/api/v1/keys", Some(ADMIN))
                .header("content-type", "text/plain")
                .body(r#"{"name":"k"}"#),
        )
        .await;
    assert_eq!(reply.error().0, 415);
}

#[tokio::test]
async fn a_body_over_one_mebibyte_is_413() {
    let service = Service::start().await;
    let huge = json!({"name": "k", "models": vec!["m".repeat(1000); 1100]});
    let reply = service.create(huge).await;
    assert_eq!(reply.error(), (413, "request_too_large".into(), None));
}
