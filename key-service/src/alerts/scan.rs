//! The reminders no request causes: keys nearing their expiry (`key.expiring`) or past
//! their rotation date (`key.rotation_due`), looked for every `scan_every`; and the
//! pruning of events older than `keep_events`. Replicas may all scan: the marks make
//! each reminder once per key and date.

use std::sync::Arc;

use super::AlertSettings;
use crate::expiry;
use crate::store::{Store, StoreError};

/// Keys reminded of per kind and scan; the rest wait for the next scan.
const PER_SCAN: u32 = 1_000;

/// Scans at start and then every `scan_every`, until the process ends.
pub async fn run(store: Store, settings: Arc<AlertSettings>) {
    let mut every = tokio::time::interval(settings.scan_every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match scan_once(&store, &settings, expiry::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(reminders = n, "key reminders written"),
            Err(e) => tracing::warn!(error = %e, "key reminders could not be written"),
        }
    }
}

/// One scan at `now`: the reminders written.
pub async fn scan_once(
    store: &Store,
    settings: &AlertSettings,
    now: i64,
) -> Result<u64, StoreError> {
    let written = store
        .scan_reminders(now, settings.expiring_within, PER_SCAN)
        .await?;
    let keep = i64::try_from(settings.keep_events.as_secs()).unwrap_or(i64::MAX);
    store.prune_alerts(now.saturating_sub(keep)).await?;
    Ok(written)
}
