//! keygate: an API-key gate for LLM traffic, as a proxy-wasm filter for Envoy and Istio.
//!
//! The decision logic lives in plain modules with native unit tests; the proxy-wasm glue
//! (`root`, `http`) only gathers inputs from the host, calls them and applies the result.

pub mod secret;
pub mod snapshot;
