use reqwest::Method;

use crate::{Service, ADMIN, FILTER};

#[tokio::test]
async fn admin_routes_need_the_admin_token() {
    let service = Service::start().await;
    for (method, path) in [
        (Method::GET, "/api/v1/keys"),
        (Method::POST, "/api/v1/keys"),
        (Method::GET, "/api/v1/keys/key_x"),
    ] {
        for token in [None, Some("wrong"), Some(FILTER), Some("")] {
            let reply = service
                .send(
                    service
                        .request(method.clone(), path, token)
                        .json(&serde_json::json!({"name": "k"})),
                )
                .await;
            assert_eq!(
                reply.error(),
                (401, "invalid_admin_token".into(), None),
                "{method} {path} with {token:?}"
            );
            assert_eq!(reply.body["error"]["type"], "authentication_error");
            assert_eq!(reply.headers["www-authenticate"], "Bearer");
        }
    }
    assert_eq!(service.admin_get("/api/v1/keys").await.status, 200);
}

#[tokio::test]
async fn the_snapshot_needs_the_filter_token() {
    let service = Service::start().await;
    for token in [None, Some("wrong"), Some(ADMIN)] {
        let reply = service
            .send(service.request(Method::GET, "/filter/v1/snapshot", token))
            .await;
        assert_eq!(
            reply.error(),
            (401, "invalid_filter_token".into(), None),
            "{token:?}"
        );
    }
    assert_eq!(service.snapshot().await.status, 200);
}

#[tokio::test]
async fn other_schemes_and_near_misses_are_refused() {
    let service = Service::start().await;
    for value in [
        format!("Basic {ADMIN}"),
        ADMIN.to_owned(),
        format!("Bearer {ADMIN}x"),
        format!("Bearer {}", &ADMIN[..ADMIN.len() - 1]),
    ] {
        let reply = service
            .send(
                service
                    .request(Method::GET, "/api/v1/keys", None)
                    .header("authorization", value.clone()),
            )
            .await;
        assert_eq!(reply.status, 401, "{value}");
    }
    let lower = service
        .send(
            service
                .request(Method::GET, "/api/v1/keys", None)
                .header("authorization", format!("bearer {ADMIN}")),
        )
        .await;
    assert_eq!(lower.status, 200, "the scheme is case-insensitive");
}

#[tokio::test]
async fn healthz_needs_no_token() {
    let service = Service::start().await;
    let reply = service
        .send(service.request(Method::GET, "/healthz", None))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, serde_json::json!({"status": "ok"}));
}

#[tokio::test]
async fn readiness_follows_the_database_and_metrics_count_what_happened() {
    let service = Service::start().await;
    let ready = service
        .send(service.request(Method::GET, "/readyz", None))
        .await;
    assert_eq!(ready.status, 200);
    service
        .create_ok(serde_json::json!({"name": "m", "quantity": 2}))
        .await;
    service.snapshot().await;
    let key = service.create_ok(serde_json::json!({"name": "off"})).await;
    let id = key[0]["id"].as_str().unwrap();
    let patch = service
        .request(
            Method::PATCH,
            &format!("/api/v1/keys/{id}"),
            Some(crate::ADMIN),
        )
        .json(&serde_json::json!({"enabled": false}));
    service.send(patch).await;
    let metrics = service
        .send(service.request(Method::GET, "/metrics", None))
        .await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text.clone();
    for line in [
        "keygate_http_requests_total{route=\"/api/v1/keys\",method=\"POST\",status=\"201\"} 2",
        "keygate_http_requests_total{route=\"/api/v1/keys/{id}\",method=\"PATCH\",status=\"200\"} 1",
        "keygate_snapshot_requests_total{answer=\"full\"} 1",
        "keygate_keys{status=\"active\"} 2",
        "keygate_keys{status=\"disabled\"} 1",
        "keygate_snapshot_version 4",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
    assert!(
        !text.contains(id),
        "raw paths (with ids) never become labels"
    );

    // The database goes away: not ready, but alive.
    service.store.close().await;
    let ready = service
        .send(service.request(Method::GET, "/readyz", None))
        .await;
    assert_eq!(ready.status, 503);
    let alive = service
        .send(service.request(Method::GET, "/healthz", None))
        .await;
    assert_eq!(alive.status, 200);
}
