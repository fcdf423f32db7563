//! The identity provider over HTTP: discovery (`/.well-known/openid-configuration`), its
//! signing keys (JWKS, cached), and the exchange of a code for an ID token. Every call
//! has a timeout, follows no redirect and reads at most [`MAX_BODY`] bytes; nothing a
//! call carries (codes, verifiers, secrets, tokens) is logged.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Url;
use serde::Deserialize;
use serde_json::Value;

use crate::tokens::Token;

/// The most any one answer of the provider may hold.
pub const MAX_BODY: usize = 1 << 20;

/// How long one call to the provider may take, connecting included.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// After a failed discovery, sign-ins within this long are answered at once with the
/// failure instead of each asking the provider again.
const DISCOVERY_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Keys older than this are fetched again at their next use (a key the provider
/// withdrew stops being trusted within this long).
const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);

/// The least time between two fetches of the keys caused by tokens naming a key id the
/// cache does not hold (so a stream of forged key ids cannot make keygate hammer the
/// provider).
pub const KEYS_REFETCH_AFTER: Duration = Duration::from_secs(30);

/// Where the provider's endpoints are, from its discovery document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub authorization: Url,
    pub token: Url,
    pub jwks: Url,
    /// The client secret goes in the token request's body (`client_secret_post`) rather
    /// than in HTTP Basic authentication (`client_secret_basic`, the default).
    pub secret_in_body: bool,
}

/// What went wrong with the provider, in words fit for a page and the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdpError {
    #[error("the identity provider cannot be reached: {0}")]
    Unreachable(String),
    #[error("the identity provider's answer is not usable: {0}")]
    Invalid(String),
    #[error("the identity provider did not accept the sign-in code: {0}")]
    Refused(String),
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
}

/// The keys as last fetched.
#[derive(Default)]
struct Keys {
    set: Arc<Vec<Jwk>>,
    fetched: Option<Instant>,
}

/// One identity provider, found from its issuer URL.
pub struct Idp {
    issuer: String,
    client: reqwest::Client,
    endpoints: RwLock<Option<Arc<Endpoints>>>,
    /// Held while discovering (one discovery at a time); when the last one failed.
    discovery: tokio::sync::Mutex<Option<(Instant, IdpError)>>,
    keys: tokio::sync::Mutex<Keys>,
    refetch_after: Duration,
}

/// A short text of the provider's own, fit for a page: printable, at most 200 characters.
fn tame(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

fn url(what: &str, text: &str) -> Result<Url, IdpError> {
    let url = Url::parse(text)
        .map_err(|e| IdpError::Invalid(format!("{what} {:?} is not a URL: {e}", tame(text))))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(IdpError::Invalid(format!("{what} {url} is not http(s)")));
    }
    Ok(url)
}

/// `value` as `application/x-www-form-urlencoded` writes it.
fn form_encoded(value: &str) -> String {
    let pair = serde_urlencoded::to_string([("", value)]).unwrap_or_default();
    pair.strip_prefix('=').unwrap_or_default().to_owned()
}

async fn body(mut response: reqwest::Response) -> Result<Vec<u8>, IdpError> {
    let mut out = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| IdpError::Unreachable(e.without_url().to_string()))?
    {
        if out.len() + chunk.len() > MAX_BODY {
            return Err(IdpError::Invalid(format!(
                "an answer larger than {MAX_BODY} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

impl Idp {
    pub fn new(issuer: &str) -> Result<Idp, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("keygate-key-service/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Idp {
            issuer: issuer.to_owned(),
            client,
            endpoints: RwLock::new(None),
            discovery: tokio::sync::Mutex::new(None),
            keys: tokio::sync::Mutex::default(),
            refetch_after: KEYS_REFETCH_AFTER,
        })
    }

    /// The same provider with another least time between fetches of the keys (tests).
    pub fn with_refetch_after(mut self, after: Duration) -> Idp {
        self.refetch_after = after;
        self
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    async fn get_json(&self, what: &str, url: &Url) -> Result<Value, IdpError> {
        let response = self
            .client
            .get(url.clone())
            .header(ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| IdpError::Unreachable(format!("{what} {url}: {}", e.without_url())))?;
        let status = response.status();
        if !status.is_success() {
            return Err(IdpError::Invalid(format!("{what} {url} answered {status}")));
        }
        serde_json::from_slice(&body(response).await?)
            .map_err(|e| IdpError::Invalid(format!("{what} {url} is not JSON: {e}")))
    }

    /// Reads the discovery document; its `issuer` must be the configured one exactly.
    async fn discover(&self) -> Result<Endpoints, IdpError> {
        let at = url(
            "the discovery document",
            &format!(
                "{}/.well-known/openid-configuration",
                self.issuer.trim_end_matches('/')
            ),
        )?;
        let document = self.get_json("the discovery document", &at).await?;
        let document: Discovery = serde_json::from_value(document)
            .map_err(|e| IdpError::Invalid(format!("the discovery document at {at}: {e}")))?;
        if document.issuer != self.issuer {
            return Err(IdpError::Invalid(format!(
                "the discovery document names the issuer {:?}, not the configured {:?} \
                 (they must be equal to the character)",
                tame(&document.issuer),
                self.issuer
            )));
        }
        if let Some(methods) = &document.code_challenge_methods_supported {
            if !methods.iter().any(|m| m == "S256") {
                tracing::warn!(
                    "the identity provider does not list PKCE's S256 among its \
                     code_challenge_methods_supported; sign-ins may fail"
                );
            }
        }
        let methods = document.token_endpoint_auth_methods_supported;
        let listed = |name: &str| {
            methods
                .as_ref()
                .is_some_and(|m| m.iter().any(|x| x == name))
        };
        Ok(Endpoints {
            authorization: url(
                "the authorization_endpoint",
                &document.authorization_endpoint,
            )?,
            token: url("the token_endpoint", &document.token_endpoint)?,
            jwks: url("the jwks_uri", &document.jwks_uri)?,
            secret_in_body: methods.is_some()
                && !listed("client_secret_basic")
                && listed("client_secret_post"),
        })
    }

    /// The provider's endpoints: discovered at the first need, then kept. A failure is
    /// not kept: the next sign-in (after [`DISCOVERY_RETRY_AFTER`]) tries again.
    pub async fn endpoints(&self) -> Result<Arc<Endpoints>, IdpError> {
        let cached = || {
            self.endpoints
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        };
        if let Some(endpoints) = cached() {
            return Ok(endpoints);
        }
        let mut failed = self.discovery.lock().await;
        if let Some(endpoints) = cached() {
            return Ok(endpoints);
        }
        if let Some((at, error)) = failed.as_ref() {
            if at.elapsed() < DISCOVERY_RETRY_AFTER {
                return Err(error.clone());
            }
        }
        match self.discover().await {
            Ok(endpoints) => {
                let endpoints = Arc::new(endpoints);
                *self
                    .endpoints
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Some(endpoints.clone());
                *failed = None;
                tracing::info!(issuer = %self.issuer, "identity provider discovered");
                Ok(endpoints)
            }
            Err(error) => {
                tracing::warn!(issuer = %self.issuer, %error, "identity provider discovery failed");
                *failed = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    /// Fetches the keys; those keygate cannot read (other key types) are left out.
    async fn fetch_keys(&self) -> Result<Vec<Jwk>, IdpError> {
        let endpoints = self.endpoints().await?;
        let document = self.get_json("the jwks_uri", &endpoints.jwks).await?;
        let listed = document
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| IdpError::Invalid(format!("{} holds no \"keys\"", endpoints.jwks)))?;
        let keys: Vec<Jwk> = listed
            .iter()
            .filter_map(|key| serde_json::from_value(key.clone()).ok())
            .collect();
        if keys.len() < listed.len() {
            tracing::debug!(
                skipped = listed.len() - keys.len(),
                "keys of a kind keygate does not read were left out"
            );
        }
        Ok(keys)
    }

    /// The provider's keys, from the cache while it is fresh. `again`: a token named a
    /// key the cache lacks, so fetch again unless the last fetch was within
    /// `refetch_after`. A failed fetch keeps the keys already held, if any.
    pub async fn keys(&self, again: bool) -> Result<Arc<Vec<Jwk>>, IdpError> {
        let mut keys = self.keys.lock().await;
        let due = match keys.fetched {
            None => true,
            Some(at) if again => at.elapsed() >= self.refetch_after,
            Some(at) => at.elapsed() >= KEYS_MAX_AGE,
        };
        if !due {
            return Ok(keys.set.clone());
        }
        match self.fetch_keys().await {
            Ok(set) => {
                tracing::info!(keys = set.len(), "identity provider keys fetched");
                keys.set = Arc::new(set);
                keys.fetched = Some(Instant::now());
                Ok(keys.set.clone())
            }
            Err(error) if keys.fetched.is_some() => {
                tracing::warn!(%error, "fetching the identity provider's keys failed; the keys held are kept");
                Ok(keys.set.clone())
            }
            Err(error) => Err(error),
        }
    }

    /// Trades the code the provider gave the browser, with the PKCE verifier, for the ID
    /// token (the other tokens of the answer are dropped unread).
    pub async fn exchange(
        &self,
        code: &str,
        verifier: &str,
        redirect_url: &Url,
        client_id: &str,
        client_secret: Option<&Token>,
    ) -> Result<String, IdpError> {
        let endpoints = self.endpoints().await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_url.as_str()),
            ("code_verifier", verifier),
            ("client_id", client_id),
        ];
        let mut request = self
            .client
            .post(endpoints.token.clone())
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
        match client_secret {
            Some(secret) if endpoints.secret_in_body => {
                form.push(("client_secret", secret.expose()))
            }
            Some(secret) => {
                let pair = format!(
                    "{}:{}",
                    form_encoded(client_id),
                    form_encoded(secret.expose())
                );
                request = request.header(AUTHORIZATION, format!("Basic {}", STANDARD.encode(pair)));
            }
            None => {}
        }
        let form = serde_urlencoded::to_string(&form)
            .map_err(|e| IdpError::Invalid(format!("the token request: {e}")))?;
        let response = request.body(form).send().await.map_err(|e| {
            IdpError::Unreachable(format!("the token_endpoint: {}", e.without_url()))
        })?;
        let status = response.status();
        let answer: Value = serde_json::from_slice(&body(response).await?).unwrap_or(Value::Null);
        let text = |name: &str| answer.get(name).and_then(Value::as_str).map(tame);
        if !status.is_success() {
            let error = text("error").unwrap_or_else(|| status.to_string());
            return Err(IdpError::Refused(match text("error_description") {
                Some(description) => format!("{error} ({description})"),
                None => error,
            }));
        }
        answer
            .get("id_token")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                IdpError::Invalid("the token_endpoint's answer holds no id_token".into())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use axum::extract::{Form, State};
    use axum::http::HeaderMap;
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use serde_json::json;

    use crate::sso::token::testing::Signer;

    /// A token request as the provider saw it: its Authorization header and form.
    type TokenRequest = (Option<String>, Vec<(String, String)>);

    /// A provider on loopback: what it publishes, and what it was asked.
    #[derive(Default)]
    struct Fake {
        issuer: Mutex<String>,
        keys: Mutex<Vec<Value>>,
        key_fetches: Mutex<u32>,
        auth_methods: Mutex<Option<Vec<&'static str>>>,
        token_requests: Mutex<Vec<TokenRequest>>,
    }

    async fn serve(fake: Arc<Fake>) -> String {
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(|State(fake): State<Arc<Fake>>| async move {
                    let issuer = fake.issuer.lock().unwrap().clone();
                    let methods = fake.auth_methods.lock().unwrap().clone();
                    Json(json!({
                        "issuer": issuer,
                        "authorization_endpoint": format!("{issuer}/authorize?prompt=login"),
                        "token_endpoint": format!("{issuer}/token"),
                        "jwks_uri": format!("{issuer}/jwks"),
                        "token_endpoint_auth_methods_supported": methods,
                    }))
                }),
            )
            .route(
                "/jwks",
                get(|State(fake): State<Arc<Fake>>| async move {
                    *fake.key_fetches.lock().unwrap() += 1;
                    let mut keys = fake.keys.lock().unwrap().clone();
                    // A key of a kind keygate does not read is skipped, not fatal.
                    keys.push(json!({"kty": "OKP", "crv": "X448", "x": "AA", "kid": "odd"}));
                    Json(json!({ "keys": keys }))
                }),
            )
            .route(
                "/token",
                post(
                    |State(fake): State<Arc<Fake>>,
                     headers: HeaderMap,
                     Form(form): Form<Vec<(String, String)>>| async move {
                        let auth = headers
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_owned());
                        fake.token_requests
                            .lock()
                            .unwrap()
                            .push((auth, form.clone()));
                        let code = form
                            .iter()
                            .find(|(k, _)| k == "code")
                            .map(|(_, v)| v.as_str());
                        if code == Some("good") {
                            (
                                axum::http::StatusCode::OK,
                                Json(json!({"access_token": "at", "id_token": "the.id.token"})),
                            )
                        } else {
                            (
                                axum::http::StatusCode::BAD_REQUEST,
                                Json(json!({"error": "invalid_grant",
                                            "error_description": "code\nunknown"})),
                            )
                        }
                    },
                ),
            )
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        *fake.issuer.lock().unwrap() = base.clone();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        base
    }

    #[tokio::test]
    async fn discovery_needs_the_issuer_to_the_character_and_is_retried_after_a_failure() {
        let fake = Arc::new(Fake::default());
        let base = serve(fake.clone()).await;
        let idp = Idp::new(&format!("{base}/")).unwrap();
        let err = idp.endpoints().await.unwrap_err();
        assert!(
            matches!(&err, IdpError::Invalid(m) if m.contains("names the issuer")),
            "{err}"
        );
        let idp = Idp::new(&base).unwrap();
        let endpoints = idp.endpoints().await.unwrap();
        assert_eq!(endpoints.token.as_str(), format!("{base}/token"));
        assert_eq!(
            endpoints.authorization.as_str(),
            format!("{base}/authorize?prompt=login")
        );
        assert!(!endpoints.secret_in_body);

        let down = Idp::new("http://127.0.0.1:9").unwrap();
        assert!(matches!(
            down.endpoints().await,
            Err(IdpError::Unreachable(_))
        ));
    }

    #[tokio::test]
    async fn keys_are_cached_and_fetched_again_for_an_unknown_key_at_most_so_often() {
        let fake = Arc::new(Fake::default());
        let base = serve(fake.clone()).await;
        let first = Signer::ec("k1");
        *fake.keys.lock().unwrap() = vec![first.jwk.clone()];
        let idp = Idp::new(&base).unwrap();
        assert_eq!(idp.keys(false).await.unwrap().len(), 1);
        assert_eq!(idp.keys(false).await.unwrap().len(), 1);
        assert_eq!(*fake.key_fetches.lock().unwrap(), 1);
        // The provider rotates: a token naming the new key asks again, but not within
        // the least time between fetches.
        let second = Signer::rsa("k2");
        *fake.keys.lock().unwrap() = vec![first.jwk.clone(), second.jwk.clone()];
        assert_eq!(idp.keys(true).await.unwrap().len(), 1);
        assert_eq!(*fake.key_fetches.lock().unwrap(), 1);
        let eager = Idp::new(&base).unwrap().with_refetch_after(Duration::ZERO);
        eager.keys(false).await.unwrap();
        *fake.keys.lock().unwrap() = vec![second.jwk.clone()];
        let keys = eager.keys(true).await.unwrap();
        assert_eq!(keys[0].common.key_id.as_deref(), Some("k2"));
        assert_eq!(*fake.key_fetches.lock().unwrap(), 3);
    }

    #[tokio::test]
    async fn the_code_is_exchanged_with_the_verifier_and_the_secret_as_the_provider_asks() {
        let fake = Arc::new(Fake::default());
        let base = serve(fake.clone()).await;
        let redirect = Url::parse("http://127.0.0.1:1/auth/oidc/callback").unwrap();
        let secret = Token::new("s3cret:x").unwrap();
        let idp = Idp::new(&base).unwrap();
        let token = idp
            .exchange("good", "verifier-1", &redirect, "kg client", Some(&secret))
            .await
            .unwrap();
        assert_eq!(token, "the.id.token");
        let public = Idp::new(&base).unwrap();
        let err = public
            .exchange("stale", "verifier-2", &redirect, "kg", None)
            .await
            .unwrap_err();
        assert_eq!(err, IdpError::Refused("invalid_grant (codeunknown)".into()));
        *fake.auth_methods.lock().unwrap() = Some(vec!["client_secret_post"]);
        let post = Idp::new(&base).unwrap();
        post.exchange("good", "verifier-3", &redirect, "kg", Some(&secret))
            .await
            .unwrap();

        let requests = fake.token_requests.lock().unwrap().clone();
        let field = |form: &[(String, String)], name: &str| {
            form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        };
        let (auth, form) = &requests[0];
        // client_secret_basic: both parts form-encoded, then base64.
        let basic = STANDARD.encode("kg+client:s3cret%3Ax");
        assert_eq!(auth.as_deref(), Some(format!("Basic {basic}").as_str()));
        assert_eq!(
            field(form, "grant_type").as_deref(),
            Some("authorization_code")
        );
        assert_eq!(field(form, "code_verifier").as_deref(), Some("verifier-1"));
        assert_eq!(
            field(form, "redirect_uri").as_deref(),
            Some(redirect.as_str())
        );
        assert_eq!(field(form, "client_id").as_deref(), Some("kg client"));
        assert_eq!(field(form, "client_secret"), None);
        let (auth, form) = &requests[1];
        assert_eq!((auth, field(form, "client_secret")), (&None, None));
        let (auth, form) = &requests[2];
        assert_eq!(auth, &None);
        assert_eq!(field(form, "client_secret").as_deref(), Some("s3cret:x"));
    }

    #[test]
    fn basic_credentials_are_form_encoded_first() {
        assert_eq!(form_encoded("keygate console"), "keygate+console");
        assert_eq!(form_encoded("a:b&c=d/é"), "a%3Ab%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn provider_texts_are_tamed_for_pages() {
        assert_eq!(tame("bad\ncode\u{7}"), "badcode");
        assert_eq!(tame(&"x".repeat(500)).len(), 200);
    }
}
