//! The usage log: what the filter reports after each request, priced and billed once.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use sqlx::{Database, Encode, QueryBuilder, Type};

use super::keys::window_of;
use super::leases::{cap_subject_of, BILL_LEASE};
use super::periods::{roll, ROLL_ACCOUNT, ROLL_KEY};
use super::{
    balance_spent, budget_crossed, with_pool, BeginWrite, Get, KeyFacts, Outbox, Spend, Store,
    StoreError,
};
use crate::alerts::event::Subject;
use crate::alerts::threshold::Thresholds;
use crate::keys::caps::{self, StoredCap};
use crate::pricing::{self, Price, Tokens};

/// One request as the filter reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    /// Envoy's `x-request-id`: a record seen before is ignored.
    pub request_id: String,
    pub key_id: String,
    pub model: String,
    pub tokens: Tokens,
    /// HTTP status the client got.
    pub status: u16,
    /// Unix seconds.
    pub ts: i64,
    /// The tokens are the filter's estimate (the response ended without its usage).
    pub estimated: bool,
}

/// What an intake did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ingested {
    pub accepted: u64,
    /// Records whose `request_id` was already logged (a retried report).
    pub duplicates: u64,
    /// The snapshot version once the batch is in: a filter whose snapshot has reached it
    /// sees the batch's costs in its keys' remaining quota and accounts' balances.
    pub version: u64,
    /// Per record, in order: whether it was new (billed now) rather than a duplicate.
    #[serde(skip)]
    pub inserted: Vec<bool>,
}

/// A usage-log row, as `GET /api/v1/usage` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRow {
    pub request_id: String,
    pub key_id: String,
    pub key_name: Option<String>,
    pub account: Option<String>,
    pub model: String,
    pub input_tokens: i64,
    pub cached_input_tokens: i64,
    pub output_tokens: i64,
    /// Input tokens written to the prompt cache (part of `input_tokens`).
    pub cache_write_tokens: i64,
    pub cost: i64,
    pub priced: bool,
    pub status: i64,
    pub ts: i64,
    pub estimated: bool,
}

/// Filters of `GET /api/v1/usage`; `from` and `to` are Unix seconds, `to` exclusive.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageFilter {
    pub key_id: Option<String>,
    pub account: Option<String>,
    pub model: Option<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
}

/// Usage added up per time bucket and model, as the console's charts show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageBucket {
    /// Start of the bucket, Unix seconds.
    pub ts: i64,
    pub model: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub cached_input_tokens: i64,
    pub output_tokens: i64,
    pub cost: i64,
}

/// A key as a batch bills it: name, account, group ratio, and the start of its budget
/// period (`None`: its quota never resets).
type BatchKey = (String, String, f64, Option<i64>);

/// A key's budget in its current period (`quota` against `used_quota`, which the batch
/// rolled over first if the period had ended) after a bill of `cost` in that period: the
/// crossings it made, once per period (`period_start`; 0 for a quota that never resets).
async fn key_bill_alerts<T: Outbox>(
    tx: &mut T,
    facts: KeyFacts,
    cost: i64,
    period_start: i64,
    thresholds: &Thresholds,
    now: i64,
) -> Result<(), StoreError> {
    let Some(quota) = facts.quota else {
        return Ok(());
    };
    // As the UPDATE of `used_quota` saturates.
    let spend = Spend {
        budget: quota,
        before: facts.used,
        after: facts.used.saturating_add(cost),
    };
    budget_crossed(tx, &facts.subject, spend, period_start, thresholds, now).await
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn usage_row(row: &impl Get) -> Result<UsageRow, sqlx::Error> {
    Ok(UsageRow {
        request_id: row.text("request_id")?,
        key_id: row.text("key_id")?,
        key_name: row.opt_text("key_name")?,
        account: row.opt_text("account")?,
        model: row.text("model")?,
        input_tokens: row.int("input_tokens")?,
        cached_input_tokens: row.int("cached_input_tokens")?,
        output_tokens: row.int("output_tokens")?,
        cache_write_tokens: row.int("cache_write_tokens")?,
        cost: row.int("cost")?,
        priced: row.flag("priced")?,
        status: row.int("status")?,
        ts: row.int("ts")?,
        estimated: row.flag("estimated")?,
    })
}

/// Appends ` WHERE ...` for the filter's conditions.
fn push_filter<DB: Database>(q: &mut QueryBuilder<DB>, filter: &UsageFilter)
where
    String: for<'t> Encode<'t, DB> + Type<DB>,
    i64: for<'t> Encode<'t, DB> + Type<DB>,
{
    q.push(" WHERE 1 = 1");
    let text = [
        (" AND key_id = ", &filter.key_id),
        (" AND account = ", &filter.account),
        (" AND model = ", &filter.model),
    ];
    for (clause, value) in text {
        if let Some(value) = value {
            q.push(clause).push_bind(value.clone());
        }
    }
    if let Some(from) = filter.from {
        q.push(" AND ts >= ").push_bind(from);
    }
    if let Some(to) = filter.to {
        q.push(" AND ts < ").push_bind(to);
    }
}

impl Store {
    /// Logs, prices and bills a batch in one transaction: each new record is priced by the
    /// contract's formula (its model's price, its key's group ratio), added to its key's
    /// `used_quota` and taken from its account's balance; a record already logged changes
    /// nothing. Keys and accounts whose numbers moved get change-log rows, so filters learn
    /// their new remaining quota with their next delta.
    ///
    /// With a `holder` (the reporting filter spends from leases), each new record's cost
    /// is also added to the `billed` of that holder's leases on its key and, when the
    /// key's account has a balance, on its account, and on the key's cap that counted it
    /// (in the cap's unit): what the limit lost, the lease's outstanding loses too. A
    /// lease that does not exist is left so.
    pub async fn ingest_usage(
        &self,
        records: &[UsageRecord],
        holder: Option<&str>,
        now: i64,
    ) -> Result<Ingested, StoreError> {
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            // Looked up once per batch: a batch holds few keys and models, many records.
            // Each key and account comes with the start of its budget period (rolled over
            // first if it has ended).
            let mut keys: HashMap<String, Option<BatchKey>> = HashMap::new();
            let mut accounts: HashMap<String, Option<i64>> = HashMap::new();
            // The limits per model of the batch's keys that have any, and whether the
            // batch changed them.
            let mut key_caps: HashMap<String, (Vec<StoredCap>, bool)> = HashMap::new();
            let mut rolled_account = false;
            // Every price, once per batch (a few hundred rows at most): a model without a
            // price of its own takes its most specific pattern's (`gpt-4o-*`).
            let mut prices: HashMap<String, Price> = HashMap::new();
            for row in sqlx::query(
                "SELECT name, input, output, cached_input, cache_write, per_request FROM model_prices",
            )
            .fetch_all(&mut *tx)
            .await?
            {
                let input = row.real("input")?;
                let price = Price {
                    input,
                    output: row.real("output")?,
                    cached_input: row.opt_real("cached_input")?.unwrap_or(input),
                    cache_write: row.opt_real("cache_write")?.unwrap_or(input),
                    per_request: row.real("per_request")?,
                };
                prices.insert(row.text("name")?, price);
            }
            // Per key: credits and the newest request; per account: credits. Written once
            // each at the end.
            // Per key: all its credits, those in its current period, and its newest
            // request; per account: all its credits and those in its period.
            let mut billed_keys: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
            let mut billed_accounts: BTreeMap<String, (i64, i64)> = BTreeMap::new();
            // Per cap (its lease subject): what its records counted, in its unit.
            let mut billed_caps: BTreeMap<String, i64> = BTreeMap::new();
            // Per key and cap model that counted a record in its period: what the cap had
            // used before the batch (after rolling over), for its threshold alerts.
            let mut cap_before: BTreeMap<(String, String), i64> = BTreeMap::new();
            let mut done = Ingested::default();
            for record in records {
                let key = match keys.get(&record.key_id) {
                    Some(key) => key.clone(),
                    None => {
                        let row = sqlx::query(
                            "SELECT k.name, k.account, g.ratio, k.quota_period, k.period_start, \
                                 k.period_end, k.model_caps FROM keys k \
                             LEFT JOIN groups g ON g.name = k.group_name WHERE k.id = $1",
                        )
                        .bind(&record.key_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                        let key = match &row {
                            Some(row) => {
                                let model_caps = caps::parse(&row.text("model_caps")?);
                                if !model_caps.is_empty() {
                                    key_caps.insert(record.key_id.clone(), (model_caps, false));
                                }
                                let mut period = window_of(row)?;
                                if let Some(old) = period.filter(|w| w.end <= now) {
                                    let period_text = row.text("quota_period")?;
                                    period = self.next_window(&period_text, old, now);
                                    if let Some(new) = period {
                                        // (No change-log row: see `periods`.)
                                        roll(ROLL_KEY, &record.key_id, old, new)
                                            .execute(&mut *tx)
                                            .await?;
                                    }
                                }
                                Some((
                                    row.text("name")?,
                                    row.text("account")?,
                                    row.opt_real("ratio")?.unwrap_or(1.0),
                                    period.map(|w| w.start),
                                ))
                            }
                            None => None,
                        };
                        keys.insert(record.key_id.clone(), key.clone());
                        key
                    }
                };
                let ratio = key.as_ref().map_or(1.0, |k| k.2);
                let price = keygate_core::decide::model::lookup(&prices, &record.model)
                    .map(|p| p.for_status(record.status));
                let cost = pricing::cost(record.tokens, price, ratio);
                let inserted = sqlx::query(
                    "INSERT INTO usage_log (request_id, key_id, key_name, account, model, \
                         input_tokens, cached_input_tokens, output_tokens, cost, priced, \
                         status, ts, estimated, cache_write_tokens) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                     ON CONFLICT (request_id) DO NOTHING",
                )
                .bind(&record.request_id)
                .bind(&record.key_id)
                .bind(key.as_ref().map(|k| &k.0))
                .bind(key.as_ref().map(|k| &k.1))
                .bind(&record.model)
                .bind(to_i64(record.tokens.input))
                .bind(to_i64(record.tokens.cached_input))
                .bind(to_i64(record.tokens.output))
                .bind(cost)
                .bind(price.is_some())
                .bind(i64::from(record.status))
                .bind(record.ts)
                .bind(record.estimated)
                .bind(to_i64(record.tokens.cache_write))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                done.inserted.push(inserted > 0);
                if inserted == 0 {
                    done.duplicates += 1;
                    continue;
                }
                done.accepted += 1;
                let Some((_, account, _, key_period)) = &key else {
                    continue;
                };
                if let Some((model_caps, dirty)) = key_caps.get_mut(&record.key_id) {
                    if let Some(cap) = caps::cap_for(model_caps, &record.model) {
                        cap.roll(now, |period, start| self.window(period, start, now));
                        let tokens = record.tokens.input.saturating_add(record.tokens.output);
                        if cap.period_start.is_none_or(|start| record.ts >= start) {
                            cap_before
                                .entry((record.key_id.clone(), cap.model.clone()))
                                .or_insert(cap.used);
                        }
                        cap.count(record.ts, cost, tokens);
                        *dirty = true;
                        // Off the holder's lease on the cap whatever its period, as the
                        // key's below.
                        let amount = cap.amount(cost, tokens);
                        if amount > 0 {
                            let subject = cap_subject_of(&record.key_id, cap);
                            let billed = billed_caps.entry(subject).or_insert(0);
                            *billed = billed.saturating_add(amount);
                        }
                    }
                }
                if !accounts.contains_key(account) {
                    let row = sqlx::query(
                        "SELECT quota_period, period_start, period_end FROM accounts \
                         WHERE name = $1",
                    )
                    .bind(account)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let mut period = row.as_ref().map(window_of).transpose()?.flatten();
                    if let (Some(old), Some(row)) = (period.filter(|w| w.end <= now), &row) {
                        period = self.next_window(&row.text("quota_period")?, old, now);
                        if let Some(new) = period {
                            roll(ROLL_ACCOUNT, account, old, new)
                                .execute(&mut *tx)
                                .await?;
                            rolled_account = true;
                        }
                    }
                    accounts.insert(account.clone(), period.map(|w| w.start));
                }
                // A record from before its period began (it arrived after the period
                // rolled over) counts in no period, but still costs money and still
                // comes off its holder's lease.
                let in_period = |start: Option<i64>| start.is_none_or(|s| record.ts >= s);
                let billed = billed_keys
                    .entry(record.key_id.clone())
                    .or_insert((0, 0, 0));
                billed.0 = billed.0.saturating_add(cost);
                if in_period(*key_period) {
                    billed.1 = billed.1.saturating_add(cost);
                }
                billed.2 = billed.2.max(record.ts);
                if cost > 0 {
                    let spent = billed_accounts.entry(account.clone()).or_insert((0, 0));
                    spent.0 = spent.0.saturating_add(cost);
                    if in_period(accounts.get(account).copied().flatten()) {
                        spent.1 = spent.1.saturating_add(cost);
                    }
                }
            }
            for (key_id, (cost, in_period, last_used)) in &billed_keys {
                // Read before the bill, under the write lock: alerts compare before and
                // after (see `bill_alerts`).
                let facts = match *in_period > 0 {
                    true => tx.key_facts(key_id).await?,
                    false => None,
                };
                sqlx::query(
                    // Saturating: `used_quota + $2` past i64::MAX would turn into a
                    // REAL on SQLite and fail on PostgreSQL.
                    "UPDATE keys SET used_quota = CASE \
                         WHEN used_quota > 9223372036854775807 - $2 THEN 9223372036854775807 \
                         ELSE used_quota + $2 END, \
                     last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < $3 \
                         THEN $3 ELSE last_used_at END \
                     WHERE id = $1",
                )
                .bind(key_id)
                .bind(in_period)
                .bind(last_used)
                .execute(&mut *tx)
                .await?;
                if let Some(facts) = facts {
                    let period_start = keys.get(key_id).and_then(|k| k.as_ref()?.3);
                    let start = period_start.unwrap_or(0);
                    key_bill_alerts(&mut tx, facts, *in_period, start, &self.thresholds, now)
                        .await?;
                }
                if *cost > 0 {
                    sqlx::query(
                        "INSERT INTO key_changes (key_id, kind, at) VALUES ($1, 'usage', $2)",
                    )
                    .bind(key_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            for ((key_id, model), before) in cap_before {
                let Some((name, account, ..)) = keys.get(&key_id).cloned().flatten() else {
                    continue;
                };
                let caps = key_caps.get(&key_id).map(|(caps, _)| caps.as_slice());
                let Some(cap) = caps.into_iter().flatten().find(|c| c.model == model) else {
                    continue;
                };
                let spend = Spend {
                    budget: cap.limit,
                    before,
                    after: cap.used,
                };
                let start = cap.period_start.unwrap_or(0);
                let subject = Subject::Cap {
                    id: key_id,
                    name,
                    account,
                    model,
                    unit: cap.unit.as_str(),
                };
                budget_crossed(&mut tx, &subject, spend, start, &self.thresholds, now).await?;
            }
            for (key_id, (model_caps, _)) in key_caps.iter().filter(|(_, (_, dirty))| *dirty) {
                sqlx::query("UPDATE keys SET model_caps = $2 WHERE id = $1")
                    .bind(key_id)
                    .bind(caps::to_json(model_caps))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO key_changes (key_id, kind, at) VALUES ($1, 'usage', $2)")
                    .bind(key_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            let mut billed_account = rolled_account;
            for (account, (cost, in_period)) in &billed_accounts {
                let balance_before = tx.balance(account).await?;
                // The spending limit's figures before the bill (the period rolled over
                // already), for its threshold alerts.
                let limit_before = match *in_period > 0 {
                    true => sqlx::query(
                        "SELECT spend_limit, period_used, period_start FROM accounts \
                         WHERE name = $1 AND spend_limit IS NOT NULL",
                    )
                    .bind(account)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|row| {
                        let limit = row.int("spend_limit")?;
                        let used = row.int("period_used")?;
                        Ok::<_, sqlx::Error>((limit, used, row.opt_int("period_start")?))
                    })
                    .transpose()?,
                    false => None,
                };
                let billed = sqlx::query(
                    // Saturating at -i64::MAX and i64::MAX, as above. An account is
                    // limited by a balance, a spending limit per period, or both.
                    "UPDATE accounts SET balance = CASE \
                         WHEN balance < $2 - 9223372036854775807 THEN -9223372036854775807 \
                         ELSE balance - $2 END, \
                     period_used = CASE \
                         WHEN period_used > 9223372036854775807 - $3 THEN 9223372036854775807 \
                         ELSE period_used + $3 END \
                     WHERE name = $1 AND (balance IS NOT NULL OR spend_limit IS NOT NULL)",
                )
                .bind(account)
                .bind(cost)
                .bind(in_period)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    > 0;
                billed_account |= billed;
                if let Some(before) = balance_before {
                    // As the UPDATE above saturates.
                    let after = before.saturating_sub(*cost).max(-i64::MAX);
                    balance_spent(&mut tx, account, before, after, now).await?;
                }
                if let Some((budget, before, period_start)) = limit_before {
                    let spend = Spend {
                        budget,
                        before,
                        after: before.saturating_add(*in_period),
                    };
                    let subject = Subject::Account {
                        name: account.clone(),
                    };
                    let start = period_start.unwrap_or(0);
                    budget_crossed(&mut tx, &subject, spend, start, &self.thresholds, now).await?;
                }
                if let Some(holder) = holder.filter(|_| billed) {
                    sqlx::query(BILL_LEASE)
                        .bind(holder)
                        .bind(format!("a:{account}"))
                        .bind(cost)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            if let Some(holder) = holder {
                for (key_id, (cost, ..)) in billed_keys.iter().filter(|(_, (c, ..))| *c > 0) {
                    tracing::debug!(holder, key_id, cost, "lease billed");
                    sqlx::query(BILL_LEASE)
                        .bind(holder)
                        .bind(format!("k:{key_id}"))
                        .bind(cost)
                        .execute(&mut *tx)
                        .await?;
                }
                for (subject, amount) in &billed_caps {
                    sqlx::query(BILL_LEASE)
                        .bind(holder)
                        .bind(subject)
                        .bind(amount)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            if billed_account {
                sqlx::query(
                    "INSERT INTO key_changes (key_id, kind, at) VALUES ('', 'account', $1)",
                )
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            // Read under the write lock, so no later change is counted in.
            let version: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM key_changes")
                .fetch_one(&mut *tx)
                .await?;
            done.version = u64::try_from(version).unwrap_or(0);
            tx.commit().await?;
            Ok(done)
        })
    }

    /// One page of the usage log, newest first, and the number of rows matching.
    pub async fn list_usage(
        &self,
        filter: &UsageFilter,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<UsageRow>, u64), StoreError> {
        with_pool!(self, |pool| {
            let mut q = QueryBuilder::new("SELECT * FROM usage_log");
            push_filter(&mut q, filter);
            q.push(" ORDER BY ts DESC, request_id LIMIT ")
                .push_bind(i64::from(limit))
                .push(" OFFSET ")
                .push_bind(to_i64(offset));
            let rows = q.build().fetch_all(pool).await?;
            let mut count = QueryBuilder::new("SELECT COUNT(*) FROM usage_log");
            push_filter(&mut count, filter);
            let total: i64 = count.build_query_scalar().fetch_one(pool).await?;
            let rows = rows.iter().map(usage_row).collect::<Result<_, _>>()?;
            Ok((rows, u64::try_from(total).unwrap_or(0)))
        })
    }

    /// The log's rows matching `filter`, added up per model and per `bucket` seconds
    /// (buckets start at multiples of `bucket` since the Unix epoch), oldest first.
    pub async fn summarize_usage(
        &self,
        filter: &UsageFilter,
        bucket: i64,
    ) -> Result<Vec<UsageBucket>, StoreError> {
        let bucket = bucket.max(1);
        with_pool!(self, |pool, sql| {
            let sum = |column: &str| format!("{}{column}{}", sql.sum_open, sql.sum_close);
            let mut q = QueryBuilder::new("SELECT (ts / ");
            q.push_bind(bucket)
                .push(") * ")
                .push_bind(bucket)
                .push(format!(
                    " AS bucket, model, COUNT(*) AS requests, {} AS input_tokens, \
                 {} AS cached_input_tokens, {} AS output_tokens, {} AS cost FROM usage_log",
                    sum("input_tokens"),
                    sum("cached_input_tokens"),
                    sum("output_tokens"),
                    sum("cost")
                ));
            push_filter(&mut q, filter);
            q.push(" GROUP BY bucket, model ORDER BY bucket, model");
            let rows = q.build().fetch_all(pool).await?;
            let buckets = rows.iter().map(|row| {
                Ok(UsageBucket {
                    ts: row.int("bucket")?,
                    model: row.text("model")?,
                    requests: row.int("requests")?,
                    input_tokens: row.int("input_tokens")?,
                    cached_input_tokens: row.int("cached_input_tokens")?,
                    output_tokens: row.int("output_tokens")?,
                    cost: row.int("cost")?,
                })
            });
            Ok(buckets.collect::<Result<_, sqlx::Error>>()?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{GroupRow, NewKey};

    fn record(request_id: &str, key_id: &str, model: &str, input: u64, output: u64) -> UsageRecord {
        UsageRecord {
            request_id: request_id.into(),
            key_id: key_id.into(),
            model: model.into(),
            tokens: Tokens {
                input,
                output,
                ..Tokens::default()
            },
            status: 200,
            ts: 1_000,
            estimated: false,
        }
    }

    async fn store_with_key() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path()).await.unwrap();
        let mut half = GroupRow::open("half");
        half.ratio = 0.5;
        store.put_group(&half, 0).await.unwrap();
        store.create_account("team", Some(1_000), 0).await.unwrap();
        let key = NewKey {
            id: "k1".into(),
            name: "one".into(),
            key_hash: format!("{:0>64}", 1),
            masked_key: "sk-...".into(),
            account: "team".into(),
            group: "half".into(),
            expires_at: None,
            unlimited_quota: false,
            quota: 500,
            models: vec![],
            ip_allowlist: vec![],
            rpm: None,
            tpm: None,
            max_parallel: None,
            quota_period: crate::budget::Period::Total,
            model_caps: vec![],
            rotate_by: None,
        };
        store.insert_keys(&[key], 0).await.unwrap();
        // 2 credits per token in and out.
        store
            .put_price(
                "m",
                &crate::store::NewPrice {
                    input: 2_000_000.0,
                    output: 2_000_000.0,
                    ..Default::default()
                },
                0,
            )
            .await
            .unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn usage_adds_up_per_bucket_and_model() {
        let (_dir, store) = store_with_key().await;
        let at = |id: &str, model: &str, ts: i64| UsageRecord {
            ts,
            ..record(id, "k1", model, 10, 5)
        };
        let batch = [
            at("a", "m", 3_600),
            at("b", "m", 7_199),
            at("c", "other", 7_000),
            at("d", "m", 7_200),
            at("e", "m", 9_000_000),
        ];
        store.ingest_usage(&batch, None, 10_000).await.unwrap();
        let filter = UsageFilter {
            to: Some(1_000_000),
            ..UsageFilter::default()
        };
        let buckets = store.summarize_usage(&filter, 3_600).await.unwrap();
        let seen: Vec<_> = buckets
            .iter()
            .map(|b| {
                (
                    b.ts,
                    b.model.as_str(),
                    b.requests,
                    b.input_tokens,
                    b.output_tokens,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (3_600, "m", 2, 20, 10),
                (3_600, "other", 1, 10, 5),
                (7_200, "m", 1, 10, 5)
            ]
        );
        // 15 tokens at 2 credits, group ratio 0.5.
        assert_eq!(buckets[0].cost, 30);
        assert_eq!(buckets[1].cost, 0, "an unpriced model costs nothing");
    }

    #[tokio::test]
    async fn the_schema_refuses_a_real_or_a_negative_count() {
        // A REAL in `used_quota` once made every snapshot page unreadable by the filter:
        // whatever writes to the database, migration 0008 keeps such values out.
        let (_dir, store) = store_with_key().await;
        let mut refused = vec![
            "UPDATE keys SET used_quota = 1.5e19 WHERE id = 'k1'",
            "UPDATE keys SET quota = 1e30 WHERE id = 'k1'",
            "UPDATE keys SET used_quota = -1 WHERE id = 'k1'",
            "UPDATE keys SET quota = -1 WHERE id = 'k1'",
            "UPDATE accounts SET balance = 1.5e19 WHERE name = 'team'",
            "INSERT INTO usage_log (request_id, key_id, model, input_tokens, \
             cached_input_tokens, output_tokens, cost, priced, status, ts) \
             VALUES ('x', 'k1', 'm', -1, 0, 0, 0, TRUE, 200, 0)",
            "INSERT INTO usage_log (request_id, key_id, model, input_tokens, \
             cached_input_tokens, output_tokens, cost, priced, status, ts) \
             VALUES ('x', 'k1', 'm', 0, 0, 0, -1, TRUE, 200, 0)",
            "INSERT INTO usage_log (request_id, key_id, model, input_tokens, \
             cached_input_tokens, output_tokens, cost, priced, status, ts) \
             VALUES ('x', 'k1', 'm', 0, 0, 1e30, 0, TRUE, 200, 0)",
        ];
        if store.engine() == "sqlite" {
            // PostgreSQL rounds these into its BIGINT columns (or refuses text);
            // SQLite would store them as they are.
            refused.extend([
                "UPDATE keys SET used_quota = 1.5 WHERE id = 'k1'",
                "UPDATE keys SET quota = 'lots' WHERE id = 'k1'",
                "UPDATE keys SET rpm = 2.5 WHERE id = 'k1'",
                "UPDATE accounts SET balance = 0.5 WHERE name = 'team'",
                "INSERT INTO accounts (name, balance) VALUES ('real', 2.5)",
                "INSERT INTO usage_log (request_id, key_id, model, input_tokens, \
                 cached_input_tokens, output_tokens, cost, priced, status, ts) \
                 VALUES ('x', 'k1', 'm', 0, 0, 0, 1.5, TRUE, 200, 0)",
            ]);
        }
        for sql in refused {
            let result = with_pool!(store, |pool| sqlx::query(sql).execute(pool).await.is_ok());
            assert!(!result, "the database took {sql}");
        }
        // What stays allowed: a negative or unlimited balance, a whole count.
        for sql in [
            "UPDATE accounts SET balance = -5 WHERE name = 'team'",
            "UPDATE accounts SET balance = NULL WHERE name = 'default'",
            "UPDATE keys SET used_quota = 7, quota = 500 WHERE id = 'k1'",
        ] {
            with_pool!(store, |pool| {
                sqlx::query(sql).execute(pool).await.unwrap();
            });
        }
        // And the store works on: billing, reading the key, a snapshot that parses.
        let done = store
            .ingest_usage(&[record("r1", "k1", "m", 10, 5)], None, 2_000)
            .await
            .unwrap();
        assert_eq!(done.accepted, 1);
        let key = store.get_key("k1", 3_000).await.unwrap().unwrap();
        assert_eq!((key.quota, key.used_quota), (500, 22));
        let team = store.get_account("team", 0).await.unwrap().unwrap();
        assert_eq!(team.balance, Some(-20));
        let page = crate::store::SnapshotPage {
            after: None,
            limit: 10,
        };
        let body = store.snapshot(None, &page, 3_000).await.unwrap();
        let wire: keygate_core::sync::snapshot::SnapshotWire =
            serde_json::from_str(&body.to_json()).unwrap();
        assert_eq!(wire.keys.len(), 1);
        assert_eq!(wire.keys[0].remaining_quota, Some(478));
        assert_eq!(wire.keys[0].quota, Some(500));
    }

    #[tokio::test]
    async fn a_batch_is_priced_billed_and_logged_once() {
        let (_dir, store) = store_with_key().await;
        let v0 = store.snapshot_version().await.unwrap();
        let batch = [
            record("r1", "k1", "m", 10, 5),
            record("r2", "k1", "unpriced", 10, 5),
            record("r3", "gone", "m", 10, 5),
        ];
        let done = store.ingest_usage(&batch, None, 2_000).await.unwrap();
        assert_eq!((done.accepted, done.duplicates), (3, 0));
        // (10 + 5) * 2 * 0.5 = 15 credits, once.
        let again = store.ingest_usage(&batch[..1], None, 2_001).await.unwrap();
        assert_eq!((again.accepted, again.duplicates), (0, 1));
        let key = store.get_key("k1", 3_000).await.unwrap().unwrap();
        assert_eq!((key.used_quota, key.last_used_at), (15, Some(1_000)));
        let team = store.get_account("team", 0).await.unwrap().unwrap();
        assert_eq!(team.balance, Some(985));
        // One change for the key, one for the account.
        assert_eq!(store.snapshot_version().await.unwrap(), v0 + 2);

        let (rows, total) = store
            .list_usage(&UsageFilter::default(), 10, 0)
            .await
            .unwrap();
        assert_eq!(total, 3);
        let by_id = |id: &str| rows.iter().find(|r| r.request_id == id).unwrap();
        assert_eq!((by_id("r1").cost, by_id("r1").priced), (15, true));
        assert_eq!((by_id("r2").cost, by_id("r2").priced), (0, false));
        assert_eq!(by_id("r3").key_name, None);
        assert_eq!(by_id("r1").account.as_deref(), Some("team"));

        let only_m = UsageFilter {
            model: Some("m".into()),
            from: Some(1_000),
            to: Some(1_001),
            ..UsageFilter::default()
        };
        assert_eq!(store.list_usage(&only_m, 10, 0).await.unwrap().1, 2);
        let later = UsageFilter {
            from: Some(1_001),
            ..UsageFilter::default()
        };
        assert_eq!(store.list_usage(&later, 10, 0).await.unwrap().1, 0);
    }
}
