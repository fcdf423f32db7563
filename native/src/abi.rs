//! Hand-written Rust FFI declarations for the subset of Envoy's dynamic-module C ABI that the
//! keygate HTTP filter uses.
//!
//! Target host: the Envoy 1.40.0 binary shipped in `.venv/.../envoy/_bin/envoy`
//! (build id 9e5580933739775e8bce696a57a2e1bc99368f23, ABI version string "v0.2.0").
//! See `docs/native-abi.md` for where these signatures were checked and for the ownership,
//! lifetime and threading rules.
//!
//! Conventions used below:
//! * "callback" = a function Envoy exports and the module calls (declared in the `extern` block);
//! * "hook" = a function the module must export with `#[no_mangle] pub extern "C"`; the exact
//!   signature of every hook is given as an `unsafe extern "C" fn` type alias (`Hook*`), so a
//!   module can assert its implementation with e.g. `const _: HookHttpFilterNew = my_fn;`.
//! * Every C enum is `int`-sized; it is modelled as a `u32` alias plus constants instead of a Rust
//!   `enum`, so an unexpected value coming from Envoy can never be undefined behaviour.

#![allow(non_camel_case_types)]
#![allow(non_upper_case_globals)]
#![allow(dead_code)]

use core::ffi::{c_char, c_void};

/// NUL-terminated ABI version the module returns from `envoy_dynamic_module_on_program_init`.
/// Envoy only compares it with its own string and logs a warning on mismatch (it does not refuse
/// to load); returning null instead makes the load fail.
pub const ENVOY_DYNAMIC_MODULES_ABI_VERSION: &[u8] = b"v0.2.0\0";

// ---------------------------------------------------------------------------------------------
// Opaque handles
// ---------------------------------------------------------------------------------------------

/// Pointer returned by `on_program_init`: a static NUL-terminated version string.
pub type envoy_dynamic_module_type_abi_version_module_ptr = *const c_char;

/// Bytes owned by the module (handed to Envoy for the duration of one call).
pub type envoy_dynamic_module_type_buffer_module_ptr = *const c_char;
/// Bytes owned by Envoy (lent to the module; see each callback for how long).
pub type envoy_dynamic_module_type_buffer_envoy_ptr = *const c_char;

/// Envoy-side filter configuration object (`DynamicModuleHttpFilterConfig*`).
pub type envoy_dynamic_module_type_http_filter_config_envoy_ptr = *mut c_void;
/// Module-side filter configuration, returned by the module from `config_new`.
pub type envoy_dynamic_module_type_http_filter_config_module_ptr = *const c_void;
/// Module-side per-route configuration, returned from `per_route_config_new`.
pub type envoy_dynamic_module_type_http_filter_per_route_config_module_ptr = *const c_void;
/// Envoy-side per-stream filter object (`DynamicModuleHttpFilter*`).
pub type envoy_dynamic_module_type_http_filter_envoy_ptr = *mut c_void;
/// Module-side per-stream filter, returned from `http_filter_new`.
pub type envoy_dynamic_module_type_http_filter_module_ptr = *const c_void;
/// Per-stream scheduler handle (created by Envoy, must be deleted by the module).
pub type envoy_dynamic_module_type_http_filter_scheduler_module_ptr = *mut c_void;
/// Config-level scheduler handle (created by Envoy, must be deleted by the module).
pub type envoy_dynamic_module_type_http_filter_config_scheduler_module_ptr = *mut c_void;

// ---------------------------------------------------------------------------------------------
// Plain structs
// ---------------------------------------------------------------------------------------------

/// A (pointer, length) view on module-owned bytes. Not NUL-terminated. A null `ptr` with
/// `length == 0` is the "absent" value.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct envoy_dynamic_module_type_module_buffer {
    pub ptr: envoy_dynamic_module_type_buffer_module_ptr,
    pub length: usize,
}

/// A (pointer, length) view on Envoy-owned bytes. Not NUL-terminated.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct envoy_dynamic_module_type_envoy_buffer {
    pub ptr: envoy_dynamic_module_type_buffer_envoy_ptr,
    pub length: usize,
}

/// One header name/value pair whose bytes belong to the module (used for requests the module
/// builds: local replies, callouts).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct envoy_dynamic_module_type_module_http_header {
    pub key_ptr: envoy_dynamic_module_type_buffer_module_ptr,
    pub key_length: usize,
    pub value_ptr: envoy_dynamic_module_type_buffer_module_ptr,
    pub value_length: usize,
}

/// One header name/value pair whose bytes belong to Envoy (filled in by Envoy).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct envoy_dynamic_module_type_envoy_http_header {
    pub key_ptr: envoy_dynamic_module_type_buffer_envoy_ptr,
    pub key_length: usize,
    pub value_ptr: envoy_dynamic_module_type_buffer_envoy_ptr,
    pub value_length: usize,
}

// ---------------------------------------------------------------------------------------------
// Enums (C `int`-sized; values are the declaration order in the header, starting at 0)
// ---------------------------------------------------------------------------------------------

/// Log level, numerically identical to spdlog's levels.
pub type envoy_dynamic_module_type_log_level = u32;
pub mod log_level {
    pub const Trace: u32 = 0;
    pub const Debug: u32 = 1;
    pub const Info: u32 = 2;
    pub const Warn: u32 = 3;
    pub const Error: u32 = 4;
    pub const Critical: u32 = 5;
    pub const Off: u32 = 6;
}

/// Which header map a header callback works on.
pub type envoy_dynamic_module_type_http_header_type = u32;
pub mod http_header_type {
    pub const RequestHeader: u32 = 0;
    pub const RequestTrailer: u32 = 1;
    pub const ResponseHeader: u32 = 2;
    pub const ResponseTrailer: u32 = 3;
}

/// Which body buffer a body callback works on. "Received" = the chunk handed to the body hook
/// that is currently running; "Buffered" = what the filter chain has accumulated so far because a
/// body hook earlier returned a buffering status.
pub type envoy_dynamic_module_type_http_body_type = u32;
pub mod http_body_type {
    pub const ReceivedRequestBody: u32 = 0;
    pub const BufferedRequestBody: u32 = 1;
    pub const ReceivedResponseBody: u32 = 2;
    pub const BufferedResponseBody: u32 = 3;
}

/// CEL-style attribute identifiers for `http_filter_get_attribute_*`. Only the ones keygate may
/// need are listed; the numbering is positional in the header (68 entries, 0..=67).
pub type envoy_dynamic_module_type_attribute_id = u32;
pub mod attribute_id {
    /// `request.path` (string, includes the query).
    pub const RequestPath: u32 = 0;
    /// `request.url_path` (string, path without query).
    pub const RequestUrlPath: u32 = 1;
    /// `request.host` (string).
    pub const RequestHost: u32 = 2;
    /// `request.method` (string).
    pub const RequestMethod: u32 = 4;
    /// `request.id` (string, x-request-id).
    pub const RequestId: u32 = 9;
    /// `source.address`: string form of the downstream *remote* address, i.e. "ip:port"
    /// ("[v6]:port" for IPv6). This is the one to use for the client address.
    pub const SourceAddress: u32 = 24;
    /// `source.port` (int, use `get_attribute_int`).
    pub const SourcePort: u32 = 25;
    /// `destination.address`: downstream local address, "ip:port".
    pub const DestinationAddress: u32 = 26;
    /// `destination.port` (int).
    pub const DestinationPort: u32 = 27;
    /// `connection.id` (int).
    pub const ConnectionId: u32 = 28;
    /// `xds.route_name` (string).
    pub const XdsRouteName: u32 = 61;
}

/// Result of the metric callbacks.
pub type envoy_dynamic_module_type_metrics_result = u32;
pub mod metrics_result {
    pub const Success: u32 = 0;
    pub const MetricNotFound: u32 = 1;
    /// Wrong number of label values for the metric's label names.
    pub const InvalidLabels: u32 = 2;
    /// A `define_*` call made after `on_http_filter_config_new` returned.
    pub const Frozen: u32 = 3;
}

/// Synchronous result of starting an HTTP callout.
pub type envoy_dynamic_module_type_http_callout_init_result = u32;
pub mod http_callout_init_result {
    pub const Success: u32 = 0;
    /// `:method`, `:path` or `host` missing from the request headers.
    pub const MissingRequiredHeaders: u32 = 1;
    pub const ClusterNotFound: u32 = 2;
    pub const DuplicateCalloutId: u32 = 3;
    pub const CannotCreateRequest: u32 = 4;
}

/// Asynchronous outcome delivered to a `*_http_callout_done` hook.
pub type envoy_dynamic_module_type_http_callout_result = u32;
pub mod http_callout_result {
    /// A response was received (any HTTP status); headers/body are provided.
    pub const Success: u32 = 0;
    /// Stream reset / connection failure / timeout; headers and body are null/0.
    pub const Reset: u32 = 1;
    pub const ExceedResponseBufferLimit: u32 = 2;
}

/// Reason passed to the `*_http_stream_reset` hooks.
pub type envoy_dynamic_module_type_http_stream_reset_reason = u32;
pub mod http_stream_reset_reason {
    pub const ConnectionFailure: u32 = 0;
    pub const ConnectionTermination: u32 = 1;
    pub const LocalReset: u32 = 2;
    pub const LocalRefusedStreamReset: u32 = 3;
    pub const Overflow: u32 = 4;
    pub const RemoteReset: u32 = 5;
    pub const RemoteRefusedStreamReset: u32 = 6;
    pub const ProtocolError: u32 = 7;
}

/// Return value of `on_http_filter_request_headers` (cast 1:1 to Envoy's FilterHeadersStatus).
pub type envoy_dynamic_module_type_on_http_filter_request_headers_status = u32;
/// Return value of `on_http_filter_response_headers` (same values as the request variant).
pub type envoy_dynamic_module_type_on_http_filter_response_headers_status = u32;
pub mod headers_status {
    pub const Continue: u32 = 0;
    pub const StopIteration: u32 = 1;
    pub const ContinueAndDontEndStream: u32 = 2;
    pub const StopAllIterationAndBuffer: u32 = 3;
    pub const StopAllIterationAndWatermark: u32 = 4;
}

/// Return value of `on_http_filter_request_body` (cast 1:1 to Envoy's FilterDataStatus).
pub type envoy_dynamic_module_type_on_http_filter_request_body_status = u32;
/// Return value of `on_http_filter_response_body` (same values as the request variant).
pub type envoy_dynamic_module_type_on_http_filter_response_body_status = u32;
pub mod body_status {
    pub const Continue: u32 = 0;
    pub const StopIterationAndBuffer: u32 = 1;
    pub const StopIterationAndWatermark: u32 = 2;
    pub const StopIterationNoBuffer: u32 = 3;
}

/// Return value of `on_http_filter_request_trailers` / `_response_trailers`.
pub type envoy_dynamic_module_type_on_http_filter_request_trailers_status = u32;
pub type envoy_dynamic_module_type_on_http_filter_response_trailers_status = u32;
pub mod trailers_status {
    pub const Continue: u32 = 0;
    pub const StopIteration: u32 = 1;
}

/// Return value of the optional `on_http_filter_local_reply` hook.
pub type envoy_dynamic_module_type_on_http_filter_local_reply_status = u32;
pub mod local_reply_status {
    /// Let the local reply be sent.
    pub const Continue: u32 = 0;
    /// Inform the remaining filters, then reset the stream instead of sending the reply.
    pub const ContinueAndResetStream: u32 = 1;
}

// ---------------------------------------------------------------------------------------------
// Callbacks: implemented by Envoy, called by the module.
// All names below are exported (`nm -D --defined-only`) by the target Envoy binary.
// ---------------------------------------------------------------------------------------------

extern "C" {
    // ----- logging (process-wide, any thread) -----

    /// Emit `message` on Envoy's `dynamic_modules` logger at `level`. Message bytes are copied.
    /// Kept for compatibility; `log_v2` is the newer variant with a source location.
    pub fn envoy_dynamic_module_callback_log(
        level: envoy_dynamic_module_type_log_level,
        message: envoy_dynamic_module_type_module_buffer,
    );

    /// Like `log`, but also reports the module's own source file and line. `source_file` may be
    /// the null buffer. Both buffers are only read during the call.
    pub fn envoy_dynamic_module_callback_log_v2(
        level: envoy_dynamic_module_type_log_level,
        message: envoy_dynamic_module_type_module_buffer,
        source_file: envoy_dynamic_module_type_module_buffer,
        source_line: u32,
    );

    /// Cheap check whether a message at `level` would be emitted (avoid formatting otherwise).
    pub fn envoy_dynamic_module_callback_log_enabled(
        level: envoy_dynamic_module_type_log_level,
    ) -> bool;

    /// Current effective level of the `dynamic_modules` logger.
    pub fn envoy_dynamic_module_callback_get_log_level() -> envoy_dynamic_module_type_log_level;

    // ----- headers (per stream, worker thread, inside hooks) -----

    /// Number of entries (a multi-valued name counts once per value) in the chosen header map;
    /// 0 if that map does not exist (yet).
    pub fn envoy_dynamic_module_callback_http_get_headers_size(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
        header_type: envoy_dynamic_module_type_http_header_type,
    ) -> usize;

    /// Fill `result_headers` (caller-allocated, at least `get_headers_size` entries) with views on
    /// every header. Views stay valid until the current hook returns or the map is modified.
    pub fn envoy_dynamic_module_callback_http_get_headers(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
        header_type: envoy_dynamic_module_type_http_header_type,
        result_headers: *mut envoy_dynamic_module_type_envoy_http_header,
    ) -> bool;

    /// Look up the `index`-th value of header `key` (name is matched lower-case). On a miss the
    /// result is set to the null buffer. `optional_size` (nullable) receives the number of values
    /// for `key`. Value view lifetime: as for `get_headers`.
    pub fn envoy_dynamic_module_callback_http_get_header(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
        header_type: envoy_dynamic_module_type_http_header_type,
        key: envoy_dynamic_module_type_module_buffer,
        result_buffer: *mut envoy_dynamic_module_type_envoy_buffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;

    /// Replace all values of `key` with `value` (both copied). There is no separate "remove"
    /// callback for HTTP filters: a `value` with null ptr *or zero length* removes the header.
    /// Consequence: an empty header value cannot be set with this call.
    pub fn envoy_dynamic_module_callback_http_set_header(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
        header_type: envoy_dynamic_module_type_http_header_type,
        key: envoy_dynamic_module_type_module_buffer,
        value: envoy_dynamic_module_type_module_buffer,
    ) -> bool;

    /// Append one more value for `key` (copied). Returns false for an empty/null value.
    pub fn envoy_dynamic_module_callback_http_add_header(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
        header_type: envoy_dynamic_module_type_http_header_type,
        key: envoy_dynamic_module_type_module_buffer,
        value: envoy_dynamic_module_type_module_buffer,
    ) -> bool;

    /// Has Envoy pick the route again for the request (its headers changed): a no-op
    /// outside the request's decoding.
    pub fn envoy_dynamic_module_callback_http_clear_route_cache(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
    );

    // ----- attributes -----

    /// Read a string attribute (see `attribute_id`). The result views Envoy-owned memory valid
    /// until the current hook returns. False if unavailable or not a string attribute.
    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
        attribute_id: envoy_dynamic_module_type_attribute_id,
        result: *mut envoy_dynamic_module_type_envoy_buffer,
    ) -> bool;

    /// Read an integer attribute (e.g. `attribute_id::SourcePort`).
    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
        attribute_id: envoy_dynamic_module_type_attribute_id,
        result: *mut u64,
    ) -> bool;

    // ----- bodies -----

    /// Number of slices of the chosen body buffer (0 if that buffer does not exist).
    pub fn envoy_dynamic_module_callback_http_get_body_chunks_size(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
        body_type: envoy_dynamic_module_type_http_body_type,
    ) -> usize;

    /// Fill `result_buffer_vector` (caller-allocated, `get_body_chunks_size` entries) with views on
    /// the slices, in order. Valid until the hook returns or the body is modified. False if the
    /// buffer does not exist.
    pub fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
        body_type: envoy_dynamic_module_type_http_body_type,
        result_buffer_vector: *mut envoy_dynamic_module_type_envoy_buffer,
    ) -> bool;

    /// Total byte length of the chosen body buffer (0 if it does not exist).
    pub fn envoy_dynamic_module_callback_http_get_body_size(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
        body_type: envoy_dynamic_module_type_http_body_type,
    ) -> usize;

    /// Remove up to `number_of_bytes` from the *front* of the chosen buffer. False if it does not
    /// exist.
    pub fn envoy_dynamic_module_callback_http_drain_body(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
        body_type: envoy_dynamic_module_type_http_body_type,
        number_of_bytes: usize,
    ) -> bool;

    /// Append `data` (copied) at the *end* of the chosen buffer. For a Buffered* type that does
    /// not exist yet, Envoy creates it. There is no prepend: to rewrite a prefix, drain the whole
    /// buffer and append the new prefix followed by the saved rest.
    pub fn envoy_dynamic_module_callback_http_append_body(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
        body_type: envoy_dynamic_module_type_http_body_type,
        data: envoy_dynamic_module_type_module_buffer,
    ) -> bool;

    /// True when the chunk passed to the running request-body hook *is* the buffered body (a
    /// previous filter buffered and then resumed), i.e. Received and Buffered are the same object.
    pub fn envoy_dynamic_module_callback_http_received_buffered_request_body(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
    ) -> bool;

    /// Response-direction counterpart of `received_buffered_request_body`.
    pub fn envoy_dynamic_module_callback_http_received_buffered_response_body(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
    ) -> bool;

    // ----- local reply / flow control -----

    /// Send a local reply (Envoy's sendLocalReply) with `status_code`, extra headers (copied,
    /// names lower-cased, added on top of the ones Envoy generates), `body` (copied) and
    /// `details` (response code details; empty => "dynamic_module"). `headers_vector` may be null
    /// when `headers_vector_size` is 0. After it, return a Stop* status from the current hook.
    pub fn envoy_dynamic_module_callback_http_send_response(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
        status_code: u32,
        headers_vector: *mut envoy_dynamic_module_type_module_http_header,
        headers_vector_size: usize,
        body: envoy_dynamic_module_type_module_buffer,
        details: envoy_dynamic_module_type_module_buffer,
    );

    /// Resume request processing after a hook returned a Stop* status.
    pub fn envoy_dynamic_module_callback_http_filter_continue_decoding(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
    );

    /// Resume response processing after a hook returned a Stop* status.
    pub fn envoy_dynamic_module_callback_http_filter_continue_encoding(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
    );

    // ----- per-stream scheduler -----

    /// Create a scheduler bound to this stream. Call on the stream's worker thread (e.g. in a
    /// hook). The module owns the handle and must `scheduler_delete` it.
    pub fn envoy_dynamic_module_callback_http_filter_scheduler_new(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
    ) -> envoy_dynamic_module_type_http_filter_scheduler_module_ptr;

    /// From any thread: post `event_id` to the stream's worker thread, where
    /// `on_http_filter_scheduled` runs. Silently dropped once the stream is gone.
    pub fn envoy_dynamic_module_callback_http_filter_scheduler_commit(
        scheduler_module_ptr: envoy_dynamic_module_type_http_filter_scheduler_module_ptr,
        event_id: u64,
    );

    /// Free a per-stream scheduler handle.
    pub fn envoy_dynamic_module_callback_http_filter_scheduler_delete(
        scheduler_module_ptr: envoy_dynamic_module_type_http_filter_scheduler_module_ptr,
    );

    // ----- config-level scheduler -----

    /// Create a scheduler bound to the filter config (may be called inside `config_new`). The
    /// module owns the handle and must `config_scheduler_delete` it (e.g. in `config_destroy`).
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        filter_config_envoy_ptr: envoy_dynamic_module_type_http_filter_config_envoy_ptr,
    ) -> envoy_dynamic_module_type_http_filter_config_scheduler_module_ptr;

    /// From any thread: post `event_id` to Envoy's *main* thread, where
    /// `on_http_filter_config_scheduled` runs. Dropped once the config is gone.
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler_module_ptr: envoy_dynamic_module_type_http_filter_config_scheduler_module_ptr,
        event_id: u64,
    );

    /// Free a config-level scheduler handle.
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
        scheduler_module_ptr: envoy_dynamic_module_type_http_filter_config_scheduler_module_ptr,
    );

    // ----- config-level HTTP callout -----

    /// Start a one-shot HTTP request to `cluster_name` not tied to any stream. Must be called on
    /// the main thread (e.g. from `on_http_filter_config_scheduled`). `headers` must include
    /// `:method`, `:path` and `host`; headers and body are copied (content-length is set when the
    /// body is non-empty). On `Success`, `*callout_id_out` holds an Envoy-chosen id that is later
    /// passed to `on_http_filter_config_http_callout_done` (on the main thread).
    pub fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        filter_config_envoy_ptr: envoy_dynamic_module_type_http_filter_config_envoy_ptr,
        callout_id_out: *mut u64,
        cluster_name: envoy_dynamic_module_type_module_buffer,
        headers: *mut envoy_dynamic_module_type_module_http_header,
        headers_size: usize,
        body: envoy_dynamic_module_type_module_buffer,
        timeout_milliseconds: u64,
    ) -> envoy_dynamic_module_type_http_callout_init_result;

    // ----- metrics (definitions only inside on_http_filter_config_new) -----

    /// Define a counter named `name` (under the "<metrics_namespace>." scope) with optional label
    /// names (`label_names` may be null when `label_names_length` is 0). Writes an id usable with
    /// both the config-level and the per-stream increment calls. Returns `Frozen` outside
    /// `config_new`.
    pub fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        filter_config_envoy_ptr: envoy_dynamic_module_type_http_filter_config_envoy_ptr,
        name: envoy_dynamic_module_type_module_buffer,
        label_names: *mut envoy_dynamic_module_type_module_buffer,
        label_names_length: usize,
        counter_id_ptr: *mut usize,
    ) -> envoy_dynamic_module_type_metrics_result;

    /// Define a gauge; same rules as `define_counter`. Gauges are created in Accumulate mode.
    pub fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        filter_config_envoy_ptr: envoy_dynamic_module_type_http_filter_config_envoy_ptr,
        name: envoy_dynamic_module_type_module_buffer,
        label_names: *mut envoy_dynamic_module_type_module_buffer,
        label_names_length: usize,
        gauge_id_ptr: *mut usize,
    ) -> envoy_dynamic_module_type_metrics_result;

    /// Add `value` to counter `id` through the config (no stream needed, e.g. from a scheduled
    /// event). `label_values_length` must equal the number of label names defined (0 for none).
    pub fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        filter_config_envoy_ptr: envoy_dynamic_module_type_http_filter_config_envoy_ptr,
        id: usize,
        label_values: *mut envoy_dynamic_module_type_module_buffer,
        label_values_length: usize,
        value: u64,
    ) -> envoy_dynamic_module_type_metrics_result;

    /// Set gauge `id` to `value` through the config.
    pub fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        filter_config_envoy_ptr: envoy_dynamic_module_type_http_filter_config_envoy_ptr,
        id: usize,
        label_values: *mut envoy_dynamic_module_type_module_buffer,
        label_values_length: usize,
        value: u64,
    ) -> envoy_dynamic_module_type_metrics_result;

    /// Per-stream variant of `config_increment_counter`; `id` is the id returned by
    /// `config_define_counter` on the config that created this stream's filter.
    pub fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
        id: usize,
        label_values: *mut envoy_dynamic_module_type_module_buffer,
        label_values_length: usize,
        value: u64,
    ) -> envoy_dynamic_module_type_metrics_result;

    /// Per-stream variant of `config_set_gauge`.
    pub fn envoy_dynamic_module_callback_http_filter_set_gauge(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
        id: usize,
        label_values: *mut envoy_dynamic_module_type_module_buffer,
        label_values_length: usize,
        value: u64,
    ) -> envoy_dynamic_module_type_metrics_result;
}

// ---------------------------------------------------------------------------------------------
// Hooks: exported by the module, called by Envoy. Implement each as
// `#[no_mangle] pub unsafe extern "C" fn <symbol>(...)` with exactly the signature of the alias.
// "REQUIRED" = Envoy fails the filter config load if the symbol is missing.
// ---------------------------------------------------------------------------------------------

/// `envoy_dynamic_module_on_program_init` — REQUIRED (for any module). Main thread, once per
/// process when the .so is first loaded. Return `ENVOY_DYNAMIC_MODULES_ABI_VERSION.as_ptr()`;
/// null aborts the load.
pub type HookProgramInit =
    unsafe extern "C" fn() -> envoy_dynamic_module_type_abi_version_module_ptr;

/// `envoy_dynamic_module_on_http_filter_config_new` — REQUIRED. Main thread. `name` is the
/// `filter_name` field, `config` the decoded `filter_config` bytes; both are only valid during the
/// call (copy them). Return a non-null module config pointer, or null to reject the config.
pub type HookHttpFilterConfigNew =
    unsafe extern "C" fn(
        filter_config_envoy_ptr: envoy_dynamic_module_type_http_filter_config_envoy_ptr,
        name: envoy_dynamic_module_type_envoy_buffer,
        config: envoy_dynamic_module_type_envoy_buffer,
    ) -> envoy_dynamic_module_type_http_filter_config_module_ptr;

/// `envoy_dynamic_module_on_http_filter_config_destroy` — REQUIRED. Main thread. Free the config.
pub type HookHttpFilterConfigDestroy = unsafe extern "C" fn(
    filter_config_ptr: envoy_dynamic_module_type_http_filter_config_module_ptr,
);

/// `envoy_dynamic_module_on_http_filter_per_route_config_new` — required only if a
/// `DynamicModuleFilterPerRoute` config references the module. Return null to reject.
pub type HookHttpFilterPerRouteConfigNew =
    unsafe extern "C" fn(
        name: envoy_dynamic_module_type_envoy_buffer,
        config: envoy_dynamic_module_type_envoy_buffer,
    ) -> envoy_dynamic_module_type_http_filter_per_route_config_module_ptr;

/// `envoy_dynamic_module_on_http_filter_per_route_config_destroy` — as above.
pub type HookHttpFilterPerRouteConfigDestroy = unsafe extern "C" fn(
    filter_config_ptr: envoy_dynamic_module_type_http_filter_per_route_config_module_ptr,
);

/// `envoy_dynamic_module_on_http_filter_new` — REQUIRED. Worker thread, once per stream. Return
/// the per-stream module object (null is treated as failure of that stream's filter).
pub type HookHttpFilterNew =
    unsafe extern "C" fn(
        filter_config_ptr: envoy_dynamic_module_type_http_filter_config_module_ptr,
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
    ) -> envoy_dynamic_module_type_http_filter_module_ptr;

/// `envoy_dynamic_module_on_http_filter_request_headers` — REQUIRED. Returns `headers_status::*`.
pub type HookHttpFilterRequestHeaders =
    unsafe extern "C" fn(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
        filter_module_ptr: envoy_dynamic_module_type_http_filter_module_ptr,
        end_of_stream: bool,
    ) -> envoy_dynamic_module_type_on_http_filter_request_headers_status;

/// `envoy_dynamic_module_on_http_filter_request_body` — REQUIRED. Returns `body_status::*`.
/// The new chunk is accessible as `ReceivedRequestBody` only during this call.
pub type HookHttpFilterRequestBody =
    unsafe extern "C" fn(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
        filter_module_ptr: envoy_dynamic_module_type_http_filter_module_ptr,
        end_of_stream: bool,
    ) -> envoy_dynamic_module_type_on_http_filter_request_body_status;

/// `envoy_dynamic_module_on_http_filter_request_trailers` — REQUIRED. Returns `trailers_status::*`.
pub type HookHttpFilterRequestTrailers =
    unsafe extern "C" fn(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
        filter_module_ptr: envoy_dynamic_module_type_http_filter_module_ptr,
    ) -> envoy_dynamic_module_type_on_http_filter_request_trailers_status;

/// `envoy_dynamic_module_on_http_filter_response_headers` — REQUIRED. Returns `headers_status::*`.
/// Not called for the filter's own local reply (send_response).
pub type HookHttpFilterResponseHeaders =
    unsafe extern "C" fn(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
        filter_module_ptr: envoy_dynamic_module_type_http_filter_module_ptr,
        end_of_stream: bool,
    ) -> envoy_dynamic_module_type_on_http_filter_response_headers_status;

/// `envoy_dynamic_module_on_http_filter_response_body` — REQUIRED. Returns `body_status::*`.
pub type HookHttpFilterResponseBody =
    unsafe extern "C" fn(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
        filter_module_ptr: envoy_dynamic_module_type_http_filter_module_ptr,
        end_of_stream: bool,
    ) -> envoy_dynamic_module_type_on_http_filter_response_body_status;

/// `envoy_dynamic_module_on_http_filter_response_trailers` — REQUIRED.
pub type HookHttpFilterResponseTrailers =
    unsafe extern "C" fn(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
        filter_module_ptr: envoy_dynamic_module_type_http_filter_module_ptr,
    ) -> envoy_dynamic_module_type_on_http_filter_response_trailers_status;

/// `envoy_dynamic_module_on_http_filter_stream_complete` — REQUIRED. Stream finished (before
/// access logs and before destroy).
pub type HookHttpFilterStreamComplete = unsafe extern "C" fn(
    filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
    filter_module_ptr: envoy_dynamic_module_type_http_filter_module_ptr,
);

/// `envoy_dynamic_module_on_http_filter_destroy` — REQUIRED. Free the per-stream object. May be
/// deferred to a later dispatcher iteration; do not call back into Envoy with the old
/// `filter_envoy_ptr` from here.
pub type HookHttpFilterDestroy =
    unsafe extern "C" fn(filter_module_ptr: envoy_dynamic_module_type_http_filter_module_ptr);

/// `envoy_dynamic_module_on_http_filter_http_callout_done` — REQUIRED (even if unused).
/// `headers`/`body_chunks` are null/0 unless `result == http_callout_result::Success`; they are
/// Envoy-owned and valid only during the call.
pub type HookHttpFilterHttpCalloutDone = unsafe extern "C" fn(
    filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
    filter_module_ptr: envoy_dynamic_module_type_http_filter_module_ptr,
    callout_id: u64,
    result: envoy_dynamic_module_type_http_callout_result,
    headers: *mut envoy_dynamic_module_type_envoy_http_header,
    headers_size: usize,
    body_chunks: *mut envoy_dynamic_module_type_envoy_buffer,
    body_chunks_size: usize,
);

/// `envoy_dynamic_module_on_http_filter_http_stream_headers` — REQUIRED (even if unused).
pub type HookHttpFilterHttpStreamHeaders = unsafe extern "C" fn(
    filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
    filter_module_ptr: envoy_dynamic_module_type_http_filter_module_ptr,
    stream_id: u64,
    headers: *mut envoy_dynamic_module_type_envoy_http_header,
    headers_size: usize,
    end_stream: bool,
);

/// `envoy_dynamic_module_on_http_filter_http_stream_data` — REQUIRED (even if unused).
pub type HookHttpFilterHttpStreamData = unsafe extern "C" fn(
    filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
    filter_module_ptr: envoy_dynamic_module_type_http_filter_module_ptr,
    stream_id: u64,
    data: *const envoy_dynamic_module_type_envoy_buffer,
    data_count: usize,
    end_stream: bool,
);

/// `envoy_dynamic_module_on_http_filter_http_stream_trailers` — REQUIRED (even if unused).
pub type HookHttpFilterHttpStreamTrailers = unsafe extern "C" fn(
    filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
    filter_module_ptr: envoy_dynamic_module_type_http_filter_module_ptr,
    stream_id: u64,
    trailers: *mut envoy_dynamic_module_type_envoy_http_header,
    trailers_size: usize,
);

/// `envoy_dynamic_module_on_http_filter_http_stream_complete` — REQUIRED (even if unused).
pub type HookHttpFilterHttpStreamComplete = unsafe extern "C" fn(
    filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
    filter_module_ptr: envoy_dynamic_module_type_http_filter_module_ptr,
    stream_id: u64,
);

/// `envoy_dynamic_module_on_http_filter_http_stream_reset` — REQUIRED (even if unused).
pub type HookHttpFilterHttpStreamReset = unsafe extern "C" fn(
    filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
    filter_module_ptr: envoy_dynamic_module_type_http_filter_module_ptr,
    stream_id: u64,
    reason: envoy_dynamic_module_type_http_stream_reset_reason,
);

/// `envoy_dynamic_module_on_http_filter_scheduled` — REQUIRED. Worker thread of the stream, after
/// `http_filter_scheduler_commit`.
pub type HookHttpFilterScheduled = unsafe extern "C" fn(
    filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
    filter_module_ptr: envoy_dynamic_module_type_http_filter_module_ptr,
    event_id: u64,
);

/// `envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark` — REQUIRED.
pub type HookHttpFilterDownstreamAboveWriteBufferHighWatermark = unsafe extern "C" fn(
    filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
    filter_module_ptr: envoy_dynamic_module_type_http_filter_module_ptr,
);

/// `envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark` — REQUIRED.
pub type HookHttpFilterDownstreamBelowWriteBufferLowWatermark = unsafe extern "C" fn(
    filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
    filter_module_ptr: envoy_dynamic_module_type_http_filter_module_ptr,
);

/// `envoy_dynamic_module_on_http_filter_local_reply` — OPTIONAL. Told about any local reply on the
/// stream (including ones sent by other filters/Envoy). Returns `local_reply_status::*`.
pub type HookHttpFilterLocalReply =
    unsafe extern "C" fn(
        filter_envoy_ptr: envoy_dynamic_module_type_http_filter_envoy_ptr,
        filter_module_ptr: envoy_dynamic_module_type_http_filter_module_ptr,
        response_code: u32,
        details: envoy_dynamic_module_type_envoy_buffer,
        reset_imminent: bool,
    ) -> envoy_dynamic_module_type_on_http_filter_local_reply_status;

/// `envoy_dynamic_module_on_http_filter_config_scheduled` — OPTIONAL (needed to receive
/// config-scheduler events; without it commits are silently ignored). Main thread.
pub type HookHttpFilterConfigScheduled = unsafe extern "C" fn(
    filter_config_envoy_ptr: envoy_dynamic_module_type_http_filter_config_envoy_ptr,
    filter_config_ptr: envoy_dynamic_module_type_http_filter_config_module_ptr,
    event_id: u64,
);

/// `envoy_dynamic_module_on_http_filter_config_http_callout_done` — OPTIONAL (without it config
/// callout results are dropped). Main thread. Same buffer rules as the per-stream variant.
pub type HookHttpFilterConfigHttpCalloutDone = unsafe extern "C" fn(
    filter_config_envoy_ptr: envoy_dynamic_module_type_http_filter_config_envoy_ptr,
    filter_config_ptr: envoy_dynamic_module_type_http_filter_config_module_ptr,
    callout_id: u64,
    result: envoy_dynamic_module_type_http_callout_result,
    headers: *mut envoy_dynamic_module_type_envoy_http_header,
    headers_size: usize,
    body_chunks: *mut envoy_dynamic_module_type_envoy_buffer,
    body_chunks_size: usize,
);

// Optional config-level streaming-callout hooks (`envoy_dynamic_module_on_http_filter_config_
// http_stream_{headers,data,trailers,complete,reset}`) take the same parameters as the per-stream
// `HookHttpFilterHttpStream*` aliases, except that the first two are (`filter_config_envoy_ptr`,
// `filter_config_ptr`). keygate does not need them.

/// Names of the hooks Envoy resolves as mandatory when building an HTTP filter config
/// (plus `envoy_dynamic_module_on_program_init`, checked at dlopen time).
pub const REQUIRED_HTTP_FILTER_HOOKS: &[&str] = &[
    "envoy_dynamic_module_on_program_init",
    "envoy_dynamic_module_on_http_filter_config_new",
    "envoy_dynamic_module_on_http_filter_config_destroy",
    "envoy_dynamic_module_on_http_filter_new",
    "envoy_dynamic_module_on_http_filter_request_headers",
    "envoy_dynamic_module_on_http_filter_request_body",
    "envoy_dynamic_module_on_http_filter_request_trailers",
    "envoy_dynamic_module_on_http_filter_response_headers",
    "envoy_dynamic_module_on_http_filter_response_body",
    "envoy_dynamic_module_on_http_filter_response_trailers",
    "envoy_dynamic_module_on_http_filter_stream_complete",
    "envoy_dynamic_module_on_http_filter_destroy",
    "envoy_dynamic_module_on_http_filter_http_callout_done",
    "envoy_dynamic_module_on_http_filter_http_stream_headers",
    "envoy_dynamic_module_on_http_filter_http_stream_data",
    "envoy_dynamic_module_on_http_filter_http_stream_trailers",
    "envoy_dynamic_module_on_http_filter_http_stream_complete",
    "envoy_dynamic_module_on_http_filter_http_stream_reset",
    "envoy_dynamic_module_on_http_filter_scheduled",
    "envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark",
    "envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark",
];

/// Hooks Envoy looks up but tolerates missing.
pub const OPTIONAL_HTTP_FILTER_HOOKS: &[&str] = &[
    "envoy_dynamic_module_on_http_filter_local_reply",
    "envoy_dynamic_module_on_http_filter_config_scheduled",
    "envoy_dynamic_module_on_http_filter_config_http_callout_done",
    "envoy_dynamic_module_on_http_filter_config_http_stream_headers",
    "envoy_dynamic_module_on_http_filter_config_http_stream_data",
    "envoy_dynamic_module_on_http_filter_config_http_stream_trailers",
    "envoy_dynamic_module_on_http_filter_config_http_stream_complete",
    "envoy_dynamic_module_on_http_filter_config_http_stream_reset",
    // Only needed when a per-route config for the module is present:
    "envoy_dynamic_module_on_http_filter_per_route_config_new",
    "envoy_dynamic_module_on_http_filter_per_route_config_destroy",
];
