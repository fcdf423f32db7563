//! The filter's Envoy stats, defined once per VM through proxy-wasm metrics. Envoy shows
//! them prefixed with `wasmcustom.`; every VM of the plugin adds to the same counters.
//!
//! A metric the host refuses to define is left out (and said once in the log): stats must
//! never stop a request.

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use crate::decision::Denial;
use crate::shared::Meta;

/// The default has no metrics at all: every call is a no-op.
#[derive(Default)]
pub struct Metrics {
    allowed: Option<u32>,
    /// One counter per refusal code, in `Denial::ALL` order.
    denied: Vec<Option<u32>>,
    sync_failures: Option<u32>,
    snapshot_version: Option<u32>,
    keys_loaded: Option<u32>,
    snapshot_age_seconds: Option<u32>,
    revoked_entries: Option<u32>,
}

fn define(kind: MetricType, name: &str) -> Option<u32> {
    match hostcalls::define_metric(kind, name) {
        Ok(id) => Some(id),
        Err(status) => {
            warn!("metric {name} not defined: {status:?}");
            None
        }
    }
}

impl Metrics {
    pub fn define() -> Metrics {
        Metrics {
            allowed: define(MetricType::Counter, "keygate.requests_allowed"),
            denied: Denial::ALL
                .iter()
                .map(|d| {
                    define(
                        MetricType::Counter,
                        &format!("keygate.requests_denied.{}", d.code()),
                    )
                })
                .collect(),
            sync_failures: define(MetricType::Counter, "keygate.sync_failures"),
            snapshot_version: define(MetricType::Gauge, "keygate.snapshot_version"),
            keys_loaded: define(MetricType::Gauge, "keygate.keys_loaded"),
            snapshot_age_seconds: define(MetricType::Gauge, "keygate.snapshot_age_seconds"),
            revoked_entries: define(MetricType::Gauge, "keygate.revoked_entries"),
        }
    }

    fn add(id: Option<u32>) {
        if let Some(id) = id {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }

    fn set(id: Option<u32>, value: u64) {
        if let Some(id) = id {
            let _ = hostcalls::record_metric(id, value);
        }
    }

    pub fn allowed(&self) {
        Self::add(self.allowed);
    }

    pub fn denied(&self, denial: Denial) {
        let slot = Denial::ALL.iter().position(|d| *d == denial);
        Self::add(slot.and_then(|i| self.denied.get(i).copied().flatten()));
    }

    pub fn sync_failed(&self) {
        Self::add(self.sync_failures);
    }

    /// The gauges of the snapshot in shared data, as of `now_ms`.
    pub fn snapshot(&self, meta: &Meta, now_ms: u64) {
        Self::set(self.snapshot_version, meta.version);
        Self::set(self.keys_loaded, meta.keys);
        Self::set(
            self.snapshot_age_seconds,
            now_ms.saturating_sub(meta.confirmed_at_ms) / 1000,
        );
        Self::set(self.revoked_entries, meta.revoked);
    }
}
