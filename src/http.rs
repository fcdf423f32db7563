//! The HTTP context of one request: gathers the headers and the clock from the host,
//! asks `decision::decide`, and either answers with the OpenAI-style error or strips the
//! credential and passes the request on with the `x-keygate-*` headers set.

use std::net::IpAddr;
use std::time::UNIX_EPOCH;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::decision::{decide, Decision};
use crate::root::SharedIndex;
use crate::{client_ip, credential};

pub struct Http {
    index: SharedIndex,
}

impl Http {
    pub fn new(index: SharedIndex) -> Self {
        Http { index }
    }

    /// The client's address: asked of the host only for keys with an IP allowlist.
    fn client_ip(&self) -> Option<IpAddr> {
        let source = self.get_property(vec!["source", "address"])?;
        client_ip::parse_source_address(std::str::from_utf8(&source).ok()?)
    }

    fn now(&self) -> i64 {
        self.get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = self.get_http_request_headers();
        let index = self.index.borrow();
        let secret = credential::find(&headers);
        match decide(index.as_ref(), secret, self.now(), || self.client_ip()) {
            Decision::Deny(denial) => {
                self.send_http_response(
                    denial.status(),
                    vec![("content-type", "application/json")],
                    Some(denial.body().as_bytes()),
                );
                Action::Pause
            }
            Decision::Allow(key) => {
                for name in credential::headers_to_strip(&headers) {
                    self.set_http_request_header(name, None);
                }
                let path = headers.iter().find(|(n, _)| n == ":path");
                if let Some(stripped) = path.and_then(|(_, p)| credential::strip_query_key(p)) {
                    self.set_http_request_header(":path", Some(&stripped));
                }
                self.set_http_request_header("x-keygate-key-id", Some(&key.id));
                self.set_http_request_header("x-keygate-key-name", Some(&key.name));
                self.set_http_request_header("x-keygate-group", Some(&key.group));
                self.set_http_request_header("x-keygate-account", Some(&key.account));
                Action::Continue
            }
        }
    }
}
