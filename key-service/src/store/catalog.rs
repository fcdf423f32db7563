//! Groups, model prices and accounts. Groups and accounts travel in every snapshot, so each
//! change to them writes a change-log row (with an empty `key_id`) in the same transaction:
//! the snapshot version moves and filters pick up the new tables with their next delta.

use super::keys::{parse_list, period_of, window_of};
use super::{with_pool, BeginWrite, Get, Store, StoreError};
use serde::Serialize;

/// A group as stored and shown by the API.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct GroupRow {
    pub name: String,
    /// `["*"]` = every model.
    pub models: Vec<String>,
    pub ratio: f64,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    /// The account that owns the group, whose keys alone may use it and whose tenants
    /// alone see it; `null` = shared by every account.
    pub account: Option<String>,
}

/// A model's prices in credits per 1,000,000 tokens.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModelPrice {
    pub name: String,
    pub input: f64,
    pub output: f64,
    /// The input price when none was set.
    pub cached_input: f64,
    /// For prompt-cache writes; the input price when none was set.
    pub cache_write: f64,
    /// Credits per call.
    pub per_request: f64,
}

/// A model's prices as they are set: `None` = the input price.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NewPrice {
    pub input: f64,
    pub output: f64,
    pub cached_input: Option<f64>,
    pub cache_write: Option<f64>,
    pub per_request: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AccountRow {
    pub name: String,
    /// Credits left; `None` = unlimited.
    pub balance: Option<i64>,
    /// Credits the account's keys may spend per period, whatever the balance; `None` =
    /// no such limit.
    pub spend_limit: Option<i64>,
    /// How often `period_used` starts afresh: `total`, `day`, `week`, `month` or a span
    /// such as `72h`.
    pub quota_period: String,
    /// Credits spent in the current period.
    pub period_used: i64,
    /// When the current period began and when it starts afresh (RFC 3339); `null` for
    /// `total`.
    pub period_start: Option<String>,
    pub resets_at: Option<String>,
    /// How many keys the account may hold; `None` = no limit.
    pub max_keys: Option<i64>,
}

/// A checked change to an account: `None` leaves a field as it is; `Some(None)` takes the
/// balance or the spending limit away (unlimited).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccountEdit {
    pub balance: Option<Option<i64>>,
    pub spend_limit: Option<Option<i64>>,
    /// A different period than the account has starts one now, with nothing spent.
    pub quota_period: Option<crate::budget::Period>,
    /// `Some(None)`: no limit on the number of keys.
    pub max_keys: Option<Option<i64>>,
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    Deleted,
    NotFound,
    /// Keys still use it.
    InUse,
}

impl GroupRow {
    /// A group with the defaults: every model, ratio 1, no limits.
    pub fn open(name: &str) -> GroupRow {
        GroupRow {
            name: name.into(),
            models: vec!["*".into()],
            ratio: 1.0,
            rpm: None,
            tpm: None,
            account: None,
        }
    }
}

fn group_row(row: &impl Get) -> Result<GroupRow, StoreError> {
    let name = row.text("name")?;
    let models = parse_list(&name, "groups.models", row.text("models")?)?;
    Ok(GroupRow {
        models,
        ratio: row.real("ratio")?,
        rpm: row.opt_int("rpm")?,
        tpm: row.opt_int("tpm")?,
        account: row.opt_text("account")?,
        name,
    })
}

fn price_row(row: &impl Get) -> Result<ModelPrice, StoreError> {
    let input = row.real("input")?;
    Ok(ModelPrice {
        name: row.text("name")?,
        input,
        output: row.real("output")?,
        cached_input: row.opt_real("cached_input")?.unwrap_or(input),
        cache_write: row.opt_real("cache_write")?.unwrap_or(input),
        per_request: row.real("per_request")?,
    })
}

/// The columns `account_row` reads, with `$1` = now: a period that has ended shows as
/// having nothing spent, rolled over or not yet.
macro_rules! account_columns {
    () => {
        "SELECT name, balance, spend_limit, quota_period, period_start, period_end, max_keys, \
         CASE WHEN period_end <= $1 THEN 0 ELSE period_used END AS period_used FROM accounts"
    };
}

impl Store {
    fn account_row(&self, row: &impl Get, now: i64) -> Result<AccountRow, StoreError> {
        let name = row.text("name")?;
        let period = period_of(&name, row.text("quota_period")?)?;
        let window = window_of(row)?.map(|old| match old.end <= now {
            true => self.window(period, old.start, now).unwrap_or(old),
            false => old,
        });
        let time = |unix: i64| crate::expiry::to_rfc3339(unix);
        Ok(AccountRow {
            balance: row.opt_int("balance")?,
            spend_limit: row.opt_int("spend_limit")?,
            quota_period: period.to_string(),
            period_used: row.int("period_used")?,
            period_start: window.and_then(|w| time(w.start)),
            resets_at: window.and_then(|w| time(w.end)),
            max_keys: row.opt_int("max_keys")?,
            name,
        })
    }
}

/// Records that the snapshot's tables changed (`$1` = what changed, `$2` = when).
const RECORD_TABLE_CHANGE: &str = "INSERT INTO key_changes (key_id, kind, at) VALUES ('', $1, $2)";

impl Store {
    pub async fn list_groups(&self) -> Result<Vec<GroupRow>, StoreError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT name, models, ratio, rpm, tpm, account FROM groups ORDER BY name",
            )
            .fetch_all(pool)
            .await?;
            rows.iter().map(group_row).collect()
        })
    }

    pub async fn get_group(&self, name: &str) -> Result<Option<GroupRow>, StoreError> {
        with_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT name, models, ratio, rpm, tpm, account FROM groups WHERE name = $1",
            )
            .bind(name)
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(group_row).transpose()
        })
    }

    /// Creates or replaces a group; `Some(true)` when it was created, `None` (and nothing
    /// changed) when it would become an account's own while other accounts' keys use it.
    pub async fn put_group(&self, group: &GroupRow, now: i64) -> Result<Option<bool>, StoreError> {
        let models = serde_json::to_string(&group.models).unwrap_or_else(|_| "[]".into());
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(RECORD_TABLE_CHANGE)
                .bind("group")
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let existed = sqlx::query("SELECT 1 FROM groups WHERE name = $1")
                .bind(&group.name)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if let Some(owner) = &group.account {
                let others = sqlx::query(
                    "SELECT 1 FROM keys WHERE group_name = $1 AND account <> $2 LIMIT 1",
                )
                .bind(&group.name)
                .bind(owner)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
                if others {
                    tx.rollback().await?;
                    return Ok(None);
                }
            }
            sqlx::query(
                "INSERT INTO groups (name, models, ratio, rpm, tpm, account) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (name) DO UPDATE SET models = excluded.models, \
                 ratio = excluded.ratio, rpm = excluded.rpm, tpm = excluded.tpm, \
                 account = excluded.account",
            )
            .bind(&group.name)
            .bind(&models)
            .bind(group.ratio)
            .bind(group.rpm)
            .bind(group.tpm)
            .bind(group.account.as_deref())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Some(!existed))
        })
    }

    /// Deletes a group no key uses.
    pub async fn delete_group(&self, name: &str, now: i64) -> Result<Removed, StoreError> {
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let used = sqlx::query("SELECT 1 FROM keys WHERE group_name = $1 LIMIT 1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if used {
                tx.rollback().await?;
                return Ok(Removed::InUse);
            }
            let deleted = sqlx::query("DELETE FROM groups WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if deleted == 0 {
                tx.rollback().await?;
                return Ok(Removed::NotFound);
            }
            // Logged only once it happened: a PostgreSQL sequence number taken by a
            // rolled-back transaction stays taken (a harmless gap, but a needless one).
            sqlx::query(RECORD_TABLE_CHANGE)
                .bind("group")
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Removed::Deleted)
        })
    }

    pub async fn list_prices(&self) -> Result<Vec<ModelPrice>, StoreError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT name, input, output, cached_input, cache_write, per_request \
                 FROM model_prices ORDER BY name",
            )
            .fetch_all(pool)
            .await?;
            rows.iter().map(price_row).collect()
        })
    }

    pub async fn get_price(&self, name: &str) -> Result<Option<ModelPrice>, StoreError> {
        with_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT name, input, output, cached_input, cache_write, per_request \
                 FROM model_prices WHERE name = $1",
            )
            .bind(name)
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(price_row).transpose()
        })
    }

    /// Sets a model's prices; `true` when the model had none before.
    pub async fn put_price(
        &self,
        name: &str,
        price: &NewPrice,
        now: i64,
    ) -> Result<bool, StoreError> {
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let updated = sqlx::query(
                "UPDATE model_prices SET input = $2, output = $3, cached_input = $4, \
                 per_request = $5, cache_write = $6 WHERE name = $1",
            )
            .bind(name)
            .bind(price.input)
            .bind(price.output)
            .bind(price.cached_input)
            .bind(price.per_request)
            .bind(price.cache_write)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 0 {
                sqlx::query(
                    "INSERT INTO model_prices \
                     (name, input, output, cached_input, per_request, cache_write) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(name)
                .bind(price.input)
                .bind(price.output)
                .bind(price.cached_input)
                .bind(price.per_request)
                .bind(price.cache_write)
                .execute(&mut *tx)
                .await?;
            }
            // Prices travel in the snapshot (the filter estimates costs with them).
            sqlx::query(RECORD_TABLE_CHANGE)
                .bind("price")
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(updated == 0)
        })
    }

    pub async fn list_accounts(&self, now: i64) -> Result<Vec<AccountRow>, StoreError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(concat!(account_columns!(), " ORDER BY name"))
                .bind(now)
                .fetch_all(pool)
                .await?;
            rows.iter().map(|row| self.account_row(row, now)).collect()
        })
    }

    pub async fn get_account(
        &self,
        name: &str,
        now: i64,
    ) -> Result<Option<AccountRow>, StoreError> {
        with_pool!(self, |pool| {
            let row = sqlx::query(concat!(account_columns!(), " WHERE name = $2"))
                .bind(now)
                .bind(name)
                .fetch_optional(pool)
                .await?;
            row.as_ref()
                .map(|row| self.account_row(row, now))
                .transpose()
        })
    }

    /// Adds an account (`balance` `None` = unlimited); a duplicate name is a unique
    /// violation.
    pub async fn create_account(
        &self,
        name: &str,
        balance: Option<i64>,
        now: i64,
    ) -> Result<(), StoreError> {
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query("INSERT INTO accounts (name, balance) VALUES ($1, $2)")
                .bind(name)
                .bind(balance)
                .execute(&mut *tx)
                .await?;
            sqlx::query(RECORD_TABLE_CHANGE)
                .bind("account")
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Sets an account's balance; `false` when there is no such account.
    pub async fn set_balance(
        &self,
        name: &str,
        balance: Option<i64>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let edit = AccountEdit {
            balance: Some(balance),
            ..AccountEdit::default()
        };
        self.update_account(name, &edit, now).await
    }

    /// Changes an account; `false` when there is no such account.
    pub async fn update_account(
        &self,
        name: &str,
        edit: &AccountEdit,
        now: i64,
    ) -> Result<bool, StoreError> {
        let window = edit.quota_period.and_then(|p| self.window(p, now, now));
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let updated = sqlx::query(
                "UPDATE accounts SET balance = CASE WHEN $2 THEN $3 ELSE balance END, \
                     spend_limit = CASE WHEN $4 THEN $5 ELSE spend_limit END, \
                     period_used = CASE WHEN $6 <> quota_period THEN 0 ELSE period_used END, \
                     period_start = CASE WHEN $6 <> quota_period THEN $7 ELSE period_start END, \
                     period_end = CASE WHEN $6 <> quota_period THEN $8 ELSE period_end END, \
                     quota_period = COALESCE($6, quota_period), \
                     max_keys = CASE WHEN $9 THEN $10 ELSE max_keys END \
                 WHERE name = $1",
            )
            .bind(name)
            .bind(edit.balance.is_some())
            .bind(edit.balance.flatten())
            .bind(edit.spend_limit.is_some())
            .bind(edit.spend_limit.flatten())
            .bind(edit.quota_period.map(|p| p.to_string()))
            .bind(window.map(|w| w.start))
            .bind(window.map(|w| w.end))
            .bind(edit.max_keys.is_some())
            .bind(edit.max_keys.flatten())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query(RECORD_TABLE_CHANGE)
                .bind("account")
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewKey;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path()).await.unwrap();
        (dir, store)
    }

    fn group(name: &str, models: &[&str]) -> GroupRow {
        GroupRow {
            name: name.into(),
            models: models.iter().map(|m| m.to_string()).collect(),
            ratio: 1.5,
            rpm: Some(60),
            tpm: None,
            account: None,
        }
    }

    #[tokio::test]
    async fn group_and_account_changes_move_the_snapshot_version() {
        let (_dir, store) = store().await;
        let v0 = store.snapshot_version().await.unwrap();
        assert_eq!(
            store
                .put_group(&group("cheap", &["gpt-4o-mini"]), 1)
                .await
                .unwrap(),
            Some(true)
        );
        assert_eq!(
            store
                .put_group(&group("cheap", &["gpt-4o"]), 2)
                .await
                .unwrap(),
            Some(false)
        );
        store.create_account("team", Some(10), 3).await.unwrap();
        assert!(store.set_balance("team", Some(0), 4).await.unwrap());
        assert!(!store.set_balance("nobody", Some(0), 4).await.unwrap());
        assert_eq!(store.snapshot_version().await.unwrap(), v0 + 4);
        assert_eq!(
            store.get_group("cheap").await.unwrap().unwrap().models,
            ["gpt-4o"]
        );
        assert_eq!(
            store.get_account("team", 0).await.unwrap().unwrap().balance,
            Some(0)
        );
    }

    #[tokio::test]
    async fn a_group_in_use_or_unknown_is_not_deleted() {
        let (_dir, store) = store().await;
        store.put_group(&group("used", &["*"]), 1).await.unwrap();
        let key = NewKey {
            id: "k1".into(),
            name: "k".into(),
            key_hash: format!("{:0>64}", 1),
            masked_key: "sk-...".into(),
            account: "default".into(),
            group: "used".into(),
            expires_at: None,
            unlimited_quota: true,
            quota: 0,
            models: vec![],
            ip_allowlist: vec![],
            rpm: None,
            tpm: None,
            max_parallel: None,
            quota_period: crate::budget::Period::Total,
            model_caps: vec![],
            rotate_by: None,
        };
        store.insert_keys(&[key], 1).await.unwrap();
        assert_eq!(store.delete_group("used", 2).await.unwrap(), Removed::InUse);
        assert_eq!(
            store.delete_group("nope", 2).await.unwrap(),
            Removed::NotFound
        );
        let v = store.snapshot_version().await.unwrap();
        store.put_group(&group("spare", &["*"]), 2).await.unwrap();
        assert_eq!(
            store.delete_group("spare", 3).await.unwrap(),
            Removed::Deleted
        );
        assert_eq!(store.snapshot_version().await.unwrap(), v + 2);
    }

    #[tokio::test]
    async fn prices_default_their_cached_input_to_the_input_price() {
        let (_dir, store) = store().await;
        let price = |input, output, cached_input| NewPrice {
            input,
            output,
            cached_input,
            ..NewPrice::default()
        };
        assert!(store
            .put_price("gpt-4o", &price(2.5, 10.0, None), 0)
            .await
            .unwrap());
        assert!(!store
            .put_price("gpt-4o", &price(2.5, 10.0, Some(1.25)), 0)
            .await
            .unwrap());
        store
            .put_price("embed", &price(0.02, 0.0, None), 0)
            .await
            .unwrap();
        let prices = store.list_prices().await.unwrap();
        assert_eq!(prices.len(), 2);
        assert_eq!(prices[0].cached_input, 0.02);
        assert_eq!(prices[1].cached_input, 1.25);
        assert_eq!(store.get_price("none").await.unwrap(), None);
    }
}
