//! One request through the gate, as plain Rust: the policy of the HTTP context, driven by
//! the proxy-wasm callbacks (`crate::http` calls one method per callback) and touching the
//! world only through the `Host` trait, so native tests drive it with a fake host.
//!
//! A request goes through phases (`Phase`): its headers are decided (`admit`); if a rule
//! needs its body, the body is buffered and decided (`Body`); admitted, it goes upstream and
//! its response is read for usage or rewritten (`Response`); when it ends (`on_log`), what
//! it used is priced, settled against what it reserved and queued for the key-service
//! (`bill`). A refused request is answered here and nothing more happens to it.

mod admit;
mod bill;
#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::rc::Rc;

use crate::config::Config;
use crate::decide::body_scan::{BodyScan, UsageEdit};
use crate::decide::credential;
use crate::decide::decision::Denial;
use crate::decide::form_scan::FormScan;
use crate::decide::model_list;
use crate::keys::secret::{self, KeyHash};
use crate::kv::{HostError, SharedData};
use crate::limits::credit;
use crate::limits::ledger::{self, Estimate};
use crate::limits::rate::{self, Limits, Standing};
use crate::pairs;
use crate::sync::view::{SharedView, View};
use crate::usage::include_usage::StreamEditor;
use crate::usage::report::SharedOutbox;
use crate::usage::request_id::RequestIds;
use crate::usage::scan::{Api, Scanner, Usage};

/// What the request core needs of the proxy: its headers and bodies, the clock, the
/// shared data (`SharedData`), a way to answer, and its stats. A failed call is an `Err`;
/// what it means is decided by the caller (a request that cannot be decided safely is
/// refused with 503, never passed on with its credential).
pub trait Host: SharedData {
    /// The request headers, encoded as `pairs` reads them.
    fn request_headers(&self) -> Result<Vec<u8>, HostError>;
    fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError>;
    /// Adds a request header that the request does not have (never sent, or removed):
    /// cheaper than setting it, which first looks for the header to replace.
    fn add_request_header(&self, name: &str, value: &str) -> Result<(), HostError>;
    fn remove_request_header(&self, name: &str) -> Result<(), HostError>;
    /// `size` bytes of the buffered request body from byte `start` (fewer if it has
    /// fewer).
    fn request_body(&self, start: usize, size: usize) -> Result<Vec<u8>, HostError>;
    /// Replaces the buffered request body's first `size` bytes with `data` (Envoy replaces
    /// a prefix of a body, nothing else).
    fn set_request_body(&self, size: usize, data: &[u8]) -> Result<(), HostError>;
    /// The client's address as the proxy saw it (`source.address`), if it has one.
    fn source_address(&self) -> Result<Option<Vec<u8>>, HostError>;
    fn response_header(&self, name: &str) -> Result<Option<String>, HostError>;
    fn set_response_header(&self, name: &str, value: &str) -> Result<(), HostError>;
    fn remove_response_header(&self, name: &str) -> Result<(), HostError>;
    /// The response body chunk being handled (`size` bytes).
    fn response_body(&self, size: usize) -> Result<Vec<u8>, HostError>;
    /// Replaces the response body chunk being handled (`size` bytes) with `data`.
    fn set_response_body(&self, size: usize, data: &[u8]) -> Result<(), HostError>;
    /// Answers the request from the filter.
    fn send_response(
        &self,
        status: u32,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostError>;
    /// The clock, in Unix milliseconds.
    fn now_ms(&self) -> Result<u64, HostError>;
    /// Counts something for the filter's stats.
    fn count(&self, event: Event<'_>);
    /// Tells the syncing VM at once that a request waits for a credit lease (it also
    /// looks on its ticks).
    fn wake_leader(&self) {}
}

/// What the request core counts (see `crate::metrics`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event<'a> {
    Allowed,
    Denied(Denial),
    /// Bytes of response body read for usage.
    Scanned(usize),
    /// A success whose usage could not be read.
    UsageMissing,
    /// A record billed on an estimate.
    UsageEstimated,
    UsageRecorded(&'a Usage),
}

/// What the proxy does with the request or response after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
    /// Paused until this VM has its first snapshot, or a credit lease comes: the root
    /// calls `Request::release` on its ticks until it says otherwise.
    Hold,
}

/// What every request of a VM shares: the configuration, the VM's view of the snapshot,
/// the outbox of usage records and where their ids come from.
#[derive(Default)]
pub struct Plugin {
    pub config: Config,
    pub view: SharedView,
    pub outbox: SharedOutbox,
    /// `None` if the VM had no randomness: Envoy's `x-request-id` serves then.
    pub ids: Option<RequestIds>,
    /// Request body bytes this VM's requests hold while they are decided (`BodyHold`).
    held_body_bytes: Cell<usize>,
}

impl Plugin {
    pub fn new(
        config: Config,
        view: SharedView,
        outbox: SharedOutbox,
        ids: Option<RequestIds>,
    ) -> Plugin {
        Plugin {
            config,
            view,
            outbox,
            ids,
            held_body_bytes: Cell::new(0),
        }
    }

    /// Request body bytes this VM holds now.
    pub fn held_body_bytes(&self) -> usize {
        self.held_body_bytes.get()
    }

    /// Whether the view may be answered from: the key-service has confirmed it within the
    /// configured maximum age.
    fn is_fresh(&self, view: &View, now_ms: u64) -> bool {
        now_ms.saturating_sub(view.meta.confirmed_at_ms) <= self.config.max_snapshot_age_ms
    }
}

/// Any host failure on the request path: the request cannot be decided safely.
const HOST_FAILED: Denial = Denial::KeyServiceUnavailable;

/// Where a request stands.
enum Phase {
    /// Its headers have not been decided.
    Start,
    /// It came before this VM had a snapshot, and waits for one.
    Held(Held),
    /// Admitted but for its cost, it waits for a (larger) credit lease.
    Leasing(Box<LeaseWait>),
    /// Admitted on its headers, it waits for its body to be decided.
    Body(Box<BodyWait>),
    /// Admitted and passed on; its body (if any) streams on, chunk by chunk.
    Upstream,
    /// Its response is passing through.
    Response(Reader),
    /// Refused and answered by the filter: nothing more to do.
    Refused,
}

/// The body bytes one request holds against its VM's budget (`max_held_body_bytes`),
/// given back when it is dropped: whichever way the request leaves its phase.
struct BodyHold {
    plugin: Rc<Plugin>,
    bytes: usize,
}

impl BodyHold {
    fn new(plugin: &Rc<Plugin>) -> BodyHold {
        BodyHold {
            plugin: Rc::clone(plugin),
            bytes: 0,
        }
    }

    /// Holds `size` bytes in all; `false`, holding no more, if the VM's budget would be
    /// passed.
    fn grow_to(&mut self, size: usize) -> bool {
        let more = size.saturating_sub(self.bytes);
        let held = self.plugin.held_body_bytes.get();
        let total = held.saturating_add(more);
        if total > self.plugin.config.max_held_body_bytes {
            return false;
        }
        self.plugin.held_body_bytes.set(total);
        self.bytes += more;
        true
    }
}

impl Drop for BodyHold {
    fn drop(&mut self) {
        let held = self.plugin.held_body_bytes.get();
        self.plugin
            .held_body_bytes
            .set(held.saturating_sub(self.bytes));
    }
}

/// A request waiting for the first snapshot, and what of it came meanwhile.
struct Held {
    end_of_stream: bool,
    /// When it stops waiting (Unix ms).
    until_ms: u64,
    /// Whether its body is all here.
    body_end: bool,
    /// The body buffered so far.
    hold: BodyHold,
}

/// A request waiting for a credit lease (`limits::credit`), and what it needs to go on.
struct LeaseWait {
    /// The hash of the request's key, to look the key up again.
    key: KeyHash,
    estimate: Estimate,
    /// The ledger whose lease it waits for, and the number of the ask that will carry
    /// its need.
    ledger: String,
    ask: u64,
    /// When it stops waiting (Unix ms): 503 then.
    until_ms: u64,
    /// For an OpenAI stream that does not ask for usage: the edit that makes it ask, for
    /// a body of `body_size` bytes.
    edit: Option<UsageEdit>,
    body_size: usize,
    /// Its body, buffered meanwhile.
    hold: BodyHold,
    /// Its cost is reserved already (or it has none): it waits for a larger share of its
    /// key's rate limits.
    rate_only: bool,
}

/// What the filter does with an admitted request beyond passing it on.
enum Job {
    /// Nothing more.
    Pass,
    /// A call to an LLM API: its usage is recorded (and, for a limited key or account, what
    /// it may cost was reserved).
    Meter(Meter),
    /// A model list read with a model-restricted key: the answer shows only what it may
    /// use.
    List(model_list::Allowed),
}

/// How the response is read.
enum Reader {
    /// Not at all.
    Pass,
    /// For usage; an OpenAI stream the filter asked usage of gets that usage taken out again.
    Usage {
        scanner: Scanner,
        editor: Option<StreamEditor>,
    },
    /// A model list to rewrite for the key; `upstream`: the upstream answered with 200
    /// (else the key's own list is sent).
    List { upstream: bool },
}

/// Why an admitted request's body is being read, and what of it came so far.
struct BodyWait {
    /// The hash of the request's key, to look the key up again once the body is in.
    key: KeyHash,
    /// The model must be checked against the key.
    model_check: bool,
    /// The path named the model (and it was checked); the body may name one too.
    path_model: bool,
    /// It may be an OpenAI stream that does not ask for usage.
    add_usage: bool,
    /// The key or its account is limited: what the request may cost is reserved.
    reserve: bool,
    /// A `multipart/form-data` body (an upload), whose model is its `model` form field,
    /// read so far; `None` for a JSON body (`scan`).
    form: Option<FormScan>,
    /// Size of the body buffered so far.
    size: usize,
    /// A JSON body read so far.
    scan: BodyScan,
    hold: BodyHold,
}

/// What is known of an admitted LLM request, to bill it when it ends.
struct Meter {
    request_id: String,
    key_id: String,
    api: Api,
    /// The model the request named, when it was read (path or body).
    model: Option<String>,
    /// The response's status; 0 until it starts.
    status: u16,
    /// The filter added `stream_options.include_usage` to the request.
    added_usage: bool,
    /// Size of the request body as read, when it was read whole.
    request_bytes: Option<u64>,
    /// What the request holds in the quota ledgers until it ends.
    reservation: Option<bill::Reservation>,
}

/// A rate-limited key's request.
struct RateHold {
    /// The key's id, to find this Envoy's shares of its limits (with credit leases).
    key_id: String,
    entry: String,
    limits: Limits,
    /// Set when the windows admitted (counted) the request; refused, the standing that
    /// says how long to wait.
    standing: Option<Result<Standing, Standing>>,
}

/// One request's state. Made per request by the HTTP context.
pub struct Request {
    plugin: Rc<Plugin>,
    phase: Phase,
    job: Job,
    /// The key's rate windows, when it or its group has limits.
    rate: Option<RateHold>,
    /// Bytes of request body that have arrived (what a client that leaves is billed for,
    /// never its `content-length`, which it may lie in).
    body_received: u64,
}

impl Request {
    pub fn new(plugin: Rc<Plugin>) -> Request {
        Request {
            plugin,
            phase: Phase::Start,
            job: Job::Pass,
            rate: None,
            body_received: 0,
        }
    }

    pub fn on_request_headers(&mut self, host: &impl Host, end_of_stream: bool) -> Action {
        if let Some(until_ms) = self.hold_until(host) {
            self.phase = Phase::Held(Held {
                end_of_stream,
                until_ms,
                body_end: end_of_stream,
                hold: BodyHold::new(&self.plugin),
            });
            return Action::Hold;
        }
        let result = self.admit(host, end_of_stream, true);
        self.finish(host, result)
    }

    /// Until when a request that finds no snapshot in this VM waits for one, if it does:
    /// only one with a well-formed key (any other is refused at once, snapshot or not).
    fn hold_until(&self, host: &impl Host) -> Option<u64> {
        let wait = self.plugin.config.first_snapshot_wait_ms;
        if wait == 0 {
            return None;
        }
        self.ensure_view(host);
        if self.plugin.view.borrow().is_some() {
            return None;
        }
        let buf = host.request_headers().ok()?;
        let headers = pairs::parse(&buf).ok()?;
        credential::find(&headers).filter(|s| secret::is_well_formed(s))?;
        Some(host.now_ms().ok()?.saturating_add(wait))
    }

    /// When a held request stops waiting (Unix ms); `None` if it is not held.
    pub fn held_until(&self) -> Option<u64> {
        match &self.phase {
            Phase::Held(held) => Some(held.until_ms),
            Phase::Leasing(wait) => Some(wait.until_ms),
            _ => None,
        }
    }

    /// Decides a held request, if it is due: `loaded`, the VM has a snapshot now;
    /// `force`, it may wait no longer (too many are held). `Hold`: it waits on;
    /// `Continue`: the caller resumes it; anything else, that it is answered or waits for
    /// more of its body.
    pub fn release(&mut self, host: &impl Host, loaded: bool, force: bool) -> Action {
        match std::mem::replace(&mut self.phase, Phase::Start) {
            Phase::Held(held) => {
                let late = host.now_ms().map_or(true, |now| now >= held.until_ms);
                if !(loaded || force || late) {
                    self.phase = Phase::Held(held);
                    return Action::Hold;
                }
                self.release_held(host, held)
            }
            Phase::Leasing(wait) => self.lease_came(host, wait, force),
            other => {
                self.phase = other;
                Action::Pause
            }
        }
    }

    /// A request held for the first snapshot is decided with what of it has arrived.
    fn release_held(&mut self, host: &impl Host, held: Held) -> Action {
        // Its bytes are given back here: the phase it goes on to holds them again.
        let (body_size, body_end) = (held.hold.bytes, held.body_end);
        drop(held.hold);
        let result = self.admit(host, held.end_of_stream, true);
        match self.finish(host, result) {
            // The body it waits for may be here already.
            Action::Pause if matches!(self.phase, Phase::Body(_)) && body_size > 0 => {
                self.on_request_body(host, body_size, body_end)
            }
            Action::Pause if matches!(self.phase, Phase::Body(_)) && body_end => {
                self.on_request_trailers(host)
            }
            Action::Continue => {
                self.body_received = body_size as u64;
                Action::Continue
            }
            other => other,
        }
    }

    /// A request waiting for a credit lease: once the ask that carried its need is
    /// answered it fits (and goes on), waits for its account's lease next, or is
    /// refused; it gets 503 if no answer came in time.
    fn lease_came(&mut self, host: &impl Host, wait: Box<LeaseWait>, force: bool) -> Action {
        let now_ms = host.now_ms().unwrap_or(u64::MAX);
        let answered = ledger::read(host, &wait.ledger).map_or(true, |l| l.answered >= wait.ask);
        if !answered {
            if force {
                self.phase = Phase::Upstream;
                return self.finish(host, Err(Denial::Overloaded));
            }
            if now_ms < wait.until_ms {
                self.phase = Phase::Leasing(wait);
                return Action::Hold;
            }
            self.phase = Phase::Upstream;
            return self.finish(host, Err(Denial::KeyServiceUnavailable));
        }
        self.phase = Phase::Upstream;
        let result = self.admit_leased(host, *wait);
        self.finish(host, result)
    }

    pub fn on_request_body(
        &mut self,
        host: &impl Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        if let Phase::Leasing(_) = &self.phase {
            // Waiting with its whole body.
            return Action::Pause;
        }
        if let Phase::Held(held) = &mut self.phase {
            // Held with its headers: Envoy keeps the body meanwhile.
            if !held.hold.grow_to(body_size) {
                return self.finish(host, Err(Denial::Overloaded));
            }
            held.body_end = end_of_stream;
            return Action::Pause;
        }
        let Phase::Body(wait) = &mut self.phase else {
            // Passed on chunk by chunk: each call brings the next chunk.
            self.body_received = self.body_received.saturating_add(body_size as u64);
            return Action::Continue;
        };
        // Buffered: each call brings the whole body so far.
        wait.size = body_size;
        self.body_received = body_size as u64;
        let max_body_bytes = self.plugin.config.max_body_bytes;
        // (A whole upload larger than the limit may be here at once: after a hold, say.)
        if !end_of_stream || body_size > max_body_bytes {
            match admit::form_model_read(host, wait, max_body_bytes) {
                // Decided on its model field: the rest of the upload streams on.
                Ok(true) => return self.decide_body(host, body_size.min(max_body_bytes), false),
                Ok(false) => {}
                Err(_) => {
                    self.phase = Phase::Upstream;
                    return self.finish(host, Err(HOST_FAILED));
                }
            }
        }
        if body_size > max_body_bytes {
            let must_read = wait.model_check || wait.reserve;
            let key = wait.key;
            self.phase = Phase::Upstream;
            if must_read {
                // Too large to read for its model or what it may cost.
                return self.finish(host, Err(Denial::RequestTooLarge));
            }
            // Too large to add usage to: it goes on as it is (waiting first for a larger
            // share of its key's rate limits, if it must).
            let result = match self.admit_rate(host, None) {
                Ok(None) => Ok(Action::Continue),
                Ok(Some((ledger, ask))) => self
                    .wait_for_lease(host, key, Estimate::default(), ledger, ask, None, 0, true)
                    .map(|()| Action::Hold),
                Err(denial) => Err(denial),
            };
            return self.finish(host, result);
        }
        if !end_of_stream {
            if !wait.hold.grow_to(body_size) {
                // Bodies held by this VM's requests would pass its budget.
                self.phase = Phase::Upstream;
                return self.finish(host, Err(Denial::Overloaded));
            }
            // Read as it arrives, so that only the last bytes are left to read at the end,
            // and a body that cannot be read (not a JSON object, not a form) is refused
            // before it all came.
            let read = admit::scan_to(host, wait, body_size);
            let failed = match &wait.form {
                Some(form) => form.failed(),
                None => wait.scan.failed(),
            };
            let unreadable = failed && wait.model_check;
            if read.is_err() {
                self.phase = Phase::Upstream;
                return self.finish(host, Err(HOST_FAILED));
            }
            if unreadable {
                return self.decide_body(host, body_size, false);
            }
            return Action::Pause;
        }
        self.decide_body(host, body_size, true)
    }

    /// A request may end with trailers instead of a last body chunk (HTTP/2 allows it): its
    /// body is complete now, and it is decided as if the last chunk had said so; without
    /// this, Envoy would pass it on unchecked.
    pub fn on_request_trailers(&mut self, host: &impl Host) -> Action {
        if let Phase::Leasing(_) = &self.phase {
            return Action::Pause;
        }
        if let Phase::Held(held) = &mut self.phase {
            held.body_end = true;
            return Action::Pause;
        }
        let Phase::Body(wait) = &self.phase else {
            return Action::Continue;
        };
        let size = wait.size;
        self.decide_body(host, size, true)
    }

    /// Decides the request on the first `size` bytes of its body (`whole`: all of it).
    fn decide_body(&mut self, host: &impl Host, size: usize, whole: bool) -> Action {
        let Phase::Body(mut wait) = std::mem::replace(&mut self.phase, Phase::Upstream) else {
            return Action::Continue;
        };
        let result = self.on_body(host, &mut wait, size, whole);
        self.finish(host, result)
    }

    pub fn on_response_headers(&mut self, host: &impl Host) -> Action {
        if matches!(self.phase, Phase::Refused) {
            // The filter's own answer.
            return Action::Continue;
        }
        let header = |name| host.response_header(name).ok().flatten();
        if let Job::List(_) = self.job {
            // The list is rewritten for the key: its length changes, and an upstream
            // without a list (an error) is answered with the key's own.
            let upstream = header(":status").as_deref() == Some("200");
            if !upstream {
                let _ = host.set_response_header(":status", "200");
                let _ = host.set_response_header("content-type", "application/json");
            }
            let _ = host.remove_response_header("content-length");
            let _ = host.remove_response_header("content-encoding");
            self.phase = Phase::Response(Reader::List { upstream });
            return Action::Continue;
        }
        if let Some(RateHold {
            limits,
            standing: Some(Ok(standing)),
            ..
        }) = &self.rate
        {
            for (name, value) in rate::headers(limits, standing) {
                // Only informative: the response goes on without it.
                let _ = host.set_response_header(name, &value);
            }
        }
        self.phase = Phase::Response(Reader::Pass);
        let Job::Meter(meter) = &mut self.job else {
            return Action::Continue;
        };
        meter.status = header(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        if meter.api == Api::PerCall {
            // Billed per call: nothing in the body to read.
            return Action::Continue;
        }
        let encoded =
            header("content-encoding").is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"));
        if encoded {
            // Cannot be read; counted as missing usage when the stream ends.
            return Action::Continue;
        }
        let event_stream =
            header("content-type").is_some_and(|t| t.trim_start().starts_with("text/event-stream"));
        let editor = (meter.added_usage && event_stream).then(|| {
            // The editor changes the length.
            let _ = host.remove_response_header("content-length");
            StreamEditor::default()
        });
        self.phase = Phase::Response(Reader::Usage {
            scanner: Scanner::new(meter.api, event_stream),
            editor,
        });
        Action::Continue
    }

    pub fn on_response_body(
        &mut self,
        host: &impl Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        let Phase::Response(reader) = &mut self.phase else {
            return Action::Continue;
        };
        match reader {
            Reader::Pass => Action::Continue,
            Reader::List { upstream } => {
                let Job::List(allowed) = &self.job else {
                    return Action::Continue;
                };
                if !end_of_stream {
                    return Action::Pause;
                }
                let body = host.response_body(body_size).unwrap_or_default();
                let shown = upstream
                    .then(|| model_list::filter(&body, allowed))
                    .flatten()
                    .unwrap_or_else(|| model_list::own_list(allowed));
                let _ = host.set_response_body(body_size, &shown);
                Action::Continue
            }
            Reader::Usage { scanner, editor } => {
                // Each chunk goes on at once; the scanner keeps what it needs.
                let Ok(chunk) = host.response_body(body_size) else {
                    return Action::Continue;
                };
                scanner.push(&chunk);
                host.count(Event::Scanned(chunk.len()));
                if let Some(editor) = editor {
                    let mut out = editor.push(&chunk);
                    if end_of_stream {
                        out.extend(editor.finish());
                    }
                    if out != chunk {
                        let _ = host.set_response_body(body_size, &out);
                    }
                }
                Action::Continue
            }
        }
    }

    /// The request ended, however it did: what it used is recorded and settled, and its
    /// rate windows told.
    /// The host gave up on a hook of this request (the native build caught a panic, a
    /// bug): a request not yet passed on is refused with `internal_error` and what it
    /// reserved goes back; one already upstream goes on, billed when it ends for what was
    /// read of it (as a response whose usage cannot be read).
    pub fn on_failure(&mut self, host: &impl Host) -> Action {
        match self.phase {
            Phase::Upstream | Phase::Response(_) | Phase::Refused => Action::Continue,
            Phase::Start | Phase::Held(_) | Phase::Leasing(_) | Phase::Body(_) => {
                self.deny(host, Denial::FilterFailed)
            }
        }
    }

    pub fn on_log(&mut self, host: &impl Host) {
        let tokens = self.record_usage(host);
        self.end_rate(host, tokens);
    }

    fn finish(&mut self, host: &impl Host, result: Result<Action, Denial>) -> Action {
        match result {
            Ok(Action::Continue) => {
                if matches!(self.phase, Phase::Start) {
                    self.phase = Phase::Upstream;
                }
                host.count(Event::Allowed);
                Action::Continue
            }
            Ok(other) => other,
            Err(denial) => self.deny(host, denial),
        }
    }

    fn deny(&mut self, host: &impl Host, denial: Denial) -> Action {
        self.phase = Phase::Refused;
        let model = match &self.job {
            Job::Meter(meter) => meter.model.clone(),
            _ => None,
        };
        // Refused here, it never reached a provider: nothing to record, and what it
        // reserved goes back.
        if let Job::Meter(meter) = std::mem::replace(&mut self.job, Job::Pass) {
            if let Some(reservation) = meter.reservation {
                bill::release(host, reservation);
            }
        }
        host.count(Event::Denied(denial));
        // A rate-limit refusal says how the key stands; other refusals need nothing built.
        let limited = match &self.rate {
            Some(RateHold {
                limits,
                standing: Some(Err(standing)),
                ..
            }) => rate::headers(limits, standing),
            _ => Vec::new(),
        };
        let mut headers = vec![("content-type", "application/json")];
        headers.extend(limited.iter().map(|(n, v)| (*n, v.as_str())));
        // A request the windows had admitted (and a host failure then refused) ends here.
        self.end_rate(host, 0);
        // Nothing more to do if this fails: the stream is gone.
        let body = denial.body_naming(model.as_deref());
        let _ = host.send_response(denial.status(), &headers, body.as_bytes());
        Action::Pause
    }

    /// The last check of a request: its key's windows count it, or refuse it with
    /// `rate_limit_exceeded`. With credit leases, the windows hold it to this Envoy's
    /// shares of the key's limits (`limits::credit`): if only its share is full, it waits
    /// for a larger one (`Some((ledger, ask))`), unless it had the answer for that
    /// ledger already (`answered`): refused then, 503 if the key-service could not be
    /// asked. A share is kept while asks fail.
    fn admit_rate(
        &mut self,
        host: &impl Host,
        answered: Option<&str>,
    ) -> Result<Option<(String, u64)>, Denial> {
        let leased = self.plugin.config.credit_lease_ttl_ms > 0;
        let Some(hold) = self.rate.as_mut() else {
            return Ok(None);
        };
        let now_ms = host.now_ms().map_err(|_| HOST_FAILED)?;
        let admission =
            rate::admit(host, &hold.entry, hold.limits, now_ms, leased).map_err(|_| HOST_FAILED)?;
        let full = hold.limits;
        let held = admission.held_to;
        // Each limit of the key with this Envoy's share of it.
        let shares: Vec<(usize, u64, u64)> = if leased {
            [
                (rate::REQUESTS, full.rpm, held.rpm),
                (rate::TOKENS, full.tpm, held.tpm),
                (rate::IN_FLIGHT, full.max_parallel, held.max_parallel),
            ]
            .into_iter()
            .filter_map(|(which, full, share)| Some((which, share?, full?)))
            .collect()
        } else {
            Vec::new()
        };
        let mut standing = admission.result;
        // The headers tell what is left of the key's own limits as this Envoy counts, not
        // of its share: an admitted request's window is within its share, so that is
        // what is left of the share and the rest of the limit; a refused one's, what the
        // window counts.
        let (Ok(left) | Err(left)) = &mut standing;
        for &(which, share, full) in &shares {
            let room = match admission.result {
                Ok(_) => full.saturating_sub(share),
                Err(_) => full.saturating_sub(admission.levels[which]),
            };
            match which {
                rate::REQUESTS if admission.result.is_ok() => {
                    left.remaining_requests = left.remaining_requests.saturating_add(room)
                }
                rate::TOKENS if admission.result.is_ok() => {
                    left.remaining_tokens = left.remaining_tokens.saturating_add(room)
                }
                rate::REQUESTS => left.remaining_requests = room,
                rate::TOKENS => left.remaining_tokens = room,
                _ => {}
            }
        }
        let refused = standing.is_err();
        hold.standing = Some(standing);
        if !refused {
            return Ok(None);
        }
        // Refused: by the key's own limit, or only by this Envoy's share of it?
        let levels = admission.levels;
        if shares.iter().any(|&(which, _, full)| levels[which] >= full) {
            return Err(Denial::RateLimitExceeded);
        }
        let Some(&(which, _, _)) = shares
            .iter()
            .find(|&&(which, share, _)| levels[which] >= share)
        else {
            return Err(Denial::RateLimitExceeded);
        };
        let name = credit::share_entry(credit::SHARE_KINDS[which], &hold.key_id);
        let done = answered == Some(name.as_str());
        match ledger::need_share(host, &name, done).map_err(|_| HOST_FAILED)? {
            ledger::Reserve::NeedLease { ask, list, wake } => {
                if list && !credit::list(host, &name).map_err(|_| HOST_FAILED)? {
                    return Err(Denial::Overloaded);
                }
                if wake {
                    credit::wake(host).map_err(|_| HOST_FAILED)?;
                    host.wake_leader();
                }
                Ok(Some((name, ask)))
            }
            ledger::Reserve::LeaseFailed => Err(Denial::KeyServiceUnavailable),
            _ => Err(Denial::RateLimitExceeded),
        }
    }

    /// An admitted request of a rate-limited key ended having used `tokens`.
    fn end_rate(&mut self, host: &impl Host, tokens: u64) {
        let Some(hold) = self.rate.take() else {
            return;
        };
        if !matches!(hold.standing, Some(Ok(_))) || !hold.limits.counts_the_end() {
            return;
        }
        let in_flight = hold.limits.max_parallel.is_some();
        if let Ok(now_ms) = host.now_ms() {
            // A failure leaves the request counted in flight until Envoy restarts: the
            // key gets fewer parallel requests, never more.
            let _ = rate::end(host, &hold.entry, now_ms, tokens, in_flight);
        }
    }
}
