//! keygate as an Envoy dynamic module (`libkeygate_native.so`): the same request core and
//! root as the Wasm filter (`keygate_core`), driven through Envoy's dynamic-module C ABI
//! instead of proxy-wasm. This file holds the hooks Envoy calls; each hands over at once.
//!
//! - `abi`: the ABI's declarations, written for Envoy 1.40 (ABI "v0.2.0").
//! - `envoy`: safe calls over them.
//! - `store`: the process's shared data (what proxy-wasm's shared data is to Wasm VMs).
//! - `gate`: one filter configuration and its root on Envoy's main thread.
//! - `stream`: one request on a worker, and the worker's state.
//!
//! A panic that reached Envoy would abort it, with every request it holds (there is no VM
//! to lose instead). The core is written not to panic (the workspace's lints refuse
//! `unwrap`, `expect` and `panic!`), every hook checks its pointers, and every hook runs
//! inside `contained`: the module is built with `panic = "unwind"` (Cargo profile
//! `native`), so a panic that gets through anyway (a bug) ends at the hook's edge, logged,
//! and the request it served is refused with `internal_error` or let finish.

#![allow(clippy::missing_safety_doc)]

pub mod abi;
mod envoy;
mod gate;
pub mod store;
mod stream;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use keygate_core::config::Config;
use keygate_core::root::Reply;

use abi::*;
use envoy::{ConfigHandle, Filter};
use gate::{Gate, ROOTS};
use stream::Stream;

/// Runs `f`, containing a panic: it is logged (Envoy's stderr has where it happened) and
/// `None` returned, so that it never unwinds into Envoy.
pub(crate) fn contained<T>(what: &str, f: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(value) => Some(value),
        Err(_) => {
            log::error!("a bug in keygate: a panic in {what} was contained");
            None
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const std::ffi::c_char {
    envoy::init_logging();
    ENVOY_DYNAMIC_MODULES_ABI_VERSION.as_ptr().cast()
}

static NEXT_GATE: AtomicU64 = AtomicU64::new(1);

/// # Safety
/// Envoy's buffers are valid during the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: envoy_dynamic_module_type_http_filter_config_envoy_ptr,
    _name: envoy_dynamic_module_type_envoy_buffer,
    config: envoy_dynamic_module_type_envoy_buffer,
) -> envoy_dynamic_module_type_http_filter_config_module_ptr {
    // Null: Envoy refuses the configuration.
    contained("a new configuration", || {
        // SAFETY: as this function's.
        unsafe { config_new(config_envoy, config) }
    })
    .unwrap_or(std::ptr::null())
}

/// # Safety
/// Envoy's buffers are valid during the call.
unsafe fn config_new(
    config_envoy: envoy_dynamic_module_type_http_filter_config_envoy_ptr,
    config: envoy_dynamic_module_type_envoy_buffer,
) -> envoy_dynamic_module_type_http_filter_config_module_ptr {
    // SAFETY: Envoy's buffer, valid during the call.
    let raw = unsafe { envoy::copy(config.ptr, config.length) };
    let config = match Config::parse(Some(&raw)) {
        Ok(config) => config,
        Err(e) => {
            log::error!("{e}");
            return std::ptr::null();
        }
    };
    let token = config.token(|name| std::env::var(name).ok());
    if token.is_none() {
        log::warn!(
            "no filter token: neither key_service_token nor the environment variable {} is set; \
             the key-service will refuse the snapshot",
            config.token_env
        );
    }
    let id = NEXT_GATE.fetch_add(1, Ordering::Relaxed);
    let gate = Arc::new(Gate::new(id, config, ConfigHandle(config_envoy)));
    ROOTS.with(|roots| {
        if let Ok(mut roots) = roots.try_borrow_mut() {
            roots.add(&gate, token);
        }
    });
    gate.start();
    Box::into_raw(Box::new(gate)) as *const c_void
}

/// # Safety
/// `config` is what `config_new` returned.
unsafe fn gate<'a>(
    config: envoy_dynamic_module_type_http_filter_config_module_ptr,
) -> Option<&'a Arc<Gate>> {
    // SAFETY: made by `config_new` from a `Box<Arc<Gate>>`, alive until `config_destroy`.
    unsafe { config.cast::<Arc<Gate>>().as_ref() }
}

/// # Safety
/// `config` is what `config_new` returned, destroyed once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(
    config: envoy_dynamic_module_type_http_filter_config_module_ptr,
) {
    if config.is_null() {
        return;
    }
    // SAFETY: made by `config_new` from a `Box<Arc<Gate>>`; Envoy destroys it once.
    let gate = unsafe { Box::from_raw(config.cast::<Arc<Gate>>().cast_mut()) };
    contained("a configuration's end", || {
        gate.stop();
        ROOTS.with(|roots| {
            if let Ok(mut roots) = roots.try_borrow_mut() {
                roots.remove(gate.id);
            }
        });
    });
}

/// Work for the roots: an event of the config scheduler, or an answer to a callout.
enum Deferral {
    Event(u64),
    Answer(u64, Reply),
}

thread_local! {
    /// Work that came while the roots were busy (a callout answered from within the hook
    /// that made it), done by that hook before it returns.
    static DEFERRED: RefCell<VecDeque<(Arc<Gate>, Deferral)>> = const { RefCell::new(VecDeque::new()) };
}

/// Does `deferral` on the roots now, or after the hook that holds them. A panic in one
/// piece of work makes that root start over (`Roots::restart`).
fn on_roots(gate: &Arc<Gate>, deferral: Deferral) {
    DEFERRED.with(|d| d.borrow_mut().push_back((Arc::clone(gate), deferral)));
    ROOTS.with(|roots| {
        let Ok(mut roots) = roots.try_borrow_mut() else {
            return;
        };
        while let Some((gate, deferral)) = DEFERRED.with(|d| d.borrow_mut().pop_front()) {
            let roots = &mut *roots;
            if contained("the root's work", || run(roots, &gate, deferral)).is_none() {
                roots.restart(&gate);
            }
        }
    });
}

fn run(roots: &mut gate::Roots, gate: &Gate, deferral: Deferral) {
    match deferral {
        Deferral::Event(event) => roots.scheduled(gate, event),
        Deferral::Answer(id, reply) => roots.answered(gate, id, reply),
    }
}

/// # Safety
/// Called by Envoy on the main thread with its configuration.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy: envoy_dynamic_module_type_http_filter_config_envoy_ptr,
    config: envoy_dynamic_module_type_http_filter_config_module_ptr,
    event: u64,
) {
    // SAFETY: per the ABI.
    if let Some(gate) = unsafe { gate(config) } {
        contained("the root's work", || on_roots(gate, Deferral::Event(event)));
    }
}

/// # Safety
/// Envoy's headers and body chunks are valid during the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: envoy_dynamic_module_type_http_filter_config_envoy_ptr,
    config: envoy_dynamic_module_type_http_filter_config_module_ptr,
    callout_id: u64,
    result: envoy_dynamic_module_type_http_callout_result,
    headers: *mut envoy_dynamic_module_type_envoy_http_header,
    headers_size: usize,
    body_chunks: *mut envoy_dynamic_module_type_envoy_buffer,
    body_chunks_size: usize,
) {
    // SAFETY: per the ABI.
    let Some(gate) = (unsafe { gate(config) }) else {
        return;
    };
    contained("a callout's answer", || {
        // SAFETY: as this function's.
        let reply =
            unsafe { callout_reply(result, headers, headers_size, body_chunks, body_chunks_size) };
        on_roots(gate, Deferral::Answer(callout_id, reply));
    });
}

/// # Safety
/// Envoy's headers and body chunks are valid during the call.
unsafe fn callout_reply(
    result: envoy_dynamic_module_type_http_callout_result,
    headers: *mut envoy_dynamic_module_type_envoy_http_header,
    headers_size: usize,
    body_chunks: *mut envoy_dynamic_module_type_envoy_buffer,
    body_chunks_size: usize,
) -> Reply {
    let mut status = None;
    let mut body = Vec::new();
    if result == http_callout_result::Success {
        if !headers.is_null() {
            // SAFETY: Envoy's array of `headers_size` entries, valid during the call.
            let headers = unsafe { std::slice::from_raw_parts(headers, headers_size) };
            for h in headers {
                // SAFETY: Envoy's views, valid during the call.
                let name = unsafe { envoy::copy(h.key_ptr, h.key_length) };
                if name == b":status" {
                    // SAFETY: as above.
                    let value = unsafe { envoy::copy(h.value_ptr, h.value_length) };
                    status = std::str::from_utf8(&value)
                        .ok()
                        .and_then(|s| s.parse().ok());
                }
            }
        }
        if !body_chunks.is_null() {
            // SAFETY: Envoy's array of `body_chunks_size` views, valid during the call.
            let chunks = unsafe { std::slice::from_raw_parts(body_chunks, body_chunks_size) };
            for chunk in chunks {
                // SAFETY: as above.
                body.extend(unsafe { envoy::copy(chunk.ptr, chunk.length) });
            }
        }
    }
    Reply { status, body }
}

/// # Safety
/// `config` is what `config_new` returned.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: envoy_dynamic_module_type_http_filter_config_module_ptr,
    filter_envoy: envoy_dynamic_module_type_http_filter_envoy_ptr,
) -> envoy_dynamic_module_type_http_filter_module_ptr {
    // SAFETY: per the ABI.
    let Some(gate) = (unsafe { gate(config) }) else {
        return std::ptr::null();
    };
    // Null (a panic): the stream's request is refused (`request_headers`).
    contained("a new stream", || {
        Box::into_raw(Box::new(Stream::new(gate, Filter(filter_envoy)))) as *const c_void
    })
    .unwrap_or(std::ptr::null())
}

/// # Safety
/// `stream` is what `http_filter_new` returned, on its worker, before its destroy.
unsafe fn stream<'a>(
    stream: envoy_dynamic_module_type_http_filter_module_ptr,
) -> Option<&'a mut Stream> {
    // SAFETY: made by `http_filter_new` from a `Box<Stream>`; Envoy calls one hook at a
    // time per stream, on its worker.
    unsafe { stream.cast::<Stream>().cast_mut().as_mut() }
}

/// # Safety
/// Per the ABI.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter: envoy_dynamic_module_type_http_filter_envoy_ptr,
    module: envoy_dynamic_module_type_http_filter_module_ptr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: per the ABI.
    match unsafe { stream(module) } {
        Some(s) => s.request_headers(end_of_stream),
        // No stream of ours (its making failed): refused, never let through unchecked.
        // (Envoy 1.40 does not call a hook with null: it answers 500 itself.)
        None => {
            stream::refuse_failed(Filter(filter));
            headers_status::StopIteration
        }
    }
}

/// # Safety
/// Per the ABI.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter: envoy_dynamic_module_type_http_filter_envoy_ptr,
    module: envoy_dynamic_module_type_http_filter_module_ptr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: per the ABI.
    unsafe { stream(module) }.map_or(body_status::Continue, |s| s.request_body(end_of_stream))
}

/// # Safety
/// Per the ABI.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter: envoy_dynamic_module_type_http_filter_envoy_ptr,
    module: envoy_dynamic_module_type_http_filter_module_ptr,
) -> u32 {
    // SAFETY: per the ABI.
    unsafe { stream(module) }.map_or(trailers_status::Continue, |s| s.request_trailers())
}

/// # Safety
/// Per the ABI.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _filter: envoy_dynamic_module_type_http_filter_envoy_ptr,
    module: envoy_dynamic_module_type_http_filter_module_ptr,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: per the ABI.
    unsafe { stream(module) }.map_or(headers_status::Continue, |s| s.response_headers())
}

/// # Safety
/// Per the ABI.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter: envoy_dynamic_module_type_http_filter_envoy_ptr,
    module: envoy_dynamic_module_type_http_filter_module_ptr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: per the ABI.
    unsafe { stream(module) }.map_or(body_status::Continue, |s| s.response_body(end_of_stream))
}

/// # Safety
/// Per the ABI.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter: envoy_dynamic_module_type_http_filter_envoy_ptr,
    _module: envoy_dynamic_module_type_http_filter_module_ptr,
) -> u32 {
    trailers_status::Continue
}

/// # Safety
/// Per the ABI.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter: envoy_dynamic_module_type_http_filter_envoy_ptr,
    module: envoy_dynamic_module_type_http_filter_module_ptr,
) {
    // SAFETY: per the ABI.
    if let Some(s) = unsafe { stream(module) } {
        s.complete();
    }
}

/// # Safety
/// `module` is what `http_filter_new` returned, destroyed once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(
    module: envoy_dynamic_module_type_http_filter_module_ptr,
) {
    if module.is_null() {
        return;
    }
    // SAFETY: made by `http_filter_new` from a `Box<Stream>`; Envoy destroys it once.
    let mut stream = unsafe { Box::from_raw(module.cast::<Stream>().cast_mut()) };
    contained("a stream's end", move || {
        stream.destroy();
        drop(stream);
    });
}

/// # Safety
/// Per the ABI.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _filter: envoy_dynamic_module_type_http_filter_envoy_ptr,
    module: envoy_dynamic_module_type_http_filter_module_ptr,
    event: u64,
) {
    // SAFETY: per the ABI.
    if let Some(s) = unsafe { stream(module) } {
        s.scheduled(event);
    }
}

// Hooks Envoy requires of an HTTP filter module that keygate has no use for: streams make
// no callouts of their own, and the filter does not watch the client's buffers.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter: envoy_dynamic_module_type_http_filter_envoy_ptr,
    _module: envoy_dynamic_module_type_http_filter_module_ptr,
    _callout_id: u64,
    _result: envoy_dynamic_module_type_http_callout_result,
    _headers: *mut envoy_dynamic_module_type_envoy_http_header,
    _headers_size: usize,
    _body_chunks: *mut envoy_dynamic_module_type_envoy_buffer,
    _body_chunks_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter: envoy_dynamic_module_type_http_filter_envoy_ptr,
    _module: envoy_dynamic_module_type_http_filter_module_ptr,
    _stream_id: u64,
    _headers: *mut envoy_dynamic_module_type_envoy_http_header,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter: envoy_dynamic_module_type_http_filter_envoy_ptr,
    _module: envoy_dynamic_module_type_http_filter_module_ptr,
    _stream_id: u64,
    _data: *const envoy_dynamic_module_type_envoy_buffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter: envoy_dynamic_module_type_http_filter_envoy_ptr,
    _module: envoy_dynamic_module_type_http_filter_module_ptr,
    _stream_id: u64,
    _trailers: *mut envoy_dynamic_module_type_envoy_http_header,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter: envoy_dynamic_module_type_http_filter_envoy_ptr,
    _module: envoy_dynamic_module_type_http_filter_module_ptr,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter: envoy_dynamic_module_type_http_filter_envoy_ptr,
    _module: envoy_dynamic_module_type_http_filter_module_ptr,
    _stream_id: u64,
    _reason: envoy_dynamic_module_type_http_stream_reset_reason,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter: envoy_dynamic_module_type_http_filter_envoy_ptr,
    _module: envoy_dynamic_module_type_http_filter_module_ptr,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter: envoy_dynamic_module_type_http_filter_envoy_ptr,
    _module: envoy_dynamic_module_type_http_filter_module_ptr,
) {
}

// The signatures above are the ABI's (checked by the compiler against `abi`'s types).
const _: HookProgramInit = envoy_dynamic_module_on_program_init;
const _: HookHttpFilterConfigNew = envoy_dynamic_module_on_http_filter_config_new;
const _: HookHttpFilterConfigDestroy = envoy_dynamic_module_on_http_filter_config_destroy;
const _: HookHttpFilterConfigScheduled = envoy_dynamic_module_on_http_filter_config_scheduled;
const _: HookHttpFilterConfigHttpCalloutDone =
    envoy_dynamic_module_on_http_filter_config_http_callout_done;
const _: HookHttpFilterNew = envoy_dynamic_module_on_http_filter_new;
const _: HookHttpFilterRequestHeaders = envoy_dynamic_module_on_http_filter_request_headers;
const _: HookHttpFilterRequestBody = envoy_dynamic_module_on_http_filter_request_body;
const _: HookHttpFilterRequestTrailers = envoy_dynamic_module_on_http_filter_request_trailers;
const _: HookHttpFilterResponseHeaders = envoy_dynamic_module_on_http_filter_response_headers;
const _: HookHttpFilterResponseBody = envoy_dynamic_module_on_http_filter_response_body;
const _: HookHttpFilterResponseTrailers = envoy_dynamic_module_on_http_filter_response_trailers;
const _: HookHttpFilterStreamComplete = envoy_dynamic_module_on_http_filter_stream_complete;
const _: HookHttpFilterDestroy = envoy_dynamic_module_on_http_filter_destroy;
const _: HookHttpFilterScheduled = envoy_dynamic_module_on_http_filter_scheduled;
const _: HookHttpFilterHttpCalloutDone = envoy_dynamic_module_on_http_filter_http_callout_done;
const _: HookHttpFilterHttpStreamHeaders = envoy_dynamic_module_on_http_filter_http_stream_headers;
const _: HookHttpFilterHttpStreamData = envoy_dynamic_module_on_http_filter_http_stream_data;
const _: HookHttpFilterHttpStreamTrailers =
    envoy_dynamic_module_on_http_filter_http_stream_trailers;
const _: HookHttpFilterHttpStreamComplete =
    envoy_dynamic_module_on_http_filter_http_stream_complete;
const _: HookHttpFilterHttpStreamReset = envoy_dynamic_module_on_http_filter_http_stream_reset;
const _: HookHttpFilterDownstreamAboveWriteBufferHighWatermark =
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark;
const _: HookHttpFilterDownstreamBelowWriteBufferLowWatermark =
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark;
