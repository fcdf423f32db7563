//! The audit log's storage: one row per change made through the management API, newest
//! first when listed, pruned by age.
//!
//! What is stored of the thing changed (`before`, `after`) goes through [`strip_secrets`]
//! first, whatever the caller passed: the handlers' views never hold a secret, and this
//! makes sure of it once more.

use serde_json::Value;
use sqlx::{Database, Encode, QueryBuilder, Type};

use super::{with_pool, Get, Store, StoreError};

/// An entry about to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEntry {
    /// Unix seconds.
    pub at: i64,
    /// `admin`, `token`, `sso` or `cli`.
    pub actor_kind: String,
    pub actor_id: String,
    /// The account of a tenant actor; `None` for the operator.
    pub actor_account: Option<String>,
    /// The peer's IP address, when known.
    pub address: Option<String>,
    pub action: String,
    pub target: String,
    /// The account of the thing changed; `None`: global.
    pub account: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// An entry as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    /// The order of writing: larger is newer.
    pub id: i64,
    pub at: i64,
    pub actor_kind: String,
    pub actor_id: String,
    pub actor_account: Option<String>,
    pub address: Option<String>,
    pub action: String,
    pub target: String,
    pub account: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// Which entries a listing shows; `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditFilter {
    pub actor_kind: Option<String>,
    pub actor_id: Option<String>,
    /// Exact, or a prefix when it ends with `.` (`key.` matches `key.create`) or `*`
    /// (`key.rot*`, the `*` left out).
    pub action: Option<String>,
    pub target: Option<String>,
    pub account: Option<String>,
    /// Unix seconds, inclusive.
    pub from: Option<i64>,
    /// Unix seconds, exclusive.
    pub to: Option<i64>,
}

/// Field names whose values are never stored: exactly these, or ending in `_secret` or
/// `_hash` (compared without regard to case).
const SECRET_FIELDS: [&str; 5] = ["key", "secret", "token", "token_hash", "key_hash"];
const SECRET_SUFFIXES: [&str; 2] = ["_secret", "_hash"];

/// How keygate's own secrets begin: an API key, an account token, a webhook's signing
/// secret. A string that is one of these prefixes and nothing but letters and digits
/// after it (at least [`SECRET_TAIL_MIN`] of them) is taken for a secret wherever it is.
const SECRET_PREFIXES: [&str; 3] = ["sk-", "kgt_", "whsec_"];
const SECRET_TAIL_MIN: usize = 20;

/// What a string value that looks like a secret is replaced by.
pub const REDACTED: &str = "[redacted]";

fn secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_FIELDS.contains(&name.as_str())
        || SECRET_SUFFIXES.iter().any(|suffix| name.ends_with(suffix))
}

fn secret_value(text: &str) -> bool {
    SECRET_PREFIXES.iter().any(|prefix| {
        text.strip_prefix(prefix).is_some_and(|tail| {
            tail.len() >= SECRET_TAIL_MIN && tail.bytes().all(|b| b.is_ascii_alphanumeric())
        })
    })
}

/// Removes, at any depth, every object field with a secret's name (`key`, `secret`,
/// `token`, `token_hash`, `key_hash`, any `*_secret` or `*_hash`), and replaces any string
/// that looks like one of keygate's secrets (`sk-…`, `kgt_…`, `whsec_…` in full, not a
/// masked form) with [`REDACTED`].
pub fn strip_secrets(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            fields.retain(|name, _| !secret_name(name));
            fields.values_mut().for_each(strip_secrets);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_secrets),
        Value::String(text) if secret_value(text) => *value = Value::String(REDACTED.into()),
        _ => {}
    }
}

/// A value as stored: secrets stripped, JSON text.
fn stored(value: Option<&Value>) -> Option<String> {
    value.map(|value| {
        let mut value = value.clone();
        strip_secrets(&mut value);
        value.to_string()
    })
}

/// A stored JSON column read back; text that is not JSON (written by hand) is shown as
/// the string it is rather than failing the listing.
fn parsed(text: Option<String>) -> Option<Value> {
    text.map(|text| serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn audit_row(row: &impl Get) -> Result<AuditRow, sqlx::Error> {
    Ok(AuditRow {
        id: row.int("seq")?,
        at: row.int("at")?,
        actor_kind: row.text("actor_kind")?,
        actor_id: row.text("actor_id")?,
        actor_account: row.opt_text("actor_account")?,
        address: row.opt_text("address")?,
        action: row.text("action")?,
        target: row.text("target")?,
        account: row.opt_text("account")?,
        before: parsed(row.opt_text("before")?),
        after: parsed(row.opt_text("after")?),
    })
}

/// The prefix an action filter stands for, if it is one (see [`AuditFilter::action`]).
fn action_prefix(action: &str) -> Option<&str> {
    if let Some(prefix) = action.strip_suffix('*') {
        return Some(prefix);
    }
    action.ends_with('.').then_some(action)
}

/// Appends ` WHERE ...` for the filter's conditions.
fn push_filter<DB: Database>(q: &mut QueryBuilder<DB>, filter: &AuditFilter)
where
    String: for<'t> Encode<'t, DB> + Type<DB>,
    i64: for<'t> Encode<'t, DB> + Type<DB>,
{
    q.push(" WHERE 1 = 1");
    let exact = [
        (" AND actor_kind = ", &filter.actor_kind),
        (" AND actor_id = ", &filter.actor_id),
        (" AND target = ", &filter.target),
        (" AND account = ", &filter.account),
    ];
    for (clause, value) in exact {
        if let Some(value) = value {
            q.push(clause).push_bind(value.clone());
        }
    }
    if let Some(action) = &filter.action {
        match action_prefix(action) {
            // substr rather than LIKE: `_` in an action is no wildcard, and the comparison
            // is case-sensitive on both engines.
            // The length is written as a literal (a number we counted): PostgreSQL's
            // substr takes an INTEGER, not the BIGINT a bound i64 is.
            Some(prefix) => {
                let length = prefix.chars().count();
                q.push(format!(" AND substr(action, 1, {length}) = "))
                    .push_bind(prefix.to_owned());
            }
            None => {
                q.push(" AND action = ").push_bind(action.clone());
            }
        }
    }
    if let Some(from) = filter.from {
        q.push(" AND at >= ").push_bind(from);
    }
    if let Some(to) = filter.to {
        q.push(" AND at < ").push_bind(to);
    }
}

impl Store {
    /// Stores an entry, its `before` and `after` stripped of secrets (see
    /// [`strip_secrets`]); returns its id.
    pub async fn insert_audit(&self, entry: &NewAuditEntry) -> Result<i64, StoreError> {
        let (before, after) = (stored(entry.before.as_ref()), stored(entry.after.as_ref()));
        with_pool!(self, |pool| {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO audit_log (at, actor_kind, actor_id, actor_account, address, \
                     action, target, account, before, after) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING seq",
            )
            .bind(entry.at)
            .bind(&entry.actor_kind)
            .bind(&entry.actor_id)
            .bind(entry.actor_account.as_deref())
            .bind(entry.address.as_deref())
            .bind(&entry.action)
            .bind(&entry.target)
            .bind(entry.account.as_deref())
            .bind(before)
            .bind(after)
            .fetch_one(pool)
            .await?;
            Ok(id)
        })
    }

    /// One page of the entries matching `filter`, newest first, and how many match in all.
    pub async fn list_audit(
        &self,
        filter: &AuditFilter,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<AuditRow>, u64), StoreError> {
        with_pool!(self, |pool| {
            let mut q = QueryBuilder::new("SELECT * FROM audit_log");
            push_filter(&mut q, filter);
            q.push(" ORDER BY seq DESC LIMIT ")
                .push_bind(i64::from(limit))
                .push(" OFFSET ")
                .push_bind(i64::try_from(offset).unwrap_or(i64::MAX));
            let rows = q.build().fetch_all(pool).await?;
            let mut count = QueryBuilder::new("SELECT COUNT(*) FROM audit_log");
            push_filter(&mut count, filter);
            let total: i64 = count.build_query_scalar().fetch_one(pool).await?;
            let rows = rows.iter().map(audit_row).collect::<Result<_, _>>()?;
            Ok((rows, u64::try_from(total).unwrap_or(0)))
        })
    }

    /// Deletes the entries written before `before` (unix seconds); returns how many.
    pub async fn prune_audit(&self, before: i64) -> Result<u64, StoreError> {
        with_pool!(self, |pool| {
            let done = sqlx::query("DELETE FROM audit_log WHERE at < $1")
                .bind(before)
                .execute(pool)
                .await?;
            Ok(done.rows_affected())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(at: i64, action: &str, target: &str, account: Option<&str>) -> NewAuditEntry {
        NewAuditEntry {
            at,
            actor_kind: "admin".into(),
            actor_id: "admin".into(),
            actor_account: None,
            address: Some("127.0.0.1".into()),
            action: action.into(),
            target: target.into(),
            account: account.map(str::to_owned),
            before: None,
            after: Some(json!({"name": target})),
        }
    }

    #[test]
    fn secret_named_fields_go_at_any_depth_and_nothing_else_does() {
        let mut value = json!({
            "id": "k1",
            "name": "prod",
            "masked_key": "sk-abcd...wxyz",
            "key": "sk-whatever",
            "Secret": "s",
            "token": "t",
            "token_hash": "h",
            "key_hash": "h",
            "signing_secret": "s",
            "password_hash": "h",
            "hashes": ["kept"],
            "webhook": {"url": "http://x", "secret": "whsec_x", "nested": [{"key_hash": "h", "ok": 1}]},
            "models": ["gpt-4o", {"token": "t", "name": "m"}],
            "keys": "kept: the name is not key",
        });
        strip_secrets(&mut value);
        assert_eq!(
            value,
            json!({
                "id": "k1",
                "name": "prod",
                "masked_key": "sk-abcd...wxyz",
                "hashes": ["kept"],
                "webhook": {"url": "http://x", "nested": [{"ok": 1}]},
                "models": ["gpt-4o", {"name": "m"}],
                "keys": "kept: the name is not key",
            })
        );
    }

    #[test]
    fn strings_that_are_whole_secrets_are_redacted_wherever_they_are() {
        let api_key = format!("sk-{}", "a1B2c3".repeat(8));
        let token = format!("kgt_{}", "Z9".repeat(20));
        let webhook = format!("whsec_{}", "q".repeat(32));
        let mut value = json!({
            "name": api_key,
            "note": [token, "sk-abcd...wxyz", "sk-short", "kgt_...abcd"],
            "deep": {"description": webhook},
        });
        strip_secrets(&mut value);
        assert_eq!(
            value,
            json!({
                "name": REDACTED,
                "note": [REDACTED, "sk-abcd...wxyz", "sk-short", "kgt_...abcd"],
                "deep": {"description": REDACTED},
            })
        );
    }

    #[test]
    fn an_action_filter_is_a_prefix_when_it_ends_with_a_dot_or_a_star() {
        assert_eq!(action_prefix("key."), Some("key."));
        assert_eq!(action_prefix("key.rot*"), Some("key.rot"));
        assert_eq!(action_prefix("key.create"), None);
    }

    /// Runs on SQLite, and on PostgreSQL under `.ci/postgres.sh`.
    #[tokio::test]
    async fn entries_are_stored_stripped_listed_newest_first_filtered_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path()).await.unwrap();
        let mut first = entry(100, "key.create", "k1", Some("acme"));
        first.after =
            Some(json!({"name": "k1", "key": "sk-secret", "nested": {"token_hash": "h"}}));
        let id1 = store.insert_audit(&first).await.unwrap();
        let id2 = store
            .insert_audit(&entry(200, "key.update", "k1", Some("acme")))
            .await
            .unwrap();
        let mut tenant = entry(300, "webhook.rotate_secret", "wh_1", Some("globex"));
        (tenant.actor_kind, tenant.actor_id) = ("token".into(), "tok_1".into());
        tenant.actor_account = Some("globex".into());
        tenant.address = None;
        tenant.before = Some(json!({"url": "http://x", "secret": "whsec_old"}));
        let id3 = store.insert_audit(&tenant).await.unwrap();
        store
            .insert_audit(&entry(400, "group.put", "team", None))
            .await
            .unwrap();
        assert!(id1 < id2 && id2 < id3);

        let all = AuditFilter::default();
        let (rows, total) = store.list_audit(&all, 10, 0).await.unwrap();
        assert_eq!(total, 4);
        let actions: Vec<&str> = rows.iter().map(|r| r.action.as_str()).collect();
        assert_eq!(
            actions,
            [
                "group.put",
                "webhook.rotate_secret",
                "key.update",
                "key.create"
            ]
        );
        let created = &rows[3];
        assert_eq!(created.id, id1);
        assert_eq!(created.after, Some(json!({"name": "k1", "nested": {}})));
        assert_eq!(created.before, None);
        assert_eq!(created.address.as_deref(), Some("127.0.0.1"));
        assert_eq!(rows[1].before, Some(json!({"url": "http://x"})));
        assert_eq!(
            (
                rows[1].actor_kind.as_str(),
                rows[1].actor_id.as_str(),
                rows[1].actor_account.as_deref(),
                rows[1].address.as_deref()
            ),
            ("token", "tok_1", Some("globex"), None)
        );
        assert_eq!(rows[0].account, None);

        // Paging: the second page of two.
        let (page, total) = store.list_audit(&all, 2, 2).await.unwrap();
        assert_eq!(total, 4);
        assert_eq!(
            page.iter().map(|r| r.id).collect::<Vec<_>>(),
            [id2, id1],
            "{page:?}"
        );

        let count = |filter: AuditFilter| {
            let store = store.clone();
            async move { store.list_audit(&filter, 10, 0).await.unwrap().1 }
        };
        let action = |a: &str| AuditFilter {
            action: Some(a.into()),
            ..AuditFilter::default()
        };
        assert_eq!(count(action("key.")).await, 2);
        assert_eq!(count(action("key.create")).await, 1);
        assert_eq!(count(action("key")).await, 0, "exact unless a prefix");
        assert_eq!(count(action("webhook.rotate_*")).await, 1);
        assert_eq!(
            count(action("webhook.rotate%")).await,
            0,
            "no LIKE wildcard"
        );
        assert_eq!(count(action("KEY.")).await, 0, "case counts");
        let account = AuditFilter {
            account: Some("acme".into()),
            ..AuditFilter::default()
        };
        assert_eq!(count(account).await, 2);
        let actor = AuditFilter {
            actor_kind: Some("token".into()),
            actor_id: Some("tok_1".into()),
            ..AuditFilter::default()
        };
        assert_eq!(count(actor).await, 1);
        let target = AuditFilter {
            target: Some("k1".into()),
            action: Some("key.update".into()),
            ..AuditFilter::default()
        };
        assert_eq!(count(target).await, 1);
        let window = AuditFilter {
            from: Some(200),
            to: Some(400),
            ..AuditFilter::default()
        };
        assert_eq!(count(window).await, 2, "from inclusive, to exclusive");

        // Pruning takes what is older than the cutoff, nothing else.
        assert_eq!(store.prune_audit(300).await.unwrap(), 2);
        let (rows, total) = store.list_audit(&all, 10, 0).await.unwrap();
        assert_eq!(total, 2);
        assert!(rows.iter().all(|r| r.at >= 300), "{rows:?}");
        assert_eq!(store.prune_audit(300).await.unwrap(), 0);
    }
}
