//! The filter's Envoy stats, defined once per VM through proxy-wasm metrics. Envoy shows
//! them prefixed with `wasmcustom.`; every VM of the plugin adds to the same counters.
//!
//! Request counters are kept in the VM and added to Envoy's on each tick (every
//! `sync_interval_ms`), which saves a host call on every request; the stats lag by at
//! most one interval.
//!
//! A metric the host refuses to define is left out (and said once in the log): stats must
//! never stop a request.

use std::cell::Cell;

use log::warn;

use crate::host::{self, MetricKind};
use keygate_core::decide::decision::Denial;
use keygate_core::sync::view::Meta;
use keygate_core::usage::scan::Usage;

/// The default has no metrics at all: every call is a no-op.
#[derive(Default)]
pub struct Metrics {
    allowed: Option<u32>,
    /// One counter per refusal code, in `Denial::ALL` order.
    denied: Vec<Option<u32>>,
    sync_failures: Option<u32>,
    snapshot_records_skipped: Option<u32>,
    snapshot_version: Option<u32>,
    keys_loaded: Option<u32>,
    snapshot_age_seconds: Option<u32>,
    revoked_entries: Option<u32>,
    usage_records: Tally,
    usage_delivered: Tally,
    usage_dropped: Option<u32>,
    usage_refused: Option<u32>,
    usage_missing: Option<u32>,
    usage_estimated: Option<u32>,
    usage_report_failures: Option<u32>,
    credit_asks: Option<u32>,
    credit_ask_failures: Option<u32>,
    tokens_input: Tally,
    tokens_cached_input: Tally,
    tokens_output: Tally,
    tokens_reasoning: Tally,
    response_bytes_scanned: Tally,
    /// Requests counted since the last flush: allowed, then one per `Denial::ALL`.
    pending: Vec<Cell<u64>>,
}

/// A counter added to in the VM and flushed to Envoy on tick (no host call per event).
#[derive(Default)]
struct Tally {
    id: Option<u32>,
    n: Cell<u64>,
}

impl Tally {
    fn new(name: &str) -> Tally {
        Tally {
            id: define(MetricKind::Counter, name),
            n: Cell::new(0),
        }
    }

    fn add(&self, n: u64) {
        self.n.set(self.n.get().saturating_add(n));
    }

    fn flush(&self) {
        let n = self.n.replace(0);
        if let (Some(id), Ok(n @ 1..)) = (self.id, i64::try_from(n)) {
            let _ = host::increment_metric(id, n);
        }
    }
}

fn define(kind: MetricKind, name: &str) -> Option<u32> {
    match host::define_metric(kind, name) {
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
            allowed: define(MetricKind::Counter, "keygate.requests_allowed"),
            denied: Denial::ALL
                .iter()
                .map(|d| {
                    define(
                        MetricKind::Counter,
                        &format!("keygate.requests_denied.{}", d.code()),
                    )
                })
                .collect(),
            sync_failures: define(MetricKind::Counter, "keygate.sync_failures"),
            snapshot_records_skipped: define(
                MetricKind::Counter,
                "keygate.snapshot_records_skipped",
            ),
            snapshot_version: define(MetricKind::Gauge, "keygate.snapshot_version"),
            keys_loaded: define(MetricKind::Gauge, "keygate.keys_loaded"),
            snapshot_age_seconds: define(MetricKind::Gauge, "keygate.snapshot_age_seconds"),
            revoked_entries: define(MetricKind::Gauge, "keygate.revoked_entries"),
            usage_records: Tally::new("keygate.usage_records"),
            usage_delivered: Tally::new("keygate.usage_delivered"),
            tokens_input: Tally::new("keygate.tokens.input"),
            tokens_cached_input: Tally::new("keygate.tokens.cached_input"),
            tokens_output: Tally::new("keygate.tokens.output"),
            tokens_reasoning: Tally::new("keygate.tokens.reasoning"),
            response_bytes_scanned: Tally::new("keygate.response_bytes_scanned"),
            usage_dropped: define(MetricKind::Counter, "keygate.usage_dropped"),
            usage_refused: define(MetricKind::Counter, "keygate.usage_refused"),
            usage_missing: define(MetricKind::Counter, "keygate.usage_missing"),
            usage_estimated: define(MetricKind::Counter, "keygate.usage_estimated"),
            usage_report_failures: define(MetricKind::Counter, "keygate.usage_report_failures"),
            credit_asks: define(MetricKind::Counter, "keygate.credit_lease_asks"),
            credit_ask_failures: define(MetricKind::Counter, "keygate.credit_lease_ask_failures"),
            pending: (0..=Denial::ALL.len()).map(|_| Cell::new(0)).collect(),
        }
    }

    fn count(&self, slot: usize) {
        if let Some(cell) = self.pending.get(slot) {
            cell.set(cell.get() + 1);
        }
    }

    /// Adds what was counted since the last flush to Envoy's counters.
    pub fn flush(&self) {
        for tally in [
            &self.usage_records,
            &self.usage_delivered,
            &self.tokens_input,
            &self.tokens_cached_input,
            &self.tokens_output,
            &self.tokens_reasoning,
            &self.response_bytes_scanned,
        ] {
            tally.flush();
        }
        let ids = std::iter::once(self.allowed).chain(self.denied.iter().copied());
        for (cell, id) in self.pending.iter().zip(ids) {
            let n = cell.replace(0);
            if let (Some(id), Ok(n @ 1..)) = (id, i64::try_from(n)) {
                let _ = host::increment_metric(id, n);
            }
        }
    }

    fn set(id: Option<u32>, value: u64) {
        if let Some(id) = id {
            let _ = host::record_metric(id, value);
        }
    }

    pub fn allowed(&self) {
        self.count(0);
    }

    pub fn denied(&self, denial: Denial) {
        if let Some(i) = Denial::ALL.iter().position(|d| *d == denial) {
            self.count(i + 1);
        }
    }

    fn add(id: Option<u32>, n: u64) {
        if let (Some(id), Ok(n @ 1..)) = (id, i64::try_from(n)) {
            let _ = host::increment_metric(id, n);
        }
    }

    pub fn sync_failed(&self) {
        Self::add(self.sync_failures, 1);
    }

    /// Snapshot records left out of an answer: unreadable (a value out of range, a wrong
    /// type), or a hash or size the filter cannot store. The rest of the page still loads.
    pub fn snapshot_records_skipped(&self, n: u64) {
        Self::add(self.snapshot_records_skipped, n);
    }

    /// A request's usage was queued for the key-service.
    pub fn usage_recorded(&self, usage: &Usage) {
        self.usage_records.add(1);
        self.tokens_input.add(usage.input);
        self.tokens_cached_input.add(usage.cached_input);
        self.tokens_output.add(usage.output);
        self.tokens_reasoning.add(usage.reasoning);
    }

    /// Records the key-service took.
    pub fn usage_delivered(&self, n: u64) {
        self.usage_delivered.add(n);
    }

    pub fn scanned(&self, bytes: usize) {
        self.response_bytes_scanned.add(bytes as u64);
    }

    /// A successful response of an LLM API named no usage (nothing is billed, or for a
    /// key or account with a limit, the estimate it was admitted on).
    pub fn usage_missing(&self) {
        Self::add(self.usage_missing, 1);
    }

    pub fn usage_estimated(&self) {
        Self::add(self.usage_estimated, 1);
    }

    pub fn usage_dropped(&self, n: u64) {
        Self::add(self.usage_dropped, n);
    }

    /// Records the key-service refused one by one (each with its reason in its log).
    pub fn usage_refused(&self, n: u64) {
        Self::add(self.usage_refused, n);
    }

    pub fn usage_report_failed(&self) {
        Self::add(self.usage_report_failures, 1);
    }

    /// An ask for credit leases was answered (`ok`) or failed.
    pub fn credit_asked(&self, ok: bool) {
        Self::add(self.credit_asks, 1);
        if !ok {
            Self::add(self.credit_ask_failures, 1);
        }
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
