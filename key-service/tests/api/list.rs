use serde_json::{json, Value};

use crate::Service;

fn names(body: &Value) -> Vec<String> {
    let mut names: Vec<String> = body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn filters_narrow_the_list() {
    let service = Service::start().await;
    service.store.create_account("acme", None, 0).await.unwrap();
    service
        .store
        .put_group(&key_service::store::GroupRow::open("premium"), 0)
        .await
        .unwrap();
    service.create_ok(json!({"name": "Alpha-prod"})).await;
    service
        .create_ok(json!({"name": "beta-prod", "account": "acme", "group": "premium"}))
        .await;
    service
        .create_ok(json!({"name": "gamma", "expires_at": "2001-01-01T00:00:00Z"}))
        .await;
    let delta = service
        .create_ok(json!({"name": "delta_1", "account": "acme"}))
        .await;
    let id = delta[0]["id"].as_str().unwrap();
    service.store.set_enabled(id, false, 1).await.unwrap();

    let cases: [(&str, &[&str]); 10] = [
        ("", &["Alpha-prod", "beta-prod", "delta_1", "gamma"]),
        ("?status=active", &["Alpha-prod", "beta-prod"]),
        ("?status=expired", &["gamma"]),
        ("?status=disabled", &["delta_1"]),
        ("?status=exhausted", &[]),
        ("?account=acme", &["beta-prod", "delta_1"]),
        ("?group=premium", &["beta-prod"]),
        ("?q=PROD", &["Alpha-prod", "beta-prod"]),
        ("?q=a_1", &["delta_1"]),
        ("?q=%25&account=acme", &[]),
    ];
    for (query, want) in cases {
        let reply = service.admin_get(&format!("/api/v1/keys{query}")).await;
        assert_eq!(reply.status, 200, "{query}: {}", reply.body);
        assert_eq!(names(&reply.body), want, "{query}");
        assert_eq!(reply.body["total"], want.len(), "{query}");
    }
}

#[tokio::test]
async fn the_list_shows_each_keys_rate_limits() {
    let service = Service::start().await;
    service
        .create_ok(json!({"name": "limited", "rpm": 60, "tpm": 100_000, "max_parallel": 4}))
        .await;
    service
        .create_ok(json!({"name": "parallel-only", "max_parallel": 1}))
        .await;
    service.create_ok(json!({"name": "free"})).await;
    let list = service.admin_get("/api/v1/keys").await;
    assert_eq!(list.status, 200, "{}", list.body);
    let mut limits: Vec<(String, Value, Value, Value)> = list.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["name"].as_str().unwrap().to_owned(),
                k["rpm"].clone(),
                k["tpm"].clone(),
                k["max_parallel"].clone(),
            )
        })
        .collect();
    limits.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        limits,
        [
            ("free".into(), Value::Null, Value::Null, Value::Null),
            ("limited".into(), json!(60), json!(100_000), json!(4)),
            ("parallel-only".into(), Value::Null, Value::Null, json!(1)),
        ]
    );
}

#[tokio::test]
async fn pages_split_the_list_without_overlap() {
    let service = Service::start().await;
    service.create_ok(json!({"name": "k", "quantity": 7})).await;
    let mut seen = std::collections::HashSet::new();
    for page in 1..=4 {
        let reply = service
            .admin_get(&format!("/api/v1/keys?per_page=3&page={page}"))
            .await;
        assert_eq!(reply.body["page"], page);
        assert_eq!(reply.body["per_page"], 3);
        assert_eq!(reply.body["total"], 7);
        let keys = reply.body["keys"].as_array().unwrap();
        let want = [3, 3, 1, 0][page - 1];
        assert_eq!(keys.len(), want, "page {page}");
        for key in keys {
            assert!(seen.insert(key["id"].as_str().unwrap().to_owned()));
        }
    }
    assert_eq!(seen.len(), 7);

    let default = service.admin_get("/api/v1/keys").await;
    assert_eq!(
        (
            default.body["page"].clone(),
            default.body["per_page"].clone()
        ),
        (json!(1), json!(20))
    );
}

#[tokio::test]
async fn bad_list_parameters_are_named() {
    let service = Service::start().await;
    for (query, param) in [
        ("status=gone", "status"),
        ("page=0", "page"),
        ("page=abc", "page"),
        ("per_page=101", "per_page"),
        ("per_page=0", "per_page"),
        ("sort=name", "sort"),
    ] {
        let reply = service.admin_get(&format!("/api/v1/keys?{query}")).await;
        let (status, _, got) = reply.error();
        assert_eq!((status, got.as_deref()), (400, Some(param)), "{query}");
    }
}

#[tokio::test]
async fn an_unknown_id_is_404() {
    let service = Service::start().await;
    let reply = service.admin_get("/api/v1/keys/key_doesnotexist").await;
    assert_eq!(reply.error(), (404, "not_found".into(), None));
}
