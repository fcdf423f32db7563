//! A dynamic module whose HTTP filter lets every request and response through untouched:
//! the floor under keygate native in `make bench`, as the no-op Wasm filter is under the
//! Wasm build. It exports the hooks Envoy 1.40 requires (see `native/src/abi.rs`), each
//! doing nothing; the pointers Envoy passes are opaque here.

use std::ffi::{c_char, c_void};

type Ptr = *const c_void;
type MutPtr = *mut c_void;

/// Any non-null pointer: the module keeps no state, but Envoy treats null as a failure.
const SOME: Ptr = 1 as Ptr;

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    c"v0.2.0".as_ptr()
}

#[repr(C)]
pub struct Buffer {
    ptr: *const c_char,
    length: usize,
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _envoy: MutPtr,
    _name: Buffer,
    _config: Buffer,
) -> Ptr {
    SOME
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(_config: Ptr) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(_config: Ptr, _envoy: MutPtr) -> Ptr {
    SOME
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(_filter: Ptr) {}

/// Headers, body and trailers hooks: `Continue` (0) in each direction.
macro_rules! pass {
    ($($name:ident($($arg:ident: $ty:ty),*)),* $(,)?) => {
        $(
            #[no_mangle]
            pub extern "C" fn $name(_envoy: MutPtr, _filter: Ptr $(, $arg: $ty)*) -> u32 {
                $(let _ = $arg;)*
                0
            }
        )*
    };
}

pass!(
    envoy_dynamic_module_on_http_filter_request_headers(end_of_stream: bool),
    envoy_dynamic_module_on_http_filter_request_body(end_of_stream: bool),
    envoy_dynamic_module_on_http_filter_request_trailers(),
    envoy_dynamic_module_on_http_filter_response_headers(end_of_stream: bool),
    envoy_dynamic_module_on_http_filter_response_body(end_of_stream: bool),
    envoy_dynamic_module_on_http_filter_response_trailers(),
);

/// Hooks with nothing to answer.
macro_rules! ignore {
    ($($name:ident($($arg:ident: $ty:ty),*)),* $(,)?) => {
        $(
            #[no_mangle]
            pub extern "C" fn $name(_envoy: MutPtr, _filter: Ptr $(, $arg: $ty)*) {
                $(let _ = $arg;)*
            }
        )*
    };
}

ignore!(
    envoy_dynamic_module_on_http_filter_stream_complete(),
    envoy_dynamic_module_on_http_filter_scheduled(event: u64),
    envoy_dynamic_module_on_http_filter_http_callout_done(
        id: u64, result: u32, headers: MutPtr, headers_size: usize, body: MutPtr, body_size: usize
    ),
    envoy_dynamic_module_on_http_filter_http_stream_headers(
        id: u64, headers: MutPtr, headers_size: usize, end_stream: bool
    ),
    envoy_dynamic_module_on_http_filter_http_stream_data(
        id: u64, data: Ptr, data_count: usize, end_stream: bool
    ),
    envoy_dynamic_module_on_http_filter_http_stream_trailers(
        id: u64, trailers: MutPtr, trailers_size: usize
    ),
    envoy_dynamic_module_on_http_filter_http_stream_complete(id: u64),
    envoy_dynamic_module_on_http_filter_http_stream_reset(id: u64, reason: u32),
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(),
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(),
);
