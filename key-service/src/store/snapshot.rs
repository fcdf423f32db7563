//! The snapshot feed: what `GET /filter/v1/snapshot` and `/filter/v1/check` read. Every
//! key as the filter's `KeyRecord`, built as JSON by the database itself (a million
//! keys must take seconds), in pages for a full load or as a delta from the change log
//! that `keys.rs` writes; with the groups, accounts and prices the filter checks against.

use super::keys::parse_list;
use super::periods::account_left;
use super::{with_pool, BeginWrite, Dialect, Get, Store, StoreError};
use keygate_core::sync::snapshot::{
    AccountRecord, GroupRecord, KeyRecord, PriceRecord, TablesWire,
};

// Each key as the filter's `KeyRecord` JSON, built by the database: decoding a dozen
// columns per row in Rust costs several times what the database takes to write the text,
// and a full snapshot of a million keys must take seconds, not tens of them. Fields at
// their default (no expiry, no lists, unlimited, no rate limits) are left out, as
// `KeyRecord` serializes them. `$hash` and `$expires` are the SQL of the record's hash and expiry.
macro_rules! sqlite_record {
    ($hash:expr, $expires:expr) => {
        concat!(
            "'{\"id\":' || json_quote(k.id) || ',\"name\":' || json_quote(k.name) \
             || ',\"hash\":' || json_quote(",
            $hash,
            ") || ',\"account\":' || json_quote(k.account) \
             || ',\"group\":' || json_quote(k.group_name) \
             || ',\"enabled\":' || CASE WHEN k.enabled THEN 'true' ELSE 'false' END \
             || CASE WHEN ",
            $expires,
            " IS NULL THEN '' ELSE ',\"expires_at\":' || ",
            $expires,
            " END \
             || CASE WHEN k.ip_allowlist = '[]' THEN '' \
                ELSE ',\"ip_allowlist\":' || json(k.ip_allowlist) END \
             || CASE WHEN k.models = '[]' THEN '' ELSE ',\"models\":' || json(k.models) END \
             || CASE WHEN k.model_caps = '[]' THEN '' \
                ELSE ',\"model_caps\":' || json(k.model_caps) END \
             || CASE WHEN k.unlimited_quota THEN '' \
                ELSE ',\"remaining_quota\":' || (k.quota - k.used_quota) \
                    || ',\"quota\":' || k.quota END \
             || CASE WHEN k.unlimited_quota OR k.period_end IS NULL THEN '' \
                ELSE ',\"period_end\":' || k.period_end || ',\"period_quota\":' || k.quota END \
             || CASE WHEN k.rpm IS NULL THEN '' ELSE ',\"rpm\":' || k.rpm END \
             || CASE WHEN k.tpm IS NULL THEN '' ELSE ',\"tpm\":' || k.tpm END \
             || CASE WHEN k.max_parallel IS NULL THEN '' \
                ELSE ',\"max_parallel\":' || k.max_parallel END || '}'"
        )
    };
}

// The same record in PostgreSQL: NULL fields are dropped by json_strip_nulls.
macro_rules! postgres_record {
    ($hash:expr, $expires:expr) => {
        concat!(
            "json_strip_nulls(json_build_object('id', k.id, 'name', k.name, 'hash', ",
            $hash,
            ", 'account', k.account, 'group', k.group_name, 'enabled', k.enabled, \
             'expires_at', ",
            $expires,
            ", 'ip_allowlist', CASE WHEN k.ip_allowlist = '[]' THEN NULL \
                ELSE k.ip_allowlist::json END, \
             'models', CASE WHEN k.models = '[]' THEN NULL ELSE k.models::json END, \
             'model_caps', CASE WHEN k.model_caps = '[]' THEN NULL ELSE k.model_caps::json END, \
             'remaining_quota', CASE WHEN k.unlimited_quota THEN NULL \
                ELSE k.quota - k.used_quota END, \
             'quota', CASE WHEN k.unlimited_quota THEN NULL ELSE k.quota END, \
             'period_end', CASE WHEN k.unlimited_quota THEN NULL ELSE k.period_end END, \
             'period_quota', CASE WHEN k.unlimited_quota OR k.period_end IS NULL THEN NULL \
                ELSE k.quota END, \
             'rpm', k.rpm, 'tpm', k.tpm, 'max_parallel', k.max_parallel))::text"
        )
    };
}

// An old secret in its grace period is a record of its key that expires when the grace
// ends (or the key does, if sooner).
macro_rules! grace_expiry {
    () => {
        "CASE WHEN k.expires_at IS NOT NULL AND k.expires_at < g.until \
         THEN k.expires_at ELSE g.until END"
    };
}

// Every statement of `Dialect` for one engine, from its record macro.
macro_rules! dialect {
    ($record:ident, position: $position:literal, after: $after:literal, first: $first:literal,
     last: $last:literal, join: $join:literal, sum: $sum_open:literal ... $sum_close:literal) => {
        Dialect {
            sum_open: $sum_open,
            sum_close: $sum_close,
            snapshot_page: concat!(
                "SELECT COUNT(*) AS n, ",
                $last,
                " AS cursor, ",
                $join,
                " AS records FROM (SELECT ",
                $position,
                " AS pos, ",
                $record!("k.key_hash", "k.expires_at"),
                " AS record FROM keys k WHERE ",
                $after,
                " LIMIT $2) AS page"
            ),
            first_cursor: $first,
            snapshot_changed: concat!(
                "SELECT ",
                $record!("k.key_hash", "k.expires_at"),
                " AS record FROM keys k \
                 WHERE k.id IN (SELECT key_id FROM key_changes WHERE seq > $1) ORDER BY k.id"
            ),
            grace_records: concat!(
                "SELECT ",
                $record!("g.key_hash", grace_expiry!()),
                " AS record FROM grace_secrets g JOIN keys k ON k.id = g.key_id \
                 WHERE g.until > $1"
            ),
            grace_changed: concat!(
                "SELECT ",
                $record!("g.key_hash", grace_expiry!()),
                " AS record FROM grace_secrets g JOIN keys k ON k.id = g.key_id \
                 WHERE g.until > $1 \
                 AND k.id IN (SELECT key_id FROM key_changes WHERE seq > $2)"
            ),
            record_by_hash: concat!(
                "SELECT record FROM (SELECT ",
                $record!("k.key_hash", "k.expires_at"),
                " AS record FROM keys k WHERE k.key_hash = $2) AS current \
                 UNION ALL SELECT record FROM (SELECT ",
                $record!("g.key_hash", grace_expiry!()),
                " AS record FROM grace_secrets g JOIN keys k ON k.id = g.key_id \
                 WHERE g.until > $1 AND g.key_hash = $2) AS grace LIMIT 1"
            ),
        }
    };
}

// Full snapshots walk SQLite's table in storage (rowid) order, several times faster than
// any index order for a million keys; PostgreSQL walks the primary key. A page comes back
// as one row (its records joined by the database): passing 10,000 rows one by one from
// the database's thread cost more than building them.
pub(crate) static SQLITE: Dialect = dialect!(
    sqlite_record,
    position: "k.rowid",
    after: "k.rowid > CAST($1 AS INTEGER) ORDER BY k.rowid",
    first: "0",
    last: "CAST(MAX(pos) AS TEXT)",
    join: "group_concat(record, ',')",
    sum: "CAST(MIN(TOTAL(" ... "), 9223372036854775807.0) AS INTEGER)"
);
pub(crate) static POSTGRES: Dialect = dialect!(
    postgres_record,
    position: "k.id",
    after: "k.id > $1 ORDER BY k.id",
    first: "",
    last: "MAX(pos)",
    join: "string_agg(record, ',' ORDER BY pos)",
    sum: "CAST(LEAST(SUM(" ... "), 9223372036854775807) AS BIGINT)"
);

const GROUP_TABLE: &str = "SELECT name, models, ratio, rpm, tpm FROM groups ORDER BY name";
const PRICE_TABLE: &str =
    "SELECT name, input, output, cached_input, cache_write, per_request FROM model_prices \
     ORDER BY name";
const ACCOUNT_TABLE: &str = "SELECT name, balance, spend_limit, period_used, period_end \
     FROM accounts ORDER BY name";

impl Store {
    /// The version of the key data: the last change's sequence number, 0 before any.
    /// Read from the database, so every replica sharing it answers the same.
    pub async fn snapshot_version(&self) -> Result<u64, StoreError> {
        let version: i64 = with_pool!(self, |pool| {
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM key_changes")
                .fetch_one(pool)
                .await?
        });
        Ok(u64::try_from(version).unwrap_or(0))
    }

    /// The keys as the filter needs them, with the version they reflect.
    ///
    /// With `since: Some(v)` for a version this database has passed (`0 < v <= now`), a
    /// delta: only the keys changed after `v`, as they are now, and the hashes revoked
    /// since (rotated away or deleted). Otherwise (no `since`, or a version from another
    /// database) one page of the full snapshot: up to `page.limit` keys after the cursor
    /// `page.after`, with `next` set to the cursor of the following page if there may be
    /// one.
    pub async fn snapshot(
        &self,
        since: Option<u64>,
        page: &SnapshotPage,
        now: i64,
    ) -> Result<SnapshotBody, StoreError> {
        let limit = i64::try_from(page.limit).unwrap_or(i64::MAX);
        with_pool!(self, |pool, sql| {
            // One read transaction, version first: should a change commit in between
            // anyway (an engine without snapshot reads), the keys are newer than the
            // version, never older, and the next poll sees a new version and fetches again.
            let mut tx = pool.begin().await?;
            let version: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM key_changes")
                .fetch_one(&mut *tx)
                .await?;
            // A delta needs every change after `since` still in the log: pruning keeps
            // the newest row, so `since` must be at least the oldest kept sequence minus
            // one. Otherwise the answer is a full snapshot, which the filter takes as a
            // reload.
            let oldest: i64 = sqlx::query_scalar("SELECT COALESCE(MIN(seq), 1) FROM key_changes")
                .fetch_one(&mut *tx)
                .await?;
            let since = since
                .and_then(|v| i64::try_from(v).ok())
                .filter(|v| (1..=version).contains(v) && *v >= oldest - 1);
            let mut next = None;
            let (keys, revoked) = match since {
                None => {
                    let page_row = sqlx::query(sql.snapshot_page)
                        .bind(page.after.as_deref().unwrap_or(sql.first_cursor))
                        .bind(limit)
                        .fetch_one(&mut *tx)
                        .await?;
                    if page_row.int("n")? >= limit {
                        next = page_row.opt_text("cursor")?;
                    }
                    let mut keys: Vec<String> = page_row.opt_text("records")?.into_iter().collect();
                    // Old secrets in their grace period are few: they come with the first
                    // page.
                    if page.after.is_none() {
                        let grace: Vec<String> = sqlx::query_scalar(sql.grace_records)
                            .bind(now)
                            .fetch_all(&mut *tx)
                            .await?;
                        keys.extend(grace);
                    }
                    (keys, Vec::new())
                }
                Some(since) => {
                    let mut keys: Vec<String> = sqlx::query_scalar(sql.snapshot_changed)
                        .bind(since)
                        .fetch_all(&mut *tx)
                        .await?;
                    let revoked: Vec<String> = sqlx::query_scalar(
                        "SELECT DISTINCT revoked_hash FROM key_changes \
                         WHERE seq > $1 AND revoked_hash IS NOT NULL ORDER BY revoked_hash",
                    )
                    .bind(since)
                    .fetch_all(&mut *tx)
                    .await?;
                    let grace: Vec<String> = sqlx::query_scalar(sql.grace_changed)
                        .bind(now)
                        .bind(since)
                        .fetch_all(&mut *tx)
                        .await?;
                    keys.extend(grace);
                    (keys, revoked)
                }
            };
            let groups = sqlx::query(GROUP_TABLE).fetch_all(&mut *tx).await?;
            let accounts = sqlx::query(ACCOUNT_TABLE).fetch_all(&mut *tx).await?;
            let prices = sqlx::query(PRICE_TABLE).fetch_all(&mut *tx).await?;
            tx.commit().await?;
            let TablesWire {
                groups,
                accounts,
                prices,
            } = tables(&groups, &accounts, &prices)?;
            Ok(SnapshotBody {
                version: u64::try_from(version).unwrap_or(0),
                delta: since.is_some(),
                keys,
                revoked,
                next,
                groups,
                accounts,
                prices,
            })
        })
    }

    /// Deletes change-log rows written before `before` (unix seconds), always keeping the
    /// newest so the version never goes back. A filter whose version is older than what is
    /// left gets a full snapshot instead of a delta. Returns the rows deleted.
    pub async fn prune_changes(&self, before: i64) -> Result<u64, StoreError> {
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let deleted = sqlx::query(
                "DELETE FROM key_changes WHERE at < $1 \
                 AND seq < (SELECT MAX(seq) FROM key_changes)",
            )
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            Ok(deleted)
        })
    }

    /// The key (or old secret in its grace period) whose secret hashes to `hash_hex`, as
    /// the filter would have it, with the groups and accounts: what `/filter/v1/check`
    /// decides from.
    pub async fn check_view(
        &self,
        hash_hex: Option<&str>,
        now: i64,
    ) -> Result<(Option<KeyRecord>, TablesWire), StoreError> {
        let (record, tables) = with_pool!(self, |pool, sql| {
            let mut conn = pool.acquire().await?;
            let record: Option<String> = match hash_hex {
                Some(hash) => {
                    sqlx::query_scalar(sql.record_by_hash)
                        .bind(now)
                        .bind(hash)
                        .fetch_optional(&mut *conn)
                        .await?
                }
                None => None,
            };
            let groups = sqlx::query(GROUP_TABLE).fetch_all(&mut *conn).await?;
            let accounts = sqlx::query(ACCOUNT_TABLE).fetch_all(&mut *conn).await?;
            let prices = sqlx::query(PRICE_TABLE).fetch_all(&mut *conn).await?;
            (record, tables(&groups, &accounts, &prices)?)
        });
        let record = record
            .map(|json| {
                serde_json::from_str::<KeyRecord>(&json).map_err(|e| StoreError::Corrupt {
                    id: hash_hex.unwrap_or_default().to_owned(),
                    column: "keys",
                    detail: e.to_string(),
                })
            })
            .transpose()?;
        Ok((record, tables))
    }
}

/// Every group's model list, ratio and rate limits, every account's balance and every
/// model's prices, from `GROUP_TABLE`, `ACCOUNT_TABLE` and `PRICE_TABLE`.
fn tables(
    group_rows: &[impl Get],
    account_rows: &[impl Get],
    price_rows: &[impl Get],
) -> Result<TablesWire, StoreError> {
    let groups = group_rows
        .iter()
        .map(|row| {
            let name = row.text("name")?;
            let models = parse_list(&name, "groups.models", row.text("models")?)?;
            Ok(GroupRecord {
                models,
                ratio: row.real("ratio")?,
                rpm: wire_limit(&name, "groups.rpm", row.opt_int("rpm")?)?,
                tpm: wire_limit(&name, "groups.tpm", row.opt_int("tpm")?)?,
                name,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let prices = price_rows
        .iter()
        .map(|row| {
            let input = row.real("input")?;
            Ok(PriceRecord {
                name: row.text("name")?,
                input,
                output: row.real("output")?,
                cached_input: row.opt_real("cached_input")?.unwrap_or(input),
                cache_write: row.opt_real("cache_write")?,
                per_request: row.real("per_request")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    let accounts = account_rows
        .iter()
        .map(|row| {
            let (balance, spend_limit) = (row.opt_int("balance")?, row.opt_int("spend_limit")?);
            // With a spending limit, what the account may spend now and from its next
            // period on (a period that ended and was not rolled over yet: the filter
            // moves on to `period_balance` by itself).
            let period_end = spend_limit.and(row.opt_int("period_end")?);
            Ok(AccountRecord {
                name: row.text("name")?,
                balance: account_left(balance, spend_limit, row.int("period_used")?),
                period_end,
                period_balance: period_end.and(account_left(balance, spend_limit, 0)),
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    Ok(TablesWire {
        groups,
        accounts,
        prices,
    })
}

/// A snapshot answer, as `keygate_core::sync::snapshot::SnapshotWire` but with each key already
/// serialized (by the database, see `snapshot_columns!`).
#[derive(Debug, Clone)]
pub struct SnapshotBody {
    pub version: u64,
    pub delta: bool,
    /// JSON objects of `KeyRecord`'s shape; an element may hold several, joined by
    /// commas (a page of the full snapshot comes from the database as one).
    pub keys: Vec<String>,
    pub revoked: Vec<String>,
    pub next: Option<String>,
    pub groups: Vec<GroupRecord>,
    pub accounts: Vec<AccountRecord>,
    pub prices: Vec<PriceRecord>,
}

impl SnapshotBody {
    /// The body `GET /filter/v1/snapshot` answers with: `SnapshotWire`'s JSON.
    pub fn to_json(&self) -> String {
        let keys_len: usize = self.keys.iter().map(|k| k.len() + 1).sum();
        let mut out = String::with_capacity(keys_len + 512);
        out.push_str(&format!(
            "{{\"version\":{},\"delta\":{},\"keys\":[",
            self.version, self.delta
        ));
        for (i, key) in self.keys.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(key);
        }
        out.push(']');
        if !self.revoked.is_empty() {
            out.push_str(",\"revoked\":");
            out.push_str(&json(&self.revoked));
        }
        if let Some(next) = &self.next {
            out.push_str(",\"next\":");
            out.push_str(&json(next));
        }
        out.push_str(",\"groups\":");
        out.push_str(&json(&self.groups));
        out.push_str(",\"accounts\":");
        out.push_str(&json(&self.accounts));
        if !self.prices.is_empty() {
            out.push_str(",\"prices\":");
            out.push_str(&json(&self.prices));
        }
        out.push('}');
        out
    }
}

/// One of the small parts of a snapshot, as JSON.
fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// Which page of a full snapshot to answer with.
#[derive(Debug, Clone)]
pub struct SnapshotPage {
    /// Hash of the last key of the previous page; `None` for the first page.
    pub after: Option<String>,
    pub limit: usize,
}

/// A stored rate limit as the filter takes it; the API stores none below 1, so a negative
/// one is a corrupt row, not "no limit".
fn wire_limit(
    name: &str,
    column: &'static str,
    value: Option<i64>,
) -> Result<Option<u64>, StoreError> {
    value
        .map(|v| {
            u64::try_from(v).map_err(|e| StoreError::Corrupt {
                id: name.to_owned(),
                column,
                detail: format!("{v}: {e}"),
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::tests::new_key;
    use crate::store::{KeyStatus, NewKey};
    use keygate_core::sync::snapshot::SnapshotWire;

    #[tokio::test]
    async fn each_change_is_logged_and_raises_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path()).await.unwrap();
        store
            .insert_keys(&[new_key("a", "one"), new_key("b", "two")], 100)
            .await
            .unwrap();
        assert_eq!(store.snapshot_version().await.unwrap(), 2);
        assert!(store.set_enabled("a", false, 200).await.unwrap());
        assert!(!store.set_enabled("nope", false, 200).await.unwrap());
        let snapshot = wire(store.snapshot(None, &all(), 0).await.unwrap());
        assert_eq!(snapshot.version, 3);
        assert_eq!(snapshot.keys.len(), 2);
        let a = snapshot.keys.iter().find(|k| k.id == "a").unwrap();
        assert!(!a.enabled);

        let a = store.get_key("a", 300).await.unwrap().unwrap();
        assert_eq!(
            (a.status, a.created_at, a.updated_at),
            (KeyStatus::Disabled, 100, 200)
        );
        assert_eq!(a.models, ["gpt-4o"]);
    }

    fn wire(body: SnapshotBody) -> SnapshotWire {
        serde_json::from_str(&body.to_json()).unwrap()
    }

    fn all() -> SnapshotPage {
        SnapshotPage {
            after: None,
            limit: 1000,
        }
    }

    #[tokio::test]
    async fn full_snapshots_come_in_pages() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path()).await.unwrap();
        let keys: Vec<NewKey> = ["c", "a", "b", "e", "d"]
            .iter()
            .map(|id| new_key(id, id))
            .collect();
        store.insert_keys(&keys, 100).await.unwrap();
        let mut page = SnapshotPage {
            after: None,
            limit: 2,
        };
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        loop {
            let body = wire(store.snapshot(None, &page, 0).await.unwrap());
            sizes.push(body.keys.len());
            seen.extend(body.keys.into_iter().map(|k| k.id));
            match body.next {
                Some(next) => page.after = Some(next),
                None => break,
            }
        }
        // Full pages until the last; every key exactly once.
        assert_eq!(sizes, [2, 2, 1]);
        seen.sort();
        assert_eq!(seen, ["a", "b", "c", "d", "e"]);
    }

    #[tokio::test]
    async fn deltas_name_the_hashes_that_rotation_and_deletion_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path()).await.unwrap();
        let keys: Vec<NewKey> = ["a", "b", "c"].iter().map(|id| new_key(id, id)).collect();
        store.insert_keys(&keys, 100).await.unwrap();
        let new_hash = format!("{:f>64}", "");
        assert!(store
            .rotate_key("a", &new_hash, "sk-m", 200, None)
            .await
            .unwrap());
        assert!(store.delete_key("b", 200).await.unwrap());
        assert!(store.set_enabled("c", false, 200).await.unwrap());
        assert!(!store.delete_key("b", 300).await.unwrap());
        let delta = wire(store.snapshot(Some(3), &all(), 0).await.unwrap());
        assert!(delta.delta);
        assert_eq!(delta.version, 6);
        assert_eq!(
            delta.revoked,
            [format!("{:0>64}", "a"), format!("{:0>64}", "b")]
        );
        let ids: Vec<&str> = delta.keys.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(delta.keys[0].hash, new_hash);
    }

    #[tokio::test]
    async fn a_grace_period_keeps_the_old_hash_until_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path()).await.unwrap();
        store.insert_keys(&[new_key("a", "a")], 100).await.unwrap();
        let (old, new) = (format!("{:0>64}", "a"), format!("{:f>64}", ""));
        assert!(store
            .rotate_key("a", &new, "sk-m", 200, Some(3_800))
            .await
            .unwrap());
        let hashes = |w: &SnapshotWire| {
            let mut h: Vec<(String, Option<i64>)> = w
                .keys
                .iter()
                .map(|k| (k.hash.clone(), k.expires_at))
                .collect();
            h.sort();
            h
        };
        let full = wire(store.snapshot(None, &all(), 300).await.unwrap());
        assert_eq!(
            hashes(&full),
            [(old.clone(), Some(3_800)), (new.clone(), None)]
        );
        let delta = wire(store.snapshot(Some(1), &all(), 300).await.unwrap());
        assert_eq!(hashes(&delta), hashes(&full));
        assert!(delta.revoked.is_empty(), "the old hash is not revoked yet");
        // Once the grace period is over, it is no longer sent.
        let later = wire(store.snapshot(None, &all(), 3_800).await.unwrap());
        assert_eq!(hashes(&later), [(new.clone(), None)]);
        // Deleting the key revokes both.
        assert!(store.delete_key("a", 400).await.unwrap());
        let gone = wire(store.snapshot(Some(2), &all(), 500).await.unwrap());
        let mut revoked = gone.revoked.clone();
        revoked.sort();
        assert_eq!(revoked, [old, new]);
        assert!(gone.keys.is_empty());
    }

    #[tokio::test]
    async fn a_version_older_than_the_pruned_log_gets_a_full_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path()).await.unwrap();
        for (i, at) in [(1, 100), (2, 200), (3, 300)] {
            let id = format!("k{i}");
            store.insert_keys(&[new_key(&id, &id)], at).await.unwrap();
        }
        assert!(store.delete_key("k1", 400).await.unwrap());
        // Rows before 350 go: seq 1-3. seq 4 (the deletion, which revoked k1) stays.
        assert_eq!(store.prune_changes(350).await.unwrap(), 3);
        assert_eq!(store.snapshot_version().await.unwrap(), 4);
        let stale = wire(store.snapshot(Some(2), &all(), 500).await.unwrap());
        assert!(!stale.delta, "changes after 2 are gone: a full reload");
        assert_eq!(stale.keys.len(), 2);
        let recent = wire(store.snapshot(Some(3), &all(), 500).await.unwrap());
        assert!(recent.delta);
        assert_eq!(recent.revoked, [format!("{:0>64}", "k1")]);
        // Pruning everything still keeps the newest row: the version stands.
        store.prune_changes(i64::MAX).await.unwrap();
        assert_eq!(store.snapshot_version().await.unwrap(), 4);
    }
}
