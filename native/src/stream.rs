//! One request through the gate on an Envoy worker: each hook hands over to the request
//! core (`keygate_core::request`), which decides through the `Host` implemented here over
//! the ABI, as the Wasm filter's `http` does over proxy-wasm.
//!
//! Each worker thread keeps what its requests share (`Worker`: the `Plugin` with its view
//! of the snapshot, its usage records until a request ends, its stats), as each Wasm VM
//! does; the snapshot itself, the ledgers and the rate windows are in the process's
//! `Store`, shared by all workers.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use keygate_core::decide::decision::Denial;
use keygate_core::kv::{HostError, SharedData};
use keygate_core::limits::ledger;
use keygate_core::request::{Action, Event, Host, Plugin, Request};
use keygate_core::stats::Metrics;
use keygate_core::sync::view::{SharedView, View};
use keygate_core::usage::report::{Outbox, SharedOutbox};
use keygate_core::usage::request_id::RequestIds;

use crate::abi::{body_status, headers_status, trailers_status};
use crate::envoy::{Body, Filter, Map, StreamScheduler};
use crate::gate::{self, Gate, NativeStats};
use crate::store::Store;

/// Events of a stream's scheduler: decide a held request (`RELEASE + 1`: the view is
/// loaded).
pub const RELEASE: u64 = 10;

/// Requests one configuration holds at most; more are decided at once (503).
const MAX_HELD: usize = 10_000;

/// A host failure the core sees (the status has no meaning beyond "failed").
const FAILED: HostError = HostError(1);

/// What the requests of one configuration share on one worker.
pub struct Worker {
    gate: Arc<Gate>,
    plugin: Rc<Plugin>,
    view: SharedView,
    outbox: SharedOutbox,
    metrics: Metrics<NativeStats>,
    /// The gate's generation this worker's view was refreshed at.
    seen: Cell<u64>,
}

thread_local! {
    static WORKERS: RefCell<HashMap<u64, Rc<Worker>>> = RefCell::new(HashMap::new());
}

impl Worker {
    /// This thread's state for the gate, made on its first request.
    pub fn of(gate: &Arc<Gate>) -> Rc<Worker> {
        WORKERS.with(|workers| {
            let mut workers = workers.borrow_mut();
            if let Some(worker) = workers.get(&gate.id) {
                return Rc::clone(worker);
            }
            // Configurations that are gone (a reload) leave this thread's state with them.
            workers.retain(|_, w| !w.gate.stopped.load(Ordering::Acquire));
            let worker = Rc::new(Worker::new(gate));
            workers.insert(gate.id, Rc::clone(&worker));
            worker
        })
    }

    fn new(gate: &Arc<Gate>) -> Worker {
        let config = gate.config.clone();
        let mut seed = [0u8; 16];
        // Ids of this worker's usage records (`None` without randomness: then Envoy's
        // `x-request-id` serves).
        let ids = getrandom::fill(&mut seed)
            .ok()
            .map(|()| RequestIds::new(seed));
        let view = SharedView::default();
        let outbox = Rc::new(RefCell::new(Outbox::new(
            config.usage_queue_max,
            config.usage_batch_max,
        )));
        let plugin = Rc::new(Plugin::new(
            config,
            Rc::clone(&view),
            Rc::clone(&outbox),
            ids,
        ));
        Worker {
            gate: Arc::clone(gate),
            plugin,
            view,
            outbox,
            metrics: Metrics::define(NativeStats::new(Arc::clone(gate))),
            seen: Cell::new(u64::MAX),
        }
    }

    /// Refreshes the view when the root has refreshed its own since.
    fn refresh(&self) {
        let now = self.gate.generation.load(Ordering::Acquire);
        if now == self.seen.get() {
            return;
        }
        let held = self.view.borrow_mut().take();
        match View::refresh(Store::global(), held) {
            Ok(view) => {
                *self.view.borrow_mut() = view;
                self.seen.set(now);
            }
            Err(e) => log::warn!("shared data unreadable: {e:?}"),
        }
    }

    /// A request ended: its usage goes to the root, its counts to Envoy. Records that
    /// find no room are dropped, as a full outbox drops them: counted, and their cost
    /// released from the ledgers (it will never be billed).
    fn finished(&self) {
        let mut outbox = self.outbox.borrow_mut();
        let mut dropped = outbox.take_dropped();
        let mut lost = outbox.take_lost();
        let records = outbox.take_waiting();
        drop(outbox);
        let refused = self.gate.hand_over(records);
        dropped += refused.len() as u64;
        lost.extend(refused.into_iter().filter_map(|r| r.charge));
        if dropped > 0 {
            self.metrics.usage_dropped(dropped);
            log::warn!(
                "{dropped} usage records dropped: the root's inbox is full (usage_queue_max)"
            );
        }
        for charge in &lost {
            for (name, amount) in charge.ledgers() {
                let _ = ledger::lost(Store::global(), name, amount);
            }
        }
        self.metrics.flush();
    }
}

/// Where a body hook stands: whether this filter asked Envoy to buffer the direction's
/// body (then the body so far is the buffered part and the chunk at hand), and whether a
/// body hook of it is running (then there is a chunk at hand).
#[derive(Default, Clone, Copy)]
struct Side {
    buffering: bool,
    in_hook: bool,
}

/// The stream's host for one hook (borrowing the stream's fields one by one, so that the
/// request can be borrowed beside it).
macro_rules! host {
    ($stream:expr) => {
        StreamHost {
            filter: $stream.filter,
            worker: &$stream.worker,
            request_side: &$stream.request_side,
            response_side: &$stream.response_side,
            answered: &$stream.answered,
            route_changed: Cell::new(false),
        }
    };
}

/// One stream's filter.
pub struct Stream {
    id: u64,
    filter: Filter,
    worker: Rc<Worker>,
    request: Request,
    request_side: Cell<Side>,
    response_side: Cell<Side>,
    /// Made when the request is first held.
    scheduler: Option<StreamScheduler>,
    /// Whether the filter answered the request itself.
    answered: Cell<bool>,
    /// A hook panicked (`contained`): what the request's hooks answer from then on.
    failed: Option<Action>,
}

static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

impl Stream {
    pub fn new(gate: &Arc<Gate>, filter: Filter) -> Stream {
        #[cfg(feature = "panic-probe")]
        if NEXT_STREAM_PANICS.swap(false, Ordering::Relaxed) {
            probe_new_stream();
        }
        let worker = Worker::of(gate);
        Stream {
            id: NEXT_STREAM.fetch_add(1, Ordering::Relaxed),
            filter,
            request: Request::new(Rc::clone(&worker.plugin)),
            worker,
            request_side: Cell::default(),
            response_side: Cell::default(),
            scheduler: None,
            answered: Cell::new(false),
            failed: None,
        }
    }

    fn gate(&self) -> &Gate {
        &self.worker.gate
    }

    /// Runs a hook on the request through this stream's host.
    fn run(&mut self, hook: impl FnOnce(&mut Request, &StreamHost) -> Action) -> Action {
        let action = hook(&mut self.request, &host!(self));
        match action {
            Action::Hold => self.hold(),
            other => other,
        }
    }

    /// Holds the request until the root commits its scheduler (`RELEASE`), or decides it
    /// at once when too many are held.
    fn hold(&mut self) -> Action {
        let scheduler = *self
            .scheduler
            .get_or_insert_with(|| self.filter.new_scheduler());
        let gate = Arc::clone(&self.worker.gate);
        let full = match gate.held.lock() {
            Ok(mut held) if held.len() < MAX_HELD => {
                held.insert(self.id, scheduler);
                false
            }
            _ => true,
        };
        if full {
            let host = host!(self);
            return match self.request.release(&host, false, true) {
                Action::Hold => Action::Pause,
                other => other,
            };
        }
        gate.hold_tick();
        Action::Pause
    }

    /// Runs a hook of the request's (`request`) or of its response's, containing a panic
    /// (a bug): the core then gives the request up (`Request::on_failure`: refused with
    /// `internal_error` if it has not been passed on), and later hooks let the stream end
    /// as it stands, its usage still handed over when it completes.
    fn guarded(&mut self, request: bool, hook: impl FnOnce(&mut Stream) -> Action) -> Action {
        if let Some(after) = self.failed {
            return if request { after } else { Action::Continue };
        }
        if let Some(action) = crate::contained("a stream's hook", || hook(self)) {
            return action;
        }
        let host = host!(self);
        let request_state = &mut self.request;
        let after =
            match crate::contained("giving a request up", || request_state.on_failure(&host)) {
                Some(action) => action,
                // The core failed again: a plain refusal, if the request can still have one.
                None if request && !self.answered.get() => {
                    refuse_failed(self.filter);
                    self.answered.set(true);
                    Action::Pause
                }
                None => Action::Continue,
            };
        self.failed = Some(after);
        if request {
            after
        } else {
            Action::Continue
        }
    }

    #[cfg(not(feature = "bench-floor"))]
    pub fn request_headers(&mut self, end_of_stream: bool) -> u32 {
        let action = self.guarded(true, |s| {
            #[cfg(feature = "panic-probe")]
            probe(s.filter, "request_headers");
            s.worker.refresh();
            s.run(|r, h| r.on_request_headers(h, end_of_stream))
        });
        self.headers_status(action)
    }

    /// `make bench` only (feature `bench-floor`, never shipped): the least that a gate
    /// keeping keys hashed in a shared store does on a request. It reads the
    /// `Authorization` header, hashes the key and finds it in the store (refusing a request
    /// without one); nothing else keygate does (no status, expiry, model or limit checks, no
    /// credential stripping, no identity headers, no metering, no stats). Its throughput
    /// is the ceiling for keygate native on the machine it runs on.
    #[cfg(feature = "bench-floor")]
    pub fn request_headers(&mut self, _end_of_stream: bool) -> u32 {
        use keygate_core::keys::{entry, secret};
        self.worker.refresh();
        let epoch = self
            .worker
            .view
            .borrow()
            .as_ref()
            .map_or(0, |v| v.meta.epoch);
        let value = self.filter.header(Map::Request, "authorization");
        let token = value.as_deref().and_then(|v| v.strip_prefix(b"Bearer "));
        let found = token
            .and_then(|t| std::str::from_utf8(t).ok())
            .map(|t| entry::lookup(Store::global(), &secret::hash(t), epoch));
        if let Some(Ok(Some(_))) = found {
            return headers_status::Continue;
        }
        self.filter.send_response(401, &[], b"", "keygate");
        headers_status::StopIteration
    }

    pub fn request_body(&mut self, end_of_stream: bool) -> u32 {
        let side = self.request_side.get();
        self.request_side.set(Side {
            in_hook: true,
            ..side
        });
        let action = self.guarded(true, |s| {
            let size = s.body_size(true);
            s.run(|r, h| r.on_request_body(h, size, end_of_stream))
        });
        self.body_status(true, action)
    }

    pub fn request_trailers(&mut self) -> u32 {
        match self.guarded(true, |s| s.run(|r, h| r.on_request_trailers(h))) {
            Action::Continue if !self.answered.get() => trailers_status::Continue,
            _ => trailers_status::StopIteration,
        }
    }

    pub fn response_headers(&mut self) -> u32 {
        let action = self.guarded(false, |s| {
            #[cfg(feature = "panic-probe")]
            probe(s.filter, "response_headers");
            s.run(|r, h| r.on_response_headers(h))
        });
        self.headers_status(action)
    }

    pub fn response_body(&mut self, end_of_stream: bool) -> u32 {
        let side = self.response_side.get();
        self.response_side.set(Side {
            in_hook: true,
            ..side
        });
        let action = self.guarded(false, |s| {
            let size = s.body_size(false);
            s.run(|r, h| r.on_response_body(h, size, end_of_stream))
        });
        self.body_status(false, action)
    }

    /// The root decided that held requests may go on (or must be decided now).
    pub fn scheduled(&mut self, event: u64) {
        let Some(loaded) = event.checked_sub(RELEASE).map(|n| n == 1) else {
            return;
        };
        let action = self.guarded(true, |s| {
            s.worker.refresh();
            s.request.release(&host!(s), loaded, false)
        });
        match action {
            Action::Hold => {
                let _ = self.hold();
            }
            Action::Continue if !self.answered.get() => self.filter.continue_decoding(),
            Action::Continue => {}
            // Answered by the filter (or stopped for its body, which Envoy keeps sending).
            Action::Pause => {}
        }
    }

    /// The stream ended, however it did (a failed one too: what it used is handed over
    /// as far as it was read).
    pub fn complete(&mut self) {
        let host = host!(self);
        let request = &mut self.request;
        let _ = crate::contained("a stream's end", || request.on_log(&host));
        let _ = crate::contained("a stream's end", || self.worker.finished());
    }

    /// Envoy destroys the stream's filter: its scheduler goes, where the root can no
    /// longer commit to it.
    pub fn destroy(&mut self) {
        let Some(scheduler) = self.scheduler.take() else {
            return;
        };
        let gate = self.gate();
        // A poisoned lock (a panic elsewhere) leaks the scheduler: the safe side.
        if let Ok(mut held) = gate.held.lock() {
            held.remove(&self.id);
            // SAFETY: removed from the held streams under their lock: nothing commits to
            // it any more.
            unsafe { scheduler.delete() };
        }
    }

    /// The body so far, as the core counts it: the buffered part (while this filter
    /// buffers) and the chunk at hand.
    fn body_size(&self, request: bool) -> usize {
        parts(self.filter, self.side(request), request)
            .iter()
            .map(|part| self.filter.body_size(*part))
            .sum()
    }

    fn side(&self, request: bool) -> Side {
        if request {
            self.request_side.get()
        } else {
            self.response_side.get()
        }
    }

    fn headers_status(&self, action: Action) -> u32 {
        match action {
            Action::Continue if !self.answered.get() => headers_status::Continue,
            _ => headers_status::StopIteration,
        }
    }

    /// After a body hook: Envoy buffers the body while the core waits for more of it.
    fn body_status(&self, request: bool, action: Action) -> u32 {
        let cell = if request {
            &self.request_side
        } else {
            &self.response_side
        };
        let (status, buffering) = match action {
            _ if self.answered.get() => (body_status::StopIterationNoBuffer, false),
            Action::Continue => (body_status::Continue, false),
            Action::Pause | Action::Hold => (body_status::StopIterationAndBuffer, true),
        };
        cell.set(Side {
            buffering,
            in_hook: false,
        });
        status
    }
}

/// Refuses a request the filter failed on (`internal_error`) without the request core:
/// when the core failed too, or Envoy has no stream of ours for it.
pub fn refuse_failed(filter: Filter) {
    let body = Denial::FilterFailed.body();
    let json = [("content-type", "application/json")];
    filter.send_response(500, &json, body.as_bytes(), "keygate");
}

/// `panic-probe` builds only (the end-to-end tests): panics in the hook that the request's
/// `x-panic-probe` header names; `next_stream` makes the next stream's making panic
/// instead (Envoy then has no stream of ours for that request).
#[cfg(feature = "panic-probe")]
#[allow(clippy::panic)]
fn probe(filter: Filter, hook: &str) {
    let named = filter.header(Map::Request, "x-panic-probe");
    if hook == "request_headers" && named.as_deref() == Some(b"next_stream") {
        NEXT_STREAM_PANICS.store(true, Ordering::Relaxed);
    }
    if named.as_deref() == Some(hook.as_bytes()) {
        panic!("panic-probe: {hook}");
    }
}

#[cfg(feature = "panic-probe")]
#[allow(clippy::panic)]
fn probe_new_stream() {
    panic!("panic-probe: new_stream");
}

#[cfg(feature = "panic-probe")]
static NEXT_STREAM_PANICS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The buffers that make up a direction's body so far, in order.
fn parts(filter: Filter, side: Side, request: bool) -> Vec<Body> {
    let (received, buffered) = if request {
        (Body::ReceivedRequest, Body::BufferedRequest)
    } else {
        (Body::ReceivedResponse, Body::BufferedResponse)
    };
    match (side.in_hook, side.buffering) {
        // Envoy buffered the previous chunk for a previous filter: the chunk is the body.
        (true, _) if filter.received_is_buffered(request) => vec![received],
        (true, true) => vec![buffered, received],
        (true, false) => vec![received],
        (false, _) => vec![buffered],
    }
}

/// `size` bytes of the body from `start` (fewer if it has fewer): only that range is
/// copied, from whichever parts hold it.
fn read_range(
    filter: Filter,
    parts: &[Body],
    start: usize,
    size: usize,
) -> Result<Vec<u8>, HostError> {
    let mut out = Vec::new();
    let end = start.saturating_add(size);
    let mut at = 0usize;
    for part in parts {
        let len = filter.body_size(*part);
        let (from, to) = (at, at.saturating_add(len));
        at = to;
        if to <= start || from >= end {
            continue;
        }
        let skip = start.saturating_sub(from);
        if !filter.read_body(
            *part,
            skip,
            end.saturating_sub(from).saturating_sub(skip),
            &mut out,
        ) {
            return Err(FAILED);
        }
    }
    Ok(out)
}

/// Replaces the body's first `size` bytes with `data`: the ABI drains from the front and
/// appends at the end, so the body is rebuilt in the part at hand.
fn replace_prefix(
    filter: Filter,
    side: Side,
    request: bool,
    size: usize,
    data: &[u8],
) -> Result<(), HostError> {
    let parts = parts(filter, side, request);
    let rest = read_range(filter, &parts, size, usize::MAX)?;
    for part in &parts {
        let len = filter.body_size(*part);
        if len > 0 && !filter.drain_body(*part, len) {
            return Err(FAILED);
        }
    }
    let target = *parts.last().ok_or(FAILED)?;
    let mut body = Vec::with_capacity(data.len() + rest.len());
    body.extend_from_slice(data);
    body.extend_from_slice(&rest);
    if filter.append_body(target, &body) {
        Ok(())
    } else {
        Err(FAILED)
    }
}

/// The request core's host: the stream's filter in Envoy, the worker's stats and the
/// process's store.
struct StreamHost<'a> {
    filter: Filter,
    worker: &'a Worker,
    request_side: &'a Cell<Side>,
    response_side: &'a Cell<Side>,
    answered: &'a Cell<bool>,
    /// A request header changed in this hook: Envoy picks the route again after it.
    route_changed: Cell<bool>,
}

impl Drop for StreamHost<'_> {
    fn drop(&mut self) {
        if self.route_changed.get() {
            self.filter.clear_route_cache();
        }
    }
}

impl SharedData for StreamHost<'_> {
    fn get(&self, name: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        Store::global().get(name)
    }

    fn set(&self, name: &str, value: &[u8], cas: Option<u32>) -> Result<bool, HostError> {
        Store::global().set(name, value, cas)
    }
}

impl Host for StreamHost<'_> {
    fn request_headers(&self) -> Result<Vec<u8>, HostError> {
        self.filter.headers_encoded(Map::Request).ok_or(FAILED)
    }

    fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        self.route_changed.set(true);
        ok(self.filter.set_header(Map::Request, name, value))
    }

    fn add_request_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        if value.is_empty() {
            // The ABI cannot send an empty header (its `set_header` removes one): the
            // header stays absent, as it does when set empty.
            return Ok(());
        }
        self.route_changed.set(true);
        ok(self.filter.add_header(Map::Request, name, value))
    }

    fn remove_request_header(&self, name: &str) -> Result<(), HostError> {
        self.route_changed.set(true);
        ok(self.filter.remove_header(Map::Request, name))
    }

    fn request_body(&self, start: usize, size: usize) -> Result<Vec<u8>, HostError> {
        let parts = parts(self.filter, self.request_side.get(), true);
        read_range(self.filter, &parts, start, size)
    }

    fn set_request_body(&self, size: usize, data: &[u8]) -> Result<(), HostError> {
        replace_prefix(self.filter, self.request_side.get(), true, size, data)
    }

    fn source_address(&self) -> Result<Option<Vec<u8>>, HostError> {
        Ok(self.filter.source_address())
    }

    fn response_header(&self, name: &str) -> Result<Option<String>, HostError> {
        Ok(self
            .filter
            .header(Map::Response, name)
            .and_then(|v| String::from_utf8(v).ok()))
    }

    fn set_response_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        ok(self.filter.set_header(Map::Response, name, value))
    }

    fn remove_response_header(&self, name: &str) -> Result<(), HostError> {
        ok(self.filter.remove_header(Map::Response, name))
    }

    fn response_body(&self, size: usize) -> Result<Vec<u8>, HostError> {
        let parts = parts(self.filter, self.response_side.get(), false);
        read_range(self.filter, &parts, 0, size)
    }

    fn set_response_body(&self, size: usize, data: &[u8]) -> Result<(), HostError> {
        replace_prefix(self.filter, self.response_side.get(), false, size, data)
    }

    fn send_response(
        &self,
        status: u32,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostError> {
        self.filter.send_response(status, headers, body, "keygate");
        self.answered.set(true);
        Ok(())
    }

    fn now_ms(&self) -> Result<u64, HostError> {
        gate::now_ms()
    }

    fn count(&self, event: Event<'_>) {
        self.worker.metrics.event(event);
    }

    fn wake_leader(&self) {
        self.worker.gate.schedule(gate::CREDIT_DEMAND);
    }
}

fn ok(done: bool) -> Result<(), HostError> {
    if done {
        Ok(())
    } else {
        Err(FAILED)
    }
}
