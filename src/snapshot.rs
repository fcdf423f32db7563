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
    pub fn from_wire(wire: SnapshotWire) -> Loaded {
        let mut by_hash = HashMap::with_capacity(wire.keys.len());
        let mut skipped = 0;
        for record in wire.keys {
            let Some(hash) = secret::parse_hash_hex(&record.hash) else {
                skipped += 1;
                continue;
            };
            by_hash.insert(
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
        let groups_known = !wire.groups.is_empty();
        let groups = wire
            .groups
            .into_iter()
            .map(|g| (g.name, ModelList::for_group(&g.models)))
            .collect();
        let accounts_known = !wire.accounts.is_empty();
        let accounts = wire
            .accounts
            .into_iter()
            .map(|a| (a.name, a.balance))
            .collect();
        Loaded {
            index: KeyIndex {
                version: wire.version,
                by_hash,
                groups,
                groups_known,
                accounts,
                accounts_known,
            },
            skipped,
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
