//! The HTTP context of one request: each proxy-wasm callback hands over to the request core
//! (`keygate_core::request`), which decides through the `Host` implemented here over `host`'s
//! calls (none of which panics) and the VM's stats.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action as ProxyAction;

use crate::host::{self, Shared};
use crate::metrics::Metrics;
use keygate_core::kv::{HostError, SharedData};
use keygate_core::limits::credit;
use keygate_core::request::{Action, Event, Host, Plugin, Request};
use keygate_core::root::HOLD_TICK;

/// Requests of this VM waiting for its first snapshot or a credit lease, by HTTP context
/// id; the root decides them (`crate::root`).
pub type HeldRequests = Rc<RefCell<Vec<(u32, Weak<RefCell<Request>>)>>>;

/// Requests one VM holds at most; more are decided at once (503 without a snapshot, or
/// 503 `overloaded` when they wait for a lease).
const MAX_HELD: usize = 10_000;

pub struct Http {
    /// Shared with the root while the request is held.
    request: Rc<RefCell<Request>>,
    host: Envoy,
    id: u32,
    held: HeldRequests,
}

impl Http {
    pub fn new(plugin: Rc<Plugin>, metrics: Rc<Metrics>, id: u32, held: HeldRequests) -> Http {
        Http {
            request: Rc::new(RefCell::new(Request::new(plugin))),
            host: Envoy { metrics },
            id,
            held,
        }
    }

    /// Runs a callback on the request. The root may be deciding it (a held request) when
    /// Envoy calls back into this context: then there is nothing to do here.
    fn with(&self, callback: impl FnOnce(&mut Request, &Envoy) -> Action) -> ProxyAction {
        let Ok(mut request) = self.request.try_borrow_mut() else {
            return ProxyAction::Continue;
        };
        let action = match callback(&mut request, &self.host) {
            Action::Hold if self.held.borrow().len() >= MAX_HELD => {
                request.release(&self.host, false, true)
            }
            Action::Hold => {
                let waiting = (self.id, Rc::downgrade(&self.request));
                self.held.borrow_mut().push(waiting);
                // The root looks at held requests on every tick: it ticks soon (this sets
                // the root's period; the root keeps it while requests are held).
                let _ = host::set_tick_period(HOLD_TICK);
                Action::Pause
            }
            other => other,
        };
        proxy(action)
    }
}

fn proxy(action: Action) -> ProxyAction {
    match action {
        Action::Continue => ProxyAction::Continue,
        Action::Pause | Action::Hold => ProxyAction::Pause,
    }
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> ProxyAction {
        self.with(|request, host| request.on_request_headers(host, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> ProxyAction {
        self.with(|request, host| request.on_request_body(host, body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> ProxyAction {
        self.with(|request, host| request.on_request_trailers(host))
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _eos: bool) -> ProxyAction {
        self.with(|request, host| request.on_response_headers(host))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> ProxyAction {
        self.with(|request, host| request.on_response_body(host, body_size, end_of_stream))
    }

    fn on_log(&mut self) {
        if let Ok(mut request) = self.request.try_borrow_mut() {
            request.on_log(&self.host);
        }
    }
}

/// The request core's host: Envoy, through `host`, with the VM's stats.
pub struct Envoy {
    pub metrics: Rc<Metrics>,
}

impl SharedData for Envoy {
    fn get(&self, name: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        Shared.get(name)
    }

    fn set(&self, name: &str, value: &[u8], cas: Option<u32>) -> Result<bool, HostError> {
        Shared.set(name, value, cas)
    }
}

impl Host for Envoy {
    fn request_headers(&self) -> Result<Vec<u8>, HostError> {
        host::request_headers()
    }

    fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        host::set_request_header(name, value)
    }

    fn add_request_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        host::add_request_header(name, value)
    }

    fn remove_request_header(&self, name: &str) -> Result<(), HostError> {
        host::remove_request_header(name)
    }

    fn request_body(&self, start: usize, size: usize) -> Result<Vec<u8>, HostError> {
        host::request_body(start, size)
    }

    fn set_request_body(&self, size: usize, data: &[u8]) -> Result<(), HostError> {
        host::set_request_body(size, data)
    }

    fn source_address(&self) -> Result<Option<Vec<u8>>, HostError> {
        host::property(&["source", "address"])
    }

    fn response_header(&self, name: &str) -> Result<Option<String>, HostError> {
        host::response_header(name)
    }

    fn set_response_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        host::set_response_header(name, value)
    }

    fn remove_response_header(&self, name: &str) -> Result<(), HostError> {
        host::remove_response_header(name)
    }

    fn response_body(&self, size: usize) -> Result<Vec<u8>, HostError> {
        host::response_body(size)
    }

    fn set_response_body(&self, size: usize, data: &[u8]) -> Result<(), HostError> {
        host::set_response_body(size, data)
    }

    fn send_response(
        &self,
        status: u32,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostError> {
        host::send_response(status, headers, body)
    }

    fn now_ms(&self) -> Result<u64, HostError> {
        host::now_ms()
    }

    fn wake_leader(&self) {
        if let Some(id) = credit::queue(&Shared) {
            // If this fails, the leader sees the demand on its next tick.
            let _ = host::enqueue_shared_queue(id, b"");
        }
    }

    fn count(&self, event: Event<'_>) {
        self.metrics.event(event);
    }
}
