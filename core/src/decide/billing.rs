//! The one-api-style billing answers (`billing_paths`): `GET /v1/dashboard/billing/
//! subscription` and `GET /v1/dashboard/billing/usage` (and both without `/v1`), which
//! one-api, new-api and the clients written for them (and for the old OpenAI dashboard
//! API they imitate) call with an API key to show its limit and what it used. Answered by
//! the filter from its snapshot, as a key's own view (`decide::key_info`) is, in US
//! dollars at the configured `credits_per_usd`:
//!
//! - subscription: `{"object": "billing_subscription", "has_payment_method": true,
//!   "soft_limit_usd", "hard_limit_usd", "system_hard_limit_usd": the limit,
//!   "access_until": the key's expiry in Unix seconds, 0 for none}`;
//! - usage: `{"object": "list", "total_usage": what the key used, in cents}`.
//!
//! Clients take the limit less `total_usage / 100` as what is left, so the two answers
//! are made to leave exactly what the key's own view calls `remaining_quota`.

use serde_json::json;

use crate::keys::entry::Entry;
use crate::limits::ledger;
use crate::sync::snapshot::Tables;

/// Which of the two answers a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Billing {
    Subscription,
    Usage,
}

impl Billing {
    /// The answer a `GET` on `path` (without its query) asks for, if any: the paths
    /// one-api serves, exactly.
    pub fn of_path(path: &str) -> Option<Billing> {
        match path.strip_prefix("/v1").unwrap_or(path) {
            "/dashboard/billing/subscription" => Some(Billing::Subscription),
            "/dashboard/billing/usage" => Some(Billing::Usage),
            _ => None,
        }
    }
}

/// The limit in dollars of a key with none, as one-api shows an unlimited token (clients
/// take a limit this large as none).
pub const UNLIMITED_USD: f64 = 100_000_000.0;

/// A key's figures in credits, wide enough that no sum of the snapshot's and the
/// ledgers' figures overflows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    /// What the key may spend (in its period); `None`: no limit.
    pub limit: Option<i128>,
    /// What it has spent of that.
    pub used: i128,
}

/// The key's figures at `now` (Unix seconds). `pending` tells what this Envoy holds
/// against a ledger beyond the snapshot (`limits::ledger`), as for the key's own view.
///
/// - A key with a quota: its quota (per period, for a key with one) as the limit, and as
///   used the quota less what the snapshot says is left, plus what this Envoy holds for
///   it. (From a key-service that does not send the quota, the snapshot's figure of
///   what is left stands for the quota, and only what this Envoy holds counts as used.)
/// - A key without one whose account has a balance or a spending limit: what the
///   account has left (less what this Envoy holds for it, and never below 0) as the
///   limit, and 0 used: what such a key spent is not in the snapshot.
/// - Otherwise: no limit, and 0 used.
pub fn figures(key: &Entry, tables: &Tables, now: i64, pending: impl Fn(&str) -> u64) -> Figures {
    if let Some(left) = key.remaining_at(now) {
        let left = i128::from(left);
        let quota = key.quota.map_or(left.max(0), i128::from);
        let held = i128::from(pending(&ledger::key_entry(key.id())));
        return Figures {
            limit: Some(quota),
            used: quota - left + held,
        };
    }
    match tables.balance(key.account(), now) {
        Some(balance) => {
            let held = i128::from(pending(&ledger::account_entry(key.account())));
            Figures {
                limit: Some((i128::from(balance) - held).max(0)),
                used: 0,
            }
        }
        None => Figures {
            limit: None,
            used: 0,
        },
    }
}

/// `credits` in dollars at `credits_per_usd`: always a finite number (0 for a rate of 0,
/// which the configuration refuses).
pub fn usd(credits: i128, credits_per_usd: u64) -> f64 {
    if credits_per_usd == 0 {
        return 0.0;
    }
    // One division of two exact-or-nearest doubles: 918 credits at a million a dollar
    // read 0.000918, not 0.0009179999.
    let dollars = credits as f64 / credits_per_usd as f64;
    if dollars.is_finite() {
        dollars
    } else {
        0.0
    }
}

/// The answer's JSON body.
pub fn render(answer: Billing, key: &Entry, figures: Figures, credits_per_usd: u64) -> String {
    match answer {
        Billing::Subscription => {
            let limit = figures
                .limit
                .map_or(UNLIMITED_USD, |credits| usd(credits, credits_per_usd));
            json!({
                "object": "billing_subscription",
                "has_payment_method": true,
                "soft_limit_usd": limit,
                "hard_limit_usd": limit,
                "system_hard_limit_usd": limit,
                "access_until": key.expires_at.unwrap_or(0).max(0),
            })
        }
        Billing::Usage => json!({
            "object": "list",
            // In cents: what is used times 100, then one division.
            "total_usage": usd(figures.used.saturating_mul(100), credits_per_usd),
        }),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::snapshot::{AccountRecord, KeyRecord, TablesWire};
    use serde_json::Value;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const PER: u64 = 1_000_000;

    fn entry(change: impl FnOnce(&mut KeyRecord)) -> Entry {
        let mut record = KeyRecord::plain("key_1", "app", "sk-test");
        record.account = "team".into();
        change(&mut record);
        Entry::from_record(&record).unwrap()
    }

    fn tables(balance: Option<i64>) -> Tables {
        Tables::new(TablesWire {
            groups: vec![],
            accounts: vec![AccountRecord {
                name: "team".into(),
                balance,
                period_end: None,
                period_balance: None,
            }],
            prices: vec![],
        })
    }

    fn answer(answer: Billing, key: &Entry, figures: Figures) -> Value {
        serde_json::from_str(&render(answer, key, figures, PER)).unwrap()
    }

    #[test]
    fn only_one_apis_four_paths_are_billing_answers() {
        for (path, want) in [
            (
                "/v1/dashboard/billing/subscription",
                Some(Billing::Subscription),
            ),
            (
                "/dashboard/billing/subscription",
                Some(Billing::Subscription),
            ),
            ("/v1/dashboard/billing/usage", Some(Billing::Usage)),
            ("/dashboard/billing/usage", Some(Billing::Usage)),
            ("/v1/dashboard/billing/usage/", None),
            ("/v1/v1/dashboard/billing/usage", None),
            ("/v1/dashboard/billing/credit_grants", None),
            ("/V1/dashboard/billing/usage", None),
            ("/v1/chat/completions", None),
            ("", None),
        ] {
            assert_eq!(Billing::of_path(path), want, "{path}");
        }
    }

    #[test]
    fn a_quota_shows_as_the_limit_and_what_it_used_leaves_what_is_left() {
        let key = entry(|r| {
            r.remaining_quota = Some(400_000);
            r.quota = Some(1_500_000);
            r.expires_at = Some(1_796_396_549);
        });
        // This Envoy holds 100,000 more than the snapshot knows: used 1,200,000.
        let held = |name: &str| if name == "kg:q:k:key_1" { 100_000 } else { 7 };
        let figures = figures(&key, &tables(Some(5)), 1_000, held);
        assert_eq!(
            figures,
            Figures {
                limit: Some(1_500_000),
                used: 1_200_000
            }
        );
        let sub = answer(Billing::Subscription, &key, figures);
        assert_eq!(
            sub,
            json!({"object": "billing_subscription", "has_payment_method": true,
                "soft_limit_usd": 1.5, "hard_limit_usd": 1.5, "system_hard_limit_usd": 1.5,
                "access_until": 1_796_396_549})
        );
        let usage = answer(Billing::Usage, &key, figures);
        assert_eq!(usage, json!({"object": "list", "total_usage": 120.0}));
        // What a client computes as left is what the key's own view says.
        let left = sub["hard_limit_usd"].as_f64().unwrap()
            - usage["total_usage"].as_f64().unwrap() / 100.0;
        assert!((left - 0.3).abs() < 1e-9, "{left}");
        // Small amounts read as written.
        let small = Figures {
            limit: Some(918),
            used: 102,
        };
        assert_eq!(
            answer(Billing::Subscription, &key, small)["hard_limit_usd"],
            0.000918
        );
        assert_eq!(answer(Billing::Usage, &key, small)["total_usage"], 0.0102);
    }

    #[test]
    fn a_period_quota_counts_afresh_once_the_period_ends() {
        let key = entry(|r| {
            r.remaining_quota = Some(-50);
            r.period_end = Some(2_000);
            r.period_quota = Some(1_000);
            r.quota = Some(1_000);
        });
        let before = figures(&key, &Tables::default(), 1_999, |_| 0);
        assert_eq!(
            (before.limit, before.used),
            (Some(1_000), 1_050),
            "overdrawn"
        );
        let after = figures(&key, &Tables::default(), 2_000, |_| 3);
        assert_eq!((after.limit, after.used), (Some(1_000), 3));
    }

    #[test]
    fn an_exhausted_or_zero_quota_still_answers() {
        let key = entry(|r| {
            r.remaining_quota = Some(0);
            r.quota = Some(0);
        });
        let figures = figures(&key, &tables(Some(0)), 0, |_| 0);
        assert_eq!((figures.limit, figures.used), (Some(0), 0));
        let sub = answer(Billing::Subscription, &key, figures);
        assert_eq!(
            (sub["hard_limit_usd"].as_f64(), sub["access_until"].as_i64()),
            (Some(0.0), Some(0))
        );
        assert_eq!(answer(Billing::Usage, &key, figures)["total_usage"], 0.0);
    }

    #[test]
    fn a_key_without_a_quota_shows_its_accounts_balance_or_no_limit() {
        let key = entry(|_| {});
        let funded = figures(&key, &tables(Some(2_500_000)), 0, |name| {
            if name == "kg:q:a:team" {
                500_000
            } else {
                0
            }
        });
        assert_eq!((funded.limit, funded.used), (Some(2_000_000), 0));
        assert_eq!(
            answer(Billing::Subscription, &key, funded)["hard_limit_usd"],
            2.0
        );
        // An overdrawn account leaves nothing, never less.
        let overdrawn = figures(&key, &tables(Some(-9)), 0, |_| u64::MAX);
        assert_eq!(overdrawn.limit, Some(0));
        // No limit anywhere: one-api's mark of an unlimited token.
        let open = figures(&key, &tables(None), 0, |_| 0);
        assert_eq!(
            open,
            Figures {
                limit: None,
                used: 0
            }
        );
        let sub = answer(Billing::Subscription, &key, open);
        assert_eq!(sub["hard_limit_usd"], UNLIMITED_USD);
        assert_eq!(sub["soft_limit_usd"], 100_000_000.0);
        assert_eq!(answer(Billing::Usage, &key, open)["total_usage"], 0.0);
    }

    #[test]
    fn figures_at_the_extremes_never_overflow_and_stay_finite() {
        let cases = [
            (Some(i64::MAX), Some(i64::MIN), u64::MAX),
            (Some(i64::MIN), Some(i64::MAX), u64::MAX),
            (Some(i64::MAX), Some(i64::MAX), 0),
            (None, Some(i64::MIN), u64::MAX),
            (None, Some(i64::MAX), 0),
        ];
        for (quota, left, held) in cases {
            let key = entry(|r| {
                r.remaining_quota = left;
                r.quota = quota;
                r.expires_at = Some(i64::MIN);
            });
            let figures = figures(&key, &tables(Some(i64::MIN)), i64::MAX, |_| held);
            for per in [1, PER, u64::MAX, 0] {
                for which in [Billing::Subscription, Billing::Usage] {
                    let text = render(which, &key, figures, per);
                    assert!(!text.contains("null"), "{text}");
                    let body: Value = serde_json::from_str(&text).unwrap();
                    for field in ["hard_limit_usd", "total_usage"] {
                        if let Some(n) = body.get(field) {
                            assert!(n.as_f64().unwrap().is_finite(), "{text}");
                        }
                    }
                    if which == Billing::Subscription {
                        assert_eq!(body["access_until"], 0, "a past expiry reads 0");
                    }
                }
            }
        }
        // The widest figures at one credit a dollar: large, finite numbers.
        let key = entry(|r| {
            r.remaining_quota = Some(i64::MIN);
            r.quota = Some(i64::MAX);
        });
        let f = figures(&key, &Tables::default(), 0, |_| u64::MAX);
        assert_eq!(
            f.used,
            i128::from(i64::MAX) - i128::from(i64::MIN) + i128::from(u64::MAX)
        );
        let usage: Value = serde_json::from_str(&render(Billing::Usage, &key, f, 1)).unwrap();
        let cents = usage["total_usage"].as_f64().unwrap();
        assert!(cents > 3.6e21 && cents.is_finite(), "{cents}");
        assert_eq!(usd(i128::MAX, 1), i128::MAX as f64);
        assert_eq!(usd(i128::MIN, 0), 0.0);
    }
}
