//! keygate's filter for Envoy and Istio: the proxy-wasm glue around `keygate_core`, which
//! holds every decision. `root` keeps each VM's view of the key snapshot fresh (and, in the
//! VM holding the lease, syncs it with the key-service and reports usage); `http` hands
//! each request's callbacks to the request core; `host` makes the host calls, none of which
//! panics; `metrics` keeps the Envoy stats.

mod host;
mod http;
mod metrics;
mod root;

proxy_wasm::main! {{
    crate::host::init_logging(log::LevelFilter::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(crate::root::Root::new(id))
    });
}}
