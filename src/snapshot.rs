//! The key snapshot: the wire format the key-service serves on `GET /filter/v1/snapshot`
//! and the in-memory index the filter answers requests from.
//!
//! Keys travel only as SHA-256 hashes (lower-case hex). Times are Unix seconds.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::client_ip::Allowlist;
use crate::model::ModelList;
use crate::secret::{self, KeyHash};

/// `GET /filter/v1/snapshot` response body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotWire {
    /// Version of the key data this snapshot reflects; grows with every change.
    pub version: u64,
    /// `true` for an answer to `?since=V`: `keys` then holds only the keys changed after
    /// version V (as they are now) and `deleted` the ids of keys deleted since. `false`:
    /// every key.
    #[serde(default)]
    pub delta: bool,
    pub keys: Vec<KeyRecord>,
    #[serde(default)]
    pub deleted: Vec<String>,
    /// Every group's model list. A snapshot without groups restricts no model by group.
    #[serde(default)]
    pub groups: Vec<GroupRecord>,
    /// Every account's balance. A snapshot without accounts limits no key by balance.
    #[serde(default)]
    pub accounts: Vec<AccountRecord>,
}

/// An account as the filter needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountRecord {
    pub name: String,
    /// Credits left; `None` = unlimited.
    pub balance: Option<i64>,
}

/// A group as the filter needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub name: String,
    /// Models the group's keys may use; `["*"]` = all.
    pub models: Vec<String>,
}

/// One key as the filter needs to know it. Never carries the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    /// SHA-256 of the secret, 64 lower-case hex digits.
    pub hash: String,
    pub account: String,
    pub group: String,
    pub enabled: bool,
    /// Unix seconds after which the key is refused; `None` = never expires.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// Addresses and CIDRs requests may come from; empty = any source.
    #[serde(default)]
    pub ip_allowlist: Vec<String>,
    /// Models this key may use, within its group's; empty = every model the group allows.
    #[serde(default)]
    pub models: Vec<String>,
    /// Credits the key may still spend (`quota - used_quota`); `None` = unlimited.
    #[serde(default)]
    pub remaining_quota: Option<i64>,
}

/// What the filter keeps per key, found by the hash of the presented secret.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyEntry {
    pub id: String,
    pub name: String,
    pub account: String,
    pub group: String,
    pub enabled: bool,
    pub expires_at: Option<i64>,
    pub ip_allowlist: Allowlist,
    pub models: ModelList,
    pub remaining_quota: Option<i64>,
}

/// All keys of one snapshot version, indexed by hash, and the groups' model lists.
#[derive(Debug, Default)]
pub struct KeyIndex {
    pub version: u64,
    by_hash: HashMap<KeyHash, KeyEntry>,
    /// Which hash each key id has now, so a delta can drop a rotated or deleted key.
    hash_by_id: HashMap<String, KeyHash>,
    groups: HashMap<String, ModelList>,
    /// Whether the snapshot carried groups at all; if it did, an unknown group allows no
    /// model (fail closed), if not, groups restrict nothing.
    groups_known: bool,
    accounts: HashMap<String, Option<i64>>,
    /// Likewise for accounts: an unknown account has nothing to spend.
    accounts_known: bool,
}

static ANY_MODEL: ModelList = ModelList::Any;
static NO_MODEL: ModelList = ModelList::Only(Vec::new());

/// Result of building an index: records whose hash does not parse are skipped and counted,
/// so one bad row cannot stop every other key from loading.
#[derive(Debug)]
pub struct Loaded {
    pub index: KeyIndex,
    pub skipped: usize,
}

impl KeyIndex {
    /// Builds the index of a full snapshot.
    pub fn from_wire(wire: SnapshotWire) -> Loaded {
        let mut index = KeyIndex {
            by_hash: HashMap::with_capacity(wire.keys.len()),
            hash_by_id: HashMap::with_capacity(wire.keys.len()),
            ..KeyIndex::default()
        };
        let skipped = index.apply(wire);
        Loaded { index, skipped }
    }

    /// Applies a delta (or, to an empty index, a full snapshot): changed keys replace what
    /// their id had (a rotated key's old hash goes), deleted ids go, and groups and
    /// accounts, which always travel whole, are replaced. Returns the records skipped for a
    /// bad hash (their id is dropped: fail closed).
    pub fn apply(&mut self, wire: SnapshotWire) -> usize {
        for id in &wire.deleted {
            self.remove_id(id);
        }
        let mut skipped = 0;
        for record in wire.keys {
            self.remove_id(&record.id);
            let Some(hash) = secret::parse_hash_hex(&record.hash) else {
                skipped += 1;
                continue;
            };
            self.hash_by_id.insert(record.id.clone(), hash);
            self.by_hash.insert(
                hash,
                KeyEntry {
                    id: record.id,
                    name: record.name,
                    account: record.account,
                    group: record.group,
                    enabled: record.enabled,
                    expires_at: record.expires_at,
                    ip_allowlist: Allowlist::parse(&record.ip_allowlist),
                    models: ModelList::for_key(&record.models),
                    remaining_quota: record.remaining_quota,
                },
            );
        }
        self.groups_known = !wire.groups.is_empty();
        self.groups = wire
            .groups
            .into_iter()
            .map(|g| (g.name, ModelList::for_group(&g.models)))
            .collect();
        self.accounts_known = !wire.accounts.is_empty();
        self.accounts = wire
            .accounts
            .into_iter()
            .map(|a| (a.name, a.balance))
            .collect();
        self.version = wire.version;
        skipped
    }

    fn remove_id(&mut self, id: &str) {
        if let Some(hash) = self.hash_by_id.remove(id) {
            self.by_hash.remove(&hash);
        }
    }

    pub fn get(&self, hash: &KeyHash) -> Option<&KeyEntry> {
        self.by_hash.get(hash)
    }

    /// The model list of a group.
    pub fn group_models(&self, group: &str) -> &ModelList {
        match self.groups.get(group) {
            Some(models) => models,
            None if self.groups_known => &NO_MODEL,
            None => &ANY_MODEL,
        }
    }

    /// Whether the key has credits to spend: its own quota, and its account's balance.
    pub fn has_credit(&self, key: &KeyEntry) -> bool {
        let quota_left = key.remaining_quota.is_none_or(|left| left > 0);
        let balance_left = match self.accounts.get(&key.account) {
            Some(balance) => balance.is_none_or(|b| b > 0),
            None => !self.accounts_known,
        };
        quota_left && balance_left
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn record(id: &str, hash: String) -> KeyRecord {
        KeyRecord {
            id: id.into(),
            name: format!("name-{id}"),
            hash,
            account: "default".into(),
            group: "default".into(),
            enabled: true,
            expires_at: None,
            ip_allowlist: vec![],
            models: vec![],
            remaining_quota: None,
        }
    }

    #[test]
    fn keys_are_found_by_the_hash_of_their_secret() {
        let h = secret::hash("sk-one");
        let wire = SnapshotWire {
            version: 7,
            keys: vec![record("1", secret::hash_hex(&h))],
            groups: vec![],
            accounts: vec![],
            ..Default::default()
        };
        let loaded = KeyIndex::from_wire(wire);
        assert_eq!(loaded.skipped, 0);
        assert_eq!(loaded.index.version, 7);
        assert_eq!(loaded.index.get(&h).map(|e| e.id.as_str()), Some("1"));
        assert!(loaded.index.get(&secret::hash("sk-two")).is_none());
    }

    #[test]
    fn a_record_with_a_bad_hash_is_skipped_not_fatal() {
        let good = secret::hash("sk-good");
        let wire = SnapshotWire {
            version: 1,
            keys: vec![
                record("bad", "not-hex".into()),
                record("good", secret::hash_hex(&good)),
            ],
            groups: vec![],
            accounts: vec![],
            ..Default::default()
        };
        let loaded = KeyIndex::from_wire(wire);
        assert_eq!(loaded.skipped, 1);
        assert_eq!(loaded.index.len(), 1);
        assert!(loaded.index.get(&good).is_some());
    }

    #[test]
    fn wire_format_parses_with_optional_fields_absent() {
        let json = r#"{"version":3,"keys":[{"id":"k","name":"n","hash":"00","account":"a",
            "group":"g","enabled":false}]}"#;
        let wire: SnapshotWire = serde_json::from_str(json).unwrap();
        assert_eq!(wire.keys[0].expires_at, None);
        assert!(!wire.keys[0].enabled);
        assert!(wire.keys[0].models.is_empty());
        assert!(wire.groups.is_empty());
    }

    #[test]
    fn a_delta_replaces_rotated_keys_and_drops_deleted_ones() {
        let (a, b, c) = (
            secret::hash("sk-a"),
            secret::hash("sk-b"),
            secret::hash("sk-c"),
        );
        let full = SnapshotWire {
            version: 3,
            keys: vec![
                record("1", secret::hash_hex(&a)),
                record("2", secret::hash_hex(&b)),
            ],
            ..Default::default()
        };
        let mut index = KeyIndex::from_wire(full).index;
        let rotated = secret::hash("sk-a2");
        let mut disabled = record("2", secret::hash_hex(&b));
        disabled.enabled = false;
        let delta = SnapshotWire {
            version: 6,
            delta: true,
            keys: vec![
                record("1", secret::hash_hex(&rotated)),
                disabled,
                record("3", secret::hash_hex(&c)),
            ],
            deleted: vec!["gone-before".into()],
            ..Default::default()
        };
        assert_eq!(index.apply(delta), 0);
        assert_eq!(index.version, 6);
        assert!(
            index.get(&a).is_none(),
            "the old secret of a rotated key stops"
        );
        assert_eq!(index.get(&rotated).map(|e| e.id.as_str()), Some("1"));
        assert_eq!(index.get(&b).map(|e| e.enabled), Some(false));
        assert!(index.get(&c).is_some());
        assert_eq!(index.len(), 3);

        let delete = SnapshotWire {
            version: 7,
            delta: true,
            deleted: vec!["1".into(), "3".into()],
            ..Default::default()
        };
        index.apply(delete);
        assert!(index.get(&rotated).is_none());
        assert!(index.get(&c).is_none());
        assert_eq!(index.len(), 1);
        assert_eq!(index.hash_by_id.len(), 1);
    }

    #[test]
    fn credit_needs_both_key_quota_and_account_balance() {
        let key = |id: &str, account: &str, remaining_quota: Option<i64>| {
            let mut r = record(id, secret::hash_hex(&secret::hash(id)));
            r.account = account.into();
            r.remaining_quota = remaining_quota;
            r
        };
        let accounts = vec![
            AccountRecord {
                name: "rich".into(),
                balance: None,
            },
            AccountRecord {
                name: "some".into(),
                balance: Some(5),
            },
            AccountRecord {
                name: "broke".into(),
                balance: Some(0),
            },
        ];
        let keys = vec![
            key("a", "rich", None),
            key("b", "rich", Some(1)),
            key("c", "rich", Some(0)),
            key("d", "some", Some(-3)),
            key("e", "some", None),
            key("f", "broke", None),
            key("g", "vanished", None),
        ];
        let index = KeyIndex::from_wire(SnapshotWire {
            version: 1,
            keys,
            groups: vec![],
            accounts,
            ..Default::default()
        })
        .index;
        let credit = |id: &str| index.has_credit(index.get(&secret::hash(id)).unwrap());
        let expected = [
            ("a", true),
            ("b", true),
            ("c", false),
            ("d", false),
            ("e", true),
            ("f", false),
            ("g", false),
        ];
        for (id, has) in expected {
            assert_eq!(credit(id), has, "key {id}");
        }
    }

    #[test]
    fn group_model_lists_fail_closed_only_when_groups_were_sent() {
        let without = KeyIndex::from_wire(SnapshotWire {
            version: 1,
            keys: vec![],
            groups: vec![],
            accounts: vec![],
            ..Default::default()
        });
        assert_eq!(without.index.group_models("any"), &ModelList::Any);
        let with = KeyIndex::from_wire(SnapshotWire {
            version: 1,
            keys: vec![],
            groups: vec![
                GroupRecord {
                    name: "default".into(),
                    models: vec!["*".into()],
                },
                GroupRecord {
                    name: "cheap".into(),
                    models: vec!["gpt-4o-mini".into()],
                },
            ],
            accounts: vec![],
            ..Default::default()
        });
        let index = with.index;
        assert_eq!(index.group_models("default"), &ModelList::Any);
        assert!(index.group_models("cheap").allows("gpt-4o-mini"));
        assert!(!index.group_models("cheap").allows("gpt-4o"));
        assert!(!index.group_models("gone").allows("gpt-4o-mini"));
    }
}
