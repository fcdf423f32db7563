use serde_json::json;

use crate::Service;

const KEY_FIELDS: [&str; 27] = [
    "model_caps",
    "quota_period",
    "period_start",
    "resets_at",
    "id",
    "name",
    "masked_key",
    "account",
    "group",
    "status",
    "enabled",
    "expires_at",
    "unlimited_quota",
    "quota",
    "used_quota",
    "remaining_quota",
    "models",
    "ip_allowlist",
    "rpm",
    "tpm",
    "max_parallel",
    "rotate_by",
    "rotation_due",
    "created_at",
    "updated_at",
    "last_used_at",
    "key",
];

#[tokio::test]
async fn creating_one_key_returns_its_secret_once() {
    let service = Service::start().await;
    let keys = service.create_ok(json!({"name": "ci"})).await;
    assert_eq!(keys.len(), 1);
    let key = &keys[0];

    let fields: Vec<&str> = key
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = KEY_FIELDS.to_vec();
    want.sort_unstable();
    let mut got = fields.clone();
    got.sort_unstable();
    assert_eq!(got, want);

    let secret = key["key"].as_str().unwrap();
    assert!(
        keygate_core::keys::secret::is_well_formed(secret),
        "{secret}"
    );
    assert_eq!(key["masked_key"], keygate_core::keys::secret::mask(secret));
    assert_eq!(key["name"], "ci");
    assert_eq!(key["account"], "default");
    assert_eq!(key["group"], "default");
    assert_eq!(key["status"], "active");
    assert_eq!(key["enabled"], true);
    assert_eq!(key["expires_at"], json!(null));
    assert_eq!(key["unlimited_quota"], true);
    assert_eq!(key["remaining_quota"], json!(null));
    assert_eq!(key["used_quota"], 0);
    assert_eq!(key["models"], json!([]));
    assert_eq!(key["ip_allowlist"], json!([]));
    assert_eq!(key["rpm"], json!(null));
    assert_eq!(key["tpm"], json!(null));
    assert_eq!(key["max_parallel"], json!(null));
    assert_eq!(key["last_used_at"], json!(null));
    assert_eq!(key["created_at"], key["updated_at"]);
    assert!(key["created_at"].as_str().unwrap().ends_with('Z'));

    // Neither the list nor the key's own page shows the secret again.
    let id = key["id"].as_str().unwrap();
    let one = service.admin_get(&format!("/api/v1/keys/{id}")).await;
    assert_eq!(one.status, 200);
    let list = service.admin_get("/api/v1/keys").await;
    assert_eq!(list.status, 200);
    for body in [&one.body, &list.body] {
        assert!(!body.to_string().contains(secret));
    }
    assert!(one.body.get("key").is_none());
    let mut shown = key.clone();
    shown.as_object_mut().unwrap().remove("key");
    assert_eq!(one.body, shown);
    assert_eq!(list.body["keys"][0], shown);
}

#[tokio::test]
async fn every_field_round_trips() {
    let service = Service::start().await;
    service
        .store
        .create_account("acme", Some(500), 0)
        .await
        .unwrap();
    service
        .store
        .put_group(&key_service::store::GroupRow::open("premium"), 0)
        .await
        .unwrap();
    let keys = service
        .create_ok(json!({
            "name": "batch job",
            "account": "acme",
            "group": "premium",
            "expires_at": "2099-06-01T12:30:00+02:00",
            "quantity": 1,
            "quota": 1000,
            "unlimited_quota": false,
            "models": ["gpt-4o", "claude-sonnet-4", "gpt-4o"],
            "ip_allowlist": ["10.1.2.3/8", "192.0.2.7", "2001:db8::/32"],
            "rpm": 60,
            "tpm": 100_000,
            "max_parallel": 4,
        }))
        .await;
    let key = &keys[0];
    assert_eq!(key["name"], "batch job");
    assert_eq!(key["account"], "acme");
    assert_eq!(key["group"], "premium");
    assert_eq!(key["expires_at"], "2099-06-01T10:30:00Z");
    assert_eq!(key["status"], "active");
    assert_eq!(key["quota"], 1000);
    assert_eq!(key["unlimited_quota"], false);
    assert_eq!(key["remaining_quota"], 1000);
    assert_eq!(key["models"], json!(["gpt-4o", "claude-sonnet-4"]));
    assert_eq!(
        key["ip_allowlist"],
        json!(["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"])
    );
    assert_eq!(
        (&key["rpm"], &key["tpm"], &key["max_parallel"]),
        (&json!(60), &json!(100_000), &json!(4))
    );
    let stored = service
        .admin_get(&format!("/api/v1/keys/{}", key["id"].as_str().unwrap()))
        .await;
    assert_eq!(stored.body["ip_allowlist"], key["ip_allowlist"]);
    assert_eq!(stored.body["expires_at"], key["expires_at"]);
    for field in ["rpm", "tpm", "max_parallel"] {
        assert_eq!(stored.body[field], key[field], "{field}");
    }
}

#[tokio::test]
async fn a_batch_gets_distinct_secrets_ids_and_suffixed_names() {
    let service = Service::start().await;
    let keys = service
        .create_ok(json!({"name": "team", "quantity": 5, "expires_in": "30d",
            "rpm": 30, "tpm": null, "max_parallel": 2}))
        .await;
    assert_eq!(keys.len(), 5);
    let mut ids = std::collections::HashSet::new();
    let mut secrets = std::collections::HashSet::new();
    for key in &keys {
        let name = key["name"].as_str().unwrap();
        let suffix = name.strip_prefix("team-").unwrap();
        assert_eq!(suffix.len(), 6, "{name}");
        assert!(suffix.bytes().all(|b| b.is_ascii_alphanumeric()), "{name}");
        assert!(ids.insert(key["id"].as_str().unwrap().to_owned()));
        let secret = key["key"].as_str().unwrap();
        assert!(keygate_core::keys::secret::is_well_formed(secret));
        assert!(secrets.insert(secret.to_owned()));
        assert!(key["expires_at"].is_string());
        assert_eq!(key["expires_at"], keys[0]["expires_at"]);
        assert_eq!(
            (&key["rpm"], &key["tpm"], &key["max_parallel"]),
            (&json!(30), &json!(null), &json!(2)),
            "{name}: the batch's limits"
        );
    }
    assert_eq!(service.admin_get("/api/v1/keys").await.body["total"], 5);
}

#[tokio::test]
async fn a_key_created_with_a_past_expiry_is_expired() {
    let service = Service::start().await;
    let keys = service
        .create_ok(json!({"name": "old", "expires_at": "2001-01-01T00:00:00Z"}))
        .await;
    assert_eq!(keys[0]["status"], "expired");
    assert_eq!(keys[0]["expires_at"], "2001-01-01T00:00:00Z");
}

#[tokio::test]
async fn status_follows_the_contract() {
    let service = Service::start().await;
    service
        .store
        .create_account("broke", Some(0), 0)
        .await
        .unwrap();
    service
        .store
        .create_account("flush", Some(10), 0)
        .await
        .unwrap();
    let create = |body| service.create_ok(body);
    let no_quota = create(json!({"name": "a", "unlimited_quota": false, "quota": 0})).await;
    assert_eq!(no_quota[0]["status"], "exhausted");
    assert_eq!(no_quota[0]["remaining_quota"], 0);
    let broke = create(json!({"name": "b", "account": "broke"})).await;
    assert_eq!(broke[0]["status"], "exhausted");
    let flush = create(json!({"name": "c", "account": "flush"})).await;
    assert_eq!(flush[0]["status"], "active");
    let expired_and_empty = create(json!({
        "name": "d", "expires_at": "2001-01-01T00:00:00Z", "unlimited_quota": false
    }))
    .await;
    assert_eq!(
        expired_and_empty[0]["status"], "expired",
        "expiry outranks quota"
    );

    let id = flush[0]["id"].as_str().unwrap();
    assert!(service.store.set_enabled(id, false, 1).await.unwrap());
    let disabled = service.admin_get(&format!("/api/v1/keys/{id}")).await;
    assert_eq!(disabled.body["status"], "disabled");
    assert_eq!(disabled.body["enabled"], false);
}
