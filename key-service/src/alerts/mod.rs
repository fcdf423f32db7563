//! Alerts: webhooks told when a key or account crosses a threshold of its budget, runs
//! out, nears its expiry or rotation date, or is disabled or rotated.
//!
//! Events are written to an outbox in the transaction of what they tell of (`store`);
//! [`deliver`] sends them, signed ([`sign`]), at least once, with backoff ([`backoff`]);
//! [`scan`] writes the reminders no request causes (expiry, rotation). What crossing a
//! threshold means is [`threshold`]; what a payload says, [`event`]; the webhooks
//! themselves as the API and the command line manage them, [`webhooks`].

pub mod backoff;
pub mod deliver;
pub mod event;
pub mod public;
pub mod scan;
pub mod sign;
pub mod threshold;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::SharedMetrics;
use crate::store::Store;

/// How alerts are made and delivered (`KEYGATE_ALERT_*`, `KEYGATE_WEBHOOK_*`).
#[derive(Debug, Clone, PartialEq)]
pub struct AlertSettings {
    /// Budget thresholds, in percent.
    pub thresholds: threshold::Thresholds,
    /// A key expiring within this many seconds gets a `key.expiring` reminder.
    pub expiring_within: i64,
    /// How often the reminders are looked for.
    pub scan_every: Duration,
    /// How often due deliveries are looked for.
    pub poll_every: Duration,
    /// The wait after the first failed attempt, doubled after each one, up to the cap.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// How long after the event a delivery is still tried; then it is marked failed.
    pub retry_for: Duration,
    /// The most one attempt may take, connecting included.
    pub timeout: Duration,
    /// How long events (and their deliveries) are kept.
    pub keep_events: Duration,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            thresholds: threshold::Thresholds::default(),
            expiring_within: 7 * 86_400,
            scan_every: Duration::from_secs(300),
            poll_every: Duration::from_secs(1),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(3_600),
            retry_for: Duration::from_secs(86_400),
            timeout: Duration::from_secs(10),
            keep_events: Duration::from_secs(30 * 86_400),
        }
    }
}

/// Starts the delivery and reminder tasks; they run until the process ends (a replica
/// that stops mid-delivery leaves a claim that lapses, and another replica sends it).
pub fn spawn(
    store: Store,
    settings: Arc<AlertSettings>,
    metrics: SharedMetrics,
) -> Result<(), deliver::ClientError> {
    let client = deliver::client(&settings)?;
    tokio::spawn(deliver::run(
        store.clone(),
        client,
        settings.clone(),
        metrics,
    ));
    tokio::spawn(scan::run(store, settings));
    Ok(())
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
