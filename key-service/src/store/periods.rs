//! Budget periods rolling over. A key's (or account's) current period is stored as
//! `[period_start, period_end)`; once `period_end` has passed, the next period begins
//! with nothing used. Rolling over is a write, done by whichever comes first:
//!
//! - billing usage of the key or account (`ingest_usage` rolls what it bills first, so
//!   a record lands in the period its time falls in);
//! - `roll_periods`, which the service runs every few seconds for every key and account
//!   due, so snapshots and listings move on without traffic.
//!
//! Until then, reads treat a passed period as over: the status and the used figure of a
//! key come out of SQL as if rolled (see `key_view!`), a lease grant counts nothing used,
//! and the filter, told `period_end` in each record, counts the whole quota from then on.
//!
//! So rolling a key over writes no change-log row: the filter's record of the key is
//! right as it is (from its `period_end` on, the whole quota), and a month's first second
//! does not send every key with a monthly quota to every Envoy. Usage billed in the new
//! period moves the key in the log as any usage does. Accounts are few and travel in the
//! tables: rolling one over moves the log once.

use sqlx::query::Query;
use sqlx::{Database, Encode, Type};

use super::keys::{period_of, window_of};
use super::{with_pool, BeginWrite, Get, Store, StoreError};
use crate::budget::Window;

/// Keys and accounts rolled over per transaction: a month's first second may roll every
/// key at once, and the writer lock is shared with billing.
pub const ROLL_BATCH: i64 = 1_000;

/// `$1` key id, `$2` new start, `$3` new end, `$4` the end it had (a guard: rolled once).
pub(super) const ROLL_KEY: &str = "UPDATE keys SET used_quota = 0, period_start = $2, \
     period_end = $3 WHERE id = $1 AND period_end = $4";
/// The same for an account (`$1` its name).
pub(super) const ROLL_ACCOUNT: &str = "UPDATE accounts SET period_used = 0, period_start = $2, \
     period_end = $3 WHERE name = $1 AND period_end = $4";

/// `ROLL_KEY` or `ROLL_ACCOUNT` for the key or account `id`, from its `old` period to
/// `new`.
pub(super) fn roll<'q, DB: Database>(
    statement: &'static str,
    id: &'q str,
    old: Window,
    new: Window,
) -> Query<'q, DB, <DB as Database>::Arguments>
where
    &'q str: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
{
    sqlx::query(statement)
        .bind(id)
        .bind(new.start)
        .bind(new.end)
        .bind(old.end)
}

/// What an account's keys may still spend: the lesser of its balance and what its
/// spending limit leaves of the period (`period_used` spent); `None` = no limit.
pub fn account_left(
    balance: Option<i64>,
    spend_limit: Option<i64>,
    period_used: i64,
) -> Option<i64> {
    let period_left = spend_limit.map(|limit| limit.saturating_sub(period_used));
    match (balance, period_left) {
        (Some(b), Some(p)) => Some(b.min(p)),
        (b, p) => b.or(p),
    }
}

impl Store {
    /// The period that follows a stored one whose end has passed by `now`: the window
    /// holding `now`, continuing from the stored start for a span. `None` if the stored
    /// text is not a period (then the period is left as it is).
    pub(super) fn next_window(&self, period: &str, old: Window, now: i64) -> Option<Window> {
        let period = period.parse().ok()?;
        self.window(period, old.start, now)
    }

    /// Rolls over up to `ROLL_BATCH` keys and as many accounts whose period ended by
    /// `now`; returns how many rolled.
    pub async fn roll_periods(&self, now: i64) -> Result<u64, StoreError> {
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let mut rolled = 0u64;
            let keys = sqlx::query(
                "SELECT id, quota_period, period_start, period_end FROM keys \
                 WHERE period_end IS NOT NULL AND period_end <= $1 LIMIT $2",
            )
            .bind(now)
            .bind(ROLL_BATCH)
            .fetch_all(&mut *tx)
            .await?;
            for row in &keys {
                let id = row.text("id")?;
                let period = period_of(&id, row.text("quota_period")?)?;
                let Some(old) = window_of(row)? else { continue };
                let Some(new) = self.window(period, old.start, now) else {
                    continue;
                };
                roll(ROLL_KEY, &id, old, new).execute(&mut *tx).await?;
                rolled += 1;
            }
            let accounts = sqlx::query(
                "SELECT name, quota_period, period_start, period_end FROM accounts \
                 WHERE period_end IS NOT NULL AND period_end <= $1 LIMIT $2",
            )
            .bind(now)
            .bind(ROLL_BATCH)
            .fetch_all(&mut *tx)
            .await?;
            for row in &accounts {
                let name = row.text("name")?;
                let Some(old) = window_of(row)? else { continue };
                let Some(new) = self.next_window(&row.text("quota_period")?, old, now) else {
                    continue;
                };
                roll(ROLL_ACCOUNT, &name, old, new)
                    .execute(&mut *tx)
                    .await?;
                rolled += 1;
            }
            if !accounts.is_empty() {
                sqlx::query(
                    "INSERT INTO key_changes (key_id, kind, at) VALUES ('', 'account', $1)",
                )
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(rolled)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Period;
    use crate::store::leases::tests::{ask, one, record, sql, store};
    use crate::store::{AccountEdit, KeyEdit, UsageRecord};

    /// `k1` (quota 1,000, account `team`) on a 100-second period from t = 1,000.
    async fn periodic() -> (tempfile::TempDir, Store) {
        let (dir, store) = store().await;
        let edit = KeyEdit {
            quota_period: Some(Period::Span(100)),
            ..KeyEdit::default()
        };
        assert!(store.update_key("k1", &edit, 1_000).await.unwrap());
        (dir, store)
    }

    fn at(request_id: &str, cost: u64, ts: i64) -> UsageRecord {
        UsageRecord {
            ts,
            ..record(request_id, "k1", cost)
        }
    }

    async fn used(store: &Store, now: i64) -> (i64, Option<Window>) {
        let key = store.get_key("k1", now).await.unwrap().unwrap();
        (key.used_quota, key.period)
    }

    #[tokio::test]
    async fn each_record_is_billed_to_the_period_its_time_falls_in() {
        let (_dir, store) = periodic().await;
        store.set_balance("team", Some(10_000), 0).await.unwrap();
        let first = Window {
            start: 1_000,
            end: 1_100,
        };
        store
            .ingest_usage(&[at("a", 700, 1_050)], None, 1_060)
            .await
            .unwrap();
        assert_eq!(used(&store, 1_099).await, (700, Some(first)));
        // At the boundary the key has its whole quota again, rolled over or not.
        let second = Window {
            start: 1_100,
            end: 1_200,
        };
        assert_eq!(used(&store, 1_100).await, (0, Some(second)));
        let status = store.get_key("k1", 1_100).await.unwrap().unwrap().status;
        assert_eq!(status, crate::store::KeyStatus::Active);
        // A record from the first period that arrives late is billed to no period (it was
        // counted in its own), one from the second to the second: nothing twice.
        store
            .ingest_usage(&[at("late", 250, 1_099), at("b", 40, 1_101)], None, 1_102)
            .await
            .unwrap();
        assert_eq!(used(&store, 1_150).await, (40, Some(second)));
        // The account's balance pays for both.
        let team = store.get_account("team", 1_150).await.unwrap().unwrap();
        assert_eq!(team.balance, Some(10_000 - 700 - 250 - 40));
        // A period skipped without traffic: the next one still follows the anchor.
        assert_eq!(store.roll_periods(1_450).await.unwrap(), 1);
        let fourth = Window {
            start: 1_400,
            end: 1_500,
        };
        assert_eq!(used(&store, 1_450).await, (0, Some(fourth)));
        assert_eq!(store.roll_periods(1_450).await.unwrap(), 0, "rolled once");
    }

    #[tokio::test]
    async fn the_record_carries_the_reset_and_rolling_over_sends_no_key_again() {
        let (_dir, store) = periodic().await;
        store
            .ingest_usage(&[at("a", 900, 1_010)], None, 1_010)
            .await
            .unwrap();
        let page = crate::store::SnapshotPage {
            after: None,
            limit: 10,
        };
        let before = store.snapshot(None, &page, 1_010).await.unwrap();
        let record = |body: &crate::store::SnapshotBody| {
            let keys: Vec<keygate_core::sync::snapshot::KeyRecord> =
                serde_json::from_str(&format!("[{}]", body.keys.join(","))).unwrap();
            keys.into_iter().find(|k| k.id == "k1")
        };
        // What the filter holds: 100 left until 1,100, then the whole 1,000.
        let k1 = record(&before).unwrap();
        assert_eq!(
            (k1.remaining_quota, k1.period_end, k1.period_quota),
            (Some(100), Some(1_100), Some(1_000))
        );
        // Rolling over changes nothing the filter must fetch (see the module).
        assert_eq!(store.roll_periods(1_100).await.unwrap(), 1);
        let delta = store
            .snapshot(Some(before.version), &page, 1_100)
            .await
            .unwrap();
        assert_eq!((delta.version, record(&delta)), (before.version, None));
        // Usage in the new period sends it, with the new period.
        store
            .ingest_usage(&[at("b", 40, 1_110)], None, 1_110)
            .await
            .unwrap();
        let delta = store
            .snapshot(Some(before.version), &page, 1_110)
            .await
            .unwrap();
        let k1 = record(&delta).unwrap();
        assert_eq!(
            (k1.remaining_quota, k1.period_end, k1.period_quota),
            (Some(960), Some(1_200), Some(1_000))
        );
    }

    #[tokio::test]
    async fn a_lease_after_the_boundary_is_granted_from_the_new_period() {
        let (_dir, store) = periodic().await;
        store
            .ingest_usage(&[at("a", 1_000, 1_010)], Some("h1"), 1_010)
            .await
            .unwrap();
        let grant = one(&store, "h1", ask("k:k1", 1_000, 10, 10), 1_099_000).await;
        assert_eq!(grant.granted, 1_000, "nothing left in the first period");
        // Not rolled over yet, and still granted from the new period.
        let grant = one(&store, "h1", ask("k:k1", 1_000, 10, 10), 1_100_000).await;
        assert_eq!(grant.granted, 1_010);
    }

    #[tokio::test]
    async fn an_account_spending_limit_resets_each_period_and_its_balance_does_not() {
        let (_dir, store) = store().await;
        let edit = AccountEdit {
            balance: Some(Some(10_000)),
            spend_limit: Some(Some(300)),
            quota_period: Some(Period::Span(100)),
            max_keys: None,
        };
        assert!(store.update_account("team", &edit, 1_000).await.unwrap());
        store
            .ingest_usage(&[at("a", 250, 1_010)], Some("h1"), 1_010)
            .await
            .unwrap();
        let team = store.get_account("team", 1_020).await.unwrap().unwrap();
        assert_eq!((team.balance, team.period_used), (Some(9_750), 250));
        // The account's lease is bounded by what the limit leaves: 50.
        let grant = one(&store, "h1", ask("a:team", 250, 100, 100), 1_020_000).await;
        assert_eq!(grant.granted, 250 + 50);
        let key = store.get_key("k1", 1_020).await.unwrap().unwrap();
        assert_eq!(key.status, crate::store::KeyStatus::Active);
        store
            .ingest_usage(&[at("b", 50, 1_030)], Some("h1"), 1_030)
            .await
            .unwrap();
        let key = store.get_key("k1", 1_030).await.unwrap().unwrap();
        assert_eq!(key.status, crate::store::KeyStatus::Exhausted);
        let key = store.get_key("k1", 1_100).await.unwrap().unwrap();
        assert_eq!(key.status, crate::store::KeyStatus::Active, "a new period");
        let team = store.get_account("team", 1_100).await.unwrap().unwrap();
        assert_eq!((team.balance, team.period_used), (Some(9_700), 0));
        let grant = one(&store, "h1", ask("a:team", 300, 100, 100), 1_100_000).await;
        assert_eq!(grant.granted, 300 + 100);
    }

    #[tokio::test]
    async fn model_caps_count_their_models_per_period_and_reach_the_snapshot() {
        use crate::keys::caps::Unit;
        let (_dir, store) = store().await;
        store.set_balance("team", None, 0).await.unwrap();
        let edit = KeyEdit {
            model_caps: Some(vec![
                ("m*".into(), Unit::Credits, 100, Period::Span(100)),
                ("x".into(), Unit::Tokens, 1_000, Period::Total),
            ]),
            ..KeyEdit::default()
        };
        assert!(store.update_key("k1", &edit, 1_000).await.unwrap());
        let mut other = at("x1", 7, 1_010);
        other.model = "x".into();
        store
            .ingest_usage(&[at("a", 30, 1_010), other], None, 1_010)
            .await
            .unwrap();
        let caps = store
            .get_key("k1", 1_020)
            .await
            .unwrap()
            .unwrap()
            .model_caps;
        assert_eq!((caps[0].used, caps[1].used), (30, 7), "credits, tokens");
        // The next period: a late record of the first counts in none; a new one counts.
        store
            .ingest_usage(&[at("late", 50, 1_099), at("b", 5, 1_101)], None, 1_102)
            .await
            .unwrap();
        let caps = store
            .get_key("k1", 1_102)
            .await
            .unwrap()
            .unwrap()
            .model_caps;
        assert_eq!((caps[0].used, caps[0].period_start), (5, Some(1_100)));
        // A retried record counts once.
        store
            .ingest_usage(&[at("b", 5, 1_101)], None, 1_103)
            .await
            .unwrap();
        let page = crate::store::SnapshotPage {
            after: None,
            limit: 10,
        };
        let body = store.snapshot(None, &page, 1_103).await.unwrap();
        let keys: Vec<keygate_core::sync::snapshot::KeyRecord> =
            serde_json::from_str(&format!("[{}]", body.keys.join(","))).unwrap();
        let k1 = keys.into_iter().find(|k| k.id == "k1").unwrap();
        let wire: Vec<_> = k1
            .model_caps
            .iter()
            .map(|c| (c.model.as_str(), c.used, c.limit, c.period_end))
            .collect();
        assert_eq!(wire, [("m*", 5, 100, Some(1_200)), ("x", 7, 1_000, None)]);
        // Editing keeps what an unchanged cap used; `{}` takes them all away.
        let edit = KeyEdit {
            model_caps: Some(vec![("m*".into(), Unit::Credits, 500, Period::Span(100))]),
            ..KeyEdit::default()
        };
        store.update_key("k1", &edit, 1_150).await.unwrap();
        let caps = store
            .get_key("k1", 1_150)
            .await
            .unwrap()
            .unwrap()
            .model_caps;
        assert_eq!((caps.len(), caps[0].used, caps[0].limit), (1, 5, 500));
        let edit = KeyEdit {
            model_caps: Some(vec![]),
            ..KeyEdit::default()
        };
        store.update_key("k1", &edit, 1_150).await.unwrap();
        assert!(store
            .get_key("k1", 1_150)
            .await
            .unwrap()
            .unwrap()
            .model_caps
            .is_empty());
    }

    #[tokio::test]
    async fn an_account_spending_limit_alerts_each_threshold_once_per_period() {
        let (_dir, store) = store().await;
        let edit = AccountEdit {
            balance: Some(None),
            spend_limit: Some(Some(300)),
            quota_period: Some(Period::Span(100)),
            max_keys: None,
        };
        assert!(store.update_account("team", &edit, 1_000).await.unwrap());
        let bill = |id: &'static str, cost, ts| {
            let store = store.clone();
            async move {
                store
                    .ingest_usage(&[at(id, cost, ts)], None, ts)
                    .await
                    .unwrap();
            }
        };
        bill("a", 160, 1_010).await;
        bill("b", 100, 1_020).await;
        bill("c", 10, 1_030).await;
        bill("d", 160, 1_110).await;
        let crossings: Vec<(String, i64)> = with_pool!(store, |pool| {
            sqlx::query(
                "SELECT kind, payload FROM alert_events WHERE kind LIKE 'account.%' \
                 ORDER BY created_at, payload",
            )
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|row| {
                let payload: serde_json::Value =
                    serde_json::from_str(&row.text("payload").unwrap()).unwrap();
                let threshold = payload["data"]["threshold"].as_i64().unwrap_or(0);
                (row.text("kind").unwrap(), threshold)
            })
            .collect()
        });
        let kinds: Vec<(&str, i64)> = crossings.iter().map(|(k, t)| (k.as_str(), *t)).collect();
        assert_eq!(
            kinds,
            [
                ("account.threshold", 50),
                ("account.threshold", 80),
                ("account.threshold", 50)
            ],
            "once per threshold and period: {crossings:?}"
        );
    }

    /// A key's cap on some models alerts as its budget does: each threshold once per
    /// period, exhaustion once, naming the model and the unit; a late record counts in
    /// no period and alerts nothing.
    #[tokio::test]
    async fn a_model_cap_alerts_each_threshold_once_per_period() {
        use crate::keys::caps::Unit;
        let (_dir, store) = store().await;
        store.set_balance("team", None, 0).await.unwrap();
        let edit = KeyEdit {
            model_caps: Some(vec![
                ("m*".into(), Unit::Credits, 100, Period::Span(100)),
                ("x".into(), Unit::Tokens, 10, Period::Total),
            ]),
            ..KeyEdit::default()
        };
        assert!(store.update_key("k1", &edit, 1_000).await.unwrap());
        let tokens = |id: &str, n, ts| UsageRecord {
            model: "x".into(),
            ..at(id, n, ts)
        };
        let bills = [
            vec![at("a", 40, 1_010)],
            vec![at("b", 45, 1_020), tokens("t", 10, 1_020)],
            vec![at("c", 45, 1_030)],
            vec![at("late", 90, 1_099), at("d", 60, 1_101)],
        ];
        for (batch, now) in bills.iter().zip([1_010, 1_020, 1_030, 1_102]) {
            store.ingest_usage(batch, None, now).await.unwrap();
        }
        let events: Vec<serde_json::Value> = with_pool!(store, |pool| {
            sqlx::query(
                "SELECT payload FROM alert_events WHERE kind LIKE 'model_cap.%' \
                 ORDER BY created_at, payload",
            )
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|row| serde_json::from_str(&row.text("payload").unwrap()).unwrap())
            .collect()
        });
        let seen: Vec<_> = events
            .iter()
            .map(|e| {
                let d = &e["data"];
                (
                    e["type"].as_str().unwrap_or("").to_owned(),
                    d["model"].as_str().unwrap_or("").to_owned(),
                    d["unit"].as_str().unwrap_or("").to_owned(),
                    d["threshold"].as_i64(),
                    d["used"].as_i64().unwrap_or(-1),
                )
            })
            .collect();
        let want = |kind: &str, model: &str, unit: &str, t: Option<i64>, used: i64| {
            (kind.to_owned(), model.to_owned(), unit.to_owned(), t, used)
        };
        let mut expected = vec![
            want("model_cap.threshold", "m*", "credits", Some(50), 85),
            want("model_cap.threshold", "m*", "credits", Some(80), 85),
            want("model_cap.exhausted", "x", "tokens", None, 10),
            want("model_cap.threshold", "x", "tokens", Some(50), 10),
            want("model_cap.threshold", "x", "tokens", Some(80), 10),
            want("model_cap.threshold", "x", "tokens", Some(100), 10),
            want("model_cap.exhausted", "m*", "credits", None, 130),
            want("model_cap.threshold", "m*", "credits", Some(100), 130),
            // The next period: 60 of 100 (the late 90 counts in none).
            want("model_cap.threshold", "m*", "credits", Some(50), 60),
        ];
        // (Events of one second are in no set order.)
        let mut seen = seen;
        seen.sort();
        expected.sort();
        assert_eq!(seen, expected);
        let key = &events[0]["data"]["key"];
        assert_eq!(
            (key["id"].as_str(), key["account"].as_str()),
            (Some("k1"), Some("team"))
        );
    }

    #[tokio::test]
    async fn extreme_amounts_and_times_neither_panic_nor_overflow() {
        let (_dir, store) = periodic().await;
        sql(
            &store,
            "UPDATE keys SET used_quota = 9223372036854775807, quota = 9223372036854775807",
        )
        .await;
        store
            .ingest_usage(&[at("a", u64::MAX, 1_050)], None, 1_050)
            .await
            .unwrap();
        assert_eq!(used(&store, 1_050).await.0, i64::MAX);
        sql(&store, "UPDATE keys SET period_start = 0, period_end = 1").await;
        assert_eq!(store.roll_periods(i64::MAX).await.unwrap(), 1);
        let key = store.get_key("k1", i64::MAX).await.unwrap().unwrap();
        assert_eq!(key.used_quota, 0);
        assert!(account_left(Some(i64::MIN), Some(i64::MAX), i64::MIN).is_some());
        assert_eq!(account_left(None, Some(5), i64::MIN), Some(i64::MAX));
        assert_eq!(
            account_left(Some(3), Some(i64::MIN), i64::MAX),
            Some(i64::MIN)
        );
    }
}
