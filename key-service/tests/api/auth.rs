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

/// During a rotation the filter's routes take the current and the next filter token, so
/// Envoys move to the next one by one without a failed sync; nothing else gets in.
#[tokio::test]
async fn a_next_filter_token_is_admitted_beside_the_current_one() {
    const NEXT: &str = "next-filter-token";
    let dir = tempfile::tempdir().unwrap();
    let database = key_service::store::test_database(dir.path()).await.unwrap();
    let service = Service::configured(&database, dir, |state| {
        state.with_next_filter_token(Some(NEXT))
    })
    .await;
    for token in [FILTER, NEXT] {
        let snapshot = service.request(Method::GET, "/filter/v1/snapshot", Some(token));
        assert_eq!(service.send(snapshot).await.status, 200, "{token}");
        let usage = service
            .request(Method::POST, "/filter/v1/usage", Some(token))
            .json(&serde_json::json!({"records": []}));
        assert_eq!(service.send(usage).await.status, 200, "{token}");
        let check = service
            .request(Method::GET, "/filter/v1/check/v1/models", None)
            .header("x-keygate-token", token);
        // Answered (the request has no key: 401 `missing_api_key`), not turned away.
        let (_, code, _) = service.send(check).await.error();
        assert_eq!(code, "missing_api_key", "{token}");
    }
    for token in [ADMIN, "next-filter-toke", ""] {
        let snapshot = service.request(Method::GET, "/filter/v1/snapshot", Some(token));
        assert_eq!(service.send(snapshot).await.status, 401, "{token:?}");
    }
    // The next token is no admin token.
    assert_eq!(
        service
            .send(service.request(Method::GET, "/api/v1/keys", Some(NEXT)))
            .await
            .status,
        401
    );
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

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let service = Service::start().await;
    let doc = service
        .send(service.request(Method::GET, "/api/v1/openapi.json", None))
        .await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.body["openapi"], "3.1.0");
    let paths = doc.body["paths"].as_object().unwrap();
    // Every route the router registers, read from its source.
    let source = include_str!("../../src/lib.rs");
    let routes: Vec<&str> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|literal| {
            ["/api/", "/filter/", "/healthz", "/readyz", "/metrics"]
                .iter()
                .any(|p| literal.starts_with(p))
        })
        .collect();
    assert!(routes.len() >= 15, "{routes:?}");
    for route in routes {
        assert!(paths.contains_key(route), "{route} is not in openapi.json");
    }
    assert!(paths.contains_key("/filter/v1/check/{path}"));
    // And every $ref resolves.
    let text = doc.body.to_string();
    for reference in text.split("\"$ref\":\"#/components/").skip(1) {
        let target = reference.split('"').next().unwrap();
        let mut node = &doc.body["components"];
        for part in target.split('/') {
            node = &node[part];
        }
        assert!(!node.is_null(), "dangling $ref {target}");
    }
}

/// Runs `statements` on the service's database from a connection of the test's own.
async fn on_database(database: &key_service::config::Database, statements: &[&str]) {
    use key_service::config::Database;
    use sqlx::Connection;
    match database {
        Database::Sqlite { path } => {
            let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
            let mut conn = sqlx::SqliteConnection::connect_with(&options)
                .await
                .unwrap();
            for sql in statements {
                sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
        }
        Database::Postgres { url } => {
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            for sql in statements {
                sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
        }
    }
}

#[tokio::test]
async fn readiness_fails_while_writes_fail_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let database = key_service::store::test_database(dir.path()).await.unwrap();
    let service = Service::on(&database, dir).await;
    let readyz = || service.send(service.request(Method::GET, "/readyz", None));
    assert_eq!(readyz().await.status, 200);

    // Writes fail (as on a full disk) while reads go on: the service is not ready, and
    // says why.
    let fail = match &database {
        key_service::config::Database::Sqlite { .. } => vec![
            "CREATE TRIGGER fault BEFORE INSERT ON write_probe \
             BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END",
        ],
        key_service::config::Database::Postgres { .. } => vec![
            "CREATE FUNCTION fault() RETURNS trigger AS $$ \
             BEGIN RAISE EXCEPTION 'could not extend file: No space left on device'; END \
             $$ LANGUAGE plpgsql",
            "CREATE TRIGGER fault BEFORE INSERT ON write_probe \
             FOR EACH ROW EXECUTE FUNCTION fault()",
        ],
    };
    on_database(&database, &fail).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let refused = readyz().await;
    let (status, code, _) = refused.error();
    assert_eq!((status, code.as_str()), (503, "service_unavailable"));
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("does not take writes"), "{message}");
    assert!(
        !message.contains("full"),
        "the database's own words stay in the log"
    );
    assert_eq!(
        service
            .send(service.request(Method::GET, "/healthz", None))
            .await
            .status,
        200
    );

    // The fault ends: ready again within a second, with no restart.
    let heal = match &database {
        key_service::config::Database::Sqlite { .. } => "DROP TRIGGER fault",
        key_service::config::Database::Postgres { .. } => "DROP TRIGGER fault ON write_probe",
    };
    on_database(&database, &[heal]).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert_eq!(readyz().await.status, 200);
}
