use reqwest::Method;
use serde_json::json;

use crate::{Service, FILTER};

#[tokio::test]
async fn the_snapshot_carries_each_key_by_the_hash_of_its_secret() {
    let service = Service::start().await;
    let empty = service.snapshot().await;
    assert_eq!(empty.status, 200);
    assert_eq!(
        empty.body,
        json!({"version": 0, "delta": false, "keys": [],
            "groups": [{"name": "default", "models": ["*"], "ratio": 1.0}],
            "accounts": [{"name": "default", "balance": null}]})
    );
    // Prices travel too once there are any, for the filter's quota estimates.
    let put = service
        .request(
            Method::PUT,
            "/api/v1/models/gpt-4o-mini",
            Some(crate::ADMIN),
        )
        .json(&json!({"input": 0.15, "output": 0.6}));
    assert_eq!(service.send(put).await.status, 201);
    assert_eq!(
        service.snapshot().await.body["prices"],
        json!([{"name": "gpt-4o-mini", "input": 0.15, "output": 0.6, "cached_input": 0.15}])
    );

    let created = service
        .create_ok(json!({"name": "ci", "expires_at": "2099-01-01T00:00:00Z",
            "models": ["gpt-4o-mini"], "ip_allowlist": ["10.0.0.0/8"],
            "unlimited_quota": false, "quota": 500}))
        .await;
    let key = &created[0];
    let secret = key["key"].as_str().unwrap();

    let reply = service.snapshot().await;
    let wire: keygate_core::sync::snapshot::SnapshotWire =
        serde_json::from_value(reply.body.clone()).unwrap();
    assert_eq!(wire.version, 2, "the price, then the key");
    assert_eq!(wire.keys.len(), 1);
    let record = &wire.keys[0];
    assert_eq!(
        record.hash,
        keygate_core::keys::secret::hash_hex(&keygate_core::keys::secret::hash(secret))
    );
    assert_eq!(record.id, key["id"].as_str().unwrap());
    assert_eq!(record.name, "ci");
    assert_eq!(
        (record.account.as_str(), record.group.as_str()),
        ("default", "default")
    );
    assert!(record.enabled);
    assert_eq!(record.expires_at, Some(4_070_908_800));
    assert_eq!(record.models, ["gpt-4o-mini"]);
    assert_eq!(record.ip_allowlist, ["10.0.0.0/8"]);
    assert_eq!(record.remaining_quota, Some(500));
    assert!(
        !reply.body.to_string().contains(secret),
        "the secret itself never travels"
    );

    // The filter's own encoder accepts it, under the name the filter looks the secret up by.
    let (name, value) = keygate_core::keys::entry::encode(record, 1).unwrap();
    assert_eq!(
        name,
        keygate_core::keys::entry::name(&keygate_core::keys::secret::hash(secret))
    );
    let entry = keygate_core::keys::entry::decode(value).unwrap();
    assert_eq!(entry.id(), record.id);
    assert!(entry.allows_model("gpt-4o-mini") && !entry.allows_model("gpt-4o"));
}

#[tokio::test]
async fn full_snapshots_are_paged_and_the_page_size_is_checked() {
    let service = Service::start().await;
    service.create_ok(json!({"name": "k", "quantity": 5})).await;
    let get = |path: String| service.send(service.request(Method::GET, &path, Some(FILTER)));
    let mut seen = Vec::new();
    let mut path = "/filter/v1/snapshot?limit=2".to_string();
    loop {
        let page = get(path.clone()).await;
        assert_eq!(page.status, 200);
        let wire: keygate_core::sync::snapshot::SnapshotWire =
            serde_json::from_value(page.body).unwrap();
        assert!(!wire.delta && wire.keys.len() <= 2);
        seen.extend(wire.keys.into_iter().map(|k| k.hash));
        match wire.next {
            Some(next) => path = format!("/filter/v1/snapshot?limit=2&after={next}"),
            None => break,
        }
    }
    let mut distinct = seen.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!((seen.len(), distinct.len()), (5, 5), "every key once");
    for bad in ["limit=0", "limit=100001", "limit=x", "unknown=1"] {
        let reply = get(format!("/filter/v1/snapshot?{bad}")).await;
        let (status, _, param) = reply.error();
        assert_eq!(status, 400, "{bad}");
        assert!(param.is_some(), "{bad}");
    }
}

#[tokio::test]
async fn the_version_grows_with_every_change() {
    let service = Service::start().await;
    let mut last = 0;
    for quantity in [1, 3, 1] {
        service
            .create_ok(json!({"name": "k", "quantity": quantity}))
            .await;
        let version = service.snapshot().await.body["version"].as_u64().unwrap();
        assert!(version > last, "{version} after {last}");
        last = version;
    }
    let id = service.snapshot().await.body["keys"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    service.store.set_enabled(&id, false, 1).await.unwrap();
    let after = service.snapshot().await.body;
    assert!(after["version"].as_u64().unwrap() > last);
    let record = after["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap();
    assert_eq!(record["enabled"], false);
}

#[tokio::test]
async fn an_unchanged_snapshot_is_answered_with_304() {
    let service = Service::start().await;
    service.create_ok(json!({"name": "k"})).await;
    let first = service.snapshot().await;
    let etag = first.headers["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", first.body["version"]));

    let poll = |tag: String| {
        service.send(
            service
                .request(Method::GET, "/filter/v1/snapshot", Some(FILTER))
                .header("if-none-match", tag),
        )
    };
    let unchanged = poll(etag.clone()).await;
    assert_eq!(unchanged.status, 304);
    assert_eq!(unchanged.headers["etag"].to_str().unwrap(), etag);
    assert_eq!(unchanged.body, serde_json::Value::Null);

    service.create_ok(json!({"name": "k2"})).await;
    let changed = poll(etag.clone()).await;
    assert_eq!(changed.status, 200);
    assert_ne!(changed.headers["etag"].to_str().unwrap(), etag);
    assert_eq!(changed.body["keys"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn since_answers_with_only_the_changes_after_that_version() {
    let service = Service::start().await;
    let keep = service.create_ok(json!({"name": "keep"})).await.remove(0);
    let edit = service.create_ok(json!({"name": "edit"})).await.remove(0);
    let gone = service.create_ok(json!({"name": "gone"})).await.remove(0);
    let v3 = service.snapshot().await.body["version"].as_u64().unwrap();
    assert_eq!(v3, 3);

    let id = |k: &serde_json::Value| k["id"].as_str().unwrap().to_owned();
    let path = |k: &serde_json::Value| format!("/api/v1/keys/{}", id(k));
    let patch = service
        .request(Method::PATCH, &path(&edit), Some(crate::ADMIN))
        .json(&json!({"enabled": false}));
    assert_eq!(service.send(patch).await.status, 200);
    let delete = service.request(Method::DELETE, &path(&gone), Some(crate::ADMIN));
    assert_eq!(service.send(delete).await.status, 204);
    let added = service.create_ok(json!({"name": "new"})).await.remove(0);

    let delta = service
        .send(service.request(Method::GET, "/filter/v1/snapshot?since=3", Some(FILTER)))
        .await;
    assert_eq!(delta.status, 200);
    let wire: keygate_core::sync::snapshot::SnapshotWire =
        serde_json::from_value(delta.body).unwrap();
    assert!(wire.delta);
    assert_eq!(wire.version, 6);
    let mut changed: Vec<(String, bool)> = wire
        .keys
        .iter()
        .map(|k| (k.id.clone(), k.enabled))
        .collect();
    changed.sort();
    let mut expected = vec![(id(&edit), false), (id(&added), true)];
    expected.sort();
    assert_eq!(changed, expected);
    // The deleted key is named by the hash the filter stores it under.
    let gone_hash = gone["key"]
        .as_str()
        .map(keygate_core::keys::secret::hash)
        .unwrap();
    assert_eq!(
        wire.revoked,
        [keygate_core::keys::secret::hash_hex(&gone_hash)]
    );
    assert!(!wire.keys.iter().any(|k| k.id == id(&keep)));
    assert!(
        !wire.groups.is_empty(),
        "groups and accounts always travel whole"
    );

    // Nothing since the current version: an empty delta. A version this database never
    // had (or 0): everything.
    let none = service
        .send(service.request(Method::GET, "/filter/v1/snapshot?since=6", Some(FILTER)))
        .await;
    assert_eq!(none.body["delta"], true);
    assert_eq!(none.body["keys"], json!([]));
    for since in ["0", "99"] {
        let path = format!("/filter/v1/snapshot?since={since}");
        let full = service
            .send(service.request(Method::GET, &path, Some(FILTER)))
            .await;
        assert_eq!(full.body["delta"], false, "since={since}");
        assert_eq!(full.body["keys"].as_array().unwrap().len(), 3);
    }
    let bad = service
        .send(service.request(Method::GET, "/filter/v1/snapshot?since=x", Some(FILTER)))
        .await;
    let (status, _, param) = bad.error();
    assert_eq!((status, param.as_deref()), (400, Some("query")));
}

#[tokio::test]
async fn key_and_group_rate_limits_travel_in_full_snapshots_and_deltas() {
    let service = Service::start().await;
    let put_group = |body: serde_json::Value| {
        service.send(
            service
                .request(Method::PUT, "/api/v1/groups/metered", Some(crate::ADMIN))
                .json(&body),
        )
    };
    assert_eq!(
        put_group(json!({"rpm": 600, "tpm": 1_000_000}))
            .await
            .status,
        201
    );
    let limited = service
        .create_ok(json!({"name": "limited", "group": "metered",
            "rpm": 60, "tpm": 100_000, "max_parallel": 4}))
        .await
        .remove(0);
    let plain = service
        .create_ok(json!({"name": "plain", "group": "metered"}))
        .await
        .remove(0);
    // The raw JSON: a field left out is not the same as one sent as null or 0.
    let find = |body: &serde_json::Value, list: &str, field: &str, value: &serde_json::Value| {
        body[list]
            .as_array()
            .unwrap()
            .iter()
            .find(|item| &item[field] == value)
            .unwrap_or_else(|| panic!("no {list} entry with {field} {value} in {body}"))
            .as_object()
            .unwrap()
            .clone()
    };
    let limits = |record: &serde_json::Map<String, serde_json::Value>| {
        ["rpm", "tpm", "max_parallel"].map(|f| record.get(f).cloned())
    };

    let full = service.snapshot().await.body;
    assert_eq!(full["delta"], false);
    assert_eq!(
        limits(&find(&full, "keys", "id", &limited["id"])),
        [Some(json!(60)), Some(json!(100_000)), Some(json!(4))]
    );
    assert_eq!(
        limits(&find(&full, "keys", "id", &plain["id"])),
        [None, None, None],
        "a key without limits has none of the fields"
    );
    let metered = find(&full, "groups", "name", &json!("metered"));
    assert_eq!(
        (metered.get("rpm"), metered.get("tpm")),
        (Some(&json!(600)), Some(&json!(1_000_000)))
    );
    let default = find(&full, "groups", "name", &json!("default"));
    assert!(!default.contains_key("rpm") && !default.contains_key("tpm"));
    // The filter's own types read them.
    let wire: keygate_core::sync::snapshot::SnapshotWire =
        serde_json::from_value(full.clone()).unwrap();
    let record = wire.keys.iter().find(|k| k.name == "limited").unwrap();
    assert_eq!(
        (record.rpm, record.tpm, record.max_parallel),
        (Some(60), Some(100_000), Some(4))
    );
    let group = wire.groups.iter().find(|g| g.name == "metered").unwrap();
    assert_eq!((group.rpm, group.tpm), (Some(600), Some(1_000_000)));

    // Changes reach a delta: limits set, cleared, and the group's replaced.
    let since = full["version"].as_u64().unwrap();
    for (key, body) in [
        (&limited, json!({"rpm": null, "tpm": 5})),
        (&plain, json!({"max_parallel": 2})),
    ] {
        let path = format!("/api/v1/keys/{}", key["id"].as_str().unwrap());
        let patch = service
            .request(Method::PATCH, &path, Some(crate::ADMIN))
            .json(&body);
        assert_eq!(service.send(patch).await.status, 200, "{body}");
    }
    assert_eq!(put_group(json!({"rpm": 300})).await.status, 200);
    let path = format!("/filter/v1/snapshot?since={since}");
    let delta = service
        .send(service.request(Method::GET, &path, Some(FILTER)))
        .await
        .body;
    assert_eq!(delta["delta"], true, "{delta}");
    assert_eq!(
        limits(&find(&delta, "keys", "id", &limited["id"])),
        [None, Some(json!(5)), Some(json!(4))]
    );
    assert_eq!(
        limits(&find(&delta, "keys", "id", &plain["id"])),
        [None, None, Some(json!(2))]
    );
    let metered = find(&delta, "groups", "name", &json!("metered"));
    assert_eq!(
        (metered.get("rpm"), metered.get("tpm")),
        (Some(&json!(300)), None)
    );
}

/// Pushed changes: filters that are up to date wait on the feed (`wait`) and are all
/// answered with the delta as soon as a change commits; with no change, 304 when the wait
/// ends.
#[tokio::test]
async fn waiting_filters_are_answered_as_soon_as_a_change_commits() {
    let service = std::sync::Arc::new(Service::start().await);
    let created = service.create_ok(json!({"name": "watched"})).await;
    let id = created[0]["id"].as_str().unwrap().to_owned();
    let version = service.snapshot().await.body["version"].as_u64().unwrap();
    let wait = |ms: u64| {
        let service = std::sync::Arc::clone(&service);
        async move {
            let path = format!("/filter/v1/snapshot?since={version}&wait={ms}");
            let request = service
                .request(Method::GET, &path, Some(FILTER))
                .header("if-none-match", format!("\"{version}\""));
            service.send(request).await
        }
    };
    // Nothing changes: 304 once the wait is over.
    let started = std::time::Instant::now();
    assert_eq!(wait(300).await.status, 304);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));

    let waiting: Vec<_> = (0..3).map(|_| tokio::spawn(wait(30_000))).collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "answered before any change"
    );
    let started = std::time::Instant::now();
    let patch = service
        .request(
            Method::PATCH,
            &format!("/api/v1/keys/{id}"),
            Some(crate::ADMIN),
        )
        .json(&json!({"enabled": false}));
    assert_eq!(service.send(patch).await.status, 200);
    for answer in waiting {
        let answer = answer.await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(answer.body["delta"], true);
        let keys = answer.body["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1, "{}", answer.body);
        assert_eq!(keys[0]["enabled"], false);
    }
    // Long before the 30 s wait: the change was pushed.
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // A wait longer than allowed is cut to the maximum, not refused.
    let capped = format!("/filter/v1/snapshot?since={version}&wait=999999999");
    let reply = service
        .send(service.request(Method::GET, &capped, Some(FILTER)))
        .await;
    assert_eq!(reply.status, 200);
}
