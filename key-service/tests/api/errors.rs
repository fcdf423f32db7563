use reqwest::Method;

use crate::{Service, ADMIN};

#[tokio::test]
async fn an_unknown_route_is_a_json_404() {
    let service = Service::start().await;
    for path in [
        "/nope",
        "/console/nope.js",
        "/api/v2/keys",
        "/filter/v1/other",
    ] {
        let reply = service
            .send(service.request(Method::GET, path, Some(ADMIN)))
            .await;
        assert_eq!(reply.error(), (404, "not_found".into(), None), "{path}");
    }
}

#[tokio::test]
async fn a_wrong_method_is_a_json_405_with_allow() {
    let service = Service::start().await;
    for (method, path) in [
        (Method::DELETE, "/healthz"),
        (Method::PUT, "/api/v1/keys"),
        (Method::POST, "/filter/v1/snapshot"),
    ] {
        let reply = service
            .send(service.request(method.clone(), path, Some(ADMIN)))
            .await;
        let (status, code, _) = reply.error();
        assert!(
            (status, code.as_str()) == (405, "method_not_allowed") || status == 401,
            "{method} {path}: {status} {}",
            reply.body
        );
        if status == 405 {
            assert!(reply.headers.contains_key("allow"), "{method} {path}");
        }
    }
}
