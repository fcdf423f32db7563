use reqwest::Method;
use serde_json::{json, Value};

use crate::{Service, ADMIN};

impl Service {
    async fn patch(&self, id: &str, body: Value) -> crate::Reply {
        let path = format!("/api/v1/keys/{id}");
        self.send(self.request(Method::PATCH, &path, Some(ADMIN)).json(&body))
            .await
    }
}

#[tokio::test]
async fn patch_changes_only_the_given_fields_and_bumps_the_version() {
    let service = Service::start().await;
    let key = service
        .create_ok(json!({"name": "orig", "models": ["a"], "expires_in": "1d"}))
        .await
        .remove(0);
    let id = key["id"].as_str().unwrap();
    let before = service.snapshot().await.body["version"].as_u64().unwrap();

    let reply = service
        .patch(
            id,
            json!({"enabled": false, "ip_allowlist": ["10.0.0.1"], "quota": 7,
            "unlimited_quota": false}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let edited = reply.body;
    assert_eq!(edited["status"], "disabled");
    assert_eq!(edited["enabled"], false);
    assert_eq!(edited["ip_allowlist"], json!(["10.0.0.1/32"]));
    assert_eq!(edited["remaining_quota"], 7);
    assert_eq!(edited["name"], "orig");
    assert_eq!(edited["models"], json!(["a"]));
    assert_eq!(edited["expires_at"], key["expires_at"]);
    assert!(
        edited.get("key").is_none(),
        "no secret outside create and rotate"
    );
    let after = service.snapshot().await.body["version"].as_u64().unwrap();
    assert!(after > before);

    let reply = service
        .patch(id, json!({"expires_in": "never", "name": "renamed"}))
        .await;
    assert_eq!(reply.body["expires_at"], Value::Null);
    assert_eq!(reply.body["name"], "renamed");
}

#[tokio::test]
async fn patch_sets_and_clears_each_rate_limit() {
    let service = Service::start().await;
    let id = service.create_ok(json!({"name": "limits"})).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let limits = |key: &Value| {
        (
            key["rpm"].clone(),
            key["tpm"].clone(),
            key["max_parallel"].clone(),
        )
    };
    let path = format!("/api/v1/keys/{id}");
    let null = Value::Null;
    // Each step: the edit, then the limits it leaves (rpm, tpm, max_parallel).
    let steps = [
        (
            json!({"rpm": 60, "tpm": 100_000, "max_parallel": 4}),
            (json!(60), json!(100_000), json!(4)),
        ),
        // Absent fields stay as they are.
        (
            json!({"name": "renamed"}),
            (json!(60), json!(100_000), json!(4)),
        ),
        (json!({"rpm": 120}), (json!(120), json!(100_000), json!(4))),
        (
            json!({"rpm": null}),
            (null.clone(), json!(100_000), json!(4)),
        ),
        (json!({"tpm": null}), (null.clone(), null.clone(), json!(4))),
        (
            json!({"max_parallel": null}),
            (null.clone(), null.clone(), null.clone()),
        ),
        (json!({"tpm": 1}), (null.clone(), json!(1), null.clone())),
        (
            json!({"max_parallel": 1}),
            (null.clone(), json!(1), json!(1)),
        ),
    ];
    for (body, want) in steps {
        let reply = service.patch(&id, body.clone()).await;
        assert_eq!(reply.status, 200, "{body}: {}", reply.body);
        assert_eq!(limits(&reply.body), want, "answer to {body}");
        let stored = service.admin_get(&path).await;
        assert_eq!(limits(&stored.body), want, "stored after {body}");
    }
}

#[tokio::test]
async fn patch_refuses_bad_fields_unknown_groups_and_unknown_keys() {
    let service = Service::start().await;
    let id = service
        .create_ok(json!({"name": "k", "rpm": 5, "tpm": 500, "max_parallel": 2}))
        .await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut cases = vec![
        (json!({"name": ""}), "name"),
        (json!({"quota": -1}), "quota"),
        (json!({"group": "nope"}), "group"),
        (json!({"ip_allowlist": ["10.0.0.0/33"]}), "ip_allowlist"),
        (json!({"expires_at": "soon"}), "expires_at"),
        (json!({"account": "default"}), "account"),
    ];
    for param in ["rpm", "tpm", "max_parallel"] {
        for bad in [json!(0), json!(-1), json!("x"), json!(1.5)] {
            cases.push((json!({ param: bad, "name": "ok" }), param));
        }
    }
    for (body, param) in cases {
        let (status, _, got) = service.patch(&id, body.clone()).await.error();
        assert_eq!(status, 400, "{body}");
        assert_eq!(got.as_deref(), Some(param), "{body}");
    }
    // A refused edit changes nothing.
    let key = service.admin_get(&format!("/api/v1/keys/{id}")).await.body;
    assert_eq!(
        (&key["name"], &key["rpm"], &key["tpm"], &key["max_parallel"]),
        (&json!("k"), &json!(5), &json!(500), &json!(2))
    );
    let (status, code, _) = service
        .patch("key_missing", json!({"enabled": true}))
        .await
        .error();
    assert_eq!((status, code.as_str()), (404, "not_found"));
}

#[tokio::test]
async fn rotate_gives_a_new_secret_to_the_same_key() {
    let service = Service::start().await;
    let key = service
        .create_ok(json!({"name": "rot", "rpm": 60, "tpm": 100_000, "max_parallel": 4}))
        .await
        .remove(0);
    let id = key["id"].as_str().unwrap();
    let path = format!("/api/v1/keys/{id}/rotate");
    let reply = service
        .send(service.request(Method::POST, &path, Some(ADMIN)))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let new_secret = reply.body["key"].as_str().unwrap();
    assert!(keygate_core::keys::secret::is_well_formed(new_secret));
    assert_ne!(new_secret, key["key"].as_str().unwrap());
    assert_eq!(reply.body["id"], key["id"]);
    assert_eq!(reply.body["name"], "rot");
    for field in ["rpm", "tpm", "max_parallel"] {
        assert_eq!(reply.body[field], key[field], "{field} kept by rotation");
    }

    let wire: keygate_core::sync::snapshot::SnapshotWire =
        serde_json::from_value(service.snapshot().await.body).unwrap();
    let hash = keygate_core::keys::secret::hash_hex(&keygate_core::keys::secret::hash(new_secret));
    assert_eq!(wire.keys.len(), 1);
    assert_eq!(wire.keys[0].hash, hash);
    assert_eq!(
        (
            wire.keys[0].rpm,
            wire.keys[0].tpm,
            wire.keys[0].max_parallel
        ),
        (Some(60), Some(100_000), Some(4))
    );

    let missing = service
        .send(service.request(Method::POST, "/api/v1/keys/key_missing/rotate", Some(ADMIN)))
        .await;
    assert_eq!(missing.error().0, 404);
}

#[tokio::test]
async fn rotation_with_a_grace_period_keeps_the_old_secret_until_it_ends() {
    let service = Service::start().await;
    let key = service
        .create_ok(json!({"name": "graceful", "rpm": 7, "max_parallel": 3}))
        .await
        .remove(0);
    let old = key["key"].as_str().unwrap();
    let path = format!("/api/v1/keys/{}/rotate", key["id"].as_str().unwrap());
    let rotate = |body: serde_json::Value| {
        service.send(
            service
                .request(Method::POST, &path, Some(ADMIN))
                .json(&body),
        )
    };
    for bad in [
        json!({"grace_period": "never"}),
        json!({"grace_period": "soon"}),
        json!({"grace_period": "0h"}),
        json!({"grace": "1h"}),
    ] {
        let (status, _, param) = rotate(bad.clone()).await.error();
        assert_eq!(status, 400, "{bad}");
        assert!(param.is_some(), "{bad}");
    }
    let reply = rotate(json!({"grace_period": "1h"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let new = reply.body["key"].as_str().unwrap();
    let wire: keygate_core::sync::snapshot::SnapshotWire =
        serde_json::from_value(service.snapshot().await.body).unwrap();
    let record = |secret: &str| {
        let hash = keygate_core::keys::secret::hash_hex(&keygate_core::keys::secret::hash(secret));
        wire.keys.iter().find(|k| k.hash == hash).cloned()
    };
    let (old_record, new_record) = (record(old).unwrap(), record(new).unwrap());
    assert_eq!(
        old_record.id, new_record.id,
        "both secrets are the same key"
    );
    let left = old_record.expires_at.unwrap() - keygate_now();
    assert!(
        (3590..=3600).contains(&left),
        "old secret ends in an hour, {left} s"
    );
    assert_eq!(new_record.expires_at, None);
    for record in [&old_record, &new_record] {
        assert_eq!(
            (record.rpm, record.tpm, record.max_parallel),
            (Some(7), None, Some(3)),
            "both secrets carry the key's limits"
        );
    }
}

fn keygate_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn delete_removes_the_key_from_the_api_and_the_snapshot() {
    let service = Service::start().await;
    let id = service.create_ok(json!({"name": "gone"})).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/v1/keys/{id}");
    let reply = service
        .send(service.request(Method::DELETE, &path, Some(ADMIN)))
        .await;
    assert_eq!(reply.status, 204);
    assert_eq!(service.admin_get(&path).await.error().0, 404);
    let snapshot = service.snapshot().await.body;
    assert_eq!(snapshot["keys"], json!([]));
    assert_eq!(snapshot["version"], 2, "create and delete are two changes");
    let again = service
        .send(service.request(Method::DELETE, &path, Some(ADMIN)))
        .await;
    assert_eq!(again.error().0, 404);
}

#[tokio::test]
async fn a_rotation_date_is_listed_when_due_and_met_by_rotating() {
    let service = Service::start().await;
    let past = service
        .create_ok(json!({"name": "old", "rotate_by": "2001-01-01T00:00:00Z"}))
        .await;
    let future = service
        .create_ok(json!({"name": "new", "rotate_by": "2999-01-01T00:00:00Z"}))
        .await;
    let (past, future) = (&past[0], &future[0]);
    assert_eq!(past["rotate_by"], "2001-01-01T00:00:00Z");
    assert_eq!(
        (&past["rotation_due"], &future["rotation_due"]),
        (&json!(true), &json!(false))
    );

    let due = service.admin_get("/api/v1/keys?rotation_due=true").await;
    let ids: Vec<&Value> = due.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["id"])
        .collect();
    assert_eq!(ids, [&past["id"]]);
    assert_eq!(due.body["total"], 1);

    // Rotating meets the date; a new one may be set with it.
    let id = past["id"].as_str().unwrap();
    let rotated = service
        .send(
            service
                .request(
                    Method::POST,
                    &format!("/api/v1/keys/{id}/rotate"),
                    Some(ADMIN),
                )
                .json(&json!({})),
        )
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    assert_eq!(rotated.body["rotate_by"], Value::Null);
    let due = service.admin_get("/api/v1/keys?rotation_due=true").await;
    assert_eq!(due.body["total"], 0);

    // An edit sets and clears it.
    let fid = future["id"].as_str().unwrap();
    let edited = service
        .patch(fid, json!({"rotate_by": "2002-02-02T00:00:00Z"}))
        .await;
    assert_eq!(edited.body["rotation_due"], true, "{}", edited.body);
    let edited = service.patch(fid, json!({"name": "renamed"})).await;
    assert_eq!(edited.body["rotate_by"], "2002-02-02T00:00:00Z");
    let edited = service.patch(fid, json!({"rotate_by": null})).await;
    assert_eq!(edited.body["rotate_by"], Value::Null);
    let bad = service.patch(fid, json!({"rotate_by": "later"})).await;
    assert_eq!(
        bad.error(),
        (400, "invalid_value".into(), Some("rotate_by".into()))
    );
}
