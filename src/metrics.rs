//! The filter's stats (`keygate_core::stats`) through proxy-wasm metrics: Envoy shows them
//! prefixed with `wasmcustom.`; every VM of the plugin adds to the same counters.

use crate::host;
use keygate_core::kv::HostError;
use keygate_core::stats::{MetricKind, StatSink};

/// The stats of one VM.
pub type Metrics = keygate_core::stats::Metrics<WasmStats>;

/// Proxy-wasm's metrics.
#[derive(Default)]
pub struct WasmStats;

impl StatSink for WasmStats {
    fn define(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        host::define_metric(kind, name)
    }

    fn add(&self, id: u32, n: u64) {
        if let Ok(n) = i64::try_from(n) {
            let _ = host::increment_metric(id, n);
        }
    }

    fn set(&self, id: u32, value: u64) {
        let _ = host::record_metric(id, value);
    }
}
