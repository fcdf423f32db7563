//! The HTTP context of one request: gathers the headers, the clock and (when a rule needs
//! them) the client's address and the body from the host, looks the key up in shared
//! data, asks `decision`, and either answers with the OpenAI-style error or strips the
//! credential and passes the request on with the `x-keygate-*` headers set.
//!
//! Every host call goes through `host`, which returns failures instead of panicking; a
//! failure the request cannot do without ends it with a 503, never with a credential
//! passed upstream.

use std::net::IpAddr;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::config::{Config, IdentityHeaders};
use crate::decision::{check_model, decide, restricts_models, Denial};
use crate::entry::Entry;
use crate::host::{self, Shared};
use crate::include_usage::{self, StreamEditor};
use crate::ledger::{self, Estimate};
use crate::metrics::Metrics;
use crate::model::ModelList;
use crate::pricing::{self, Tokens};
use crate::rate::{self, Limits, Standing};
use crate::report::{Charge, Record, SharedOutbox};
use crate::request_id::RequestIds;

use crate::route::{self, Route};
use crate::secret::{self, KeyHash};
use crate::shared::{self, HostError, SharedView, View};
use crate::usage::{self, Api, Scanner, Usage};
use crate::{client_ip, credential, model, model_list, pairs};

pub struct Http {
    view: SharedView,
    identity: Rc<IdentityHeaders>,
    outbox: SharedOutbox,
    /// An admitted request to an LLM API: whose usage to record.
    pending: Option<Pending>,
    /// Reads the response body of `pending`.
    scanner: Option<Scanner>,
    max_body_bytes: usize,
    max_snapshot_age_ms: u64,
    metrics: Rc<Metrics>,
    /// Set while the request body is being buffered, and why.
    awaiting_body: Option<BodyWait>,
    /// Size of the body buffered so far.
    body_size: usize,
    /// Bytes of request body that have arrived (what a client that leaves is billed for,
    /// never its `content-length`, which it may lie in).
    body_received: u64,
    /// Takes out of an OpenAI stream what asking for its usage added.
    editor: Option<StreamEditor>,
    /// What this request holds in the quota ledgers until it ends.
    reservation: Option<Reservation>,
    default_output_tokens: u64,
    /// Envoys sharing the keys' traffic (each rate limit is divided by it).
    replicas: u64,
    /// The request's key has rate limits: its windows, and once admitted how it stood.
    rate: Option<RateHold>,
    /// Keys and accounts with a limit may call models without a price.
    allow_unpriced_models: bool,
    /// The boundary of a `multipart/form-data` request body (an upload), whose model is
    /// its `model` form field.
    form_boundary: Option<String>,
    /// A model list read with a model-restricted key: what it may show.
    listing: Option<model_list::Allowed>,
    /// The upstream answered the list with 200 (else the key's own list is sent).
    listing_upstream: bool,
    /// Where usage records' ids come from (see `request_id`).
    ids: Option<Rc<RequestIds>>,
    /// The path named the model (and it was checked); the body may name one too.
    path_model: bool,
    /// Bytes of an upload's head searched for its model field so far.
    form_searched: usize,
}

/// A rate-limited key's request.
struct RateHold {
    entry: String,
    limits: Limits,
    /// Set when the windows admitted (counted) the request; refused, the standing that
    /// says how long to wait.
    standing: Option<Result<Standing, Standing>>,
}

/// An admitted request's reservation in the ledgers of its key and account (`ledger`),
/// each only if limited.
struct Reservation {
    amount: u64,
    key_ledger: Option<String>,
    account_ledger: Option<String>,
    /// The group's price multiplier, to price what the request turns out to use.
    ratio: f64,
    /// The most the request was estimated to use: what it is billed if its answer says
    /// nothing of its usage.
    estimate: Tokens,
}

/// What is known of an admitted LLM request when its response starts.
struct Pending {
    request_id: String,
    key_id: String,
    api: Api,
    /// The model the request named, when it was read (path or body).
    model: Option<String>,
    status: u16,
    /// The filter added `stream_options.include_usage` to the request.
    added_usage: bool,
    /// Size of the request body as read, when it was read whole.
    request_bytes: Option<u64>,
}

/// Why an admitted request's body is being read.
#[derive(Debug, Clone, Copy)]
struct BodyWait {
    /// The hash of the request's key, to look the key up again once the body is in.
    key: KeyHash,
    /// The model must be checked against the key.
    model_check: bool,
    /// It may be an OpenAI stream that does not ask for usage.
    add_usage: bool,
    /// The key or its account is limited: what the request may cost is reserved.
    reserve: bool,
}

/// Whether LLM requests of this key must reserve what they may cost: the key has a quota,
/// or its account a balance.
fn is_limited(view: &View, key: &Entry) -> bool {
    key.remaining_quota.is_some() || view.tables.balance(key.account()).is_some()
}

/// How much of an upload is searched for its `model` field before the rest is waited for.
const FORM_HEAD: usize = 64 * 1024;

/// Any host failure on the request path: the request cannot be decided safely.
const HOST_FAILED: Denial = Denial::KeyServiceUnavailable;

impl Http {
    pub fn new(
        view: SharedView,
        config: &Config,
        identity: Rc<IdentityHeaders>,
        outbox: SharedOutbox,
        metrics: Rc<Metrics>,
        ids: Option<Rc<RequestIds>>,
    ) -> Self {
        Http {
            view,
            identity,
            outbox,
            pending: None,
            scanner: None,
            metrics,
            max_body_bytes: config.max_body_bytes,
            max_snapshot_age_ms: config.max_snapshot_age_ms,
            awaiting_body: None,
            body_size: 0,
            body_received: 0,
            editor: None,
            reservation: None,
            default_output_tokens: config.default_output_tokens,
            replicas: config.replicas,
            rate: None,
            allow_unpriced_models: config.allow_unpriced_models,
            form_boundary: None,
            listing: None,
            listing_upstream: false,
            ids,
            path_model: false,
            form_searched: 0,
        }
    }

    /// Whether the view may be answered from: it exists, and the key-service has
    /// confirmed it within the configured maximum age.
    fn is_fresh(&self, view: &View, now_ms: u64) -> bool {
        now_ms.saturating_sub(view.meta.confirmed_at_ms) <= self.max_snapshot_age_ms
    }

    /// A VM that has not seen a snapshot yet looks in shared data at once, rather than
    /// waiting for its next tick: a new worker serves from its first request.
    fn ensure_view(&self) {
        if self.view.borrow().is_none() {
            if let Ok(view) = View::refresh(&Shared, None) {
                *self.view.borrow_mut() = view;
            }
        }
    }

    /// The key with this hash, as shared data has it now.
    fn lookup(hash: &KeyHash, epoch: u32) -> Result<Option<Entry>, Denial> {
        shared::lookup(&Shared, hash, epoch).map_err(|_| HOST_FAILED)
    }

    /// The client's address: asked of the host only for keys with an IP allowlist.
    fn client_ip() -> Option<IpAddr> {
        let source = host::property(&["source", "address"]).ok()??;
        client_ip::parse_source_address(std::str::from_utf8(&source).ok()?)
    }

    fn allow(&self) -> Action {
        self.metrics.allowed();
        Action::Continue
    }

    fn deny(&mut self, denial: Denial) -> Action {
        // Refused here, it never reached a provider: nothing to record or reserve.
        self.pending = None;
        self.settle(None, None, 0);
        self.metrics.denied(denial);
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
        self.end_rate(0);
        // Nothing more to do if this fails: the stream is gone.
        let _ = host::send_response(denial.status(), &headers, denial.body().as_bytes());
        Action::Pause
    }

    /// The rate windows of the key, if it or its group has limits.
    fn rate_hold(&self, view: &View, key: &Entry) -> Option<RateHold> {
        let (group_rpm, group_tpm) = view.tables.group_rates(key.group());
        let limits = Limits::effective(key.limits, group_rpm, group_tpm, self.replicas);
        limits.any().then(|| RateHold {
            entry: rate::entry_name(key.id()),
            limits,
            standing: None,
        })
    }

    /// The last check of a request: its key's windows count it, or refuse it with
    /// `rate_limit_exceeded`.
    fn admit_rate(&mut self) -> Result<(), Denial> {
        let Some(hold) = self.rate.as_mut() else {
            return Ok(());
        };
        let now_ms = host::now_ms().map_err(|_| HOST_FAILED)?;
        let standing =
            rate::admit(&Shared, &hold.entry, hold.limits, now_ms).map_err(|_| HOST_FAILED)?;
        let refused = standing.is_err();
        hold.standing = Some(standing);
        if refused {
            return Err(Denial::RateLimitExceeded);
        }
        Ok(())
    }

    /// An admitted request of a rate-limited key ended having used `tokens`.
    fn end_rate(&mut self, tokens: u64) {
        let Some(hold) = self.rate.take() else {
            return;
        };
        if !matches!(hold.standing, Some(Ok(_))) || !hold.limits.counts_the_end() {
            return;
        }
        let in_flight = hold.limits.max_parallel.is_some();
        if let Ok(now_ms) = host::now_ms() {
            // A failure leaves the request counted in flight until Envoy restarts: the
            // key gets fewer parallel requests, never more.
            let _ = rate::end(&Shared, &hold.entry, now_ms, tokens, in_flight);
        }
    }

    /// Removes every client credential and client-sent `x-keygate-*` header, and tells
    /// the upstream which key this is.
    fn forward_identity(&self, headers: &[(&str, &str)], key: &Entry) -> Result<(), HostError> {
        let own = |name: &str| self.identity.is_own(name);
        for name in credential::headers_to_strip(headers, own) {
            host::remove_request_header(name)?;
        }
        let path = headers.iter().find(|(n, _)| *n == ":path");
        if let Some(stripped) = path.and_then(|(_, p)| credential::strip_query_key(p)) {
            host::set_request_header(":path", &stripped)?;
        }
        let id = &self.identity;
        for (name, value) in [
            (&id.key_id, key.id()),
            (&id.key_name, key.name()),
            (&id.group, key.group()),
            (&id.account, key.account()),
        ] {
            if let Some(name) = name {
                host::set_request_header(name, value)?;
            }
        }
        Ok(())
    }

    fn forward_model(&self, requested: Option<&str>) -> Result<(), HostError> {
        match (&self.identity.model, requested) {
            (Some(name), Some(m)) if model::is_header_safe(m) => host::set_request_header(name, m),
            _ => Ok(()),
        }
    }

    /// Decides a request from its headers. `may_refresh`: if the key is newer than this
    /// VM's tables (its group or account came with a sync the VM has not read yet, as
    /// when both were created a moment ago), reread them and decide again, once.
    fn on_headers(&mut self, end_of_stream: bool, may_refresh: bool) -> Result<Action, Denial> {
        let buf = host::request_headers().map_err(|_| HOST_FAILED)?;
        let headers = pairs::parse(&buf).map_err(|e| match e {
            // A client's obs-text bytes: its request is bad, the gate is not down.
            pairs::PairsError::NotUtf8 => Denial::InvalidRequestHeader,
            pairs::PairsError::Malformed => HOST_FAILED,
        })?;
        let secret = credential::find(&headers);
        let now_ms = host::now_ms().map_err(|_| HOST_FAILED)?;
        self.ensure_view();
        let shared = Rc::clone(&self.view);
        let held = shared.borrow();
        let view = held.as_ref().filter(|v| self.is_fresh(v, now_ms));
        let epoch = view.map_or(0, |v| v.meta.epoch);
        let now = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        let newer_than_tables = std::cell::Cell::new(false);
        let decided = decide(
            view.map(|v| &v.tables),
            secret,
            now,
            |hash| {
                let key = Self::lookup(hash, epoch)?;
                if let (Some(key), Some(view)) = (&key, view) {
                    newer_than_tables.set(!view.tables.knows(key.group(), key.account()));
                }
                Ok(key)
            },
            Self::client_ip,
        );
        if newer_than_tables.get() && may_refresh {
            drop(held);
            // The tables are reread even if the version has not moved yet: the leader
            // writes them before the keys, and publishes the version after both.
            *self.view.borrow_mut() = View::refresh(&Shared, None).ok().flatten();
            return self.on_headers(end_of_stream, false);
        }
        let key = decided?;
        // decide() admits only with a view and a secret.
        let (Some(view), Some(secret)) = (view, secret) else {
            return Err(HOST_FAILED);
        };
        self.forward_identity(&headers, &key)
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
        self.expect_usage(&headers, route, &key)
            .map_err(|_| HOST_FAILED)?;
        if let (Some(pending), Some(name)) = (self.pending.as_mut(), route_price) {
            // Billed under the route's name, at its price per call.
            pending.model = Some(name);
        }
        // OpenAI streams may need usage asked for: their body is read (up to the limit).
        let add_usage =
            !end_of_stream && self.pending.is_some() && path.is_some_and(include_usage::applies_to);
        let mut model_check = false;
        let path_model = path.and_then(model::from_path);
        if let Some(requested) = path_model {
            self.forward_model(Some(requested))
                .map_err(|_| HOST_FAILED)?;
            if let Some(pending) = self.pending.as_mut() {
                pending.model = Some(requested.to_string());
            }
            check_model(&view.tables, &key, Some(requested))?;
            // Azure's deployment names the model, and so may the body (as proxies that
            // route by it read it): a restricted key's body is checked too.
            let azure = path.is_some_and(|p| p.starts_with("/openai/deployments/"));
            if azure && !end_of_stream && restricts_models(&view.tables, &key) {
                model_check = true;
                self.path_model = true;
            }
        } else if restricts_models(&view.tables, &key) {
            // Only requests whose key or group restricts models must show their model.
            let method = header(":method").unwrap_or_default();
            let listed = path.and_then(|p| route::listed_model(method, p));
            if path.is_some_and(|p| route::is_model_list(method, p)) {
                // Answered with the key's models when the response comes.
                let models: Vec<String> =
                    key.model_names().into_iter().map(str::to_owned).collect();
                self.listing = Some(model_list::Allowed {
                    key: ModelList::for_key(&models),
                    group: view.tables.group_models(key.group()).clone(),
                });
                // Only a plain body can be filtered.
                host::set_request_header("accept-encoding", "identity").map_err(|_| HOST_FAILED)?;
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
        let limited = self.pending.is_some() && limited;
        if limited && end_of_stream {
            self.reserve(view, &secret::hash(secret), path_model, Estimate::default())?;
        }
        let reserve = limited && !end_of_stream;
        self.rate = self.rate_hold(view, &key);
        if !model_check && !add_usage && !reserve {
            self.admit_rate()?;
            return Ok(Action::Continue);
        }
        self.form_boundary = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            .and_then(|(_, v)| model::form_boundary(v))
            .map(str::to_owned);
        // An upload checked only for its model may be decided on its head (see
        // `model_in_form_head`): its length does not matter then.
        let form_head_will_do = self.form_boundary.is_some() && !reserve && !add_usage;
        if (model_check || reserve) && !form_head_will_do {
            // A body that says it is too large to read is refused before it is buffered.
            let length = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.trim().parse::<u64>().unwrap_or(u64::MAX));
            if length.is_some_and(|n| n > self.max_body_bytes as u64) {
                return Err(Denial::RequestTooLarge);
            }
        }
        self.awaiting_body = Some(BodyWait {
            key: secret::hash(secret),
            model_check,
            add_usage,
            reserve,
        });
        Ok(Action::Pause)
    }

    /// Reserves in the key's and the account's ledgers (those that are limited) what the
    /// request may cost, or refuses it with `insufficient_quota`.
    fn reserve(
        &mut self,
        view: &View,
        hash: &KeyHash,
        model: Option<&str>,
        estimate: Estimate,
    ) -> Result<(), Denial> {
        // The snapshot version first, then the key: a key entry is written before the
        // version moves, so it shows at least what that version does, and a cost landing
        // after that version is counted by the ledger (perhaps twice for a moment: the
        // safe way). The account's balance comes with this VM's view and its version.
        let (meta, _) = shared::read_meta(&Shared).map_err(|_| HOST_FAILED)?;
        let key = Self::lookup(hash, meta.epoch)?.ok_or(Denial::InvalidApiKey)?;
        let ratio = view.tables.ratio(key.group());
        let price = model.and_then(|m| view.tables.price(m));
        if price.is_none() && !self.allow_unpriced_models {
            // A model nobody priced would cost a limited key nothing.
            return Err(Denial::ModelNotPriced);
        }
        let amount = estimate.credits(price, ratio, self.default_output_tokens);
        let key_limit = key.remaining_quota;
        let account_limit = view.tables.balance(key.account());
        let key_ledger = key_limit.map(|_| ledger::key_entry(key.id()));
        let account_ledger = account_limit.map(|_| ledger::account_entry(key.account()));
        if let (Some(name), Some(limit)) = (&key_ledger, key_limit) {
            let admitted = ledger::reserve(&Shared, name, limit, amount, meta.version)
                .map_err(|_| HOST_FAILED)?;
            if !admitted {
                return Err(Denial::InsufficientQuota);
            }
        }
        if let (Some(name), Some(limit)) = (&account_ledger, account_limit) {
            let admitted = ledger::reserve(&Shared, name, limit, amount, view.meta.version)
                .map_err(|_| HOST_FAILED)?;
            if !admitted {
                if let Some(key_ledger) = &key_ledger {
                    let _ = ledger::settle(&Shared, key_ledger, amount, 0);
                }
                return Err(Denial::InsufficientQuota);
            }
        }
        self.reservation = Some(Reservation {
            amount,
            key_ledger,
            account_ledger,
            ratio,
            estimate: estimate.tokens(self.default_output_tokens),
        });
        Ok(())
    }

    /// The request ended: its reservation goes back, and what it used (priced as the
    /// snapshot prices its model) counts until the key-service's snapshot shows it.
    /// `status` is the record's (499: no answer), which decides the charge per call.
    fn settle(
        &mut self,
        model: Option<&str>,
        usage: Option<&Usage>,
        status: u16,
    ) -> Option<Charge> {
        let reservation = self.reservation.take()?;
        let price = self.price_of(model).map(|p| p.for_status(status));
        let tokens = usage.map_or_else(Tokens::default, |u| Tokens {
            input: u.input,
            cached_input: u.cached_input,
            output: u.output,
            cache_write: u.cache_write,
        });
        let cost = u64::try_from(pricing::cost(tokens, price, reservation.ratio)).unwrap_or(0);
        for name in [&reservation.key_ledger, &reservation.account_ledger]
            .into_iter()
            .flatten()
        {
            // A failure here leaves the estimate counted until Envoy restarts: the key
            // is refused early, never overdrawn.
            let _ = ledger::settle(&Shared, name, reservation.amount, cost);
        }
        Some(Charge {
            cost,
            key_ledger: reservation.key_ledger?,
            account_ledger: reservation.account_ledger,
        })
    }

    /// The price of a model as this VM's snapshot has it.
    fn price_of(&self, model: Option<&str>) -> Option<pricing::Price> {
        let view = self.view.borrow();
        view.as_ref()?.tables.price(model?)
    }

    /// Decides a request on its body: the whole of it, or (an upload whose model field has
    /// arrived) its head, the rest then streaming on.
    fn on_body(&mut self, wait: BodyWait, body_size: usize) -> Result<Action, Denial> {
        let body = host::request_body(body_size).map_err(|_| HOST_FAILED)?;
        let whole = self.awaiting_body.is_none();
        let read = match &self.form_boundary {
            Some(boundary) => model::form_facts(&body, boundary),
            None => model::facts(&body),
        };
        let facts = match (read, wait.model_check) {
            (Ok(facts), _) => facts,
            (Err(model::BodyError::NotJson), true) => return Err(Denial::InvalidRequestBody),
            // Read only to add usage or to estimate: whatever it is goes on as it is.
            (Err(model::BodyError::NotJson), false) => model::Facts::default(),
        };
        let requested = facts.model.as_deref();
        self.forward_model(requested).map_err(|_| HOST_FAILED)?;
        if let Some(pending) = self.pending.as_mut() {
            if pending.model.is_none() {
                pending.model = facts.model.clone();
            }
            if whole {
                pending.request_bytes = Some(body.len() as u64);
            }
        }
        if wait.model_check || wait.reserve {
            let now_ms = host::now_ms().map_err(|_| HOST_FAILED)?;
            let shared = Rc::clone(&self.view);
            let view = shared.borrow();
            let view = view
                .as_ref()
                .filter(|v| self.is_fresh(v, now_ms))
                .ok_or(Denial::KeyServiceUnavailable)?;
            // The snapshot may have changed while the body arrived: check the key as it is
            // now.
            let key = Self::lookup(&wait.key, view.meta.epoch)?.ok_or(Denial::InvalidApiKey)?;
            // With the path's model checked already, a body without one needs nothing.
            if wait.model_check && !(self.path_model && requested.is_none()) {
                check_model(&view.tables, &key, requested)?;
            }
            if wait.reserve {
                let api = self.pending.as_ref().map(|p| p.api);
                if facts.background && api == Some(Api::Responses) {
                    // Its usage comes with a later fetch the filter cannot tie to it.
                    return Err(Denial::EndpointNotMetered);
                }
                let model = self.pending.as_ref().and_then(|p| p.model.clone());
                let estimate = Estimate {
                    body_bytes: body.len() as u64,
                    max_output_tokens: facts.max_output_tokens,
                };
                self.reserve(view, &wait.key, model.as_deref(), estimate)?;
            }
        }
        self.admit_rate()?;
        if wait.add_usage {
            if let Some(changed) = include_usage::add_to_request(&body) {
                host::set_request_body(body_size, &changed).map_err(|_| HOST_FAILED)?;
                // The whole body is here: its new length is exact (some upstreams refuse a
                // chunked request body).
                host::set_request_header("content-length", &changed.len().to_string())
                    .map_err(|_| HOST_FAILED)?;
                if let Some(pending) = self.pending.as_mut() {
                    pending.added_usage = true;
                }
            }
        }
        Ok(Action::Continue)
    }

    /// For an upload waiting only for its model check: the length of the head (at most
    /// `FORM_HEAD` bytes) that holds its `model` form field, once it has arrived (SDKs
    /// send it before the file), so the file need not be held and uploads larger than
    /// `max_body_bytes` work too. The head is searched until `FORM_HEAD` bytes came.
    fn model_in_form_head(&mut self, wait: BodyWait, body_size: usize) -> Option<usize> {
        let boundary = self.form_boundary.as_ref()?;
        if !wait.model_check || wait.reserve || wait.add_usage || self.form_searched >= FORM_HEAD {
            return None;
        }
        let head = body_size.min(FORM_HEAD);
        self.form_searched = head;
        let bytes = host::request_body(head).ok()?;
        let facts = model::form_facts(&bytes, boundary).ok()?;
        facts.model.is_some().then_some(head)
    }

    /// Notes an admitted request to an LLM API so that its response is read for usage, and
    /// asks the upstream for an uncompressed body, which is the only kind that can be read.
    fn expect_usage(
        &mut self,
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
            host::set_request_header("accept-encoding", "identity")?;
        }
        // The record's id is the filter's own, which no client can choose (see
        // `request_id`); without randomness, Envoy's x-request-id, which it regenerates
        // for requests from outside.
        let request_id = match &self.ids {
            Some(ids) => ids.next(),
            None => match header("x-request-id").filter(|id| !id.is_empty()) {
                Some(id) => model::printable(id, 128),
                None => return Ok(()),
            },
        };
        self.pending = Some(Pending {
            request_id,
            key_id: key.id().to_string(),
            api,
            model: None,
            status: 0,
            added_usage: false,
            request_bytes: None,
        });
        Ok(())
    }

    fn finish(&mut self, result: Result<Action, Denial>) -> Action {
        match result {
            Ok(Action::Continue) => self.allow(),
            Ok(other) => other,
            Err(denial) => self.deny(denial),
        }
    }
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.listing.is_some() {
            // The list is rewritten for the key: its length changes, and an upstream
            // without a list (an error) is answered with the key's own.
            let status = host::response_header(":status").ok().flatten();
            self.listing_upstream = status.as_deref() == Some("200");
            if !self.listing_upstream {
                let _ = host::set_response_header(":status", "200");
                let _ = host::set_response_header("content-type", "application/json");
            }
            let _ = host::remove_response_header("content-length");
            let _ = host::remove_response_header("content-encoding");
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
                let _ = host::set_response_header(name, &value);
            }
        }
        let Some(pending) = self.pending.as_mut() else {
            return Action::Continue;
        };
        let header = |name| host::response_header(name).ok().flatten();
        pending.status = header(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        if pending.api == Api::PerCall {
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
        self.scanner = Some(Scanner::new(pending.api, event_stream));
        if pending.added_usage && event_stream {
            self.editor = Some(StreamEditor::default());
            // The editor changes the length.
            let _ = host::remove_response_header("content-length");
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(allowed) = &self.listing {
            if !end_of_stream {
                return Action::Pause;
            }
            let body = host::response_body(body_size).unwrap_or_default();
            let shown = self
                .listing_upstream
                .then(|| model_list::filter(&body, allowed))
                .flatten()
                .unwrap_or_else(|| model_list::own_list(allowed));
            let _ = host::set_response_body(body_size, &shown);
            return Action::Continue;
        }
        // Each chunk goes on at once; the scanner keeps what it needs.
        if self.scanner.is_none() {
            return Action::Continue;
        }
        let Ok(chunk) = host::response_body(body_size) else {
            return Action::Continue;
        };
        if let Some(scanner) = self.scanner.as_mut() {
            scanner.push(&chunk);
            self.metrics.scanned(chunk.len());
        }
        if let Some(editor) = self.editor.as_mut() {
            let mut out = editor.push(&chunk);
            if end_of_stream {
                out.extend(editor.finish());
            }
            if out != chunk {
                let _ = host::set_response_body(body_size, &out);
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let tokens = self.record_usage();
        self.end_rate(tokens);
    }

    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let result = self.on_headers(end_of_stream, true);
        self.finish(result)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(wait) = self.awaiting_body else {
            // Passed on chunk by chunk: each call brings the next chunk.
            self.body_received = self.body_received.saturating_add(body_size as u64);
            return Action::Continue;
        };
        // Buffered: each call brings the whole body so far.
        self.body_size = body_size;
        self.body_received = body_size as u64;
        if !end_of_stream {
            if let Some(head) = self.model_in_form_head(wait, body_size) {
                // Decided on the form's head: the rest of the upload streams on.
                let result = self.on_body(wait, head);
                self.awaiting_body = None;
                return self.finish(result);
            }
        }
        if body_size > self.max_body_bytes {
            self.awaiting_body = None;
            if wait.model_check || wait.reserve {
                // Too large to read for its model or what it may cost.
                return self.deny(Denial::RequestTooLarge);
            }
            // Too large to add usage to: it goes on as it is.
            let result = self.admit_rate().map(|()| Action::Continue);
            return self.finish(result);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.awaiting_body = None;
        let result = self.on_body(wait, body_size);
        self.finish(result)
    }

    /// A request may end with trailers instead of a last body chunk (HTTP/2 allows it): its
    /// body is complete now, and it is decided as if the last chunk had said so; without
    /// this, Envoy would pass it on unchecked.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let Some(wait) = self.awaiting_body.take() else {
            return Action::Continue;
        };
        let result = self.on_body(wait, self.body_size);
        self.finish(result)
    }
}

impl Http {
    /// The request ended: what it used goes to the outbox for the key-service (and its
    /// reservation is settled). Returns the tokens it used, 0 if unknown.
    fn record_usage(&mut self) -> u64 {
        let Some(pending) = self.pending.take() else {
            // Nothing was reserved without a pending request; release anything anyway.
            self.settle(None, None, 0);
            return 0;
        };
        let scanned = self.scanner.take().map(Scanner::finish).unwrap_or_default();
        let model = pending.model.or_else(|| scanned.model.clone());
        // The prompt reached the provider, which bills it: about a token per 4 bytes of
        // what arrived (never more than the limit of a body the filter reads).
        let bytes = pending
            .request_bytes
            .unwrap_or(self.body_received)
            .min(self.max_body_bytes as u64);
        let prompt = Usage {
            input: bytes.div_ceil(4),
            ..Usage::default()
        };
        // No response at all (the client went away first): nginx's 499.
        let status = if pending.status == 0 {
            499
        } else {
            pending.status
        };
        let billed = match pending.api {
            // A route priced per call: no tokens to read.
            Api::PerCall => Some((Usage::default(), false)),
            _ => usage::bill(&scanned, pending.status, prompt),
        };
        let Some((usage, estimated)) = billed.or_else(|| {
            // A success that says nothing of its usage (an image model that reports none,
            // a compressed answer): a key or account with a limit is billed the estimate
            // its request was admitted on, never nothing.
            self.metrics.usage_missing();
            let estimate = self.reservation.as_ref()?.estimate;
            if self
                .price_of(model.as_deref())
                .is_some_and(|p| p.per_request > 0.0)
            {
                // Priced per call (dall-e): that price is the bill.
                return Some((Usage::default(), false));
            }
            Some((
                Usage {
                    input: estimate.input,
                    output: estimate.output,
                    ..Usage::default()
                },
                true,
            ))
        }) else {
            self.settle(model.as_deref(), None, status);
            return 0;
        };
        if estimated {
            self.metrics.usage_estimated();
        }
        let charge = self.settle(model.as_deref(), Some(&usage), status);
        let ts = host::now_ms().map_or(0, |ms| i64::try_from(ms / 1000).unwrap_or(0));
        let record = Record {
            charge: charge.filter(|c| c.cost > 0),
            request_id: pending.request_id,
            key_id: pending.key_id,
            // What the key-service stores: an empty or unprintable name is `unknown`.
            model: model
                .map(|m| model::printable(&m, 256))
                .filter(|m| !m.trim().is_empty())
                .unwrap_or_else(|| "unknown".into()),
            input_tokens: usage.input,
            cached_input_tokens: usage.cached_input,
            output_tokens: usage.output,
            cache_write_tokens: usage.cache_write,
            status,
            ts,
            estimated,
        };
        self.outbox.borrow_mut().push(record);
        self.metrics.usage_recorded(&usage);
        usage.input.saturating_add(usage.output)
    }
}
