//! A proxy-wasm HTTP filter that makes one kind of host call `REPEAT` times on every
//! request, named by `"host_call"` in its plugin configuration (`"none"` makes none).
//! Every variant, `none` included, reads the request headers once (what
//! `set_header_map_pairs` writes back).
//! `make bench-host-calls` measures Envoy's throughput with each against `none`: the
//! difference, divided by `REPEAT`, is what one such call costs in Envoy's V8, the floor
//! under any filter that needs it. The calls are the ones keygate makes per request.

/// Calls per request: enough to stand out of the run-to-run noise.
pub const REPEAT: usize = 20;

/// What `"host_call"` may name (`keygate-bench --host-calls` measures each).
pub const CALLS: [&str; 11] = [
    "none",
    "get_header_map_pairs",
    "get_header",
    "get_current_time",
    "get_shared_data",
    "get_shared_data, absent",
    "replace_header",
    "remove_header",
    "set_header_map_pairs",
    "increment_metric",
    "get_property",
];

// The filter itself exists only in the wasm build; natively (for the benchmark) this crate
// is its constants.
#[cfg(target_arch = "wasm32")]
mod filter;
