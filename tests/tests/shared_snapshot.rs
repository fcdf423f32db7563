//! The snapshot lives once per Envoy, in proxy-wasm shared data: one VM syncs it for all
//! workers, a full load comes in pages, and every worker answers from it.

use std::time::Duration;

use keygate_e2e::api::{chat, client, create_key, filter_stat, until_synced};
use keygate_e2e::seed::{secret_of, seed_keys};
use keygate_e2e::stack::Stack;
use serde_json::json;

/// Snapshot requests the key-service has answered (its own metrics: the filters also
/// report usage to it, which must not count here).
fn key_service_requests(stack: &Stack) -> u64 {
    let text = client()
        .get(format!("{}/metrics", stack.key_service_url))
        .send()
        .and_then(|r| r.text())
        .expect("key-service metrics");
    text.lines()
        .filter(|l| l.starts_with("keygate_snapshot_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn one_vm_syncs_for_every_worker_of_an_envoy() {
    // Four workers and the main thread: five VMs, one lease.
    let stack = Stack::builder().concurrency(4).start();
    let key = create_key(&stack, json!({"name": "shared"}));
    assert_eq!(
        until_synced(|| chat(&stack, Some(&key.secret))).status(),
        200
    );
    // New connections spread over the workers; each answers from the shared snapshot.
    for _ in 0..40 {
        assert_eq!(chat(&stack, Some(&key.secret)).status(), 200);
    }
    // Their usage is in and answered.
    std::thread::sleep(Duration::from_secs(1));
    let before = key_service_requests(&stack);
    // Three changes: the lease holder, waiting on the feed, is answered once for each
    // and waits again; five VMs waiting would be answered fifteen times.
    for n in 0..3 {
        create_key(&stack, json!({"name": format!("change-{n}")}));
        std::thread::sleep(Duration::from_secs(1));
    }
    let answers = key_service_requests(&stack) - before;
    assert!(
        (1..=6).contains(&answers),
        "{answers} snapshot answers for 3 changes to an Envoy with 5 VMs"
    );
}

#[test]
fn a_full_load_comes_in_pages_and_counts_every_key() {
    let dir = std::env::temp_dir().join(format!(
        "keygate-seed-{}",
        keygate_e2e::stack::random_token()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("seeded.db");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(seed_keys(&db, 7));
    let stack = Stack::builder()
        .database(&db)
        .filter_setting("snapshot_page_size", "2")
        .start();
    assert_eq!(
        until_synced(|| chat(&stack, Some(&secret_of(6)))).status(),
        200
    );
    for i in 0..7 {
        assert_eq!(chat(&stack, Some(&secret_of(i))).status(), 200, "key {i}");
    }
    assert_eq!(filter_stat(&stack, "keygate.keys_loaded"), Some(7));
    let log = stack.log("envoy");
    assert!(
        log.contains("loaded into shared data, 7 keys"),
        "the load is logged once it is complete"
    );
    std::fs::remove_dir_all(&dir).ok();
}
