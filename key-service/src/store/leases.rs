//! Credit leases: each Envoy (a "holder") spends from a lease of credit per limited key
//! and account instead of asking per request, and this is the one place leases are
//! granted. Granting runs under the writer lock (as billing does), so asks from several
//! holders and several key-service replicas take turns, and for every subject
//!
//! ```text
//! used + Σ over holders of max(0, granted - billed) <= limit
//! ```
//!
//! holds after each: a holder is granted at most what the others and its own unbilled
//! spending leave free. `granted` and `billed` count in the holder's own `spent`:
//! `granted` is what it may have spent in all, `billed` what of that reached `used`.
//! A lease shrinks as usage comes in (`ingest_usage` adds to `billed`), and a holder
//! that stops asking holds nothing once its row is dropped.
//!
//! A new row starts `billed` at the `spent` asked with: a holder spends only under a
//! lease, and a row is dropped only after the holder stopped spending under it (its
//! `expires_at`) and a `ttl` more for its records to arrive, so what it spent before
//! has been billed. (Starting at 0 would count all of that as held again, for as long
//! as the new row lives, unless the holder knew when to start counting afresh.)
//!
//! Rate limits are shared out the same way (`r:`, `t:`, `p:` and a key id): the limit
//! is the key's requests per minute, tokens per minute or requests in flight (the
//! stricter of the key's and its group's), `spent` is what the holder's own window
//! counts now (it never asks below it, so no share is given away while requests it
//! admitted still count), and `billed` stays 0: every holder's share counts whole, so
//! the shares add up to at most the limit.
//!
//! A key's cap on some models is leased as its quota is (`m:`, the key id, the cap's unit
//! and its model name or pattern, each after a `:`): the limit is what the cap leaves in its period, in its
//! unit (credits or tokens), and the records it counts are billed to the holder's lease.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlx::QueryBuilder;

use super::periods::account_left;
use super::{with_pool, BeginWrite, Get, Store, StoreError};
use crate::keys::caps;

/// Subjects per statement when many are read or written at once: well within both
/// engines' limits on bound parameters (SQLite's 32,766, PostgreSQL's 65,535).
const CHUNK: usize = 500;

/// Adds `$3` to the `billed` of the lease (`$1` holder, `$2` subject), if there is one;
/// saturating, as billing keys does.
pub(super) const BILL_LEASE: &str = "UPDATE leases SET billed = CASE \
         WHEN billed > 9223372036854775807 - $3 THEN 9223372036854775807 \
         ELSE billed + $3 END \
     WHERE holder = $1 AND subject = $2";

/// One subject a holder asks a lease for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseAsk {
    /// `k:<key id>` or `a:<account name>`.
    pub subject: String,
    /// What the holder has spent on it in all, billed or not; the count `granted` and
    /// `billed` are kept in. A holder keeps counting on (a new lease starts from it).
    pub spent: u64,
    /// What it must have now (the request in hand): granted even beyond half of what is
    /// free, if that much is free.
    pub need: u64,
    /// What it would like to hold; 0 gives back what it has not spent.
    pub want: u64,
}

/// The answer for one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseGrant {
    pub subject: String,
    /// False: the subject has no limit (an unlimited key or account), nothing is held.
    pub limited: bool,
    /// What the holder may have spent in all, counting `spent`; 0 when not `limited`.
    pub granted: u64,
}

/// A stored lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub holder: String,
    pub subject: String,
    pub granted: i64,
    pub billed: i64,
    /// Unix ms: the holder spends until then.
    pub expires_at: i64,
    /// Unix ms: its outstanding counts until then, then the row goes.
    pub drop_at: i64,
}

impl LeaseRow {
    /// What the holder may still spend: `granted - billed`, at least 0.
    pub fn outstanding(&self) -> i64 {
        self.granted.saturating_sub(self.billed).max(0)
    }
}

/// The new `granted` of a holder on a subject that has `limit` left, of which the other
/// holders hold `others`, this holder `held` (its row's `granted`, 0 without one) and
/// `billed` has been billed to this holder already.
///
/// What the holder spent but was not billed yet is gone already. What it holds unspent
/// and still wants it keeps whole: the filter may spend up to the lesser of what it held
/// and `spent + want` while this ask is on its way, so a grant below that would let the
/// others spend the same credit. Of what is free beyond that, it gets `want` but at most
/// half (so one holder cannot starve the others), except that `need` is granted whole
/// when that much is free. All in i128: no input can overflow, and the result saturates
/// at `i64::MAX`, which only lowers the outstanding.
pub(crate) fn next_granted(
    limit: i64,
    others: i128,
    held: i64,
    billed: i64,
    ask: &LeaseAsk,
) -> i64 {
    let spent = i128::from(ask.spent);
    let billed = i128::from(billed.max(0));
    let base = spent.max(billed);
    let free = i128::from(limit) - others - (spent - billed).max(0);
    let (need, want) = (i128::from(ask.need), i128::from(ask.want));
    let keep = want.min((i128::from(held) - base).max(0));
    let grow = want.max(need).min(need.max(free / 2));
    let lease = keep.max(grow).clamp(0, free.max(0));
    i64::try_from(base + lease).unwrap_or(i64::MAX)
}

/// A share of a key's rate limit: `r:` (requests per minute), `t:` (tokens per minute) or
/// `p:` (requests in flight), and the key id.
fn rate_subject(subject: &str) -> Option<(char, &str)> {
    let (kind, id) = subject.split_once(':')?;
    match kind {
        "r" | "t" | "p" => Some((kind.chars().next()?, id)),
        _ => None,
    }
}

/// A key's cap on some models: `m:`, the key id, `:`, the cap's unit, `:` and its model
/// name or pattern (key ids have no colon; a model may): (key id, unit, model).
pub(crate) fn cap_subject(subject: &str) -> Option<(&str, caps::Unit, &str)> {
    let (key_id, rest) = subject.strip_prefix("m:")?.split_once(':')?;
    let (unit, model) = rest.split_once(':')?;
    let unit = match unit {
        "credits" => caps::Unit::Credits,
        "tokens" => caps::Unit::Tokens,
        _ => return None,
    };
    Some((key_id, unit, model))
}

/// The lease subject of a key's cap (see [`cap_subject`]), as the filter writes it.
pub(crate) fn cap_subject_of(key_id: &str, cap: &caps::StoredCap) -> String {
    keygate_core::limits::ledger::cap_subject(key_id, cap.unit.as_str(), &cap.model)
}

fn lease_row(row: &impl Get) -> Result<LeaseRow, sqlx::Error> {
    Ok(LeaseRow {
        holder: row.text("holder")?,
        subject: row.text("subject")?,
        granted: row.int("granted")?,
        billed: row.int("billed")?,
        expires_at: row.int("expires_at")?,
        drop_at: row.int("drop_at")?,
    })
}

impl Store {
    /// Grants `holder` a lease on each subject asked, in one write transaction, answering
    /// in the order asked (a subject asked twice: the later ask stands). Rows past their
    /// `drop_at` go first. A key's limit is `quota - used_quota` whatever its status (the
    /// filter refuses a disabled or expired key anyway), a cap's what it leaves in its
    /// period (a cap the key no longer has is unlimited), an account's its balance; an
    /// unlimited one is answered `limited: false` and keeps no row of this holder; one
    /// that does not exist has nothing left, so the holder is granted what it spent.
    /// The holder's row then expires `ttl_ms` after `now_ms` and goes twice that after;
    /// a new row starts `billed` at `spent` (see the module's documentation).
    pub async fn grant_leases(
        &self,
        holder: &str,
        asks: &[LeaseAsk],
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<LeaseGrant>, StoreError> {
        let ttl_ms = ttl_ms.max(0);
        let now = now_ms.div_euclid(1_000);
        let expires_at = now_ms.saturating_add(ttl_ms);
        let drop_at = now_ms.saturating_add(ttl_ms.saturating_mul(2));
        let (mut keys, mut accounts) = (BTreeSet::new(), BTreeSet::new());
        let mut rated = BTreeSet::new();
        // Per key, the subjects of its caps asked for, with their units and models.
        let mut capped: BTreeMap<&str, Vec<(&str, caps::Unit, &str)>> = BTreeMap::new();
        for ask in asks {
            if let Some((id, unit, model)) = cap_subject(&ask.subject) {
                capped
                    .entry(id)
                    .or_default()
                    .push((ask.subject.as_str(), unit, model));
            } else if let Some(id) = ask.subject.strip_prefix("k:") {
                keys.insert(id.to_owned());
            } else if let Some(name) = ask.subject.strip_prefix("a:") {
                accounts.insert(name.to_owned());
            } else if let Some((_, id)) = rate_subject(&ask.subject) {
                rated.insert(id.to_owned());
            }
        }
        let rated: Vec<String> = rated.into_iter().collect();
        let capped_keys: Vec<&str> = capped.keys().copied().collect();
        let keys: Vec<String> = keys.into_iter().collect();
        let accounts: Vec<String> = accounts.into_iter().collect();
        let subjects: Vec<String> = asks
            .iter()
            .map(|a| a.subject.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query("DELETE FROM leases WHERE drop_at < $1")
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            // What each subject found has left; None = no limit.
            let mut left: HashMap<String, Option<i64>> = HashMap::new();
            for chunk in keys.chunks(CHUNK) {
                let mut q = QueryBuilder::new(
                    "SELECT id, unlimited_quota, quota, used_quota, period_end FROM keys \
                     WHERE id IN (",
                );
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(id.clone());
                }
                q.push(")");
                for row in q.build().fetch_all(&mut *tx).await? {
                    // As the snapshot's `remaining_quota`; a period that has ended (not
                    // rolled over yet) has nothing used.
                    let limit = if row.flag("unlimited_quota")? {
                        None
                    } else {
                        let ended = row.opt_int("period_end")?.is_some_and(|end| end <= now);
                        let used = if ended { 0 } else { row.int("used_quota")? };
                        Some(row.int("quota")?.saturating_sub(used))
                    };
                    left.insert(format!("k:{}", row.text("id")?), limit);
                }
            }
            for chunk in rated.chunks(CHUNK) {
                let mut q = QueryBuilder::new(
                    "SELECT k.id, k.rpm, k.tpm, k.max_parallel, g.rpm AS group_rpm, \
                     g.tpm AS group_tpm FROM keys k LEFT JOIN groups g ON g.name = k.group_name \
                     WHERE k.id IN (",
                );
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(id.clone());
                }
                q.push(")");
                for row in q.build().fetch_all(&mut *tx).await? {
                    // As the filter's `Limits::effective`: the stricter of the key's and
                    // its group's.
                    let stricter = |a: Option<i64>, b: Option<i64>| match (a, b) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    let id = row.text("id")?;
                    let rpm = stricter(row.opt_int("rpm")?, row.opt_int("group_rpm")?);
                    let tpm = stricter(row.opt_int("tpm")?, row.opt_int("group_tpm")?);
                    left.insert(format!("r:{id}"), rpm);
                    left.insert(format!("t:{id}"), tpm);
                    left.insert(format!("p:{id}"), row.opt_int("max_parallel")?);
                }
            }
            for chunk in capped_keys.chunks(CHUNK) {
                let mut q = QueryBuilder::new("SELECT id, model_caps FROM keys WHERE id IN (");
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind((*id).to_owned());
                }
                q.push(")");
                for row in q.build().fetch_all(&mut *tx).await? {
                    let id = row.text("id")?;
                    let stored = caps::parse(&row.text("model_caps")?);
                    // A cap the key no longer has (on these models, in this unit) caps
                    // nothing (the holder learns so with its next snapshot); a key that
                    // does not exist has nothing left.
                    for (subject, unit, model) in capped.get(id.as_str()).into_iter().flatten() {
                        let cap = stored.iter().find(|c| c.model == *model && c.unit == *unit);
                        left.insert((*subject).to_owned(), cap.map(|c| c.left_at(now)));
                    }
                }
            }
            for chunk in accounts.chunks(CHUNK) {
                let mut q = QueryBuilder::new(
                    "SELECT name, balance, spend_limit, period_used, period_end FROM accounts \
                     WHERE name IN (",
                );
                let mut list = q.separated(", ");
                for name in chunk {
                    list.push_bind(name.clone());
                }
                q.push(")");
                for row in q.build().fetch_all(&mut *tx).await? {
                    let ended = row.opt_int("period_end")?.is_some_and(|end| end <= now);
                    let left_now = account_left(
                        row.opt_int("balance")?,
                        row.opt_int("spend_limit")?,
                        if ended { 0 } else { row.int("period_used")? },
                    );
                    left.insert(format!("a:{}", row.text("name")?), left_now);
                }
            }
            // Per subject: what the other holders hold (added up here: SQLite's SUM
            // fails past i64::MAX) and what was billed to this one.
            let mut others: HashMap<String, i128> = HashMap::new();
            // This holder's row: (granted, billed).
            let mut own_rows: HashMap<String, (i64, i64)> = HashMap::new();
            for chunk in subjects.chunks(CHUNK) {
                let mut q = QueryBuilder::new("SELECT * FROM leases WHERE subject IN (");
                let mut list = q.separated(", ");
                for subject in chunk {
                    list.push_bind(subject.clone());
                }
                q.push(")");
                for row in q.build().fetch_all(&mut *tx).await? {
                    let row = lease_row(&row)?;
                    if row.holder == holder {
                        own_rows.insert(row.subject, (row.granted, row.billed));
                    } else {
                        *others.entry(row.subject).or_default() += i128::from(row.outstanding());
                    }
                }
            }
            let mut grants = Vec::with_capacity(asks.len());
            // Per subject, the holder's new `granted` and its row's `billed`; None =
            // unlimited, no row.
            let mut decided: BTreeMap<&str, Option<(i64, i64)>> = BTreeMap::new();
            for ask in asks {
                let subject = ask.subject.as_str();
                let Some(&limit) = left.get(subject).unwrap_or(&Some(0)).as_ref() else {
                    decided.insert(subject, None);
                    grants.push(LeaseGrant {
                        subject: subject.to_owned(),
                        limited: false,
                        granted: 0,
                    });
                    continue;
                };
                let others = others.get(subject).copied().unwrap_or(0);
                // A new row: what was spent before it was billed before it (see above). A
                // share of a rate is never billed: what the holder's window counts stays
                // its own until the window lets go of it.
                let baseline = match rate_subject(subject) {
                    Some(_) => 0,
                    None => i64::try_from(ask.spent).unwrap_or(i64::MAX),
                };
                let (held, own) = *own_rows
                    .entry(subject.to_owned())
                    .or_insert((baseline, baseline));
                let granted = next_granted(limit, others, held, own, ask);
                tracing::debug!(
                    holder,
                    subject,
                    limit,
                    others = others as i64,
                    held,
                    billed = own,
                    spent = ask.spent,
                    need = ask.need,
                    want = ask.want,
                    granted,
                    "lease granted"
                );
                // A subject asked twice: the later ask sees this one's grant.
                own_rows.insert(subject.to_owned(), (granted, own));
                decided.insert(subject, Some((granted, own)));
                grants.push(LeaseGrant {
                    subject: subject.to_owned(),
                    limited: true,
                    granted: u64::try_from(granted).unwrap_or(0),
                });
            }
            let held: Vec<(&str, (i64, i64))> = decided
                .iter()
                .filter_map(|(subject, lease)| lease.map(|lease| (*subject, lease)))
                .collect();
            for chunk in held.chunks(CHUNK) {
                let mut q = QueryBuilder::new(
                    "INSERT INTO leases (holder, subject, granted, billed, expires_at, drop_at) ",
                );
                q.push_values(chunk, |mut row, (subject, (granted, billed))| {
                    row.push_bind(holder.to_owned())
                        .push_bind((*subject).to_owned())
                        .push_bind(*granted)
                        .push_bind(*billed)
                        .push_bind(expires_at)
                        .push_bind(drop_at);
                });
                // An existing row's `billed` stays: only reported usage moves it.
                q.push(
                    " ON CONFLICT (holder, subject) DO UPDATE SET granted = excluded.granted, \
                     expires_at = excluded.expires_at, drop_at = excluded.drop_at",
                );
                q.build().execute(&mut *tx).await?;
            }
            let unlimited: Vec<&str> = decided
                .iter()
                .filter(|(_, lease)| lease.is_none())
                .map(|(subject, _)| *subject)
                .collect();
            for chunk in unlimited.chunks(CHUNK) {
                let mut q = QueryBuilder::new("DELETE FROM leases WHERE holder = ");
                q.push_bind(holder.to_owned()).push(" AND subject IN (");
                let mut list = q.separated(", ");
                for subject in chunk {
                    list.push_bind((*subject).to_owned());
                }
                q.push(")");
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(grants)
        })
    }

    /// The leases held on `subject`, by holder.
    pub async fn leases_on(&self, subject: &str) -> Result<Vec<LeaseRow>, StoreError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query("SELECT * FROM leases WHERE subject = $1 ORDER BY holder")
                .bind(subject)
                .fetch_all(pool)
                .await?;
            Ok(rows.iter().map(lease_row).collect::<Result<_, _>>()?)
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::pricing::Tokens;
    use crate::store::{NewKey, NewPrice, UsageRecord};

    pub(in crate::store) const TTL: i64 = 30_000;

    pub(in crate::store) fn ask(subject: &str, spent: u64, need: u64, want: u64) -> LeaseAsk {
        LeaseAsk {
            subject: subject.into(),
            spent,
            need,
            want,
        }
    }

    pub(in crate::store) fn key(id: &str, account: &str, quota: Option<i64>) -> NewKey {
        NewKey {
            id: id.into(),
            name: id.into(),
            key_hash: format!("{id:0>64}"),
            masked_key: "sk-...".into(),
            account: account.into(),
            group: "default".into(),
            expires_at: None,
            unlimited_quota: quota.is_none(),
            quota: quota.unwrap_or(0),
            models: vec![],
            ip_allowlist: vec![],
            rpm: None,
            tpm: None,
            max_parallel: None,
            quota_period: crate::budget::Period::Total,
            model_caps: vec![],
            rotate_by: None,
        }
    }

    /// A store with the key `k1` (quota 1,000) in the account `team` (balance 600), the
    /// unlimited key `free` in `default` (no balance), and the model `m` at one credit per
    /// input token.
    pub(in crate::store) async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path()).await.unwrap();
        store.create_account("team", Some(600), 0).await.unwrap();
        let keys = [key("k1", "team", Some(1_000)), key("free", "default", None)];
        store.insert_keys(&keys, 0).await.unwrap();
        let price = NewPrice {
            input: 1_000_000.0,
            ..NewPrice::default()
        };
        store.put_price("m", &price, 0).await.unwrap();
        (dir, store)
    }

    pub(in crate::store) async fn sql(store: &Store, sql: &'static str) {
        with_pool!(store, |pool| {
            sqlx::query(sql).execute(pool).await.unwrap();
        });
    }

    pub(in crate::store) async fn one(
        store: &Store,
        holder: &str,
        a: LeaseAsk,
        now_ms: i64,
    ) -> LeaseGrant {
        let mut grants = store.grant_leases(holder, &[a], TTL, now_ms).await.unwrap();
        assert_eq!(grants.len(), 1);
        grants.remove(0)
    }

    pub(in crate::store) fn record(request_id: &str, key_id: &str, cost: u64) -> UsageRecord {
        UsageRecord {
            request_id: request_id.into(),
            key_id: key_id.into(),
            model: "m".into(),
            tokens: Tokens {
                input: cost,
                ..Tokens::default()
            },
            status: 200,
            ts: 1,
            estimated: false,
        }
    }

    /// What the key has used and what its holders hold: `used + outstanding` must stay
    /// within its quota.
    async fn used_and_held(store: &Store, key_id: &str) -> (i64, i64) {
        let key = store.get_key(key_id, 0).await.unwrap().unwrap();
        let rows = store.leases_on(&format!("k:{key_id}")).await.unwrap();
        let held = rows.iter().map(LeaseRow::outstanding).sum();
        (key.used_quota, held)
    }

    #[tokio::test]
    async fn two_holders_share_what_is_left_and_never_more() {
        let (_dir, store) = store().await;
        // Alone, a holder gets half of what is free, however much it wants.
        let a = one(&store, "A", ask("k:k1", 0, 0, u64::MAX), 0).await;
        assert_eq!((a.limited, a.granted), (true, 500));
        // The second gets half of what the first left.
        let b = one(&store, "B", ask("k:k1", 0, 0, 10_000), 0).await;
        assert_eq!(b.granted, 250);
        assert_eq!(used_and_held(&store, "k1").await, (0, 750));
        // A asks again having spent 100: it keeps the 400 it holds unspent (its filter
        // may be spending them while the ask is on its way), though half of what is free
        // (1,000 - 250 - 100) is less.
        let a = one(&store, "A", ask("k:k1", 100, 0, 10_000), 1).await;
        assert_eq!(a.granted, 100 + 400);
        // A need beyond half of what is free is granted whole...
        let a = one(&store, "A", ask("k:k1", 100, 600, 0), 2).await;
        assert_eq!(a.granted, 700);
        assert_eq!(used_and_held(&store, "k1").await, (0, 950));
        // ... but never beyond what is free.
        let a = one(&store, "A", ask("k:k1", 100, 5_000, 5_000), 3).await;
        assert_eq!(a.granted, 750);
        // B asks again: it keeps the 250 it holds, all that A leaves.
        let b = one(&store, "B", ask("k:k1", 0, 1, 1_000), 4).await;
        assert_eq!(b.granted, 250);
        assert_eq!(used_and_held(&store, "k1").await, (0, 1_000));
        // A third holder gets nothing: nothing is free.
        let c = one(&store, "C", ask("k:k1", 0, 1, 1_000), 4).await;
        assert_eq!(c.granted, 0);
        // Wanting nothing gives back what was not spent, and the others may have it: C
        // half of the 650 now free.
        let a = one(&store, "A", ask("k:k1", 100, 0, 0), 5).await;
        assert_eq!(a.granted, 100);
        let c = one(&store, "C", ask("k:k1", 0, 0, 1_000), 6).await;
        assert_eq!(c.granted, 325);
        assert_eq!(used_and_held(&store, "k1").await, (0, 100 + 250 + 325));
        // C spends its lease; A needs more than is free: it gets what is free, no more.
        let c = one(&store, "C", ask("k:k1", 325, 0, 0), 7).await;
        let a = one(&store, "A", ask("k:k1", 100, 10_000, 10_000), 7).await;
        assert_eq!((c.granted, a.granted), (325, 425));
        assert_eq!(used_and_held(&store, "k1").await, (0, 1_000));
        // Nothing free: nothing granted beyond what was spent, however much is needed.
        let c = one(&store, "C", ask("k:k1", 325, 1, 1), 8).await;
        assert_eq!(c.granted, 325);
        // An account's balance is shared the same way.
        let a = one(&store, "A", ask("a:team", 0, 0, 1_000), 7).await;
        let b = one(&store, "B", ask("a:team", 0, 0, 1_000), 7).await;
        assert_eq!((a.granted, b.granted), (300, 150));
    }

    #[tokio::test]
    async fn reported_usage_bills_the_holders_leases() {
        let (_dir, store) = store().await;
        let asks = [ask("k:k1", 0, 0, 400), ask("a:team", 0, 0, 200)];
        let grants = store.grant_leases("A", &asks, TTL, 0).await.unwrap();
        assert_eq!((grants[0].granted, grants[1].granted), (400, 200));
        one(&store, "B", ask("k:k1", 0, 0, 200), 0).await;
        assert_eq!(used_and_held(&store, "k1").await, (0, 600));

        // A spends 150 and reports it: its outstanding falls as the key's use rises.
        let batch = [record("r1", "k1", 100), record("r2", "k1", 50)];
        store.ingest_usage(&batch, Some("A"), 1).await.unwrap();
        let rows = store.leases_on("k:k1").await.unwrap();
        assert_eq!((rows[0].holder.as_str(), rows[0].billed), ("A", 150));
        assert_eq!(rows[1].billed, 0, "B reported nothing");
        assert_eq!(used_and_held(&store, "k1").await, (150, 450));
        let team = store.leases_on("a:team").await.unwrap();
        assert_eq!((team[0].granted, team[0].billed), (200, 150));
        // A retried report bills nothing twice.
        store.ingest_usage(&batch, Some("A"), 2).await.unwrap();
        assert_eq!(used_and_held(&store, "k1").await, (150, 450));

        // Asking with what it spent, A keeps its unspent 250 and gets half of what is
        // free beyond: 1,000 - 150 used - 200 (B) - 0 unbilled = 650.
        let a = one(&store, "A", ask("k:k1", 150, 0, 10_000), 3).await;
        assert_eq!(a.granted, 150 + 325);
        let (used, held) = used_and_held(&store, "k1").await;
        assert!(used + held <= 1_000, "{used} + {held}");

        // A record costing more than the lease left (an overrun) just bills.
        store
            .ingest_usage(&[record("r3", "k1", 500)], Some("A"), 4)
            .await
            .unwrap();
        let rows = store.leases_on("k:k1").await.unwrap();
        assert_eq!((rows[0].granted, rows[0].billed), (475, 650));
        assert_eq!(rows[0].outstanding(), 0);
        assert_eq!(used_and_held(&store, "k1").await, (650, 200));
        // Records without a holder bill the key alone.
        store
            .ingest_usage(&[record("r4", "k1", 10)], None, 5)
            .await
            .unwrap();
        let rows = store.leases_on("k:k1").await.unwrap();
        assert_eq!((rows[0].billed, rows[1].billed), (650, 0));
        // After the overrun, B keeps the 200 it holds (more than half of the 340 left).
        let b = one(&store, "B", ask("k:k1", 0, 0, 10_000), 6).await;
        assert_eq!(b.granted, 200);
        assert_eq!(used_and_held(&store, "k1").await, (660, 200));
        // A lease on an unlimited account is never billed (there is none).
        store.create_account("open", None, 0).await.unwrap();
        store
            .insert_keys(&[key("k2", "open", Some(100))], 0)
            .await
            .unwrap();
        let grants = store
            .grant_leases(
                "A",
                &[ask("k:k2", 0, 0, 100), ask("a:open", 0, 0, 5)],
                TTL,
                7,
            )
            .await
            .unwrap();
        assert_eq!((grants[0].granted, grants[1].limited), (50, false));
        store
            .ingest_usage(&[record("r5", "k2", 20)], Some("A"), 8)
            .await
            .unwrap();
        assert_eq!(store.leases_on("k:k2").await.unwrap()[0].billed, 20);
        assert!(store.leases_on("a:open").await.unwrap().is_empty());
    }

    /// A tiny xorshift: the test needs varied numbers, not good ones.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_asks_and_reports_keep_every_lease_within_the_quota() {
        let (_dir, store) = store().await;
        // Each holder asks one at a time, as a filter does; its tasks take turns on its
        // state (spent, reported, granted), while the two holders race each other.
        let holders: Vec<Arc<tokio::sync::Mutex<(u64, u64, u64)>>> =
            (0..2).map(|_| Arc::default()).collect();
        let mut tasks = Vec::new();
        for task in 0..20_u64 {
            let store = store.clone();
            let state = holders[(task % 2) as usize].clone();
            let holder = if task % 2 == 0 { "A" } else { "B" };
            tasks.push(tokio::spawn(async move {
                let mut rng = 0x9e37_79b9_7f4a_7c15 ^ (task + 1);
                for round in 0..5 {
                    let mut state = state.lock().await;
                    let (spent, reported, granted) = &mut *state;
                    // Spend some of the lease, report some of what was spent.
                    *spent += next(&mut rng) % (*granted - *spent + 1);
                    let report = next(&mut rng) % (*spent - *reported + 1);
                    if report > 0 {
                        let id = format!("{holder}-{task}-{round}");
                        let records = [record(&id, "k1", report)];
                        store.ingest_usage(&records, Some(holder), 0).await.unwrap();
                        *reported += report;
                    }
                    let want = next(&mut rng) % 400;
                    let need = next(&mut rng) % 50;
                    let a = ask("k:k1", *spent, need, want);
                    let grant = one(&store, holder, a, 0).await;
                    assert!(grant.limited);
                    assert!(grant.granted >= *spent, "{grant:?} below spent {spent}");
                    assert!(grant.granted <= *spent + need.max(want), "{grant:?}");
                    *granted = grant.granted;
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let (used, held) = used_and_held(&store, "k1").await;
        assert!(used + held <= 1_000, "{used} + {held}");
        // What each holder was last granted is its row, billed what it reported.
        let rows = store.leases_on("k:k1").await.unwrap();
        for (row, state) in rows.iter().zip(&holders) {
            let (spent, reported, granted) = *state.lock().await;
            assert_eq!((row.granted, row.billed), (granted as i64, reported as i64));
            assert!(spent <= granted);
        }
        let reported: u64 = {
            let mut sum = 0;
            for state in &holders {
                sum += state.lock().await.1;
            }
            sum
        };
        assert_eq!(used, reported as i64);
    }

    #[tokio::test]
    async fn a_lease_counts_until_its_drop_and_then_goes() {
        let (_dir, store) = store().await;
        one(&store, "A", ask("k:k1", 0, 0, 1_000), 0).await;
        let rows = store.leases_on("k:k1").await.unwrap();
        assert_eq!((rows[0].expires_at, rows[0].drop_at), (TTL, 2 * TTL));
        // Expired (A no longer spends) but not dropped: its records may be on their way.
        let b = one(&store, "B", ask("k:k1", 0, 0, 1_000), 2 * TTL).await;
        assert_eq!(b.granted, 250);
        // Dropped: B's next ask finds only its own row.
        let b = one(&store, "B", ask("k:k1", 0, 0, 1_000), 2 * TTL + 1).await;
        assert_eq!(b.granted, 500);
        let rows = store.leases_on("k:k1").await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].holder, "B");
        // B spends 300 of its 500 and reports it, then stops asking: once its row is
        // dropped, what it spent is not held again when it comes back.
        let report = [record("r1", "k1", 300)];
        store.ingest_usage(&report, Some("B"), 0).await.unwrap();
        one(&store, "A", ask("k:k1", 0, 0, 0), 5 * TTL).await;
        assert!(store
            .leases_on("k:k1")
            .await
            .unwrap()
            .iter()
            .all(|r| r.holder == "A"));
        let b = one(&store, "B", ask("k:k1", 300, 0, 1_000), 5 * TTL).await;
        assert_eq!(b.granted, 300 + (1_000 - 300) / 2);
        let rows = store.leases_on("k:k1").await.unwrap();
        assert_eq!((rows[1].billed, rows[1].outstanding()), (300, 350));
        assert_eq!(used_and_held(&store, "k1").await, (300, 350));
        // Any holder's ask drops every row past its time, on every subject.
        one(&store, "A", ask("a:team", 0, 0, 10), 0).await;
        one(&store, "C", ask("k:free", 0, 0, 10), 10 * TTL).await;
        assert!(store.leases_on("k:k1").await.unwrap().is_empty());
        assert!(store.leases_on("a:team").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn extreme_numbers_neither_panic_nor_overflow() {
        let (_dir, store) = store().await;
        sql(
            &store,
            "UPDATE keys SET quota = 9223372036854775807 WHERE id = 'k1'",
        )
        .await;
        sql(
            &store,
            "UPDATE accounts SET balance = 9223372036854775807 WHERE name = 'team'",
        )
        .await;
        let max = u64::MAX;
        for holder in ["A", "B", "C"] {
            let asks = [
                ask("k:k1", 0, max, max),
                ask("a:team", max, max, max),
                ask("k:gone", max, max, max),
            ];
            let grants = store
                .grant_leases(holder, &asks, i64::MAX, i64::MAX)
                .await
                .unwrap();
            for grant in &grants {
                assert!(grant.granted <= i64::MAX as u64, "{grant:?}");
            }
        }
        for subject in ["k:k1", "a:team", "k:gone"] {
            for row in store.leases_on(subject).await.unwrap() {
                assert!(row.granted >= 0 && row.billed >= 0, "{row:?}");
                assert_eq!((row.expires_at, row.drop_at), (i64::MAX, i64::MAX));
            }
        }
        // Billing saturates too.
        let records = [record("r1", "k1", max), record("r2", "k1", max)];
        store.ingest_usage(&records, Some("A"), 0).await.unwrap();
        store
            .grant_leases("A", &[ask("k:k1", max, max, max)], TTL, 0)
            .await
            .unwrap();
        sql(&store, "UPDATE leases SET billed = 9223372036854775806").await;
        store
            .ingest_usage(&[record("r3", "k1", 5)], Some("A"), 0)
            .await
            .unwrap();
        let rows = store.leases_on("k:k1").await.unwrap();
        assert_eq!(rows[0].billed, i64::MAX);
        // A key used past its quota has less than nothing left: nothing more is granted.
        sql(
            &store,
            "UPDATE keys SET quota = 10, used_quota = 9223372036854775807",
        )
        .await;
        let a = one(&store, "D", ask("k:k1", 3, max, max), TTL).await;
        assert_eq!(a.granted, 3);
    }

    #[tokio::test]
    async fn unlimited_and_unknown_subjects() {
        let (_dir, store) = store().await;
        let asks = [
            ask("k:free", 5, 10, 10),
            ask("a:default", 5, 10, 10),
            ask("k:gone", 7, 10, 10),
            ask("a:gone", 0, 10, 10),
            ask("x:odd", 3, 10, 10),
        ];
        let grants = store.grant_leases("A", &asks, TTL, 0).await.unwrap();
        let seen: Vec<_> = grants
            .iter()
            .map(|g| (g.subject.as_str(), g.limited, g.granted))
            .collect();
        assert_eq!(
            seen,
            [
                ("k:free", false, 0),
                ("a:default", false, 0),
                ("k:gone", true, 7),
                ("a:gone", true, 0),
                ("x:odd", true, 3),
            ]
        );
        assert!(store.leases_on("k:free").await.unwrap().is_empty());
        assert!(store.leases_on("a:default").await.unwrap().is_empty());
        // A key made unlimited: its holder's row goes with the next ask.
        one(&store, "A", ask("k:k1", 0, 0, 100), 0).await;
        sql(
            &store,
            "UPDATE keys SET unlimited_quota = TRUE WHERE id = 'k1'",
        )
        .await;
        let a = one(&store, "A", ask("k:k1", 50, 0, 100), 1).await;
        assert!(!a.limited);
        assert!(store.leases_on("k:k1").await.unwrap().is_empty());
        // A disabled key keeps its limit: the filter refuses it anyway.
        sql(
            &store,
            "UPDATE keys SET unlimited_quota = FALSE, enabled = FALSE",
        )
        .await;
        let a = one(&store, "A", ask("k:k1", 0, 0, 100), 2).await;
        assert_eq!((a.limited, a.granted), (true, 100));
        // A subject asked twice: the later ask stands.
        let grants = store
            .grant_leases(
                "B",
                &[ask("k:k1", 0, 0, 100), ask("k:k1", 0, 0, 10)],
                TTL,
                3,
            )
            .await
            .unwrap();
        assert_eq!((grants[0].granted, grants[1].granted), (100, 10));
        let rows = store.leases_on("k:k1").await.unwrap();
        assert_eq!(rows[1].granted, 10);
    }

    /// A key's caps on models are leased as its quota is, each in its own unit, and
    /// reported usage comes off the lease of the cap that counted it.
    #[tokio::test]
    async fn a_keys_caps_are_shared_out_and_billed_in_their_unit() {
        use crate::keys::caps::{StoredCap, Unit};
        let (_dir, store) = store().await;
        let cap = |model: &str, unit, limit, used, end| StoredCap {
            model: model.into(),
            unit,
            limit,
            used,
            period: "day".into(),
            period_start: Some(0),
            period_end: Some(end),
        };
        let capped = NewKey {
            model_caps: vec![
                cap("m", Unit::Credits, 100, 0, 86_400),
                cap("t-*", Unit::Tokens, 1_000, 30, 86_400),
                cap("old", Unit::Credits, 10, 10, 0),
            ],
            ..key("capped", "default", None)
        };
        store.insert_keys(&[capped], 0).await.unwrap();
        let a = one(&store, "A", ask("m:capped:credits:m", 0, 0, 1_000), 0).await;
        let b = one(&store, "B", ask("m:capped:credits:m", 0, 0, 1_000), 0).await;
        assert_eq!((a.limited, a.granted, b.granted), (true, 50, 25));
        // Tokens: half of what the period left.
        let t = one(&store, "A", ask("m:capped:tokens:t-*", 0, 0, u64::MAX), 0).await;
        assert_eq!(t.granted, 485);
        // A cap whose period ended has its whole limit again (10, not 0).
        let old = one(&store, "A", ask("m:capped:credits:old", 0, 6, 6), 0).await;
        assert_eq!(old.granted, 6);
        // A's calls: 40 credits on `m`; 7 + 3 tokens and no credits (no price) on `t-1`.
        let tokens = UsageRecord {
            model: "t-1".into(),
            tokens: Tokens {
                input: 7,
                output: 3,
                ..Tokens::default()
            },
            ..record("r2", "capped", 0)
        };
        store
            .ingest_usage(&[record("r1", "capped", 40), tokens], Some("A"), 1)
            .await
            .unwrap();
        let rows = store.leases_on("m:capped:credits:m").await.unwrap();
        assert_eq!((rows[0].holder.as_str(), rows[0].billed), ("A", 40));
        assert_eq!(rows[1].billed, 0, "B reported nothing");
        let rows = store.leases_on("m:capped:tokens:t-*").await.unwrap();
        assert_eq!((rows[0].granted, rows[0].billed), (485, 10));
        // The cap used 40 of 100; A holds 10 more unspent, B 25: C gets half of 25.
        let c = one(&store, "C", ask("m:capped:credits:m", 0, 0, 1_000), 2).await;
        assert_eq!(c.granted, 12);
        // A cap the key no longer has limits nothing; a key that does not exist has
        // nothing left.
        let grants = store
            .grant_leases(
                "A",
                &[
                    ask("m:capped:credits:gone", 5, 1, 1),
                    ask("m:nokey:credits:m", 5, 1, 1),
                    // The cap on `m` counts credits: one in tokens is another cap.
                    ask("m:capped:tokens:m", 5, 1, 1),
                ],
                TTL,
                3,
            )
            .await
            .unwrap();
        let seen: Vec<_> = grants.iter().map(|g| (g.limited, g.granted)).collect();
        assert_eq!(seen, [(false, 0), (true, 5), (false, 0)]);
    }

    #[tokio::test]
    async fn rate_limits_are_shared_out_and_never_given_away_while_counted() {
        let (_dir, store) = store().await;
        let rated = NewKey {
            rpm: Some(10),
            max_parallel: Some(4),
            ..key("rl", "default", None)
        };
        store.insert_keys(&[rated], 0).await.unwrap();
        // A holder whose window counts 2 requests asks for one more, wanting 2: it gets
        // its 2 and the 2 it wants (shares are levels, not spending: never billed).
        let a = one(&store, "A", ask("r:rl", 2, 1, 2), 0).await;
        assert_eq!((a.limited, a.granted), (true, 4));
        // The other gets at most half of the 6 left, or what it needs.
        let b = one(&store, "B", ask("r:rl", 0, 1, 10), 0).await;
        assert_eq!(b.granted, 3);
        let b = one(&store, "B", ask("r:rl", 3, 5, 10), 1).await;
        assert_eq!(b.granted, 6, "all that A leaves");
        // A cannot be given less than its window counts, whatever it wants.
        let a = one(&store, "A", ask("r:rl", 4, 0, 0), 2).await;
        assert_eq!(a.granted, 4);
        let rows = store.leases_on("r:rl").await.unwrap();
        let held: i64 = rows.iter().map(LeaseRow::outstanding).sum();
        assert_eq!((held, rows[0].billed), (10, 0));
        // Usage reports bill no share.
        store
            .ingest_usage(&[record("r1", "rl", 5)], Some("A"), 3)
            .await
            .unwrap();
        assert_eq!(store.leases_on("r:rl").await.unwrap()[0].billed, 0);
        // Parallel requests likewise; a key without a TPM limit is unlimited there.
        let p = one(&store, "A", ask("p:rl", 1, 1, 1), 4).await;
        assert_eq!(p.granted, 2);
        let t = one(&store, "A", ask("t:rl", 0, 1, 1), 4).await;
        assert!(!t.limited);
        // The group's limit counts when stricter.
        sql(&store, "UPDATE groups SET rpm = 3 WHERE name = 'default'").await;
        let c = one(&store, "C", ask("r:rl", 0, 1, 1), 5).await;
        assert_eq!(c.granted, 0, "A and B hold more than 3 already");
    }

    #[test]
    fn a_holder_keeps_what_it_holds_and_still_wants() {
        // Granted 150, spent 50 (not billed yet), 150 left and no other holder: free is
        // the 100 it holds. Its filter may spend all of it while this ask is on its way,
        // so half of what is free (50) is not enough: it keeps the 100.
        let a = LeaseAsk {
            subject: "k:x".into(),
            spent: 50,
            need: 0,
            want: 200,
        };
        assert_eq!(next_granted(150, 0, 150, 0, &a), 150);
        // Asking for less gives the rest back.
        let less = LeaseAsk {
            want: 30,
            ..a.clone()
        };
        assert_eq!(next_granted(150, 0, 150, 0, &less), 80);
        // Without a lease held, half of what is free.
        assert_eq!(next_granted(150, 0, 0, 0, &a), 100);
    }

    proptest! {
        /// Whatever the numbers, no panic; the holder keeps what it spent (up to
        /// i64::MAX); and when anything is free, its outstanding and the others' stay
        /// within the limit.
        #[test]
        fn a_grant_stays_within_what_is_free(
            limit in any::<i64>(),
            others in 0..=i128::from(i64::MAX) * 4,
            billed in any::<i64>(),
            spent in any::<u64>(),
            need in any::<u64>(),
            want in any::<u64>(),
        ) {
            let a = LeaseAsk { subject: "k:x".into(), spent, need, want };
            let granted = next_granted(limit, others, 0, billed, &a);
            let billed = i128::from(billed.max(0));
            let floor = i128::from(spent).max(billed).min(i128::from(i64::MAX));
            prop_assert!(i128::from(granted) >= floor);
            let unbilled = (i128::from(spent) - billed).max(0);
            let free = i128::from(limit) - others - unbilled;
            let outstanding = (i128::from(granted) - billed).max(0);
            if free >= 0 {
                prop_assert!(others + outstanding <= i128::from(limit));
                // Never more than half of what is free, unless needed.
                let lease = outstanding - unbilled;
                prop_assert!(lease <= (free / 2).max(i128::from(need)));
            } else {
                prop_assert_eq!(outstanding, unbilled.min(i128::from(i64::MAX) - billed));
            }
        }
    }
}
