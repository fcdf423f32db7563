//! The root context of one Wasm VM: it reads the configuration, makes what the VM's
//! requests share (`Plugin`), and drives `keygate_core::root::Root` (the sync, usage
//! reports and credit leases) from proxy-wasm's ticks, HTTP calls and shared queue.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use log::{error, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use crate::host::{self, Shared};
use crate::http::{Envoy, HeldRequests, Http};
use crate::metrics::{Metrics, WasmStats};
use keygate_core::config::Config;
use keygate_core::kv::{HostError, SharedData};
use keygate_core::limits::credit;
use keygate_core::request::{Action, Plugin};
use keygate_core::root::{self, Reply, RootHost};
use keygate_core::sync::view::SharedView;
use keygate_core::usage::report::Outbox;
use keygate_core::usage::request_id::RequestIds;

pub struct Root {
    /// This root context's id, to act as itself again after acting on a held request.
    id: u32,
    /// Made in `on_configure`.
    core: Option<root::Root<Wasm>>,
    /// What every request of this VM shares (made in `on_configure`).
    plugin: Rc<Plugin>,
    metrics: Rc<Metrics>,
    held: HeldRequests,
}

impl Root {
    pub fn new(id: u32) -> Root {
        Root {
            id,
            core: None,
            plugin: Rc::default(),
            metrics: Rc::default(),
            held: HeldRequests::default(),
        }
    }
}

/// The root's host: this VM, through `host`.
pub struct Wasm {
    id: u32,
    metrics: Rc<Metrics>,
    held: HeldRequests,
    /// The shared queue through which requests wake this VM while it leads.
    credit_queue: Option<u32>,
}

impl SharedData for Wasm {
    fn get(&self, name: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        Shared.get(name)
    }

    fn set(&self, name: &str, value: &[u8], cas: Option<u32>) -> Result<bool, HostError> {
        Shared.set(name, value, cas)
    }
}

impl RootHost for Wasm {
    type Stats = WasmStats;

    fn now_ms(&self) -> Result<u64, HostError> {
        host::now_ms()
    }

    fn call(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError> {
        host::dispatch_http_call(cluster, headers.to_vec(), body, timeout)
    }

    fn set_tick_period(&mut self, period: Duration) -> Result<(), HostError> {
        host::set_tick_period(period)
    }

    /// Registers the queue through which requests waiting for a lease wake this VM
    /// (registering again takes it over from a VM that led before), and publishes its id.
    fn listen_for_credit_demand(&mut self, taken_over: bool) {
        if taken_over {
            self.credit_queue = None;
        }
        let id = match self.credit_queue {
            Some(id) => id,
            None => match host::register_shared_queue(credit::QUEUE_NAME) {
                Ok(id) => id,
                // Requests then wait for the leader's next tick.
                Err(e) => return warn!("cannot register the credit queue: {e:?}"),
            },
        };
        self.credit_queue = Some(id);
        if let Err(e) = credit::set_queue(&Shared, id) {
            warn!("cannot publish the credit queue: {e:?}");
        }
    }

    fn holding(&self) -> bool {
        !self.held.borrow().is_empty()
    }

    fn release_held(&mut self, loaded: bool) {
        let waiting = std::mem::take(&mut *self.held.borrow_mut());
        let host = Envoy {
            metrics: Rc::clone(&self.metrics),
        };
        let mut still = Vec::new();
        for (id, request) in waiting {
            // Gone: the client left, and its context with it.
            let Some(request) = request.upgrade() else {
                continue;
            };
            if host::set_effective_context(id).is_err() {
                continue;
            }
            let Ok(mut held) = request.try_borrow_mut() else {
                still.push((id, Rc::downgrade(&request)));
                continue;
            };
            match held.release(&host, loaded, false) {
                Action::Hold => still.push((id, Rc::downgrade(&request))),
                // If this fails the stream is gone.
                Action::Continue => {
                    let _ = host::resume_request();
                }
                _ => {}
            }
        }
        // Host calls act for the root again. (Called last in a tick: nothing after it in
        // this callback dispatches a call, which the SDK would file under the context it
        // last saw.)
        let _ = host::set_effective_context(self.id);
        self.held.borrow_mut().extend(still);
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _: usize) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let status = host::call_response_status()
            .ok()
            .flatten()
            .and_then(|status| status.parse().ok());
        let body = match status {
            Some(_) => host::call_response_body(body_size).unwrap_or_default(),
            None => Vec::new(),
        };
        core.answered(token, Reply { status, body });
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let raw = match host::plugin_configuration(plugin_configuration_size) {
            Ok(raw) => raw,
            Err(e) => {
                error!("cannot read the plugin configuration: {e:?}");
                return false;
            }
        };
        let config = match Config::parse(Some(&raw)) {
            Ok(config) => config,
            Err(e) => {
                error!("{e}");
                return false;
            }
        };
        let token = config.token(|name| std::env::var(name).ok());
        if token.is_none() {
            warn!(
                "no filter token: neither key_service_token nor the environment variable {} \
                 is set; the key-service will refuse the snapshot",
                config.token_env
            );
        }
        let mut seed = [0u8; 16];
        // Ids of this VM's usage records (`None` if no randomness could be had: then
        // Envoy's `x-request-id` serves, as Envoy regenerates it at the edge).
        let ids = match getrandom::fill(&mut seed) {
            Ok(()) => Some(RequestIds::new(seed)),
            Err(e) => {
                warn!("no randomness for usage record ids ({e}): using x-request-id");
                None
            }
        };
        let view = SharedView::default();
        let outbox = Rc::new(RefCell::new(Outbox::new(
            config.usage_queue_max,
            config.usage_batch_max,
        )));
        self.plugin = Rc::new(Plugin::new(
            config.clone(),
            Rc::clone(&view),
            Rc::clone(&outbox),
            ids,
        ));
        self.metrics = Rc::new(Metrics::define(WasmStats));
        let host = Wasm {
            id: self.id,
            metrics: Rc::clone(&self.metrics),
            held: Rc::clone(&self.held),
            credit_queue: None,
        };
        self.core = Some(root::Root::new(host, config, token, view, outbox));
        true
    }

    fn on_tick(&mut self) {
        if let Some(core) = self.core.as_mut() {
            core.tick();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http::new(
            Rc::clone(&self.plugin),
            Rc::clone(&self.metrics),
            context_id,
            Rc::clone(&self.held),
        )))
    }

    /// A request waits for a credit lease: ask now rather than on the next tick.
    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(_)) = host::dequeue_shared_queue(queue_id) {}
        if let Some(core) = self.core.as_mut() {
            core.credit_demand();
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
