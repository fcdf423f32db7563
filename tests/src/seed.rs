//! Key-service databases with many keys, written straight through the key-service's store
//! (the API would take minutes for a million keys): for the benchmark, and for tests that
//! need keys to exist before Envoy starts.

use std::path::Path;

use key_service::config::Database;
use key_service::store::NewKey;
use key_service::Store;
use keygate_core::keys::secret;

/// The secret of seeded key number `i`: deterministic, checksummed like real ones.
pub fn secret_of(i: usize) -> String {
    secret::from_random(&format!("{i:0>42}")).unwrap_or_default()
}

/// Replaces the SQLite database at `path` with one holding `count` plain keys (ids
/// `key_0000000000000000`...), whose secrets are `secret_of(0..count)`.
pub async fn seed_keys(path: &Path, count: usize) {
    let _ = std::fs::remove_file(path);
    seed_database(
        &Database::Sqlite {
            path: path.to_owned(),
        },
        count,
    )
    .await;
}

/// Adds `count` plain keys, as `seed_keys` describes, to an empty database of either engine.
pub async fn seed_database(database: &Database, count: usize) {
    let store = Store::open(database).await.expect("open database");
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..count {
        let secret = secret_of(i);
        batch.push(NewKey {
            id: format!("key_{i:0>16}"),
            name: format!("seeded-{i}"),
            key_hash: secret::hash_hex(&secret::hash(&secret)),
            masked_key: secret::mask(&secret),
            account: "default".into(),
            group: "default".into(),
            expires_at: None,
            unlimited_quota: true,
            quota: 0,
            models: vec![],
            ip_allowlist: vec![],
            rpm: None,
            tpm: None,
            max_parallel: None,
            quota_period: key_service::budget::Period::Total,
            model_caps: vec![],
            rotate_by: None,
        });
        if batch.len() == batch.capacity() || i + 1 == count {
            store.insert_keys(&batch, 0).await.expect("insert keys");
            batch.clear();
        }
    }
    store.close().await;
}
