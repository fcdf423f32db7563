//! Single sign-on for the console: OpenID Connect's authorization code flow with PKCE.
//!
//! `GET /auth/oidc/login` keeps a fresh `state`, `nonce` and PKCE verifier (digests and
//! the verifier in `sso_logins`, ten minutes, single use; the state also in a cookie that
//! ties the sign-in to this browser) and sends the browser to the provider.
//! `GET /auth/oidc/callback` takes the state back, trades the code (with the verifier)
//! for an ID token, checks it ([`token`]), maps its claims to an account and a role
//! ([`mapping`]) and opens a session: a random token in the `keygate_session` cookie
//! (HttpOnly, SameSite=Lax, Secure on https), its SHA-256 in `sso_sessions`.
//! [`crate::auth::admit`] takes that cookie as a tenant of the account; a write
//! (any method but GET and HEAD) must also carry `x-keygate-csrf: 1`, which a form or a
//! link of another site cannot send. `POST /auth/logout` ends the session.

pub mod mapping;
pub mod pages;
pub mod provider;
pub mod token;

use std::net::SocketAddr;

use axum::extract::{RawQuery, State};
use axum::http::header::{CACHE_CONTROL, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::Url;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::expiry;
use crate::random;
use crate::store::{NewSession, SsoLogin, StoreError};
use crate::tokens::Token;
use crate::AppState;

pub use mapping::Mappings;
use pages::page;
pub use provider::Idp;

/// The console session's cookie.
pub const SESSION_COOKIE: &str = "keygate_session";
/// The cookie that ties a sign-in under way to the browser that started it.
pub const LOGIN_COOKIE: &str = "keygate_oidc_state";
/// The header a cookie-authenticated write must carry, with the value `1`.
pub const CSRF_HEADER: &str = "x-keygate-csrf";
/// The callback's path on the console's origin (the default redirect URL).
pub const CALLBACK_PATH: &str = "/auth/oidc/callback";
/// How long a sign-in may stay at the provider, in seconds.
pub const LOGIN_TTL: i64 = 600;
/// Random characters of a state, a nonce, a session token (base62, about 256 bits).
const SECRET_LEN: usize = 43;
/// Random characters of a PKCE verifier (RFC 7636 allows 43-128).
const VERIFIER_LEN: usize = 64;

/// The single sign-on settings, checked (`KEYGATE_OIDC_*`, `KEYGATE_CONSOLE_URL`).
#[derive(Debug, Clone)]
pub struct SsoSettings {
    pub issuer: String,
    pub client_id: String,
    /// `None`: a public client, which PKCE alone protects.
    pub client_secret: Option<Token>,
    pub redirect_url: Option<Url>,
    pub console_url: Option<Url>,
    /// Space-separated, `openid` among them.
    pub scopes: String,
    pub mappings: Mappings,
    /// Seconds a session lasts.
    pub session_ttl: i64,
}

/// Single sign-on as the service runs it.
pub struct Sso {
    pub settings: SsoSettings,
    /// Where the provider sends the browser back to.
    pub redirect_url: Url,
    /// Cookies are `Secure`: the console is served over https.
    pub secure: bool,
    pub idp: Idp,
}

/// A URL as the settings take it: absolute, http or https, no fragment.
pub fn web_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{text:?} is not an http(s) URL"));
    }
    if url.fragment().is_some() {
        return Err(format!("{text:?} has a #fragment"));
    }
    Ok(url)
}

impl Sso {
    /// Settles the console's address and the redirect URL: as configured, else the
    /// redirect URL's origin, else `http://` and the address the service listens on.
    pub fn new(settings: SsoSettings, listening: SocketAddr) -> Result<Sso, String> {
        let console = match (&settings.console_url, &settings.redirect_url) {
            (Some(console), _) => console.clone(),
            (None, Some(redirect)) => web_url(&redirect.origin().ascii_serialization())?,
            (None, None) if listening.ip().is_unspecified() => {
                return Err(format!(
                    "KEYGATE_CONSOLE_URL: the console's address as browsers reach it is \
                     needed for single sign-on (listening on {listening} does not tell it)"
                ))
            }
            (None, None) => web_url(&format!("http://{listening}"))?,
        };
        let redirect_url = match &settings.redirect_url {
            Some(url) => url.clone(),
            None => web_url(&format!(
                "{}{CALLBACK_PATH}",
                console.as_str().trim_end_matches('/')
            ))?,
        };
        let secure = console.scheme() == "https";
        let loopback = console
            .host_str()
            .is_some_and(|h| matches!(h, "localhost" | "127.0.0.1" | "[::1]"));
        if !secure && !loopback {
            tracing::warn!(
                console = %console,
                "the console is not served over https: its session cookie is not Secure"
            );
        }
        let idp = Idp::new(&settings.issuer)
            .map_err(|e| format!("the identity provider's HTTP client cannot start: {e}"))?;
        Ok(Sso {
            settings,
            redirect_url,
            secure,
            idp,
        })
    }

    /// A `Set-Cookie` value: HttpOnly, SameSite=Lax, on the whole site, Secure on https.
    fn cookie(&self, name: &str, value: &str, max_age: i64) -> HeaderValue {
        set_cookie(name, value, max_age, self.secure)
    }
}

fn set_cookie(name: &str, value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}");
    // Names are ours and values base62: always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The value of the cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|value| !value.is_empty())
}

/// Whether a request authenticated by cookie may go on: reads (GET, HEAD) always; any
/// other method only with `x-keygate-csrf: 1`. A cross-site form cannot set a header, and
/// a cross-site script cannot send one without a CORS preflight, which is never granted.
pub fn csrf_ok(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::GET
        || method == Method::HEAD
        || headers
            .get(CSRF_HEADER)
            .is_some_and(|value| value.as_bytes() == b"1")
}

/// The 403 of a cookie-authenticated write without the header.
pub fn csrf_refusal() -> ApiError {
    ApiError::Forbidden {
        code: "csrf_header_required",
        message: "a request authenticated by the console's session cookie must carry \
                  `x-keygate-csrf: 1` to change anything",
    }
}

/// What is stored of a state or a session token: its SHA-256, lower-case hex.
pub fn digest(secret: &str) -> String {
    keygate_core::keys::secret::hash_hex(&keygate_core::keys::secret::hash(secret))
}

/// The PKCE S256 challenge of a verifier (RFC 7636 4.2).
pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(keygate_core::keys::secret::hash(verifier))
}

fn secret(len: usize) -> Result<String, ApiError> {
    random::base62(len).map_err(|e| ApiError::from(StoreError::Random(e)))
}

/// The JSON 404 of the single sign-on routes on a service without it.
fn off() -> Response {
    ApiError::NotFound(
        "single sign-on is not configured on this key-service (KEYGATE_OIDC_ISSUER)".into(),
    )
    .into_response()
}

fn with_headers(mut response: Response, cookies: &[HeaderValue]) -> Response {
    let headers = response.headers_mut();
    for cookie in cookies {
        headers.append(SET_COOKIE, cookie.clone());
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

/// `GET /auth/oidc/login`: starts a sign-in at the identity provider.
#[utoipa::path(
    get,
    operation_id = "sso_login",
    path = "/auth/oidc/login",
    tag = "console",
    responses(
        (status = 303, description = "To the identity provider's authorization endpoint, \
            with a cookie tying the sign-in to this browser"),
        (status = 404, description = "Single sign-on is not configured", body = crate::error::Body),
        (status = 503, description = "The identity provider cannot be reached (an HTML page)",
            content_type = "text/html"),
    ),
)]
pub async fn login(State(state): State<AppState>) -> Response {
    let Some(sso) = state.sso.clone() else {
        return off();
    };
    match start_login(&state, &sso).await {
        Ok(response) => response,
        Err(response) => response,
    }
}

async fn start_login(state: &AppState, sso: &Sso) -> Result<Response, Response> {
    let endpoints = sso.idp.endpoints().await.map_err(|e| {
        page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Single sign-on is unavailable",
            "keygate cannot reach the identity provider just now. Try again in a moment.",
            Some(&e.to_string()),
        )
    })?;
    let internal = |e: ApiError| e.into_response();
    let state_value = secret(SECRET_LEN).map_err(internal)?;
    let login = SsoLogin {
        nonce: secret(SECRET_LEN).map_err(internal)?,
        code_verifier: secret(VERIFIER_LEN).map_err(internal)?,
    };
    let now = expiry::now();
    let stored = state
        .store
        .insert_sso_login(&digest(&state_value), &login, now, now + LOGIN_TTL)
        .await
        .map_err(|e| internal(e.into()))?;
    if !stored {
        return Err(page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many sign-ins at once",
            "More sign-ins are under way than keygate holds at once. Try again in a few minutes.",
            None,
        ));
    }
    let settings = &sso.settings;
    let mut to = endpoints.authorization.clone();
    to.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &settings.client_id)
        .append_pair("redirect_uri", sso.redirect_url.as_str())
        .append_pair("scope", &settings.scopes)
        .append_pair("state", &state_value)
        .append_pair("nonce", &login.nonce)
        .append_pair("code_challenge", &challenge(&login.code_verifier))
        .append_pair("code_challenge_method", "S256");
    Ok(with_headers(
        see_other(to.as_str()),
        &[sso.cookie(LOGIN_COOKIE, &state_value, LOGIN_TTL)],
    ))
}

/// The callback's query: a code and the state, or the provider's error.
#[derive(Debug, Default, Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    /// RFC 9207: the issuer of the answer, when the provider says it.
    iss: Option<String>,
}

/// `GET /auth/oidc/callback`: where the provider sends the browser back.
#[utoipa::path(
    get,
    operation_id = "sso_callback",
    path = "/auth/oidc/callback",
    tag = "console",
    params(
        ("code" = Option<String>, Query, description = "The provider's authorization code"),
        ("state" = Option<String>, Query, description = "The state the sign-in sent"),
        ("error" = Option<String>, Query, description = "The provider's error, instead of a code"),
    ),
    responses(
        (status = 303, description = "Signed in: to the console, with the `keygate_session` \
            cookie (HttpOnly, SameSite=Lax, Secure on https)"),
        (status = 400, description = "The provider's error, or a state unknown, expired, \
            used already or not started in this browser (an HTML page)", content_type = "text/html"),
        (status = 401, description = "The ID token failed a check (an HTML page)", content_type = "text/html"),
        (status = 403, description = "No mapping rule gives the person an account, or the \
            account does not exist (an HTML page)", content_type = "text/html"),
        (status = 404, description = "Single sign-on is not configured", body = crate::error::Body),
        (status = 502, description = "The identity provider did not accept the code (an HTML page)",
            content_type = "text/html"),
    ),
)]
pub async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(sso) = state.sso.clone() else {
        return off();
    };
    let answer = finish_login(&state, &sso, &headers, query.as_deref().unwrap_or("")).await;
    // The browser's tie to this sign-in is spent either way.
    let forget = sso.cookie(LOGIN_COOKIE, "", 0);
    match answer {
        Ok(session) => with_headers(
            see_other("/"),
            &[
                forget,
                sso.cookie(SESSION_COOKIE, &session, sso.settings.session_ttl),
            ],
        ),
        Err(page) => with_headers(page, &[forget]),
    }
}

const START_AGAIN: &str = "Start the sign-in again from the console.";

/// The sign-in's second half; the session token, or the page that says what went wrong.
async fn finish_login(
    state: &AppState,
    sso: &Sso,
    headers: &HeaderMap,
    query: &str,
) -> Result<String, Response> {
    let params: Callback = serde_urlencoded::from_str(query).unwrap_or_default();
    let now = expiry::now();
    // Taken before anything else is looked at: one answer per sign-in.
    let taken = match &params.state {
        Some(value) => state.store.take_sso_login(&digest(value), now).await,
        None => Ok(None),
    };
    let bad = |title: &str, message: &str, detail: Option<&str>| {
        page(StatusCode::BAD_REQUEST, title, message, detail)
    };
    if let Some(error) = &params.error {
        let detail = match &params.error_description {
            Some(description) => format!("{error}: {description}"),
            None => error.clone(),
        };
        tracing::info!(error = %error, "the identity provider ended a sign-in with an error");
        return Err(bad(
            "Sign-in refused",
            "The identity provider ended the sign-in without signing you in.",
            Some(&detail),
        ));
    }
    let (Some(code), Some(state_value)) = (&params.code, &params.state) else {
        return Err(bad(
            "Sign-in incomplete",
            "The identity provider's answer lacks its code or state.",
            Some(START_AGAIN),
        ));
    };
    if params
        .iss
        .as_deref()
        .is_some_and(|iss| iss != sso.settings.issuer)
    {
        return Err(bad(
            "Sign-in refused",
            "The answer comes from another identity provider than the one configured.",
            Some(START_AGAIN),
        ));
    }
    let same_browser = cookie(headers, LOGIN_COOKIE)
        .is_some_and(|held| bool::from(held.as_bytes().ct_eq(state_value.as_bytes())));
    let login = taken.map_err(|e| ApiError::from(e).into_response())?;
    let (Some(login), true) = (login, same_browser) else {
        tracing::info!(
            "a sign-in came back with a state unknown, expired, used or from another browser"
        );
        return Err(bad(
            "Sign-in expired",
            "This sign-in has expired, was used already, or was not started in this browser.",
            Some(START_AGAIN),
        ));
    };

    let settings = &sso.settings;
    let id_token = sso
        .idp
        .exchange(
            code,
            &login.code_verifier,
            &sso.redirect_url,
            &settings.client_id,
            settings.client_secret.as_ref(),
        )
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "a sign-in's code exchange failed");
            page(
                StatusCode::BAD_GATEWAY,
                "Sign-in failed",
                "The identity provider did not complete the sign-in.",
                Some(&e.to_string()),
            )
        })?;
    let identity = verify(sso, &id_token, &login.nonce, now)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "a sign-in's ID token was refused");
            page(
                StatusCode::UNAUTHORIZED,
                "Sign-in refused",
                "keygate could not verify who you are from the identity provider's answer.",
                Some(&e),
            )
        })?;

    let who = identity.email.as_deref().unwrap_or(&identity.subject);
    let Some(rule) = settings.mappings.first_match(&identity.claims) else {
        tracing::info!(subject = %identity.subject, "no mapping rule matched a sign-in");
        return Err(page(
            StatusCode::FORBIDDEN,
            "No access",
            &format!(
                "You signed in as {who}, but no rule of this keygate gives you an account. \
                 Ask its operator to add one (KEYGATE_OIDC_MAPPINGS)."
            ),
            None,
        ));
    };
    let no_account = || {
        tracing::warn!(account = %rule.account, rule = %rule, "a mapping rule names an account that does not exist");
        page(
            StatusCode::FORBIDDEN,
            "No access",
            &format!(
                "You signed in as {who} and belong to the account {}, which does not exist in \
                 this keygate. Ask its operator to create it.",
                rule.account
            ),
            None,
        )
    };
    let session = secret(SECRET_LEN).map_err(IntoResponse::into_response)?;
    let new = NewSession {
        token_hash: digest(&session),
        subject: identity.subject.clone(),
        email: identity.email.clone(),
        account: rule.account.clone(),
        role: rule.role,
    };
    match state
        .store
        .insert_sso_session(&new, now, now.saturating_add(settings.session_ttl))
        .await
    {
        Ok(()) => {}
        Err(e) if e.is_foreign_key_violation() => return Err(no_account()),
        Err(e) => return Err(ApiError::from(e).into_response()),
    }
    tracing::info!(
        subject = %identity.subject,
        account = %rule.account,
        role = rule.role.as_str(),
        "signed in through single sign-on"
    );
    Ok(session)
}

/// The ID token checked against the provider's keys, fetched again once when it names a
/// key they lack (the provider may have rotated its keys).
async fn verify(
    sso: &Sso,
    id_token: &str,
    nonce: &str,
    now: i64,
) -> Result<token::Identity, String> {
    let expected = token::Expected {
        issuer: &sso.settings.issuer,
        client_id: &sso.settings.client_id,
        nonce,
    };
    let keys = sso.idp.keys(false).await.map_err(|e| e.to_string())?;
    let keys = match token::candidates(id_token, &keys) {
        Ok(found) if found.is_empty() => sso.idp.keys(true).await.map_err(|e| e.to_string())?,
        _ => keys,
    };
    token::verify(id_token, &keys, expected, now).map_err(|e| e.to_string())
}

/// `POST /auth/logout`: ends the console's session and clears its cookie.
#[utoipa::path(
    post,
    operation_id = "sso_logout",
    path = "/auth/logout",
    tag = "console",
    params(("x-keygate-csrf" = String, Header, description = "`1`")),
    responses(
        (status = 204, description = "Signed out (the cookie cleared), also when there was no session"),
        (status = 403, description = "No `x-keygate-csrf: 1` header", body = crate::error::Body),
    ),
)]
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !csrf_ok(&Method::POST, &headers) {
        return csrf_refusal().into_response();
    }
    if let Some(session) = cookie(&headers, SESSION_COOKIE) {
        if let Err(e) = state.store.delete_sso_session(&digest(session)).await {
            return ApiError::from(e).into_response();
        }
    }
    let secure = state.sso.as_ref().is_some_and(|sso| sso.secure);
    with_headers(
        StatusCode::NO_CONTENT.into_response(),
        &[set_cookie(SESSION_COOKIE, "", 0, secure)],
    )
}

/// Removes expired sessions and sign-ins every five minutes.
pub async fn prune_periodically(store: crate::Store) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(300));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match store.prune_sso(expiry::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "expired SSO sessions and sign-ins removed"),
            Err(e) => tracing::warn!(error = %e, "removing expired SSO sessions failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SsoSettings {
        SsoSettings {
            issuer: "https://idp.example.com".into(),
            client_id: "keygate".into(),
            client_secret: None,
            redirect_url: None,
            console_url: None,
            scopes: "openid email profile".into(),
            mappings: "groups:a=acme:owner".parse().unwrap(),
            session_ttl: 3600,
        }
    }

    #[test]
    fn the_redirect_url_follows_the_console_or_the_listening_address() {
        let local = Sso::new(settings(), "127.0.0.1:8081".parse().unwrap()).unwrap();
        assert_eq!(
            local.redirect_url.as_str(),
            "http://127.0.0.1:8081/auth/oidc/callback"
        );
        assert!(!local.secure);
        let console = SsoSettings {
            console_url: Some(web_url("https://keys.acme.com/keygate/").unwrap()),
            ..settings()
        };
        let behind = Sso::new(console, "0.0.0.0:8081".parse().unwrap()).unwrap();
        assert_eq!(
            behind.redirect_url.as_str(),
            "https://keys.acme.com/keygate/auth/oidc/callback"
        );
        assert!(behind.secure);
        let redirect = SsoSettings {
            redirect_url: Some(web_url("https://sso.acme.com/cb").unwrap()),
            ..settings()
        };
        let given = Sso::new(redirect, "0.0.0.0:8081".parse().unwrap()).unwrap();
        assert_eq!(given.redirect_url.as_str(), "https://sso.acme.com/cb");
        assert!(given.secure);
        let err = Sso::new(settings(), "0.0.0.0:8081".parse().unwrap())
            .err()
            .unwrap();
        assert!(err.starts_with("KEYGATE_CONSOLE_URL"), "{err}");
    }

    #[test]
    fn cookies_are_read_from_every_cookie_header_and_written_locked_down() {
        let mut headers = HeaderMap::new();
        headers.append(
            "cookie",
            HeaderValue::from_static("a=1; keygate_sessionx=2"),
        );
        headers.append(
            "cookie",
            HeaderValue::from_static("keygate_session=abc ; b=3"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "b"), Some("3"));
        assert_eq!(cookie(&headers, "c"), None);
        let written = set_cookie(SESSION_COOKIE, "abc", 60, true);
        assert_eq!(
            written.to_str().unwrap(),
            "keygate_session=abc; Path=/; Max-Age=60; HttpOnly; SameSite=Lax; Secure"
        );
        assert!(!set_cookie(SESSION_COOKIE, "abc", 60, false)
            .to_str()
            .unwrap()
            .contains("Secure"));
    }

    #[test]
    fn writes_by_cookie_need_the_csrf_header() {
        let mut headers = HeaderMap::new();
        assert!(csrf_ok(&Method::GET, &headers) && csrf_ok(&Method::HEAD, &headers));
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(!csrf_ok(&method, &headers), "{method}");
        }
        headers.insert(CSRF_HEADER, HeaderValue::from_static("0"));
        assert!(!csrf_ok(&Method::POST, &headers));
        headers.insert(CSRF_HEADER, HeaderValue::from_static("1"));
        assert!(csrf_ok(&Method::POST, &headers) && csrf_ok(&Method::DELETE, &headers));
    }

    #[test]
    fn the_pkce_challenge_is_rfc_7636s() {
        // RFC 7636, appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
