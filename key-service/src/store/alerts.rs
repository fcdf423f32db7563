//! Alerts' storage: webhooks, the outbox of events, one delivery row per event and
//! webhook, and the marks that make a threshold fire once per budget period.
//!
//! An event is written in the same transaction as the change it tells of (a bill, a key
//! disabled or rotated), through [`Outbox`], so a committed change always has its alert
//! and a rolled-back one never does. Deliveries are claimed by one replica at a time
//! with a guarded UPDATE (`claim_deliveries`), so replicas sharing a database do not send
//! the same delivery at once.

use serde_json::{json, Map, Value};
use sqlx::{Postgres, Sqlite, Transaction};

use super::keys::parse_list;
use super::{with_pool, BeginWrite, Get, Store, StoreError};
use crate::alerts::event::{self, Kind, NewEvent, Subject};
use crate::alerts::threshold::{self, Thresholds};

/// A webhook as stored, without its secret.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookRow {
    pub id: String,
    /// `None`: a global webhook (every event).
    pub account: Option<String>,
    pub url: String,
    /// Event types it takes; empty = all.
    pub events: Vec<String>,
    pub enabled: bool,
    pub created_at: i64,
    /// Made by a tenant: delivered to public addresses only.
    pub public_only: bool,
}

/// A webhook about to be stored, with the secret its deliveries are signed with.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub id: String,
    pub account: Option<String>,
    pub url: String,
    pub secret: String,
    pub events: Vec<String>,
    pub enabled: bool,
    pub public_only: bool,
}

/// A checked edit of a webhook; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WebhookEdit {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

/// One delivery of an event to a webhook, as the delivery log shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRow {
    pub event_id: String,
    pub event_type: String,
    pub webhook_id: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: i64,
    /// Unix ms.
    pub created_ms: i64,
    pub next_attempt_ms: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    /// Unix seconds.
    pub delivered_at: Option<i64>,
    pub payload: String,
}

/// A delivery this replica holds until `locked_until_ms`, with what sending it needs.
#[derive(Clone)]
pub struct Claimed {
    pub event_id: String,
    pub event_type: String,
    pub webhook_id: String,
    pub url: String,
    /// The webhook's signing secret: never logged (see the `Debug` below).
    pub secret: String,
    pub payload: String,
    /// The webhook is delivered to public addresses only.
    pub public_only: bool,
    pub attempts: i64,
    pub created_ms: i64,
    pub locked_until_ms: i64,
}

impl std::fmt::Debug for Claimed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claimed")
            .field("event_id", &self.event_id)
            .field("webhook_id", &self.webhook_id)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// How an attempt ended, for `finish_delivery`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    Delivered {
        status: u16,
        at: i64,
    },
    /// Tried again at `next_attempt_ms`, or given up (`None`).
    Failed {
        status: Option<u16>,
        error: String,
        next_attempt_ms: Option<i64>,
    },
}

/// Delivery states, as stored and filtered on.
pub const DELIVERY_STATUSES: [&str; 3] = ["pending", "delivered", "failed"];

/// A spend against a budget: what was used before it and after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spend {
    pub budget: i64,
    pub before: i64,
    pub after: i64,
}

/// A key as alerts name it, and its lifetime budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyFacts {
    pub subject: Subject,
    pub enabled: bool,
    /// `None` for an unlimited key.
    pub quota: Option<i64>,
    pub used: i64,
}

/// What alerts write inside a transaction the caller holds; one implementation per
/// engine's transaction, written once (`impl_outbox!`).
pub(crate) trait Outbox {
    /// Stores `event` and a pending delivery for each enabled webhook that takes it: of
    /// its account, or global, and listening to its type. With `only`, for that webhook
    /// alone (a test). Returns how many deliveries were queued.
    async fn write_event(
        &mut self,
        event: &NewEvent,
        only: Option<&str>,
    ) -> Result<u64, sqlx::Error>;
    /// Records that `subject` crossed `threshold` of `kind` in the period starting at
    /// `period_start`; `false` when that was recorded before (the alert is not repeated).
    async fn mark(
        &mut self,
        subject: &str,
        kind: Kind,
        threshold: i64,
        period_start: i64,
        now: i64,
    ) -> Result<bool, sqlx::Error>;
    /// The key `id`, if it exists.
    async fn key_facts(&mut self, id: &str) -> Result<Option<KeyFacts>, sqlx::Error>;
    /// The account's balance; `None` when unlimited or there is no such account.
    async fn balance(&mut self, account: &str) -> Result<Option<i64>, sqlx::Error>;
}

/// The pending deliveries an event makes: `$1` event id, `$2` unix ms, `$3` the one
/// webhook (a test) or NULL, `$4` the event's account, `$5` LIKE pattern of its type in a
/// webhook's JSON list of types.
const QUEUE_DELIVERIES: &str =
    "INSERT INTO alert_deliveries (event_id, webhook_id, created_ms, next_attempt_ms) \
     SELECT $1, id, $2, $2 FROM webhooks \
     WHERE enabled AND (id = $3 OR ($3 IS NULL \
         AND (account IS NULL OR account = $4) \
         AND (events = '[]' OR events LIKE $5)))";

macro_rules! impl_outbox {
    ($db:ty) => {
        impl Outbox for Transaction<'_, $db> {
            async fn write_event(
                &mut self,
                event: &NewEvent,
                only: Option<&str>,
            ) -> Result<u64, sqlx::Error> {
                sqlx::query(
                    "INSERT INTO alert_events (id, kind, subject, account, payload, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&event.id)
                .bind(event.kind.as_str())
                .bind(&event.subject)
                .bind(event.account.as_deref())
                .bind(&event.payload)
                .bind(event.created_at)
                .execute(&mut **self)
                .await?;
                let queued = sqlx::query(QUEUE_DELIVERIES)
                    .bind(&event.id)
                    .bind(event.created_at.saturating_mul(1000))
                    .bind(only)
                    .bind(event.account.as_deref())
                    .bind(format!("%\"{}\"%", event.kind.as_str()))
                    .execute(&mut **self)
                    .await?;
                Ok(queued.rows_affected())
            }

            async fn mark(
                &mut self,
                subject: &str,
                kind: Kind,
                threshold: i64,
                period_start: i64,
                now: i64,
            ) -> Result<bool, sqlx::Error> {
                let marked = sqlx::query(
                    "INSERT INTO alert_marks (subject, kind, threshold, period_start, at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                )
                .bind(subject)
                .bind(kind.as_str())
                .bind(threshold)
                .bind(period_start)
                .bind(now)
                .execute(&mut **self)
                .await?;
                Ok(marked.rows_affected() > 0)
            }

            async fn key_facts(&mut self, id: &str) -> Result<Option<KeyFacts>, sqlx::Error> {
                let row = sqlx::query(
                    "SELECT name, account, enabled, unlimited_quota, quota, used_quota \
                     FROM keys WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&mut **self)
                .await?;
                let Some(row) = row else { return Ok(None) };
                Ok(Some(KeyFacts {
                    subject: Subject::Key {
                        id: id.to_owned(),
                        name: row.text("name")?,
                        account: row.text("account")?,
                    },
                    enabled: row.flag("enabled")?,
                    quota: (!row.flag("unlimited_quota")?)
                        .then(|| row.int("quota"))
                        .transpose()?,
                    used: row.int("used_quota")?,
                }))
            }

            async fn balance(&mut self, account: &str) -> Result<Option<i64>, sqlx::Error> {
                let row = sqlx::query("SELECT balance FROM accounts WHERE name = $1")
                    .bind(account)
                    .fetch_optional(&mut **self)
                    .await?;
                Ok(match row {
                    Some(row) => row.opt_int("balance")?,
                    None => None,
                })
            }
        }
    };
}
impl_outbox!(Sqlite);
impl_outbox!(Postgres);

fn event(kind: Kind, subject: &Subject, details: Value, now: i64) -> Result<NewEvent, StoreError> {
    let details = match details {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    NewEvent::new(kind, subject, details, now).map_err(StoreError::Random)
}

/// The one place a budget crossing is recorded: `spend` moved a key's (or an account's)
/// use of its budget for the period starting at `period_start` (unix seconds; 0 = a
/// budget for the whole life), and each configured threshold it crossed that was not
/// marked for this period yet gets a `key.threshold` / `account.threshold` event, and
/// using the budget up a `key.exhausted` / `account.exhausted` one. Call it inside the
/// transaction that billed the spend, so the alert commits with the bill.
pub(crate) async fn budget_crossed<T: Outbox>(
    tx: &mut T,
    subject: &Subject,
    spend: Spend,
    period_start: i64,
    thresholds: &Thresholds,
    now: i64,
) -> Result<(), StoreError> {
    let (crossing, exhaustion) = match subject {
        Subject::Key { .. } => (Kind::KeyThreshold, Kind::KeyExhausted),
        Subject::Account { .. } => (Kind::AccountThreshold, Kind::AccountExhausted),
        Subject::Cap { .. } => (Kind::CapThreshold, Kind::CapExhausted),
        Subject::Webhook { .. } => return Ok(()),
    };
    let mark = subject.mark();
    let details = |threshold: Option<u16>| {
        let mut details = json!({
            "budget": spend.budget,
            "used": spend.after,
            "period_start": (period_start != 0).then(|| event::time(period_start)),
        });
        if let Some(t) = threshold {
            details["threshold"] = json!(t);
        }
        if let Subject::Cap { model, unit, .. } = subject {
            details["model"] = json!(model);
            details["unit"] = json!(unit);
        }
        details
    };
    for t in thresholds.crossed(spend.budget, spend.before, spend.after) {
        if tx
            .mark(&mark, crossing, i64::from(t), period_start, now)
            .await?
        {
            tx.write_event(&event(crossing, subject, details(Some(t)), now)?, None)
                .await?;
        }
    }
    if threshold::exhausted(spend.budget, spend.before, spend.after)
        && tx.mark(&mark, exhaustion, 100, period_start, now).await?
    {
        tx.write_event(&event(exhaustion, subject, details(None), now)?, None)
            .await?;
    }
    Ok(())
}

/// An account's balance went from `before` to `after` (credits left): reaching 0 from
/// above is an `account.exhausted` event. The transition is its own dedupe: a balance
/// topped up and spent again alerts again. (A period limit on accounts goes through
/// [`budget_crossed`] with `Subject::Account`, like a key's budget.)
pub(crate) async fn balance_spent<T: Outbox>(
    tx: &mut T,
    account: &str,
    before: i64,
    after: i64,
    now: i64,
) -> Result<(), StoreError> {
    if before > 0 && after <= 0 {
        let subject = Subject::Account {
            name: account.to_owned(),
        };
        let details = json!({"balance": after});
        tx.write_event(
            &event(Kind::AccountExhausted, &subject, details, now)?,
            None,
        )
        .await?;
    }
    Ok(())
}

/// A key was disabled or rotated: its event, in the transaction of the change.
pub(crate) async fn key_changed<T: Outbox>(
    tx: &mut T,
    kind: Kind,
    subject: &Subject,
    details: Value,
    now: i64,
) -> Result<(), StoreError> {
    tx.write_event(&event(kind, subject, details, now)?, None)
        .await?;
    Ok(())
}

fn webhook_row(row: &impl Get) -> Result<WebhookRow, StoreError> {
    let id = row.text("id")?;
    Ok(WebhookRow {
        events: parse_list(&id, "events", row.text("events")?)?,
        account: row.opt_text("account")?,
        url: row.text("url")?,
        enabled: row.flag("enabled")?,
        created_at: row.int("created_at")?,
        public_only: row.flag("public_only")?,
        id,
    })
}

fn delivery_row(row: &impl Get) -> Result<DeliveryRow, sqlx::Error> {
    Ok(DeliveryRow {
        event_id: row.text("event_id")?,
        event_type: row.text("kind")?,
        webhook_id: row.text("webhook_id")?,
        status: row.text("status")?,
        attempts: row.int("attempts")?,
        created_ms: row.int("created_ms")?,
        next_attempt_ms: row.int("next_attempt_ms")?,
        last_status: row.opt_int("last_status")?,
        last_error: row.opt_text("last_error")?,
        delivered_at: row.opt_int("delivered_at")?,
        payload: row.text("payload")?,
    })
}

fn json_list(items: &[String]) -> String {
    Value::from(items.to_vec()).to_string()
}

const WEBHOOK_COLUMNS: &str = "id, account, url, events, enabled, created_at, public_only";

impl Store {
    pub async fn insert_webhook(&self, webhook: &NewWebhook, now: i64) -> Result<(), StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO webhooks (id, account, url, secret, events, enabled, created_at, \
                 public_only) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&webhook.id)
            .bind(webhook.account.as_deref())
            .bind(&webhook.url)
            .bind(&webhook.secret)
            .bind(json_list(&webhook.events))
            .bind(webhook.enabled)
            .bind(now)
            .bind(webhook.public_only)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Every webhook (of `account`, when given: its own, not the global ones), oldest
    /// first.
    pub async fn list_webhooks(
        &self,
        account: Option<&str>,
    ) -> Result<Vec<WebhookRow>, StoreError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE ($1 IS NULL OR account = $1) \
                 ORDER BY created_at, id"
            )))
            .bind(account)
            .fetch_all(pool)
            .await?;
            rows.iter().map(webhook_row).collect()
        })
    }

    pub async fn get_webhook(&self, id: &str) -> Result<Option<WebhookRow>, StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1"
            )))
            .bind(id)
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(webhook_row)
            .transpose()
        })
    }

    /// Applies an edit; `false` when there is no such webhook.
    pub async fn update_webhook(&self, id: &str, edit: &WebhookEdit) -> Result<bool, StoreError> {
        with_pool!(self, |pool| {
            let done = sqlx::query(
                "UPDATE webhooks SET url = COALESCE($2, url), events = COALESCE($3, events), \
                     enabled = COALESCE($4, enabled) WHERE id = $1",
            )
            .bind(id)
            .bind(edit.url.as_deref())
            .bind(edit.events.as_deref().map(json_list))
            .bind(edit.enabled)
            .execute(pool)
            .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// Replaces the signing secret; `false` when there is no such webhook. Deliveries
    /// still pending are signed with the new one.
    pub async fn set_webhook_secret(&self, id: &str, secret: &str) -> Result<bool, StoreError> {
        with_pool!(self, |pool| {
            let done = sqlx::query("UPDATE webhooks SET secret = $2 WHERE id = $1")
                .bind(id)
                .bind(secret)
                .execute(pool)
                .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// Deletes a webhook and its deliveries; `false` when there is no such webhook.
    pub async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM alert_deliveries WHERE webhook_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let done = sqlx::query("DELETE FROM webhooks WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// Queues a `test` event for the webhook `id` alone; `None` when there is no such
    /// webhook (or it is disabled), else the event's id.
    pub async fn test_webhook(&self, id: &str, now: i64) -> Result<Option<String>, StoreError> {
        let subject = Subject::Webhook { id: id.to_owned() };
        let details = json!({"message": "a test event from keygate"});
        let event = event(Kind::Test, &subject, details, now)?;
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            if tx.write_event(&event, Some(id)).await? == 0 {
                tx.rollback().await?;
                return Ok(None);
            }
            tx.commit().await?;
            Ok(Some(event.id))
        })
    }

    /// One page of a webhook's deliveries, newest first, with `status` if given, and how
    /// many match in all.
    pub async fn list_deliveries(
        &self,
        webhook_id: &str,
        status: Option<&str>,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<DeliveryRow>, u64), StoreError> {
        const WHERE: &str = "WHERE d.webhook_id = $1 AND ($2 IS NULL OR d.status = $2)";
        with_pool!(self, |pool| {
            let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM alert_deliveries d {WHERE}"
            )))
            .bind(webhook_id)
            .bind(status)
            .fetch_one(pool)
            .await?;
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT d.*, e.kind, e.payload FROM alert_deliveries d \
                 JOIN alert_events e ON e.id = d.event_id {WHERE} \
                 ORDER BY d.created_ms DESC, d.event_id LIMIT $3 OFFSET $4"
            )))
            .bind(webhook_id)
            .bind(status)
            .bind(i64::from(limit))
            .bind(i64::try_from(offset).unwrap_or(i64::MAX))
            .fetch_all(pool)
            .await?;
            let rows = rows.iter().map(delivery_row).collect::<Result<_, _>>()?;
            Ok((rows, u64::try_from(total).unwrap_or(0)))
        })
    }

    /// Takes up to `limit` pending deliveries that are due at `now_ms` and that no other
    /// replica holds, each until `lock_until_ms`. A delivery is taken by an UPDATE guarded
    /// by the lock it was read with: of two replicas reading it at once, one changes the
    /// row and the other finds it changed and leaves it.
    pub async fn claim_deliveries(
        &self,
        now_ms: i64,
        lock_until_ms: i64,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT d.event_id, d.webhook_id, d.attempts, d.created_ms, d.locked_until_ms, \
                     w.url, w.secret, w.public_only, e.payload, e.kind \
                 FROM alert_deliveries d \
                 JOIN webhooks w ON w.id = d.webhook_id \
                 JOIN alert_events e ON e.id = d.event_id \
                 WHERE d.status = 'pending' AND d.next_attempt_ms <= $1 \
                     AND d.locked_until_ms <= $1 AND w.enabled \
                 ORDER BY d.next_attempt_ms LIMIT $2",
            )
            .bind(now_ms)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            let mut claimed = Vec::with_capacity(rows.len());
            for row in &rows {
                let mut delivery = Claimed {
                    event_id: row.text("event_id")?,
                    event_type: row.text("kind")?,
                    webhook_id: row.text("webhook_id")?,
                    url: row.text("url")?,
                    secret: row.text("secret")?,
                    public_only: row.flag("public_only")?,
                    payload: row.text("payload")?,
                    attempts: row.int("attempts")?,
                    created_ms: row.int("created_ms")?,
                    locked_until_ms: row.int("locked_until_ms")?,
                };
                let taken = sqlx::query(
                    "UPDATE alert_deliveries SET locked_until_ms = $3 \
                     WHERE event_id = $1 AND webhook_id = $2 AND status = 'pending' \
                         AND locked_until_ms = $4 AND attempts = $5",
                )
                .bind(&delivery.event_id)
                .bind(&delivery.webhook_id)
                .bind(lock_until_ms)
                .bind(delivery.locked_until_ms)
                .bind(delivery.attempts)
                .execute(pool)
                .await?;
                if taken.rows_affected() == 1 {
                    delivery.locked_until_ms = lock_until_ms;
                    claimed.push(delivery);
                }
            }
            Ok(claimed)
        })
    }

    /// Records how an attempt at a claimed delivery ended; `false` when the claim had
    /// lapsed and another replica took the delivery meanwhile (its record stands).
    pub async fn finish_delivery(
        &self,
        claimed: &Claimed,
        finish: &Finish,
    ) -> Result<bool, StoreError> {
        let attempts = claimed.attempts.saturating_add(1);
        let (status, http, error, next, delivered_at) = match finish {
            Finish::Delivered { status, at } => (
                "delivered",
                Some(i64::from(*status)),
                None,
                claimed.locked_until_ms,
                Some(*at),
            ),
            Finish::Failed {
                status,
                error,
                next_attempt_ms,
            } => (
                if next_attempt_ms.is_some() {
                    "pending"
                } else {
                    "failed"
                },
                status.map(i64::from),
                Some(error.as_str()),
                next_attempt_ms.unwrap_or(claimed.locked_until_ms),
                None,
            ),
        };
        with_pool!(self, |pool| {
            let done = sqlx::query(
                "UPDATE alert_deliveries SET status = $3, attempts = $4, last_status = $5, \
                     last_error = $6, next_attempt_ms = $7, delivered_at = $8, \
                     locked_until_ms = 0 \
                 WHERE event_id = $1 AND webhook_id = $2 AND locked_until_ms = $9 \
                     AND status = 'pending'",
            )
            .bind(&claimed.event_id)
            .bind(&claimed.webhook_id)
            .bind(status)
            .bind(attempts)
            .bind(http)
            .bind(error)
            .bind(next)
            .bind(delivered_at)
            .bind(claimed.locked_until_ms)
            .execute(pool)
            .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// Writes the reminders due at `now`: `key.expiring` for enabled keys that expire
    /// within `expiring_within` seconds, `key.rotation_due` for those past their
    /// `rotate_by`; each once per key and date (a new date reminds again). At most
    /// `limit` of each per call; returns how many were written.
    pub async fn scan_reminders(
        &self,
        now: i64,
        expiring_within: i64,
        limit: u32,
    ) -> Result<u64, StoreError> {
        // The dates not reminded of yet, so a scan reads only what it will write.
        const EXPIRING: &str = "SELECT id, expires_at AS at FROM keys k WHERE enabled \
             AND expires_at IS NOT NULL AND expires_at > $1 AND expires_at <= $2 \
             AND NOT EXISTS (SELECT 1 FROM alert_marks m WHERE m.subject = 'k:' || k.id \
                 AND m.kind = 'key.expiring' AND m.period_start = k.expires_at) \
             ORDER BY expires_at LIMIT $3";
        const ROTATION_DUE: &str = "SELECT id, rotate_by AS at FROM keys k WHERE enabled \
             AND rotate_by IS NOT NULL AND rotate_by <= $1 \
             AND NOT EXISTS (SELECT 1 FROM alert_marks m WHERE m.subject = 'k:' || k.id \
                 AND m.kind = 'key.rotation_due' AND m.period_start = k.rotate_by) \
             ORDER BY rotate_by LIMIT $2";
        let until = now.saturating_add(expiring_within);
        with_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let mut written = 0;
            for (kind, query, field) in [
                (Kind::KeyExpiring, EXPIRING, "expires_at"),
                (Kind::KeyRotationDue, ROTATION_DUE, "rotate_by"),
            ] {
                let mut query = sqlx::query(query).bind(now);
                if kind == Kind::KeyExpiring {
                    query = query.bind(until);
                }
                let rows = query.bind(i64::from(limit)).fetch_all(&mut *tx).await?;
                for row in &rows {
                    let (id, at) = (row.text("id")?, row.int("at")?);
                    let Some(key) = tx.key_facts(&id).await? else {
                        continue;
                    };
                    if tx.mark(&key.subject.mark(), kind, 0, at, now).await? {
                        let details = json!({ field: event::time(at) });
                        tx.write_event(&event(kind, &key.subject, details, now)?, None)
                            .await?;
                        written += 1;
                    }
                }
            }
            tx.commit().await?;
            Ok(written)
        })
    }

    /// Deletes events (and their deliveries) made before `before`, unix seconds.
    pub async fn prune_alerts(&self, before: i64) -> Result<u64, StoreError> {
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "DELETE FROM alert_deliveries WHERE event_id IN \
                 (SELECT id FROM alert_events WHERE created_at < $1)",
            )
            .bind(before)
            .execute(&mut *tx)
            .await?;
            let done = sqlx::query("DELETE FROM alert_events WHERE created_at < $1")
                .bind(before)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(done.rows_affected())
        })
    }
}
