//! The HTTP context of one request: gathers the headers, the clock and (when a rule needs
//! them) the client's address and the body from the host, asks `decision`, and either
//! answers with the OpenAI-style error or strips the credential and passes the request on
//! with the `x-keygate-*` headers set.

use std::net::IpAddr;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::config::Config;
use crate::decision::{check_model, decide, restricts_models, Decision, Denial};
use crate::metrics::Metrics;
use crate::root::{unix_ms, SharedIndex, Synced};
use crate::secret::{self, KeyHash};
use crate::snapshot::{KeyEntry, KeyIndex};
use crate::{client_ip, credential, model};

pub struct Http {
    index: SharedIndex,
    max_body_bytes: usize,
    max_snapshot_age_ms: u64,
    metrics: Rc<Metrics>,
    /// Set while the body is being buffered to learn the model: the admitted key's hash.
    awaiting_body: Option<KeyHash>,
}

impl Http {
    pub fn new(index: SharedIndex, config: &Config, metrics: Rc<Metrics>) -> Self {
        Http {
            index,
            metrics,
            max_body_bytes: config.max_body_bytes,
            max_snapshot_age_ms: config.max_snapshot_age_ms,
            awaiting_body: None,
        }
    }

    /// The snapshot to answer from: none before the first load, and none once the
    /// key-service has not confirmed it for longer than the configured maximum age.
    fn current<'a>(&self, synced: Option<&'a Synced>, now_ms: u64) -> Option<&'a KeyIndex> {
        synced
            .filter(|s| now_ms.saturating_sub(s.confirmed_at_ms) <= self.max_snapshot_age_ms)
            .map(|s| &s.index)
    }

    /// The client's address: asked of the host only for keys with an IP allowlist.
    fn client_ip(&self) -> Option<IpAddr> {
        let source = self.get_property(vec!["source", "address"])?;
        client_ip::parse_source_address(std::str::from_utf8(&source).ok()?)
    }

    fn allow(&self) -> Action {
        self.metrics.allowed();
        Action::Continue
    }

    fn deny(&self, denial: Denial) -> Action {
        self.metrics.denied(denial);
        self.send_http_response(
            denial.status(),
            vec![("content-type", "application/json")],
            Some(denial.body().as_bytes()),
        );
        Action::Pause
    }

    /// Removes every client credential and client-sent `x-keygate-*` header, and tells
    /// the upstream which key this is.
    fn forward_identity(&self, headers: &[(String, String)], key: &KeyEntry) {
        for name in credential::headers_to_strip(headers) {
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
    }

    fn forward_model(&self, requested: Option<&str>) {
        if let Some(m) = requested.filter(|m| model::is_header_safe(m)) {
            self.set_http_request_header("x-keygate-model", Some(m));
        }
    }
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let headers = self.get_http_request_headers();
        let secret = credential::find(&headers);
        let shared = Rc::clone(&self.index);
        let synced = shared.borrow();
        let now_ms = unix_ms(self.get_current_time());
        let index = self.current(synced.as_ref(), now_ms);
        let now = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        let key = match decide(index, secret, now, || self.client_ip()) {
            Decision::Deny(denial) => return self.deny(denial),
            Decision::Allow(key) => key,
        };
        // decide() admits only with an index and a secret.
        let (Some(index), Some(secret)) = (index, secret) else {
            return self.deny(Denial::KeyServiceUnavailable);
        };
        self.forward_identity(&headers, key);

        let path = headers.iter().find(|(n, _)| n == ":path").map(|(_, p)| p);
        if let Some(requested) = path.and_then(|p| model::from_path(p)) {
            self.forward_model(Some(requested));
            return match check_model(index, key, Some(requested)) {
                Ok(()) => self.allow(),
                Err(denial) => self.deny(denial),
            };
        }
        // Only requests whose key or group restricts models have their body read.
        if !restricts_models(index, key) {
            return self.allow();
        }
        if end_of_stream {
            return match check_model(index, key, None) {
                Ok(()) => self.allow(),
                Err(denial) => self.deny(denial),
            };
        }
        self.awaiting_body = Some(secret::hash(secret));
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(hash) = self.awaiting_body else {
            return Action::Continue;
        };
        if body_size > self.max_body_bytes {
            self.awaiting_body = None;
            return self.deny(Denial::RequestTooLarge);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.awaiting_body = None;
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        let requested = match model::from_body(&body) {
            Ok(requested) => requested,
            Err(model::BodyError::NotJson) => return self.deny(Denial::InvalidRequestBody),
        };
        let shared = Rc::clone(&self.index);
        let synced = shared.borrow();
        let index = self.current(synced.as_ref(), unix_ms(self.get_current_time()));
        // The snapshot may have changed while the body arrived: check the key as it is now.
        let Some((index, key)) = index.and_then(|i| Some((i, i.get(&hash)?))) else {
            return self.deny(Denial::InvalidApiKey);
        };
        self.forward_model(requested.as_deref());
        match check_model(index, key, requested.as_deref()) {
            Ok(()) => self.allow(),
            Err(denial) => self.deny(denial),
        }
    }
}
