//! The filter's stats, defined once per VM (per worker in the native build) through the
//! proxy's metrics (`StatSink`). In Envoy they show prefixed with `wasmcustom.` (Wasm) or
//! `dynamicmodulescustom.` (native); every VM or worker adds to the same counters.
//!
//! Request counters are kept in the VM and added to the proxy's on `flush` (each tick in
//! Wasm, each request's end in the native build), which saves a host call on every
//! request; Wasm's stats lag by at most one sync interval.
//!
//! A metric the host refuses to define is left out (and said once in the log): stats must
//! never stop a request.

use std::cell::Cell;

use log::warn;

use crate::decide::decision::Denial;
use crate::kv::HostError;
use crate::sync::view::Meta;
use crate::usage::scan::Usage;

/// The kinds of stats the filter defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

/// Where stats go: the proxy's own metrics. A failed update is lost, never a request.
pub trait StatSink {
    /// Defines a metric; its id is what `add` and `set` take.
    fn define(&self, kind: MetricKind, name: &str) -> Result<u32, HostError>;
    /// Adds `n` to a counter.
    fn add(&self, id: u32, n: u64);
    /// Sets a gauge.
    fn set(&self, id: u32, value: u64);
}

/// Every stat of the filter, by the id the sink gave it (`None`: not defined).
#[derive(Default)]
pub struct Metrics<S: StatSink> {
    sink: S,
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

/// A counter added to in the VM and flushed to the proxy later (no host call per event).
#[derive(Default)]
struct Tally {
    id: Option<u32>,
    n: Cell<u64>,
}

impl Tally {
    fn add(&self, n: u64) {
        self.n.set(self.n.get().saturating_add(n));
    }
}

fn define(sink: &impl StatSink, kind: MetricKind, name: &str) -> Option<u32> {
    match sink.define(kind, name) {
        Ok(id) => Some(id),
        Err(status) => {
            warn!("metric {name} not defined: {status:?}");
            None
        }
    }
}

impl<S: StatSink> Metrics<S> {
    pub fn define(sink: S) -> Metrics<S> {
        let counter = |name: &str| define(&sink, MetricKind::Counter, name);
        let gauge = |name: &str| define(&sink, MetricKind::Gauge, name);
        let tally = |name: &str| Tally {
            id: counter(name),
            n: Cell::new(0),
        };
        Metrics {
            allowed: counter("keygate.requests_allowed"),
            denied: Denial::ALL
                .iter()
                .map(|d| counter(&format!("keygate.requests_denied.{}", d.code())))
                .collect(),
            sync_failures: counter("keygate.sync_failures"),
            snapshot_records_skipped: counter("keygate.snapshot_records_skipped"),
            snapshot_version: gauge("keygate.snapshot_version"),
            keys_loaded: gauge("keygate.keys_loaded"),
            snapshot_age_seconds: gauge("keygate.snapshot_age_seconds"),
            revoked_entries: gauge("keygate.revoked_entries"),
            usage_records: tally("keygate.usage_records"),
            usage_delivered: tally("keygate.usage_delivered"),
            tokens_input: tally("keygate.tokens.input"),
            tokens_cached_input: tally("keygate.tokens.cached_input"),
            tokens_output: tally("keygate.tokens.output"),
            tokens_reasoning: tally("keygate.tokens.reasoning"),
            response_bytes_scanned: tally("keygate.response_bytes_scanned"),
            usage_dropped: counter("keygate.usage_dropped"),
            usage_refused: counter("keygate.usage_refused"),
            usage_missing: counter("keygate.usage_missing"),
            usage_estimated: counter("keygate.usage_estimated"),
            usage_report_failures: counter("keygate.usage_report_failures"),
            credit_asks: counter("keygate.credit_lease_asks"),
            credit_ask_failures: counter("keygate.credit_lease_ask_failures"),
            pending: (0..=Denial::ALL.len()).map(|_| Cell::new(0)).collect(),
            sink,
        }
    }

    fn count(&self, slot: usize) {
        if let Some(cell) = self.pending.get(slot) {
            cell.set(cell.get() + 1);
        }
    }

    /// Adds what was counted since the last flush to the proxy's counters.
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
            self.add(tally.id, tally.n.replace(0));
        }
        let ids = std::iter::once(self.allowed).chain(self.denied.iter().copied());
        for (cell, id) in self.pending.iter().zip(ids) {
            self.add(id, cell.replace(0));
        }
    }

    fn add(&self, id: Option<u32>, n: u64) {
        if let (Some(id), 1..) = (id, n) {
            self.sink.add(id, n);
        }
    }

    fn set(&self, id: Option<u32>, value: u64) {
        if let Some(id) = id {
            self.sink.set(id, value);
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

    pub fn sync_failed(&self) {
        self.add(self.sync_failures, 1);
    }

    /// Snapshot records left out of an answer: unreadable (a value out of range, a wrong
    /// type), or a hash or size the filter cannot store. The rest of the page still loads.
    pub fn snapshot_records_skipped(&self, n: u64) {
        self.add(self.snapshot_records_skipped, n);
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
        self.add(self.usage_missing, 1);
    }

    pub fn usage_estimated(&self) {
        self.add(self.usage_estimated, 1);
    }

    pub fn usage_dropped(&self, n: u64) {
        self.add(self.usage_dropped, n);
    }

    /// Records the key-service refused one by one (each with its reason in its log).
    pub fn usage_refused(&self, n: u64) {
        self.add(self.usage_refused, n);
    }

    pub fn usage_report_failed(&self) {
        self.add(self.usage_report_failures, 1);
    }

    /// An ask for credit leases was answered (`ok`) or failed.
    pub fn credit_asked(&self, ok: bool) {
        self.add(self.credit_asks, 1);
        if !ok {
            self.add(self.credit_ask_failures, 1);
        }
    }

    /// The gauges of the snapshot in shared data, as of `now_ms`.
    pub fn snapshot(&self, meta: &Meta, now_ms: u64) {
        self.set(self.snapshot_version, meta.version);
        self.set(self.keys_loaded, meta.keys);
        self.set(
            self.snapshot_age_seconds,
            now_ms.saturating_sub(meta.confirmed_at_ms) / 1000,
        );
        self.set(self.revoked_entries, meta.revoked);
    }

    /// Counts what the request core reports (`Host::count`).
    pub fn event(&self, event: crate::request::Event<'_>) {
        use crate::request::Event;
        match event {
            Event::Allowed => self.allowed(),
            Event::Denied(denial) => self.denied(denial),
            Event::Scanned(bytes) => self.scanned(bytes),
            Event::UsageMissing => self.usage_missing(),
            Event::UsageEstimated => self.usage_estimated(),
            Event::UsageRecorded(usage) => self.usage_recorded(usage),
        }
    }
}
