//! `/filter/v1/check/...`: the filter's decision, for proxies that cannot run Wasm: Envoy's
//! `ext_authz` (HTTP service, `path_prefix: /filter/v1/check`), nginx `auth_request`,
//! Traefik `ForwardAuth`. The original request's path follows the prefix; its headers come
//! along. The answer is 200 with the `x-keygate-*` headers for the upstream, or the
//! contract's error (status and OpenAI-style body) for the client.
//!
//! The same code decides as in the filter (`keygate_core::decide::decision`), from the database rather
//! than a snapshot, so a change is enforced at once. The proxy proves itself with the
//! filter token in `x-keygate-token` (the client's key is in `Authorization`).

use std::net::IpAddr;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keygate_core::config::IdentityHeaders;
use keygate_core::decide::decision::{check_model, decide, restricts_models, Denial};
use keygate_core::decide::{credential, model};
use keygate_core::keys::entry::Entry;
use keygate_core::keys::{client_ip, secret};
use keygate_core::sync::snapshot::Tables;

use crate::error::{ApiError, BODY_LIMIT};
use crate::expiry;
use crate::AppState;

pub const PREFIX: &str = "/filter/v1/check";
/// The route: the original request's path follows the prefix.
pub const ROUTE: &str = "/filter/v1/check/{*path}";
/// The prefix alone, with and without its slash: a request for `/`.
pub const ALIASES: &[&str] = &[PREFIX, "/filter/v1/check/"];

/// Which forwarding headers `/filter/v1/check` believes about the client's address.
/// The check's own peer is the proxy asking, never the client, so without trusted headers
/// the address is unknown (and keys with an IP allowlist are refused). The default trusts
/// none: a client that reaches a proxy directly can write any of these headers itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardingTrust {
    /// Proxies in front that append to `X-Forwarded-For`: the client is the entry this
    /// many from the right (1 = the last). 0 = the header is ignored.
    pub xff_hops: u32,
    /// Take Envoy's `x-envoy-external-address` first, when present.
    pub envoy_external_address: bool,
}

impl ForwardingTrust {
    /// What the check did before it could be configured: Envoy's header, else the last
    /// `X-Forwarded-For` entry.
    pub const TRUST_ONE_PROXY: ForwardingTrust = ForwardingTrust {
        xff_hops: 1,
        envoy_external_address: true,
    };
}

/// The client's address as the trusted proxies in front saw it: Envoy's
/// `x-envoy-external-address` if trusted, else the `X-Forwarded-For` entry `xff_hops` from
/// the right (over all the request's `X-Forwarded-For` headers, in order), else unknown.
fn client_address(headers: &[(&str, &str)], trust: ForwardingTrust) -> Option<IpAddr> {
    let named = |name: &'static str| {
        headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    };
    if trust.envoy_external_address {
        if let Some(address) = named("x-envoy-external-address").next() {
            return client_ip::parse_source_address(address.trim());
        }
    }
    let hops = usize::try_from(trust.xff_hops).ok()?.checked_sub(1)?;
    named("x-forwarded-for")
        .flat_map(|v| v.split(','))
        .rev()
        .nth(hops)
        .and_then(|entry| client_ip::parse_source_address(entry.trim()))
}

fn denied(denial: Denial) -> Response {
    let status = u16::try_from(denial.status())
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::FORBIDDEN);
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        denial.body(),
    )
        .into_response()
}

/// `ANY /filter/v1/check/{original path}`
#[utoipa::path(
    method(get, post),
    path = "/filter/v1/check/{path}",
    tag = "filter",
    security(("check" = [])),
    params(
        ("path" = String, Path, description = "the original request's path and query"),
    ),
    responses(
        (status = 200, description = "Allowed; x-keygate-* headers for the upstream"),
        (status = 400, description = "The contract's error", body = crate::error::Body),
        (status = 401, description = "The contract's error", body = crate::error::Body),
        (status = 403, description = "The contract's error", body = crate::error::Body),
        (status = 413, description = "The contract's error", body = crate::error::Body),
        (status = 429, description = "The contract's error", body = crate::error::Body),
        (status = 503, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn check(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let body = match to_bytes(Body::new(body), BODY_LIMIT).await {
        Ok(body) => body,
        Err(_) => return Ok(denied(Denial::RequestTooLarge)),
    };
    let full = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let original = match full.strip_prefix(PREFIX).unwrap_or(full) {
        "" => "/",
        path => path,
    };
    let mut headers: Vec<(&str, &str)> = parts
        .headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)))
        .collect();
    headers.push((":path", original));
    let secret = credential::find(&headers);
    let hash = secret
        .filter(|s| secret::is_well_formed(s))
        .map(|s| secret::hash_hex(&secret::hash(s)));
    let now = expiry::now();
    let (record, tables) = state.store.check_view(hash.as_deref(), now).await?;
    let tables = Tables::new(tables);
    let entry = record.as_ref().and_then(Entry::from_record);
    let key = match decide(
        Some(&tables),
        secret,
        now,
        |_| Ok(entry),
        || client_address(&headers, state.check_trust),
    ) {
        Ok(key) => key,
        Err(denial) => return Ok(denied(denial)),
    };
    let requested = match model::from_path(original) {
        Some(m) => Some(m.to_owned()),
        None if restricts_models(&tables, &key) && !body.is_empty() => {
            match model::from_body(&body) {
                Ok(m) => m,
                Err(model::BodyError::NotJson) => return Ok(denied(Denial::InvalidRequestBody)),
            }
        }
        None => None,
    };
    if let Err(denial) = check_model(&tables, &key, requested.as_deref()) {
        return Ok(denied(denial));
    }
    let mut response = StatusCode::OK.into_response();
    let out = response.headers_mut();
    let model = requested.filter(|m| model::is_header_safe(m));
    // The names the filter sets by default (the check endpoint has no configuration).
    let id = IdentityHeaders::default();
    for (name, value) in [
        (&id.key_id, Some(key.id())),
        (&id.key_name, Some(key.name())),
        (&id.group, Some(key.group())),
        (&id.account, Some(key.account())),
        (&id.model, model.as_deref()),
    ] {
        let name = name
            .as_deref()
            .and_then(|n| HeaderName::from_bytes(n.as_bytes()).ok());
        let value = value.and_then(|v| HeaderValue::from_str(v).ok());
        if let (Some(name), Some(value)) = (name, value) {
            out.insert(name, value);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_address_the_trusted_proxies_saw() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let old = ForwardingTrust::TRUST_ONE_PROXY;
        assert_eq!(
            client_address(&[("x-envoy-external-address", "10.0.0.9")], old),
            ip("10.0.0.9")
        );
        // Not the leftmost entry, which the client wrote.
        assert_eq!(
            client_address(&[("X-Forwarded-For", "6.6.6.6, 10.0.0.1")], old),
            ip("10.0.0.1")
        );
        assert_eq!(client_address(&[("x-forwarded-for", "garbage")], old), None);
        assert_eq!(client_address(&[], old), None);
    }

    #[test]
    fn by_default_no_forwarding_header_is_believed() {
        let forged = [
            ("x-envoy-external-address", "10.0.0.9"),
            ("x-forwarded-for", "10.0.0.1"),
        ];
        assert_eq!(client_address(&forged, ForwardingTrust::default()), None);
        // Envoy's header alone is not trusted by trusting hops.
        let hops = ForwardingTrust {
            xff_hops: 1,
            envoy_external_address: false,
        };
        assert_eq!(
            client_address(&forged, hops),
            Some("10.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn trusted_hops_count_from_the_right_over_every_header() {
        let headers = [
            ("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
            ("X-Forwarded-For", "3.3.3.3,4.4.4.4"),
        ];
        let at = |xff_hops| {
            client_address(
                &headers,
                ForwardingTrust {
                    xff_hops,
                    envoy_external_address: true,
                },
            )
        };
        assert_eq!(at(1), Some("4.4.4.4".parse().unwrap()));
        assert_eq!(at(2), Some("3.3.3.3".parse().unwrap()));
        assert_eq!(at(4), Some("1.1.1.1".parse().unwrap()));
        // Fewer entries than trusted hops: a proxy did not append, so nothing is known.
        assert_eq!(at(5), None);
        assert_eq!(at(u32::MAX), None);
    }
}
