//! The key snapshot: the wire format the key-service serves on `GET /filter/v1/snapshot`,
//! and the groups and accounts tables every VM keeps (keys themselves live in shared
//! data, see `shared`).
//!
//! Keys travel only as SHA-256 hashes (lower-case hex). Times are Unix seconds.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::model::ModelList;
use crate::pricing::Price;

/// `GET /filter/v1/snapshot` response body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotWire {
    /// Version of the key data this snapshot reflects; grows with every change.
    pub version: u64,
    /// `true` for an answer to `?since=V`: `keys` then holds only the keys changed after
    /// version V (as they are now) and `revoked` the hashes taken out of service since
    /// (rotated away, deleted). `false`: one page of the full snapshot, keys in hash order.
    #[serde(default)]
    pub delta: bool,
    pub keys: Vec<KeyRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<String>,
    /// In a full snapshot, the cursor (`?after=`) of the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Every group's model list. A snapshot without groups restricts no model by group.
    #[serde(default)]
    pub groups: Vec<GroupRecord>,
    /// Every account's balance. A snapshot without accounts limits no key by balance.
    #[serde(default)]
    pub accounts: Vec<AccountRecord>,
    /// Every model's prices, to estimate and settle what a request costs (`ledger`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prices: Vec<PriceRecord>,
}

/// What the leader needs of an answer before reading all of it: whether it is a delta,
/// and the cursor of the next page. Deserialized alone, it skips the keys without
/// building them, several times faster than the whole answer.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PageHead {
    #[serde(default)]
    pub delta: bool,
    #[serde(default)]
    pub next: Option<String>,
}

/// The groups and accounts of a snapshot: small, sent whole with every answer, stored in
/// one shared-data entry and read into each VM's `Tables`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TablesWire {
    #[serde(default)]
    pub groups: Vec<GroupRecord>,
    #[serde(default)]
    pub accounts: Vec<AccountRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prices: Vec<PriceRecord>,
}

/// A model's prices in credits per 1,000,000 tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceRecord {
    pub name: String,
    pub input: f64,
    pub output: f64,
    pub cached_input: f64,
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
    /// Price multiplier of the group's keys.
    #[serde(default = "one")]
    pub ratio: f64,
    /// Requests per minute each key of the group may make; `None` = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens per minute each key of the group may use; `None` = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
}

fn one() -> f64 {
    1.0
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Addresses and CIDRs requests may come from; empty = any source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_allowlist: Vec<String>,
    /// Models this key may use, within its group's; empty = every model the group allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Credits the key may still spend (`quota - used_quota`); `None` = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_quota: Option<i64>,
    /// The key's own rate limits (its group's may be stricter); `None` = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Requests of the key in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u64>,
}

/// Each group's model list and each account's balance, as one VM looks them up.
#[derive(Debug, Default, PartialEq)]
pub struct Tables {
    groups: HashMap<String, ModelList>,
    /// Whether the snapshot carried groups at all; if it did, an unknown group allows no
    /// model (fail closed), if not, groups restrict nothing.
    groups_known: bool,
    accounts: HashMap<String, Option<i64>>,
    /// Likewise for accounts: an unknown account has nothing to spend.
    accounts_known: bool,
    ratios: HashMap<String, f64>,
    prices: HashMap<String, Price>,
    /// `(rpm, tpm)` of the groups that have either.
    rates: HashMap<String, (Option<u64>, Option<u64>)>,
}

static ANY_MODEL: ModelList = ModelList::Any;
static NO_MODEL: ModelList = ModelList::Only(Vec::new());

impl Tables {
    pub fn new(wire: TablesWire) -> Tables {
        Tables {
            groups_known: !wire.groups.is_empty(),
            rates: wire
                .groups
                .iter()
                .filter(|g| g.rpm.is_some() || g.tpm.is_some())
                .map(|g| (g.name.clone(), (g.rpm, g.tpm)))
                .collect(),
            ratios: wire
                .groups
                .iter()
                .map(|g| (g.name.clone(), g.ratio))
                .collect(),
            prices: wire
                .prices
                .into_iter()
                .map(|p| {
                    let price = Price {
                        input: p.input,
                        cached_input: p.cached_input,
                        output: p.output,
                    };
                    (p.name, price)
                })
                .collect(),
            groups: wire
                .groups
                .into_iter()
                .map(|g| (g.name, ModelList::for_group(&g.models)))
                .collect(),
            accounts_known: !wire.accounts.is_empty(),
            accounts: wire
                .accounts
                .into_iter()
                .map(|a| (a.name, a.balance))
                .collect(),
        }
    }

    /// The model list of a group.
    pub fn group_models(&self, group: &str) -> &ModelList {
        match self.groups.get(group) {
            Some(models) => models,
            None if self.groups_known => &NO_MODEL,
            None => &ANY_MODEL,
        }
    }

    /// Whether these tables name the group and the account (or name none of either): a
    /// key whose group or account they lack came with a later sync than they did.
    pub fn knows(&self, group: &str, account: &str) -> bool {
        (!self.groups_known || self.groups.contains_key(group))
            && (!self.accounts_known || self.accounts.contains_key(account))
    }

    /// Whether an account has credits to spend.
    pub fn account_has_credit(&self, account: &str) -> bool {
        match self.accounts.get(account) {
            Some(balance) => balance.is_none_or(|b| b > 0),
            None => !self.accounts_known,
        }
    }

    /// An account's balance; `None` = unlimited (or no accounts sent).
    pub fn balance(&self, account: &str) -> Option<i64> {
        match self.accounts.get(account) {
            Some(balance) => *balance,
            None if self.accounts_known => Some(0),
            None => None,
        }
    }

    /// A group's price multiplier (1 for a group the snapshot does not name).
    pub fn ratio(&self, group: &str) -> f64 {
        self.ratios.get(group).copied().unwrap_or(1.0)
    }

    /// A group's `(rpm, tpm)` limits for each of its keys; `None` = no limit.
    pub fn group_rates(&self, group: &str) -> (Option<u64>, Option<u64>) {
        if self.rates.is_empty() {
            return (None, None);
        }
        self.rates.get(group).copied().unwrap_or((None, None))
    }

    /// A model's prices: its own, else the most specific pattern's (`gpt-4o-*`, see
    /// `model::specificity`); `None` = nobody priced it.
    pub fn price(&self, model: &str) -> Option<Price> {
        crate::model::lookup(&self.prices, model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn wire_format_parses_with_optional_fields_absent() {
        let json = r#"{"version":3,"keys":[{"id":"k","name":"n","hash":"00","account":"a",
            "group":"g","enabled":false}]}"#;
        let wire: SnapshotWire = serde_json::from_str(json).unwrap();
        assert_eq!(wire.keys[0].expires_at, None);
        assert!(!wire.keys[0].enabled);
        assert!(wire.keys[0].models.is_empty());
        assert!(wire.groups.is_empty());
        assert!(wire.revoked.is_empty());
        assert_eq!(wire.next, None);
    }

    #[test]
    fn account_balances_fail_closed_only_when_accounts_were_sent() {
        let account = |name: &str, balance| AccountRecord {
            name: name.into(),
            balance,
        };
        let tables = Tables::new(TablesWire {
            groups: vec![],
            accounts: vec![
                account("rich", None),
                account("some", Some(5)),
                account("broke", Some(0)),
                account("owing", Some(-3)),
            ],
            prices: vec![],
        });
        let expected = [
            ("rich", true),
            ("some", true),
            ("broke", false),
            ("owing", false),
            ("vanished", false),
        ];
        for (name, has) in expected {
            assert_eq!(tables.account_has_credit(name), has, "account {name}");
        }
        assert!(Tables::default().account_has_credit("anyone"));
        assert_eq!(tables.balance("some"), Some(5));
        assert_eq!(tables.balance("vanished"), Some(0));
        assert!(tables.knows("any group: none were sent", "some"));
        assert!(!tables.knows("any group: none were sent", "vanished"));
        assert_eq!(Tables::default().balance("anyone"), None);
    }

    #[test]
    fn group_model_lists_fail_closed_only_when_groups_were_sent() {
        assert_eq!(Tables::default().group_models("any"), &ModelList::Any);
        let tables = Tables::new(TablesWire {
            groups: vec![
                GroupRecord {
                    name: "default".into(),
                    models: vec!["*".into()],
                    ratio: 1.0,
                    rpm: None,
                    tpm: None,
                },
                GroupRecord {
                    name: "cheap".into(),
                    models: vec!["gpt-4o-mini".into()],
                    ratio: 0.5,
                    rpm: Some(60),
                    tpm: None,
                },
            ],
            accounts: vec![],
            prices: vec![PriceRecord {
                name: "gpt-4o-mini".into(),
                input: 0.15,
                output: 0.6,
                cached_input: 0.075,
            }],
        });
        assert_eq!((tables.ratio("cheap"), tables.ratio("unknown")), (0.5, 1.0));
        assert_eq!(tables.group_rates("cheap"), (Some(60), None));
        assert_eq!(tables.group_rates("default"), (None, None));
        assert_eq!(tables.price("gpt-4o-mini").map(|p| p.output), Some(0.6));
        assert_eq!(tables.price("gpt-4o"), None);
        assert_eq!(tables.group_models("default"), &ModelList::Any);
        assert!(tables.group_models("cheap").allows("gpt-4o-mini"));
        assert!(!tables.group_models("cheap").allows("gpt-4o"));
        assert!(!tables.group_models("unknown").allows("gpt-4o-mini"));
        assert!(tables.knows("cheap", "any account: none were sent"));
        assert!(!tables.knows("unknown", "any account: none were sent"));
    }
}
