//! The host calls of the request path and of the sync, made against the proxy-wasm ABI
//! directly so that every status comes back as a value.
//!
//! The SDK's wrappers (`proxy_wasm::hostcalls`, and the `Context` methods built on them)
//! panic on any status they do not expect, and a panic aborts the worker's VM: every later
//! request on that worker would get a 503 until Envoy reloads it. Envoy does answer with
//! such statuses, for instance `NotFound` when a header map is gone because the client
//! reset the stream. Here, a failed call is an `Err` the caller decides about.

use std::ptr::null_mut;

use keygate_core::kv::{HostError, SharedData};
use keygate_core::pairs;
use keygate_core::stats::MetricKind;

/// `proxy_wasm::types::Status::Ok` and `NotFound`.
const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
/// `MapType::HttpRequestHeaders`, `MapType::HttpCallResponseHeaders`,
/// `BufferType::HttpRequestBody`, `BufferType::HttpCallResponseBody`.
const REQUEST_HEADERS: u32 = 0;
const RESPONSE_HEADERS: u32 = 2;
const CALL_RESPONSE_HEADERS: u32 = 6;
const REQUEST_BODY: u32 = 0;
const RESPONSE_BODY: u32 = 1;
const CALL_RESPONSE_BODY: u32 = 4;
/// `BufferType::PluginConfiguration`.
const PLUGIN_CONFIGURATION: u32 = 7;

// The SDK declares the same imports with its own enums for the status; the wasm
// signatures are identical (i32 everywhere), hence the allowed lint.
#[allow(clashing_extern_declarations)]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_set_buffer_bytes(
        buffer_type: u32,
        start: usize,
        size: usize,
        buffer_data: *const u8,
        buffer_size: usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_register_shared_queue(
        queue_name_data: *const u8,
        queue_name_size: usize,
        return_queue_id: *mut u32,
    ) -> u32;
    fn proxy_enqueue_shared_queue(queue_id: u32, value_data: *const u8, value_size: usize) -> u32;
    fn proxy_dequeue_shared_queue(
        queue_id: u32,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
}

fn check(status: u32) -> Result<(), HostError> {
    match status {
        OK => Ok(()),
        other => Err(HostError(other)),
    }
}

/// Takes ownership of a buffer the host allocated in this module's memory (through the
/// SDK's `proxy_on_memory_allocate`, which hands out boxed slices of exactly `size`).
///
/// # Safety
/// `data` and `size` must come from the host's answer to a call that returned `Ok`.
unsafe fn host_buffer(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: per the ABI, the host filled `size` bytes it allocated with
    // `proxy_on_memory_allocate(size)`; nothing else refers to them.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// Registers (or takes over) the shared queue `name` for this VM's root context: items
/// enqueued to it call the root's `on_queue_ready`. Returns the queue's id.
pub fn register_shared_queue(name: &str) -> Result<u32, HostError> {
    let mut id = 0;
    // SAFETY: the pointers are valid for the call.
    check(unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn enqueue_shared_queue(id: u32, value: &[u8]) -> Result<(), HostError> {
    // SAFETY: the host only reads the given range during the call.
    check(unsafe { proxy_enqueue_shared_queue(id, value.as_ptr(), value.len()) })
}

/// Takes the next item of the queue; `None` when it is empty.
pub fn dequeue_shared_queue(id: u32) -> Result<Option<Vec<u8>>, HostError> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: the pointers are valid for the call; the result is taken over below.
    match unsafe { proxy_dequeue_shared_queue(id, &mut data, &mut size) } {
        OK => Ok(Some(unsafe { host_buffer(data, size) })),
        // `Empty`.
        7 => Ok(None),
        other => Err(HostError(other)),
    }
}

/// Proxy-wasm shared data of this plugin's VMs.
pub struct Shared;

impl SharedData for Shared {
    fn get(&self, name: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        let (mut data, mut size, mut cas) = (null_mut(), 0, 0);
        // SAFETY: the pointers are valid for the call; the result is taken over below.
        let status = unsafe {
            proxy_get_shared_data(name.as_ptr(), name.len(), &mut data, &mut size, &mut cas)
        };
        match status {
            OK => Ok(Some((unsafe { host_buffer(data, size) }, cas))),
            NOT_FOUND => Ok(None),
            other => Err(HostError(other)),
        }
    }

    fn set(&self, name: &str, value: &[u8], cas: Option<u32>) -> Result<bool, HostError> {
        // SAFETY: the host only reads the given ranges during the call.
        let status = unsafe {
            proxy_set_shared_data(
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
                cas.unwrap_or(0),
            )
        };
        match status {
            OK => Ok(true),
            // `CasMismatch`.
            8 => Ok(false),
            other => Err(HostError(other)),
        }
    }
}

/// The request headers, encoded (`pairs::parse` reads them without copying).
pub fn request_headers() -> Result<Vec<u8>, HostError> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: as for `get` above.
    check(unsafe { proxy_get_header_map_pairs(REQUEST_HEADERS, &mut data, &mut size) })?;
    let buf = unsafe { host_buffer(data, size) };
    // An empty buffer is an empty map.
    Ok(if buf.is_empty() {
        pairs::encode(&[])
    } else {
        buf
    })
}

pub fn set_request_header(name: &str, value: &str) -> Result<(), HostError> {
    replace_header(REQUEST_HEADERS, name, value)
}

pub fn set_response_header(name: &str, value: &str) -> Result<(), HostError> {
    replace_header(RESPONSE_HEADERS, name, value)
}

fn replace_header(map: u32, name: &str, value: &str) -> Result<(), HostError> {
    // SAFETY: the host only reads the given ranges during the call.
    check(unsafe {
        proxy_replace_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    })
}

pub fn add_request_header(name: &str, value: &str) -> Result<(), HostError> {
    // SAFETY: the host only reads the given ranges during the call.
    check(unsafe {
        proxy_add_header_map_value(
            REQUEST_HEADERS,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

pub fn remove_request_header(name: &str) -> Result<(), HostError> {
    // SAFETY: as above.
    check(unsafe { proxy_remove_header_map_value(REQUEST_HEADERS, name.as_ptr(), name.len()) })
}

/// A property of the request (`path` is its segments), `None` if the host has none.
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
    // Segments separated by NUL bytes.
    let encoded = path.join("\0");
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: as for `get` above.
    let status =
        unsafe { proxy_get_property(encoded.as_ptr(), encoded.len(), &mut data, &mut size) };
    match status {
        OK => Ok(Some(unsafe { host_buffer(data, size) })),
        NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

fn buffer(kind: u32, start: usize, size: usize) -> Result<Vec<u8>, HostError> {
    let (mut data, mut got) = (null_mut(), 0);
    // SAFETY: as for `get` above.
    match unsafe { proxy_get_buffer_bytes(kind, start, size, &mut data, &mut got) } {
        OK => Ok(unsafe { host_buffer(data, got) }),
        // No body at all.
        NOT_FOUND => Ok(Vec::new()),
        other => Err(HostError(other)),
    }
}

/// `size` bytes of the buffered request body from byte `start`.
pub fn request_body(start: usize, size: usize) -> Result<Vec<u8>, HostError> {
    buffer(REQUEST_BODY, start, size)
}

fn replace_buffer(kind: u32, size: usize, data: &[u8]) -> Result<(), HostError> {
    // SAFETY: the host only reads the given range during the call.
    check(unsafe { proxy_set_buffer_bytes(kind, 0, size, data.as_ptr(), data.len()) })
}

/// Replaces the buffered request body (`size` bytes) with `data`.
pub fn set_request_body(size: usize, data: &[u8]) -> Result<(), HostError> {
    replace_buffer(REQUEST_BODY, size, data)
}

/// Replaces the response body chunk being handled (`size` bytes) with `data`.
pub fn set_response_body(size: usize, data: &[u8]) -> Result<(), HostError> {
    replace_buffer(RESPONSE_BODY, size, data)
}

pub fn remove_response_header(name: &str) -> Result<(), HostError> {
    // SAFETY: the host only reads the given range during the call.
    check(unsafe { proxy_remove_header_map_value(RESPONSE_HEADERS, name.as_ptr(), name.len()) })
}

/// The response body chunk being handled (`size` bytes).
pub fn response_body(size: usize) -> Result<Vec<u8>, HostError> {
    buffer(RESPONSE_BODY, 0, size)
}

/// The body of the response to the root context's HTTP call being handled.
pub fn call_response_body(size: usize) -> Result<Vec<u8>, HostError> {
    buffer(CALL_RESPONSE_BODY, 0, size)
}

/// The `:status` of that response; `None` when the call failed (reset, timeout).
pub fn call_response_status() -> Result<Option<String>, HostError> {
    header_value(CALL_RESPONSE_HEADERS, ":status")
}

/// A header of the response being handled.
pub fn response_header(name: &str) -> Result<Option<String>, HostError> {
    header_value(RESPONSE_HEADERS, name)
}

fn header_value(map: u32, name: &str) -> Result<Option<String>, HostError> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: as for `get` above.
    let status =
        unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) };
    match status {
        OK => Ok(String::from_utf8(unsafe { host_buffer(data, size) }).ok()),
        NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

/// Answers the request from the filter.
pub fn send_response(status: u32, headers: &[(&str, &str)], body: &[u8]) -> Result<(), HostError> {
    let headers = pairs::encode(headers);
    // SAFETY: the host only reads the given ranges during the call.
    check(unsafe {
        proxy_send_local_response(
            status,
            std::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

/// Sets how often the root context's `on_tick` runs (at most `u32::MAX` ms).
pub fn set_tick_period(period: std::time::Duration) -> Result<(), HostError> {
    let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: no pointers.
    check(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

/// The plugin's configuration, `size` bytes (what `on_configure` was told); empty when
/// none was given.
pub fn plugin_configuration(size: usize) -> Result<Vec<u8>, HostError> {
    buffer(PLUGIN_CONFIGURATION, 0, size)
}

/// The host's clock in Unix milliseconds.
pub fn now_ms() -> Result<u64, HostError> {
    let mut nanos = 0;
    // SAFETY: the pointer is valid for the call.
    check(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) })?;
    Ok(nanos / 1_000_000)
}

/// Defines a stat; its id is what `increment_metric` and `record_metric` take.
pub fn define_metric(kind: MetricKind, name: &str) -> Result<u32, HostError> {
    // `proxy_wasm::types::MetricType`.
    let kind = match kind {
        MetricKind::Counter => 0,
        MetricKind::Gauge => 1,
    };
    let mut id = 0;
    // SAFETY: the host only reads the name during the call; `id` is valid for it.
    check(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, n: i64) -> Result<(), HostError> {
    // SAFETY: no pointers.
    check(unsafe { proxy_increment_metric(id, n) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), HostError> {
    // SAFETY: no pointers.
    check(unsafe { proxy_record_metric(id, value) })
}

/// Writes to Envoy's log (`proxy_wasm::types::LogLevel`'s numbering). A log line that
/// cannot be written is lost; nothing else happens.
fn log(level: u32, message: &str) {
    // SAFETY: the host only reads the message during the call.
    let _ = unsafe { proxy_log(level, message.as_ptr(), message.len()) };
}

/// The `log` crate's lines go to Envoy's log, through `log` above (the SDK's logger
/// panics when the host refuses a line).
struct HostLogger;

static LOGGER: HostLogger = HostLogger;

impl ::log::Log for HostLogger {
    fn enabled(&self, metadata: &::log::Metadata) -> bool {
        metadata.level() <= ::log::max_level()
    }

    fn log(&self, record: &::log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            ::log::Level::Trace => 0,
            ::log::Level::Debug => 1,
            ::log::Level::Info => 2,
            ::log::Level::Warn => 3,
            ::log::Level::Error => 4,
        };
        log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

/// Sends the filter's log lines to Envoy at `level` and up, and says why before a panic
/// aborts the VM.
pub fn init_logging(level: ::log::LevelFilter) {
    // Set once per VM; a second call keeps the first logger.
    let _ = ::log::set_logger(&LOGGER);
    ::log::set_max_level(level);
    std::panic::set_hook(Box::new(|info| {
        // `Critical`.
        log(5, &format!("keygate panicked: {info}"));
    }));
}

/// Sends an HTTP call through an Envoy cluster; its answer comes to the root context's
/// `on_http_call_response` with the returned token.
///
/// The one call left to the SDK: the SDK routes the answer to the context that made the
/// call by a registry only its own `dispatch_http_call` can add to (an answer it cannot
/// route aborts the VM). That wrapper panics on a status other than `Ok`, `BadArgument`
/// and `InternalFailure`, the statuses Envoy's `httpCall` answers with.
pub fn dispatch_http_call(
    cluster: &str,
    headers: Vec<(&str, &str)>,
    body: Option<&[u8]>,
    timeout: std::time::Duration,
) -> Result<u32, HostError> {
    proxy_wasm::hostcalls::dispatch_http_call(cluster, headers, body, vec![], timeout)
        .map_err(|status| HostError(status as u32))
}

/// Makes the HTTP context `id` the one later calls act on (from the root context, which
/// decides held requests).
pub fn set_effective_context(id: u32) -> Result<(), HostError> {
    // SAFETY: no pointers.
    check(unsafe { proxy_set_effective_context(id) })
}

/// Lets the effective context's paused request go on.
pub fn resume_request() -> Result<(), HostError> {
    // SAFETY: no pointers; `StreamType::HttpRequest`.
    check(unsafe { proxy_continue_stream(0) })
}
