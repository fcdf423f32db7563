//! The filter: see the crate's documentation.

use std::hint::black_box;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MetricType};

use crate::{CALLS, REPEAT};

/// The shared-data entry read by `get_shared_data`: about the size of a key's entry.
const ENTRY: &str = "hostcall:entry";

const HEADERS: [&str; 4] = [
    "x-keygate-key-id",
    "x-keygate-key-name",
    "x-keygate-group",
    "x-keygate-account",
];

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::<Root>::default() });
}}

#[derive(Default)]
struct Root {
    call: String,
    metric: u32,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let config: serde_json::Value = self
            .get_plugin_configuration()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .unwrap_or_default();
        self.call = config["host_call"].as_str().unwrap_or("none").to_string();
        if !CALLS.contains(&self.call.as_str()) {
            proxy_wasm::hostcalls::log(
                proxy_wasm::types::LogLevel::Error,
                &format!("unknown host_call {:?}", self.call),
            )
            .ok();
            return false;
        }
        // Every VM writes the same value: the entry exists whichever runs first.
        hostcalls::set_shared_data(ENTRY, Some(&[7; 64]), None).is_ok()
            && hostcalls::define_metric(MetricType::Counter, "hostcall_test")
                .map(|id| self.metric = id)
                .is_ok()
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            call: self.call.clone(),
            metric: self.metric,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    call: String,
    metric: u32,
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let all = self.get_http_request_headers();
        for i in 0..REPEAT {
            match self.call.as_str() {
                "get_current_time" => {
                    black_box(hostcalls::get_current_time().ok());
                }
                "get_header_map_pairs" => {
                    black_box(self.get_http_request_headers());
                }
                "get_header" => {
                    black_box(self.get_http_request_header("authorization"));
                }
                "get_shared_data" => {
                    black_box(hostcalls::get_shared_data(ENTRY).ok());
                }
                "get_shared_data, absent" => {
                    black_box(hostcalls::get_shared_data("hostcall:absent").ok());
                }
                "replace_header" => {
                    let name = HEADERS[i % HEADERS.len()];
                    self.set_http_request_header(name, Some("key_0000000000000001"));
                }
                "remove_header" => self.set_http_request_header("x-absent", None),
                "set_header_map_pairs" => {
                    let mut pairs: Vec<(&str, &str)> = all
                        .iter()
                        .filter(|(name, _)| name != "authorization")
                        .map(|(name, value)| (name.as_str(), value.as_str()))
                        .collect();
                    pairs.extend(HEADERS.map(|name| (name, "key_0000000000000001")));
                    self.set_http_request_headers(pairs);
                }
                "increment_metric" => {
                    black_box(hostcalls::increment_metric(self.metric, 1).ok());
                }
                "get_property" => {
                    black_box(self.get_property(vec!["source", "address"]));
                }
                _ => {}
            }
        }
        Action::Continue
    }
}
