//! Envoy's side of the dynamic-module ABI as safe calls: a stream's filter (`Filter`) and a
//! filter configuration (`ConfigHandle`), the schedulers, callouts, metrics and the log.
//! Every pointer the module hands Envoy is read during the call only; every view Envoy hands
//! back is copied before the call that made it returns.

use std::ptr::{null, null_mut};

use crate::abi::*;

fn module(bytes: &[u8]) -> envoy_dynamic_module_type_module_buffer {
    envoy_dynamic_module_type_module_buffer {
        ptr: bytes.as_ptr().cast(),
        length: bytes.len(),
    }
}

const NONE: envoy_dynamic_module_type_module_buffer = envoy_dynamic_module_type_module_buffer {
    ptr: null(),
    length: 0,
};

/// Copies bytes Envoy lent.
///
/// # Safety
/// `ptr` must be valid for `len` bytes (or null).
pub unsafe fn copy(ptr: *const std::ffi::c_char, len: usize) -> Vec<u8> {
    if ptr.is_null() || len == 0 {
        return Vec::new();
    }
    // SAFETY: per the caller.
    unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) }.to_vec()
}

/// Headers as the ABI takes them, pointing into `headers` (which must outlive the call).
fn module_headers(headers: &[(&str, &str)]) -> Vec<envoy_dynamic_module_type_module_http_header> {
    headers
        .iter()
        .map(|(k, v)| envoy_dynamic_module_type_module_http_header {
            key_ptr: k.as_ptr().cast(),
            key_length: k.len(),
            value_ptr: v.as_ptr().cast(),
            value_length: v.len(),
        })
        .collect()
}

/// Borrows bytes Envoy lent.
///
/// # Safety
/// `ptr` must be valid for `len` bytes (or null) for as long as the slice is used.
unsafe fn view<'a>(ptr: *const std::ffi::c_char, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: per the caller.
    unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) }
}

/// A header map of a stream.
#[derive(Clone, Copy)]
pub enum Map {
    Request,
    Response,
}

impl Map {
    fn id(self) -> u32 {
        match self {
            Map::Request => http_header_type::RequestHeader,
            Map::Response => http_header_type::ResponseHeader,
        }
    }
}

/// A body buffer of a stream: the chunk the running hook was given, or what Envoy holds
/// because this filter asked it to buffer.
#[derive(Clone, Copy)]
pub enum Body {
    ReceivedRequest,
    BufferedRequest,
    ReceivedResponse,
    BufferedResponse,
}

impl Body {
    fn id(self) -> u32 {
        match self {
            Body::ReceivedRequest => http_body_type::ReceivedRequestBody,
            Body::BufferedRequest => http_body_type::BufferedRequestBody,
            Body::ReceivedResponse => http_body_type::ReceivedResponseBody,
            Body::BufferedResponse => http_body_type::BufferedResponseBody,
        }
    }
}

/// One stream's filter in Envoy. Valid from `on_http_filter_new` until the stream's
/// `on_http_filter_destroy`, on the stream's worker thread only.
#[derive(Clone, Copy)]
pub struct Filter(pub envoy_dynamic_module_type_http_filter_envoy_ptr);

impl Filter {
    /// Every header of a map, in order (a name with several values once per value),
    /// encoded as `keygate_core::pairs` reads them: one copy, straight from Envoy's views.
    pub fn headers_encoded(self, map: Map) -> Option<Vec<u8>> {
        // SAFETY: the filter is alive on this thread (the type's contract).
        let n = unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.0, map.id()) };
        let empty = envoy_dynamic_module_type_envoy_http_header {
            key_ptr: null(),
            key_length: 0,
            value_ptr: null(),
            value_length: 0,
        };
        let mut views = vec![empty; n];
        // SAFETY: `views` holds the `n` entries Envoy fills.
        if n > 0
            && !unsafe {
                envoy_dynamic_module_callback_http_get_headers(self.0, map.id(), views.as_mut_ptr())
            }
        {
            return None;
        }
        let pairs: Vec<(&[u8], &[u8])> = views
            .iter()
            // SAFETY: Envoy's views are valid until the map changes, which it cannot
            // before they are copied below.
            .map(|h| unsafe {
                (
                    view(h.key_ptr, h.key_length),
                    view(h.value_ptr, h.value_length),
                )
            })
            .collect();
        Some(keygate_core::pairs::encode_bytes(&pairs))
    }

    /// The first value of a header.
    pub fn header(self, map: Map, name: &str) -> Option<Vec<u8>> {
        let mut value = envoy_dynamic_module_type_envoy_buffer {
            ptr: null(),
            length: 0,
        };
        // SAFETY: the name is read during the call; the view is copied at once.
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_header(
                self.0,
                map.id(),
                module(name.as_bytes()),
                &mut value,
                0,
                null_mut(),
            )
        };
        // SAFETY: as above.
        (found && !value.ptr.is_null()).then(|| unsafe { copy(value.ptr, value.length) })
    }

    /// Sets a header (all its values); an empty value removes it (the ABI's rule).
    pub fn set_header(self, map: Map, name: &str, value: &str) -> bool {
        // SAFETY: both buffers are copied during the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                map.id(),
                module(name.as_bytes()),
                module(value.as_bytes()),
            )
        }
    }

    /// Adds a value beside any the header has (an empty value is refused).
    pub fn add_header(self, map: Map, name: &str, value: &str) -> bool {
        // SAFETY: both buffers are copied during the call.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.0,
                map.id(),
                module(name.as_bytes()),
                module(value.as_bytes()),
            )
        }
    }

    pub fn remove_header(self, map: Map, name: &str) -> bool {
        // SAFETY: the name is read during the call; a null value removes the header.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                map.id(),
                module(name.as_bytes()),
                NONE,
            )
        }
    }

    /// Has Envoy pick the route again, as it does after a Wasm filter changes a request
    /// header (routes may match `x-keygate-model`).
    pub fn clear_route_cache(self) {
        // SAFETY: no pointers but the filter's.
        unsafe { envoy_dynamic_module_callback_http_clear_route_cache(self.0) }
    }

    /// The client's address as Envoy saw it ("ip:port").
    pub fn source_address(self) -> Option<Vec<u8>> {
        let mut value = envoy_dynamic_module_type_envoy_buffer {
            ptr: null(),
            length: 0,
        };
        // SAFETY: the view is copied at once.
        let found = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.0,
                attribute_id::SourceAddress,
                &mut value,
            )
        };
        // SAFETY: as above.
        found.then(|| unsafe { copy(value.ptr, value.length) })
    }

    pub fn body_size(self, body: Body) -> usize {
        // SAFETY: no pointers but the filter's.
        unsafe { envoy_dynamic_module_callback_http_get_body_size(self.0, body.id()) }
    }

    /// Appends bytes `skip..skip + take` of a body buffer to `out` (fewer if it has
    /// fewer), copied straight from Envoy's slices: a window of a large body costs the
    /// window, not the body.
    pub fn read_body(self, body: Body, skip: usize, take: usize, out: &mut Vec<u8>) -> bool {
        // SAFETY: no pointers but the filter's.
        let n =
            unsafe { envoy_dynamic_module_callback_http_get_body_chunks_size(self.0, body.id()) };
        if n == 0 || take == 0 {
            return true;
        }
        let empty = envoy_dynamic_module_type_envoy_buffer {
            ptr: null(),
            length: 0,
        };
        let mut chunks = vec![empty; n];
        // SAFETY: `chunks` holds the `n` entries Envoy fills.
        if !unsafe {
            envoy_dynamic_module_callback_http_get_body_chunks(
                self.0,
                body.id(),
                chunks.as_mut_ptr(),
            )
        } {
            return false;
        }
        let end = skip.saturating_add(take);
        let mut at = 0usize;
        for chunk in &chunks {
            // SAFETY: the views are valid until the body changes; copied now.
            let bytes = unsafe { view(chunk.ptr, chunk.length) };
            let (from, to) = (at, at.saturating_add(bytes.len()));
            at = to;
            if to <= skip {
                continue;
            }
            if from >= end {
                break;
            }
            let lo = skip.saturating_sub(from);
            let hi = end.saturating_sub(from).min(bytes.len());
            out.extend_from_slice(&bytes[lo..hi]);
        }
        true
    }

    pub fn drain_body(self, body: Body, n: usize) -> bool {
        // SAFETY: no pointers but the filter's.
        unsafe { envoy_dynamic_module_callback_http_drain_body(self.0, body.id(), n) }
    }

    pub fn append_body(self, body: Body, data: &[u8]) -> bool {
        // SAFETY: the data is copied during the call.
        unsafe { envoy_dynamic_module_callback_http_append_body(self.0, body.id(), module(data)) }
    }

    /// Whether the chunk of the running request-body hook is the buffered body itself.
    pub fn received_is_buffered(self, request: bool) -> bool {
        // SAFETY: no pointers but the filter's.
        unsafe {
            if request {
                envoy_dynamic_module_callback_http_received_buffered_request_body(self.0)
            } else {
                envoy_dynamic_module_callback_http_received_buffered_response_body(self.0)
            }
        }
    }

    /// Answers the request from the filter.
    pub fn send_response(self, status: u32, headers: &[(&str, &str)], body: &[u8], details: &str) {
        let mut pairs = module_headers(headers);
        // SAFETY: every buffer is copied during the call.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.0,
                status,
                if pairs.is_empty() {
                    null_mut()
                } else {
                    pairs.as_mut_ptr()
                },
                pairs.len(),
                module(body),
                module(details.as_bytes()),
            )
        }
    }

    /// Lets the request go on after a hook stopped it.
    pub fn continue_decoding(self) {
        // SAFETY: no pointers but the filter's.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(self.0) }
    }

    pub fn new_scheduler(self) -> StreamScheduler {
        // SAFETY: no pointers but the filter's.
        StreamScheduler(unsafe { envoy_dynamic_module_callback_http_filter_scheduler_new(self.0) })
    }
}

/// A stream's scheduler: events committed to it run `on_http_filter_scheduled` on the
/// stream's worker. Committed from any thread; deleted once, by the stream that made it
/// (copies of the handle are only committed to under the lock it is deleted under).
#[derive(Clone, Copy)]
pub struct StreamScheduler(envoy_dynamic_module_type_http_filter_scheduler_module_ptr);

// SAFETY: Envoy's scheduler may be committed to from any thread (it posts to the stream's
// dispatcher); the module deletes it only while no commit can run (under the held lock).
unsafe impl Send for StreamScheduler {}

impl StreamScheduler {
    pub fn commit(&self, event: u64) {
        // SAFETY: alive until `delete`.
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_commit(self.0, event) }
    }

    /// # Safety
    /// Once, by its stream, when no copy can be committed to any more.
    pub unsafe fn delete(self) {
        // SAFETY: per the caller.
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_delete(self.0) }
    }
}

/// A filter configuration in Envoy: its callouts and metrics, on the main thread.
#[derive(Clone, Copy)]
pub struct ConfigHandle(pub envoy_dynamic_module_type_http_filter_config_envoy_ptr);

// SAFETY: only its metric calls (atomic counters in Envoy) are made off the main thread.
unsafe impl Send for ConfigHandle {}
unsafe impl Sync for ConfigHandle {}

/// The metric kinds the ABI defines.
#[derive(Clone, Copy)]
pub enum Metric {
    Counter,
    Gauge,
}

impl ConfigHandle {
    /// Defines a metric (only while the configuration is being made).
    pub fn define(self, kind: Metric, name: &str) -> Option<u32> {
        let mut id = 0usize;
        // SAFETY: the name is copied during the call; no labels.
        let result = unsafe {
            match kind {
                Metric::Counter => envoy_dynamic_module_callback_http_filter_config_define_counter(
                    self.0,
                    module(name.as_bytes()),
                    null_mut(),
                    0,
                    &mut id,
                ),
                Metric::Gauge => envoy_dynamic_module_callback_http_filter_config_define_gauge(
                    self.0,
                    module(name.as_bytes()),
                    null_mut(),
                    0,
                    &mut id,
                ),
            }
        };
        (result == metrics_result::Success)
            .then_some(u32::try_from(id).ok())
            .flatten()
    }

    pub fn increment_counter(self, id: u32, n: u64) {
        // SAFETY: no labels.
        let _ = unsafe {
            envoy_dynamic_module_callback_http_filter_config_increment_counter(
                self.0,
                id as usize,
                null_mut(),
                0,
                n,
            )
        };
    }

    pub fn set_gauge(self, id: u32, value: u64) {
        // SAFETY: no labels.
        let _ = unsafe {
            envoy_dynamic_module_callback_http_filter_config_set_gauge(
                self.0,
                id as usize,
                null_mut(),
                0,
                value,
            )
        };
    }

    pub fn new_scheduler(self) -> ConfigScheduler {
        // SAFETY: no pointers but the configuration's.
        ConfigScheduler(unsafe {
            envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.0)
        })
    }

    /// Sends a request through a cluster (main thread); its answer comes to
    /// `on_http_filter_config_http_callout_done` with the returned id.
    pub fn callout(
        self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> Result<u64, u32> {
        let mut pairs = module_headers(headers);
        let mut id = 0u64;
        // SAFETY: every buffer is copied during the call.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_http_callout(
                self.0,
                &mut id,
                module(cluster.as_bytes()),
                pairs.as_mut_ptr(),
                pairs.len(),
                body.map_or(NONE, module),
                timeout_ms,
            )
        };
        match result {
            http_callout_init_result::Success => Ok(id),
            other => Err(other),
        }
    }
}

/// A configuration's scheduler: events committed to it (from any thread) run
/// `on_http_filter_config_scheduled` on the main thread.
pub struct ConfigScheduler(envoy_dynamic_module_type_http_filter_config_scheduler_module_ptr);

// SAFETY: Envoy's config scheduler may be committed to from any thread; it is deleted once,
// after the only other thread that commits (the timer) has stopped.
unsafe impl Send for ConfigScheduler {}
unsafe impl Sync for ConfigScheduler {}

impl ConfigScheduler {
    pub fn commit(&self, event: u64) {
        // SAFETY: alive until `delete`.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, event) }
    }

    pub fn delete(self) {
        // SAFETY: deleted once (by value).
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
    }
}

/// Envoy's log, for the `log` crate's lines.
struct EnvoyLog;

static LOG: EnvoyLog = EnvoyLog;

impl log::Log for EnvoyLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => log_level::Trace,
            log::Level::Debug => log_level::Debug,
            log::Level::Info => log_level::Info,
            log::Level::Warn => log_level::Warn,
            log::Level::Error => log_level::Error,
        };
        let line = format!("keygate: {}", record.args());
        // SAFETY: the message is copied during the call.
        unsafe { envoy_dynamic_module_callback_log(level, module(line.as_bytes())) }
    }

    fn flush(&self) {}
}

/// Sends the module's log lines to Envoy's `dynamic_modules` logger.
pub fn init_logging() {
    // Once per process; a second call keeps the first logger.
    let _ = log::set_logger(&LOG);
    log::set_max_level(log::LevelFilter::Info);
}
