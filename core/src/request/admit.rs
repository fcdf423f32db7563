//! Deciding a request: on its headers, and when a rule needs it, on its body.

use std::net::IpAddr;
use std::rc::Rc;

use super::bill::Reserved;
use super::{
    Action, BodyHold, BodyWait, Host, Job, LeaseWait, Meter, Phase, RateHold, Request, HOST_FAILED,
};
use crate::decide::billing::{self, Billing};
use crate::decide::body_scan::{BodyScan, UsageEdit};
use crate::decide::decision::{check_model, decide, restricts_models, Denial};
use crate::decide::form_scan::FormScan;
use crate::decide::model::{self, ModelList};
use crate::decide::route::{self, Route};
use crate::decide::{credential, key_info, model_list};
use crate::keys::client_ip;
use crate::keys::entry::{self, Entry};
use crate::keys::secret::{self, KeyHash};
use crate::kv::HostError;
use crate::limits::ledger::{self, Estimate};
use crate::limits::rate::{self, Limits};
use crate::pairs;
use crate::sync::view::View;
use crate::usage::include_usage;
use crate::usage::report::ID_MAX;
use crate::usage::scan::Api;

/// Whether LLM requests of this key must reserve what they may cost: the key has a quota
/// or caps per model, or its account a balance.
fn is_limited(view: &View, key: &Entry) -> bool {
    // (The time does not matter: a limit that starts afresh is still a limit.)
    key.remaining_quota.is_some()
        || key.has_caps()
        || view.tables.balance(key.account(), 0).is_some()
}

/// The key with this hash, as shared data has it now.
pub(super) fn lookup(
    host: &impl Host,
    hash: &KeyHash,
    epoch: u32,
) -> Result<Option<Entry>, Denial> {
    entry::lookup(host, hash, epoch).map_err(|_| HOST_FAILED)
}

/// The client's address: asked of the host only for keys with an IP allowlist.
fn client_ip(host: &impl Host) -> Option<IpAddr> {
    let source = host.source_address().ok()??;
    client_ip::parse_source_address(std::str::from_utf8(&source).ok()?)
}

/// For an upload waiting only for its model check, whether its `model` form field has been
/// read (SDKs send it before the file): it is decided then, and the file streams on
/// without being held, so uploads larger than `max_body_bytes` work too. Reads the body
/// that came (up to `max_body_bytes`) if it has to.
pub(super) fn form_model_read(
    host: &impl Host,
    wait: &mut BodyWait,
    max_body_bytes: usize,
) -> Result<bool, HostError> {
    if wait.form.is_none() || !wait.model_check || wait.reserve || wait.add_usage {
        return Ok(false);
    }
    scan_to(host, wait, wait.size.min(max_body_bytes))?;
    Ok(wait.form.as_ref().is_some_and(FormScan::is_done))
}

/// Most of a body copied into the VM at once: a JSON body is read in windows of this
/// size as it arrives, never whole, so the VM's memory does not grow with body sizes.
const SCAN_WINDOW: usize = 64 * 1024;

/// Reads the body's bytes up to `size` that were not read yet (until its reader needs no
/// more).
pub(super) fn scan_to(host: &impl Host, wait: &mut BodyWait, size: usize) -> Result<(), HostError> {
    loop {
        let (start, finished) = match &wait.form {
            Some(form) => (form.offset(), form.is_done() || form.failed()),
            None => (wait.scan.offset(), wait.scan.failed()),
        };
        if start >= size || finished {
            return Ok(());
        }
        let bytes = host.request_body(start, (size - start).min(SCAN_WINDOW))?;
        if bytes.is_empty() {
            // Less body than Envoy said it holds: nothing sound can be read.
            return Err(HostError(0));
        }
        match &mut wait.form {
            Some(form) => form.feed(&bytes),
            None => wait.scan.feed(&bytes),
        }
    }
}

/// Makes a streaming request ask for usage (`edit`) in a body of `size` bytes. Only the
/// body's first bytes are rewritten (all Envoy allows): its opening brace,
/// or everything up to the end of its own `stream_options`, which is then the one time
/// a part of a body is copied into the VM (bounded by `max_body_bytes`).
fn ask_for_usage(host: &impl Host, edit: UsageEdit, size: usize) -> Result<(), HostError> {
    let (replaced, data) = match edit {
        UsageEdit::Prefix { len, data } => (len, data),
        UsageEdit::Value { start, end, data } => {
            let mut prefix = host.request_body(0, start)?;
            if prefix.len() != start {
                return Err(HostError(0));
            }
            prefix.extend_from_slice(&data);
            (end, prefix)
        }
    };
    host.set_request_body(replaced, &data)?;
    // The whole body is here: its new length is exact (some upstreams refuse a chunked
    // request body).
    let length = size.saturating_sub(replaced).saturating_add(data.len());
    host.set_request_header("content-length", &length.to_string())
}

/// What the filter answers itself about the calling key, from its snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnAnswer {
    /// `key_info_path`: the key's own view (`decide::key_info`).
    KeyInfo,
    /// One of the one-api-style billing paths (`decide::billing`).
    Billing(Billing),
}

impl Request {
    /// Which of the filter's own answers a request asks for: a `GET` on one of their
    /// paths (the query aside), exactly.
    fn own_answer(&self, headers: &[(&str, &str)]) -> Option<OwnAnswer> {
        let config = &self.plugin.config;
        let header = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        if header(":method") != Some("GET") {
            return None;
        }
        let path = header(":path")?.split(['?', '#']).next()?;
        if !config.key_info_path.is_empty() && path == config.key_info_path {
            return Some(OwnAnswer::KeyInfo);
        }
        Billing::of_path(path)
            .filter(|_| config.billing_paths)
            .map(OwnAnswer::Billing)
    }

    /// `GET` on `key_info_path` or a billing path: the key's own view or its one-api-style
    /// billing figures, answered here from the snapshot. A key refused only for being
    /// out of quota still sees itself (as `exhausted`); any other refusal stands. `None`:
    /// not such a request.
    fn own_view(
        &mut self,
        host: &impl Host,
        headers: &[(&str, &str)],
        view: Option<&View>,
        secret: Option<&str>,
        decided: &Result<Entry, Denial>,
        now: i64,
    ) -> Result<Option<Action>, Denial> {
        let Some(answer) = self.own_answer(headers) else {
            return Ok(None);
        };
        let (key, status) = match (decided, view, secret) {
            (Ok(key), Some(_), Some(_)) => (key.clone(), "active"),
            (Err(Denial::InsufficientQuota), Some(view), Some(secret)) => {
                let key = lookup(host, &secret::hash(secret), view.meta.epoch)?;
                (key.ok_or(Denial::InvalidApiKey)?, "exhausted")
            }
            (Err(denial), _, _) => return Err(*denial),
            _ => return Err(HOST_FAILED),
        };
        let Some(view) = view else {
            return Err(HOST_FAILED);
        };
        let version = view.meta.version;
        let pending =
            |name: &str| ledger::read(host, name).map_or(0, |ledger| ledger.pending(version));
        let body = match answer {
            OwnAnswer::KeyInfo => key_info::render(&key, &view.tables, status, now, pending),
            OwnAnswer::Billing(which) => {
                let figures = billing::figures(&key, &view.tables, now, pending);
                billing::render(which, &key, figures, self.plugin.config.credits_per_usd)
            }
        };
        let headers = [
            ("content-type", "application/json"),
            ("cache-control", "no-store"),
        ];
        // Nothing more to do if this fails: the stream is gone.
        let _ = host.send_response(200, &headers, body.as_bytes());
        // Answered here: nothing goes upstream, nothing is recorded.
        self.phase = Phase::Refused;
        Ok(Some(Action::Pause))
    }

    /// A VM that has not seen a snapshot yet looks in shared data at once, rather than
    /// waiting for its next tick: a new worker serves from its first request.
    pub(super) fn ensure_view(&self, host: &impl Host) {
        if self.plugin.view.borrow().is_none() {
            if let Ok(view) = View::refresh(host, None) {
                *self.plugin.view.borrow_mut() = view;
            }
        }
    }

    /// Decides a request from its headers. `may_refresh`: if the key is newer than this
    /// VM's tables (its group or account came with a sync the VM has not read yet, as
    /// when both were created a moment ago), reread them and decide again, once.
    pub(super) fn admit(
        &mut self,
        host: &impl Host,
        end_of_stream: bool,
        may_refresh: bool,
    ) -> Result<Action, Denial> {
        let buf = host.request_headers().map_err(|_| HOST_FAILED)?;
        let headers = pairs::parse(&buf).map_err(|e| match e {
            // A client's obs-text bytes: its request is bad, the gate is not down.
            pairs::PairsError::NotUtf8 => Denial::InvalidRequestHeader,
            pairs::PairsError::Malformed => HOST_FAILED,
        })?;
        let secret = credential::find(&headers);
        let now_ms = host.now_ms().map_err(|_| HOST_FAILED)?;
        self.ensure_view(host);
        let plugin = Rc::clone(&self.plugin);
        let held = plugin.view.borrow();
        let view = held.as_ref().filter(|v| plugin.is_fresh(v, now_ms));
        let epoch = view.map_or(0, |v| v.meta.epoch);
        let now = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        let newer_than_tables = std::cell::Cell::new(false);
        let decided = decide(
            view.map(|v| &v.tables),
            secret,
            now,
            |hash| {
                let key = lookup(host, hash, epoch)?;
                if let (Some(key), Some(view)) = (&key, view) {
                    newer_than_tables.set(!view.tables.knows(key.group(), key.account()));
                }
                Ok(key)
            },
            || client_ip(host),
        );
        if newer_than_tables.get() && may_refresh {
            drop(held);
            // The tables are reread even if the version has not moved yet: the leader
            // writes them before the keys, and publishes the version after both.
            *plugin.view.borrow_mut() = View::refresh(host, None).ok().flatten();
            return self.admit(host, end_of_stream, false);
        }
        if let Some(answered) = self.own_view(host, &headers, view, secret, &decided, now)? {
            return Ok(answered);
        }
        let key = decided?;
        // decide() admits only with a view and a secret.
        let (Some(view), Some(secret)) = (view, secret) else {
            return Err(HOST_FAILED);
        };
        self.forward_identity(host, &headers, &key)
            .map_err(|_| HOST_FAILED)?;

        let header = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        // The path as the upstream will route it; one that hides a slash in an escape
        // cannot be read, and is metered as nothing.
        let path = header(":path").and_then(|p| route::normalize(p).ok());
        let path = path.as_deref();
        let route = path.map_or(Route::Unmetered, |p| {
            route::classify(header(":method").unwrap_or_default(), p)
        });
        let limited = is_limited(view, &key);
        // An operator may price a route keygate cannot meter per call: `route:{path}`
        // (patterns too: `route:/v1/files*`).
        let mut route_price = None;
        if limited && route == Route::Unmetered {
            let name = path.map(|p| format!("route:{}", p.to_ascii_lowercase()));
            route_price = name.filter(|n| {
                view.tables
                    .price(n)
                    .is_some_and(|price| price.per_request > 0.0)
            });
            if route_price.is_none() {
                return Err(Denial::EndpointNotMetered);
            }
        }
        let route = match route_price {
            Some(_) => Route::Metered(Api::PerCall),
            None => route,
        };
        self.expect_usage(host, &headers, route, &key)
            .map_err(|_| HOST_FAILED)?;
        let metered = matches!(self.job, Job::Meter(_));
        if let (Job::Meter(meter), Some(name)) = (&mut self.job, route_price) {
            // Billed under the route's name, at its price per call.
            meter.model = Some(name);
        }
        // OpenAI streams may need usage asked for: their body is read (up to the limit).
        let add_usage = !end_of_stream && metered && path.is_some_and(include_usage::applies_to);
        let mut model_check = false;
        let mut checked_path_model = false;
        let path_model = path.and_then(model::from_path);
        if let Some(requested) = path_model {
            self.forward_model(host, Some(requested))
                .map_err(|_| HOST_FAILED)?;
            if let Job::Meter(meter) = &mut self.job {
                meter.model = Some(requested.to_string());
            }
            check_model(&view.tables, &key, Some(requested))?;
            // Azure's deployment names the model, and so may the body (as proxies that
            // route by it read it): a restricted key's body is checked too.
            let azure = path.is_some_and(|p| p.starts_with("/openai/deployments/"));
            if azure && !end_of_stream && restricts_models(&view.tables, &key) {
                model_check = true;
                checked_path_model = true;
            }
        } else if restricts_models(&view.tables, &key) {
            // Only requests whose key or group restricts models must show their model.
            let method = header(":method").unwrap_or_default();
            let listed = path.and_then(|p| route::listed_model(method, p));
            if path.is_some_and(|p| route::is_model_list(method, p)) {
                // Answered with the key's models when the response comes.
                let models: Vec<String> =
                    key.model_names().into_iter().map(str::to_owned).collect();
                self.job = Job::List(model_list::Allowed {
                    key: ModelList::for_key(&models),
                    group: view.tables.group_models(key.group()).clone(),
                });
                // Only a plain body can be filtered.
                host.set_request_header("accept-encoding", "identity")
                    .map_err(|_| HOST_FAILED)?;
            } else if listed.is_some() {
                check_model(&view.tables, &key, listed)?;
            } else if end_of_stream {
                check_model(&view.tables, &key, None)?;
            } else {
                model_check = true;
            }
        }
        // LLM requests of a limited key or account reserve what they may cost; the body
        // tells how much, when there is one.
        let limited = metered && limited;
        self.rate = rate_hold(&plugin, view, &key);
        if limited && end_of_stream {
            let hash = secret::hash(secret);
            let estimate = Estimate::default();
            if let Reserved::Wait { ledger, ask } =
                self.reserve(host, view, &hash, path_model, estimate, None)?
            {
                self.wait_for_lease(host, hash, estimate, ledger, ask, None, 0, false)?;
                return Ok(Action::Hold);
            }
        }
        let reserve = limited && !end_of_stream;
        if !model_check && !add_usage && !reserve {
            if let Some((ledger, ask)) = self.admit_rate(host, None)? {
                let hash = secret::hash(secret);
                let estimate = Estimate::default();
                self.wait_for_lease(host, hash, estimate, ledger, ask, None, 0, true)?;
                return Ok(Action::Hold);
            }
            return Ok(Action::Continue);
        }
        let form_boundary = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            .and_then(|(_, v)| model::form_boundary(v))
            .map(str::to_owned);
        // An upload checked only for its model may be decided once its model field is in
        // (see `form_model_read`): its length does not matter then.
        let form_head_will_do = form_boundary.is_some() && !reserve && !add_usage;
        if (model_check || reserve) && !form_head_will_do {
            // A body that says it is too large to read is refused before it is buffered.
            let length = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.trim().parse::<u64>().unwrap_or(u64::MAX));
            if length.is_some_and(|n| n > plugin.config.max_body_bytes as u64) {
                return Err(Denial::RequestTooLarge);
            }
        }
        self.phase = Phase::Body(Box::new(BodyWait {
            key: secret::hash(secret),
            model_check,
            path_model: checked_path_model,
            add_usage,
            reserve,
            form: form_boundary.as_deref().map(FormScan::new),
            size: 0,
            scan: BodyScan::new(),
            hold: super::BodyHold::new(&self.plugin),
        }));
        Ok(Action::Pause)
    }

    /// Removes every client credential and client-sent `x-keygate-*` header, and tells
    /// the upstream which key this is (in headers added, not set: any of their names the
    /// client sent is among those removed).
    fn forward_identity(
        &self,
        host: &impl Host,
        headers: &[(&str, &str)],
        key: &Entry,
    ) -> Result<(), HostError> {
        let id = &self.plugin.config.identity_headers;
        for name in credential::headers_to_strip(headers, |name| id.is_own(name)) {
            host.remove_request_header(name)?;
        }
        let path = headers.iter().find(|(n, _)| *n == ":path");
        if let Some(stripped) = path.and_then(|(_, p)| credential::strip_query_key(p)) {
            host.set_request_header(":path", &stripped)?;
        }
        for (name, value) in [
            (&id.key_id, key.id()),
            (&id.key_name, key.name()),
            (&id.group, key.group()),
            (&id.account, key.account()),
        ] {
            if let Some(name) = name {
                host.add_request_header(name, value)?;
            }
        }
        Ok(())
    }

    fn forward_model(&self, host: &impl Host, requested: Option<&str>) -> Result<(), HostError> {
        match (&self.plugin.config.identity_headers.model, requested) {
            (Some(name), Some(m)) if model::is_header_safe(m) => host.set_request_header(name, m),
            _ => Ok(()),
        }
    }

    /// Notes an admitted request to an LLM API so that its response is read for usage, and
    /// asks the upstream for an uncompressed body, which is the only kind that can be read.
    fn expect_usage(
        &mut self,
        host: &impl Host,
        headers: &[(&str, &str)],
        route: Route,
        key: &Entry,
    ) -> Result<(), HostError> {
        let Route::Metered(api) = route else {
            return Ok(());
        };
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        };
        // A route priced per call has no usage to read: its answer may stay compressed.
        let read_usage = api != Api::PerCall;
        if read_usage
            && header("accept-encoding").is_some_and(|v| !v.trim().eq_ignore_ascii_case("identity"))
        {
            host.set_request_header("accept-encoding", "identity")?;
        }
        // The record's id is the filter's own, which no client can choose (see
        // `request_id`); without randomness, Envoy's x-request-id, which it regenerates
        // for requests from outside.
        let request_id = match &self.plugin.ids {
            Some(ids) => ids.next(),
            None => match header("x-request-id").filter(|id| !id.is_empty()) {
                Some(id) => model::printable(id, ID_MAX),
                None => return Ok(()),
            },
        };
        self.job = Job::Meter(Meter {
            request_id,
            key_id: key.id().to_string(),
            api,
            model: None,
            status: 0,
            added_usage: false,
            request_bytes: None,
            reservation: None,
        });
        Ok(())
    }

    /// Decides a request on its body: the whole of it, or (an upload whose model field has
    /// arrived) its head, the rest then streaming on.
    pub(super) fn on_body(
        &mut self,
        host: &impl Host,
        wait: &mut BodyWait,
        body_size: usize,
        whole: bool,
    ) -> Result<Action, Denial> {
        scan_to(host, wait, body_size).map_err(|_| HOST_FAILED)?;
        let read = match &wait.form {
            Some(form) => form.facts(),
            None if whole => wait.scan.facts(),
            None => Err(model::BodyError::NotJson),
        };
        let facts = match (read, wait.model_check) {
            (Ok(facts), _) => facts,
            (Err(model::BodyError::NotJson), true) => return Err(Denial::InvalidRequestBody),
            // Read only to add usage or to estimate: whatever it is goes on as it is.
            (Err(model::BodyError::NotJson), false) => model::Facts::default(),
        };
        let requested = facts.model.as_deref();
        self.forward_model(host, requested)
            .map_err(|_| HOST_FAILED)?;
        if let Job::Meter(meter) = &mut self.job {
            if meter.model.is_none() {
                meter.model = facts.model.clone();
            }
            if whole {
                meter.request_bytes = Some(body_size as u64);
            }
        }
        if wait.model_check || wait.reserve {
            let now_ms = host.now_ms().map_err(|_| HOST_FAILED)?;
            let plugin = Rc::clone(&self.plugin);
            let view = plugin.view.borrow();
            let view = view
                .as_ref()
                .filter(|v| plugin.is_fresh(v, now_ms))
                .ok_or(Denial::KeyServiceUnavailable)?;
            // The snapshot may have changed while the body arrived: check the key as it is
            // now.
            let key = lookup(host, &wait.key, view.meta.epoch)?.ok_or(Denial::InvalidApiKey)?;
            // With the path's model checked already, a body without one needs nothing.
            if wait.model_check && !(wait.path_model && requested.is_none()) {
                check_model(&view.tables, &key, requested)?;
            }
            if wait.reserve {
                let (api, model) = match &self.job {
                    Job::Meter(meter) => (Some(meter.api), meter.model.clone()),
                    _ => (None, None),
                };
                if facts.background && api == Some(Api::Responses) {
                    // Its usage comes with a later fetch the filter cannot tie to it.
                    return Err(Denial::EndpointNotMetered);
                }
                let estimate = Estimate {
                    body_bytes: body_size as u64,
                    max_output_tokens: facts.max_output_tokens,
                };
                let reserved =
                    self.reserve(host, view, &wait.key, model.as_deref(), estimate, None)?;
                if let Reserved::Wait { ledger, ask } = reserved {
                    let edit = wait.scan.usage_edit().filter(|_| wait.add_usage && whole);
                    self.phase = Phase::Upstream;
                    let hash = wait.key;
                    self.wait_for_lease(host, hash, estimate, ledger, ask, edit, body_size, false)?;
                    if let Phase::Leasing(lease) = &mut self.phase {
                        lease.hold = std::mem::replace(&mut wait.hold, BodyHold::new(&plugin));
                    }
                    return Ok(Action::Hold);
                }
            }
        }
        if let Some((ledger, ask)) = self.admit_rate(host, None)? {
            let edit = wait.scan.usage_edit().filter(|_| wait.add_usage && whole);
            self.phase = Phase::Upstream;
            let estimate = Estimate::default();
            self.wait_for_lease(host, wait.key, estimate, ledger, ask, edit, body_size, true)?;
            if let Phase::Leasing(lease) = &mut self.phase {
                lease.hold = std::mem::replace(&mut wait.hold, BodyHold::new(&self.plugin));
            }
            return Ok(Action::Hold);
        }
        if wait.add_usage && whole {
            if let Some(edit) = wait.scan.usage_edit() {
                ask_for_usage(host, edit, body_size).map_err(|_| HOST_FAILED)?;
                if let Job::Meter(meter) = &mut self.job {
                    meter.added_usage = true;
                }
            }
        }
        Ok(Action::Continue)
    }
}

impl Request {
    /// The request waits for a credit lease (see `Request::lease_came`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn wait_for_lease(
        &mut self,
        host: &impl Host,
        key: KeyHash,
        estimate: Estimate,
        ledger: String,
        ask: u64,
        edit: Option<UsageEdit>,
        body_size: usize,
        rate_only: bool,
    ) -> Result<(), Denial> {
        let now_ms = host.now_ms().map_err(|_| HOST_FAILED)?;
        self.phase = Phase::Leasing(Box::new(LeaseWait {
            key,
            estimate,
            ledger,
            ask,
            until_ms: now_ms.saturating_add(self.plugin.config.credit_lease_wait_ms),
            edit,
            body_size,
            hold: BodyHold::new(&self.plugin),
            rate_only,
        }));
        Ok(())
    }

    /// The ask that carried a waiting request's need was answered: the request reserves
    /// again, and goes on if it fits now.
    pub(super) fn admit_leased(
        &mut self,
        host: &impl Host,
        wait: LeaseWait,
    ) -> Result<Action, Denial> {
        let answered = Some(wait.ledger.as_str());
        let next = if wait.rate_only {
            None
        } else {
            self.reserve_again(host, &wait, answered)?
        };
        let next = match next {
            Some(next) => Some(next),
            None => self.admit_rate(host, answered)?,
        };
        if let Some((ledger, ask)) = next {
            // Its key's lease covers it now, but its account's, its cap's or a share of a
            // rate limit must grow too: it waits on (until the same time), its cost
            // reserved if it was.
            let rate_only = wait.rate_only
                || matches!(
                    self.job,
                    Job::Meter(Meter {
                        reservation: Some(_),
                        ..
                    })
                );
            self.phase = Phase::Leasing(Box::new(LeaseWait {
                ledger,
                ask,
                rate_only,
                ..wait
            }));
            return Ok(Action::Hold);
        }
        if let Some(edit) = wait.edit {
            ask_for_usage(host, edit, wait.body_size).map_err(|_| HOST_FAILED)?;
            if let Job::Meter(meter) = &mut self.job {
                meter.added_usage = true;
            }
        }
        if wait.body_size > 0 {
            self.body_received = wait.body_size as u64;
        }
        Ok(Action::Continue)
    }

    /// A request waiting for a credit lease reserves again: `Some` if it must wait on.
    fn reserve_again(
        &mut self,
        host: &impl Host,
        wait: &LeaseWait,
        answered: Option<&str>,
    ) -> Result<Option<(String, u64)>, Denial> {
        let now_ms = host.now_ms().map_err(|_| HOST_FAILED)?;
        let plugin = Rc::clone(&self.plugin);
        let view = plugin.view.borrow();
        let view = view
            .as_ref()
            .filter(|v| plugin.is_fresh(v, now_ms))
            .ok_or(Denial::KeyServiceUnavailable)?;
        let model = match &self.job {
            Job::Meter(meter) => meter.model.clone(),
            _ => None,
        };
        match self.reserve(
            host,
            view,
            &wait.key,
            model.as_deref(),
            wait.estimate,
            answered,
        )? {
            Reserved::Yes => Ok(None),
            Reserved::Wait { ledger, ask } => Ok(Some((ledger, ask))),
        }
    }
}

/// The rate windows of the key, if it or its group has limits.
fn rate_hold(plugin: &super::Plugin, view: &View, key: &Entry) -> Option<RateHold> {
    let (group_rpm, group_tpm) = view.tables.group_rates(key.group());
    // With credit leases each Envoy holds a share of the limits; without, `replicas`
    // divides them.
    let replicas = match plugin.config.credit_lease_ttl_ms {
        0 => plugin.config.replicas,
        _ => 1,
    };
    let limits = Limits::effective(key.limits, group_rpm, group_tpm, replicas);
    limits.any().then(|| RateHold {
        key_id: key.id().to_string(),
        entry: rate::entry_name(key.id()),
        limits,
        standing: None,
    })
}
