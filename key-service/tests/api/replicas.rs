//! Several key-service replicas on one database: the versions they hand out come from the
//! database, so a filter may poll any of them and never miss a change, even one whose
//! transaction committed while it was polling.

use std::collections::BTreeSet;

use keygate_core::sync::snapshot::SnapshotWire;
use reqwest::Method;
use serde_json::json;

use crate::{Service, FILTER};

#[tokio::test]
async fn a_filter_polling_one_replica_sees_every_key_written_through_both() {
    let dir = tempfile::tempdir().unwrap();
    let database = key_service::store::test_database(dir.path()).await.unwrap();
    let a = Service::on(&database, tempfile::tempdir().unwrap()).await;
    let b = Service::on(&database, dir).await;

    const PER_REPLICA: usize = 15;
    let write = |service: &'static Service, prefix: &'static str| async move {
        let mut ids = Vec::new();
        for i in 0..PER_REPLICA {
            let keys = service
                .create_ok(json!({"name": format!("{prefix}-{i}")}))
                .await;
            ids.push(keys[0]["id"].as_str().unwrap().to_owned());
        }
        ids
    };
    // Leaked so both writers and the poller can borrow them for the test's length.
    let (a, b): (&'static Service, &'static Service) =
        (Box::leak(Box::new(a)), Box::leak(Box::new(b)));

    // The filter: a full load, then deltas from replica b while both replicas take writes.
    let poll = |since: Option<u64>| async move {
        let path = match since {
            Some(v) => format!("/filter/v1/snapshot?since={v}"),
            None => "/filter/v1/snapshot".to_owned(),
        };
        let reply = b.send(b.request(Method::GET, &path, Some(FILTER))).await;
        if reply.status == 304 {
            return None;
        }
        assert_eq!(reply.status, 200, "{}", reply.body);
        Some(serde_json::from_value::<SnapshotWire>(reply.body).unwrap())
    };
    // One key first, so the filter's version is one the database has passed.
    let early = a.create_ok(json!({"name": "early"})).await;
    let first = poll(None).await.unwrap();
    let mut version = first.version;
    let mut seen: BTreeSet<String> = first.keys.into_iter().map(|k| k.id).collect();
    let writers = tokio::spawn(async move {
        let (from_a, from_b) = tokio::join!(write(a, "a"), write(b, "b"));
        from_a
            .into_iter()
            .chain(from_b)
            .collect::<BTreeSet<String>>()
    });
    let mut polls = 0;
    loop {
        let done = writers.is_finished();
        if let Some(wire) = poll(Some(version)).await {
            assert!(wire.delta, "a delta from a version the database has passed");
            assert!(wire.version >= version, "versions never go back");
            version = wire.version;
            seen.extend(wire.keys.into_iter().map(|k| k.id));
        }
        polls += 1;
        if done {
            break;
        }
    }
    let mut written = writers.await.unwrap();
    assert_eq!(written.len(), 2 * PER_REPLICA);
    written.insert(early[0]["id"].as_str().unwrap().to_owned());
    assert_eq!(
        seen, written,
        "keys the filter never saw (after {polls} polls)"
    );

    // Both replicas answer with the same version.
    let va = a.snapshot().await.body["version"].as_u64().unwrap();
    let vb = b.snapshot().await.body["version"].as_u64().unwrap();
    assert_eq!((va, vb), (version, version));
}
