//! The webhook domain: what creating, listing, editing and testing a webhook means, and
//! its delivery log, apart from how it is asked for. The HTTP handlers
//! (`api::webhooks`) and the command line (`cli`) both call these. A webhook's secret is
//! shown by `create` and `rotate_secret` only.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::event::Kind;
use crate::error::ApiError;
use crate::expiry;
use crate::random;
use crate::store::{DeliveryRow, NewWebhook, Store, WebhookEdit, WebhookRow, DELIVERY_STATUSES};

/// The longest URL accepted.
pub const URL_MAX: usize = 2048;

/// Body of `POST /api/v1/webhooks`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where events are POSTed: `http://` or `https://`, at most 2,048 characters.
    pub url: String,
    /// The account whose keys' events it receives; absent or `null` = every event (a
    /// global webhook).
    #[serde(default)]
    pub account: Option<String>,
    /// Event types it receives; absent or empty = all.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// Body of `PATCH /api/v1/webhooks/{id}`: absent fields are left as they are.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub events: Option<Vec<String>>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// A webhook as the API shows it. `secret` only in the answers of create and
/// rotate-secret.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub id: String,
    /// The signing secret (HMAC-SHA256), shown this once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// `null` for a global webhook.
    pub account: Option<String>,
    pub url: String,
    /// Event types it receives; empty = all.
    pub events: Vec<String>,
    pub enabled: bool,
    pub created_at: String,
    /// Made by a tenant: delivered to public addresses only (never to loopback, private
    /// or link-local ones).
    pub public_only: bool,
}

/// One delivery of an event to a webhook.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub event_id: String,
    pub event_type: String,
    pub webhook_id: String,
    /// `pending`, `delivered` or `failed` (given up after the retry window).
    pub status: String,
    pub attempts: i64,
    pub created_at: String,
    /// When it is tried next (pending only).
    pub next_attempt_at: Option<String>,
    /// The receiver's last HTTP status, if it answered.
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub delivered_at: Option<String>,
    /// The event as sent.
    #[schema(value_type = Object)]
    pub payload: Value,
}

impl WebhookView {
    fn new(row: WebhookRow, secret: Option<String>) -> Result<Self, ApiError> {
        Ok(WebhookView {
            created_at: time(row.created_at)?,
            id: row.id,
            secret,
            account: row.account,
            url: row.url,
            events: row.events,
            enabled: row.enabled,
            public_only: row.public_only,
        })
    }
}

impl DeliveryView {
    fn new(row: DeliveryRow) -> Result<Self, ApiError> {
        let ms = |ms: i64| time(ms.div_euclid(1000));
        Ok(DeliveryView {
            created_at: ms(row.created_ms)?,
            next_attempt_at: (row.status == "pending")
                .then(|| ms(row.next_attempt_ms))
                .transpose()?,
            delivered_at: row.delivered_at.map(time).transpose()?,
            payload: serde_json::from_str(&row.payload).unwrap_or(Value::Null),
            event_id: row.event_id,
            event_type: row.event_type,
            webhook_id: row.webhook_id,
            status: row.status,
            attempts: row.attempts,
            last_status: row.last_status,
            last_error: row.last_error,
        })
    }
}

fn time(unix: i64) -> Result<String, ApiError> {
    expiry::to_rfc3339(unix)
        .ok_or_else(|| ApiError::internal(format!("stored time {unix} is out of range")))
}

/// An `http://` or `https://` URL with a host, at most [`URL_MAX`] characters.
pub fn check_url(url: String) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::invalid("url", why);
    if url.len() > URL_MAX {
        return Err(bad("url must be at most 2048 characters"));
    }
    let parsed = reqwest::Url::parse(&url).map_err(|e| bad(&format!("url is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("url must start with http:// or https://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("url must name a host"));
    }
    Ok(url)
}

/// A tenant's webhook may not name a private address or localhost.
fn check_public(url: &str) -> Result<(), ApiError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| ApiError::invalid("url", e.to_string()))?;
    match super::public::refuse_url(&parsed) {
        Some(what) => Err(ApiError::invalid(
            "url",
            format!(
                "url names {what}: a tenant's webhook must be reachable on the public internet"
            ),
        )),
        None => Ok(()),
    }
}

/// Event types, each one a webhook can listen to, duplicates dropped.
pub fn check_events(events: Vec<String>) -> Result<Vec<String>, ApiError> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(events.len());
    for (i, name) in events.into_iter().enumerate() {
        match Kind::parse(&name) {
            Some(kind) if kind != Kind::Test => {}
            _ => {
                let known: Vec<&str> = Kind::ALL
                    .iter()
                    .filter(|k| **k != Kind::Test)
                    .map(|k| k.as_str())
                    .collect();
                return Err(ApiError::invalid(
                    "events",
                    format!("events[{i}] must be one of {}", known.join(", ")),
                ));
            }
        }
        if seen.insert(name.clone()) {
            out.push(name);
        }
    }
    Ok(out)
}

/// A signing secret: `whsec_` and 32 CSPRNG base62 characters (190 bits).
fn mint_secret() -> Result<String, ApiError> {
    Ok(format!("whsec_{}", random::base62(32)?))
}

/// The 404 for a webhook id that is not there.
pub fn no_such_webhook(id: &str) -> ApiError {
    ApiError::NotFound(format!("there is no webhook with id {id:?}"))
}

/// Checks and stores a webhook; the view carries its secret, the only time it is shown.
/// `public_only` for a tenant's webhook: its URL may not name a private address, and
/// its deliveries go to public addresses only.
pub async fn create(
    store: &Store,
    request: CreateWebhook,
    public_only: bool,
    now: i64,
) -> Result<WebhookView, ApiError> {
    let url = check_url(request.url)?;
    if public_only {
        check_public(&url)?;
    }
    let events = check_events(request.events.unwrap_or_default())?;
    if let Some(account) = &request.account {
        if !store.account_exists(account).await? {
            return Err(ApiError::invalid(
                "account",
                format!("there is no account named {account:?}"),
            ));
        }
    }
    let webhook = NewWebhook {
        id: format!("wh_{}", random::base62(16)?),
        account: request.account,
        url,
        secret: mint_secret()?,
        events,
        enabled: request.enabled.unwrap_or(true),
        public_only,
    };
    store.insert_webhook(&webhook, now).await?;
    tracing::info!(id = %webhook.id, account = ?webhook.account, "webhook created");
    let row = store
        .get_webhook(&webhook.id)
        .await?
        .ok_or_else(|| no_such_webhook(&webhook.id))?;
    WebhookView::new(row, Some(webhook.secret))
}

/// Every webhook, or those of `account` (not the global ones).
pub async fn list(store: &Store, account: Option<&str>) -> Result<Vec<WebhookView>, ApiError> {
    store
        .list_webhooks(account)
        .await?
        .into_iter()
        .map(|row| WebhookView::new(row, None))
        .collect()
}

pub async fn get(store: &Store, id: &str) -> Result<WebhookView, ApiError> {
    let row = store
        .get_webhook(id)
        .await?
        .ok_or_else(|| no_such_webhook(id))?;
    WebhookView::new(row, None)
}

/// Checks an edit as create checks its fields, and applies it.
pub async fn update(
    store: &Store,
    id: &str,
    request: UpdateWebhook,
) -> Result<WebhookView, ApiError> {
    let url = request.url.map(check_url).transpose()?;
    if let Some(url) = &url {
        if get(store, id).await?.public_only {
            check_public(url)?;
        }
    }
    let edit = WebhookEdit {
        url,
        events: request.events.map(check_events).transpose()?,
        enabled: request.enabled,
    };
    if !store.update_webhook(id, &edit).await? {
        return Err(no_such_webhook(id));
    }
    tracing::info!(%id, "webhook updated");
    get(store, id).await
}

/// A new signing secret, shown this once; deliveries from now on are signed with it.
pub async fn rotate_secret(store: &Store, id: &str) -> Result<WebhookView, ApiError> {
    let secret = mint_secret()?;
    if !store.set_webhook_secret(id, &secret).await? {
        return Err(no_such_webhook(id));
    }
    tracing::info!(%id, "webhook secret rotated");
    let row = store
        .get_webhook(id)
        .await?
        .ok_or_else(|| no_such_webhook(id))?;
    WebhookView::new(row, Some(secret))
}

pub async fn delete(store: &Store, id: &str) -> Result<(), ApiError> {
    if !store.delete_webhook(id).await? {
        return Err(no_such_webhook(id));
    }
    tracing::info!(%id, "webhook deleted");
    Ok(())
}

/// Queues a `test` event for this webhook alone; its id. A disabled webhook is sent
/// nothing: 409.
pub async fn test(store: &Store, id: &str, now: i64) -> Result<String, ApiError> {
    let webhook = get(store, id).await?;
    if !webhook.enabled {
        return Err(ApiError::Conflict(format!(
            "webhook {id:?} is disabled: enable it to test it"
        )));
    }
    store
        .test_webhook(id, now)
        .await?
        .ok_or_else(|| no_such_webhook(id))
}

/// A delivery status to filter on, as the log stores it.
pub fn check_status(status: &str) -> Result<&'static str, ApiError> {
    DELIVERY_STATUSES
        .into_iter()
        .find(|s| *s == status)
        .ok_or_else(|| {
            ApiError::invalid("status", "status must be one of pending, delivered, failed")
        })
}

/// One page of the webhook's deliveries, newest first; with how many match in all.
pub async fn deliveries(
    store: &Store,
    id: &str,
    status: Option<&str>,
    limit: u32,
    offset: u64,
) -> Result<(Vec<DeliveryView>, u64), ApiError> {
    if store.get_webhook(id).await?.is_none() {
        return Err(no_such_webhook(id));
    }
    let (rows, total) = store.list_deliveries(id, status, limit, offset).await?;
    let views = rows
        .into_iter()
        .map(DeliveryView::new)
        .collect::<Result<_, _>>()?;
    Ok((views, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of<T: std::fmt::Debug>(result: Result<T, ApiError>) -> String {
        match result {
            Err(ApiError::InvalidRequest { param: Some(p), .. }) => p,
            other => panic!("expected a 400 with a param, got {other:?}"),
        }
    }

    #[test]
    fn only_http_and_https_urls_with_a_host_are_taken() {
        for good in [
            "http://127.0.0.1:9000/hook",
            "https://hooks.example.com/k?team=a",
        ] {
            assert_eq!(check_url(good.into()).unwrap(), good);
        }
        let long = format!("https://example.com/{}", "a".repeat(URL_MAX));
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "example.com/hook",
            "http://",
            "",
            long.as_str(),
        ] {
            assert_eq!(param_of(check_url(bad.into())), "url", "{bad}");
        }
    }

    #[test]
    fn events_are_known_types_other_than_test() {
        assert_eq!(
            check_events(vec![
                "key.threshold".into(),
                "key.disabled".into(),
                "key.threshold".into()
            ])
            .unwrap(),
            ["key.threshold", "key.disabled"]
        );
        assert_eq!(param_of(check_events(vec!["test".into()])), "events");
        assert_eq!(param_of(check_events(vec!["key.*".into()])), "events");
    }
}
