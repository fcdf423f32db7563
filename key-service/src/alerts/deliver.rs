//! Sending due deliveries: claim a few, sign each, POST it with a timeout, record how it
//! went. At least once: a delivery is marked delivered only after a 2xx, so a replica
//! that dies mid-send leaves a claim that lapses and the delivery is sent again (the
//! event `id` lets the receiver drop the second copy). The receiver's body is never read,
//! and redirects are not followed (the URL the operator gave is the one that receives).

use std::sync::Arc;

use reqwest::header::CONTENT_TYPE;
use tokio::task::JoinSet;

use super::backoff::{self, Next};
use super::sign::{self, EVENT_ID_HEADER, EVENT_TYPE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use super::{millis, AlertSettings};
use crate::expiry;
use crate::metrics::{DeliveryResult, SharedMetrics};
use crate::store::{Claimed, Finish, Store, StoreError};

/// Deliveries claimed at once; each is sent in parallel with the others.
const BATCH: u32 = 32;

/// Why the HTTP client could not be built (the TLS setup).
pub type ClientError = reqwest::Error;

/// The clients deliveries go through: the attempt's timeout covers connecting and the
/// whole exchange; no redirects. Tenants' webhooks go through `public`, whose resolver
/// gives public addresses only.
#[derive(Clone)]
pub struct Clients {
    pub any: reqwest::Client,
    pub public: reqwest::Client,
}

pub fn client(settings: &AlertSettings) -> Result<Clients, ClientError> {
    let builder = || {
        reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("keygate-webhooks/", env!("CARGO_PKG_VERSION")))
    };
    Ok(Clients {
        any: builder().build()?,
        public: builder()
            .dns_resolver(std::sync::Arc::new(super::public::PublicOnly))
            .build()?,
    })
}

/// Sends what is due, every `poll_every`, until the process ends.
pub async fn run(
    store: Store,
    client: Clients,
    settings: Arc<AlertSettings>,
    metrics: SharedMetrics,
) {
    loop {
        match deliver_due(&store, &client, &settings, &metrics).await {
            // A full batch: more may be waiting.
            Ok(n) if n == BATCH as usize => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "webhook deliveries could not be read"),
        }
        tokio::time::sleep(settings.poll_every).await;
    }
}

/// Claims the deliveries due now and attempts each once; how many were attempted.
pub async fn deliver_due(
    store: &Store,
    client: &Clients,
    settings: &Arc<AlertSettings>,
    metrics: &SharedMetrics,
) -> Result<usize, StoreError> {
    let now = expiry::now_ms();
    // Held for two timeouts and a margin: long enough that an attempt still running is
    // never taken over, short enough that one of a dead replica is soon sent again.
    let hold = millis(settings.timeout)
        .saturating_mul(2)
        .saturating_add(5_000);
    let lock_until = now.saturating_add(i64::try_from(hold).unwrap_or(i64::MAX));
    let claimed = store.claim_deliveries(now, lock_until, BATCH).await?;
    let n = claimed.len();
    let mut attempts = JoinSet::new();
    for delivery in claimed {
        let (store, client) = (store.clone(), client.clone());
        let (settings, metrics) = (settings.clone(), metrics.clone());
        attempts
            .spawn(async move { attempt(&store, &client, &settings, &metrics, delivery).await });
    }
    while let Some(done) = attempts.join_next().await {
        if let Err(e) = done {
            tracing::warn!(error = %e, "a webhook delivery task failed");
        }
    }
    Ok(n)
}

/// Sends one claimed delivery and records the outcome (or the next attempt's time).
async fn attempt(
    store: &Store,
    client: &Clients,
    settings: &AlertSettings,
    metrics: &SharedMetrics,
    delivery: Claimed,
) {
    let sent_at = expiry::now();
    let finish = match send(client, &delivery, sent_at).await {
        Ok(status) => Finish::Delivered {
            status,
            at: sent_at,
        },
        Err((status, error)) => {
            let attempts = u64::try_from(delivery.attempts.saturating_add(1)).unwrap_or(0);
            let next = backoff::after_failure(
                attempts,
                delivery.created_ms,
                expiry::now_ms(),
                millis(settings.backoff_base),
                millis(settings.backoff_cap),
                millis(settings.retry_for),
            );
            Finish::Failed {
                status,
                error,
                next_attempt_ms: match next {
                    Next::RetryAt(at) => Some(at),
                    Next::GiveUp => None,
                },
            }
        }
    };
    let result = match &finish {
        Finish::Delivered { .. } => DeliveryResult::Delivered,
        Finish::Failed {
            next_attempt_ms: Some(_),
            ..
        } => DeliveryResult::Retried,
        Finish::Failed { .. } => DeliveryResult::Failed,
    };
    metrics.webhook_delivery(result);
    // The webhook's id names it in logs: its URL may carry a token of the receiver's.
    match &finish {
        Finish::Failed { error, .. } => tracing::info!(
            event = %delivery.event_id,
            webhook = %delivery.webhook_id,
            attempt = delivery.attempts.saturating_add(1),
            %error,
            given_up = matches!(result, DeliveryResult::Failed),
            "webhook delivery failed"
        ),
        Finish::Delivered { .. } => tracing::debug!(
            event = %delivery.event_id,
            webhook = %delivery.webhook_id,
            "webhook delivered"
        ),
    }
    match store.finish_delivery(&delivery, &finish).await {
        Ok(true) => {}
        Ok(false) => tracing::info!(
            event = %delivery.event_id,
            webhook = %delivery.webhook_id,
            "a webhook delivery outlived its claim; another replica's record stands"
        ),
        Err(e) => tracing::warn!(error = %e, "a webhook delivery could not be recorded"),
    }
}

/// POSTs the payload, signed; the status of a 2xx answer, or the status (if any) and
/// what went wrong, in words that hold no secret and nothing the receiver sent.
async fn send(
    clients: &Clients,
    delivery: &Claimed,
    sent_at: i64,
) -> Result<u16, (Option<u16>, String)> {
    let client = if delivery.public_only {
        // An address in the URL is not resolved, so the resolver cannot refuse it.
        let url = reqwest::Url::parse(&delivery.url)
            .map_err(|_| (None, "the URL cannot be requested".to_owned()))?;
        if super::public::refuse_url(&url).is_some() {
            return Err((None, "the URL names a private address".to_owned()));
        }
        &clients.public
    } else {
        &clients.any
    };
    let body = delivery.payload.as_bytes();
    let response = client
        .post(&delivery.url)
        .header(CONTENT_TYPE, "application/json")
        .header(EVENT_ID_HEADER, &delivery.event_id)
        .header(EVENT_TYPE_HEADER, &delivery.event_type)
        .header(TIMESTAMP_HEADER, sent_at.to_string())
        .header(
            SIGNATURE_HEADER,
            sign::signature(&delivery.secret, sent_at, body),
        )
        .body(delivery.payload.clone())
        .send()
        .await
        .map_err(|e| (None, describe(&e)))?;
    let status = response.status();
    // Dropped unread: a receiver's body (however large) is never taken in.
    drop(response);
    if status.is_success() {
        Ok(status.as_u16())
    } else {
        Err((
            Some(status.as_u16()),
            format!("the receiver answered {status}"),
        ))
    }
}

/// A transport error in a few words, without the URL (it may carry a token).
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "could not connect".to_owned()
    } else if error.is_builder() {
        "the URL cannot be requested".to_owned()
    } else {
        "the request failed before an answer".to_owned()
    }
}
