//! `/filter/v1/check/...`: the filter's decision, for proxies that cannot run Wasm: Envoy's
//! `ext_authz` (HTTP service, `path_prefix: /filter/v1/check`), nginx `auth_request`,
//! Traefik `ForwardAuth`. The original request's path follows the prefix; its headers come
//! along. The answer is 200 with the `x-keygate-*` headers for the upstream, or the
//! contract's error (status and OpenAI-style body) for the client.
//!
//! The same code decides as in the filter (`keygate::decision`), from the database rather
//! than a snapshot, so a change is enforced at once. The proxy proves itself with the
//! filter token in `x-keygate-token` (the client's key is in `Authorization`).

use std::net::IpAddr;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keygate::decision::{check_model, decide, restricts_models, Denial};
use keygate::snapshot::Tables;
use keygate::{client_ip, credential, entry, model, secret};

use crate::error::{ApiError, BODY_LIMIT};
use crate::expiry;
use crate::AppState;

pub const PREFIX: &str = "/filter/v1/check";

/// The client's address as the proxy in front saw it: Envoy's `x-envoy-external-address`,
/// else the last `X-Forwarded-For` entry (the one that proxy appended), else unknown.
fn client_address(headers: &[(&str, &str)]) -> Option<IpAddr> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    };
    header("x-envoy-external-address")
        .or_else(|| header("x-forwarded-for").and_then(|v| v.rsplit(',').next()))
        .and_then(client_ip::parse_source_address)
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
    let entry = record
        .and_then(|r| entry::encode(&r, 1).ok())
        .and_then(|(_, value)| entry::decode(value));
    let key = match decide(
        Some(&tables),
        secret,
        now,
        |_| Ok(entry),
        || client_address(&headers),
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
    for (name, value) in [
        ("x-keygate-key-id", Some(key.id())),
        ("x-keygate-key-name", Some(key.name())),
        ("x-keygate-group", Some(key.group())),
        ("x-keygate-account", Some(key.account())),
        ("x-keygate-model", model.as_deref()),
    ] {
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            out.insert(name, value);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_address_the_proxy_in_front_saw() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(
            client_address(&[("x-envoy-external-address", "10.0.0.9")]),
            ip("10.0.0.9")
        );
        // Not the leftmost entry, which the client wrote.
        assert_eq!(
            client_address(&[("X-Forwarded-For", "6.6.6.6, 10.0.0.1")]),
            ip("10.0.0.1")
        );
        assert_eq!(client_address(&[("x-forwarded-for", "garbage")]), None);
        assert_eq!(client_address(&[]), None);
    }
}
