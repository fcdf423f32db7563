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
