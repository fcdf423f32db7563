//! keygate: an API-key gate for LLM traffic, as a proxy-wasm filter for Envoy and Istio.
//!
//! The decision logic lives in plain modules with native unit tests; the proxy-wasm glue
//! (`root`, `http`) only gathers inputs from the host, calls them and applies the result.

pub mod client_ip;
pub mod config;
pub mod credential;
pub mod decision;
pub mod entry;
pub mod include_usage;
pub mod kv;
pub mod ledger;
pub mod model;
pub mod model_list;
pub mod pairs;
pub mod pricing;
pub mod rate;
pub mod report;
pub mod request;
pub mod request_id;
pub mod route;
pub mod secret;
pub mod shared;
pub mod snapshot;
pub mod usage;

// The proxy-wasm glue. It is left out of the `wasm32-unknown-unknown` build, which exists
// only to run the pure modules' tests in Node's V8 (wasm-bindgen-test), where no proxy
// host provides the `env` imports the SDK needs.
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
mod glue {
    proxy_wasm::main! {{
        crate::host::init_logging(log::LevelFilter::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
            Box::new(crate::root::Root::default())
        });
    }}
}
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
mod host;
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
mod http;
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
mod metrics;
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
mod root;
