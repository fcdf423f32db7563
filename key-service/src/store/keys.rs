//! Keys and their change log: create, read, list, edit, rotate, delete. A key's status
//! is computed here, in SQL, so that listing can filter and page on it. What the filter
//! is fed from this log is in `snapshot.rs`.

use std::fmt;
use std::str::FromStr;

use super::{key_changed, with_pool, BeginWrite, Get, Outbox, Store, StoreError};
use crate::alerts::event::{self, Kind};
use crate::budget::{Period, Window};
use crate::keys::caps::{self, StoredCap, Unit};
use serde::Serialize;
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Disabled,
    Expired,
    Exhausted,
}

impl KeyStatus {
    pub const ALL: [KeyStatus; 4] = [
        KeyStatus::Active,
        KeyStatus::Disabled,
        KeyStatus::Expired,
        KeyStatus::Exhausted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Disabled => "disabled",
            KeyStatus::Expired => "expired",
            KeyStatus::Exhausted => "exhausted",
        }
    }
}

impl fmt::Display for KeyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyStatus {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        KeyStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or(())
    }
}

/// A key about to be stored: the secret is already reduced to its hash and masked form.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: String,
    pub name: String,
    pub key_hash: String,
    pub masked_key: String,
    pub account: String,
    pub group: String,
    pub expires_at: Option<i64>,
    pub unlimited_quota: bool,
    pub quota: i64,
    pub models: Vec<String>,
    pub ip_allowlist: Vec<String>,
    /// The key's own rate limits (see `KeyRow`); `None` = none of its own.
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub max_parallel: Option<i64>,
    /// How often the quota starts afresh (`Total`: never).
    pub quota_period: Period,
    /// Limits per model, each starting its period now.
    pub model_caps: Vec<StoredCap>,
    /// When the secret should be rotated by (unix seconds); `None` = no date.
    pub rotate_by: Option<i64>,
}

/// A checked edit of a key: `None` leaves a field as it is. `expires_at` is
/// `Some(None)` to make the key never expire; `rpm`, `tpm` and `max_parallel` are
/// `Some(None)` to take the key's own limit away.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyEdit {
    pub name: Option<String>,
    pub group: Option<String>,
    pub expires_at: Option<Option<i64>>,
    pub quota: Option<i64>,
    pub unlimited_quota: Option<bool>,
    pub models: Option<Vec<String>>,
    pub ip_allowlist: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub rpm: Option<Option<i64>>,
    pub tpm: Option<Option<i64>>,
    pub max_parallel: Option<Option<i64>>,
    /// A new budget period: a different one than the key has starts a period now, with
    /// nothing used.
    pub quota_period: Option<Period>,
    /// New limits per model, replacing all the key has (see `caps::replace`).
    pub model_caps: Option<Vec<(String, Unit, i64, Period)>>,
    /// `Some(None)` clears the rotation date.
    pub rotate_by: Option<Option<i64>>,
}

/// A stored key as the management API shows it (never with its secret or hash).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRow {
    pub id: String,
    pub name: String,
    pub masked_key: String,
    pub account: String,
    pub group: String,
    pub status: KeyStatus,
    pub enabled: bool,
    pub expires_at: Option<i64>,
    pub unlimited_quota: bool,
    pub quota: i64,
    pub used_quota: i64,
    pub models: Vec<String>,
    pub ip_allowlist: Vec<String>,
    /// Requests per minute, tokens per minute and requests in flight at once the key may
    /// have; `None` = no limit of its own (its group's RPM and TPM may still apply, and
    /// the filter enforces the stricter).
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub max_parallel: Option<i64>,
    /// How often `used_quota` starts afresh, and the current period (`None` for `total`):
    /// `used_quota` is what it has used.
    pub quota_period: Period,
    pub period: Option<Window>,
    /// Limits per model, with what each has used in its stored period.
    pub model_caps: Vec<StoredCap>,
    /// When the secret should be rotated by (unix seconds); past it the key is listed by
    /// `rotation_due` and alerted on.
    pub rotate_by: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_used_at: Option<i64>,
}

/// Which keys to list; `None` fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFilter {
    pub status: Option<KeyStatus>,
    pub group: Option<String>,
    pub account: Option<String>,
    /// Case-insensitive (ASCII) substring of the name.
    pub name_contains: Option<String>,
    /// `true`: only keys whose `rotate_by` has passed; `false`: only the others.
    pub rotation_due: Option<bool>,
}

// The contract's definition of a key's status, with `$1` = now (unix seconds). Written as
// a macro so that `concat!` can build whole `&'static str` queries around it.
macro_rules! key_view {
    () => {
        "SELECT k.id, k.name, k.masked_key, k.account, k.group_name, k.enabled, \
                k.expires_at, k.unlimited_quota, k.quota, k.models, \
                k.ip_allowlist, k.rpm, k.tpm, k.max_parallel, k.created_at, k.updated_at, \
                k.last_used_at, k.rotate_by, k.quota_period, k.period_start, k.period_end, \
                k.model_caps, \
                CASE WHEN k.period_end <= $1 THEN 0 ELSE k.used_quota END AS used_quota, \
                CASE \
                    WHEN NOT k.enabled THEN 'disabled' \
                    WHEN k.expires_at IS NOT NULL AND k.expires_at <= $1 THEN 'expired' \
                    WHEN (NOT k.unlimited_quota AND k.used_quota >= k.quota \
                          AND (k.period_end IS NULL OR k.period_end > $1)) \
                        OR (a.balance IS NOT NULL AND a.balance <= 0) \
                        OR (a.spend_limit IS NOT NULL AND a.period_used >= a.spend_limit \
                            AND (a.period_end IS NULL OR a.period_end > $1)) THEN 'exhausted' \
                    ELSE 'active' \
                END AS status \
         FROM keys k JOIN accounts a ON a.name = k.account"
    };
}

// `$2`..`$6`: status, group, account, LIKE pattern for the name, whether the rotation
// date has passed (at `$1`); NULL = any.
macro_rules! key_filter {
    () => {
        " WHERE ($2 IS NULL OR v.status = $2) \
            AND ($3 IS NULL OR v.group_name = $3) \
            AND ($4 IS NULL OR v.account = $4) \
            AND ($5 IS NULL OR LOWER(v.name) LIKE LOWER($5) ESCAPE '\\') \
            AND ($6 IS NULL OR (v.rotate_by IS NOT NULL AND v.rotate_by <= $1) = $6)"
    };
}

const GET_KEY: &str = concat!("SELECT * FROM (", key_view!(), ") v WHERE v.id = $2");
const LIST_KEYS: &str = concat!(
    "SELECT * FROM (",
    key_view!(),
    ") v",
    key_filter!(),
    " ORDER BY v.created_at DESC, v.id LIMIT $7 OFFSET $8"
);
const COUNT_KEYS: &str = concat!("SELECT COUNT(*) FROM (", key_view!(), ") v", key_filter!());

/// One change-log row: key id, kind, time, the hash it takes out of service (or NULL).
const RECORD_CHANGE: &str =
    "INSERT INTO key_changes (key_id, kind, at, revoked_hash) VALUES ($1, $2, $3, $4)";
/// What `change_one` does to a key.
enum Change<'a> {
    Edit(&'a KeyEdit),
    Rotate {
        key_hash: &'a str,
        masked_key: &'a str,
        /// The next rotation date: a rotation meets the old one.
        rotate_by: Option<i64>,
    },
    Delete,
}

impl Change<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Change::Edit(_) => "updated",
            Change::Rotate { .. } => "rotated",
            Change::Delete => "deleted",
        }
    }
}

impl Store {
    /// Stores `keys` and one `created` change per key, all or none; none when that would
    /// take an account past its `max_keys` (checked under the write lock, so concurrent
    /// creates cannot both slip under the limit).
    pub async fn insert_keys(&self, keys: &[NewKey], now: i64) -> Result<(), StoreError> {
        self.insert_keys_within(keys, now, None).await
    }

    /// [`insert_keys`](Self::insert_keys), with `default_max` as the limit of an account
    /// that has no `max_keys` of its own (a tenant's creates are bounded even then).
    pub async fn insert_keys_within(
        &self,
        keys: &[NewKey],
        now: i64,
        default_max: Option<i64>,
    ) -> Result<(), StoreError> {
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let mut accounts: Vec<&str> = keys.iter().map(|k| k.account.as_str()).collect();
            accounts.sort_unstable();
            accounts.dedup();
            for account in accounts {
                let adding = keys.iter().filter(|k| k.account == account).count();
                let row = sqlx::query(
                    "SELECT max_keys, (SELECT COUNT(*) FROM keys WHERE account = $1) AS holds \
                     FROM accounts WHERE name = $1",
                )
                .bind(account)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else { continue };
                if let Some(max) = row.opt_int("max_keys")?.or(default_max) {
                    let holds = row.int("holds")?;
                    let after = holds.saturating_add(i64::try_from(adding).unwrap_or(i64::MAX));
                    if after > max {
                        return Err(StoreError::KeyLimit {
                            account: account.to_owned(),
                            max,
                            holds,
                        });
                    }
                }
            }
            for key in keys {
                let window = self.window(key.quota_period, now, now);
                sqlx::query(
                    "INSERT INTO keys (id, name, key_hash, masked_key, account, group_name, \
                         enabled, expires_at, unlimited_quota, quota, used_quota, models, \
                         ip_allowlist, created_at, updated_at, last_used_at, rpm, tpm, \
                         max_parallel, rotate_by, quota_period, period_start, period_end, \
                         model_caps) \
                     VALUES ($1, $2, $3, $4, $5, $6, TRUE, $7, $8, $9, 0, $10, $11, $12, $12, \
                         NULL, $13, $14, $15, $16, $17, $18, $19, $20)",
                )
                .bind(&key.id)
                .bind(&key.name)
                .bind(&key.key_hash)
                .bind(&key.masked_key)
                .bind(&key.account)
                .bind(&key.group)
                .bind(key.expires_at)
                .bind(key.unlimited_quota)
                .bind(key.quota)
                .bind(json_list(&key.models))
                .bind(json_list(&key.ip_allowlist))
                .bind(now)
                .bind(key.rpm)
                .bind(key.tpm)
                .bind(key.max_parallel)
                .bind(key.rotate_by)
                .bind(key.quota_period.to_string())
                .bind(window.map(|w| w.start))
                .bind(window.map(|w| w.end))
                .bind(caps::to_json(&key.model_caps))
                .execute(&mut *tx)
                .await?;
                sqlx::query(RECORD_CHANGE)
                    .bind(&key.id)
                    .bind("created")
                    .bind(now)
                    .bind(None::<&str>)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn get_key(&self, id: &str, now: i64) -> Result<Option<KeyRow>, StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(GET_KEY)
                .bind(now)
                .bind(id)
                .fetch_optional(pool)
                .await?
                .as_ref()
                .map(|row| Ok(self.as_of(key_row(row)?, now)))
                .transpose()
        })
    }

    /// One page of the keys matching `filter`, newest first, and how many match in all.
    pub async fn list_keys(
        &self,
        filter: &KeyFilter,
        limit: u32,
        offset: u64,
        now: i64,
    ) -> Result<(Vec<KeyRow>, u64), StoreError> {
        let status = filter.status.map(KeyStatus::as_str);
        let pattern = filter.name_contains.as_deref().map(like_pattern);
        with_pool!(self, |pool| {
            let total: i64 = sqlx::query_scalar(COUNT_KEYS)
                .bind(now)
                .bind(status)
                .bind(filter.group.as_deref())
                .bind(filter.account.as_deref())
                .bind(pattern.as_deref())
                .bind(filter.rotation_due)
                .fetch_one(pool)
                .await?;
            let rows = sqlx::query(LIST_KEYS)
                .bind(now)
                .bind(status)
                .bind(filter.group.as_deref())
                .bind(filter.account.as_deref())
                .bind(pattern.as_deref())
                .bind(filter.rotation_due)
                .bind(i64::from(limit))
                .bind(i64::try_from(offset).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await?;
            let keys = rows
                .iter()
                .map(|row| Ok(self.as_of(key_row(row)?, now)))
                .collect::<Result<_, StoreError>>()?;
            Ok((keys, u64::try_from(total).unwrap_or(0)))
        })
    }

    /// Applies an edit to a key; `false` when there is no such key.
    pub async fn update_key(&self, id: &str, edit: &KeyEdit, now: i64) -> Result<bool, StoreError> {
        self.change_one(id, Change::Edit(edit), now, Revokes::Nothing)
            .await
    }

    /// Gives a key a new secret (its hash and masked form); `false` when there is no such
    /// key. The old secret stops working with the next snapshot, or, with `grace_until`,
    /// at that time (unix seconds). Its rotation date is cleared: the rotation is done.
    pub async fn rotate_key(
        &self,
        id: &str,
        key_hash: &str,
        masked_key: &str,
        now: i64,
        grace_until: Option<i64>,
    ) -> Result<bool, StoreError> {
        self.rotate_key_due(id, key_hash, masked_key, now, grace_until, None)
            .await
    }

    /// As `rotate_key`, and the key's next rotation date becomes `rotate_by`.
    pub async fn rotate_key_due(
        &self,
        id: &str,
        key_hash: &str,
        masked_key: &str,
        now: i64,
        grace_until: Option<i64>,
        rotate_by: Option<i64>,
    ) -> Result<bool, StoreError> {
        let revokes = match grace_until {
            Some(until) => Revokes::OldHashAt(until),
            None => Revokes::OldHash,
        };
        let change = Change::Rotate {
            key_hash,
            masked_key,
            rotate_by,
        };
        self.change_one(id, change, now, revokes).await
    }

    /// Deletes a key; `false` when there is no such key. Its change-log rows stay.
    pub async fn delete_key(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        self.change_one(id, Change::Delete, now, Revokes::Every)
            .await
    }

    /// Enables or disables a key; `false` when there is no such key.
    pub async fn set_enabled(&self, id: &str, enabled: bool, now: i64) -> Result<bool, StoreError> {
        let edit = KeyEdit {
            enabled: Some(enabled),
            ..KeyEdit::default()
        };
        self.update_key(id, &edit, now).await
    }

    /// Changes the key `id` and, if there is one, records the change in the same
    /// transaction (with the hash it took out of service, if it does); `false` when there
    /// is no such key.
    async fn change_one(
        &self,
        id: &str,
        change: Change<'_>,
        now: i64,
        revokes: Revokes,
    ) -> Result<bool, StoreError> {
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            // The log row first: it reads the hash being revoked before the change can
            // replace it. No row: no such key.
            let logged = sqlx::query(
                "INSERT INTO key_changes (key_id, kind, at, revoked_hash) \
                 SELECT id, $2, $3, CASE WHEN $4 THEN key_hash END FROM keys WHERE id = $1",
            )
            .bind(id)
            .bind(change.kind())
            .bind(now)
            .bind(matches!(revokes, Revokes::OldHash | Revokes::Every))
            .execute(&mut *tx)
            .await?;
            if logged.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            match revokes {
                Revokes::OldHashAt(until) => {
                    sqlx::query(
                        "INSERT INTO grace_secrets (key_hash, key_id, until) \
                         SELECT key_hash, id, $2 FROM keys WHERE id = $1",
                    )
                    .bind(id)
                    .bind(until)
                    .execute(&mut *tx)
                    .await?;
                }
                Revokes::Every => {
                    // Old secrets still in their grace period go with the key.
                    sqlx::query(
                        "INSERT INTO key_changes (key_id, kind, at, revoked_hash) \
                         SELECT key_id, $2, $3, key_hash FROM grace_secrets WHERE key_id = $1",
                    )
                    .bind(id)
                    .bind(change.kind())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("DELETE FROM grace_secrets WHERE key_id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                Revokes::Nothing | Revokes::OldHash => {}
            }
            // A new period starts now (a span's windows follow on from now).
            let new_window = match &change {
                Change::Edit(edit) => edit.quota_period.and_then(|p| self.window(p, now, now)),
                _ => None,
            };
            // Alerts about the change go in its transaction (the outbox): the key as it
            // was before it, when the change is one that alerts.
            let alert = match &change {
                Change::Edit(edit) if edit.enabled == Some(false) => tx
                    .key_facts(id)
                    .await?
                    .filter(|key| key.enabled)
                    .map(|key| (Kind::KeyDisabled, key.subject, json!({}))),
                Change::Rotate { .. } => tx.key_facts(id).await?.map(|key| {
                    let grace = revokes.grace_until().map(event::time);
                    (Kind::KeyRotated, key.subject, json!({"grace_until": grace}))
                }),
                _ => None,
            };
            // New caps keep what unchanged ones used: read under the write lock.
            let new_caps = match &change {
                Change::Edit(KeyEdit {
                    model_caps: Some(asked),
                    ..
                }) => {
                    let old: Option<String> =
                        sqlx::query_scalar("SELECT model_caps FROM keys WHERE id = $1")
                            .bind(id)
                            .fetch_optional(&mut *tx)
                            .await?;
                    let old = caps::parse(old.as_deref().unwrap_or("[]"));
                    let caps = caps::replace(&old, asked.clone(), |p| self.window(p, now, now));
                    Some(caps::to_json(&caps))
                }
                _ => None,
            };
            let statement = match change {
                // COALESCE keeps a column whose new value was not given; `expires_at` and
                // the rate limits have their own flags since NULL (never expires, no
                // limit) is a value one can set.
                Change::Edit(edit) => sqlx::query(
                    "UPDATE keys SET name = COALESCE($2, name), \
                         group_name = COALESCE($3, group_name), \
                         expires_at = CASE WHEN $4 THEN $5 ELSE expires_at END, \
                         quota = COALESCE($6, quota), \
                         unlimited_quota = COALESCE($7, unlimited_quota), \
                         models = COALESCE($8, models), \
                         ip_allowlist = COALESCE($9, ip_allowlist), \
                         enabled = COALESCE($10, enabled), updated_at = $11, \
                         rpm = CASE WHEN $12 THEN $13 ELSE rpm END, \
                         tpm = CASE WHEN $14 THEN $15 ELSE tpm END, \
                         max_parallel = CASE WHEN $16 THEN $17 ELSE max_parallel END, \
                         rotate_by = CASE WHEN $18 THEN $19 ELSE rotate_by END, \
                         used_quota = CASE WHEN $20 <> quota_period THEN 0 ELSE used_quota END, \
                         period_start = CASE WHEN $20 <> quota_period THEN $21 \
                             ELSE period_start END, \
                         period_end = CASE WHEN $20 <> quota_period THEN $22 ELSE period_end END, \
                         quota_period = COALESCE($20, quota_period), \
                         model_caps = COALESCE($23, model_caps) \
                     WHERE id = $1",
                )
                .bind(id)
                .bind(edit.name.as_deref())
                .bind(edit.group.as_deref())
                .bind(edit.expires_at.is_some())
                .bind(edit.expires_at.flatten())
                .bind(edit.quota)
                .bind(edit.unlimited_quota)
                .bind(edit.models.as_deref().map(json_list))
                .bind(edit.ip_allowlist.as_deref().map(json_list))
                .bind(edit.enabled)
                .bind(now)
                .bind(edit.rpm.is_some())
                .bind(edit.rpm.flatten())
                .bind(edit.tpm.is_some())
                .bind(edit.tpm.flatten())
                .bind(edit.max_parallel.is_some())
                .bind(edit.max_parallel.flatten())
                .bind(edit.rotate_by.is_some())
                .bind(edit.rotate_by.flatten())
                .bind(edit.quota_period.map(|p| p.to_string()))
                .bind(new_window.map(|w| w.start))
                .bind(new_window.map(|w| w.end))
                .bind(new_caps),
                Change::Rotate {
                    key_hash,
                    masked_key,
                    rotate_by,
                } => sqlx::query(
                    "UPDATE keys SET key_hash = $2, masked_key = $3, updated_at = $4, \
                         rotate_by = $5 \
                     WHERE id = $1",
                )
                .bind(id)
                .bind(key_hash)
                .bind(masked_key)
                .bind(now)
                .bind(rotate_by),
                Change::Delete => sqlx::query("DELETE FROM keys WHERE id = $1").bind(id),
            };
            if statement.execute(&mut *tx).await?.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            if let Some((kind, subject, details)) = alert {
                key_changed(&mut tx, kind, &subject, details, now).await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }
}

impl Store {
    /// The row as it stands at `now`: a period that has ended is shown as the one holding
    /// `now` (the SQL already counts nothing used in it), rolled over or not yet.
    fn as_of(&self, mut row: KeyRow, now: i64) -> KeyRow {
        if let Some(old) = row.period.filter(|w| w.end <= now) {
            row.period = self.window(row.quota_period, old.start, now).or(Some(old));
        }
        row
    }

    /// How many keys have each status (the contract's definition) at `now`.
    pub async fn count_keys_by_status(&self, now: i64) -> Result<Vec<(String, i64)>, StoreError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(concat!(
                "SELECT v.status AS status, COUNT(*) AS n FROM (",
                key_view!(),
                ") v GROUP BY v.status ORDER BY v.status"
            ))
            .bind(now)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| Ok((row.text("status")?, row.int("n")?)))
                .collect()
        })
    }
}

impl Revokes {
    /// When the old secret stops, if it has a grace period.
    fn grace_until(self) -> Option<i64> {
        match self {
            Revokes::OldHashAt(until) => Some(until),
            _ => None,
        }
    }
}

/// Which of the key's hashes a change takes out of service.
#[derive(Clone, Copy)]
enum Revokes {
    Nothing,
    /// The current one, now (rotation).
    OldHash,
    /// The current one, at this unix second (rotation with a grace period).
    OldHashAt(i64),
    /// The current one and any still in a grace period (deletion).
    Every,
}

fn key_row(row: &impl Get) -> Result<KeyRow, StoreError> {
    let id = row.text("id")?;
    let status = row.text("status")?;
    let status = status.parse().map_err(|()| StoreError::Corrupt {
        id: id.clone(),
        column: "status",
        detail: status,
    })?;
    let models = parse_list(&id, "models", row.text("models")?)?;
    let ip_allowlist = parse_list(&id, "ip_allowlist", row.text("ip_allowlist")?)?;
    Ok(KeyRow {
        name: row.text("name")?,
        masked_key: row.text("masked_key")?,
        account: row.text("account")?,
        group: row.text("group_name")?,
        status,
        enabled: row.flag("enabled")?,
        expires_at: row.opt_int("expires_at")?,
        unlimited_quota: row.flag("unlimited_quota")?,
        quota: row.int("quota")?,
        used_quota: row.int("used_quota")?,
        models,
        ip_allowlist,
        rpm: row.opt_int("rpm")?,
        tpm: row.opt_int("tpm")?,
        max_parallel: row.opt_int("max_parallel")?,
        quota_period: period_of(&id, row.text("quota_period")?)?,
        model_caps: caps::parse(&row.text("model_caps")?),
        period: window_of(row)?,
        rotate_by: row.opt_int("rotate_by")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
        last_used_at: row.opt_int("last_used_at")?,
        id,
    })
}

/// A stored period, read back.
pub(super) fn period_of(id: &str, text: String) -> Result<Period, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt {
        id: id.to_owned(),
        column: "quota_period",
        detail: text,
    })
}

/// The stored period window of a row (`period_start`, `period_end`), if it has one.
pub(super) fn window_of(row: &impl Get) -> Result<Option<Window>, StoreError> {
    Ok(row
        .opt_int("period_start")?
        .zip(row.opt_int("period_end")?)
        .map(|(start, end)| Window { start, end }))
}

fn json_list(items: &[String]) -> String {
    serde_json::Value::from(items.to_vec()).to_string()
}

pub(super) fn parse_list(
    id: &str,
    column: &'static str,
    text: String,
) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
        id: id.to_owned(),
        column,
        detail: e.to_string(),
    })
}

/// `%text%` with LIKE's wildcards in `text` escaped (escape character `\`).
fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn like_wildcards_in_a_search_are_literal() {
        assert_eq!(like_pattern("a%b_c\\d"), "%a\\%b\\_c\\\\d%");
        assert_eq!(like_pattern(""), "%%");
    }

    #[test]
    fn statuses_parse_from_their_names() {
        for status in KeyStatus::ALL {
            assert_eq!(status.as_str().parse(), Ok(status));
        }
        assert_eq!("Active".parse::<KeyStatus>(), Err(()));
    }

    pub(in crate::store) fn new_key(id: &str, name: &str) -> NewKey {
        NewKey {
            id: id.into(),
            name: name.into(),
            key_hash: format!("{id:0>64}"),
            masked_key: "sk-abcd...wxyz".into(),
            account: "default".into(),
            group: "default".into(),
            expires_at: None,
            unlimited_quota: true,
            quota: 0,
            models: vec!["gpt-4o".into()],
            ip_allowlist: vec![],
            rpm: None,
            tpm: None,
            max_parallel: None,
            quota_period: Period::Total,
            model_caps: vec![],
            rotate_by: None,
        }
    }

    #[tokio::test]
    async fn a_failed_batch_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path()).await.unwrap();
        let mut bad = new_key("b", "two");
        bad.account = "no-such-account".into();
        let err = store
            .insert_keys(&[new_key("a", "one"), bad], 100)
            .await
            .unwrap_err();
        assert!(err.is_foreign_key_violation(), "{err}");
        assert!(store.get_key("a", 100).await.unwrap().is_none());
        assert_eq!(store.snapshot_version().await.unwrap(), 0);
    }
}
